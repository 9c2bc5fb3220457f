import pytest
import torch

from tests.conftest import TINY_SCENES
from ticketlab.config import TrainConfig
from ticketlab.data import build_task
from ticketlab.errors import NonFiniteLossError
from ticketlab.masks import Mask
from ticketlab.metrics import accuracy
from ticketlab.models import build_model
from ticketlab.objectives import Objective
from ticketlab.prunable import prunable_names
from ticketlab.pruning import prune
from ticketlab.results import score
from ticketlab.step import lr_factor
from ticketlab.train import train_model


@pytest.fixture(scope="module")
def task():
    return build_task("scenes_shape", TINY_SCENES)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_pruned_weights_stay_exactly_zero_through_training(task, optimizer):
    model = build_model("resnet20", task.num_classes, {"width": 4}, seed=0)
    names = prunable_names(model)
    params = dict(model.named_parameters())
    mask = prune("global_random", {n: params[n] for n in names}, Mask.ones(model, names), 0.7,
                 torch.Generator().manual_seed(0))
    recipe = TrainConfig(optimizer=optimizer, lr=0.05, epochs=2, batch_size=16, weight_decay=0.05,
                         momentum=0.9, grad_clip=1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_model(model, task, recipe, seed=0, mask=mask)
    for name, keep in mask.tensors.items():
        assert torch.count_nonzero(result.state[name][~keep]) == 0, name
        assert torch.count_nonzero(params[name][~keep]) == 0, name
        assert not torch.equal(result.state[name][keep], before[name][keep]), "surviving weights should train"


def test_same_seed_same_result(task):
    recipe = TrainConfig(lr=0.05, epochs=1, batch_size=32)
    runs = []
    for _ in range(2):
        model = build_model("resnet20", task.num_classes, {"width": 4}, seed=1)
        runs.append(train_model(model, task, recipe, seed=7))
    assert score(runs[0].metrics) == score(runs[1].metrics)
    assert all(torch.equal(runs[0].state[k], runs[1].state[k]) for k in runs[0].state)


def test_best_validation_epoch_is_reported(task):
    model = build_model("resnet20", task.num_classes, {"width": 4}, seed=1)
    result = train_model(model, task, TrainConfig(lr=0.05, epochs=3, batch_size=32), seed=0)
    assert 1 <= result.metrics["best_epoch"] <= 3
    assert score(result.metrics) == accuracy(model, task.test)  # the best-validation weights, scored
    assert score(result.metrics, "val") == accuracy(model, task.val)
    assert result.metrics["steps"] == 3 * 3  # 96 images / batch 32


def test_nan_loss_raises(task):
    class Diverging(Objective):
        name = "diverging"

        def loss(self, model, inputs, labels, generator):
            return model(inputs).sum() * float("nan")

    model = build_model("resnet20", task.num_classes, {"width": 4}, seed=1)
    with pytest.raises(NonFiniteLossError, match="lower train.lr"):
        train_model(model, task, TrainConfig(epochs=1, batch_size=32), seed=0, objective=Diverging())


def test_lr_schedules():
    cosine = TrainConfig(lr_schedule="cosine", warmup_steps=10)
    assert lr_factor(0, 110, cosine) == pytest.approx(0.1)
    assert lr_factor(9, 110, cosine) == pytest.approx(1.0)
    assert lr_factor(60, 110, cosine) == pytest.approx(0.5)
    step = TrainConfig(lr_schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    assert lr_factor(49, 100, step) == 1.0
    assert lr_factor(50, 100, step) == pytest.approx(0.1)
    assert lr_factor(80, 100, step) == pytest.approx(0.01)
    assert lr_factor(50, 100, TrainConfig(lr_schedule="linear")) == pytest.approx(0.5)
