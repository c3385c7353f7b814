"""Human labels: the allowed values, reading and checking a label file (staging: ``annotation.staging``).

A label is a known class name, the unknown label (``data.unknown_label``, "unknown" by default:
the image is out of scope), or ``skip`` (the image is unusable: it leaves the pool and costs no
budget).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from osal_ray.annotation.contract import SKIP, SKIPPED, UNKNOWN
from osal_ray.errors import InputError, shown

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
