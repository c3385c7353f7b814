"""Human labels: the allowed values, reading and checking a label file, staging it durably.

A label is a known class name, the unknown label (``data.unknown_label``, "unknown" by default:
the image is out of scope), or ``skip`` (the image is unusable: it leaves the pool and costs no
budget). Labels are *staged* per open round, one JSON file per accepted submission, written
atomically and never modified: a kill at any moment loses no staged label, and every label a
person gave stays on disk (``labels.parquet`` at the output root is rebuilt from them). When the
same key is staged twice, the later submission counts.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from osal_ray import storage
from osal_ray.errors import CorruptFile, InputError, shown
from osal_ray.experiment.oracle import SKIPPED, UNKNOWN

SKIP = "skip"
MAX_LABEL_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class LabelSet:
    """The values a label may take in one run."""

    class_names: tuple[str, ...]
    unknown_label: str

    def allowed(self) -> list[str]:
        return [*self.class_names, self.unknown_label, SKIP]

    def name_of(self, answer: int) -> str:
        """The label text of an answer (0..K-1, ``UNKNOWN``, ``SKIPPED``): the inverse of ``answer``."""
        if answer == SKIPPED:
            return SKIP
        if answer == UNKNOWN:
            return self.unknown_label
        return self.class_names[answer]

    def answer(self, label: str) -> int:
        """0..K-1 for a class name, ``UNKNOWN`` for the unknown label, ``SKIPPED`` for skip."""
        if label == SKIP:
            return SKIPPED
        if label == self.unknown_label:
            return UNKNOWN
        return self.class_names.index(label)


class LabelErrors(InputError):
    """Labels refused row by row: ``problems`` holds ``(row, key or path, what is wrong)`` for each bad row."""

    def __init__(self, field: str, problems: list[tuple[int, str | None, str]]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        super().__init__(field, "; ".join(f"row {row}: {text}" for row, _, text in problems[:10]) + more + ". Nothing was staged")


@dataclass(frozen=True)
class LabelRow:
    """One accepted label: the sample's key, the label text, and where it came from."""

    key: str
    label: str
    row: int  # 1-based data row in its source (0 for a label that came without a file)


def check_labels(items: Iterable[tuple[int, str | None, str | None, str]], queried: dict[str, str], labels: LabelSet,
                 field: str) -> list[LabelRow]:
    """Validate ``(row, key, path, label)`` items against the open round; all problems at once.

    ``queried`` maps the open round's keys to their paths. Items with an empty label are
    skipped (a partly filled template). Raises InputError(field, ...) naming every bad row.
    """
    by_path = {path: key for key, path in queried.items() if path}
    allowed = labels.allowed()
    accepted: dict[str, LabelRow] = {}
    problems: list[tuple[int, str | None, str]] = []
    for row, key, path, label in items:
        label = (label or "").strip()
        key = (key or "").strip() or None
        path = (path or "").strip() or None
        if not label:
            continue
        if key is None and path is None:
            problems.append((row, None, "no key or path"))
            continue
        if key is None:
            key = by_path.get(path)
            if key is None:
                problems.append((row, path, f"path {shown(path)} was not queried in the open round"))
                continue
        elif key not in queried:
            problems.append((row, key, f"key {shown(key)} was not queried in the open round"))
            continue
        elif path is not None and queried[key] and path != queried[key]:
            problems.append((row, key, f"key {shown(key)} is the queried image {shown(queried[key])}, but the row's path "
                                       f"is {shown(path)}; give the key or the path of one image"))
            continue
        if label not in allowed:
            problems.append((row, key, f"label {shown(label)} is not one of {', '.join(allowed)}"))
            continue
        earlier = accepted.get(key)
        if earlier is not None and earlier.label != label:
            problems.append((row, key, f"key {shown(key)} is labeled {shown(label)} here and {shown(earlier.label)} in row {earlier.row}"))
            continue
        accepted[key] = LabelRow(key, label, row)
    if problems:
        raise LabelErrors(field, problems)
    return list(accepted.values())


def read_label_file(path: Path) -> list[tuple[int, str | None, str | None, str]]:
    """Rows of a ``key,label`` or ``path,label`` CSV file as ``(row, key, path, label)``."""
    field = str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(field, f"cannot read the label file ({exc.strerror or exc})") from None
    if not path.is_file():
        raise InputError(field, "not a file (a directory?); give the CSV file of labels")
    if size == 0:
        raise InputError(field, "the label file is empty; expected a header key,label (or path,label) and rows")
    if size > MAX_LABEL_FILE_BYTES:
        raise InputError(field, f"the label file is {size >> 20} MB; at most {MAX_LABEL_FILE_BYTES >> 20} MB")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(field, f"not UTF-8 text (byte {exc.start}); save the labels as a UTF-8 CSV file") from None
    except OSError as exc:
        raise InputError(field, f"cannot read the label file ({exc.strerror or exc})") from None
    return parse_label_csv(text, field)


def parse_label_csv(text: str, field: str) -> list[tuple[int, str | None, str | None, str]]:
    """Parse CSV text with a header naming ``label`` and ``key`` or ``path`` (extra columns are ignored)."""
    if "\x00" in text:
        raise InputError(field, "not a CSV text file (it holds NUL bytes)")
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InputError(field, f"not a readable CSV file ({exc})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise InputError(field, "the label file is empty; expected a header key,label (or path,label) and rows")
    header = [cell.strip().lower() for cell in rows[0]]
    if "label" not in header or not ({"key", "path"} & set(header)):
        raise InputError(field, f"the header must name a label column and a key or path column; got {rows[0]}")
    position = {name: header.index(name) for name in ("key", "path", "label") if name in header}

    def cell(row: list[str], name: str) -> str | None:
        index = position.get(name)
        return row[index] if index is not None and index < len(row) else None

    return [(number, cell(row, "key"), cell(row, "path"), cell(row, "label") or "") for number, row in enumerate(rows[1:], start=1)]


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
    _fsync_directory(directory)
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


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def read_truth_file(manifest, path: Path):
    """(ids, dataset labels) of an ``image_pool``'s pool: the true labels of its unlabeled images
    from a CSV file (``key,label`` or ``path,label``; a known class name, anything else is unknown),
    the labeled folders' labels for the initial examples. For a simulated annotator on one's own
    folder; every unlabeled pool image needs a row."""
    import numpy as np

    from osal_ray.data.image_pool import read_initial_labels
    from osal_ray.data.pool import initial_ids, read_catalog

    field = "oracle.truth_file"
    names = list(manifest.class_names)
    unknown_code = len(names) + 1
    catalog = read_catalog(manifest)
    by_key = {key: i for i, (key, _) in catalog.items()}
    by_path = {p: i for i, (_, p) in catalog.items() if p}
    given = read_initial_labels(manifest)
    truth: dict[int, int] = {}
    if given is not None:
        truth.update({int(i): (int(c) if c >= 0 else unknown_code) for i, c in zip(initial_ids(manifest), given)})
    for row, key, file_path, label in read_label_file(path):
        label = label.strip()
        sample = by_key.get((key or "").strip()) if key else by_path.get((file_path or "").strip())
        if sample is None or sample in truth:
            continue  # not in the pool (unreadable, a test image), or a labeled example
        truth[sample] = names.index(label) if label in names else unknown_code
    missing = [catalog[i][1] or catalog[i][0] for i in catalog if i not in truth]
    if missing:
        raise InputError(field, f"{path} has no label for {len(missing)} pool image(s), e.g. {missing[:3]}")
    ids = np.fromiter(truth, dtype=np.int64)
    return ids, np.fromiter(truth.values(), dtype=np.int64)
