import pytest
import torch

from ticketlab.errors import CorruptFileError, MaskMismatchError
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.prunable import prunable_names


def small_model(width: int = 4):
    return build_model("resnet20", 3, {"width": width}, seed=0)


def half_mask(model):
    names = prunable_names(model)
    gen = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    return Mask({n: torch.rand(params[n].shape, generator=gen) > 0.5 for n in names})


def test_save_load_roundtrip_with_metadata(tmp_path):
    model = small_model()
    mask = half_mask(model)
    mask.save(tmp_path / "m.safetensors", {"method": "test"})
    loaded = Mask.load(tmp_path / "m.safetensors")
    assert loaded == mask
    meta = Mask.load_meta(tmp_path / "m.safetensors")
    assert meta["method"] == "test"
    assert meta["num_pruned"] == mask.num_pruned()
    assert meta["fingerprint"]["backbone.layer1.0.conv1.weight"] == [4, 4, 3, 3]
    assert set(meta["layer_sparsity"]) == set(mask.names())
    assert abs(meta["sparsity"] - mask.sparsity()) < 1e-12


def test_apply_zeroes_exactly_the_pruned_weights():
    model = small_model()
    mask = half_mask(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask.apply_(model)
    params = dict(model.named_parameters())
    for name, keep in mask.tensors.items():
        assert torch.all(params[name][~keep] == 0)
        assert torch.equal(params[name][keep], before[name][keep])
    assert torch.equal(params["head.weight"], before["head.weight"])


def test_sparsity_accounting():
    model = small_model()
    mask = half_mask(model)
    total = sum(p.numel() for p in model.parameters())
    assert mask.num_total() == sum(t.numel() for t in mask.tensors.values())
    assert mask.sparsity() == pytest.approx(mask.num_pruned() / mask.num_total())
    assert mask.model_sparsity(model) == pytest.approx(mask.num_pruned() / total)
    assert mask.model_sparsity(model) < mask.sparsity()
    layer = mask.layer_sparsity()
    name = mask.names()[0]
    assert layer[name] == pytest.approx(float((~mask.tensors[name]).float().mean()))


def test_mask_for_another_model_names_first_mismatch():
    mask = half_mask(small_model(width=4))
    with pytest.raises(MaskMismatchError, match=r"backbone\.layer1\.0\.conv1\.weight.*shape"):
        mask.apply_(small_model(width=8))
    other = build_model("resnet18", 3, {"width": 4}, seed=0)
    bad = Mask({"backbone.not_there.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(MaskMismatchError, match="not_there"):
        bad.check_fits(other)


def test_truncated_or_corrupted_mask_is_detected(tmp_path):
    mask = half_mask(small_model())
    path = tmp_path / "m.safetensors"
    mask.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="corrupted or truncated"):
        Mask.load(path)
    # same length, one flipped byte: caught by the checksum
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError):
        Mask.load(path)
    # no sidecar: safetensors itself rejects a truncated file
    path.write_bytes(data[:40])
    path.with_suffix(".json").unlink()
    with pytest.raises(CorruptFileError, match="truncated"):
        Mask.load(path)


def test_complement_is_exact():
    mask = half_mask(small_model())
    comp = mask.complement()
    assert comp.num_pruned() == mask.num_total() - mask.num_pruned()
    assert comp.complement() == mask
