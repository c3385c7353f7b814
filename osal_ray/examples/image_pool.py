"""``python -m osal_ray.examples.image_pool DIR``: write a realistic ``image_pool`` folder to try osal_ray on.

From the real images on this machine: Fashion-MNIST when its IDX files are installed (Debian's
``dataset-fashion-mnist``, or ``--fashion-mnist-root``), else scikit-learn's digits. It writes

- ``labeled/<class>/``: a few labeled examples of 3 known classes, and ``labeled/unknown/`` with
  a few examples of other classes already known to be out of scope;
- ``unlabeled/batch_01/``, ``unlabeled/batch_02/``: a large pool, the known classes mixed with
  every other class (60% of it), as PNG files with some JPEG, WebP, BMP and GIF, a few enlarged;
- ``test/<class>/``: known-class test images, for accuracy;
- a few deliberately broken files in ``unlabeled/`` (empty, truncated, not an image) and one
  byte-identical copy, which a run skips and collapses (``skipped.csv``, ``duplicates.csv``);
- ``truth.csv`` beside them (``path,label`` of every unlabeled image): what a person would
  answer, for scripted labeling and for ``oracle.truth_file``. A real pool has no such file.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

FASHION_NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FORMATS = ("png",) * 14 + ("jpg", "jpg", "webp", "bmp", "gif")


def _source(source: str, fashion_root: str | None) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...], tuple[int, ...]]:
    """(name, train images, train labels, test images, test labels, class names, known classes)."""
    from osal_ray.config import DataConfig
    from osal_ray.data import load_dataset
    from osal_ray.errors import InputError

    try:
        if source == "digits":
            raise InputError("source", "digits asked for")
        data = load_dataset(DataConfig(dataset="fashion_mnist", root=fashion_root))
        return ("fashion_mnist", data.train.images[..., 0], data.train.labels, data.test.images[..., 0], data.test.labels,
                FASHION_NAMES, (1, 7, 8))  # trouser, sneaker, bag: what this example's user wants to find
    except InputError:
        if source == "fashion_mnist":
            raise
        data = load_dataset(DataConfig(dataset="digits"))
        scale = lambda images: (images[..., 0].astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)  # noqa: E731
        return "digits", scale(data.train.images), data.train.labels, scale(data.test.images), data.test.labels, DIGIT_NAMES, (3, 5, 8)


def write_example(directory: Path, pool_size: int = 2000, labeled_per_class: int = 8, test_per_class: int = 100,
                  seed: int = 0, fashion_root: str | None = None, source: str = "auto") -> dict:
    """Write the example folder; returns a summary (counts, source). ``source``: ``auto`` (Fashion-MNIST
    when installed, else digits), ``fashion_mnist`` or ``digits``."""
    from PIL import Image

    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty; give a new folder")
    name, train_x, train_y, test_x, test_y, names, known = _source(source, fashion_root)
    rng = np.random.default_rng(seed)
    known_set = set(known)
    order = rng.permutation(len(train_y))
    is_known = np.isin(train_y[order], list(known))
    known_ids, other_ids = order[is_known], order[~is_known]
    per_class = {c: [i for i in known_ids if train_y[i] == c] for c in known}
    labeled = {c: per_class[c][:labeled_per_class] for c in known}
    unknown_examples = other_ids[:4]
    used = {int(i) for ids in labeled.values() for i in ids} | {int(i) for i in unknown_examples}
    n_known = min(int(round(pool_size * 0.4)), len(known_ids) - len(used & set(known_ids.tolist())))
    pool_known = [int(i) for i in known_ids if int(i) not in used][:n_known]
    pool_other = [int(i) for i in other_ids[4:]][: pool_size - len(pool_known)]
    pool = rng.permutation(np.array(pool_known + pool_other, dtype=np.int64))

    def save(image: np.ndarray, path: Path, fmt: str, enlarge: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        if enlarge:
            picture = picture.resize((picture.size[0] * 2, picture.size[1] * 2), Image.BILINEAR)
        if fmt == "jpg":
            picture.convert("RGB").save(path, format="JPEG", quality=92)
        else:
            picture.save(path, format={"png": "PNG", "webp": "WEBP", "bmp": "BMP", "gif": "GIF"}[fmt])

    for c, ids in labeled.items():
        for i in ids:
            save(train_x[i], directory / "labeled" / names[c] / f"{names[c]}_{i:05d}.png", "png")
    for i in unknown_examples:
        save(train_x[i], directory / "labeled" / "unknown" / f"other_{int(i):05d}.png", "png")
    truth = []
    for n, i in enumerate(pool):
        fmt = FORMATS[n % len(FORMATS)]
        relative = Path("unlabeled") / f"batch_{1 + n % 2:02d}" / f"img_{n:05d}.{fmt}"
        save(train_x[i], directory / relative, fmt, enlarge=n % 50 == 7)
        truth.append((relative.as_posix(), names[train_y[i]] if train_y[i] in known_set else "unknown"))
    for c in known:
        for i in np.flatnonzero(test_y == c)[:test_per_class]:
            save(test_x[i], directory / "test" / names[c] / f"test_{int(i):05d}.png", "png")

    broken = directory / "unlabeled" / "broken"
    broken.mkdir(parents=True)
    (broken / "empty.png").write_bytes(b"")
    buffer = io.BytesIO()
    Image.fromarray(train_x[int(pool[0])]).save(buffer, format="PNG")
    (broken / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (broken / "notes.jpg").write_text("this is a text file with an image suffix\n")
    copy = directory / "unlabeled" / "batch_01" / "copy_of_img_00000.png"
    first = directory / truth[0][0]
    if first.suffix == ".png":
        copy.write_bytes(first.read_bytes())
    with open(directory / "truth.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(truth)
        if copy.exists():
            writer.writerow([copy.relative_to(directory).as_posix(), truth[0][1]])
    return {"source": name, "known_classes": [names[c] for c in known], "labeled": labeled_per_class * len(known),
            "unknown_examples": len(unknown_examples), "unlabeled": len(pool), "known_in_pool": len(pool_known),
            "test": sum(min(test_per_class, int((test_y == c).sum())) for c in known), "broken": 3, "duplicates": int(copy.exists())}


def main(argv: list[str] | None = None) -> int:
    from osal_ray.errors import InputError

    parser = argparse.ArgumentParser(prog="python -m osal_ray.examples.image_pool", description=__doc__.split("\n")[0])
    parser.add_argument("directory", metavar="DIR", help="a new (or empty) folder to write")
    parser.add_argument("--pool-size", type=int, default=2000, help="unlabeled images (default 2000)")
    parser.add_argument("--labeled-per-class", type=int, default=8)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fashion-mnist-root", default=None, help="Fashion-MNIST IDX files (default: Debian's location)")
    parser.add_argument("--source", choices=("auto", "fashion_mnist", "digits"), default="auto",
                        help="auto: Fashion-MNIST when installed, else scikit-learn's digits")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    try:
        summary = write_example(directory, args.pool_size, args.labeled_per_class, args.test_per_class, args.seed,
                                args.fashion_mnist_root, args.source)
    except (FileExistsError, InputError) as exc:
        print(f"osal_ray.examples.image_pool: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {directory} from {summary['source']}: known classes {summary['known_classes']}, "
          f"{summary['labeled']} labeled + {summary['unknown_examples']} known-unknown examples, {summary['unlabeled']} unlabeled "
          f"({summary['known_in_pool']} of the known classes), {summary['test']} test images, {summary['broken']} broken files, "
          f"{summary['duplicates']} duplicate")
    print(f"next: python -m osal_ray.run --config jobs/image_pool.yaml --set data.root={directory} --output-dir runs/my_pool")
    return 0


if __name__ == "__main__":
    sys.exit(main())
