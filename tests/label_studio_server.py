"""A real Label Studio server for tests: its own virtual environment, data directory and port.

Not a test module. ``start_label_studio()`` starts one server and returns a ``LabelStudioServer``; the
session fixture ``label_studio_server`` starts one for the whole test session and stops it at the end.

Label Studio lives in its own virtual environment (it pins Django and much else), found through
``OSAL_RAY_LABEL_STUDIO_VENV`` or created at ``~/.cache/osal_ray/label-studio-<version>/venv`` with pip
on first use (a few minutes). A failed install raises: tests that need the server fail, never skip.

API access: Label Studio 1.23 gives new organizations personal access tokens (JWT) only. The server is
started on a fresh data directory with ``--enable-legacy-api-token`` (and the equivalent environment
variable), so the fixed ``--user-token`` is accepted as ``Authorization: Token <token>`` and as the SDK's
``api_key``; a personal access token is also fetched (``personal_access_token``) to test that flow.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

LABEL_STUDIO_VERSION = "1.23.2"
VENV_ENV = "OSAL_RAY_LABEL_STUDIO_VENV"
USERNAME = "osal-ray-test@example.com"
PASSWORD = "osal-ray-test-password"
USER_TOKEN = "osalraytesttoken0123456789abcdef"  # Label Studio's token column holds at most 40 characters
START_TIMEOUT_S = 240.0
INSTALL_MARKER = ".osal_ray_installed"


def label_studio_venv() -> Path:
    """The Label Studio virtual environment, installing it first when it is missing or incomplete."""
    configured = os.environ.get(VENV_ENV)
    venv = (
        Path(configured).expanduser()
        if configured
        else Path.home() / ".cache" / "osal_ray" / f"label-studio-{LABEL_STUDIO_VERSION}" / "venv"
    )
    executable = venv / "bin" / "label-studio"
    if configured:
        if not executable.exists():
            raise RuntimeError(f"{VENV_ENV}={configured} has no bin/label-studio")
        return venv
    if executable.exists() and (venv / INSTALL_MARKER).exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / "install.lock", "w") as lock:  # one installer at a time (parallel sessions)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (executable.exists() and (venv / INSTALL_MARKER).exists()):
            _install(venv)
    return venv


def _install(venv: Path) -> None:
    """Create ``venv`` and pip-install Label Studio into it, printing progress; raises with pip's output."""
    print(f"[label-studio] installing label-studio=={LABEL_STUDIO_VERSION} into {venv} (takes minutes)", flush=True)
    if not (venv / "bin" / "python").exists():
        _run_logged([sys.executable, "-m", "venv", str(venv)], "python -m venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    _run_logged([*pip, "--upgrade", "pip"], "pip upgrade")
    _run_logged([*pip, f"label-studio=={LABEL_STUDIO_VERSION}"], "pip install label-studio")
    if not (venv / "bin" / "label-studio").exists():
        raise RuntimeError(f"pip installed label-studio but {venv}/bin/label-studio is missing")
    (venv / INSTALL_MARKER).write_text(LABEL_STUDIO_VERSION)
    print("[label-studio] installed", flush=True)


def _run_logged(command: list[str], what: str) -> None:
    """Run ``command``, echoing a progress line every 30 s; raise with its last output lines on failure."""
    tail: deque[str] = deque(maxlen=40)
    started = last = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip():
            tail.append(line.rstrip())
        if tail and time.monotonic() - last > 30:
            last = time.monotonic()
            print(f"[label-studio] {what}: {time.monotonic() - started:.0f} s, {tail[-1].strip()[:120]}", flush=True)
    if process.wait() != 0:
        raise RuntimeError(f"{what} failed (exit {process.returncode}):\n" + "\n".join(tail))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LabelStudioServer:
    """A running Label Studio: ``url``, the API ``token`` (legacy token; the SDK's ``api_key``), ``pid``."""

    url: str
    token: str
    pid: int
    data_dir: Path
    log_path: Path
    personal_access_token: str = ""
    username: str = USERNAME
    password: str = PASSWORD
    _process: subprocess.Popen | None = field(default=None, repr=False)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Terminate this server's process group (it was started in its own session), then kill if needed."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                process.wait(timeout=20)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the group id is the pid: start_new_session=True
    except ProcessLookupError:
        pass


def server_env(data_dir: Path) -> dict[str, str]:
    """The environment the server runs with: inherited, minus any Label Studio settings, plus the test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            # New organizations accept legacy tokens (same as --enable-legacy-api-token).
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            # Webhooks to 127.0.0.1 are refused (403 "URL resolves to a reserved network address") and
            # not delivered while SSRF protection is on; task image URLs are loaded by the browser only.
            "SSRF_PROTECTION_ENABLED": "false",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_label_studio(venv: Path | None = None, port: int | None = None) -> LabelStudioServer:
    """Start Label Studio on 127.0.0.1 with a fresh data directory; return once its API answers."""
    venv = venv or label_studio_venv()
    port = port or free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="osal-ray-label-studio-"))
    log_path = data_dir / "server.log"
    url = f"http://127.0.0.1:{port}"
    command = [
        str(venv / "bin" / "label-studio"), "start", "--no-browser",
        "--internal-host", "127.0.0.1", "--port", str(port), "--host", url,
        "--username", USERNAME, "--password", PASSWORD, "--user-token", USER_TOKEN,
        "--enable-legacy-api-token",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=server_env(data_dir), cwd=data_dir, start_new_session=True,
        )  # fmt: skip
    server = LabelStudioServer(url, USER_TOKEN, process.pid, data_dir, log_path, _process=process)
    try:
        _wait_healthy(server, process)
        server.personal_access_token = _personal_access_token(url, USER_TOKEN)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_healthy(server: LabelStudioServer, process: subprocess.Popen) -> None:
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(1)
    raise RuntimeError(f"Label Studio at {server.url} not healthy after {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def _personal_access_token(url: str, token: str) -> str:
    """Check that the legacy token works (whoami), then create the user's personal access token (JWT refresh)."""
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    whoami = urllib.request.Request(f"{url}/api/current-user/whoami", headers=headers)
    with urllib.request.urlopen(whoami, timeout=30) as response:
        if json.load(response).get("email") != USERNAME:
            raise RuntimeError(f"Label Studio at {url}: the test token does not belong to {USERNAME}")
    create = urllib.request.Request(f"{url}/api/token/", data=b"{}", headers=headers, method="POST")
    with urllib.request.urlopen(create, timeout=30) as response:
        return str(json.load(response)["token"])


_session_server: LabelStudioServer | None = None


@pytest.fixture(scope="session")
def label_studio_server() -> Iterator[LabelStudioServer]:
    """One Label Studio server for the test session (installed on first use), stopped at the end.

    Shared even when the fixture is registered twice (conftest and a test module's import).
    """
    global _session_server
    if _session_server is not None:
        yield _session_server
        return
    started = time.monotonic()
    server = start_label_studio()
    print(f"[label-studio] {server.url} up after {time.monotonic() - started:.0f} s (pid {server.pid})", flush=True)
    _session_server = server
    try:
        yield server
    finally:
        _session_server = None
        server.stop()
