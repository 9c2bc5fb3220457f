import numpy as np
import pytest
import torch

from ticketlab.data import build_task
from ticketlab.data.scenes import COLOURS, SHAPES, generate_scenes


def test_scenes_are_deterministic_from_the_seed():
    a, sa = generate_scenes(20, seed=11, size=48)
    b, sb = generate_scenes(20, seed=11, size=48)
    c, _ = generate_scenes(20, seed=12, size=48)
    assert a.shape == (20, 48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and sa == sb
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("size", [32, 64])
def test_scene_contents(size):
    _, scenes = generate_scenes(50, seed=0, size=size)
    for scene in scenes:
        assert 1 <= len(scene.objects) <= 5
        assert scene.largest.radius == max(o.radius for o in scene.objects)
        assert all(o.shape in SHAPES and o.colour in COLOURS for o in scene.objects)
    with pytest.raises(ValueError, match=r"\[32, 64\]"):
        generate_scenes(2, 0, size=16)


@pytest.mark.parametrize(("name", "classes"), [("scenes_shape", 3), ("scenes_colour", 6), ("scenes_count", 5),
                                               ("scenes_colour_count", 5), ("scenes_shape_colour", 18),
                                               ("scenes_shifted_shape", 3)])
def test_scene_tasks_have_their_label_semantics(name, classes):
    task = build_task(name, {"n_train": 300, "n_val": 20, "n_test": 20})
    assert task.num_classes == classes == len(task.class_names)
    assert task.train.x.shape == (300, 3, 32, 32)
    assert task.train.y.min() >= 0 and task.train.y.max() < classes
    assert len(task.train.y.unique()) >= min(classes, 3)
    assert -1.0 <= task.train.x.min() and task.train.x.max() <= 1.0


def test_shifted_domain_differs_but_labels_agree():
    plain = build_task("scenes_shape", {"n_train": 50, "n_val": 5, "n_test": 5})
    shifted = build_task("scenes_shifted_shape", {"n_train": 50, "n_val": 5, "n_test": 5})
    assert torch.equal(plain.train.y, shifted.train.y)  # same scenes, same labels
    assert (plain.train.x - shifted.train.x).abs().mean() > 0.1


def test_digits_are_the_real_sklearn_digits():
    task = build_task("digits")
    assert len(task.train) + len(task.val) + len(task.test) == 1797
    assert task.num_classes == 10 and task.train.x.shape[1:] == (3, 32, 32)


def test_image_folder_loader(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    task = build_task("image_folder", {"path": str(tmp_path / "data"), "image_size": 32})
    assert task.class_names == ["cats", "dogs"] and task.num_classes == 2
    assert len(task.train) + len(task.val) + len(task.test) == 20
    assert task.train.x.shape[1:] == (3, 32, 32)


def test_npz_loader_with_and_without_splits(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (30, 16, 16, 3), dtype=np.uint8)
    y = np.arange(30) % 3
    np.savez(tmp_path / "a.npz", x=x, y=y)
    task = build_task("npz", {"path": str(tmp_path / "a.npz"), "image_size": 32})
    assert task.num_classes == 3 and len(task.train) == 30 - 3 - 6
    np.savez(tmp_path / "b.npz", x_train=x[:20], y_train=y[:20], x_val=x[20:25], y_val=y[20:25],
             x_test=x[25:], y_test=y[25:])
    task = build_task("npz", {"path": str(tmp_path / "b.npz")})
    assert (len(task.train), len(task.val), len(task.test)) == (20, 5, 5)
    assert torch.equal(task.val.y, torch.as_tensor(y[20:25]))


def test_hf_saved_dataset_loader(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(12)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % 4 for i in range(12)]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "hf"))
    task = build_task("hf_disk", {"path": str(tmp_path / "hf"), "image_size": 32})
    assert task.num_classes == 4 and task.train.x.shape[1:] == (3, 32, 32)
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(4)), "test": ds.select(range(4, 8))}).save_to_disk(
        str(tmp_path / "hfdict"))
    task = build_task("hf_disk", {"path": str(tmp_path / "hfdict")})
    assert (len(task.train), len(task.val), len(task.test)) == (12, 4, 4)
    from ticketlab.data import images_to_tensor
    from ticketlab.data.loader import LazyImages

    assert isinstance(task.train.x, LazyImages)  # stays in the memory-mapped dataset, decoded row by row
    expected = images_to_tensor(np.stack([np.asarray(images[i].resize((32, 32))) for i in (3, 5)]), 32)
    assert torch.equal(task.train.x[[3, 5]], expected)
    assert torch.equal(task.train.y, torch.tensor([i % 4 for i in range(12)]))
