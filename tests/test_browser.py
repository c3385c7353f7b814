"""What people see, in a real headless Chromium: Label Studio tasks of a running service, the contact
sheet, the service's ``/docs``.

The service runs as the README starts it (``python -m osal_ray.serve``, ``oracle.kind: label_studio``,
``label_studio.service_url``) against a real Label Studio server; the browser logs into Label Studio as
the annotator and labels a round through its labeling view: every task's image must have decoded
(natural width > 0, no CORS error in the console), Skip counts as ``skip``, the round closes once
the last task is answered and the next round's tasks appear; a label changed after its round closed
is a correction the next round trains with; a label posted to the service's API shows on its task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from browser_session import (browser, choose_and_submit, close_instructions, console_errors,  # noqa: F401
                             login_label_studio, open_task, screenshot, skip_task, task_image_state)
from conftest import labeled_example_pool
from osal_ray.annotation.label_studio_api import LabelStudioProject
from service_process import ServiceProcess, free_port

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return labeled_example_pool(tmp_path_factory.mktemp("browser") / "pool")


def _round_tasks(client: LabelStudioProject, project_id: int, round_index: int) -> dict[str, int]:
    return {key: task_id for (key, r), task_id in client.task_ids(project_id).items() if r == round_index}


def _queries(out: Path, round_index: int) -> list[dict]:
    return json.loads((out / "annotation" / f"round_{round_index:03d}" / "request.json").read_text())["queries"]


def _assert_image_shown(driver, what: str, shots: Path) -> None:
    state = task_image_state(driver)
    shot = screenshot(driver, shots / f"{what}.png")
    errors = console_errors(driver)
    assert state["natural_width"] > 0 and not state["error_text"], f"{what}: image not shown {state}, console {errors} ({shot})"
    assert not [e for e in errors if "CORS" in e or "/images/" in e], f"{what}: {errors}"


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"not reached in {timeout:.0f} s: {what}")


def test_an_annotator_labels_rounds_in_label_studio_in_a_real_browser(label_studio_server, browser, pool, tmp_path):  # noqa: F811
    root, truth = pool
    out, shots = tmp_path / "served", tmp_path / "screenshots"
    port = free_port()
    args = ["--config", "jobs/image_pool.yaml", "--output-dir", str(out), "--set", f"data.root={root}",
            "--set", "data.image_size=8", "--set", "al.rounds=3", "--set", "al.budget=4", "--set", "strategies=[random]",
            "--set", "train.epochs=2", "--set", "ray.num_cpus=4", "--set", "oracle.kind=label_studio",
            "--set", f"label_studio.url={label_studio_server.url}", "--set", "label_studio.project=osal_ray browser test",
            "--set", "label_studio.poll_seconds=2", "--set", f"label_studio.service_url=http://127.0.0.1:{port}"]
    service = ServiceProcess(args, tmp_path / "service.log", env={"LABEL_STUDIO_API_KEY": label_studio_server.token})
    service.port, service.url = port, f"http://127.0.0.1:{port}"
    client = LabelStudioProject(label_studio_server.url, label_studio_server.token)
    service.start()
    try:
        service.wait_for(lambda s: s["state"] == "waiting_for_labels", what="round 1")
        project_id = json.loads((out / "annotation" / "label_studio.json").read_text())["project_id"]
        project = client._client.projects.get(project_id)
        assert 'required="true"' in project.label_config and "unknown" in project.expert_instruction
        login_label_studio(browser, label_studio_server.url, label_studio_server.username, label_studio_server.password)
        console_errors(browser)

        # Round 1: every task shows its image and the model's guess; one is skipped, the rest labeled.
        queries = {q["key"]: q for q in _queries(out, 1)}
        tasks = _round_tasks(client, project_id, 1)
        assert set(tasks) == set(queries)
        ordered = sorted(tasks.items())
        skipped_key, skipped_task = ordered[0]
        open_task(browser, label_studio_server.url, project_id, skipped_task, stream=True)
        assert "unknown" in close_instructions(browser, timeout=10)  # the project's instruction opens by itself
        _assert_image_shown(browser, "round1-skipped", shots)
        skip_task(browser)
        for key, task_id in ordered[1:]:
            guess = client._client.tasks.get(task_id).predictions
            assert guess and "round 1" in str(guess[0].get("model_version") if isinstance(guess[0], dict) else guess[0].model_version)
            open_task(browser, label_studio_server.url, project_id, task_id)
            _assert_image_shown(browser, f"round1-{key[:8]}", shots)
            choose_and_submit(browser, truth[queries[key]["path"]])
        status = service.wait_for(lambda s: s["state"] == "waiting_for_labels" and s["round"] == 2, what="round 2")
        labels_1 = {row["key"]: row["label"] for row in pd.read_parquet(out / "labels.parquet").to_dict("records") if row["round"] == 1}
        assert labels_1[skipped_key] == "skip" and len(labels_1) == len(tasks)  # Skip closed the round, as skip
        audit = pd.read_parquet(out / "labels.parquet")
        assert audit["agreed_with_prediction"].notna().all()

        # Round 2's tasks are in Label Studio and show their images too.
        tasks_2 = _round_tasks(client, project_id, 2)
        assert len(tasks_2) == status["queried"]
        first_key, first_task = sorted(tasks_2.items())[0]
        open_task(browser, label_studio_server.url, project_id, first_task)
        _assert_image_shown(browser, "round2-first", shots)

        # A label changed after round 1 closed is a correction, with both labels in the audit trail.
        changed_key, changed_task = ordered[1]
        old = truth[queries[changed_key]["path"]]
        new = next(label for label in status["allowed_labels"] if label not in (old, "skip"))
        open_task(browser, label_studio_server.url, project_id, changed_task)
        choose_and_submit(browser, new)
        corrections = _wait(lambda: [r for r in pd.read_parquet(out / "labels.parquet").to_dict("records")
                                     if isinstance(r["corrects"], str)], 60, "the correction in labels.parquet")
        assert [(c["key"], c["round"], c["corrects"], c["label"]) for c in corrections] == [(changed_key, 1, old, new)]

        # A label posted to the service's API shows on its Label Studio task.
        queries_2 = {q["key"]: q for q in _queries(out, 2)}
        code, _ = service.call("POST", "/labels", [{"key": first_key, "label": truth[queries_2[first_key]["path"]]}])
        assert code == 200
        _wait(lambda: [a for a in client.annotations(project_id, 2) if a.key == first_key], 60, "the API label in Label Studio")
        for key, task_id in sorted(tasks_2.items())[1:]:
            client.annotate(task_id, truth[queries_2[key]["path"]])
        service.wait_for(lambda s: s["state"] == "waiting_for_labels" and s["round"] == 3, what="round 3")
        state = json.loads((out / "runs" / "random" / "seed_0" / "state.json").read_text())
        assert [(c["round"], c["previous"], c["label"], c["applied_in_round"]) for c in state["corrections"]] == [(1, old, new, 2)]

        # The contact sheet and the API docs, as a person opens them.
        browser.get((out / "annotation" / "round_002" / "contact_sheet.html").as_uri())
        widths = browser.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : 0)")
        screenshot(browser, shots / "contact_sheet.png")
        assert len(widths) == len(tasks_2) and min(widths) > 0
        console_errors(browser)
        browser.get(f"{service.url}/docs")
        title = WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"))[0]
        screenshot(browser, shots / "docs.png")
        assert "osal_ray" in title.text
        assert WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
        assert not console_errors(browser)
    finally:
        service.stop()
    log = (tmp_path / "service.log").read_text(errors="replace")
    assert "Connecting to existing Serve app" not in log and "run this command again" not in log
