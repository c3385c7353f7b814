"""A thin, typed client for one Label Studio server (through ``label-studio-sdk`` 2.x).

The SDK is an optional extra (``pip install 'osal_ray[label-studio]'``) and is imported only when a
``LabelStudioProject`` is made, so osal_ray imports without it. ``webhook_task_id`` needs no SDK.

Tasks carry the sample in their data: ``image`` (a URL that the annotator's *browser* loads; Label
Studio does not fetch plain http(s) URLs itself), ``key`` (the sample's SHA-256 key) and ``round``.
The labeling config is an ``Image`` named ``image`` and a single-choice ``Choices`` named ``label``.
Annotators are reported as Label Studio user ids (as strings): the webhook body carries only the id.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from osal_ray.errors import InputError

IMAGE_NAME = "image"
CHOICES_NAME = "label"
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
PAGE_SIZE = 100


@dataclass(frozen=True)
class LabelStudioAnnotation:
    """One annotation of one osal_ray task."""

    task_id: int
    annotation_id: int
    key: str  # task data "key" (the sample's SHA-256 key)
    round: int  # task data "round"
    label: str | None  # the chosen Choice value; None when the annotation has no choice result (or was cancelled)
    annotator: str  # Label Studio user id (as a string)
    updated_at: str
    cancelled: bool = False  # Label Studio's Skip button: a cancelled annotation

    @property
    def origin(self) -> str:
        """This version of the annotation (it changes when someone updates it)."""
        return f"label-studio:{self.annotation_id}:{self.updated_at}"


def labeling_config(choices: list[str]) -> str:
    """The labeling config: an image and one required single choice among ``choices`` (XML-escaped)."""
    options = "".join(f"\n    <Choice value={quoteattr(choice)}/>" for choice in choices)
    return (
        f'<View>\n  <Image name="{IMAGE_NAME}" value="${IMAGE_NAME}"/>\n'
        f'  <Choices name="{CHOICES_NAME}" toName="{IMAGE_NAME}" choice="single" showInLine="true" required="true" '
        f'requiredMessage="Choose a label (or skip) before you submit">'
        f"{options}\n  </Choices>\n</View>"
    )


def choice_result(label: str) -> list[dict]:
    """An annotation or prediction result choosing ``label``."""
    return [{"from_name": CHOICES_NAME, "to_name": IMAGE_NAME, "type": "choices", "value": {"choices": [label]}}]


def config_choices(config: str) -> list[str]:
    """The Choice values of the ``label`` Choices control in a labeling config ([] when there is none)."""
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError:
        return []
    for control in root.iter("Choices"):
        if control.get("name") == CHOICES_NAME:
            return [str(choice.get("value")) for choice in control.iter("Choice") if choice.get("value") is not None]
    return []


def _annotation(task: dict, annotation: dict) -> LabelStudioAnnotation | None:
    """An annotation from a task dict (``id``, ``data``) and an annotation dict, or None if not osal_ray's."""
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    task_id = _int(task.get("id", annotation.get("task")))
    annotation_id = _int(annotation.get("id"))
    round_ = _int(data.get("round"))
    key = data.get("key")
    if task_id is None or annotation_id is None or round_ is None or not isinstance(key, str) or not key:
        return None
    annotator = annotation.get("completed_by")
    if isinstance(annotator, dict):  # some endpoints expand the user
        annotator = annotator.get("id", annotator.get("email"))
    cancelled = bool(annotation.get("was_cancelled"))
    return LabelStudioAnnotation(
        task_id=task_id,
        annotation_id=annotation_id,
        key=key,
        round=round_,
        label=None if cancelled else _choice(annotation.get("result")),
        annotator="" if annotator is None else str(annotator),
        updated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
        cancelled=cancelled,
    )


def newest_annotation(task: dict) -> LabelStudioAnnotation | None:
    """The newest annotation of a task dict (``id``, ``data``, ``annotations``), cancelled ones included."""
    given = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    if not given:
        return None
    newest = max(given, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), _int(a.get("id")) or 0))
    return _annotation(task, newest)


def task_ids_of(tasks: Iterable[dict]) -> dict[tuple[str, int], int]:
    """The task id of every (key, round) among task dicts."""
    ids = {}
    for task in tasks:
        data = task.get("data") or {}
        key, round_ = data.get("key"), _int(data.get("round"))
        if isinstance(key, str) and round_ is not None:
            ids[(key, round_)] = int(task["id"])
    return ids


def annotations_of(tasks: Iterable[dict], round: int | None = None) -> list[LabelStudioAnnotation]:
    """The newest annotation of every annotated task dict (of that round when given)."""
    found = []
    for task in tasks:
        if round is not None and _int((task.get("data") or {}).get("round")) != round:
            continue
        annotation = newest_annotation(task)
        if annotation is not None:
            found.append(annotation)
    return found


def webhook_task_id(payload: Any) -> int | None:
    """The task id of a Label Studio annotation webhook body (ANNOTATION_CREATED / UPDATED), else None.

    Only the id is taken from the body: what the task holds and what was annotated are read back from
    Label Studio itself, so a forged body cannot label anything. Never raises."""
    if not isinstance(payload, dict) or payload.get("action") not in WEBHOOK_ACTIONS:
        return None
    task, annotation = payload.get("task"), payload.get("annotation")
    task_id = task.get("id") if isinstance(task, dict) else None
    if task_id is None and isinstance(annotation, dict):
        task_id = annotation.get("task")
    return _int(task_id)


def _choice(result: Any) -> str | None:
    """The first choice of the ``label`` control in an annotation result, if any."""
    if not isinstance(result, list):
        return None
    for region in result:
        if isinstance(region, dict) and region.get("type") == "choices" and region.get("from_name") == CHOICES_NAME:
            value = region.get("value")
            choices = value.get("choices") if isinstance(value, dict) else None
            if isinstance(choices, list) and choices and isinstance(choices[0], str):
                return choices[0]
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _detail(exc: Any) -> str:
    """The server's reason in an SDK ApiError: its validation errors, else its detail, else the body."""
    body = exc.body
    if isinstance(body, dict):
        return str(body.get("validation_errors") or body.get("detail") or body)
    return str(body or f"HTTP {exc.status_code}")


def _dump(obj: Any) -> dict:
    """An SDK model (pydantic) or a plain dict as a dict."""
    if isinstance(obj, dict):
        return obj
    return obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)


class LabelStudioProject:
    """Projects, tasks, annotations and webhooks on one Label Studio server.

    ``token`` is a legacy API token or a personal access token (JWT refresh token); the SDK tells them apart.
    """

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        try:
            from label_studio_sdk import LabelStudio
            from label_studio_sdk.core.api_error import ApiError
        except ImportError as exc:
            raise InputError(
                "oracle.kind",
                f"the Label Studio annotator needs label-studio-sdk ({exc}): pip install 'osal_ray[label-studio]'",
            ) from None
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._api_error = ApiError
        try:
            self._client = LabelStudio(base_url=self.url, api_key=token, timeout=timeout)
        except ApiError as exc:  # an expired or malformed personal access token is refused here
            raise self._auth_error(exc) from None

    def _auth_error(self, exc: Any) -> InputError:
        """The InputError for a refused token (the token itself never appears in the message)."""
        detail = _detail(exc).replace(self._token, "***") if self._token else _detail(exc)
        return InputError(
            "label_studio.token_env",
            f"Label Studio at {self.url} refused the API token (HTTP {exc.status_code}: {detail}); use the "
            "personal access token from Account & Settings, or enable legacy tokens for the organization "
            "(a Label Studio started again with another --user-token keeps its first user's token)",
        )

    def check(self) -> None:
        """Reachability and auth, BEFORE expensive work.

        InputError("label_studio.url", ...) if unreachable / not Label Studio,
        InputError("label_studio.token_env", ...) if 401/403 (the message never contains the token).
        """
        import httpx

        try:
            response = httpx.get(f"{self.url}/api/version", timeout=self._timeout)
            release = response.json().get("release") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            release = None
            response = None
        if not release:
            why = "no answer" if response is None else f"HTTP {response.status_code} without a Label Studio version"
            raise InputError("label_studio.url", f"{self.url} is not a reachable Label Studio ({why} at /api/version)")
        try:
            self._client.users.whoami()
        except self._api_error as exc:
            if exc.status_code in (401, 403):
                raise self._auth_error(exc) from None
            raise
        except httpx.HTTPError as exc:
            raise InputError("label_studio.url", f"{self.url}: {type(exc).__name__}: {exc}") from None

    def ensure_project(self, title: str, choices: list[str], instruction: str = "") -> int:
        """The id of the project titled ``title``, created with ``labeling_config(choices)`` and the
        annotators' ``instruction`` if there is none; an existing one is brought up to date (its config,
        e.g. the required choice, and the instruction).

        If a project with that title exists but its Choices differ, raise InputError("label_studio.project", ...)
        naming both sets.
        """
        config = labeling_config(choices)
        settings = {"label_config": config, "expert_instruction": instruction, "show_instruction": bool(instruction),
                    "show_skip_button": True}
        for project in self._client.projects.list(title=title, page_size=PAGE_SIZE):
            if project.title != title:  # the title filter matches substrings
                continue
            existing = config_choices(project.label_config or "")
            if set(existing) != set(choices):
                raise InputError(
                    "label_studio.project",
                    f"Label Studio project {title!r} (id {project.id}) has choices {sorted(existing)}, "
                    f"this run labels {sorted(choices)}: rename the project or fix its labeling config",
                )
            current = labeling_config(existing)  # the project's own order of the same choices
            if project.label_config != current or (project.expert_instruction or "") != instruction:
                self._client.projects.update(project.id, **{**settings, "label_config": current})
            return int(project.id)
        try:
            created = self._client.projects.create(title=title, **settings)
        except self._api_error as exc:
            if exc.status_code != 400:
                raise
            raise InputError(
                "label_studio.project", f"Label Studio refused to create project {title!r}: {_detail(exc)}"
            ) from None
        return int(created.id)

    def labeling_choices(self, project_id: int) -> list[str]:
        """The Choice values of a project's ``label`` control, in config order."""
        return config_choices(self._client.projects.get(project_id).label_config or "")

    def _tasks(self, project_id: int, with_annotations: bool) -> Iterator[dict]:
        """Every task of a project as a dict (``id``, ``data``, and ``annotations`` when asked), all pages."""
        fields = "all" if with_annotations else "task_only"
        for task in self._client.tasks.list(project=project_id, fields=fields, page_size=PAGE_SIZE):
            yield _dump(task)

    def tasks(self, project_id: int) -> list[dict]:
        """Every task of a project with its annotations, in one listing (``task_ids_of`` and
        ``annotations_of`` read it without asking the server again)."""
        return list(self._tasks(project_id, True))

    def task_ids(self, project_id: int) -> dict[tuple[str, int], int]:
        """The task id of every (key, round) in a project."""
        return task_ids_of(self._tasks(project_id, False))

    def import_tasks(self, project_id: int, tasks: list[dict], predictions: Mapping[tuple[str, int], dict] | None = None) -> int:
        """Import tasks whose (key, round) the project lacks; returns how many were new.

        Each dict is a task's data: at least "image" (URL), "key", "round"; maybe "rank", "path", "score".
        ``predictions`` (by (key, round)): a pre-annotation to import with the task, ``{"label",
        "score", "model_version"}``, which annotators see and may accept or correct.
        """
        for task in tasks:
            missing = [name for name in ("image", "key", "round") if name not in task]
            if missing:
                raise ValueError(f"Label Studio task data {task!r} lacks {missing}")
        seen = set(self.task_ids(project_id))
        new = []
        for task in tasks:
            identity = (task["key"], _int(task["round"]))
            if identity not in seen:
                seen.add(identity)
                guess = (predictions or {}).get(identity)
                new.append({"data": dict(task)} if guess is None else {"data": dict(task), "predictions": [
                    {"model_version": guess["model_version"], "score": guess["score"], "result": choice_result(guess["label"])}]})
        if new:
            self._client.projects.import_tasks(project_id, request=new)
        return len(new)

    def annotations(self, project_id: int, round: int | None = None) -> list[LabelStudioAnnotation]:
        """The newest annotation of every annotated task (of that round when given; cancelled ones too), all pages."""
        return annotations_of(self._tasks(project_id, True), round)

    def task_annotation(self, project_id: int, task_id: int) -> tuple[str, int, LabelStudioAnnotation | None] | None:
        """(key, round, newest annotation) of one task of the project, read from Label Studio; None when
        the task is not there or not one of this project's osal_ray tasks."""
        try:
            task = _dump(self._client.tasks.get(task_id))
        except self._api_error as exc:
            if exc.status_code == 404:
                return None
            raise
        data = task.get("data") or {}
        key, round_ = data.get("key"), _int(data.get("round"))
        if _int(task.get("project")) != project_id or not isinstance(key, str) or round_ is None:
            return None
        if task.get("annotations") is None:
            task["annotations"] = [_dump(a) for a in self._client.annotations.list(task_id)]
        return key, round_, newest_annotation(task)

    def ensure_round_view(self, project_id: int, round_index: int) -> int:
        """The Data Manager tab ``round N`` of the project, showing that round's tasks only (created once);
        its id. Annotators see each round apart, with Label Studio's own counts of what is done."""
        title = f"round {round_index}"
        for view in self._client.views.list(project=project_id):
            if (_dump(view).get("data") or {}).get("title") == title:
                return int(view.id)
        filters = {"conjunction": "and", "items": [
            {"filter": "filter:tasks:data.round", "operator": "equal", "type": "Number", "value": round_index}]}
        created = int(self._client.views.create(project=project_id, data={"title": title, "filters": filters}).id)
        others = [int(v.id) for v in self._client.views.list(project=project_id) if int(v.id) != created]
        self._client.views.update_order(project=project_id, ids=[created, *others])  # the open round's tab first
        return created

    def ensure_webhook(self, project_id: int, url: str, headers: dict[str, str]) -> None:
        """A project webhook to ``url`` for ANNOTATION_CREATED and ANNOTATION_UPDATED sending ``headers``.

        Idempotent: a webhook of this project with the same url is updated, not duplicated. Label Studio
        refuses loopback/private URLs unless its server runs with SSRF_PROTECTION_ENABLED=false.
        """
        settings: dict[str, Any] = dict(
            url=url, headers=dict(headers), actions=list(WEBHOOK_ACTIONS),
            send_payload=True, send_for_all_actions=False, is_active=True,
        )  # fmt: skip
        try:
            for hook in self._client.webhooks.list(project=str(project_id)):
                if hook.url == url and hook.project == project_id:
                    current = _dump(hook)
                    if any(current.get(k) != v for k, v in settings.items() if k != "actions") or \
                            set(current.get("actions") or []) != set(settings["actions"]):
                        self._client.webhooks.update(hook.id, **settings)
                    return
            self._client.webhooks.create(project=project_id, **settings)
        except self._api_error as exc:
            detail = _detail(exc)
            if "reserved network address" in detail or "url" in detail:
                raise InputError(
                    "label_studio.service_url",
                    f"Label Studio refused the webhook URL {url} ({detail}); it accepts loopback or "
                    "private addresses only when its server runs with SSRF_PROTECTION_ENABLED=false",
                ) from None
            raise

    def annotate(self, task_id: int, label: str) -> int:
        """Post an annotation choosing ``label`` for a task, as an annotator would through the API; its id."""
        return int(self._client.annotations.create(task_id, result=choice_result(label), was_cancelled=False).id)
