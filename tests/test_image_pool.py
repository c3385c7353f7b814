"""Real pools: image files in, decoded by Ray Data, stable keys, skipped and duplicate files, rescans."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from osal_ray.config import DataConfig
from osal_ray.data.image_files import decode_bytes, key_to_id
from osal_ray.data.image_pool import load_image_pool, materialize_image_pool, read_absent_ids, read_initial_labels
from osal_ray.data.pool import read_catalog, read_pool_ids
from osal_ray.errors import InputError
from osal_ray.examples.image_pool import write_example


def _png(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_common_formats_decode_to_a_resized_rgb_square(fmt):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (37, 23, 3), dtype=np.uint8)
    image, gray = decode_bytes(_png(colour, fmt=fmt), 16)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert not gray or fmt == "GIF"  # GIF's palette may quantise, never mind
    image, gray = decode_bytes(_png(np.full((9, 9), 200, np.uint8), fmt=fmt), 8)
    assert gray and image.shape == (8, 8, 3)


def test_odd_modes_become_8_bit_rgb():
    sixteen = Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))
    out = io.BytesIO()
    sixteen.save(out, format="PNG")
    image, gray = decode_bytes(out.getvalue(), 8)
    assert gray and image.max() >= 250  # scaled from 16 bits, not clipped to the low byte
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent: composited on black
    image, _ = decode_bytes(_png(rgba), 8)
    assert image.max() == 0
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 250)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    image, _ = decode_bytes(out.getvalue(), 8)
    assert image.max() < 128  # the first frame


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"hello, I am a text file\n", "not an image"),
    (_png(np.zeros((64, 64), np.uint8))[:60], "unreadable image data"),
])
def test_unreadable_files_give_their_reason(data, reason):
    with pytest.raises(ValueError, match=reason):
        decode_bytes(data, 8)


def test_decompression_bombs_are_refused_not_decoded(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="too large"):
        decode_bytes(_png(np.zeros((64, 64), np.uint8)), 8)


def _layout(tmp_path: Path, unlabeled: int = 3, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    root = tmp_path / "pool"
    rng = np.random.default_rng(1)
    for c in classes:
        (root / "labeled" / c).mkdir(parents=True)
        (root / "labeled" / c / "a.png").write_bytes(_png(rng.integers(0, 255, (8, 8), dtype=np.uint8)))
    (root / "unlabeled").mkdir(parents=True)
    for i in range(unlabeled):
        (root / "unlabeled" / f"{i}.png").write_bytes(_png(rng.integers(0, 255, (8, 8), dtype=np.uint8)))
    return root


@pytest.mark.parametrize("breakage, message", [
    ("no_unlabeled", "no unlabeled/ folder"),
    ("one_class", "at least 2 known classes"),
    ("loose_file", "belong in a class folder"),
    ("skip_class", "reserved"),
    ("empty_class", "hold no file"),
    ("empty_pool", "nothing to choose from"),
])
def test_layout_problems_are_named_before_any_work(tmp_path, breakage, message):
    root = _layout(tmp_path)
    if breakage == "no_unlabeled":
        shutil.rmtree(root / "unlabeled")
    elif breakage == "one_class":
        shutil.rmtree(root / "labeled" / "dog")
    elif breakage == "loose_file":
        (root / "labeled" / "x.png").write_bytes(b"x")
    elif breakage == "skip_class":
        (root / "labeled" / "skip").mkdir()
        (root / "labeled" / "skip" / "a.png").write_bytes(b"x")
    elif breakage == "empty_class":
        (root / "labeled" / "bird").mkdir()
    elif breakage == "empty_pool":
        for f in (root / "unlabeled").iterdir():
            f.unlink()
    with pytest.raises(InputError, match=message):
        load_image_pool(DataConfig(dataset="image_pool", root=str(root), image_size=8))


@pytest.mark.parametrize("folder, problem", [
    ("five ", "may not start or end with spaces"),
    (" five", "may not start or end with spaces"),
    ("Cat", "only by case"),
    ("Unknown", "only by case"),
    ("SKIP", "only by case"),
    ("a,b", "commas, quotes"),
    ('say "hi"', "commas, quotes"),
    ("two\nlines", "commas, quotes"),
])
def test_class_folders_that_cannot_be_typed_back_as_labels_are_refused(tmp_path, folder, problem):
    root = _layout(tmp_path)
    (root / "labeled" / folder).mkdir()
    (root / "labeled" / folder / "a.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    with pytest.raises(InputError, match=problem) as info:
        load_image_pool(DataConfig(dataset="image_pool", root=str(root), image_size=8))
    assert info.value.field == "data.root" and str(root / "labeled") in info.value.message
    assert repr(folder)[1:-1] in info.value.message  # the folder is named, its spaces and line breaks visible


@pytest.fixture
def example(tmp_path):
    directory = tmp_path / "example"
    write_example(directory, pool_size=120, labeled_per_class=4, test_per_class=10, source="digits")
    return directory


@pytest.mark.ray
def test_an_example_folder_becomes_a_pool_with_stable_keys(ray_session, example, tmp_path):
    config = DataConfig(dataset="image_pool", root=str(example), image_size=8)
    out = tmp_path / "out"
    manifest, report = materialize_image_pool(load_image_pool(config), out / "data", out, log=lambda _: None)
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(skipped["path"]) == ["unlabeled/broken/empty.png", "unlabeled/broken/notes.jpg", "unlabeled/broken/truncated.png"]
    assert skipped["reason"].str.len().min() > 5
    assert len(pd.read_csv(out / "duplicates.csv")) == 1  # the byte-identical copy
    assert (report.num_unlabeled, report.num_labeled, report.num_invalid, report.num_test) == (120, 12, 4, 30)
    assert manifest.class_names == ("eight", "five", "three") and manifest.image_shape == (8, 8, 1)  # digits are gray
    catalog = read_catalog(manifest)
    assert all(key_to_id(key) == sample for sample, (key, _) in catalog.items())
    labels = read_initial_labels(manifest)
    assert sorted(labels.tolist()) == [-1] * 4 + [0] * 4 + [1] * 4 + [2] * 4

    # A rescan decodes nothing again and changes no id; a new image joins, a deleted one leaves the candidates.
    (example / "unlabeled" / "new").mkdir()
    new = _png(np.full((8, 8), 77, np.uint8))
    (example / "unlabeled" / "new" / "late.png").write_bytes(new)
    gone = sorted((example / "unlabeled" / "batch_01").glob("*.png"))[3]
    gone_id = next(i for i, (_, path) in catalog.items() if path == gone.relative_to(example).as_posix())
    gone.unlink()
    manifest2, report2 = materialize_image_pool(load_image_pool(config), out / "data", out, log=lambda _: None)
    assert report2.decoded == 1
    catalog2 = read_catalog(manifest2)
    assert {i: k for i, (k, _) in catalog.items()}.items() <= {i: k for i, (k, _) in catalog2.items()}.items()
    import hashlib

    assert key_to_id(hashlib.sha256(new).hexdigest()) in catalog2
    assert read_absent_ids(manifest2).tolist() == [gone_id]
    assert gone_id in read_pool_ids(manifest2)  # still readable for training if it was labeled


@pytest.mark.ray
def test_a_symlink_loop_and_a_broken_symlink_are_listed_as_skipped(ray_session, tmp_path):
    import os

    root = _layout(tmp_path)
    os.symlink("loop.png", root / "unlabeled" / "loop.png")  # points at itself
    os.symlink("nowhere.png", root / "unlabeled" / "dangling.png")
    materialize_image_pool(load_image_pool(DataConfig(dataset="image_pool", root=str(root), image_size=8)),
                           tmp_path / "out" / "data", tmp_path / "out", log=lambda _: None)
    skipped = dict(pd.read_csv(tmp_path / "out" / "skipped.csv").itertuples(index=False))
    assert "symbolic links" in skipped["unlabeled/loop.png"] and "unreadable symlink" in skipped["unlabeled/dangling.png"]


@pytest.mark.ray
def test_conflicting_labeled_copies_are_refused(ray_session, tmp_path):
    root = _layout(tmp_path)
    shutil.copy(root / "labeled" / "cat" / "a.png", root / "labeled" / "dog" / "b.png")
    with pytest.raises(InputError, match="same image with different labels"):
        materialize_image_pool(load_image_pool(DataConfig(dataset="image_pool", root=str(root), image_size=8)),
                               tmp_path / "out" / "data", tmp_path / "out", log=lambda _: None)


@pytest.mark.ray
def test_a_folder_of_only_broken_files_is_a_clear_error(ray_session, tmp_path):
    root = _layout(tmp_path, unlabeled=2)
    for f in list((root / "unlabeled").iterdir()) + list((root / "labeled").rglob("*.png")):
        f.write_bytes(b"garbage")
    with pytest.raises(InputError, match="no usable image"):
        materialize_image_pool(load_image_pool(DataConfig(dataset="image_pool", root=str(root), image_size=8)),
                               tmp_path / "out" / "data", tmp_path / "out", log=lambda _: None)
