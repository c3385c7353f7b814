"""The ``label_studio`` annotator: each round's queries become Label Studio tasks, annotations come back as staged labels.

It is the ``files`` annotator (the round folder, ``request.json``, the staged labels stay the one
record) plus a Label Studio project: the project's labeling config offers the known classes, the
unknown label and ``skip``; ``publish`` imports the round's queries as tasks (one per image, with
its key and round), and ``sync_annotations`` turns the project's annotations of the open round into
staged labels through the same checks as a label file (``osal_ray.label.stage_labels``). The
service also stages the annotations Label Studio posts to its webhook, through the same path.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from pathlib import Path
from typing import Callable

from osal_ray.annotation.files import CLOSED_FILE, REQUEST_FILE, FilesAnnotator, open_round, read_request, round_dir, stage_correction
from osal_ray.annotation.backends import AnnotatorBackend, AnnotatorSetup, register_annotator
from osal_ray.annotation.contract import SKIP, Annotator, QueryRequest
from osal_ray.annotation.labels import LabelErrors, LabelSet
from osal_ray.annotation.staging import merged_labels, staged_submissions
from osal_ray.annotation.label_studio_api import annotations_of, task_ids_of
from osal_ray.config import ExperimentConfig, LabelStudioConfig
from osal_ray.data.pool import PoolManifest
from osal_ray.errors import InputError, require, shown

PROJECT_FILE = "label_studio.json"  # under annotation/: the project this run uses
WEBHOOK_PATH = "/webhooks/label-studio"


def studio_token(settings: LabelStudioConfig) -> str:
    """The API token from ``label_studio.token_env`` (InputError naming the variable when unset)."""
    token = os.environ.get(settings.token_env, "").strip()
    if not token:
        raise InputError("label_studio.token_env", f"the environment variable {settings.token_env} is not set: "
                                                   "export the Label Studio API token there")
    return token


def studio_client(settings: LabelStudioConfig):
    """A ``LabelStudioProject`` client for ``settings`` (the SDK is an extra: osal_ray[label-studio])."""
    from osal_ray.annotation.label_studio_api import LabelStudioProject
    from osal_ray.extras import require_extra

    require_extra("label_studio_sdk", "oracle.kind", "oracle.kind: label_studio")
    return LabelStudioProject(settings.url, studio_token(settings))


def project_title(config: ExperimentConfig) -> str:
    """The project's title: ``label_studio.project``, else ``osal_ray <name>`` (Label Studio allows 3-50 characters)."""
    return (config.label_studio.project or f"osal_ray {config.name}")[:50]


class LabelStudioAnnotator(FilesAnnotator):
    """People label in Label Studio; answers come from the staged labels, as with files."""

    kind = "label_studio"

    def __init__(self, output_dir: Path, manifests: list[PoolManifest], labels: LabelSet, data_root: str | None,
                 config: ExperimentConfig, log: Callable[[str], None] = print) -> None:
        super().__init__(output_dir, manifests, labels, data_root)
        self.config = config
        self.settings = config.label_studio
        self.log = log

    def publish(self, requests: list[QueryRequest]) -> None:
        """Write the round's folder (``files``), then import its queries as Label Studio tasks."""
        super().publish(requests)
        push_round(self.output_dir, self.config, requests[0].round, self.image_url, self.log)

    def close(self, round_index: int) -> None:
        """Before the round is marked imported, show on its tasks the labels that came from elsewhere."""
        folder = round_dir(self.output_dir, round_index)
        if (folder / REQUEST_FILE).is_file() and not (folder / CLOSED_FILE).is_file():
            client, project_id, _ = _round_project(self.output_dir, self.config, round_index)
            show_staged_labels(self.output_dir, client, round_index, client.tasks(project_id), self.log)
        super().close(round_index)

    def how_to_label(self, allowed: str) -> str:
        return (f"These images are tasks of the Label Studio project {html.escape(project_title(self.config))} at "
                f"{html.escape(self.settings.url or '')}: label them there with one of {allowed}. This page only shows them.")

    def image_url(self, sample: int, key: str) -> str:
        """Where Label Studio shows a queried image: the service's signed URL, else the image inlined."""
        if self.settings.service_url:
            from osal_ray.annotation.secret import signed_image_url

            return signed_image_url(self.settings.service_url, self.output_dir, key)
        return "data:image/png;base64," + base64.b64encode(self.image_bytes(sample)).decode()


def annotator_instruction(labels: list[str], unknown_label: str) -> str:
    """What the project shows annotators: what each answer means and what happens next (HTML)."""
    known = ", ".join(f"<b>{html.escape(label)}</b>" for label in labels if label not in (unknown_label, SKIP))
    return (
        f"<p>Choose what the image shows: one of {known}.</p>"
        f"<p><b>{html.escape(unknown_label)}</b>: the image shows something else, none of these classes (out of scope). "
        "It costs a label, and teaches the model what to avoid.</p>"
        f"<p><b>{SKIP}</b> (or Label Studio's <i>Skip</i> button): the image is unusable (broken, empty, impossible "
        "to tell). It leaves the pool and costs nothing.</p>"
        "<p>The pre-selected choice is the model's guess: accept it only if it is right. A choice is required. "
        "You may change an answer later, also after its round is over: the next round trains with the new one.</p>"
    )


def ensure_project(output_dir: Path, config: ExperimentConfig, labels: list[str], unknown_label: str) -> tuple[object, int]:
    """(client, project id): the run's project, created once with a Choices control of ``labels`` and
    the annotators' instruction (an existing one is brought up to date), and its webhook. Done once per
    process: later calls (every poll, every webhook, which Label Studio gives one second) reuse it."""
    title = project_title(config)
    identity = (str(output_dir), config.label_studio.url, config.label_studio.service_url, title, tuple(labels), unknown_label)
    if identity in _ENSURED:
        return _ENSURED[identity]
    client = studio_client(config.label_studio)
    record = output_dir / "annotation" / PROJECT_FILE
    project_id = client.ensure_project(title, labels, annotator_instruction(labels, unknown_label))
    saved = {"url": config.label_studio.url, "title": title, "project_id": project_id}
    if not record.is_file() or json.loads(record.read_text(encoding="utf-8")) != saved:
        from osal_ray import storage

        record.parent.mkdir(parents=True, exist_ok=True)
        storage.write_bytes(record, json.dumps(saved, indent=1).encode())
    if config.label_studio.service_url:
        from osal_ray.annotation.secret import webhook_headers

        client.ensure_webhook(project_id, config.label_studio.service_url.rstrip("/") + WEBHOOK_PATH, webhook_headers(output_dir))
    _ENSURED[identity] = (client, project_id)
    return client, project_id


_ENSURED: dict[tuple, tuple[object, int]] = {}  # the projects this process has set up (see ensure_project)


def _round_project(output_dir: Path, config: ExperimentConfig, round_index: int) -> tuple[object, int, dict]:
    request = read_request(output_dir, round_index)
    client, project_id = ensure_project(output_dir, config, request["allowed_labels"], request["unknown_label"])
    return client, project_id, request


def push_round(output_dir: Path, config: ExperimentConfig, round_index: int, image_url: Callable[[int, str], str],
               log: Callable[[str], None] = print) -> int:
    """Import a published round's queries as tasks with the model's guess as a pre-annotation
    (idempotent: a task already there is not added again)."""
    client, project_id, request = _round_project(output_dir, config, round_index)
    client.ensure_round_view(project_id, round_index)
    present = {key for key, r in client.task_ids(project_id) if r == round_index}
    tasks, guesses, seen = [], {}, set(present)
    for query in request["queries"]:
        if query["key"] in seen:
            continue  # one task per image, however many strategies or seeds asked for it; none twice
        seen.add(query["key"])
        tasks.append({"image": image_url(int(query["id"]), query["key"]), "key": query["key"], "round": round_index,
                      "rank": query["rank"], "path": query["path"] or "", "query_score": _rounded(query["score"]),
                      "strategy": query["strategy"], "seed": query["seed"]})
        if query.get("prediction") is not None:
            guesses[(query["key"], round_index)] = {
                "label": query["prediction"], "score": _rounded(query.get("prediction_score")) or 0.0,
                "model_version": f"{config.name} round {round_index} {query['strategy']} seed {query['seed']}"[:200]}
    if not tasks:
        return 0
    added = client.import_tasks(project_id, tasks, guesses)
    if added:
        log(f"round {round_index}: {added} task(s) imported into Label Studio project {project_id} ({config.label_studio.url})")
    return added


def sync_annotations(output_dir: Path, config: ExperimentConfig, log: Callable[[str], None] = print) -> int:
    """Bring Label Studio and the staged labels together; returns how many labels were staged or corrected.

    Every annotated task's newest annotation that osal_ray has not seen yet is staged for the open
    round, or recorded as a correction of a closed one (``stage_correction``); then the open round's
    labels that came from elsewhere (the HTTP API, a label file) are shown on their tasks.
    """
    round_index = open_round(output_dir)
    if round_index is None or not (round_dir(output_dir, round_index) / REQUEST_FILE).is_file():
        return 0
    client, project_id, _ = _round_project(output_dir, config, round_index)
    tasks = client.tasks(project_id)  # one listing for both steps
    count = take_annotations(output_dir, annotations_of(tasks), log)
    show_staged_labels(output_dir, client, round_index, tasks, log)
    return count


def sync_task(output_dir: Path, config: ExperimentConfig, task_id: int, log: Callable[[str], None] = print) -> int:
    """What a webhook announces: read that task back from Label Studio and take its newest annotation."""
    round_index = open_round(output_dir)
    if round_index is None:
        return 0
    client, project_id, _ = _round_project(output_dir, config, round_index)
    found = client.task_annotation(project_id, task_id)
    if found is None or found[2] is None:
        return 0
    return take_annotations(output_dir, [found[2]], log)


def take_annotations(output_dir: Path, annotations: list, log: Callable[[str], None] = print) -> int:
    """Stage (open round) or record as corrections (closed rounds) the annotations not seen before.

    A cancelled annotation (Label Studio's Skip button) is ``skip``. An annotation without a choice
    is not a label: it is named in the log, once, and the task still counts as missing."""
    open_index = open_round(output_dir)
    staged = 0
    seen = {r: _seen_origins(output_dir, r) for r in {a.round for a in annotations}}  # read once per round
    fresh = [a for a in annotations if a.origin not in seen[a.round]]
    for_open = [a for a in fresh if a.round == open_index]
    if for_open:
        staged += stage_annotations(output_dir, for_open, open_index, log)
    for annotation in fresh:
        if annotation.round == open_index or not (round_dir(output_dir, annotation.round) / CLOSED_FILE).is_file():
            continue
        label = SKIP if annotation.cancelled else annotation.label
        if label is None:
            _warn_no_choice(annotation, log)
            continue
        try:
            record = stage_correction(output_dir, annotation.round, annotation.key, label,
                                      f"label-studio annotation {annotation.annotation_id}", annotation.origin)
        except InputError as exc:
            log(f"Label Studio: annotation {annotation.annotation_id} of task {annotation.task_id} refused: {exc}")
            continue
        if record is not None:
            staged += 1
            log(f"Label Studio: round {annotation.round} is closed; {annotation.key[:16]} corrected from "
                f"{record['previous']!r} to {label!r} (task {annotation.task_id}): the next round trains with it")
    return staged


def stage_annotations(output_dir: Path, annotations: list, round_index: int, log: Callable[[str], None] = print) -> int:
    """Stage Label Studio annotations (``LabelStudioAnnotation``s) of ``round_index`` that change what is staged."""
    from osal_ray.annotation.staging import stage_labels

    staged = merged_labels(round_dir(output_dir, round_index))
    items, origins = [], {}
    for a in annotations:
        label = SKIP if a.cancelled else a.label
        if a.round != round_index:
            continue
        if label is None:
            _warn_no_choice(a, log)
            continue
        if staged.get(a.key) != label:
            items.append((a.annotation_id, a.key, None, label))
            origins[a.annotation_id] = a.origin
    if not items:
        return 0
    source = f"label-studio annotations {', '.join(str(item[0]) for item in items)[:200]}"
    try:
        count, _, _ = stage_labels(output_dir, lambda: items, "label_studio", source, round_index=round_index, origins=origins)
    except LabelErrors as errors:
        bad = {row for row, _, _ in errors.problems}
        log(f"Label Studio: {len(bad)} annotation(s) refused: {errors.message}")
        items = [item for item in items if item[0] not in bad]
        if not items:
            return 0
        count, _, _ = stage_labels(output_dir, lambda: items, "label_studio", source, round_index=round_index, origins=origins)
    return count


def show_staged_labels(output_dir: Path, client, round_index: int, listing: list[dict],
                       log: Callable[[str], None] = print) -> int:
    """Annotate the round's tasks (``listing``: the project's tasks with their annotations) whose staged
    label came from elsewhere (the HTTP API, a label file) and is not what Label Studio shows, so that
    the project shows every label; returns how many."""
    staged = merged_labels(round_dir(output_dir, round_index))
    shown = {a.key: (SKIP if a.cancelled else a.label) for a in annotations_of(listing, round_index)}
    tasks = {key: task_id for (key, r), task_id in task_ids_of(listing).items() if r == round_index}
    posted = 0
    for key, label in staged.items():
        if key in tasks and shown.get(key) != label:
            client.annotate(tasks[key], label)  # read back later, it stages nothing: its label is the staged one
            posted += 1
    if posted:
        log(f"round {round_index}: {posted} label(s) given outside Label Studio shown on their tasks")
    return posted


def _seen_origins(output_dir: Path, round_index: int) -> set[str]:
    """The annotation versions already taken for a round: staged or recorded as a correction."""
    from osal_ray.annotation.files import read_corrections

    seen: set[str] = set()
    folder = round_dir(output_dir, round_index)
    if (folder / REQUEST_FILE).is_file():
        seen.update(item["origin"] for sub in staged_submissions(folder) for item in sub["labels"] if item.get("origin"))
    seen.update(c["origin"] for c in read_corrections(output_dir) if c["round"] == round_index and c.get("origin"))
    return seen


_WARNED: set[str] = set()  # annotations without a choice already named in the log (by this process)


def _warn_no_choice(annotation, log: Callable[[str], None]) -> None:
    if annotation.origin in _WARNED:
        return
    _WARNED.add(annotation.origin)
    log(f"Label Studio: annotation {annotation.annotation_id} of task {annotation.task_id} (round {annotation.round}, "
        f"{annotation.key[:16]}) has no choice: it is not a label. Open the task and choose one (or skip)")


def _rounded(value: float | None) -> float | None:
    """A score as people read it (six significant digits), None for none."""
    return None if value is None else float(f"{value:.6g}")


def wait_for_annotations(output_dir: Path, config: ExperimentConfig, log: Callable[[str], None] = print) -> None:
    """Sync once, then (``label_studio.wait_seconds`` > 0) poll until the open round is fully labeled or time is up."""
    from osal_ray.annotation.files import round_progress

    deadline = time.monotonic() + config.label_studio.wait_seconds
    while True:
        sync_annotations(output_dir, config, log)
        round_index = open_round(output_dir)
        if round_index is None or not round_progress(output_dir, round_index)[1] or time.monotonic() >= deadline:
            return
        time.sleep(min(config.label_studio.poll_seconds, max(0.0, deadline - time.monotonic())))


@register_annotator
class LabelStudioBackend(AnnotatorBackend):
    """``oracle.kind: label_studio``: people label in a Label Studio project; annotations come back by
    webhook (the service) and by polling."""

    name = "label_studio"
    takes_events = True

    def validate(self, config: ExperimentConfig) -> None:
        """The ``label_studio`` keys (the server itself is asked in ``check``)."""
        import os
        from urllib.parse import urlparse

        studio = config.label_studio
        for key in ("url", "service_url"):
            value = getattr(studio, key)
            if value is None:
                continue
            parsed = urlparse(value)
            require(parsed.scheme in ("http", "https") and bool(parsed.netloc), f"label_studio.{key}",
                    f"{shown(value)} is not an http(s) URL")
        require(studio.url is not None, "label_studio.url", "give the Label Studio server's URL, e.g. http://127.0.0.1:8080")
        require(bool(studio.token_env.strip()), "label_studio.token_env", "name the environment variable that holds the API token")
        require(bool(os.environ.get(studio.token_env, "").strip()), "label_studio.token_env",
                f"the environment variable {studio.token_env} is not set: export the Label Studio API token there")
        if studio.project is not None:
            require(3 <= len(studio.project.strip()) <= 50, "label_studio.project",
                    f"{shown(studio.project)}: Label Studio project titles have 3 to 50 characters")
        for origin in studio.cors_origins or []:
            require(isinstance(origin, str) and web_origin(origin) == origin, "label_studio.cors_origins",
                    f"{shown(origin)} is not a web origin (scheme://host[:port], no path, no '*')")
        require(studio.wait_seconds >= 0, "label_studio.wait_seconds", "must be >= 0")
        require(studio.poll_seconds > 0, "label_studio.poll_seconds", "must be positive")

    def check(self, config: ExperimentConfig, source: object) -> None:
        """The SDK is installed, the server answers, the token is accepted."""
        studio_client(config.label_studio).check()

    def create(self, setup: AnnotatorSetup) -> list[Annotator]:
        from osal_ray.annotation.files import label_set

        annotator = LabelStudioAnnotator(setup.output_dir, setup.manifests, label_set(setup), setup.config.data.root,
                                         setup.config, setup.log)
        return [annotator] * len(setup.manifests)

    def before_run(self, output_dir: Path, config: ExperimentConfig, log: Callable[[str], None]) -> None:
        """The open round's tasks imported again (a run may have stopped between publishing and importing),
        then its annotations in (waiting ``label_studio.wait_seconds`` for the rest)."""
        self.check(config, None)
        round_index = open_round(output_dir)
        if round_index is None:
            return
        push_round(output_dir, config, round_index, stored_image_url(config, output_dir), log)
        wait_for_annotations(output_dir, config, log)

    def sync(self, output_dir: Path, config: ExperimentConfig, log: Callable[[str], None]) -> None:
        sync_annotations(output_dir, config, log)

    def poll_seconds(self, config: ExperimentConfig) -> float | None:
        return config.label_studio.poll_seconds

    def take_event(self, output_dir: Path, config: ExperimentConfig, payload: dict, log: Callable[[str], None]) -> int | None:
        """A Label Studio webhook: only its task id is taken; the task is read back from Label Studio."""
        from osal_ray.annotation.label_studio_api import webhook_task_id

        task_id = webhook_task_id(payload)
        return 0 if task_id is None else sync_task(output_dir, config, task_id, log)

    def where(self, output_dir: Path, config: ExperimentConfig, status: dict) -> str:
        return f"annotate them in Label Studio ({config.label_studio.url})"


def stored_image_url(config: ExperimentConfig, output_dir: Path) -> Callable[[int, str], str]:
    """Image URLs for tasks imported again before the pool is read: the service's, else the stored image inlined."""
    if config.label_studio.service_url:
        from osal_ray.annotation.secret import signed_image_url

        return lambda sample, key: signed_image_url(config.label_studio.service_url, output_dir, key)
    from osal_ray.annotation.images import pool_image_png
    from osal_ray.data.pool import MANIFEST, read_manifest

    manifests = [read_manifest(p.parent) for p in sorted((output_dir / "data").glob(f"*/{MANIFEST}"))]
    return lambda sample, key: "data:image/png;base64," + base64.b64encode(pool_image_png(manifests, sample)).decode()


def web_origin(url: str) -> str | None:
    """The origin (``scheme://host[:port]``) of an http(s) URL, as browsers send it; None for anything else."""
    from urllib.parse import urlparse

    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError:
        return None
    if parsed.scheme not in ("http", "https") or not parsed.hostname or "*" in url:
        return None
    default = {"http": 80, "https": 443}[parsed.scheme]
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return f"{parsed.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")
