"""``ray job submit --working-dir . -- python -m osal_ray.run --config jobs/digits.yaml`` against a head
started with ``ray start --head``, exactly as the README tells a user to do."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_dashboard(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers (401 without a token): it is up
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no dashboard at {url} after {timeout}s")


@pytest.fixture
def ray_head():
    """A separate head (own temp dir, ports and process group), torn down without `ray stop`."""
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Unix socket paths are limited
    os.makedirs(os.path.join(temp_dir, "ray"), exist_ok=True)
    gcs_port, dashboard_port = _free_port(), _free_port()
    # The node's agents get ports of their own too: Ray's defaults (52365 for the dashboard
    # agent) are taken whenever another Ray runs on this machine, e.g. the tests' embedded one,
    # and a head whose agent cannot bind refuses every job with "No available agent".
    agent_ports = [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
                   f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = temp_dir
    # Ray 2.60 heads use token authentication; a token of the test's own, so that neither a
    # machine without ~/.ray/auth_token nor another cluster's token gets in the way.
    token_path = os.path.join(temp_dir, "auth_token")
    with open(token_path, "w") as handle:
        handle.write(secrets.token_hex(32))
    env["RAY_AUTH_TOKEN_PATH"] = token_path
    env.pop("RAY_AUTH_TOKEN", None)
    head = subprocess.Popen(
        RAY_CLI + ["start", "--head", "--block", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
                   "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats", *agent_ports],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_dashboard(url, timeout=60)
        yield url, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)


def _submit(url: str, env: dict[str, str], args: list[str], agent_timeout: float = 90.0) -> subprocess.CompletedProcess:
    """``ray job submit``, retried while the head's job agent is still starting.

    The dashboard answers before the node's job agent has registered with it; a submission in that
    window is refused with "No available agent to submit job" (HTTP 500) and nothing is started, so
    submitting again is safe. Any other failure is returned as it came.
    """
    deadline = time.time() + agent_timeout
    while True:
        submit = subprocess.run(
            RAY_CLI + ["job", "submit", "--address", url, "--working-dir", ".", "--"] + args,
            cwd=REPO, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=400,
        )
        if "No available agent" not in submit.stderr + submit.stdout or time.time() > deadline:
            return submit
        time.sleep(2)


def test_ray_job_submit_runs_the_digits_job(ray_head, tmp_path):
    url, env = ray_head
    out = tmp_path / "job-out"
    submit = _submit(url, env, ["python", "-m", "osal_ray.run", "--config", "jobs/digits.yaml",
                                "--output-dir", str(out), "--set", "al.rounds=2",
                                "--set", "strategies=[random,entropy]"])
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout + submit.stderr
    rounds = pd.read_parquet(out / "rounds.parquet")
    assert sorted(rounds["strategy"].unique()) == ["entropy", "random"]
    assert rounds["round"].max() == 2
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"entropy", "random"}
    assert (out / "curves.png").is_file() and (out / "queries.parquet").is_file()
    # The job joined the head; it did not start a Ray of its own.
    assert "Started a local Ray instance" not in submit.stdout
