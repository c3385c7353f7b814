"""The HTTP service on Ray Serve, started as a user starts it (``python -m osal_ray.serve``) on 127.0.0.1.

One service process drives an example pool through its rounds over HTTP with the pool's true
labels: authentication, every bad-label case (422, nothing staged), images, 8 concurrent clients,
a kill -9 in the middle of a round and a restart that loses no label and runs no round twice.
"""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import pandas as pd
import pytest

from osal_ray.examples.image_pool import write_example
from service_process import TOKEN, ServiceProcess

pytestmark = [pytest.mark.slow]

KNOWN = None  # set from the example's summary


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    directory = tmp_path_factory.mktemp("service") / "pool"
    summary = write_example(directory, pool_size=150, labeled_per_class=4, test_per_class=10, source="digits")
    return directory, set(summary["known_classes"])


def _args(root: Path, out: Path, rounds: int = 3) -> list[str]:
    return ["--config", "jobs/image_pool.yaml", "--output-dir", str(out), "--set", f"data.root={root}",
            "--set", "data.image_size=8", "--set", f"al.rounds={rounds}", "--set", "al.budget=10",
            "--set", "strategies=[random, osal]", "--set", "train.epochs=3", "--set", "train.num_workers=0",
            "--set", "ray.num_cpus=4"]


@pytest.fixture(scope="module")
def service(pool, tmp_path_factory, ray_session):
    # ray_session: the suite's embedded Ray is up, as it is in CI when this module runs; the service's own
    # embedded Ray must start beside it.
    root, _ = pool
    out = tmp_path_factory.mktemp("service") / "run"
    process = ServiceProcess(_args(root, out), out.parent / "service.log").start()
    try:
        process.wait_for(lambda s: s["state"] == "waiting_for_labels", what="round 1")
        yield process, out
    finally:
        process.stop()


def _truth(root: Path, known: set[str]) -> dict[str, str]:
    with open(root / "truth.csv", newline="") as handle:
        return {row["path"]: (row["label"] if row["label"] in known else "unknown") for row in csv.DictReader(handle)}


def _open_batch(process: ServiceProcess) -> dict:
    code, body = process.call("GET", "/queries")
    assert code == 200, body
    return body


def _true_labels(process: ServiceProcess, pool) -> dict[str, str]:
    root, known = pool
    truth = _truth(root, known)
    return {q["key"]: truth[q["path"]] for q in _open_batch(process)["queries"]}


def test_health_is_open_and_everything_else_needs_the_token(service):
    process, _ = service
    assert process.call("GET", "/health", token=None) == (200, {"status": "ok"})
    for method, path in [("GET", "/status"), ("GET", "/queries"), ("POST", "/labels"), ("POST", "/pool/rescan"),
                         ("POST", "/webhooks/label-studio")]:
        body = [] if method == "POST" else None
        assert process.call(method, path, body, token=None)[0] == 401, path
        assert process.call(method, path, body, token="wrong-token-0123456789")[0] == 401, path
    code, spec = process.call("GET", "/openapi.json", token=None)
    assert code == 200 and {"/status", "/queries", "/labels", "/images/{key}", "/pool/rescan"} <= set(spec["paths"])
    assert process.call("GET", "/docs", token=None)[0] == 200
    assert TOKEN not in (Path(process.log_path)).read_text(errors="replace")


def test_queries_and_images(service, pool):
    process, _ = service
    root, _ = pool
    batch = _open_batch(process)
    assert batch["round"] == 1 and batch["allowed_labels"][-2:] == ["unknown", "skip"]
    assert len({q["key"] for q in batch["queries"]}) >= 10 and {q["strategy"] for q in batch["queries"]} == {"random", "osal"}
    first = batch["queries"][0]
    assert set(first) >= {"rank", "key", "path", "score", "image_url"}
    code, data = process.call("GET", f"/images/{first['key']}")
    assert code == 200 and data == (root / first["path"]).read_bytes()
    code, data = process.call("GET", f"/images/{first['key']}?size=32")
    from PIL import Image
    import io

    assert code == 200 and max(Image.open(io.BytesIO(data)).size) == 32
    assert process.call("GET", f"/images/{first['key']}", token=None)[0] == 401
    assert process.call("GET", f"/images/{first['key']}?sig=" + "0" * 40, token=None)[0] == 401
    assert process.call("GET", "/images/" + "0" * 64)[0] == 404  # well-formed, not in the pool
    for bad in ["..%2F..%2Fetc%2Fpasswd", "not-a-key", "A" * 64]:
        assert process.call("GET", f"/images/{bad}")[0] in (404, 422), bad


def test_every_bad_label_is_422_and_nothing_is_staged(service, pool):
    process, _ = service
    labels = _true_labels(process, pool)
    key, other = sorted(labels)[:2]
    cases = {
        "unknown key": [{"key": "0" * 64, "label": "unknown"}],
        "label outside the set": [{"key": key, "label": "cat"}],
        "two labels for one key": [{"key": key, "label": "unknown"}, {"key": key, "label": "skip"}],
        "empty label": [{"key": key, "label": ""}],
        "no label field": [{"key": key}],
        "not a list of objects": ["just text"],
        "wrong round": {"round": 7, "labels": [{"key": key, "label": "unknown"}]},
        "one good, one bad": [{"key": other, "label": labels[other]}, {"key": key, "label": "cat"}],
    }
    for name, body in cases.items():
        code, answer = process.call("POST", "/labels", body)
        assert code in (409, 422) if name == "wrong round" else code == 422, (name, code, answer)
    code, answer = process.call("POST", "/labels", raw=b"{not json")
    assert code == 422
    code, answer = process.call("POST", "/labels", raw=b"[" + b'{"key": "x", "label": "y"},' * 100_000 + b"{}]")
    assert code == 413
    code, status = process.call("GET", "/status")
    assert status["labeled"] == 0 and status["missing"] == status["queried"], status
    code, detail = process.call("POST", "/labels", [{"key": key, "label": "cat"}])
    assert detail["detail"][0]["key"] == key and "cat" in detail["detail"][0]["error"]


def test_eight_concurrent_clients_then_the_next_round_runs(service, pool):
    process, out = service
    labels = sorted(_true_labels(process, pool).items())
    shares = [labels[i::8] for i in range(8)]
    results: list[tuple[int, dict]] = []
    failures: list[BaseException] = []

    def client(share: list[tuple[str, str]]) -> None:
        try:
            for key, label in share:  # one request per label: the most interleaving
                results.append(process.call("POST", "/labels", [{"key": key, "label": label}]))
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures and all(code == 200 for code, _ in results), results
    assert sum(body["staged"] for _, body in results) == len(labels)
    assert sum(body["next_round_started"] for _, body in results) == 1
    audit = pd.read_parquet(out / "labels.parquet")
    first = audit[audit["round"] == 1]
    assert len(first) == len(labels) and first["key"].is_unique
    status = process.wait_for(lambda s: s["state"] == "waiting_for_labels" and s["round"] == 2, what="round 2")
    assert status["labeled"] == 0 and [p["phase"] for p in status["phases"]][:1] == ["preparing"]
    assert {"training", "scoring", "selecting"} <= {p["phase"] for p in status["phases"]}


def test_rescan_adds_new_images_to_the_pool(service, pool):
    process, _ = service
    root, _ = pool
    import numpy as np
    from PIL import Image

    before = process.call("GET", "/status")[1]
    folder = root / "unlabeled" / "added_later"
    folder.mkdir()
    rng = np.random.default_rng(5)
    with open(root / "truth.csv", "a") as truth:
        for index in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"new_{index}.png")
            truth.write(f"unlabeled/added_later/new_{index}.png,unknown\n")
    code, body = process.call("POST", "/pool/rescan")
    assert code == 202, body
    status = process.wait_for(lambda s: s["state"] == "waiting_for_labels" and "last_rescan" in s, what="the rescan")
    assert status["last_rescan"]["decoded"] == 3, status["last_rescan"]
    assert status["round"] == before["round"] and status["missing"] == before["missing"]


def test_kill_9_mid_round_and_restart_lose_no_label_and_run_no_round_twice(service, pool, tmp_path):
    process, out = service
    labels = sorted(_true_labels(process, pool).items())
    half = labels[: len(labels) // 2]
    code, body = process.call("POST", "/labels", [{"key": k, "label": v} for k, v in half])
    assert code == 200 and body["staged"] == len(half)
    process.kill9()

    from osal_ray.label import main as label_cli

    restarted = ServiceProcess(process.args, process.log_path).start()
    try:
        status = restarted.wait_for(lambda s: s["state"] == "waiting_for_labels", what="the restart")
        assert status["round"] == 2 and status["labeled"] == len(half), status
        # the CLI is refused while the service holds the directory
        csv_file = tmp_path / "labels.csv"
        csv_file.write_text("key,label\n" + "".join(f"{k},{v}\n" for k, v in labels[len(half):]))
        assert label_cli([str(out), str(csv_file)]) == 2
        code, body = restarted.call("POST", "/labels", [{"key": k, "label": v} for k, v in labels[len(half):]])
        assert code == 200 and body["next_round_started"], body
        # kill it again while the round trains or scores, then let a restart finish the round
        restarted.wait_for(lambda s: s["state"] != "waiting_for_labels", timeout=60, what="the round to start")
        restarted.kill9()
        restarted = ServiceProcess(process.args, process.log_path).start()
        status = restarted.wait_for(lambda s: s["state"] == "waiting_for_labels" and s["round"] == 3, what="round 3")
    finally:
        restarted.stop()
    rounds = pd.read_parquet(out / "rounds.parquet")
    assert not rounds.duplicated(["strategy", "seed", "round"]).any()
    assert sorted(rounds["round"].unique().tolist()) == [0, 1, 2]
    queries = pd.read_parquet(out / "queries.parquet")
    assert not queries.duplicated(["strategy", "seed", "id"]).any()
    audit = pd.read_parquet(out / "labels.parquet")
    assert set(audit[audit["round"] == 2]["key"]) == {k for k, _ in labels}
    state = json.loads((out / "runs" / "osal" / "seed_0" / "state.json").read_text())
    assert state["completed_round"] == 2 and state["pending"]["round"] == 3


STUDIO = "http://127.0.0.1:8080"  # the Label Studio origin the stub API lets load images


class _StubController:
    """Just enough of RunController for the API's error mapping (no Ray, no Serve)."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.staged: list = []

    def status(self) -> dict:
        from osal_ray.annotation.staging import staged_submissions

        staged_submissions(self.output_dir / "annotation" / "round_001")
        return {"state": "waiting_for_labels"}

    def stage(self, items, source, round_index=None) -> dict:
        self.staged.append((items, round_index))
        return {"staged": len(items)}

    def stage_webhook(self, payload: dict) -> dict:
        return {"ok": True}

    def was_queried(self, key: str) -> bool:
        return key != "b" * 64  # the stub's pool: every key but this one was queried

    def image(self, key: str, size: int | None = None):
        from osal_ray.service.controller import Image

        return Image(b"\x89PNG fake", "image/png")


@pytest.fixture
def api(tmp_path):
    from fastapi.testclient import TestClient

    from osal_ray.service.api import build_api
    from osal_ray.service.auth import token_digest

    controller = _StubController(tmp_path)
    client = TestClient(build_api(controller, token_digest("t0ken"), origins=frozenset({STUDIO})), raise_server_exceptions=False)
    client.headers["Authorization"] = "Bearer t0ken"
    return client, controller


def test_a_corrupt_staged_file_is_503_naming_it(api, tmp_path):
    client, _ = api
    staged = tmp_path / "annotation" / "round_001" / "staged"
    staged.mkdir(parents=True)
    (staged / "00001-1-labels.json").write_text('{"source": "x", "labels": [')
    code = client.get("/status")
    assert code.status_code == 503, code.text
    assert code.json()["file"] == str(staged / "00001-1-labels.json") and "not valid JSON" in code.json()["detail"]


def test_odd_label_bodies_are_4xx_not_500(api):
    client, controller = api
    label = {"key": "a" * 64, "label": "cat"}
    cases = {
        "NaN label": (b'[{"key": "x", "label": NaN}]', 422),
        "Infinity round": (b'{"round": Infinity, "labels": []}', 422),
        "boolean round": (b'{"round": true, "labels": [{"key": "x", "label": "cat"}]}', 422),
        "bare list over the limit": (json.dumps([label] * 10_001).encode(), 422),
    }
    for name, (body, expected) in cases.items():
        answer = client.post("/labels", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == expected, (name, answer.status_code, answer.text[:300])
        assert len(answer.text) < 20_000, name  # the detail names the problem, it does not echo the body
    assert controller.staged == []
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/webhooks/label-studio", "/labels"):
        answer = client.post(path, content=deep, headers={"Content-Type": "application/json"})
        assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text[:300])


def test_images_and_only_images_answer_the_label_studio_origin(api):
    """Label Studio's page loads task images cross-origin: /images/ allows its origin, nothing else does."""
    from osal_ray.annotation.secret import signed_image_url

    client, controller = api
    url = signed_image_url("http://testserver", controller.output_dir, "a" * 64).removeprefix("http://testserver")
    allowed = client.get(url, headers={"Origin": STUDIO, "Authorization": ""})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == STUDIO
    assert "Origin" in allowed.headers["vary"]
    other = client.get(url, headers={"Origin": "http://evil.example", "Authorization": ""})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    unsigned = client.get(f"/images/{'a' * 64}", headers={"Origin": STUDIO, "Authorization": ""})
    assert unsigned.status_code == 401  # the signature stays the key
    preflight = client.options(url, headers={"Origin": STUDIO, "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == STUDIO
    assert client.options(url, headers={"Origin": "http://evil.example"}).status_code == 403
    status = client.get("/status", headers={"Origin": STUDIO})
    assert "access-control-allow-origin" not in status.headers
    never_queried = signed_image_url("http://testserver", controller.output_dir, "b" * 64).removeprefix("http://testserver")
    assert client.get(never_queried, headers={"Authorization": ""}).status_code == 404  # a labeled/test image: not by signature
    assert client.get(f"/images/{'b' * 64}").status_code == 200  # the API token still reaches every pool image


@pytest.mark.parametrize("studio_url, origins, expected", [
    ("http://127.0.0.1:8080/", None, {"http://127.0.0.1:8080"}),
    ("https://label.example.com:443/app", None, {"https://label.example.com"}),
    ("http://127.0.0.1:8080", ["http://a.example:81", "https://b.example"], {"http://a.example:81", "https://b.example"}),
    (None, None, set()),
])
def test_image_origins_come_from_label_studio_url_or_cors_origins(studio_url, origins, expected):
    from osal_ray.config import config_from_dict
    from osal_ray.service.api import image_origins

    config = config_from_dict({"label_studio": {"url": studio_url, "cors_origins": origins}})
    assert image_origins(config) == expected


@pytest.mark.parametrize("origin", ["*", "http://a.example/path", "ftp://a.example", "a.example"])
def test_a_cors_origin_that_is_no_web_origin_is_refused(origin, monkeypatch):
    from osal_ray.config import config_from_dict
    from osal_ray.errors import InputError
    from osal_ray.validation import validate_config

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "x")
    config = config_from_dict({"oracle": {"kind": "label_studio"},
                               "label_studio": {"url": "http://127.0.0.1:8080", "cors_origins": [origin]}})
    with pytest.raises(InputError) as raised:
        validate_config(config)
    assert raised.value.field == "label_studio.cors_origins"
