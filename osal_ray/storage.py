"""Where training checkpoints and round state live: a local directory or any pyarrow filesystem URI.

A multi-node run needs storage every node can reach (an NFS/EFS mount, or ``s3://``,
``gs://``, ...). Local paths are written atomically (temporary file, fsync, rename); object
stores write whole objects, which readers never see half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs

from osal_ray.errors import CorruptFile, shown_error


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` locations (``file://`` included)."""
    return "://" in str(location)


def join(location: str | Path, *parts: str) -> str:
    """``location/part/...`` for a path or a URI."""
    return "/".join([str(location).rstrip("/"), *parts]) if is_uri(location) else str(Path(location, *parts))


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``location`` and the path within it."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def exists(location: str | Path) -> bool:
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type == pafs.FileType.File


def read_bytes(location: str | Path) -> bytes:
    filesystem, path = resolve(location)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def read_json(location: str | Path, expect: type = dict, what: str = "file", fix: str = "") -> Any:
    """The JSON value of a file of the run's state; CorruptFile naming it when it cannot be read, is not
    JSON, or is not an ``expect`` (``what`` says what it should be, ``fix`` what to do about it)."""
    advice = f"; {fix}" if fix else ""
    try:
        value = json.loads(read_bytes(location))
    except OSError as exc:
        raise CorruptFile(str(location), f"not a readable {what} ({exc.strerror or exc}){advice}") from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested too deep
        raise CorruptFile(str(location), f"not a readable {what}: not valid JSON ({shown_error(exc)}){advice}") from None
    if not isinstance(value, expect):
        raise CorruptFile(str(location), f"not a readable {what}: it holds a JSON {type(value).__name__}, expected a JSON "
                                         f"{'object' if expect is dict else expect.__name__}{advice}")
    return value


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write ``data`` so that a reader sees the old or the new content, never a mix."""
    filesystem, path = resolve(location)
    parent = path.rsplit("/", 1)[0]
    filesystem.create_dir(parent, recursive=True)
    if isinstance(filesystem, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"  # unique per writer thread
        with _temporary(tmp, data):
            os.replace(tmp, path)
        return
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def write_new(path: Path, data: bytes) -> bool:
    """Write a new local file atomically, never replacing one: False (nothing written) when ``path``
    exists. On any error the temporary file is removed and the error raised."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with _temporary(str(tmp), data):
        try:
            os.link(tmp, path)  # fails if the name exists
        except FileExistsError:
            return False
    return True


@contextlib.contextmanager
def _temporary(tmp: str, data: bytes) -> Iterator[None]:
    """``data`` written and fsynced to ``tmp`` for the block to move or link; ``tmp`` is gone afterwards,
    whatever happened (a full disk leaves no half-written file behind)."""
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        yield
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def upload_directory(local: str | Path, location: str | Path) -> None:
    """Copy a local directory's files to ``location`` (a path or URI), creating it first."""
    filesystem, path = resolve(location)
    filesystem.create_dir(path, recursive=True)
    pafs.copy_files(str(Path(local).resolve()), path, destination_filesystem=filesystem)


def ray_storage_path(location: str | Path) -> str:
    """What Ray Train's RunConfig(storage_path=...) takes: an absolute path or the URI itself."""
    return str(location) if is_uri(location) else str(Path(location).resolve())
