"""Staging: people's labels written durably, one record per submission, never modified.

Labels are *staged* per open round, one JSON file per accepted submission, written atomically and
never modified: a kill at any moment loses no staged label, and every label a person gave stays on
disk (``labels.parquet`` at the output root is rebuilt from them). When the same key is staged
twice, the later submission counts. ``stage_labels`` is the one path every label takes (a CSV file,
the HTTP API, Label Studio); ``write_record`` / ``read_records`` are the record files it and the
corrections of closed rounds are made of.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Callable, Mapping

from osal_ray import storage
from osal_ray.annotation.labels import LabelRow
from osal_ray.errors import CorruptFile, InputError

LabelItem = tuple[int, str | None, str | None, str]  # (row, key, path, label)


def stage_labels(output_dir: Path, read_items: Callable[[], list[LabelItem]], field: str, source: str,
                 purpose: str = "", round_index: int | None = None,
                 origins: Mapping[int, str] | None = None) -> tuple[int, int, dict]:
    """Check labels against the open round of ``output_dir`` and stage them: the one path every label
    takes (a CSV file, the HTTP API, Label Studio).

    ``read_items`` gives ``(row, key, path, label)`` items (read under the output directory's lock);
    ``field`` names the input in errors; ``source`` is recorded with the staged labels. With
    ``round_index`` the labels must be for that round (a client that saw an older round is refused).
    Returns (labels staged, round, the new status). InputError naming every bad row, and nothing
    staged, on any problem. ``origins``: where a row's label was made, recorded with it (``labels.stage``).
    """
    from osal_ray.annotation.files import open_round, read_request, round_dir, waiting_status, write_audit, write_status
    from osal_ray.annotation.labels import LabelSet, check_labels
    from osal_ray.lock import OutputLock

    with OutputLock.acquire(output_dir, purpose=purpose):
        open_index = open_round(output_dir)
        if open_index is None:
            raise InputError("OUTPUT_DIR", f"{output_dir} is not waiting for labels (no open annotation round); "
                                           "run the experiment command to query the next round")
        if round_index is not None and round_index != open_index:
            raise InputError("round", f"the open round is {open_index}, not {round_index}")
        request = read_request(output_dir, open_index)
        staged_submissions(round_dir(output_dir, open_index))  # a corrupt staged file stops us before writing anything
        queried = {q["key"]: q.get("path") for q in request["queries"]}
        labels = LabelSet(tuple(request["class_names"]), request["unknown_label"])
        rows = check_labels(read_items(), queried, labels, field)
        if rows:
            stage(round_dir(output_dir, open_index), rows, source, origins)
            write_audit(output_dir)
        status = waiting_status(output_dir, open_index)
        write_status(output_dir, status)
        return len(rows), open_index, status


def stage(round_dir: Path, rows: list[LabelRow], source: str, origins: Mapping[int, str] | None = None) -> Path:
    """Write one accepted submission as a new staged file (atomic, never modified afterwards); InputError
    saying what failed (a full disk, no permission) with nothing staged and no temporary file left.

    ``origins`` maps a row to where its label was made (a Label Studio annotation's version), so that
    the same annotation is never staged twice."""
    origins = origins or {}
    labels = [{"key": r.key, "label": r.label, "row": r.row, **({"origin": origins[r.row]} if r.row in origins else {})}
              for r in rows]
    payload = {"source": source, "staged_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "labels": labels}
    return write_record(round_dir / "staged", payload, Path(source).name, "the labels", "nothing was staged")


def write_record(directory: Path, payload: dict, name: str, what: str = "the record", outcome: str = "nothing was written") -> Path:
    """Write ``payload`` as a new JSON file ``NNNNN-<pid>-<name>.json`` in ``directory``: numbered after
    the newest, fsynced, and never over another file (records of people's labels are never replaced).
    InputError naming ``directory`` and saying what failed, with no temporary file left."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "labels"
    data = json.dumps(payload).encode()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        number = 1 + max((int(p.name.split("-", 1)[0]) for p in directory.glob("[0-9]*-*.json")), default=0)
        while True:
            target = directory / f"{number:05d}-{os.getpid()}-{stem}.json"
            if storage.write_new(target, data):  # never overwrites another record
                break
            number += 1
    except OSError as exc:
        raise InputError(str(directory), f"cannot write {what} ({exc.strerror or exc}); {outcome}: "
                                         "free disk space or fix the permissions and submit them again") from None
    return target


def read_records(directory: Path, what: str, fix: str, problem: Callable[[dict], str | None]) -> list[dict]:
    """Every record ``write_record`` wrote in ``directory``, oldest first, each with its ``file`` name;
    CorruptFile naming a file that is not JSON or that ``problem`` finds wrong (it says what)."""
    files = sorted(directory.glob("[0-9]*-*.json"), key=lambda p: (int(p.name.split("-", 1)[0]), p.name))
    records = []
    for path in files:
        payload = storage.read_json(path, dict, what, fix)
        wrong = problem(payload)
        if wrong is not None:
            raise CorruptFile(str(path), f"not a {what}: {wrong}; {fix}")
        payload["file"] = path.name
        records.append(payload)
    return records


STAGED_FIX = ("staged files are the record of people's labels and are never changed automatically: restore this one "
              "from a backup, or move it out of staged/ (its labels are then no longer counted) and label those images again")


def staged_submissions(round_dir: Path) -> list[dict]:
    """Every staged submission of a round, oldest first; CorruptFile naming a file that is not one."""
    return read_records(round_dir / "staged", "staged label file", STAGED_FIX, _submission_problem)


def _submission_problem(payload: dict) -> str | None:
    """What makes ``payload`` no staged submission ({source, staged_at, labels: [{key, label, row}]}), or None."""
    for name in ("source", "staged_at"):
        if not isinstance(payload.get(name), str):
            return f"{name!r} is missing or not a string"
    labels = payload.get("labels")
    if not isinstance(labels, list):
        return "'labels' is missing or not a list"
    for index, item in enumerate(labels):
        if not (isinstance(item, dict) and isinstance(item.get("key"), str) and isinstance(item.get("label"), str)
                and isinstance(item.get("row"), int) and not isinstance(item.get("row"), bool)):
            return f"labels[{index}] is not {{key: string, label: string, row: integer}}"
    return None


def merged_labels(round_dir: Path) -> dict[str, str]:
    """key -> label over a round's staged submissions; a later submission overrides an earlier one."""
    merged: dict[str, str] = {}
    for submission in staged_submissions(round_dir):
        for item in submission["labels"]:
            merged[item["key"]] = item["label"]
    return merged


