"""The Label Studio client against a real Label Studio server (one per session; see label_studio_server.py)."""

from __future__ import annotations

import http.server
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from osal_ray.annotation.label_studio_api import (
    LabelStudioAnnotation,
    LabelStudioProject,
    config_choices,
    labeling_config,
    _dump,
    newest_annotation,
    webhook_task_id,
)
from osal_ray.errors import InputError
from label_studio_server import LabelStudioServer, label_studio_server  # noqa: F401 (the fixture)

CHOICES = ["cat", "dog", 'odd <"&> name']
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:label_studio_sdk.*")


@pytest.fixture
def client(label_studio_server: LabelStudioServer) -> LabelStudioProject:  # noqa: F811
    return LabelStudioProject(label_studio_server.url, label_studio_server.token)


def unique_title() -> str:
    return f"osal-test-{uuid.uuid4().hex[:8]}"


def tasks_for(round_: int, n: int, base: str = "http://127.0.0.1:9/images") -> list[dict]:
    keys = [uuid.uuid4().hex * 2 for _ in range(n)]
    return [
        {"image": f"{base}/{key}", "key": key, "round": round_, "rank": i, "score": 0.5} for i, key in enumerate(keys)
    ]


def test_labeling_config_round_trips_escaped_choices():
    assert config_choices(labeling_config(CHOICES)) == CHOICES
    assert config_choices("not xml") == []


def test_check_accepts_legacy_and_personal_access_tokens(label_studio_server: LabelStudioServer):  # noqa: F811
    LabelStudioProject(label_studio_server.url, label_studio_server.token).check()
    pat = label_studio_server.personal_access_token
    assert pat.count(".") == 2  # a JWT refresh token
    LabelStudioProject(label_studio_server.url, pat).check()


def test_check_refuses_a_wrong_token_without_showing_it(label_studio_server: LabelStudioServer):  # noqa: F811
    wrong = "wrong-token-" + uuid.uuid4().hex
    with pytest.raises(InputError) as raised:
        LabelStudioProject(label_studio_server.url, wrong).check()
    assert raised.value.field == "label_studio.token_env"
    assert wrong not in str(raised.value)


def test_check_refuses_an_unreachable_or_foreign_server(label_studio_server: LabelStudioServer):  # noqa: F811
    with pytest.raises(InputError) as raised:
        LabelStudioProject("http://127.0.0.1:9", "x").check()
    assert raised.value.field == "label_studio.url"
    with serve_http() as (base, _):  # answers 404 JSON-less: not Label Studio
        with pytest.raises(InputError) as raised:
            LabelStudioProject(base, "x").check()
    assert raised.value.field == "label_studio.url"


def test_ensure_project_creates_then_finds_and_refuses_other_choices(client: LabelStudioProject):
    title = unique_title()
    project_id = client.ensure_project(title, CHOICES)
    assert client.ensure_project(title, list(reversed(CHOICES))) == project_id
    assert client.labeling_choices(project_id) == CHOICES
    assert client.ensure_project(title + "-other", CHOICES) != project_id  # the title filter is a substring match
    with pytest.raises(InputError) as raised:
        client.ensure_project(title, ["cat", "bird"])
    assert raised.value.field == "label_studio.project"
    assert "bird" in raised.value.message and "dog" in raised.value.message
    with pytest.raises(InputError, match="at least 3 characters") as raised:
        client.ensure_project("ab", CHOICES)
    assert raised.value.field == "label_studio.project"


def test_import_is_idempotent_and_annotations_come_back(client: LabelStudioProject):
    project_id = client.ensure_project(unique_title(), CHOICES)
    first, second = tasks_for(0, 3), tasks_for(1, 2)
    assert client.import_tasks(project_id, first) == 3
    assert client.import_tasks(project_id, first + second) == 2
    assert client.import_tasks(project_id, first + second) == 0
    assert client.annotations(project_id) == []

    by_key = {key: task_id for (key, _), task_id in client.task_ids(project_id).items()}
    assert len(by_key) == 5
    client.annotate(by_key[first[0]["key"]], "cat")
    newest = client.annotate(by_key[first[0]["key"]], CHOICES[2])  # a second annotation of the same task
    client.annotate(by_key[second[0]["key"]], "dog")

    round0 = client.annotations(project_id, round=0)
    assert [(a.key, a.round, a.label, a.annotation_id) for a in round0] == [(first[0]["key"], 0, CHOICES[2], newest)]
    assert round0[0].annotator and round0[0].updated_at
    assert {(a.key, a.label) for a in client.annotations(project_id)} == {
        (first[0]["key"], CHOICES[2]),
        (second[0]["key"], "dog"),
    }


def test_a_round_view_shows_that_round_only(client: LabelStudioProject):
    project_id = client.ensure_project(unique_title(), CHOICES)
    client.import_tasks(project_id, tasks_for(1, 3) + tasks_for(2, 2))
    view = client.ensure_round_view(project_id, 2)
    assert client.ensure_round_view(project_id, 2) == view  # found, not made twice
    shown = [_dump(t) for t in client._client.tasks.list(project=project_id, view=view, fields="task_only")]
    assert sorted(t["data"]["round"] for t in shown) == [2, 2]


def test_many_tasks_page_through(client: LabelStudioProject):
    project_id = client.ensure_project(unique_title(), CHOICES)
    tasks = tasks_for(2, 230)
    assert client.import_tasks(project_id, tasks) == 230
    assert client.import_tasks(project_id, tasks) == 0
    ids = client.task_ids(project_id)
    assert set(ids) == {(t["key"], 2) for t in tasks}
    last = ids[(tasks[-1]["key"], 2)]
    client.annotate(last, "cat")
    assert [a.task_id for a in client.annotations(project_id, round=2)] == [last]


def test_webhook_body_from_label_studio_parses(client: LabelStudioProject):
    project_id = client.ensure_project(unique_title(), CHOICES)
    with serve_http() as (base, received):
        hook = f"{base}/hook"
        with pytest.raises(InputError) as raised:
            client.ensure_webhook(project_id, "not a url", {})
        assert raised.value.field == "label_studio.service_url"
        client.ensure_webhook(project_id, hook, {"X-Osal-Secret": "s1"})
        client.ensure_webhook(project_id, hook, {"X-Osal-Secret": "s2"})  # updated, not duplicated
        hooks = [h for h in client._client.webhooks.list(project=str(project_id)) if h.url == hook]
        assert len(hooks) == 1 and hooks[0].headers == {"X-Osal-Secret": "s2"}

        task = tasks_for(3, 1, base=f"{base}/images")[0]
        client.import_tasks(project_id, [task])
        (task_id,) = client.task_ids(project_id).values()
        annotation_id = client.annotate(task_id, "dog")
        path, headers, body = received.get(timeout=30)
        assert path == "/hook" and headers.get("X-Osal-Secret") == "s2"
        assert body["action"] == "ANNOTATION_CREATED"
        assert webhook_task_id(body) == task_id  # only the id is taken from the body
        key, round_, parsed = client.task_annotation(project_id, task_id)
        assert (key, round_) == (task["key"], 3)
        assert parsed == LabelStudioAnnotation(
            task_id=task_id,
            annotation_id=annotation_id,
            key=task["key"],
            round=3,
            label="dog",
            annotator=parsed.annotator if parsed else "",
            updated_at=parsed.updated_at if parsed else "",
        )
        assert parsed is not None and parsed.annotator == client.annotations(project_id)[0].annotator
        assert client.task_annotation(project_id + 1000, task_id) is None  # not this project's task
        assert client.task_annotation(project_id, 10**9) is None
        assert not [p for p, _, _ in drain(received) if p.startswith("/images")]  # the server never fetches images

        client._client.annotations.update(annotation_id, result=body["annotation"]["result"][:0])
        path, _, body = received.get(timeout=30)
        assert body["action"] == "ANNOTATION_UPDATED" and webhook_task_id(body) == task_id
        updated = client.task_annotation(project_id, task_id)[2]
        assert updated is not None and updated.label is None and updated.annotation_id == annotation_id
        assert updated.origin != parsed.origin  # a new version of the same annotation


def test_cancelled_annotation_is_the_newest_and_marked(client: LabelStudioProject):
    project_id = client.ensure_project(unique_title(), CHOICES)
    client.import_tasks(project_id, tasks_for(4, 1))
    (task_id,) = client.task_ids(project_id).values()
    client.annotate(task_id, "cat")
    client._client.annotations.create(task_id, result=[], was_cancelled=True)  # Label Studio's Skip button
    (found,) = client.annotations(project_id)
    assert found.cancelled and found.label is None


def test_new_projects_require_a_choice_and_carry_the_instruction(client: LabelStudioProject):
    project_id = client.ensure_project(unique_title(), CHOICES, "<p>how to label</p>")
    project = client._client.projects.get(project_id)
    assert 'required="true"' in project.label_config
    assert project.expert_instruction == "<p>how to label</p>" and project.show_instruction


@pytest.mark.parametrize(
    "junk",
    [
        {},
        {"action": "PROJECT_CREATED", "project": {"id": 1}},
        {"action": "ANNOTATION_CREATED"},
        {"action": "ANNOTATION_CREATED", "task": [], "annotation": "x"},
        {"action": "ANNOTATION_CREATED", "task": {"id": "x", "data": {"key": "k", "round": 0}}, "annotation": {}},
        {"action": "ANNOTATION_CREATED", "task": {"id": True}, "annotation": {"task": None}},
        {"action": "ANNOTATION_UPDATED", "task": {"id": [1]}, "annotation": {"id": 2, "result": 5}},
        {"action": ["ANNOTATION_CREATED"]},
        None,
        [],
        "ANNOTATION_CREATED",
    ],
)
def test_webhook_task_id_is_none_on_junk(junk):
    assert webhook_task_id(junk) is None


def test_newest_annotation_tolerates_odd_results():
    task = {"id": 7, "data": {"key": "k", "round": "2"},
            "annotations": [{"id": 9, "completed_by": {"id": 4, "email": "a@b"}, "result": [None, {"type": "choices"}]}]}
    assert newest_annotation(task) == LabelStudioAnnotation(7, 9, "k", 2, None, "4", "")
    assert newest_annotation({"id": 7, "data": {"key": "k", "round": 2}, "annotations": []}) is None


class _Recorder(http.server.BaseHTTPRequestHandler):
    received: queue.Queue

    def _answer(self, body: dict | None) -> None:
        self.received.put((self.path, dict(self.headers), body))
        self.send_response(200 if self.path == "/hook" else 404)
        self.end_headers()

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(json.loads(raw or b"null"))

    def do_GET(self) -> None:  # noqa: N802
        self._answer(None)

    def log_message(self, *args) -> None:
        pass


class serve_http:  # noqa: N801 (used like a function)
    """A tiny HTTP server on 127.0.0.1 recording (path, headers, JSON body) of every request."""

    def __enter__(self) -> tuple[str, queue.Queue]:
        received: queue.Queue = queue.Queue()
        handler = type("Recorder", (_Recorder,), {"received": received})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}", received

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def drain(received: queue.Queue, wait_s: float = 1.0) -> Iterator[tuple[str, dict, object]]:
    """Whatever else arrives within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            yield received.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            return
