"""The experiment configuration: typed dataclasses, YAML loading, ``--set`` overrides.

Loading checks shapes and types (an unknown key or a wrong type names its dotted path);
``osal_ray.validation`` checks meaning (names exist, ratios are possible) before Ray starts.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from osal_ray.errors import InputError, require, shown, shown_error

LEGACY = "legacy"  # field metadata: the value a key had, in effect, before it existed


def added_later(default: Any, *, legacy: Any) -> Any:
    """A dataclass field added after the first release: ``default`` for new runs, ``legacy`` (the value
    that reproduces how runs behaved before the key existed) for a saved run whose state lacks it.

    Used by config sections and by strategy and objective parameters (``osal_ray.params``) alike; a
    resumed run never changes its rule because osal_ray learned a new key (``experiment.state``).
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={LEGACY: legacy})
    return field(default=default, metadata={LEGACY: legacy})


def legacy_values(cls: type) -> dict[str, Any]:
    """Every field of dataclass ``cls`` declared with ``added_later``, with its legacy value."""
    return {f.name: copy.deepcopy(f.metadata[LEGACY]) for f in dataclasses.fields(cls) if LEGACY in f.metadata}


SKIP = "skip"  # the label of an unusable image (it leaves the pool, costs no budget); no class may take it
UNSAFE_NAME_CHARACTERS = frozenset(',"\r\n\t')  # a label is a cell of a CSV file people edit: none of these in it
MAX_SEED = 2**32 - 1  # numpy's SeedSequence entropy words and torch.manual_seed take seeds of 32 bits here
MAX_LR = 1e6  # beyond this SGD steps overflow float32 (inf weights, not a clean divergence); below, a diverging run stops cleanly

# Allowed values, declared once: loading refuses anything else, naming the key (``_coerce``).
Protocol = Literal["mismatch", "ood_ratio"]
ClassWeights = Literal["auto", "none", "inverse_frequency"]
WeightReduction = Literal["weighted_mean", "mean"]
KeepCheckpoints = Literal["last", "all"]
ScoringMode = Literal["auto", "resident", "streaming", "inline"]
ParquetReader = Literal["auto", "v1", "v2"]
Searcher = Literal["grid", "random", "optuna"]
Scheduler = Literal["fifo", "asha"]
SummaryMetric = Literal["aubc", "last_accuracy", "final_recall", "mean_precision"]


def allowed(alias: Any) -> tuple[Any, ...]:
    """The values a ``Literal`` alias allows, in declared order."""
    return typing.get_args(alias)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, which classes are known, and how the open-set pool is built."""

    dataset: str = "digits"
    root: str | None = None
    download: bool = False
    verify_checksums: bool = True
    protocol: Protocol = "mismatch"
    known_classes: int | list[int] | list[str] | None = field(default_factory=lambda: [3, 8])
    mismatch_ratio: float | None = None
    initial_fraction: float = 0.05
    initial_size: int = 500
    ood_ratio: float = 0.2
    test_fraction: float = 0.3
    train_fraction: float = 1.0
    image_size: int = 32
    num_samples: int = added_later(100_000, legacy=100_000)  # the synthetic dataset came with these two
    num_classes: int = added_later(10, legacy=10)
    class_names: list[str] | None = None
    pool_files: int = 2
    unknown_label: str = added_later("unknown", legacy="unknown")  # image_pool came with these two
    channels: int | None = added_later(None, legacy=None)

    def check(self) -> None:
        """Each key's range (names that need a registry are checked in ``osal_ray.validation``)."""
        if self.mismatch_ratio is not None:
            require(0.0 < self.mismatch_ratio < 1.0, "data.mismatch_ratio", f"{self.mismatch_ratio} must be in (0, 1)")
        if isinstance(self.known_classes, int):
            require(self.known_classes >= 2, "data.known_classes", f"{self.known_classes}: need at least 2 known classes")
        elif isinstance(self.known_classes, list):
            require(len(self.known_classes) >= 2, "data.known_classes", "list at least 2 known classes")
        require(0.0 < self.initial_fraction <= 1.0, "data.initial_fraction", f"{self.initial_fraction} must be in (0, 1]")
        require(self.initial_size >= 1, "data.initial_size", "must be at least 1")
        require(0.0 <= self.ood_ratio < 1.0, "data.ood_ratio", f"{self.ood_ratio} must be in [0, 1)")
        require(0.0 < self.test_fraction < 1.0, "data.test_fraction", f"{self.test_fraction} must be in (0, 1)")
        require(0.0 < self.train_fraction <= 1.0, "data.train_fraction", f"{self.train_fraction} must be in (0, 1]")
        require(self.image_size >= 8, "data.image_size", "must be at least 8 pixels")
        require(self.pool_files >= 1, "data.pool_files", "must be at least 1")
        require(self.num_samples >= 100, "data.num_samples", "must be at least 100 (synthetic dataset)")
        require(self.num_classes >= 3, "data.num_classes", "must be at least 3 (synthetic dataset)")
        label = self.unknown_label
        require(bool(label.strip()) and label.casefold() != SKIP, "data.unknown_label",
                f"{shown(label)}: give a folder/label name other than {SKIP!r} (reserved for unusable images)")
        require(label == label.strip() and label.isprintable() and not UNSAFE_NAME_CHARACTERS & set(label), "data.unknown_label",
                f"{shown(label)}: no leading or trailing spaces, commas, quotes or control characters (it is a label in CSV files)")
        require(self.channels in (None, 1, 3), "data.channels", f"{self.channels}: 1 (grayscale), 3 (colour) or null (decided from the images)")


@dataclass(frozen=True)
class OracleConfig:
    """Who labels the queries: ``simulated`` (the ground truth) or ``files`` (people, through CSV files).

    ``auto``: simulated for datasets with labels, files for ``image_pool``. ``truth_file`` (a CSV of
    ``key,label`` or ``path,label``) lets a simulated annotator label an ``image_pool``.
    """

    kind: str = "auto"
    truth_file: str | None = None


@dataclass(frozen=True)
class LabelStudioConfig:
    """Label Studio as the annotators' front end (``oracle.kind: label_studio``).

    ``url``: the Label Studio server; its API token is read from the environment variable
    ``token_env`` (never from this file). ``project``: the project's title (default
    ``osal_ray <name>``). ``service_url``: the osal_ray service as Label Studio and its users'
    browsers reach it: tasks show images from its ``/images/{key}`` and a webhook posts
    annotations to it; null: the images are inlined in the tasks and annotations are polled.
    A command-line run polls for up to ``wait_seconds`` (0: it publishes the round and exits;
    the next run imports what was annotated), every ``poll_seconds``. ``cors_origins``: the web
    origins whose pages may load the service's signed image URLs (null: the origin of ``url``).
    """

    url: str | None = None
    token_env: str = "LABEL_STUDIO_API_KEY"
    project: str | None = None
    service_url: str | None = None
    cors_origins: list[str] | None = None
    wait_seconds: float = 0.0
    poll_seconds: float = 10.0


@dataclass(frozen=True)
class ALConfig:
    """The active-learning schedule: number of query rounds and labels bought per round."""

    rounds: int = 5
    budget: int = 20

    def check(self) -> None:
        require(self.rounds >= 1, "al.rounds", "must be at least 1")
        require(self.budget >= 1, "al.budget", "must be at least 1")


@dataclass(frozen=True)
class ModelConfig:
    """Architectures from the model registry; ``kwargs`` go to their constructors."""

    classifier: str = "mlp"
    detector: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """How every network is trained each round (SGD with a step schedule, on Ray Train)."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 20
    lr_gamma: float = 0.5
    augment: bool = False
    reinit: bool = True
    num_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    checkpoint_every: int = 0
    max_failures: int = 2
    keep_checkpoints: KeepCheckpoints = "last"

    def check(self) -> None:
        require(self.epochs >= 1, "train.epochs", "must be at least 1")
        require(self.batch_size >= 1, "train.batch_size", "must be at least 1")
        require(0 < self.lr <= MAX_LR, "train.lr", f"{shown(self.lr)}: must be in (0, {MAX_LR:g}] (larger steps overflow training)")
        require(0.0 <= self.momentum < 1.0, "train.momentum", "must be in [0, 1)")
        require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        require(self.lr_step >= 1, "train.lr_step", "must be at least 1")
        require(0.0 < self.lr_gamma <= 1.0, "train.lr_gamma", "must be in (0, 1]")
        require(self.num_workers >= 0, "train.num_workers", "must be >= 0 (0 trains in the driver process)")
        require(self.cpus_per_worker > 0, "train.cpus_per_worker", "must be positive")
        require(self.max_failures >= 0, "train.max_failures", "must be >= 0 (0: a failed training worker fails the round)")
        require(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0: only the final checkpoint)")


@dataclass(frozen=True)
class DetectorConfig:
    """The K+1-way detector of LfOSA and JSOSAL (trained only when a strategy needs it)."""

    temperature: float = 0.5
    class_weights: ClassWeights = "auto"
    class_weight_reduction: WeightReduction = added_later("weighted_mean", legacy="weighted_mean")  # PyTorch's, as before

    def check(self) -> None:
        require(self.temperature > 0, "detector.temperature", "must be positive")


@dataclass(frozen=True)
class FeaturesConfig:
    """Frozen features: ``extractor`` names a registered feature extractor (``osal_ray.features``) whose
    vectors the classifier and the detector are trained on, as small heads (``model.classifier: linear``
    or ``mlp_head``); null: networks on the images. ``params``: the extractor's parameters."""

    extractor: str | None = added_later(None, legacy=None)
    params: dict[str, Any] = added_later({}, legacy={})
    batch_size: int = added_later(1024, legacy=1024)

    def check(self) -> None:
        require(self.batch_size >= 1, "features.batch_size", "must be at least 1")


@dataclass(frozen=True)
class ClipConfig:
    """The CLIPN model of VLPure-AL and of the ``clip_linear`` classifier (open_clip architectures)."""

    model_name: str = "ViT-B-16"
    checkpoint: str | None = None
    pretrained: str | None = None
    model_config: dict[str, Any] | None = None
    allow_download: bool = False
    domain: str | None = None
    templates: list[str] | None = None
    batch_size: int = 256

    def check(self) -> None:
        require(self.batch_size >= 1, "clip.batch_size", "must be at least 1")
        if self.templates is not None:
            require(bool(self.templates) and all("{}" in t for t in self.templates), "clip.templates",
                    "each template needs a {} for the class name")


@dataclass(frozen=True)
class ScoringConfig:
    """The actors that score the unlabeled pool each round.

    ``mode``: ``resident`` actors hold their shard of the pool across rounds (only new weights
    travel each round); ``streaming`` runs one Ray Data pass per round (start-up each round, any
    pool size); ``inline``: the trajectory's own process scores the pool, no actor (small heads on
    frozen features, where a pass takes milliseconds and an actor's start-up seconds); ``auto`` is
    resident where the cluster holds the scorers and a training run at once and the pool fits a
    quarter of its memory, else streaming.
    """

    mode: ScoringMode = "auto"
    num_actors: int = 1
    max_actors: int | None = None
    cpus_per_actor: float = 0.5
    cpus_per_read: float = 0.25
    gpus_per_actor: float = 0.0
    resources_per_actor: dict[str, float] = field(default_factory=dict)
    batch_size: int = 512
    parquet_reader: ParquetReader = "auto"

    def check(self) -> None:
        require(self.num_actors >= 1, "scoring.num_actors", "must be at least 1")
        if self.max_actors is not None:
            require(self.max_actors >= self.num_actors, "scoring.max_actors", f"must be >= scoring.num_actors ({self.num_actors})")
        require(self.cpus_per_actor > 0, "scoring.cpus_per_actor", "must be positive (fractions such as 0.5 are allowed)")
        require(self.gpus_per_actor >= 0, "scoring.gpus_per_actor", "must be >= 0")
        require(self.cpus_per_read > 0, "scoring.cpus_per_read", "must be positive (a fraction keeps reads from starving actors)")
        require(self.batch_size >= 1, "scoring.batch_size", "must be at least 1")
        require(all(v > 0 for v in self.resources_per_actor.values()), "scoring.resources_per_actor", "amounts must be positive")


@dataclass(frozen=True)
class SweepConfig:
    """A Ray Tune sweep over any config keys; each trial is a full active-learning experiment.

    ``space`` maps dotted config keys (or the shorthands ``seed`` and ``strategy``) to one of
    {grid: [...]}, {choice: [...]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]}.
    An empty space means the job is a single experiment, not a sweep.
    """

    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    searcher: Searcher = "grid"
    metric: SummaryMetric = "aubc"
    metric_strategy: str | None = None
    num_samples: int = 1
    max_concurrent_trials: int = 1
    trial_resources: dict[str, float] = field(default_factory=lambda: {"CPU": 0.25})
    seed: int = 0
    scheduler: Scheduler = "fifo"
    grace_period: int = 2
    reduction_factor: float = 3.0

    def check(self) -> None:
        """The search's own keys (the swept values are checked against the config in ``osal_ray.sweep``)."""
        require(0 <= self.seed <= MAX_SEED, "sweep.seed", f"{shown(self.seed)}: must be in 0 .. {MAX_SEED}")
        require(self.grace_period >= 1, "sweep.grace_period", "grace_period must be >= 1 round, reduction_factor > 1")
        require(self.reduction_factor > 1, "sweep.reduction_factor", "grace_period must be >= 1 round, reduction_factor > 1")
        require(self.num_samples >= 1, "sweep.num_samples", "must be at least 1")
        require(self.max_concurrent_trials >= 1, "sweep.max_concurrent_trials", "must be at least 1")
        require(bool(self.trial_resources) and all(v >= 0 for v in self.trial_resources.values()), "sweep.trial_resources",
                "give non-negative amounts, e.g. {CPU: 0.25}")


@dataclass(frozen=True)
class RayConfig:
    """Where Ray runs: an address (or RAY_ADDRESS) joins a cluster, else Ray starts embedded."""

    address: str | None = None
    num_cpus: int | None = None
    object_store_memory_mb: int = 512

    def check(self) -> None:
        if self.num_cpus is not None:
            require(self.num_cpus >= 1, "ray.num_cpus", "must be at least 1")
        require(self.object_store_memory_mb >= 78, "ray.object_store_memory_mb", "Ray needs at least 78 MB")


@dataclass(frozen=True)
class ExecutionConfig:
    """How the (strategy, seed) trajectories share the cluster.

    Each trajectory runs as its own Ray task reserving ``cpus_per_trajectory`` CPUs (its scoring
    passes and training reserve their own resources through Ray Data and Ray Train); the driver
    only orchestrates and writes the outputs. ``max_concurrent_trajectories`` bounds how many run
    at once: null (auto) runs as many as the cluster's CPUs hold at the same time (the resources
    each reserves, and the torch threads of its in-process training); 1 runs them one after the
    other in the driver process. Runs with people as annotators always run in the driver.
    ``torch_threads``: torch's threads for a trajectory's in-process training, scoring and selection
    (null: torch's default, every core). The default, 1, lets the automatic limit run one trajectory
    per core; floating-point sums depend on the count, so each trajectory records the count it started
    with and keeps it when resumed (one saved before it was recorded keeps torch's default).
    """

    max_concurrent_trajectories: int | None = None
    cpus_per_trajectory: float = 0.1
    torch_threads: int | None = 1

    def check(self) -> None:
        if self.max_concurrent_trajectories is not None:
            require(self.max_concurrent_trajectories >= 1, "execution.max_concurrent_trajectories",
                    "must be at least 1 (1: one trajectory after the other in the driver; null: as many as the cluster holds)")
        require(self.cpus_per_trajectory >= 0, "execution.cpus_per_trajectory",
                "must be >= 0 (a fraction such as 0.1: the trajectory's work reserves its own CPUs)")
        if self.torch_threads is not None:
            require(self.torch_threads >= 1, "execution.torch_threads", "must be at least 1 (null: torch's default, every core)")


@dataclass(frozen=True)
class ExperimentConfig:
    """A full experiment: every strategy x seed runs the same rounds on the same splits."""

    name: str = "digits"
    seeds: list[int] = field(default_factory=lambda: [0])
    strategies: list[str] = field(default_factory=lambda: ["random", "entropy", "coreset", "lfosa", "jsosal"])
    strategy_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    output_dir: str | None = None
    storage_path: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    al: ALConfig = field(default_factory=ALConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    label_studio: LabelStudioConfig = field(default_factory=LabelStudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def check(self) -> None:
        """Every section's own checks and the top-level keys' (one check per key, in its section);
        names that need a registry (datasets, strategies, models, annotators) are ``osal_ray.validation``'s."""
        import re

        require(bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name)), "name", f"{shown(self.name)} must be letters, digits, '_', '-' or '.'")
        require(bool(self.seeds), "seeds", "give at least one seed")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", f"repeated seeds in {shown(self.seeds)}")
        outside = [s for s in self.seeds if not 0 <= s <= MAX_SEED]
        require(not outside, "seeds", f"{shown(outside[:1])}: seeds must be in 0 .. {MAX_SEED} (numpy seeds)")
        require(len(set(self.strategies)) == len(self.strategies), "strategies", f"repeated strategies in {shown(self.strategies)}")
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if dataclasses.is_dataclass(value) and hasattr(value, "check"):
                value.check()

    def resolved_output_dir(self) -> Path:
        """The output directory, ``outputs/<name>`` unless set."""
        return Path(self.output_dir or f"outputs/{self.name}")

    def resolved_storage(self) -> str:
        """Where checkpoints and round state go: ``storage_path`` (a path or URI), else the output directory."""
        return self.storage_path or str(self.resolved_output_dir().resolve())

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the whole configuration (what ``config.yaml`` holds)."""
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(Path(path), "--config")
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(raw, key, value)
    return config_from_dict(raw)


class JobLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases: ``*name`` (and ``<<: *name``) is refused where it appears, so a
    few hundred bytes of nested aliases cannot expand to gigabytes (job files have no use for them)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"aliases (*{event.anchor}) are not allowed in osal_ray jobs; "
                                                          "write the value out", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """Parse YAML text as a job does (safe types, no aliases); yaml.YAMLError otherwise."""
    return yaml.load(text, Loader=JobLoader)  # noqa: S506  (JobLoader is a SafeLoader)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong, and where (PyYAML's own text spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return shown_error(ValueError("; ".join(p for p in (exc.context, exc.problem) if p) + where))
    return shown_error(ValueError(" ".join(str(exc).split())))


def read_yaml_mapping(path: Path, field_name: str) -> dict[str, Any]:
    """Load a YAML file that must hold a mapping; errors name the file and the line."""
    if not path.is_file():
        raise InputError(field_name, f"no such file: {path}")
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(field_name, f"{path} is not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(field_name, f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b=value``; the value is parsed as YAML (numbers, lists, null, booleans)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise InputError("--set", f"expected dotted.key=value, got {shown(item)}")
    try:
        value = load_yaml(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise InputError("--set", f"value of {key} is not valid YAML: {yaml_problem(exc)}") from None
    return key, value


def set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    """Set ``target[a][b] = value`` for ``key == 'a.b'``, creating mappings on the way."""
    parts = key.split(".")
    node = target
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError("--set", f"{'.'.join(parts[:depth + 1])} is not a section, cannot set {key}")
        node = child
    node[parts[-1]] = value


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build an ExperimentConfig, refusing unknown keys and values of the wrong type."""
    return build_dataclass(ExperimentConfig, raw, "")


def build_dataclass(cls: type, raw: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a mapping with the config's coercion: an unknown key or a value of
    the wrong type is an InputError naming ``path.key`` (strategy and objective parameters use it too)."""
    if not isinstance(raw, dict):
        raise InputError(path or "config", f"expected a mapping, got {shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise InputError(dotted, f"unknown key; allowed here: {', '.join(names) or 'none'}")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(annotation: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, path)
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except InputError:
                continue
        raise InputError(path, f"expected {_describe(annotation)}, got {shown(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise InputError(path, f"expected a list, got {shown(value)}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(item_type, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(path, f"expected a mapping, got {shown(value)}")
        _, value_type = typing.get_args(annotation)
        return {str(k): _coerce(value_type, v, f"{path}.{k}") for k, v in value.items()}
    if origin is Literal:
        options = typing.get_args(annotation)
        if value not in options or isinstance(value, bool) != any(isinstance(o, bool) for o in options):
            raise InputError(path, f"{shown(value)} is not one of {', '.join(map(str, options))}")
        return value
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise InputError(path, f"expected true or false, got {shown(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(path, f"expected an integer, got {shown(value)}")
        return value
    if annotation is float:
        if isinstance(value, str):
            value = _number_from_text(value, path)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(path, f"expected a number, got {shown(value)}")
        if not math.isfinite(value):
            raise InputError(path, f"expected a finite number, got {shown(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise InputError(path, f"expected a string, got {shown(value)}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} at {path}")


def _number_from_text(text: str, path: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise InputError(path, f"expected a number, got {shown(text)}") from None


def _describe(annotation: Any) -> str:
    args = typing.get_args(annotation)
    names = [getattr(a, "__name__", None) or str(a) for a in args if a is not type(None)]
    return " or ".join(names + (["null"] if type(None) in args else []))


def dump_config(config: ExperimentConfig) -> str:
    """The resolved configuration as YAML text."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
