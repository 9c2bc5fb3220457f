"""Image datasets in their published on-disk formats, written byte by byte here (nothing is downloaded)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from ticketlab.data.base import build_task
from ticketlab.errors import DataError


def pixel_value(x: torch.Tensor) -> torch.Tensor:
    """Back from the task's [-1, 1] convention to 0..255."""
    return torch.round((x + 1) / 2 * 255)


def cifar_records(labels: list[list[int]], seed: int) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)  # CIFAR: R plane, G plane, B plane
    rows = [bytes(label) + pixels[i].tobytes() for i, label in enumerate(labels)]
    return b"".join(rows), pixels


def test_cifar10_binary_records_decode_exactly(tmp_path):
    expected = {}
    for i in range(1, 6):
        blob, pixels = cifar_records([[j % 10] for j in range(10 * i, 10 * i + 10)], i)
        (tmp_path / f"data_batch_{i}.bin").write_bytes(blob)
        expected[i] = pixels
    blob, test_pixels = cifar_records([[j % 10] for j in range(12)], 9)
    (tmp_path / "test_batch.bin").write_bytes(blob)
    task = build_task("cifar10", {"path": str(tmp_path), "val_fraction": 0.2})
    assert (len(task.train), len(task.val), len(task.test)) == (40, 10, 12)
    assert task.class_names[3] == "cat" and task.num_classes == 10
    assert torch.equal(pixel_value(task.test.x[[5]])[0], torch.as_tensor(test_pixels[5]).float())
    assert task.test.y.tolist() == [j % 10 for j in range(12)]
    rows = np.sort(np.concatenate([task.train.x.rows, task.val.x.rows]))
    assert rows.tolist() == list(range(50))  # train and val partition the five training files
    assert not set(task.train.x.rows) & set(task.val.x.rows)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    blob, _ = cifar_records([[j % 20, j % 100] for j in range(30)], 0)
    (tmp_path / "train.bin").write_bytes(blob)
    (tmp_path / "test.bin").write_bytes(cifar_records([[1, 42], [2, 7]], 1)[0])
    fine = build_task("cifar100", {"path": str(tmp_path)})
    coarse = build_task("cifar100", {"path": str(tmp_path), "label": "coarse"})
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert fine.test.y.tolist() == [42, 7] and coarse.test.y.tolist() == [1, 2]


def test_a_truncated_cifar_file_is_one_clear_error(tmp_path):
    blob, _ = cifar_records([[1]] * 4, 0)
    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}.bin").write_bytes(blob)
    (tmp_path / "test_batch.bin").write_bytes(blob[:-100])
    with pytest.raises(DataError, match=r"test_batch.bin is truncated .* multiple of the 3073-byte record"):
        build_task("cifar10", {"path": str(tmp_path)})


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 12), dtype=np.uint8)
    y = np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1])[:, None]
    savemat(str(tmp_path / "train_32x32.mat"), {"X": x, "y": y})
    savemat(str(tmp_path / "test_32x32.mat"), {"X": x, "y": y})
    task = build_task("svhn", {"path": str(tmp_path), "val_fraction": 0.2})
    assert task.test.y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]  # label 10 is the digit 0
    assert torch.equal(pixel_value(task.test.x[[3]])[0], torch.as_tensor(x[:, :, :, 3].transpose(2, 0, 1)).float())
    (tmp_path / "test_32x32.mat").write_bytes((tmp_path / "test_32x32.mat").read_bytes()[:300])
    with pytest.raises(DataError, match="test_32x32.mat is truncated or not a MATLAB"):
        build_task("svhn", {"path": str(tmp_path)})


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + \
        array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_files_plain_or_gzipped(tmp_path, gzipped):
    rng = np.random.default_rng(1)
    images = {"train": rng.integers(0, 256, (20, 28, 28)), "t10k": rng.integers(0, 256, (6, 28, 28))}
    for prefix, array in images.items():
        for stem, data in ((f"{prefix}-images-idx3-ubyte", idx_bytes(array)),
                           (f"{prefix}-labels-idx1-ubyte", idx_bytes(np.arange(len(array)) % 10))):
            if gzipped:
                (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (tmp_path / stem).write_bytes(data)
    task = build_task("fashion_mnist", {"path": str(tmp_path), "image_size": 28})
    assert task.test.y.tolist() == [0, 1, 2, 3, 4, 5] and task.class_names[9] == "boot"
    grey = pixel_value(task.test.x[[2]])[0]
    assert torch.equal(grey[0], torch.as_tensor(images["t10k"][2]).float()) and torch.equal(grey[0], grey[2])


def test_a_truncated_idx_file_is_one_clear_error(tmp_path):
    array = np.zeros((5, 28, 28))
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(array)[:-10])
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(5)))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is truncated \(3910 bytes .* promises 3920\)"):
        build_task("mnist", {"path": str(tmp_path)})


def write_pngs(folder, count: int, value: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8, 3), value + i, dtype=np.uint8)).save(folder / f"{i}.png")


def test_imagenet_layout_uses_val_as_test_and_cuts_validation_from_train(tmp_path):
    for cls, value in (("n01", 10), ("n02", 100)):
        write_pngs(tmp_path / "train" / cls, 10, value)
        write_pngs(tmp_path / "val" / cls, 3, value)
    task = build_task("image_folder", {"path": str(tmp_path), "image_size": 8, "val_fraction": 0.2})
    assert (len(task.train), len(task.val), len(task.test)) == (16, 4, 6)
    assert task.class_names == ["n01", "n02"] and sorted(task.test.y.tolist()) == [0, 0, 0, 1, 1, 1]


def test_an_empty_class_folder_is_one_clear_error(tmp_path):
    write_pngs(tmp_path / "cats", 3, 10)
    (tmp_path / "dogs").mkdir()
    with pytest.raises(DataError, match=r"class folder .*dogs holds no images"):
        build_task("image_folder", {"path": str(tmp_path)})


def test_npz_inputs_and_labels_of_different_lengths_are_refused_and_string_labels_mapped(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (80, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "bad.npz", x=x, y=np.arange(50) % 2)
    with pytest.raises(DataError, match="80 inputs but 50 labels"):
        build_task("npz", {"path": str(tmp_path / "bad.npz")})
    np.savez(tmp_path / "named.npz", x=x, y=np.array(["dog", "cat", "bird", "cat"] * 20))
    task = build_task("npz", {"path": str(tmp_path / "named.npz")})
    assert task.class_names == ["bird", "cat", "dog"] and task.num_classes == 3
    assert sorted(torch.cat([task.train.y, task.val.y, task.test.y]).tolist()) == sorted([2, 1, 0, 1] * 20)
