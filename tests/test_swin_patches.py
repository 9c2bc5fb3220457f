"""Swin students of data-level tickets: dropped patches are masked (ticketlab.patches.swin)."""

import pytest
import torch
import yaml

from ticketlab import cli
from ticketlab.config import TrainConfig
from ticketlab.data import build_task
from ticketlab.errors import ConfigError, DataError
from ticketlab.models import build_model
from ticketlab.objectives.patches import TicketPatches, student_patches
from ticketlab.patches.swin import PatchSwin, merge_alive, patch_swin, ticket_alive, window_alive
from ticketlab.patches.tickets import with_tickets
from ticketlab.train import train_model

# 32 px images, 4 px patches -> an 8x8 grid; windows of 4 (shifted by 2); stage 2 is 4x4 (one window, no shift)
SWIN = {"embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4, "image_size": 32, "patch_size": 4}
# Tickets on a 4x4 grid of 8 px patches (each a 2x2 block of Swin patches). Ticket patches 0, 2, 8, 10 put one alive
# block in each of the four 2x2-ticket windows and, shifted by one ticket patch, in each shifted window too.
COVERING = torch.tensor([[0, 2, 8, 10], [0, 2, 8, 10]])


def swin_student(seed=0, **options):
    model = build_model("swin", 3, {"config": SWIN, **options}, seed=seed)
    student = patch_swin(model.backbone)
    student.use_ticket_grid(4)
    return model.eval()


def pixel_mask(indices, ticket_grid=4, size=32):
    return ticket_alive(indices, ticket_grid, size)[:, None].expand(-1, 3, -1, -1)  # [B, 3, H, W] kept pixels


def test_swin_is_an_ordinary_image_backbone():
    model = build_model("swin", 5, {"config": SWIN}, seed=0).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.feature_dim == 32 and model.family == "transformer"  # 16 · 2^(stages − 1)
    assert model(x).shape == (2, 5)
    assert torch.allclose(model.forward_features(x), model.backbone.model(pixel_values=x).pooler_output, atol=1e-6)
    with pytest.raises(ConfigError, match="empty_windows must be error or zero"):
        build_model("swin", 5, {"config": SWIN, "empty_windows": "skip"})


def test_ticket_patches_map_to_blocks_and_merging_keeps_any_alive_child():
    alive = ticket_alive(torch.tensor([[1]]), 2, 4)[0].int()  # ticket patch (0, 1) of a 2x2 grid -> a 2x2 block
    assert alive.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    hand = torch.tensor([[[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]], dtype=torch.bool)
    assert merge_alive(hand)[0].int().tolist() == [[1, 0], [0, 1]]  # one alive child of four suffices
    odd = torch.zeros(1, 3, 3, dtype=torch.bool)
    odd[0, 2, 2] = True  # a 3x3 grid merges to 2x2, its padding dead
    assert merge_alive(odd)[0].int().tolist() == [[0, 0], [0, 1]]
    # the windows of the 4x4 map above, window 2: four windows, only the first and the last hold an alive token
    assert window_alive(hand, 2, 0, fill=False).any(1).tolist() == [True, False, False, True]
    # shifted by 1, window (0, 0) holds original rows/cols 1-2: nobody
    assert window_alive(hand, 2, 1, fill=False).any(1).tolist() == [False, False, False, True]


def test_all_patches_kept_equals_the_plain_swin_even_with_padding():
    padded = {**SWIN, "image_size": 28, "patch_size": 2}  # a 14x14 grid, padded to 16 for windows of 4
    model = build_model("swin", 3, {"config": padded}, seed=0).eval()
    student = patch_swin(model.backbone)
    student.use_ticket_grid(7)  # 4 px ticket patches: 2x2 Swin patches each
    x = torch.randn(2, 3, 28, 28)
    every = torch.arange(49).expand(2, -1)
    assert torch.allclose(student((x, every)), student.model(pixel_values=x).pooler_output, atol=1e-5)


def test_dropped_patches_never_reach_the_output_and_kept_ones_do():
    model = swin_student()
    x = torch.randn(2, 3, 32, 32)
    out = model((x, COVERING))
    dropped = ~pixel_mask(COVERING)
    changed = x.clone()
    changed[dropped] = torch.randn(int(dropped.sum())) * 5
    assert torch.allclose(model((changed, COVERING)), out, atol=1e-5)
    kept = x.clone()
    kept[0, :, 0:8, 0:8] += 1.0  # ticket patch 0 of image 0
    assert (model((kept, COVERING))[0] - out[0]).abs().max() > 1e-3
    assert torch.allclose(model((kept, COVERING))[1], out[1], atol=1e-6)  # image 1 untouched
    x.requires_grad_(True)
    model((x, COVERING)).sum().backward()
    assert x.grad[dropped].abs().max() == 0 and x.grad[~dropped].abs().max() > 0


def test_a_selection_leaving_a_window_empty_is_refused_or_zeroed():
    model = swin_student()
    x = torch.randn(2, 3, 32, 32)
    three = COVERING[:, :3]  # ticket patch 10 gone: window (1, 1) of stage 1 has no kept patch
    student = model.backbone
    student.check_tickets({"train": COVERING, "test": COVERING}, 0.25)  # every window covered: accepted
    with pytest.raises(ConfigError, match=r"keep rate 0.2 leaves a 4x4 attention window \(Swin stage 1\) without a "
                                          r"kept patch in 2 of 4 images") as info:
        student.check_tickets({"train": COVERING, "test": three}, 0.2)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="a selection of 3 of 16 patches leaves a 4x4 attention window"):
        model((x, three))
    zeroed = swin_student(empty_windows="zero")
    x.requires_grad_(True)
    out = zeroed((x, three))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    lonely = torch.tensor([[5], [5]])  # one kept patch: most windows of both stages empty, still finite
    assert torch.isfinite(zeroed((x, lonely))).all()


def test_ticket_grid_must_divide_the_swin_grid():
    model = build_model("swin", 3, {"config": SWIN}, seed=0)
    assert student_patches(model.backbone, 4) == 16 and isinstance(model.backbone, PatchSwin)
    with pytest.raises(DataError, match="tickets on a 3x3 grid do not map onto the Swin student's 8x8 patch grid"):
        student_patches(model.backbone, 3)


def test_a_tiny_swin_student_trains_a_step_on_its_tickets():
    task = build_task("scenes_shape", {"n_train": 16, "n_val": 8, "n_test": 8})
    gen = torch.Generator().manual_seed(0)
    tickets = {s: torch.rand(len(getattr(task, s)), 16, generator=gen).topk(12, 1).indices.sort(1).values
               for s in ("train", "val", "test")}
    model = build_model("swin", task.num_classes, {"config": SWIN, "empty_windows": "zero"}, seed=1)
    assert student_patches(model.backbone, 4) == 16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = TrainConfig(optimizer="adamw", lr=1e-3, epochs=1, batch_size=16)  # 16 images: one step
    result = train_model(model, with_tickets(task, tickets), recipe, seed=0, objective=TicketPatches())
    after = result.final_state
    assert model.backbone.ticket_grid == 4
    moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert any(k.startswith("backbone.model.encoder") for k in moved) and any(k.startswith("head") for k in moved)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_the_study_refuses_a_keep_rate_that_empties_a_window_with_exit_2(tmp_path, capsys):
    vit = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
           "image_size": 32, "patch_size": 8}  # a 4x4 ticket grid
    cfg = {"selector": {"model": {"name": "vit", "options": {"config": vit}},
                        "task": {"name": "scenes_shape", "options": {"n_train": 8, "n_val": 4, "n_test": 4}},
                        "finetune": None, "cross_fit": False},
           "student": {"name": "swin", "options": {"config": SWIN}},
           "train": {"optimizer": "adamw", "lr": 1e-3, "epochs": 1, "batch_size": 8},
           "keep_rates": [0.25], "seeds": [0], "position_control": False}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["study", "patch_tickets", str(path), "--runs-dir", str(tmp_path / "runs"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "keep rate 0.25 leaves a 4x4 attention window" in err and len(err.strip().splitlines()) == 1


def test_random_patch_students_draws_are_checked_before_training():
    """RC draws on a 4x4 ticket grid of 2x2 windows: 15 of 16 patches always cover every window, 4 of 16 rarely do;
    the check refuses the latter up front instead of at some training step."""
    from ticketlab.objectives.patches import check_random_draws

    student = swin_student().backbone
    check_random_draws(student, 15, 16, 0.94)  # every draw keeps 3 of each window's 4 patches at least
    with pytest.raises(ConfigError, match="keep rate 0.25 leaves a 4x4 attention window") as info:
        check_random_draws(student, 4, 16, 0.25)
    assert "\n" not in str(info.value)
    check_random_draws(swin_student(empty_windows="zero").backbone, 4, 16, 0.25)  # zeroed windows: no refusal
