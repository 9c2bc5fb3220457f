import pytest
import torch

from tests.conftest import tiny_config
from ticketlab.analysis import overlap, perturb, summarize_transfer
from ticketlab.config import TaskConfig, TrainConfig, parse_config
from ticketlab.errors import MaskMismatchError, TicketlabError
from ticketlab.experiment import run_experiment
from ticketlab.masks import Mask
from ticketlab.paths import parse_ref
from ticketlab.pruning import prune
from ticketlab.runfolders import load_theta_p
from ticketlab.transfer import TransferSpec, transfer_ticket


def random_mask(sparsity=0.7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = {"a": torch.randn(40, 30, generator=gen), "b": torch.randn(17, 3, 3, 3, generator=gen)}
    ones = Mask({n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()})
    return prune("global_random", w, ones, sparsity, gen)


def test_overlap_with_itself_is_one_and_with_complement_is_zero():
    mask = random_mask()
    same = overlap(mask, mask)
    assert same["iou"] == 1.0 and same["shared"] == 1.0
    assert all(v["iou"] == 1.0 for v in same["per_layer"].values())
    opposite = overlap(mask, mask.complement())
    assert opposite["iou"] == 0.0 and opposite["shared"] == 0.0
    other = random_mask(seed=1)
    value = overlap(mask, other)
    kept = torch.cat([t.flatten() for t in mask.tensors.values()])
    kept2 = torch.cat([t.flatten() for t in other.tensors.values()])
    assert value["iou"] == pytest.approx(float((kept & kept2).sum() / (kept | kept2).sum()))
    with pytest.raises(MaskMismatchError):
        overlap(mask, Mask({"a": mask.tensors["a"]}))


def test_delta10_flips_exactly_ten_percent_of_ones_and_of_zeros():
    mask = random_mask(0.7)
    ones, zeros = mask.num_total() - mask.num_pruned(), mask.num_pruned()
    flipped = perturb(mask, "delta10", seed=3)
    old = torch.cat([t.flatten() for t in mask.tensors.values()])
    new = torch.cat([t.flatten() for t in flipped.tensors.values()])
    assert int((old & ~new).sum()) == round(0.1 * ones)
    assert int((~old & new).sum()) == round(0.1 * zeros)
    assert flipped != perturb(mask, "delta10", seed=4)


def test_random_and_complement_perturbations():
    mask = random_mask(0.7)
    rand = perturb(mask, "random", seed=0)
    assert rand.num_pruned() == mask.num_pruned() and rand != mask
    assert perturb(mask, "complement") == mask.complement()
    with pytest.raises(ValueError, match="known: complement"):
        perturb(mask, "shuffle")


def test_summarize_transfer_matching_relaxed_universal():
    def row(source, target, k, s, acc):
        return {"source": source, "target": target, "round": k, "sparsity": s, "test_acc": acc}

    rows = []
    for seed_offset in (0.0, 0.02):
        rows += [row("A", "t1", 0, 0.0, 0.80 + seed_offset), row("A", "t1", 1, 0.2, 0.82 + seed_offset),
                 row("A", "t1", 2, 0.36, 0.795 + seed_offset), row("A", "t1", 3, 0.488, 0.70 + seed_offset),
                 row("A", "t2", 0, 0.0, 0.50 + seed_offset), row("A", "t2", 1, 0.2, 0.499 + seed_offset),
                 row("A", "t2", 2, 0.36, 0.52 + seed_offset), row("A", "t2", 3, 0.488, 0.30 + seed_offset)]
    summary = summarize_transfer(rows)
    t1, t2 = summary["pairs"][("A", "t1")], summary["pairs"][("A", "t2")]
    assert t1["dense"]["mean"] == pytest.approx(0.81) and t1["dense"]["std"] == pytest.approx(0.0141421, rel=1e-4)
    assert t1["matching"] == 0.2 and t1["relaxed"] == 0.36
    # t2: 0.36 matches but 0.2 (0.509 < 0.51) does not: a late match does not count (contiguous rule)
    assert t2["matching"] is None and t2["relaxed"] == 0.36
    assert summary["universal"]["A"] == {"matching": None, "relaxed": 0.36}
    # within one std of dense, round 2 of t1 (mean 0.805 >= 0.81 - 0.014) is matching too
    lenient = summarize_transfer(rows, within_std=True)
    assert lenient["pairs"][("A", "t1")]["matching"] == 0.36
    assert lenient["universal"]["A"]["matching"] == 0.36
    assert "std" in lenient["criterion"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return run_experiment(parse_config(tiny_config(baselines=[])), runs, progress=False)


def test_transfer_keeps_the_mask_and_replaces_the_head(source_run):
    spec = TransferSpec(TaskConfig("digits"), TrainConfig(lr=0.02, epochs=1, batch_size=64), seed=0)
    result = transfer_ticket(source_run, 2, spec)
    ticket = Mask.load(source_run / "rounds/round_002/mask.safetensors")
    theta_p = load_theta_p(source_run)
    assert result.state["head.weight"].shape[0] == 10 != theta_p["head.weight"].shape[0]
    for name, keep in ticket.tensors.items():
        assert torch.count_nonzero(result.state[name][~keep]) == 0
        assert not torch.equal(result.state[name][keep], theta_p[name][keep])  # fine-tuned from θp
    assert result.metrics["sparsity"] == pytest.approx(ticket.sparsity())
    assert result.metrics["num_classes"] == 10 and result.metrics["target"] == "digits"
    again = transfer_ticket(source_run, 2, spec)  # stored: not recomputed
    assert again.state is None and again.metrics == result.metrics


def test_transfer_starts_from_theta_p(source_run, monkeypatch):
    from ticketlab import transfer as transfer_module

    captured = {}

    def capture(model, task, recipe, **kwargs):
        captured["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        captured["mask"] = kwargs["mask"]
        raise RuntimeError("stop")

    monkeypatch.setattr(transfer_module, "train_model", capture)
    spec = TransferSpec(TaskConfig("digits"), TrainConfig(epochs=1), seed=5)
    with pytest.raises(RuntimeError, match="stop"):
        transfer_ticket(source_run, 1, spec)
    theta_p = load_theta_p(source_run)
    for name, value in theta_p.items():
        if name.startswith("backbone."):
            assert torch.equal(captured["state"][name], value), name
    assert captured["mask"] == Mask.load(source_run / "rounds/round_001/mask.safetensors")


def test_mask_references(source_run):
    assert parse_ref(f"{source_run}:2") == (source_run, 2)
    assert parse_ref(str(source_run)) == (source_run, None)
    assert parse_ref(f"{source_run.name}:1", source_run.parent) == (source_run, 1)  # the id `ls` prints
    with pytest.raises(TicketlabError, match="no run .*give a run folder or a run id"):
        parse_ref("/nonexistent:1")
    with pytest.raises(TicketlabError, match="no finished round 7"):
        transfer_ticket(source_run, 7, TransferSpec(TaskConfig("digits")))


def test_chance_overlap_matches_10000_simulated_random_mask_pairs():
    """Expected IoU / shared fraction of two independent random masks with given per-layer keep counts, against a
    simulation of 10,000 pairs (within 0.5 pt), and exact on hand-made counts."""
    import torch

    from ticketlab.analysis import overlap
    from ticketlab.masks import Mask

    sizes, keep_a, keep_b = {"l1.weight": 600, "l2.weight": 300}, {"l1.weight": 120, "l2.weight": 150}, \
        {"l1.weight": 240, "l2.weight": 30}

    def draw(keep: dict[str, int], gen: torch.Generator) -> Mask:
        tensors = {}
        for name, n in sizes.items():
            flat = torch.zeros(n, dtype=torch.bool)
            flat[torch.randperm(n, generator=gen)[: keep[name]]] = True
            tensors[name] = flat
        return Mask(tensors)

    gen = torch.Generator().manual_seed(0)
    expected = overlap(draw(keep_a, gen), draw(keep_b, gen))
    ious, shared = [], []
    for _ in range(10_000):
        measured = overlap(draw(keep_a, gen), draw(keep_b, gen))
        ious.append(measured["iou"])
        shared.append(measured["shared"])
    both = 120 * 240 / 600 + 150 * 30 / 300  # 48 + 15 = 63 expected in both
    assert expected["chance_iou"] == pytest.approx(both / (120 + 240 + 150 + 30 - both))
    assert expected["chance_shared"] == pytest.approx(both / (120 + 150))
    assert abs(sum(ious) / len(ious) - expected["chance_iou"]) < 0.005
    assert abs(sum(shared) / len(shared) - expected["chance_shared"]) < 0.005
