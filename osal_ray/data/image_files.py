"""Image files on disk: listing a pool folder, hashing, decoding and resizing one file.

Pure functions without Ray; ``osal_ray.data.image_pool`` runs ``decode_file`` in a Ray Data pass.

- A sample's ``key`` is the SHA-256 of its file's bytes (hex): byte-identical files are one
  sample, and renaming or moving a file does not change it. Its integer ``id`` (what round state
  and the Parquet pool index by) is the key's first 60 bits, stable across rescans.
- Any format Pillow decodes: PNG, JPEG, WebP, BMP, GIF (first frame), TIFF, ... Grayscale,
  palette, alpha (composited on black) and 16-bit images become 8-bit RGB, resized to a square
  with torchvision's ``Resize`` (bilinear, antialiased), as the ``image_folder`` loader does.
- A file that is not an image, is empty, truncated, or larger than Pillow's decompression-bomb
  limit is not an error of the run: ``decode_file`` returns its reason and the pool skips it.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HIDDEN_PREFIXES = (".", "~")  # .DS_Store, editor backups, our own temporary files
ID_BITS = 60
GRAY_TOLERANCE = 8  # levels of 255 by which the channels of a "grayscale" image may differ


@dataclass(frozen=True)
class FileEntry:
    """One file under the data root: where it is (relative, POSIX), its part of the layout, its stat."""

    path: str
    role: str  # "unlabeled", "labeled" or "test"
    label: str | None  # the class folder name for labeled and test files
    size: int
    mtime_ns: int


def key_to_id(key: str) -> int:
    """The integer id of a sample key: its first 60 bits, so it fits an int64 and never changes."""
    return int(key[: ID_BITS // 4], 16)


def list_files(root: Path, folder: str, role: str, with_class: bool,
               problems: list[tuple[str, str]] | None = None) -> list[FileEntry]:
    """Every regular, non-hidden file under ``root / folder`` (any nesting), sorted by path.

    With ``with_class`` the first directory level below ``folder`` is the class; files directly
    in ``folder`` then have no class and are returned with ``label=None`` (the caller reports them).
    A name that is no readable regular file (a symlink loop, a broken symlink, a pipe) is left out and,
    given ``problems``, appended to it as ``(relative path, reason)``.
    """
    base = root / folder
    entries = []
    for directory, subdirs, files in os.walk(base):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(HIDDEN_PREFIXES))
        for name in sorted(files):
            if name.startswith(HIDDEN_PREFIXES):
                continue
            full = Path(directory, name)
            relative = full.relative_to(root).as_posix()
            try:
                stat = full.stat()
            except OSError as exc:
                if full.is_symlink() and problems is not None:
                    problems.append((relative, f"unreadable symlink ({exc.strerror or exc})"))
                continue  # else it vanished between listing and stat
            if not full.is_file():
                if problems is not None:
                    problems.append((relative, "not a regular file"))
                continue
            label = None
            if with_class:
                parts = full.relative_to(base).parts
                label = parts[0] if len(parts) > 1 else None
            entries.append(FileEntry(relative, role, label, int(stat.st_size), int(stat.st_mtime_ns)))
    return entries


def decode_bytes(data: bytes, size: int) -> tuple[np.ndarray, bool]:
    """``(uint8 RGB image of size x size x 3, whether it is grayscale)``; raises ValueError with a reason."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import Resize

    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.seek(0)  # first frame of an animation
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except (OSError, SyntaxError, EOFError) as exc:  # truncated or corrupt data
        raise ValueError(f"unreadable image data ({exc})") from None
    rgb = _to_rgb(image)
    resized = np.asarray(Resize((size, size))(rgb), dtype=np.uint8)
    channels = resized.astype(np.int16)
    # Gray when the channels agree up to compression noise (a gray JPEG saved as RGB differs by a few levels).
    gray = bool(np.abs(channels[..., 0] - channels[..., 1]).max() <= GRAY_TOLERANCE
                and np.abs(channels[..., 1] - channels[..., 2]).max() <= GRAY_TOLERANCE)
    return np.ascontiguousarray(resized), gray


def _to_rgb(image):
    """8-bit RGB of any Pillow mode; transparency is composited on black."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size and array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_file(root: str, path: str, size: int) -> dict:
    """Read, hash and decode one file: ``{key, image, gray}`` or ``{error}`` (never raises for bad data)."""
    try:
        data = Path(root, path).read_bytes()
    except OSError as exc:
        return {"error": f"cannot read the file ({exc.strerror or exc})"}
    key = hashlib.sha256(data).hexdigest()
    try:
        image, gray = decode_bytes(data, size)
    except ValueError as exc:
        return {"key": key, "error": str(exc)}
    return {"key": key, "image": image, "gray": gray}


def thumbnail_png(data: bytes, max_side: int = 160) -> bytes:
    """A PNG thumbnail of an image file's bytes, for a contact sheet (the original, not the resized sample)."""
    from PIL import Image

    image = _to_rgb(Image.open(io.BytesIO(data)))
    image.thumbnail((max_side, max_side))
    if max(image.size) < 64:  # tiny images (28x28) are enlarged so a person can see them
        factor = max(1, 96 // max(image.size))
        image = image.resize((image.size[0] * factor, image.size[1] * factor), Image.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
