"""One run behind the service: its lock, its rounds in the background, labels in, queries and images out.

The output directory stays the one truth: the controller holds its lock for as long as the service
lives (a command-line run or ``osal_ray.label`` on the same directory is refused, naming the
service), stages labels exactly as ``osal_ray.label`` does (durable when the call returns), and
runs rounds with the same ``prepare_experiment`` / ``run_experiment`` a command-line run uses. In
memory it keeps only what a restart can do without: the phase the background worker is in, its
progress lines, and the last error. A restart (kill -9 included) finds the staged labels and the
saved round states on disk and continues from them; a finished round is never run again.

States (``status()["state"]``): ``starting``, then while a round runs ``preparing`` (reading the
pool, CLIP embeddings), ``training``, ``scoring``, ``selecting``, ``publishing``; then
``waiting_for_labels``, ``finished``, or ``failed`` (with ``error``).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from osal_ray.config import ExperimentConfig
from osal_ray.errors import InputError
from osal_ray.lock import OutputLock

logger = logging.getLogger("osal_ray.service")

BUSY_STATES = ("starting", "preparing", "training", "scoring", "selecting", "publishing")
MAX_THUMBNAIL = 1024
PROGRESS_LINES = 50


class Conflict(Exception):
    """The request cannot be served in the run's current state (HTTP 409); the message says why."""


class NotFound(Exception):
    """No such image or endpoint for this run (HTTP 404)."""


@dataclass(frozen=True)
class Image:
    """An image's bytes and media type."""

    data: bytes
    media_type: str


class RunController:
    """The service's run. ``start`` begins the background worker; every method is thread-safe."""

    def __init__(self, config: ExperimentConfig, log: Callable[[str], None] | None = None) -> None:
        from osal_ray.annotation import annotator_backend
        from osal_ray.experiment.preflight import check_config

        self._plans = check_config(config)  # once per run: the config is frozen, every round uses these plans
        self.config = config
        self.output_dir = config.resolved_output_dir().resolve()
        self.backend = annotator_backend(config)
        self.oracle = self.backend.name
        self._print = log or (lambda line: logger.info(line))
        self._lock = OutputLock.acquire(self.output_dir, purpose=f"osal_ray.serve for {self.output_dir}")
        self._mutex = threading.RLock()  # the in-memory state below
        self._staging = threading.Lock()  # one label submission at a time (taken before _mutex, never inside it)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._state = "starting"
        self._detail = ""
        self._since = time.time()
        self._error: str | None = None
        self._lines: list[str] = []
        self._phases: list[dict] = []
        self._rescan_requested = False
        self._last_rescan: dict | None = None
        self._images = _ImageIndex(self.output_dir, config.data.root)
        self._worker = threading.Thread(target=self._work, name="osal_ray-rounds", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "RunController":
        self._worker.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking work and give the output directory back (a round in progress is abandoned:
        its state on disk is the last finished step, and the next start continues from there)."""
        self._stop.set()
        self._wake.set()
        if self._worker.is_alive():
            self._worker.join(timeout)
        self._lock.release()

    # -- what the API reads ----------------------------------------------------------------------

    def status(self) -> dict:
        """The run, its state, the open round's label counts, per-phase progress and trajectories."""
        from osal_ray.annotation.files import open_round, round_progress

        with self._mutex:
            state, detail, since, error = self._state, self._detail, self._since, self._error
            phases, lines, rescan = list(self._phases), list(self._lines[-10:]), self._last_rescan
        status = {
            "run": self.config.name, "output_dir": str(self.output_dir), "oracle": self.oracle, "state": state,
            "detail": detail, "state_since": _iso(since), "seconds_in_state": round(time.time() - since, 1),
            "error": error, "rounds": self.config.al.rounds, "round": None, "queried": 0, "labeled": 0, "missing": 0,
            "phases": phases, "recent_log": lines, "trajectories": self._trajectories(),
        }
        if rescan is not None:
            status["last_rescan"] = rescan
        round_index = open_round(self.output_dir)
        if round_index is not None:
            labeled, missing = round_progress(self.output_dir, round_index)
            status.update({"round": round_index, "queried": len(labeled) + len(missing), "labeled": len(labeled),
                           "missing": len(missing), "allowed_labels": self._request(round_index)["allowed_labels"]})
        else:
            done = [t["completed_round"] for t in status["trajectories"]]
            status["round"] = min(done) if done else None
        return status

    def queries(self, base_url: str = "") -> dict:
        """The open round's batch in rank order (``rank, key, path, score, strategy, seed, label, image_url``)."""
        from osal_ray.annotation.files import open_round, round_dir
        from osal_ray.annotation.staging import merged_labels

        with self._mutex:
            state = self._state
        round_index = open_round(self.output_dir)
        if round_index is None:
            return {"round": None, "state": state, "queries": []}
        request = self._request(round_index)
        staged = merged_labels(round_dir(self.output_dir, round_index))
        rows = [{"rank": q["rank"], "key": q["key"], "path": q["path"], "score": q["score"], "strategy": q["strategy"],
                 "seed": q["seed"], "label": staged.get(q["key"]), "image_url": f"{base_url.rstrip('/')}/images/{q['key']}"}
                for q in request["queries"]]
        return {"round": round_index, "state": state, "allowed_labels": request["allowed_labels"], "queries": rows}

    def was_queried(self, key: str) -> bool:
        """Whether some published round queried ``key`` (what a signed image URL may show)."""
        from osal_ray.annotation.files import queried_keys

        return key in queried_keys(self.output_dir)

    def image(self, key: str, size: int | None = None) -> Image:
        """The original bytes of a pool image (its file under the data root), or a PNG thumbnail
        whose longer side is ``size``. NotFound for a key that is not in the run's pool."""
        return self._images.image(key, size)

    # -- what the API changes --------------------------------------------------------------------

    def stage(self, items: list[tuple[str, str]], source: str, round_index: int | None = None) -> dict:
        """Stage ``(key, label)`` pairs for the open round (all or nothing, ``LabelErrors`` naming
        every bad row); start the next round in the background once every query has a label."""
        from osal_ray.annotation.staging import stage_labels

        rows = [(number, key, None, label) for number, (key, label) in enumerate(items, start=1)]
        with self._staging:
            with self._mutex:
                self._require_waiting()
            count, open_index, status = stage_labels(self.output_dir, lambda: rows, "labels", source, round_index=round_index)
            with self._mutex:
                started = self._maybe_continue(status)
        if count and not started and self.backend.poll_seconds(self.config) is not None:
            self._wake.set()  # the worker's next sync shows these labels in the labeling tool
        return {"staged": count, "round": open_index, "labeled": status["labeled"], "missing": status["missing"],
                "next_round_started": started}

    def stage_webhook(self, payload: dict) -> dict:
        """A labeling tool's event (Label Studio's webhook): the backend reads what it names back from the
        tool and stages it (open round) or records it as a correction (closed round)."""
        from osal_ray.annotation.files import open_round, waiting_status

        if not self.backend.takes_events:
            raise NotFound(f"this run's annotator ({self.oracle}) takes no events (oracle.kind is not label_studio)")
        with self._staging:
            with self._mutex:
                waiting = self._state == "waiting_for_labels"
            if not waiting:
                self._wake.set()  # the worker's next poll after this round's work takes it
                return {"staged": 0, "ignored": f"the run is {self._state}; the next poll takes the annotation"}
            count = self.backend.take_event(self.output_dir, self.config, payload, self._log) or 0
            round_index = open_round(self.output_dir)
            status = waiting_status(self.output_dir, round_index) if round_index is not None else {"missing": 0, "round": None}
            with self._mutex:
                started = self._maybe_continue(status) if round_index is not None else False
        return {"staged": count, "round": round_index, "missing": status["missing"], "next_round_started": started}

    def rescan(self) -> dict:
        """Read the pool folder again in the background (new images join the pool for the next round)."""
        if self.config.data.dataset != "image_pool":
            raise Conflict(f"data.dataset is {self.config.data.dataset}: only an image_pool has a folder to rescan")
        with self._mutex:
            if self._state in BUSY_STATES:
                raise Conflict(f"the run is {self._state}; every round reads the pool folder again, so new images "
                               "join the next round anyway")
            if self._state == "failed":
                raise Conflict(f"the run failed ({self._error}); restart the service")
            self._rescan_requested = True
            self._set_state("preparing", "rescanning the pool folder")
        self._wake.set()
        return {"state": "preparing", "detail": "rescanning the pool folder; GET /status shows last_rescan when done"}

    # -- the background worker -------------------------------------------------------------------

    def _work(self) -> None:
        """Continue the run from the disk, then wait: for a complete batch, a rescan, or (Label Studio)
        the next poll, which stages what was annotated since."""
        work = True
        while not self._stop.is_set():
            if work:
                self._do_work()
            self._wake.wait(timeout=self._idle_poll_seconds())
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._mutex:
                waiting = self._state == "waiting_for_labels"
            if waiting and self.backend.poll_seconds(self.config) is not None:
                self._sync()
            with self._mutex:
                work = self._rescan_requested or self._state == "preparing" or (
                    self._state == "waiting_for_labels" and self._labels_complete())

    def _do_work(self) -> None:
        with self._mutex:
            rescan, self._rescan_requested = self._rescan_requested, False
        try:
            if rescan:
                self._rescan_pool()
            else:
                self._advance()
        except Exception as exc:  # noqa: BLE001  (the service stays up and says what failed)
            message = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            self._log(f"failed: {message}")
            if not isinstance(exc, InputError):
                self._log(traceback.format_exc())
            with self._mutex:
                self._error = message
                self._set_state("failed", message)
            return
        with self._mutex:
            again = self._rescan_requested or (self._state == "waiting_for_labels" and self._labels_complete())
        if again:
            self._wake.set()

    def _advance(self) -> None:
        """Run rounds until the run waits for labels or is finished (one command-line invocation's work)."""
        from osal_ray.experiment.runner import prepare_experiment, run_experiment

        with self._mutex:
            self._error = None
            self._phases = []
            self._set_state("preparing", "checking the run")
        prepared = prepare_experiment(self.config, log=self._log, plans=self._plans)
        prepared.served = True
        if prepared.waiting is None:
            run_experiment(prepared, log=self._log, on_phase=self._on_phase)
        else:
            prepared.lock.release()
        self._images.refresh()
        with self._mutex:
            self._set_state(self._settled_state(), "")

    def _rescan_pool(self) -> None:
        from osal_ray.data import load_dataset, materialize_image_pool

        started = time.time()
        source = load_dataset(self.config.data)
        _, report = materialize_image_pool(source, self.output_dir / "data", self.output_dir, self._log)
        self._images.refresh()
        with self._mutex:
            self._last_rescan = {"finished_at": _iso(time.time()), "seconds": round(time.time() - started, 1),
                                 "decoded": report.decoded, "unlabeled": report.num_unlabeled,
                                 "skipped": len(report.skipped), "summary": report.summary()}
            self._set_state(self._settled_state(), "")

    def _sync(self) -> None:
        try:
            with self._staging:
                self.backend.sync(self.output_dir, self.config, self._log)
        except Exception as exc:  # noqa: BLE001  (the tool is down: labels still come by the API and the next poll)
            self._log(f"{self.oracle} poll failed: {exc}")

    def _idle_poll_seconds(self) -> float | None:
        return self.backend.poll_seconds(self.config)

    # -- helpers ---------------------------------------------------------------------------------

    def _settled_state(self) -> str:
        from osal_ray.annotation.files import open_round

        return "waiting_for_labels" if open_round(self.output_dir) is not None else "finished"

    def _labels_complete(self) -> bool:
        from osal_ray.annotation.files import open_round, round_progress

        round_index = open_round(self.output_dir)
        return round_index is not None and not round_progress(self.output_dir, round_index)[1]

    def _maybe_continue(self, status: dict) -> bool:
        """Start the next round when the open one has every label (called under the mutex)."""
        if status["missing"] or self._state != "waiting_for_labels":
            return False
        self._set_state("preparing", f"round {status['round']} complete: importing its labels")
        self._phases = []
        self._wake.set()
        return True

    def _require_waiting(self) -> None:
        if self._state == "waiting_for_labels":
            return
        if self._state == "finished":
            raise Conflict("the run is finished: every round has its labels")
        if self._state == "failed":
            raise Conflict(f"the run failed ({self._error}); labels cannot be staged until it is restarted")
        raise Conflict(f"the run is {self._state} ({self._detail or 'working'}); labels are taken while it is "
                       "waiting_for_labels (GET /status)")

    def _request(self, round_index: int) -> dict:
        from osal_ray.annotation.files import read_request

        return read_request(self.output_dir, round_index)

    def _trajectories(self) -> list[dict]:
        from osal_ray import storage
        from osal_ray.experiment.preflight import run_location
        from osal_ray.experiment.state import STATE_FILE

        rows = []
        root = self.config.resolved_storage()  # a path or a URI (s3://...)
        for name in self.config.strategies:
            for seed in self.config.seeds:
                try:
                    saved = storage.read_json(storage.join(run_location(root, name, seed), STATE_FILE))
                except (OSError, ValueError):  # none yet, or unreadable (CorruptFile)
                    rows.append({"strategy": name, "seed": seed, "completed_round": None, "pending_round": None})
                    continue
                pending = saved.get("pending")
                rows.append({"strategy": name, "seed": seed, "completed_round": saved.get("completed_round"),
                             "pending_round": pending.get("round") if pending else None})
        return rows

    def _on_phase(self, phase: str, detail: str) -> None:
        with self._mutex:
            if phase != self._state and self._phases:
                self._phases[-1]["seconds"] = round(time.time() - self._since, 2)
            if phase != self._state or not self._phases:
                self._phases.append({"phase": phase, "detail": detail, "started_at": _iso(time.time()), "seconds": None})
                self._phases = self._phases[-PROGRESS_LINES:]
                self._set_state(phase, detail)
            else:
                self._detail = detail
                self._phases[-1]["detail"] = detail

    def _set_state(self, state: str, detail: str) -> None:
        if state not in BUSY_STATES and self._phases and self._phases[-1]["seconds"] is None:
            self._phases[-1]["seconds"] = round(time.time() - self._since, 2)
        if state != self._state:
            self._since = time.time()
        self._state, self._detail = state, detail

    def _log(self, line: str) -> None:
        with self._mutex:
            self._lines.extend(line.splitlines() or [""])
            self._lines = self._lines[-PROGRESS_LINES:]
        self._print(line)


class _ImageIndex:
    """Key -> (pool id, relative path, pool) for the run's pool images; files read only under the data root."""

    def __init__(self, output_dir: Path, data_root: str | None) -> None:
        self.output_dir = output_dir
        self.data_root = Path(data_root).resolve() if data_root else None
        self._by_key: dict[str, tuple[int, str | None, object]] | None = None
        self._mutex = threading.Lock()

    def refresh(self) -> None:
        with self._mutex:
            self._by_key = None

    def image(self, key: str, size: int | None) -> Image:
        """The content ``key`` names: its file while it still hashes to the key, else the pool's copy."""
        from osal_ray.annotation.images import resized_png, sample_image

        found = self._lookup(key)
        if found is None:
            raise NotFound(f"no image with key {key} in this run's pool")
        sample, path, manifest = found
        shown = sample_image([manifest], sample, key, path, self.data_root)
        if size is None:
            return Image(shown.data, shown.media_type)
        return Image(resized_png(shown.data, size), "image/png")

    def _lookup(self, key: str) -> tuple[int, str | None, object] | None:
        with self._mutex:
            if self._by_key is None:
                self._by_key = self._load()
            return self._by_key.get(key)

    def _load(self) -> dict[str, tuple[int, str | None, object]]:
        from osal_ray.data.pool import MANIFEST, read_catalog, read_manifest

        index: dict[str, tuple[int, str | None, object]] = {}
        for manifest_file in sorted((self.output_dir / "data").glob(f"*/{MANIFEST}")):
            manifest = read_manifest(manifest_file.parent)
            for sample, (key, path) in read_catalog(manifest).items():
                index.setdefault(key, (int(sample), path, manifest))
        return index


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))
