"""Round latency as annotators feel it: from the last label of a round to the next round's tasks in Label Studio.

Issue 22 §6. A real Label Studio server (installed as the tests install it, ``tests/label_studio_server.py``)
and the service as the README starts it (``python -m osal_ray.serve --config jobs/image_pool.yaml`` on the
example pool, ``oracle.kind: label_studio``, the signed image URLs and the webhook). Each round, every task
but one is annotated through Label Studio's API; once the service counts them, the clock starts and the
last task is annotated; it stops when the next round's tasks are listed by Label Studio's API. The
service's own phases (``/status``) split the time into import, training, scoring, selection and
publishing. Writes ``benchmarks/results/round_latency.{json,md}``.

    python benchmarks/round_latency.py [--rounds 4] [--set KEY=VALUE ...]

Needs ``apt-get install dataset-fashion-mnist`` for the Fashion-MNIST example (else the example uses digits).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from label_studio_server import start_label_studio  # noqa: E402
from service_process import ServiceProcess, free_port  # noqa: E402

from osal_ray.annotation.label_studio_api import LabelStudioProject  # noqa: E402
from osal_ray.examples.image_pool import write_example  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="query rounds to time (default 4)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="extra config overrides")
    parser.add_argument("--name", default="round_latency", help="results file stem (default round_latency)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="osal-ray-latency-"))
    example = write_example(work / "pool")
    truth = _truth(work / "pool", set(example["known_classes"]))
    studio = start_label_studio()
    port = free_port()
    service_args = ["--config", "jobs/image_pool.yaml", "--output-dir", str(work / "run"),
                    "--set", f"data.root={work / 'pool'}", "--set", f"al.rounds={args.rounds}",
                    "--set", "oracle.kind=label_studio", "--set", f"label_studio.url={studio.url}",
                    "--set", f"label_studio.service_url=http://127.0.0.1:{port}", *sum((["--set", o] for o in args.overrides), [])]
    service = ServiceProcess(service_args, work / "service.log", env={"LABEL_STUDIO_API_KEY": studio.token})
    service.port, service.url = port, f"http://127.0.0.1:{port}"
    client = LabelStudioProject(studio.url, studio.token)
    rows = []
    try:
        started = time.monotonic()
        service.start()
        service.wait_for(lambda s: s["state"] == "waiting_for_labels", timeout=900, what="round 1")
        first_round = time.monotonic() - started
        project_id = json.loads((work / "run" / "annotation" / "label_studio.json").read_text())["project_id"]
        for round_index in range(1, args.rounds):
            rows.append(_time_round(client, service, project_id, round_index, truth, work / "run"))
            print(f"round {round_index} -> {round_index + 1}: {rows[-1]['seconds']:.2f} s "
                  f"({', '.join(f'{k} {v:.2f}' for k, v in rows[-1]['phases'].items())})", flush=True)
    finally:
        service.stop()
        studio.stop()
    result = {"machine": f"{platform.machine()}, {_cpus()} CPUs, {platform.system()}", "job": "jobs/image_pool.yaml",
              "overrides": args.overrides, "example": {k: example[k] for k in ("known_classes", "source") if k in example},
              "first_round_seconds": round(first_round, 1), "rounds": rows,
              "median_seconds": round(statistics.median(r["seconds"] for r in rows), 2)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{args.name}.md").write_text(_table(result, args))
    print(_table(result, args))


def _time_round(client: LabelStudioProject, service: ServiceProcess, project_id: int, round_index: int,
                truth: dict[str, str], run: Path) -> dict:
    request = json.loads((run / "annotation" / f"round_{round_index:03d}" / "request.json").read_text())
    answer = {q["key"]: truth[q["path"]] for q in request["queries"]}
    tasks = sorted((key, task_id) for (key, r), task_id in client.task_ids(project_id).items() if r == round_index)
    annotate_seconds = []
    for key, task_id in tasks[:-1]:
        started = time.monotonic()
        client.annotate(task_id, answer[key])
        annotate_seconds.append(time.monotonic() - started)
    service.wait_for(lambda s: s["labeled"] == len(tasks) - 1, what=f"round {round_index}'s first labels")
    key, task_id = tasks[-1]
    clock = time.monotonic()
    client.annotate(task_id, answer[key])
    while not any(r == round_index + 1 for _, r in client.task_ids(project_id)):
        time.sleep(0.1)
        if time.monotonic() - clock > 900:
            raise RuntimeError(f"round {round_index + 1}'s tasks did not appear in 900 s\n{service.log_tail()}")
    seconds = time.monotonic() - clock
    status = service.call("GET", "/status")[1]
    phases: dict[str, float] = {}
    for phase in status.get("phases", []):
        phases[phase["phase"]] = phases.get(phase["phase"], 0.0) + (phase["seconds"] or 0.0)
    return {"round": round_index, "tasks": len(tasks), "seconds": round(seconds, 2),
            "annotate_median_seconds": round(statistics.median(annotate_seconds), 3),
            "annotate_max_seconds": round(max(annotate_seconds), 3),
            "phases": {k: round(v, 2) for k, v in phases.items()}}


def _truth(pool: Path, known: set[str]) -> dict[str, str]:
    """path -> the label a careful annotator gives: the class if known, else unknown."""
    import csv

    with open(pool / "truth.csv", newline="") as handle:
        return {row["path"]: (row["label"] if row["label"] in known else "unknown") for row in csv.DictReader(handle)}


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _table(result: dict, args: argparse.Namespace) -> str:
    lines = ["# Round latency (last label -> next round's tasks in Label Studio)", "",
             f"Machine: {result['machine']}. Command: `python benchmarks/round_latency.py --rounds {args.rounds}"
             + "".join(f" --set {o}" for o in args.overrides) + "`.", "",
             f"First round (decode the pool, train, score, select, publish): {result['first_round_seconds']} s.", "",
             "| round | tasks | seconds | annotate median / max (s) | " + " | ".join(sorted({p for r in result["rounds"] for p in r["phases"]})) + " |",
             "| ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in {p for r in result["rounds"] for p in r["phases"]}) + " |"]
    names = sorted({p for r in result["rounds"] for p in r["phases"]})
    for row in result["rounds"]:
        lines.append(f"| {row['round']} | {row['tasks']} | {row['seconds']:.2f} | "
                     f"{row['annotate_median_seconds']:.3f} / {row['annotate_max_seconds']:.3f} | "
                     + " | ".join(f"{row['phases'].get(n, 0.0):.2f}" for n in names) + " |")
    lines += ["", f"Median: {result['median_seconds']} s. `annotate`: how long Label Studio's API takes to answer one posted "
              "annotation while the service takes its webhooks.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
