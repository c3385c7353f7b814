"""A real ``python -m osal_ray.serve`` process for tests: started on 127.0.0.1, stopped by its pid only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TOKEN = "test-token-" + "0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    """The service as a user starts it; ``call`` sends authenticated JSON requests to it."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, "OSAL_RAY_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.process: subprocess.Popen | None = None

    def start(self) -> "ServiceProcess":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "osal_ray.serve", *self.args, "--port", str(self.port)],
                                        stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        return self

    def wait_for(self, predicate, timeout: float = 240.0, what: str = "the service") -> dict:
        """Poll ``/status`` until ``predicate(status)``; the status, or an error with the log's tail."""
        deadline = time.monotonic() + timeout
        last: dict | str = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{what}: the service exited with {self.process.returncode}\n{self.log_tail()}")
            try:
                code, body = self.call("GET", "/status")
                if code == 200:
                    last = body
                    if body["state"] == "failed":
                        raise AssertionError(f"{what}: the run failed: {body['error']}\n{self.log_tail()}")
                    if predicate(body):
                        return body
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1.0)
        raise AssertionError(f"{what}: not reached in {timeout:.0f} s (last status: {last})\n{self.log_tail()}")

    def call(self, method: str, path: str, body=None, token: str | None = TOKEN, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict | bytes]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, _decode(response.read(), response.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as error:
            return error.code, _decode(error.read(), error.headers.get("Content-Type", ""))

    def kill9(self) -> None:
        """SIGKILL the service's process. Its embedded Ray goes with it (kernel fate sharing), but the
        replica, the output lock's holder, may outlive it by seconds: a restart waits for it (``osal_ray.lock``)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self._wait_port_free()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_port_free(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.5)


def _decode(data: bytes, content_type: str) -> dict | bytes:
    if content_type.startswith("application/json"):
        return json.loads(data)
    return data
