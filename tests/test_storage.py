"""The one way osal_ray writes in place: ``storage.write_file`` / ``publish_file`` for files, ``swap_directory`` for
directories (temp, fsync, rename, directory fsync), and nothing else renames over a file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from osal_ray import storage

PACKAGE = Path(__file__).resolve().parent.parent / "osal_ray"


def test_write_file_replaces_whole_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "deep" / "state.json"
    storage.write_file(target, lambda tmp: tmp.write_text("old"))
    storage.write_bytes(target, b"new")
    assert target.read_text() == "new"

    def half_written(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        storage.write_file(target, half_written)
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_write_new_never_replaces(tmp_path):
    target = tmp_path / "00001-record.json"
    assert storage.write_new(target, b"first") and not storage.write_new(target, b"second")
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_swap_directory_keeps_one_complete_version_at_every_step(tmp_path):
    directory = tmp_path / "pool"
    for version in ("v1", "v2"):
        staging = tmp_path / f".staging-{version}"
        staging.mkdir()
        (staging / "manifest.json").write_text(version)
        storage.swap_directory(staging, directory)
        assert (directory / "manifest.json").read_text() == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool"]  # the old version and the staging are gone

    # A crash between the two renames: the old version aside, none in place. The next swap puts it back first.
    aside = tmp_path / ".pool.old"
    directory.rename(aside)
    storage.recover_directory(directory)
    assert (directory / "manifest.json").read_text() == "v2" and not aside.exists()
    # A crash after both renames: a leftover aside beside the new version is deleted.
    aside.mkdir()
    storage.recover_directory(directory)
    assert not aside.exists() and (directory / "manifest.json").read_text() == "v2"


def test_nothing_else_renames_over_a_file():
    allowed = {"storage.py", "lock.py"}  # the lock takes a stale lock over with one atomic rename
    pattern = re.compile(r"os\.replace\(|os\.rename\(|\.rename\(|shutil\.move\(")
    offenders = [f"{p.relative_to(PACKAGE)}:{n}" for p in PACKAGE.rglob("*.py") if p.name not in allowed
                 for n, line in enumerate(p.read_text().splitlines(), start=1) if pattern.search(line)]
    assert not offenders, f"write through osal_ray.storage (write_file, publish_file, swap_directory): {offenders}"
