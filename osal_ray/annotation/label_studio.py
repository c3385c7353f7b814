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
import json
import os
import time
from pathlib import Path
from typing import Callable

from osal_ray.annotation.files import REQUEST_FILE, FilesAnnotator, open_round, read_request, round_dir
from osal_ray.annotation.labels import LabelErrors, LabelSet, merged_labels
from osal_ray.config import ExperimentConfig, LabelStudioConfig
from osal_ray.data.pool import PoolManifest
from osal_ray.errors import InputError
from osal_ray.experiment.oracle import QueryRequest

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


def check_label_studio(config: ExperimentConfig) -> None:
    """Before any work: the SDK is installed, the server answers, the token is accepted."""
    studio_client(config.label_studio).check()


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

    def image_url(self, sample: int, key: str) -> str:
        """Where Label Studio shows a queried image: the service's signed URL, else the image inlined."""
        if self.settings.service_url:
            from osal_ray.service.auth import signed_image_url

            return signed_image_url(self.settings.service_url, self.output_dir, key)
        return "data:image/png;base64," + base64.b64encode(self.image_bytes(sample)).decode()


def ensure_project(output_dir: Path, config: ExperimentConfig, labels: list[str]) -> tuple[object, int]:
    """(client, project id): the run's project, created once with a Choices control of ``labels``."""
    client = studio_client(config.label_studio)
    record = output_dir / "annotation" / PROJECT_FILE
    title = project_title(config)
    project_id = client.ensure_project(title, labels)
    saved = {"url": config.label_studio.url, "title": title, "project_id": project_id}
    if not record.is_file() or json.loads(record.read_text(encoding="utf-8")) != saved:
        from osal_ray import storage

        record.parent.mkdir(parents=True, exist_ok=True)
        storage.write_bytes(record, json.dumps(saved, indent=1).encode())
    if config.label_studio.service_url:
        from osal_ray.service.auth import webhook_headers

        client.ensure_webhook(project_id, config.label_studio.service_url.rstrip("/") + WEBHOOK_PATH, webhook_headers(output_dir))
    return client, project_id


def push_round(output_dir: Path, config: ExperimentConfig, round_index: int, image_url: Callable[[int, str], str],
               log: Callable[[str], None] = print) -> int:
    """Import a published round's queries as tasks (idempotent: a task already there is not added again)."""
    request = read_request(output_dir, round_index)
    client, project_id = ensure_project(output_dir, config, request["allowed_labels"])
    present = {key for key, r in client.task_ids(project_id) if r == round_index}
    tasks, seen = [], set(present)
    for query in request["queries"]:
        if query["key"] in seen:
            continue  # one task per image, however many strategies or seeds asked for it; none twice
        seen.add(query["key"])
        tasks.append({"image": image_url(int(query["id"]), query["key"]), "key": query["key"], "round": round_index,
                      "rank": query["rank"], "path": query["path"] or "", "score": query["score"]})
    if not tasks:
        return 0
    added = client.import_tasks(project_id, tasks)
    if added:
        log(f"round {round_index}: {added} task(s) imported into Label Studio project {project_id} ({config.label_studio.url})")
    return added


def sync_annotations(output_dir: Path, config: ExperimentConfig, log: Callable[[str], None] = print) -> int:
    """Stage the open round's Label Studio annotations that are not staged yet; returns how many.

    An annotation whose choice is not allowed (the project's choices edited by hand) is named in
    the log and left out; the others are staged.
    """
    round_index = open_round(output_dir)
    if round_index is None or not (round_dir(output_dir, round_index) / REQUEST_FILE).is_file():
        return 0
    request = read_request(output_dir, round_index)
    client, project_id = ensure_project(output_dir, config, request["allowed_labels"])
    found = client.annotations(project_id, round_index)
    return stage_annotations(output_dir, found, round_index, log)


def stage_annotations(output_dir: Path, annotations: list, round_index: int, log: Callable[[str], None] = print) -> int:
    """Stage Label Studio annotations (``LabelStudioAnnotation``s) of ``round_index`` that change what is staged."""
    from osal_ray.label import stage_labels

    staged = merged_labels(round_dir(output_dir, round_index))
    items = [(a.annotation_id, a.key, None, a.label) for a in annotations
             if a.round == round_index and a.label and staged.get(a.key) != a.label]
    if not items:
        return 0
    source = f"label-studio annotations {', '.join(str(a.annotation_id) for a in annotations if a.round == round_index)[:200]}"
    try:
        count, _, _ = stage_labels(output_dir, lambda: items, "label_studio", source, round_index=round_index)
    except LabelErrors as errors:
        bad = {row for row, _, _ in errors.problems}
        log(f"Label Studio: {len(bad)} annotation(s) refused: {errors.message}")
        items = [item for item in items if item[0] not in bad]
        if not items:
            return 0
        count, _, _ = stage_labels(output_dir, lambda: items, "label_studio", source, round_index=round_index)
    return count


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

