"""Where training checkpoints and round state live: a local directory or any pyarrow filesystem URI.

A multi-node run needs storage every node can reach (an NFS/EFS mount, or ``s3://``,
``gs://``, ...). Local paths are written atomically (temporary file, fsync, rename); object
stores write whole objects, which readers never see half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

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
        write_file(Path(path), lambda tmp: tmp.write_bytes(data))
        return
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Create or replace the local file ``path`` atomically with what ``write(tmp)`` writes (bytes, or a
    library's writer: ``torch.save``, pyarrow, csv): a temporary file beside it, fsynced, renamed over
    ``path``, the directory fsynced. A crash leaves the old file or the new one; on any error the
    temporary file is removed and the error raised. The one way osal_ray writes a file in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")  # unique per writer thread
    try:
        write(tmp)
        publish_file(tmp, path)
    finally:
        _remove(tmp)


def publish_file(written: Path, path: Path) -> None:
    """Move a completely written local file (a stream's output) over ``path``, durably: fsync, rename,
    directory fsync. The second half of ``write_file``, for writers that stream into a file of their own."""
    _fsync_file(written)
    os.replace(written, path)
    fsync_directory(path.parent)


def write_new(path: Path, data: bytes) -> bool:
    """Write a new local file atomically, never replacing one: False (nothing written) when ``path``
    exists. On any error the temporary file is removed and the error raised."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        tmp.write_bytes(data)
        _fsync_file(tmp)
        try:
            os.link(tmp, path)  # fails if the name exists
        except FileExistsError:
            return False
    finally:
        _remove(tmp)
    fsync_directory(path.parent)
    return True


def swap_directory(staging: Path, directory: Path) -> None:
    """Put the fully written directory ``staging`` in the place of ``directory``: the old one renamed
    aside, the new one renamed in, then the old one deleted. At every moment one complete version is
    on disk: a crash between the two renames leaves the old one aside, and the next swap (or
    ``recover_directory``) puts it back first."""
    recover_directory(directory)
    aside = _aside(directory)
    if directory.exists():
        os.replace(directory, aside)
    os.replace(staging, directory)
    fsync_directory(directory.parent)
    shutil.rmtree(aside, ignore_errors=True)


def recover_directory(directory: Path) -> None:
    """Undo a swap a crash interrupted: the old version back where a reader looks, or a leftover deleted."""
    aside = _aside(directory)
    if not aside.exists():
        return
    if directory.exists():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(aside, directory)


def _aside(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}.old")


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (best effort where the filesystem refuses)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
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
