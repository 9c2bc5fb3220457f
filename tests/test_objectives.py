import math

import pytest
import torch

from tests.conftest import TINY_SCENES, tiny_config
from ticketlab import experiment
from ticketlab.augment import ContrastiveAugment, gaussian_blur, random_grayscale
from ticketlab.config import TrainConfig, parse_config
from ticketlab.data import build_task
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.objectives import OBJECTIVES
from ticketlab.objectives.contrastive import MoCo, moco_infonce, nt_xent
from ticketlab.prunable import prunable_names
from ticketlab.pruning import prune
from ticketlab.results import score
from ticketlab.train import train_model


def nt_xent_by_hand(z1, z2, tau):
    views = [[x / math.sqrt(sum(v * v for v in row)) for x in row] for row in z1.tolist() + z2.tolist()]
    n, total = len(z1), 0.0
    for i in range(2 * n):
        sims = {j: sum(a * b for a, b in zip(views[i], views[j], strict=True)) / tau for j in range(2 * n) if j != i}
        positive = (i + n) % (2 * n)
        total += -math.log(math.exp(sims[positive]) / sum(math.exp(s) for s in sims.values()))
    return total / (2 * n)


def test_nt_xent_matches_hand_computation():
    eye = torch.eye(2)
    assert nt_xent(eye, eye, 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    for tau in (0.5, 0.1, 2.0):
        assert nt_xent(z1, z2, tau).item() == pytest.approx(nt_xent_by_hand(z1, z2, tau), rel=1e-5)


def test_moco_infonce_matches_hand_computation():
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    expected = -math.log(math.exp(3.0) / (math.exp(3.0) + math.exp(0.0) + math.exp(-5.0)))
    assert moco_infonce(q, k, queue, 0.2).item() == pytest.approx(expected, rel=1e-6)


def test_augmentations_are_seeded_and_keep_shape():
    x = build_task("scenes_shape", TINY_SCENES).train.x[:16]
    aug = ContrastiveAugment()
    a = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4)))
    assert a.shape == x.shape and a.min() >= -1.0001 and a.max() <= 1.0001
    gray = random_grayscale(x, torch.Generator().manual_seed(0), p=1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    flat = torch.full((2, 3, 8, 8), 0.25)
    assert torch.allclose(gaussian_blur(flat, torch.Generator().manual_seed(0), p=1.0), flat, atol=1e-6)


def masked_model(task, sparsity=0.5):
    model = build_model("resnet20", task.num_classes, {"width": 4}, seed=0)
    names = prunable_names(model)
    params = dict(model.named_parameters())
    mask = prune("global_random", {n: params[n] for n in names}, Mask.ones(model, names), sparsity,
                 torch.Generator().manual_seed(0))
    return model, mask


def test_moco_key_encoder_carries_the_query_mask_through_training():
    task = build_task("scenes_shape", TINY_SCENES)
    model, mask = masked_model(task)
    moco = MoCo(queue_size=64)
    result = train_model(model, task, TrainConfig(lr=0.05, epochs=1, batch_size=32), seed=0, mask=mask,
                         objective=moco)
    key = dict(moco.key_backbone.named_parameters())
    for name, keep in mask.tensors.items():
        weight = key[name.removeprefix("backbone.")]
        assert torch.count_nonzero(weight[~keep]) == 0, name
        assert torch.count_nonzero(weight[keep]) > 0
        assert not torch.equal(weight, result.state[name])  # a momentum average, not a copy
    assert moco.queue_ptr == (3 * 32) % 64  # 96 keys enqueued in a ring of 64
    assert result.metrics["objective"] == "moco"
    assert moco.evaluate(model, task, "val") == pytest.approx(score(result.metrics, "val"))  # the best state is loaded


def test_simclr_training_reduces_the_loss():
    task = build_task("scenes_shape", {"n_train": 128, "n_val": 64, "n_test": 64})
    model = build_model("resnet20", task.num_classes, {"width": 4}, seed=0)
    simclr = OBJECTIVES.build("simclr", temperature=0.5)
    losses = []

    class Recorder:
        def on_step_end(self, step, model):
            pass

        def on_epoch_end(self, epoch, metrics):
            losses.append(metrics["train_loss"])

    train_model(model, task, TrainConfig(lr=0.1, epochs=4, batch_size=64), seed=0, objective=simclr,
                callbacks=[Recorder()])
    assert losses[-1] < losses[0]
    assert losses[0] < math.log(2 * 64 - 1) + 0.5  # near the chance level of NT-Xent at the start


def test_imp_on_a_pretraining_objective_masks_the_key_encoder_every_round(tmp_path, monkeypatch):
    seen = []
    real = experiment.train_model

    def spy(model, task, recipe, **kwargs):
        result = real(model, task, recipe, **kwargs)
        seen.append((kwargs["objective"], kwargs["mask"]))
        return result

    monkeypatch.setattr(experiment, "train_model", spy)
    cfg = parse_config(tiny_config(objective="moco", objective_options={"queue_size": 64}, baselines=[]))
    experiment.run_experiment(cfg, tmp_path, progress=False)
    assert len(seen) == 3
    for objective, mask in seen[1:]:
        key = dict(objective.key_backbone.named_parameters())
        assert mask.sparsity() > 0
        for name, keep in mask.tensors.items():
            assert torch.count_nonzero(key[name.removeprefix("backbone.")][~keep]) == 0
