"""One process at a time per output directory: runs, label imports and the service take turns.

Within a process the lock is shared (an experiment prepared twice holds it once).

The lock is a file, ``<output>/.osal_ray.lock``, created with O_EXCL and holding the holder's pid,
host, start time and command. A second process refuses at once with those details. A lock left
by a process that is gone (same host, pid no longer alive) is taken over; a lock from another
host cannot be checked and is refused with the path to delete once its holder is known to be gone.

A holder inside a Ray worker (the service's replica) also records its raylet's pid. When that Ray
node is gone (its driver was killed), the worker is on its way out but may live a few seconds more;
a new process waits for it (up to ``ORPHAN_GRACE_S``) instead of refusing, so a restart right after
a crash works.
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
ORPHAN_GRACE_S = 60.0
_HELD: dict[Path, int] = {}  # this process's locks and how many holders share each


class OutputLock:
    """A held lock; ``release`` (or process exit) gives it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = True
        _HELD[path] = _HELD.get(path, 0) + 1
        atexit.register(self.release)

    @classmethod
    def acquire(cls, directory: Path, purpose: str = "", orphan_grace_s: float = ORPHAN_GRACE_S) -> "OutputLock":
        """Take ``directory``'s lock or raise InputError naming who holds it (after waiting up to
        ``orphan_grace_s`` for a holder whose Ray node is gone)."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError("--output-dir", f"cannot create {directory}: {exc.strerror or exc}") from None
        path = (directory / LOCK_FILE).resolve()
        if path in _HELD:  # this process holds it already (e.g. prepared twice): share it
            return cls(path)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "command": purpose or " ".join(sys.argv)}
        raylet = _raylet_pid()
        if raylet is not None:
            holder["raylet_pid"] = raylet
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if _take_over_if_stale(path) or _outlived_orphan(path, orphan_grace_s):
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
            holder = read_holder(self.path)
            if holder is not None and holder["pid"] == os.getpid():
                try:
                    self.path.unlink()
                except OSError:
                    pass

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: Path) -> dict | None:
    """The lock's holder record, or None when it cannot be read or is no holder record (not JSON, not
    an object, no integer pid): a lock being written, or one left half-written by a process that died."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(holder, dict) or not _is_int(holder.get("pid")) or not _is_int(holder.get("raylet_pid", 0)):
        return None
    return holder


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _raylet_pid() -> int | None:
    """The raylet's pid when this process is a Ray worker (the raylet starts its workers), else None."""
    ray_worker = sys.modules.get("ray._private.worker")
    if ray_worker is None or getattr(ray_worker.global_worker, "mode", None) != ray_worker.WORKER_MODE:
        return None
    return os.getppid()


def _orphaned(holder: dict | None) -> bool:
    """A live holder on this host whose Ray node (raylet) is gone: it will exit by itself."""
    if not holder or holder.get("host") != socket.gethostname() or "raylet_pid" not in holder:
        return False
    return _alive(holder["pid"]) and not _alive(holder["raylet_pid"])


def _outlived_orphan(path: Path, grace_s: float) -> bool:
    """Wait up to ``grace_s`` for an orphaned holder to exit; True when it did (try again)."""
    holder = read_holder(path)
    if not _orphaned(holder):
        return False
    pid = int(holder["pid"])
    print(f"{path.parent}: waiting up to {grace_s:.0f} s for pid {pid}, left by a Ray node that is gone, to exit",
          file=sys.stderr, flush=True)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return not _alive(pid)


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
    elif holder.get("host") != socket.gethostname() or _alive(holder["pid"]):
        return False
    try:
        stale = path.with_name(f"{path.name}.stale-{os.getpid()}")
        os.replace(path, stale)  # atomic: only one process takes a stale lock over
        stale.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise InputError("--output-dir", f"{path} is a stale lock (its holder is gone or it is unreadable) that cannot "
                                         f"be taken over ({exc.strerror or exc}); make {path.parent} writable, or "
                                         "delete the lock") from None
    return True


def _held_message(directory: Path, path: Path) -> str:
    holder = read_holder(path)
    if holder is None:
        return (f"{directory} is locked by {path}, which is being written or unreadable (not a holder record); "
                "a lock unreadable for 5 s is taken over: try again in a moment, or delete it if no process uses the directory")
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}"
    message = f"{directory} is in use by {who} ({holder.get('command', '?')}); wait for it to finish"
    if holder.get("host") != socket.gethostname():
        message += f", or delete {path} if that process is gone"
    elif _orphaned(holder):
        message = (f"{directory} is in use by {who} ({holder.get('command', '?')}), a Ray worker whose node "
                   f"(raylet pid {holder['raylet_pid']}) is gone and which has not exited; stop it "
                   f"(kill {holder['pid']}) and start again")
    return message
