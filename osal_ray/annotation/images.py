"""The picture a person is shown for a sample: always the content its key names.

An image pool's key is the SHA-256 of its file's bytes. Between the decode pass and the moment a
person looks, the file may have been replaced, truncated or deleted, or its path may now lead
outside the data root through a link. The file is shown only while it still is under the data root
and still hashes to the key; otherwise the pool's stored copy of that content (decoded when the key
was made) is shown. A labeled dataset's samples have no file: their stored copy is shown.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from osal_ray.data.pool import PoolManifest


@dataclass(frozen=True)
class SampleImage:
    """Bytes to show, their media type, and where they came from (``file`` or ``pool``)."""

    data: bytes
    media_type: str
    source: str


def original_file(data_root: Path | None, path: str | None, key: str) -> bytes | None:
    """The file's bytes if it lies under ``data_root`` (links resolved) and its SHA-256 is ``key``; else None."""
    if not path or data_root is None:
        return None
    root = data_root.resolve()
    candidate = (root / path).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None  # never read outside the data root (a crafted path, or a link leading out)
    try:
        data = candidate.read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == key else None


def sample_image(manifests: list[PoolManifest], sample: int, key: str, path: str | None,
                 data_root: Path | None) -> SampleImage:
    """The original file of a sample when it still is the keyed content, else the pool's stored copy (PNG)."""
    data = original_file(data_root, path, key)
    if data is not None:
        media_type = image_media_type(data)
        if media_type is not None:
            return SampleImage(data, media_type, "file")
    return SampleImage(pool_image_png(manifests, sample), "image/png", "pool")


def display_png(manifests: list[PoolManifest], sample: int, key: str, path: str | None, data_root: Path | None) -> bytes:
    """A PNG thumbnail of what ``sample_image`` shows (contact sheets, inlined Label Studio tasks)."""
    from osal_ray.data.image_files import thumbnail_png

    found = sample_image(manifests, sample, key, path, data_root)
    if found.source == "pool":
        return found.data
    try:
        return thumbnail_png(found.data)
    except Exception:  # noqa: BLE001  (content that decoded once but not with this PIL: show the stored copy)
        return pool_image_png(manifests, sample)


def resized_png(data: bytes, size: int) -> bytes:
    """A PNG whose longer side is ``size`` pixels (small images are enlarged without smoothing)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        picture = picture.convert("RGB" if picture.mode not in ("L", "RGB") else picture.mode)
        scale = size / max(picture.size)
        shape = (max(1, round(picture.size[0] * scale)), max(1, round(picture.size[1] * scale)))
        resized = picture.resize(shape, Image.NEAREST if scale > 1 else Image.LANCZOS)
    out = io.BytesIO()
    resized.save(out, format="PNG")
    return out.getvalue()


def image_media_type(data: bytes) -> str | None:
    """The media type of image bytes PIL can open (``image/png``, ``image/jpeg``, ...), else None."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as picture:
            return Image.MIME.get(picture.format or "")
    except Exception:  # noqa: BLE001
        return None


def pool_image_png(manifests: list[PoolManifest], sample: int) -> bytes:
    """A pool sample's stored (resized) image as a PNG, enlarged when tiny."""
    from PIL import Image

    from osal_ray.data.pool import decode_images, pool_paths, read_table

    for manifest in manifests:
        table = read_table(pool_paths(manifest), ["image"], np.array([sample]))
        if table.num_rows:
            image = decode_images(table.column("image"), manifest)[0]
            picture = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
            factor = max(1, 96 // max(picture.size))
            picture = picture.resize((picture.size[0] * factor, picture.size[1] * factor), Image.NEAREST)
            out = io.BytesIO()
            picture.save(out, format="PNG")
            return out.getvalue()
    raise KeyError(f"sample {sample} is in no pool")
