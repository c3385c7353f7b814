"""Label Studio as the annotators' front end, against a real Label Studio server on 127.0.0.1.

The service publishes each round as Label Studio tasks (images served by the service through signed
URLs), people's annotations come back through the webhook and polling, and the next round starts;
a command-line run does the same by polling (exit 0 while labels are missing, import on the next run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from conftest import labeled_example_pool
from osal_ray.annotation.label_studio_api import LabelStudioProject
from service_process import ServiceProcess, free_port

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return labeled_example_pool(tmp_path_factory.mktemp("ls") / "pool")


def _settings(root: Path, out: Path, studio_url: str, project: str, rounds: int = 2) -> list[str]:
    return ["--config", "jobs/image_pool.yaml", "--output-dir", str(out), "--set", f"data.root={root}",
            "--set", "data.image_size=8", "--set", f"al.rounds={rounds}", "--set", "al.budget=6",
            "--set", "strategies=[random]", "--set", "train.epochs=2", "--set", "train.num_workers=0",
            "--set", "ray.num_cpus=4", "--set", "oracle.kind=label_studio", "--set", f"label_studio.url={studio_url}",
            "--set", f"label_studio.project={project}", "--set", "label_studio.poll_seconds=2"]


def _annotate_round(client: LabelStudioProject, project_id: int, round_index: int, truth_by_key: dict[str, str]) -> int:
    """Annotate every task of the round through Label Studio's API, as an annotator would."""
    tasks = {key: task_id for (key, r), task_id in client.task_ids(project_id).items() if r == round_index}
    assert tasks, f"no task of round {round_index} in Label Studio"
    for key, task_id in tasks.items():
        client.annotate(task_id, truth_by_key[key])
    return len(tasks)


def _truth_by_key(out: Path, round_index: int, truth: dict[str, str]) -> dict[str, str]:
    request = json.loads((out / "annotation" / f"round_{round_index:03d}" / "request.json").read_text())
    return {q["key"]: truth[q["path"]] for q in request["queries"]}


def test_the_service_publishes_to_label_studio_and_takes_its_annotations(label_studio_server, pool, tmp_path, ray_session):
    root, truth = pool
    out = tmp_path / "served"
    client = LabelStudioProject(label_studio_server.url, label_studio_server.token)
    port = free_port()
    args = _settings(root, out, label_studio_server.url, "osal_ray service test", rounds=3) + \
        ["--set", f"label_studio.service_url=http://127.0.0.1:{port}"]
    service = ServiceProcess(args, tmp_path / "service.log", env={"LABEL_STUDIO_API_KEY": label_studio_server.token})
    service.port, service.url = port, f"http://127.0.0.1:{port}"
    service.start()
    try:
        status = service.wait_for(lambda s: s["state"] == "waiting_for_labels", what="round 1")
        project_id = json.loads((out / "annotation" / "label_studio.json").read_text())["project_id"]
        assert client.labeling_choices(project_id) == status["allowed_labels"]
        tasks = client.task_ids(project_id)
        assert len(tasks) == status["queried"] and {r for _, r in tasks} == {1}
        # the task's image URL is the service's signed URL: it works without the API token
        task = next(iter(client._tasks(project_id, with_annotations=False)))
        with urllib.request.urlopen(task["data"]["image"], timeout=30) as response:
            assert response.status == 200 and response.read() == (root / task["data"]["path"]).read_bytes()

        # annotations reach the service (webhook, polling as a fallback) and the next round starts
        annotated = _annotate_round(client, project_id, 1, _truth_by_key(out, 1, truth))
        status = service.wait_for(lambda s: s["state"] == "waiting_for_labels" and s["round"] == 2, what="round 2")
        assert {r for _, r in client.task_ids(project_id)} == {1, 2}
        audit = pd.read_parquet(out / "labels.parquet")
        assert len(audit[audit["round"] == 1]) == annotated and audit["source_file"].str.startswith("label-studio").all()
        served_log = (tmp_path / "service.log").read_text(errors="replace")
        assert label_studio_server.token not in served_log

        # a restart (kill -9) in the middle of round 2 loses nothing: half annotated, the rest after
        labels = _truth_by_key(out, 2, truth)
        ids = {key: task_id for (key, r), task_id in client.task_ids(project_id).items() if r == 2}
        first = sorted(ids)[: len(ids) // 2]
        for key in first:
            client.annotate(ids[key], labels[key])
        service.wait_for(lambda s: s["labeled"] == len(first), what="the first half of round 2")
        service.kill9()
        service = ServiceProcess(args, tmp_path / "service.log", env={"LABEL_STUDIO_API_KEY": label_studio_server.token})
        service.port, service.url = port, f"http://127.0.0.1:{port}"
        service.start()
        status = service.wait_for(lambda s: s["state"] == "waiting_for_labels", what="the restart")
        assert status["round"] == 2 and status["labeled"] == len(first)
        for key in sorted(ids)[len(ids) // 2:]:
            client.annotate(ids[key], labels[key])
        service.wait_for(lambda s: s["state"] == "waiting_for_labels" and s["round"] == 3, what="round 3")
    finally:
        service.stop()
    rounds = pd.read_parquet(out / "rounds.parquet")
    assert sorted(rounds["round"]) == [0, 1, 2]


def test_a_command_line_run_publishes_and_imports_on_the_next_run(label_studio_server, pool, tmp_path):
    root, truth = pool
    out = tmp_path / "cli"
    env = {**os.environ, "LABEL_STUDIO_API_KEY": label_studio_server.token}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "osal_ray.run", *_settings(root, out, label_studio_server.url, "osal_ray cli test")]

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    assert "images to label: annotate them in Label Studio" in first.stdout
    client = LabelStudioProject(label_studio_server.url, label_studio_server.token)
    project_id = json.loads((out / "annotation" / "label_studio.json").read_text())["project_id"]
    task = next(iter(client._tasks(project_id, with_annotations=False)))
    assert task["data"]["image"].startswith("data:image/png;base64,")  # no service: the image travels in the task

    waiting = run()  # nothing annotated yet: says so, exits 0, starts no round
    assert waiting.returncode == 0 and "still need a label" in waiting.stdout, waiting.stdout[-2000:]
    _annotate_round(client, project_id, 1, _truth_by_key(out, 1, truth))
    second = run()
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((out / "status.json").read_text())["round"] == 2
    assert {r for _, r in client.task_ids(project_id)} == {1, 2}

    # a wrong token is refused before any work, naming the variable and not the token
    bad = subprocess.run(command, cwd=REPO, env={**env, "LABEL_STUDIO_API_KEY": "not-the-token-123"},
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "label_studio.token_env" in bad.stderr and "not-the-token-123" not in bad.stderr
