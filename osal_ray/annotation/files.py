"""The ``files`` annotator: queries go out as files people open, labels come back as CSV files.

After selection a round writes ``<output>/annotation/round_NNN/`` (NNN: the query round, 001
first) with ``queries.csv`` (rank, key, path, score, strategy, seed), ``contact_sheet.html``
(the queried images as thumbnails, inlined, so it opens offline), ``labels_template.csv``
(key,label with the label empty) and ``request.json`` (what ``osal_ray.label`` checks against),
and ``<output>/status.json`` says the run waits for labels. ``python -m osal_ray.label`` stages
label files into the round (``annotation.labels``); the next run imports them once every
queried key has a label.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import time
from pathlib import Path

import numpy as np

from osal_ray import storage
from osal_ray.annotation.labels import LabelSet
from osal_ray.annotation.staging import merged_labels, read_records, staged_submissions, write_record
from osal_ray.data.pool import PoolManifest, read_catalog
from osal_ray.errors import CorruptFile, InputError
from osal_ray.annotation.backends import AnnotatorBackend, AnnotatorSetup, register_annotator
from osal_ray.annotation.contract import SKIP, Annotator, Correction, QueryRequest

ANNOTATION_DIR = "annotation"
STATUS_FILE = "status.json"
LABELS_FILE = "labels.parquet"
REQUEST_FILE = "request.json"
CLOSED_FILE = "closed.json"
TEMPLATE_FILE = "labels_template.csv"
CORRECTIONS_DIR = "corrections"  # under annotation/: labels changed after their round closed


def round_dir(output_dir: Path, round_index: int) -> Path:
    return output_dir / ANNOTATION_DIR / f"round_{round_index:03d}"


def open_round(output_dir: Path) -> int | None:
    """The round waiting for labels (published, not yet imported), or None."""
    rounds = sorted(p for p in (output_dir / ANNOTATION_DIR).glob("round_[0-9][0-9][0-9]") if (p / REQUEST_FILE).is_file())
    open_ = [p for p in rounds if not (p / CLOSED_FILE).is_file()]
    return int(open_[-1].name.split("_")[1]) if open_ else None


def read_request(output_dir: Path, round_index: int) -> dict:
    """The round's ``request.json`` (what labels are checked against); CorruptFile naming it when unreadable."""
    return read_request_file(round_dir(output_dir, round_index) / REQUEST_FILE)


def read_request_file(path: Path) -> dict:
    """A ``request.json``: {queries: [{key, path, ...}], class_names, unknown_label, allowed_labels}."""
    fix = "it is written when the round is published: move the round's folder away and run the experiment command to publish it again"
    request = storage.read_json(path, dict, "round request", fix)
    queries = request.get("queries")
    if not (isinstance(queries, list) and all(isinstance(q, dict) and isinstance(q.get("key"), str) for q in queries)
            and all(isinstance(request.get(k), t) for k, t in
                    (("class_names", list), ("unknown_label", str), ("allowed_labels", list)))):
        raise CorruptFile(str(path), f"not a round request (queries with keys, class_names, unknown_label, allowed_labels); {fix}")
    return request


def queried_keys(output_dir: Path) -> set[str]:
    """The key of every image some published round queried."""
    rounds = sorted((output_dir / ANNOTATION_DIR).glob(f"round_[0-9][0-9][0-9]/{REQUEST_FILE}"))
    return {q["key"] for path in rounds for q in read_request_file(path)["queries"]}


def write_status(output_dir: Path, status: dict) -> None:
    """``status.json``: what the run is doing or waiting for (written atomically)."""
    _write_text(output_dir / STATUS_FILE, json.dumps({**status, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))


def round_progress(output_dir: Path, round_index: int) -> tuple[dict[str, str], list[str]]:
    """(staged labels by key, keys still missing) of a round."""
    request = read_request(output_dir, round_index)
    labels = merged_labels(round_dir(output_dir, round_index))
    keys = list(dict.fromkeys(q["key"] for q in request["queries"]))
    return {k: labels[k] for k in keys if k in labels}, [k for k in keys if k not in labels]


def waiting_status(output_dir: Path, round_index: int) -> dict:
    """The ``status.json`` content of a round that waits for labels."""
    labeled, missing = round_progress(output_dir, round_index)
    folder = round_dir(output_dir, round_index)
    return {
        "state": "waiting_for_labels", "round": round_index, "queried": len(labeled) + len(missing),
        "labeled": len(labeled), "missing": len(missing), "annotation_dir": str(folder),
        "contact_sheet": str(folder / "contact_sheet.html"), "labels_template": str(folder / "labels_template.csv"),
        "allowed_labels": read_request(output_dir, round_index)["allowed_labels"],
    }


class FilesAnnotator(Annotator):
    """People label from the annotation folder; answers come from the staged label files."""

    kind = "files"
    shows_predictions = True

    def __init__(self, output_dir: Path, manifests: list[PoolManifest], labels: LabelSet, data_root: str | None) -> None:
        self.output_dir = output_dir
        self.labels = labels
        self.data_root = Path(data_root) if data_root else None
        self.manifests = manifests
        self.catalog: dict[int, tuple[str, str | None]] = {}
        for manifest in manifests:
            self.catalog.update(read_catalog(manifest))

    def keys_of(self, ids: np.ndarray) -> list[str]:
        return [self.catalog[int(i)][0] for i in ids]

    def answers(self, round_index: int, ids: np.ndarray) -> np.ndarray | None:
        folder = round_dir(self.output_dir, round_index)
        if not (folder / REQUEST_FILE).is_file():
            return None
        staged = merged_labels(folder)
        keys = self.keys_of(ids)
        if any(k not in staged for k in keys):
            return None
        return np.asarray([self.labels.answer(staged[k]) for k in keys], dtype=np.int64)

    def corrections(self) -> list[Correction]:
        """Labels changed after their round closed (``stage_correction``), oldest first."""
        found = read_corrections(self.output_dir)
        if not found:
            return []  # the usual case: no key-to-id index built over the whole pool every round
        ids = {key: sample for sample, (key, _) in self.catalog.items()}
        return [Correction(c["file"], int(c["round"]), int(ids[c["key"]]), self.labels.answer(c["label"]), c["label"], c["previous"])
                for c in found if c["key"] in ids]

    def publish(self, requests: list[QueryRequest]) -> None:
        """Write the round's folder once (a rerun keeps it, and every label staged into it)."""
        rounds = sorted({r.round for r in requests})
        if len(rounds) != 1:
            trajectories = ", ".join(f"{r.strategy} seed {r.seed}: round {r.round}" for r in requests)
            raise InputError("strategies", f"a human-labeled run keeps every trajectory at the same round, but {trajectories}; "
                                           "run strategies or seeds added later in another --output-dir")
        round_index = rounds[0]
        folder = round_dir(self.output_dir, round_index)
        queries = []
        for request in requests:
            guesses = request.predictions or (None,) * len(request.ids)
            sureness = request.prediction_scores or (None,) * len(request.ids)
            for rank, (sample, score, guess, sure) in enumerate(zip(request.ids, request.scores, guesses, sureness), start=1):
                key, path = self.catalog[int(sample)]
                queries.append({"rank": rank, "key": key, "path": path, "id": int(sample), "score": _finite(score),
                                "strategy": request.strategy, "seed": request.seed,
                                "prediction": None if guess is None else self.labels.name_of(int(guess)),
                                "prediction_score": None if sure is None else _finite(sure)})
        if (folder / REQUEST_FILE).is_file():
            published = {(q["key"], q["strategy"], q["seed"]) for q in read_request(self.output_dir, round_index)["queries"]}
            if published != {(q["key"], q["strategy"], q["seed"]) for q in queries}:
                raise RuntimeError(f"{folder} was published with other queries than this run selects; refusing to mix them")
            return
        folder.mkdir(parents=True, exist_ok=True)
        self._write_queries_csv(folder, queries)
        _write_text(folder / TEMPLATE_FILE, labels_template(queries))
        _write_text(folder / "contact_sheet.html", self._contact_sheet(round_index, queries))
        request = {"round": round_index, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "class_names": list(self.labels.class_names), "unknown_label": self.labels.unknown_label,
                   "allowed_labels": self.labels.allowed(), "queries": queries}
        _write_text(folder / REQUEST_FILE, json.dumps(request, indent=1))  # last: it marks the round published

    def close(self, round_index: int) -> None:
        """Mark a round imported: its labels are in every trajectory's state."""
        folder = round_dir(self.output_dir, round_index)
        if (folder / REQUEST_FILE).is_file() and not (folder / CLOSED_FILE).is_file():
            _write_text(folder / CLOSED_FILE, json.dumps({"imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))

    def _write_queries_csv(self, folder: Path, queries: list[dict]) -> None:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["rank", "key", "path", "score", "strategy", "seed"])
        for q in queries:
            writer.writerow([q["rank"], q["key"], q["path"] or "", "" if q["score"] is None else f"{q['score']:.6g}", q["strategy"], q["seed"]])
        _write_text(folder / "queries.csv", out.getvalue())

    def image_bytes(self, sample: int) -> bytes:
        """The PNG thumbnail shown for a sample: its file while it still is the keyed content, else the pool's copy."""
        from osal_ray.annotation.images import display_png

        key, path = self.catalog[int(sample)]
        return display_png(self.manifests, int(sample), key, path, self.data_root)

    def how_to_label(self, allowed: str) -> str:
        """The contact sheet's instruction (HTML; ``allowed``: the labels, already marked up)."""
        return (f"Fill the <code>label</code> column of <code>{TEMPLATE_FILE}</code> (one row per image, with its key, "
                f"path and the model's guess) with one of {allowed} (<code>{SKIP}</code>: the image is unusable), then run "
                "<code>python -m osal_ray.label OUTPUT_DIR FILE.csv</code>.")

    def _contact_sheet(self, round_index: int, queries: list[dict]) -> str:
        cards = []
        for sample in dict.fromkeys(q["id"] for q in queries):
            mine = [q for q in queries if q["id"] == sample]
            first = mine[0]
            picture = base64.b64encode(self.image_bytes(sample)).decode()
            asked = "; ".join(f"#{q['rank']} {html.escape(q['strategy'])} seed {q['seed']}" for q in mine)
            guess = "" if first.get("prediction") is None else \
                f'<br>model\'s guess: <b>{html.escape(first["prediction"])}</b> ({first.get("prediction_score") or 0:.2f})'
            cards.append(
                f'<figure><img src="data:image/png;base64,{picture}" alt="{html.escape(first["key"])}">'
                f'<figcaption><b>{html.escape(asked)}</b><br><code>{html.escape(first["key"][:16])}</code><br>'
                f'{html.escape(first["path"] or "")}{guess}</figcaption></figure>'
            )
        allowed = ", ".join(f"<code>{html.escape(v)}</code>" for v in self.labels.allowed())
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>osal_ray round {round_index}: {len(cards)} images to label</title><style>"
            "body{font-family:sans-serif;margin:1.5em} .grid{display:flex;flex-wrap:wrap;gap:12px}"
            "figure{margin:0;width:180px;border:1px solid #ccc;padding:6px;border-radius:4px}"
            "img{width:168px;height:168px;object-fit:contain;image-rendering:pixelated;background:#eee}"
            "figcaption{font-size:11px;word-break:break-all}</style></head><body>"
            f"<h1>Round {round_index}: {len(cards)} images to label</h1>"
            f"<p>{self.how_to_label(allowed)}</p>"
            f"<div class='grid'>{''.join(cards)}</div></body></html>"
        )


CORRECTION_FIX = ("corrections are the record of labels people changed after a round closed and are never changed "
                  "automatically: restore this file from a backup, or move it away to drop that correction")


@register_annotator
class FilesBackend(AnnotatorBackend):
    """``oracle.kind: files``: people label from the round folder and stage CSV files (``osal_ray.label``)."""

    name = "files"

    def create(self, setup: AnnotatorSetup) -> list[Annotator]:
        annotator = FilesAnnotator(setup.output_dir, setup.manifests, label_set(setup), setup.config.data.root)
        return [annotator] * len(setup.manifests)  # every seed: the same people, the same folder

    def where(self, output_dir: Path, config, status: dict) -> str:
        return (f"open {status['contact_sheet']}, fill {status['labels_template']} and run: "
                f"python -m osal_ray.label {output_dir} FILE.csv")


def label_set(setup: AnnotatorSetup) -> LabelSet:
    """The labels people may give in a run: its known classes, the unknown label, ``skip``."""
    return LabelSet(tuple(setup.manifests[0].known_class_names()), setup.config.data.unknown_label)


def read_corrections(output_dir: Path) -> list[dict]:
    """Every correction made after its round closed, oldest first: ``round, key, label, previous, source, origin``."""
    return read_records(output_dir / ANNOTATION_DIR / CORRECTIONS_DIR, "label correction", CORRECTION_FIX, _correction_problem)


def _correction_problem(record: dict) -> str | None:
    """What makes ``record`` no correction, or None."""
    if not isinstance(record.get("round"), int) or isinstance(record.get("round"), bool):
        return "'round' is missing or not an integer"
    for name in ("key", "label", "source", "corrected_at"):
        if not isinstance(record.get(name), str):
            return f"{name!r} is missing or not a string"
    return None


def effective_labels(output_dir: Path, round_index: int) -> dict[str, str]:
    """key -> label of a round as the networks learn it: the staged labels, then later corrections."""
    labels = merged_labels(round_dir(output_dir, round_index))
    for correction in read_corrections(output_dir):
        if correction["round"] == round_index:
            labels[correction["key"]] = correction["label"]
    return labels


def stage_correction(output_dir: Path, round_index: int, key: str, label: str, source: str, origin: str) -> dict | None:
    """Record that ``key``'s label in closed round ``round_index`` is now ``label`` (both labels kept);
    every trajectory that learned the old label applies it from its next round on. Returns the record,
    or None when the label is what the round has already. InputError for a key the round did not query
    or a label outside the round's allowed set."""
    from osal_ray.lock import OutputLock

    with OutputLock.acquire(output_dir, purpose=f"correcting round {round_index}"):
        request = read_request(output_dir, round_index)
        if key not in {q["key"] for q in request["queries"]}:
            raise InputError(f"round {round_index}", f"key {key} was not queried in round {round_index}")
        if label not in request["allowed_labels"]:
            raise InputError(f"round {round_index}", f"label {label!r} is not one of {', '.join(request['allowed_labels'])}")
        previous = effective_labels(output_dir, round_index).get(key)
        if previous == label:
            return None
        record = {"round": round_index, "key": key, "label": label, "previous": previous, "source": source,
                  "origin": origin, "corrected_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_record(output_dir / ANNOTATION_DIR / CORRECTIONS_DIR, record, f"round{round_index:03d}", "the correction",
                     "it was not recorded")
        write_audit(output_dir)
        return record


def labels_template(queries: list[dict]) -> str:
    """The CSV a person fills in: one row per queried image in rank order, with its path and the model's
    guess to go by (only ``key`` and ``label`` are read back; ``path`` alone would do as well)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "path", "prediction", "label"])
    first: dict[str, dict] = {}
    for query in queries:
        first.setdefault(query["key"], query)
    for query in first.values():
        writer.writerow([query["key"], query["path"] or "", query.get("prediction") or "", ""])
    return out.getvalue()


AUDIT_COLUMNS = ["key", "path", "label", "round", "source_file", "source_row", "staged_file", "staged_at", "origin",
                 "prediction", "agreed_with_prediction", "corrects"]


def audit_rows(output_dir: Path) -> list[dict]:
    """Every label given, staged and corrected, of every round: the audit trail ``labels.parquet`` is
    written from. ``agreed_with_prediction``: whether the label is the model's guess shown with the
    image (None where none was shown); ``corrects``: for a correction made after its round closed,
    the label it replaced."""
    rows = []
    queried: dict[int, dict[str, dict]] = {}
    for folder in sorted((output_dir / ANNOTATION_DIR).glob("round_[0-9][0-9][0-9]")):
        if not (folder / REQUEST_FILE).is_file():
            continue
        round_index = int(folder.name.split("_")[1])
        queries = queried[round_index] = {}
        for query in read_request(output_dir, round_index)["queries"]:
            queries.setdefault(query["key"], query)
        for submission in staged_submissions(folder):
            for item in submission["labels"]:
                rows.append(_audit_row(queries.get(item["key"], {}), item["key"], item["label"], round_index,
                                       submission["source"], item["row"], submission["file"], submission["staged_at"],
                                       item.get("origin")))
    for correction in read_corrections(output_dir):
        query = queried.get(correction["round"], {}).get(correction["key"], {})
        rows.append({**_audit_row(query, correction["key"], correction["label"], correction["round"], correction["source"],
                                  0, correction["file"], correction["corrected_at"], correction.get("origin")),
                     "corrects": correction["previous"]})
    return rows


def _audit_row(query: dict, key: str, label: str, round_index: int, source: str, row: int, file: str, at: str,
               origin: str | None) -> dict:
    prediction = query.get("prediction")
    return {"key": key, "path": query.get("path"), "label": label, "round": round_index, "source_file": source,
            "source_row": row, "staged_file": file, "staged_at": at, "origin": origin, "prediction": prediction,
            "agreed_with_prediction": None if prediction is None else label == prediction, "corrects": None}


def write_audit(output_dir: Path) -> None:
    """Rewrite ``labels.parquet`` from the staged files and corrections (they, not it, are the record)."""
    import pandas as pd

    frame = pd.DataFrame(audit_rows(output_dir), columns=AUDIT_COLUMNS)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    _write_bytes(output_dir / LABELS_FILE, buffer.getvalue())


def _finite(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _write_bytes(path: Path, data: bytes) -> None:
    from osal_ray import storage

    storage.write_bytes(path, data)
