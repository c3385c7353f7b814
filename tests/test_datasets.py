"""The real loaders on small files in the real formats, which the tests write."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from osal_ray.config import DataConfig
from osal_ray.data import load_dataset
from osal_ray.data.idx import write_idx
from osal_ray.errors import InputError


def test_digits_ships_with_scikit_learn():
    dataset = load_dataset(DataConfig(dataset="digits"))
    assert dataset.num_classes == 10
    assert dataset.train.images.shape[1:] == (8, 8, 1)
    assert len(dataset.train.labels) + len(dataset.test.labels) == 1797
    # The fixed split does not depend on anything but the data.
    np.testing.assert_array_equal(dataset.test.labels, load_dataset(DataConfig(dataset="digits")).test.labels)


def _write_fashion(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True, label_count: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", np.arange(label_count or n_train) % 10)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", np.arange(n_test) % 10)


def test_fashion_mnist_debian_layout_gz(tmp_path):
    _write_fashion(tmp_path)
    dataset = load_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path)))
    assert dataset.train.images.shape == (30, 28, 28, 1)
    assert dataset.test.labels.tolist() == list(range(10))
    assert dataset.class_names[0] == "T-shirt/top"


def test_fashion_mnist_torchvision_layout(tmp_path):
    _write_fashion(tmp_path / "FashionMNIST" / "raw", gz=False)
    dataset = load_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path)))
    assert len(dataset.train.labels) == 30


def test_fashion_mnist_label_count_mismatch(tmp_path):
    _write_fashion(tmp_path, label_count=29)
    with pytest.raises(InputError, match="29"):
        load_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path)))


def test_fashion_mnist_corrupt_file(tmp_path):
    _write_fashion(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="data.root"):
        load_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path)))


def test_fashion_mnist_missing_root_says_how_to_get_it(tmp_path):
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "nowhere")))


def _write_cifar10(root: Path, per_batch: int = 4) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), "labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": names}, handle)


def test_cifar10_real_pickle_format(tmp_path):
    _write_cifar10(tmp_path)
    dataset = load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), verify_checksums=False))
    assert dataset.train.images.shape == (20, 32, 32, 3)
    assert dataset.test.images.shape == (4, 32, 32, 3)
    assert dataset.class_names[3] == "cat"


def test_cifar10_checksums_are_verified_by_default(tmp_path):
    _write_cifar10(tmp_path)
    with pytest.raises(InputError, match="corrupted"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))


def test_cifar100_real_pickle_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name, n in (("train", 12), ("test", 5)):
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n)), "coarse_labels": [0] * n}, handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}, handle)
    dataset = load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path), verify_checksums=False))
    assert dataset.num_classes == 100
    assert dataset.train.labels.tolist() == list(range(12))


def test_cifar_missing_root(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))
    with pytest.raises(InputError, match="data.root"):
        load_dataset(DataConfig(dataset="cifar100"))


def _write_image_folder(folder: Path, classes: list[str], per_class: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")


def test_image_folder_with_train_and_test(tmp_path):
    _write_image_folder(tmp_path / "train", ["cat", "dog", "owl"], 4)
    _write_image_folder(tmp_path / "test", ["cat", "dog", "owl"], 2)
    dataset = load_dataset(DataConfig(dataset="image_folder", root=str(tmp_path), image_size=16))
    assert dataset.train.images.shape == (12, 16, 16, 3)
    assert dataset.test.images.shape == (6, 16, 16, 3)
    assert dataset.class_names == ("cat", "dog", "owl")


def test_image_folder_without_test_split_and_display_names(tmp_path):
    _write_image_folder(tmp_path, ["a", "b"], 10)
    dataset = load_dataset(DataConfig(dataset="image_folder", root=str(tmp_path), image_size=8, test_fraction=0.2, class_names=["apple", "banana"]))
    assert len(dataset.test.labels) == 4 and len(dataset.train.labels) == 16
    assert dataset.class_names == ("apple", "banana")


def test_image_folder_unreadable_image(tmp_path):
    _write_image_folder(tmp_path, ["a", "b"], 2)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG nothing")
    with pytest.raises(InputError, match="broken.png"):
        load_dataset(DataConfig(dataset="image_folder", root=str(tmp_path), image_size=8))


def test_a_cifar_batch_cannot_run_code_whatever_the_checksum_setting(tmp_path):
    _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as handle:
        pickle.dump({"data": Exploit(), "labels": [0]}, handle)
    with pytest.raises(InputError, match=r"data_batch_1 is not a CIFAR python batch \(global posix.system is not allowed"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), verify_checksums=False))
    assert not marker.exists()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x00garbage, not a pickle")
    with pytest.raises(InputError, match="data_batch_1 is not a CIFAR python batch"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), verify_checksums=False))


def test_cifar_download_without_network_is_one_clear_line(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(InputError, match=r"data.download: could not download https://www.cs.toronto.edu/.*name resolution"):
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), download=True))
