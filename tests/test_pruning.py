import pytest
import torch

from ticketlab.errors import ConfigError
from ticketlab.masks import Mask
from ticketlab.pruning import PRUNING_METHODS, prune, target_pruned_count
from ticketlab.schedules import round_sparsities

METHODS = ["global_magnitude", "layerwise_magnitude", "global_random", "layerwise_random"]


def weights(seed: int = 0, ties: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {"a": torch.randn(37, 11, generator=gen), "b": torch.randn(5, 3, 3, 3, generator=gen) * 3,
           "c": torch.randn(101, generator=gen) * 0.1}
    if ties:
        out = {n: torch.round(w) for n, w in out.items()}  # many exact ties (zeros, ±1, ...)
    return out


def ones(w: dict[str, torch.Tensor]) -> Mask:
    return Mask({n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.333, 0.5, 0.8, 0.95, 0.999])
@pytest.mark.parametrize("ties", [False, True])
def test_exact_zero_count(method, sparsity, ties):
    w = weights(ties=ties)
    mask = prune(method, w, ones(w), sparsity)
    n = sum(t.numel() for t in w.values())
    assert mask.num_pruned() == target_pruned_count(sparsity, n) == round(sparsity * n + 1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_iterative_pruning_keeps_pruned_weights_pruned(method):
    w = weights(ties=True)
    mask = ones(w)
    n = mask.num_total()
    for s in round_sparsities("remaining", 8, 0.2, []):
        new = prune(method, w, mask, s, torch.Generator().manual_seed(1))
        for name in w:
            assert not torch.any(new.tensors[name] & ~mask.tensors[name]), "a pruned weight came back"
        assert new.num_pruned() == target_pruned_count(s, n)
        mask = new


def test_global_magnitude_removes_the_smallest_weights():
    w = weights()
    mask = prune("global_magnitude", w, ones(w), 0.5)
    kept = torch.cat([w[n][mask.tensors[n]].abs().flatten() for n in w])
    dropped = torch.cat([w[n][~mask.tensors[n]].abs().flatten() for n in w])
    assert kept.min() >= dropped.max()


def test_global_vs_layerwise_semantics():
    # layer "c" is 10x smaller in magnitude: global pruning takes it first, layer-wise does not
    w = weights()
    glob = prune("global_magnitude", w, ones(w), 0.3)
    layer = prune("layerwise_magnitude", w, ones(w), 0.3)
    assert glob.layer_sparsity()["c"] > 0.9
    for name, t in w.items():
        zeros = int((~layer.tensors[name]).sum())
        assert abs(zeros - 0.3 * t.numel()) <= 1, name  # each layer is at the target sparsity
        kept, dropped = t[layer.tensors[name]].abs(), t[~layer.tensors[name]].abs()
        assert kept.min() >= dropped.max()
    assert glob != layer


def test_random_pruning_is_seeded():
    w = weights()
    a = prune("global_random", w, ones(w), 0.6, torch.Generator().manual_seed(5))
    b = prune("global_random", w, ones(w), 0.6, torch.Generator().manual_seed(5))
    c = prune("global_random", w, ones(w), 0.6, torch.Generator().manual_seed(6))
    assert a == b and a != c


def test_schedules_match_the_studies():
    remaining = round_sparsities("remaining", 18, 0.2, [])
    assert [round(100 * s, 2) for s in remaining[:6]] == [20.0, 36.0, 48.8, 59.04, 67.23, 73.79]
    assert remaining[17] == pytest.approx(1 - 0.8**18)
    assert round(100 * remaining[17], 2) == 98.2
    original = round_sparsities("original", 9, 0.1, [])
    assert original == pytest.approx([0.1 * k for k in range(1, 10)])
    assert round_sparsities("explicit", 0, 0.0, [0.5, 0.9]) == [0.5, 0.9]


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_out_of_range(sparsity):
    w = weights()
    with pytest.raises(ConfigError, match=r"out of range.*\[0, 1\)"):
        prune("global_magnitude", w, ones(w), sparsity)


@pytest.mark.parametrize("rate", [0.0, -0.2, 1.0, 1.3])
def test_prune_rate_out_of_range(rate):
    with pytest.raises(ConfigError, match="prune rate"):
        round_sparsities("remaining", 3, rate, [])


def test_bad_schedules():
    with pytest.raises(ConfigError, match="at most 9 rounds"):
        round_sparsities("original", 10, 0.1, [])
    with pytest.raises(ConfigError, match="increase"):
        round_sparsities("explicit", 0, 0.0, [0.5, 0.4])
    with pytest.raises(ConfigError, match="unknown sparsity schedule"):
        round_sparsities("cubic", 3, 0.2, [])


def test_unknown_method_lists_known():
    w = weights()
    with pytest.raises(ConfigError, match="known pruning methods: .*global_magnitude, global_random"):
        prune("snip", w, ones(w), 0.5)


def test_target_below_current_sparsity_is_rejected():
    w = weights()
    mask = prune("global_magnitude", w, ones(w), 0.5)
    with pytest.raises(ConfigError, match="below the current"):
        prune("global_magnitude", w, mask, 0.3)


def test_registry_has_all_methods():
    assert set(METHODS) <= set(PRUNING_METHODS.names())


def test_two_four_tickets_keep_exactly_two_of_every_four_and_nest():
    gen = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(8, 16, generator=gen), "b": torch.randn(4, 2, 3, 2, generator=gen)}
    ones = Mask({n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()})
    half = prune("nm_2_4_magnitude", w, ones, 0.25)
    full = prune("nm_2_4_magnitude", w, half, 0.5)
    assert half.num_pruned() == 44 and full.num_pruned() == 88  # exact: 176 weights
    assert not any(torch.any(full.tensors[n] & ~half.tensors[n]) for n in w)  # rounds nest
    for name, keep in full.tensors.items():
        per_group = keep.reshape(keep.shape[0], -1).reshape(-1, 4).sum(1)
        assert torch.all(per_group == 2), name
        # the kept two are the two largest |w| of their group
        mags = w[name].abs().reshape(w[name].shape[0], -1).reshape(-1, 4)
        assert torch.equal(keep.reshape(-1, 4), mags >= mags.topk(2, dim=1).values[:, 1:2])
    random = prune("nm_2_4_random", w, ones, 0.5, torch.Generator().manual_seed(1))
    assert all(torch.all(k.reshape(-1, 4).sum(1) == 2) for k in random.tensors.values())
    with pytest.raises(ConfigError, match="at most 50%"):
        prune("nm_2_4_magnitude", w, ones, 0.6)
    odd = {"c": torch.randn(3, 6)}
    with pytest.raises(ConfigError, match="do not divide 'c' \\(input width 6\\)"):
        prune("nm_2_4_magnitude", odd, Mask({"c": torch.ones(3, 6, dtype=torch.bool)}), 0.5)


def test_two_four_imp_run_with_its_random_baseline(tmp_path):
    from tests.conftest import tiny_config
    from ticketlab.config import parse_config
    from ticketlab.experiment import run_experiment
    from ticketlab.runfolders import load_run

    cfg = tiny_config(prune={"method": "nm_2_4_magnitude", "schedule": "explicit", "sparsities": [0.25, 0.5]},
                      baselines=["random_prune"])
    run = load_run(run_experiment(parse_config(cfg), tmp_path, progress=False))
    final = Mask.load(tmp_path / run["run"] / "rounds/round_002/mask.safetensors")
    for name, keep in final.tensors.items():
        assert torch.all(keep.reshape(keep.shape[0], -1).reshape(-1, 4).sum(1) == 2), name
    rp = Mask.load(tmp_path / run["run"] / "baselines/random_prune/round_002/mask.safetensors")
    assert rp.num_pruned() == final.num_pruned() and rp != final
