"""One process at a time per output directory: runs, label imports and the service take turns.

Within a process the lock is shared (an experiment prepared twice holds it once).

The lock is a file, ``<output>/.osal_ray.lock``, created with O_EXCL and holding the holder's pid,
host, start time and command. A second process refuses at once with those details. A lock left
by a process that is gone (same host, pid no longer alive) is taken over; a lock from another
host cannot be checked and is refused with the path to delete once its holder is known to be gone.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import time
from pathlib import Path

from osal_ray.errors import InputError

LOCK_FILE = ".osal_ray.lock"
_HELD: dict[Path, int] = {}  # this process's locks and how many holders share each


class OutputLock:
    """A held lock; ``release`` (or process exit) gives it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = True
        _HELD[path] = _HELD.get(path, 0) + 1
        atexit.register(self.release)

    @classmethod
    def acquire(cls, directory: Path, purpose: str = "") -> "OutputLock":
        """Take ``directory``'s lock or raise InputError naming who holds it."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError("--output-dir", f"cannot create {directory}: {exc.strerror or exc}") from None
        path = (directory / LOCK_FILE).resolve()
        if path in _HELD:  # this process holds it already (e.g. prepared twice): share it
            return cls(path)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "command": purpose or " ".join(sys.argv)}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _take_over_if_stale(path):
                    continue
                raise InputError("--output-dir", _held_message(directory, path)) from None
            except OSError as exc:
                raise InputError("--output-dir", f"cannot write in {directory}: {exc.strerror or exc}") from None
            with os.fdopen(fd, "w") as handle:
                json.dump(holder, handle)
            return cls(path)
        raise InputError("--output-dir", _held_message(directory, path))

    def release(self) -> None:
        if self.held:
            self.held = False
            _HELD[self.path] -= 1
            if _HELD[self.path] > 0:
                return
            del _HELD[self.path]
            try:
                if json.loads(self.path.read_text()).get("pid") == os.getpid():
                    self.path.unlink()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_over_if_stale(path: Path) -> bool:
    """Remove a lock whose holder is gone; True when the caller may try again."""
    holder = read_holder(path)
    if holder is None:
        # Unreadable: a holder that died between creating and writing it, or one writing it now.
        try:
            if time.time() - path.stat().st_mtime < 5:
                return False
        except FileNotFoundError:
            return True
    elif holder.get("host") != socket.gethostname() or _alive(int(holder.get("pid", -1))):
        return False
    try:
        stale = path.with_name(f"{path.name}.stale-{os.getpid()}")
        os.replace(path, stale)  # atomic: only one process takes a stale lock over
        stale.unlink()
    except FileNotFoundError:
        pass
    return True


def _held_message(directory: Path, path: Path) -> str:
    holder = read_holder(path) or {}
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}"
    message = f"{directory} is in use by {who} ({holder.get('command', '?')}); wait for it to finish"
    if holder.get("host") != socket.gethostname():
        message += f", or delete {path} if that process is gone"
    return message
