"""Annotator backends: who labels a run's queries, behind one registry (``oracle.kind``).

A backend is one file (``simulated``, ``files``, ``label_studio``; a CVAT or a custom web form would be
another) that registers an ``AnnotatorBackend``: what it checks in the config and before any work,
how it makes the run's annotators, how it brings labels made elsewhere in (``sync``), whether it
takes pushed events (a webhook), and what it tells people. The runner, the preflight, the service
and the validation ask the backend, never the kind's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

from osal_ray.annotation.contract import Annotator
from osal_ray.config import ExperimentConfig
from osal_ray.data.pool import PoolManifest
from osal_ray.registry import Registry

AUTO = "auto"  # oracle.kind: files for an image pool (people label), simulated for a labeled dataset


@dataclass(frozen=True)
class AnnotatorSetup:
    """What a backend makes a run's annotators from: one pool manifest per seed, in seed order."""

    config: ExperimentConfig
    output_dir: Path
    manifests: list[PoolManifest]
    log: Callable[[str], None] = print


class AnnotatorBackend:
    """One way labels reach a run. ``human``: people label, so the run stops after each selection
    until they have, and every seed shares one annotator (one folder, one project)."""

    name: ClassVar[str] = ""
    human: ClassVar[bool] = True

    def validate(self, config: ExperimentConfig) -> None:
        """The config keys this backend reads, checked before anything else (InputError naming the key)."""

    def check(self, config: ExperimentConfig, source: object) -> None:
        """Before any work, with the data listed: what the backend needs is there (a server, a truth file)."""

    def create(self, setup: AnnotatorSetup) -> list[Annotator]:
        """The annotator of every seed (one per manifest)."""
        raise NotImplementedError

    def before_run(self, output_dir: Path, config: ExperimentConfig, log: Callable[[str], None]) -> None:
        """What a run does first, before it looks at the open round's labels (e.g. bring those made elsewhere in)."""

    def sync(self, output_dir: Path, config: ExperimentConfig, log: Callable[[str], None]) -> None:
        """Bring in labels made outside osal_ray (the service, on its every poll)."""

    def poll_seconds(self, config: ExperimentConfig) -> float | None:
        """How often the service calls ``sync`` while it waits for labels (None: never, labels are pushed to it)."""
        return None

    takes_events: ClassVar[bool] = False  # a labeling tool pushes events (a webhook) to the service

    def take_event(self, output_dir: Path, config: ExperimentConfig, payload: dict, log: Callable[[str], None]) -> int | None:
        """A pushed event (a webhook body): the labels it staged, or None when this backend takes no events."""
        return None

    def where(self, output_dir: Path, config: ExperimentConfig, status: dict) -> str:
        """Where people label an open round (``status`` is its ``waiting_status``), for the run's messages."""
        return ""


ANNOTATORS: Registry[AnnotatorBackend] = Registry("annotator (oracle.kind)")


def register_annotator(backend: type[AnnotatorBackend]) -> type[AnnotatorBackend]:
    """Class decorator: register one instance of ``backend`` under its ``name``."""
    ANNOTATORS.add(backend.name, backend())
    return backend


def oracle_kinds() -> list[str]:
    """Every value ``oracle.kind`` takes: ``auto`` and each registered backend."""
    return [AUTO, *ANNOTATORS.names()]


def annotator_backend(config: ExperimentConfig) -> AnnotatorBackend:
    """The run's backend, ``auto`` resolved: ``files`` for an ``image_pool``, ``simulated`` otherwise."""
    from osal_ray.data.image_pool import ImagePoolSource

    kind = config.oracle.kind
    if kind == AUTO:
        kind = "files" if config.data.dataset == ImagePoolSource.name else "simulated"
    return ANNOTATORS.get(kind, "oracle.kind")
