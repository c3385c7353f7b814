"""The dataset registry: real loaders that return uint8 images (N, H, W, C) and integer labels.

Every loader reads the real on-disk format (scikit-learn's bundled digits, Fashion-MNIST IDX files,
torchvision's CIFAR pickles, an ImageFolder tree). Nothing here downloads unless
``data.download`` is true.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from osal_ray.config import DataConfig
from osal_ray.data.idx import read_idx
from osal_ray.errors import InputError
from osal_ray.registry import Registry

# Splits of datasets without an official test set are drawn with this seed, so that
# sample ids and the test set do not change with the experiment seed.
FIXED_SPLIT_SEED = 20240607

# Words, not numerals: class names also become CLIP prompts ("a photo of a three").
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


@dataclass(frozen=True)
class ImageSplit:
    """Images as uint8 (N, H, W, C) and their integer labels."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")


@dataclass(frozen=True)
class SourceDataset:
    """A loaded dataset: train and test splits, class names and pixel normalisation."""

    name: str
    train: ImageSplit
    test: ImageSplit
    class_names: tuple[str, ...]
    pixel_max: float

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @functools.cached_property
    def content_digest(self) -> str:
        """A digest of class names, pixel scale and every image's bytes, computed once per load: a
        pool of the same layout but other images or names is not mistaken for an existing one."""
        digest = hashlib.sha256(repr((self.class_names, self.pixel_max, self.train.images.shape)).encode())
        for images in (self.train.images, self.test.images):
            digest.update(memoryview(np.ascontiguousarray(images)).cast("B"))
        return digest.hexdigest()[:16]

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training images, after scaling to [0, 1].

        Summed in chunks of images, so a pool of millions needs no float copy of all its pixels.
        """
        images = self.train.images
        total = np.zeros(images.shape[-1])
        squares = np.zeros(images.shape[-1])
        for start in range(0, len(images), 65_536):
            pixels = images[start : start + 65_536].reshape(-1, images.shape[-1]).astype(np.float64) / self.pixel_max
            total += pixels.sum(axis=0)
            squares += (pixels**2).sum(axis=0)
        count = images.size // images.shape[-1]
        mean = total / count
        std = np.maximum(np.sqrt(np.maximum(squares / count - mean**2, 0.0)), 1e-3)
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


DatasetLoader = Callable[[DataConfig], Any]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register a loader ``fn(DataConfig) -> SourceDataset`` (images with labels, in memory) or
    ``-> ImagePoolSource`` (a listed folder of mostly unlabeled files, decoded by a Ray Data pass
    later, see ``osal_ray.data.image_pool``); names are unique."""
    return DATASETS.decorator(name)


def load_dataset(config: DataConfig) -> Any:
    """Load (or, for ``image_pool``, list and check) the dataset that ``config.dataset`` names."""
    loader = DATASETS.get(config.dataset, "data.dataset")
    dataset = loader(config)
    if dataset.num_classes < 2:
        raise InputError("data.dataset", f"{config.dataset} has {dataset.num_classes} class(es); need at least 2")
    return dataset


def split_fixed(images: np.ndarray, labels: np.ndarray, test_fraction: float) -> tuple[ImageSplit, ImageSplit]:
    """A stratified train/test split that depends only on the data (ids stay stable)."""
    rng = np.random.default_rng(FIXED_SPLIT_SEED)
    test_mask = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_test = int(round(len(members) * test_fraction))
        test_mask[rng.choice(members, size=n_test, replace=False)] = True
    return (
        ImageSplit(images[~test_mask], labels[~test_mask]),
        ImageSplit(images[test_mask], labels[test_mask]),
    )


@register_dataset("digits")
def load_digits(config: DataConfig) -> SourceDataset:
    """scikit-learn's 1,797 handwritten 8x8 digits (values 0..16), shipped with the library."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images.astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    train, test = split_fixed(images, labels, config.test_fraction)
    return SourceDataset("digits", train, test, DIGIT_NAMES, pixel_max=16.0)


def _find_idx(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


@register_dataset("fashion_mnist")
def load_fashion_mnist(config: DataConfig) -> SourceDataset:
    """Fashion-MNIST from its original IDX files (Debian's package layout or torchvision's)."""
    root = Path(config.root or FASHION_MNIST_DEFAULT_ROOT)
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for folder in (root, root / "FashionMNIST" / "raw"):
        found = [_find_idx(folder, stem) for stem in stems]
        if all(found):
            arrays = [read_idx(path) for path in found]  # type: ignore[arg-type]
            return SourceDataset(
                "fashion_mnist",
                _idx_split(arrays[0], arrays[1], found[0], found[1]),  # type: ignore[arg-type]
                _idx_split(arrays[2], arrays[3], found[2], found[3]),  # type: ignore[arg-type]
                FASHION_MNIST_CLASSES,
                pixel_max=255.0,
            )
    if config.download:
        from torchvision.datasets import FashionMNIST

        train = FashionMNIST(str(root), train=True, download=True)
        test = FashionMNIST(str(root), train=False, download=True)
        return SourceDataset(
            "fashion_mnist",
            ImageSplit(train.data.numpy()[..., None], train.targets.numpy().astype(np.int64)),
            ImageSplit(test.data.numpy()[..., None], test.targets.numpy().astype(np.int64)),
            FASHION_MNIST_CLASSES,
            pixel_max=255.0,
        )
    raise InputError(
        "data.root",
        f"no Fashion-MNIST IDX files ({', '.join(stems)}, optionally .gz) in {root} or {root / 'FashionMNIST/raw'}; "
        "install them with `apt-get install dataset-fashion-mnist` (puts them in "
        f"{FASHION_MNIST_DEFAULT_ROOT}), point data.root at them, or set data.download: true",
    )


def _idx_split(images: np.ndarray, labels: np.ndarray, image_path: Path, label_path: Path) -> ImageSplit:
    if images.ndim != 3:
        raise InputError("data.root", f"{image_path}: expected a 3-d image array, got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise InputError(
            "data.root", f"{label_path} holds {labels.shape} labels for {len(images)} images in {image_path}"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise InputError("data.root", f"{label_path}: label {labels.max()} is outside 0..9")
    return ImageSplit(np.ascontiguousarray(images[..., None]), labels.astype(np.int64))


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR's python batches hold (dicts, lists, strings, bytes, numbers, numpy
    arrays) and refuses every other global, so a crafted batch file cannot run code (plain
    pickle.load, which torchvision's loader uses, would: a ``__reduce__`` runs on load)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("builtins", "dict"), ("builtins", "list"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR python batch, without executing anything it holds (see ``_CifarUnpickler``)."""
    try:
        with open(path, "rb") as handle:
            batch = _CifarUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise InputError("data.root", f"{path} is not a CIFAR python batch ({exc})") from None
    if not isinstance(batch, dict):
        raise InputError("data.root", f"{path} is not a CIFAR python batch (it holds a {type(batch).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _cifar_loader(torchvision_class_name: str, name: str) -> DatasetLoader:
    """CIFAR from torchvision's python-pickle archives (torchvision's file lists, checksums and
    download), read with a restricted unpickler."""

    def load(config: DataConfig) -> SourceDataset:
        import torchvision.datasets as tvd
        import torchvision.datasets.utils as tv_utils

        cls = getattr(tvd, torchvision_class_name)
        if config.root is None and not config.download:
            raise InputError("data.root", f"{name} needs data.root (the folder holding {cls.base_folder}/) or data.download: true")
        root = Path(config.root or "data")
        folder = root / cls.base_folder
        if config.download and not folder.is_dir():
            try:
                tv_utils.download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
            except (OSError, RuntimeError) as exc:  # URLError is an OSError: no network here
                raise InputError("data.download", f"could not download {cls.url} into {root} ({exc}); download and extract "
                                                  "it by hand and set data.download: false") from None
        if not folder.is_dir():
            raise InputError(
                "data.root",
                f"{folder} does not exist; download {cls.url} and extract it into {root}, or set data.download: true",
            )
        for filename, md5 in [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]:
            path = folder / filename
            if not path.is_file():
                raise InputError("data.root", f"{path} is missing from the {name} archive")
            if config.verify_checksums and not tv_utils.check_integrity(str(path), md5):
                raise InputError("data.root", f"{name} under {root}: {path} is corrupted (its md5 is not {md5}); "
                                              "download it again, or set data.verify_checksums: false")
        splits = [_cifar_split(folder, listed) for listed in (cls.train_list, cls.test_list)]
        meta = read_cifar_batch(folder / cls.meta["filename"])
        classes = tuple(str(c) for c in meta.get(cls.meta["key"], ()))
        if not classes:
            raise InputError("data.root", f"{folder / cls.meta['filename']} lacks {cls.meta['key']}")
        return SourceDataset(name, splits[0], splits[1], classes, pixel_max=255.0)

    return load


def _cifar_split(folder: Path, listed: list[list[str]]) -> ImageSplit:
    images, labels = [], []
    for filename, _ in listed:
        batch = read_cifar_batch(folder / filename)
        label_key = "labels" if "labels" in batch else "fine_labels"
        if "data" not in batch or label_key not in batch:
            raise InputError("data.root", f"{folder / filename} lacks data or {label_key}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(batch[label_key]) != len(data):
            raise InputError("data.root", f"{folder / filename}: expected N x 3072 images and N labels, got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return ImageSplit(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


register_dataset("cifar10")(_cifar_loader("CIFAR10", "cifar10"))
register_dataset("cifar100")(_cifar_loader("CIFAR100", "cifar100"))


@register_dataset("image_folder")
def load_image_folder(config: DataConfig) -> SourceDataset:
    """A user's images in torchvision's ImageFolder layout, resized to ``data.image_size``.

    ``root/train/<class>/*`` and ``root/test/<class>/*``; without a ``test`` folder, ``root``
    itself holds the class folders and ``data.test_fraction`` of each class is held out.
    """
    if config.root is None:
        raise InputError("data.root", "image_folder needs data.root, a folder of class sub-folders")
    root = Path(config.root)
    if not root.is_dir():
        raise InputError("data.root", f"{root} is not a directory")
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() and test_dir.is_dir():
        train_images, train_labels, classes = _read_image_folder(train_dir, config.image_size)
        test_images, test_labels, test_classes = _read_image_folder(test_dir, config.image_size)
        if test_classes != classes:
            raise InputError("data.root", f"class folders differ between {train_dir} and {test_dir}")
        train, test = ImageSplit(train_images, train_labels), ImageSplit(test_images, test_labels)
    else:
        images, labels, classes = _read_image_folder(root, config.image_size)
        train, test = split_fixed(images, labels, config.test_fraction)
    names = tuple(classes)
    if config.class_names is not None:
        if len(config.class_names) != len(classes):
            raise InputError(
                "data.class_names", f"{len(config.class_names)} names given for {len(classes)} class folders {classes}"
            )
        names = tuple(config.class_names)
    return SourceDataset("image_folder", train, test, names, pixel_max=255.0)


def _read_image_folder(folder: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import Resize

    resize = Resize((size, size))
    try:
        dataset = ImageFolder(str(folder), transform=lambda img: np.asarray(resize(img.convert("RGB")), dtype=np.uint8))
    except (FileNotFoundError, RuntimeError) as exc:
        raise InputError("data.root", f"{folder}: {exc}") from None
    from PIL import Image

    images, labels = [], []
    for index in range(len(dataset)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image, label = dataset[index]
        except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError("data.root", f"cannot read image {dataset.samples[index][0]}: {exc}") from None
        images.append(image)
        labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), list(dataset.classes)


@register_dataset("synthetic")
def load_synthetic(config: DataConfig) -> SourceDataset:
    """Generated grayscale images of ``num_classes`` classes for large-pool scaling experiments.

    Each class has a smooth random prototype of ``image_size`` x ``image_size``; a sample is its
    class prototype plus pixel noise, so classes are learnable but overlap. ``num_samples``
    training images (millions are fine: generated in chunks) and a test set of
    ``test_fraction`` of that, at most 10,000. Deterministic: the same config gives the same images.
    """
    rng = np.random.default_rng(FIXED_SPLIT_SEED + 7)
    side, k = config.image_size, config.num_classes
    coarse = rng.uniform(0, 255, (k, max(2, side // 4), max(2, side // 4)))
    prototypes = np.stack([np.kron(c, np.ones((side // c.shape[0] + 1, side // c.shape[1] + 1)))[:side, :side] for c in coarse])
    n_test = min(10_000, max(100, int(config.num_samples * config.test_fraction)))

    def generate(n: int, seed: int) -> ImageSplit:
        local = np.random.default_rng(seed)
        labels = local.integers(0, k, n)
        images = np.empty((n, side, side, 1), dtype=np.uint8)
        for start in range(0, n, 250_000):
            stop = min(n, start + 250_000)
            noisy = prototypes[labels[start:stop]] + local.normal(0, 100, (stop - start, side, side))
            images[start:stop, :, :, 0] = np.clip(noisy, 0, 255).astype(np.uint8)
        return ImageSplit(images, labels.astype(np.int64))

    return SourceDataset("synthetic", generate(config.num_samples, 1), generate(n_test, 2),
                         tuple(f"class_{i}" for i in range(k)), pixel_max=255.0)
