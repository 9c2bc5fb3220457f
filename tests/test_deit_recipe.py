"""The DeiT recipe: RandAugment, random erasing, Mixup/CutMix with smoothed soft targets, its options and checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests.conftest import TINY_SCENES, tiny_config
from ticketlab import cli
from ticketlab.augment import _RAND_OPS, RandAugment, random_erasing
from ticketlab.config import EngineConfig, TrainConfig, config_hash
from ticketlab.data import build_task
from ticketlab.data.base import Split, Task
from ticketlab.deit_recipe import DEIT, OFF, batch_recipe, mix_batch, parse_randaugment, resolved, soft_targets
from ticketlab.errors import ConfigError
from ticketlab.models import build_model
from ticketlab.objectives.base import Objective
from ticketlab.train import Callback, train_model


def images(b: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def deit(num_classes: int = 6, **overrides: object):
    model = build_model("resnet20", num_classes, {"width": 4}, seed=0)
    return batch_recipe(TrainConfig(augment="deit", **overrides), model, Objective())


def test_same_seed_same_batch_and_targets_other_seed_differs():
    x, y, recipe = images(), torch.arange(6), deit()
    runs = [recipe(x.clone(), y, torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])
    for _, targets in runs:
        assert targets.shape == (6, 6) and torch.allclose(targets.sum(1), torch.ones(6))


def test_soft_targets_sum_to_one_with_smoothing_folded_in():
    labels = torch.tensor([0, 3, 1, 4])
    plain = soft_targets(labels, 5, smoothing=0.1)  # an unmixed sample: off-class 0.1 / 5 each, on 1 - 0.1 + 0.02
    assert torch.allclose(plain.sum(1), torch.ones(4))
    assert torch.allclose(plain[0], torch.tensor([0.92, 0.02, 0.02, 0.02, 0.02]))
    mixed = soft_targets(labels, 5, lam=0.3, smoothing=0.1)  # sample 0 pairs with the reversed batch's sample: label 4
    assert torch.allclose(mixed.sum(1), torch.ones(4))
    assert torch.allclose(mixed[0], torch.tensor([0.3 * 0.92 + 0.7 * 0.02, 0.02, 0.02, 0.02, 0.3 * 0.02 + 0.7 * 0.92]))


def test_label_smoothing_alone_leaves_images_and_matches_torch_smoothed_cross_entropy():
    model = build_model("resnet20", 6, {"width": 4}, seed=0)
    x, y = images(), torch.tensor([0, 5, 2, 2, 1, 3])
    out, targets = batch_recipe(TrainConfig(label_smoothing=0.1), model, Objective())(x, y, torch.Generator())
    assert torch.equal(out, x) and torch.allclose(targets, soft_targets(y, 6, smoothing=0.1))
    loss = Objective().loss(model, x, targets, torch.Generator())
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1))


def test_cutmix_lambda_is_the_pasted_area_fraction_and_mixup_a_convex_blend():
    x, y = images(), torch.arange(6)
    cut = deit(randaugment="none", random_erasing=0.0, mixup_alpha=0.0, label_smoothing=0.0)
    seen = 0
    for seed in range(20):
        out, targets = cut(x.clone(), y, torch.Generator().manual_seed(seed))
        lam = targets[torch.arange(6), y]  # distinct labels: the own label's weight is λ
        pasted = ((out == x.flip(0)) & (out != x)).all(1).float().mean((1, 2))
        assert torch.allclose(lam, 1 - pasted, atol=1e-6)
        seen += bool(0 < lam[0] < 1)
    assert seen > 10  # a real box most of the time (λ = 1 only when the clipped box is empty)
    out, lam = mix_batch(x, torch.Generator().manual_seed(0), mixup_alpha=0.8, cutmix_alpha=0.0)
    assert 0 < lam < 1 and torch.allclose(out, lam * x + (1 - lam) * x.flip(0))
    assert mix_batch(x, torch.Generator(), 0.8, 1.0, mix_prob=0.0) == (x, 1.0)


def test_random_erasing_changes_one_box_with_the_given_noise():
    x = images(b=8, size=32)
    out = random_erasing(x, torch.Generator().manual_seed(1), p=1.0, mean=0.5, std=0.1)
    for i in range(8):
        changed = (out[i] != x[i]).any(0)
        rows, cols = changed.any(1), changed.any(0)
        assert torch.equal(changed, rows[:, None] & cols[None, :])  # exactly a rectangle
        r, c = rows.nonzero().flatten(), cols.nonzero().flatten()
        assert torch.equal(r, torch.arange(r[0], r[-1] + 1)) and torch.equal(c, torch.arange(c[0], c[-1] + 1))
        assert 0.01 < changed.float().mean() < 0.4  # area 2-33 % of the image, rounded to whole pixels
    erased = out[(out != x)]
    assert abs(erased.mean() - 0.5) < 0.02 and abs(erased.std() - 0.1) < 0.02
    assert torch.equal(random_erasing(x, torch.Generator(), p=0.0), x)


def test_randaugment_keeps_shape_dtype_range_and_matches_pil_on_pixel_ops():
    x = images(b=32)
    out = RandAugment()(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, x) and torch.equal(RandAugment(prob=0.0)(x, torch.Generator()), x)
    img01 = (x[:4] + 1) / 2
    for name, op in _RAND_OPS.items():
        res = op(img01, torch.full((4,), 0.9), torch.ones(4), True, torch.full((1, 3, 1, 1), 0.5))
        assert res.shape == img01.shape and res.min() >= 0 and res.max() <= 1, name
    pixels = (np.random.default_rng(0).random((12, 12, 3)) ** 2 * 255).astype(np.uint8)
    t = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
    level, sign, fill = torch.tensor([0.9]), torch.ones(1), torch.full((1, 3, 1, 1), 0.5)
    pil = Image.fromarray(pixels)
    # m9 with inc1: equalize; posterize to 4 - int(3.6) = 1 bit; solarize above 256 - int(230.4) = 26
    for name, reference in [("Equalize", ImageOps.equalize(pil)), ("Posterize", ImageOps.posterize(pil, 1)),
                            ("Solarize", ImageOps.solarize(pil, 26))]:
        expected = torch.from_numpy(np.asarray(reference).copy()).permute(2, 0, 1)[None].float()
        assert torch.allclose(_RAND_OPS[name](t, level, sign, True, fill) * 255, expected, atol=1e-3), name


def test_options_resolve_from_augment_deit_and_stay_out_of_hashes():
    assert resolved(TrainConfig()) == OFF and resolved(TrainConfig(augment="deit")) == DEIT
    assert resolved(TrainConfig(augment="deit", mixup_alpha=0.0))["mixup_alpha"] == 0.0
    assert resolved(TrainConfig(label_smoothing=0.1))["label_smoothing"] == 0.1
    assert config_hash(TrainConfig()) == config_hash(TrainConfig(mixup_alpha=None)) and "mixup" not in repr(TrainConfig())
    assert batch_recipe(TrainConfig(augment="imagenet"), build_model("resnet20", 2, {"width": 4}), Objective()) is None
    ra = parse_randaugment("rand-m9-mstd0.5-inc1")
    assert (ra.num_ops, ra.magnitude, ra.magnitude_std, ra.increasing) == (2, 9.0, 0.5, True)
    assert parse_randaugment("rand-n3-m7").increasing is False and parse_randaugment("none") is None


@pytest.mark.parametrize("options, key", [({"mixup_alpha": -1.0}, "train.mixup_alpha"),
                                          ({"label_smoothing": 1.0}, "train.label_smoothing"),
                                          ({"mix_switch_prob": 1.5}, "train.mix_switch_prob"),
                                          ({"random_erasing": -0.1}, "train.random_erasing"),
                                          ({"randaugment": "rand-x9"}, "train.randaugment")])
def test_out_of_range_options_are_one_line_config_errors(options, key):
    with pytest.raises(ConfigError, match=key) as info:
        TrainConfig(**options)
    assert "\n" not in str(info.value)


class OwnLoss(Objective):
    name = "own"

    def loss(self, model, inputs, labels, generator):
        return model(inputs).sum()


def test_soft_targets_need_image_classification_with_cross_entropy():
    y = torch.tensor([0, 1])
    text = Split({"input_ids": torch.ones(2, 4, dtype=torch.long)}, y)
    image = Split(torch.zeros(2, 3, 8, 8), y)
    model = build_model("resnet20", 2, {"width": 4}, seed=0)
    cases = [(TrainConfig(label_smoothing=0.1), Task("sst", 2, text, text, text), Objective(), "non-image inputs"),
             (TrainConfig(augment="deit"), Task("img", 2, image, image, image, head="pointer"), Objective(),
              "single-label classification"),
             (TrainConfig(mixup_alpha=0.2), Task("img", 2, image, image, image), OwnLoss(), "objective 'own'")]
    for recipe, task, objective, words in cases:
        with pytest.raises(ConfigError, match=words) as info:
            batch_recipe(recipe, model, objective, task)
        assert "\n" not in str(info.value) and "train." in str(info.value)
    recipe = TrainConfig(randaugment="rand-m9", random_erasing=0.25)  # image-only ops are fine with any loss
    assert batch_recipe(recipe, model, OwnLoss(), Task("img", 2, image, image, image)) is not None


def test_the_cli_exits_2_on_a_mixing_recipe_with_a_self_supervised_objective(tmp_path, capsys):
    cfg = tiny_config(objective="simclr", train={"lr": 0.05, "epochs": 1, "batch_size": 32, "augment": "deit"},
                      prune={"rounds": 1}, baselines=[])
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    assert cli.main(["find", str(tmp_path / "c.yaml"), "--runs-dir", str(tmp_path / "runs"), "-q"]) == 2
    assert "train.mixup_alpha" in capsys.readouterr().err


class StopAt(Callback):
    def __init__(self, step: int | None) -> None:
        self.at = step

    def on_step_end(self, step: int, model: torch.nn.Module) -> None:
        if step == self.at:
            raise KeyboardInterrupt


def test_one_epoch_with_augment_deit_trains_and_resumes_bit_identically(tmp_path):
    task = build_task("scenes_shape", {**TINY_SCENES, "n_train": 48, "n_val": 16, "n_test": 16})
    recipe, engine = TrainConfig(lr=0.05, epochs=1, batch_size=16, augment="deit"), EngineConfig(checkpoint_every=1)

    def run(stop: int | None, checkpoint=None):
        model = build_model("resnet20", task.num_classes, {"width": 4}, seed=0)
        result = train_model(model, task, recipe, seed=2, callbacks=[StopAt(stop)], engine=engine,
                             checkpoint=checkpoint)
        return result

    reference = run(None)
    assert np.isfinite(reference.history[0]["train_loss"])
    with pytest.raises(KeyboardInterrupt):
        run(3, tmp_path / ".c.checkpoint.pt")
    resumed = run(None, tmp_path / ".c.checkpoint.pt")
    assert resumed.metrics["resumed_at_step"] == 2
    assert resumed.history == [{**reference.history[0], "samples_per_s": resumed.history[0]["samples_per_s"]}]
    assert all(torch.equal(resumed.final_state[k], reference.final_state[k]) for k in reference.final_state)


def test_patch_students_get_the_position_keeping_recipe_alike_and_geometric_ops_are_refused():
    from ticketlab.objectives.patches import RandomPatches, TicketPatches
    from ticketlab.step import TrainStep

    y = torch.tensor([0, 1, 0, 1])
    x = images(4, 16)
    patches = torch.tensor([[0, 3]] * 4)
    tickets = Split(x, y, patches=patches)
    task = Task("img", 2, tickets, tickets, tickets)
    model = build_model("resnet20", 2, {"width": 4}, seed=0)
    for objective in (TicketPatches(), RandomPatches(2, 16)):
        with pytest.raises(ConfigError, match="fixed ticket positions") as info:
            batch_recipe(TrainConfig(augment="deit"), model, objective, task)
        assert "\n" not in str(info.value)
        recipe = batch_recipe(TrainConfig(mixup_alpha=0.8, label_smoothing=0.1), model, objective, task)
        mixed, targets = recipe(x, y, torch.Generator().manual_seed(0))
        assert torch.allclose(targets.sum(1), torch.ones(4)) and not torch.equal(mixed, x)
    with pytest.raises(ConfigError, match="train.augment"):  # a crop alone is refused too, before any step
        TrainStep(model, TrainConfig(augment="imagenet"), 1, objective=TicketPatches(), task=task)
