"""The state of one (strategy, seed) run, written atomically after every finished round.

Re-running the same command with the same output directory reads it back and continues
after the last finished round; a run made with a different configuration is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from osal_ray import storage
from osal_ray.config import ClipConfig, DataConfig, DetectorConfig, ExperimentConfig, ModelConfig, TrainConfig, legacy_values
from osal_ray.errors import CorruptFile, InputError, shown_error
from osal_ray.annotation.contract import UNKNOWN, Correction
from osal_ray.experiment.plan import StrategyPlan, plan_strategy

STATE_FILE = "state.json"
STATE_VERSION = 1


@dataclass
class RoundRecord:
    """The metrics of one finished round (round 0 is the initial set)."""

    round: int
    n_labeled_known: int
    n_invalid: int
    budget_spent: int
    n_queried: int
    accuracy: float
    precision: float
    recall: float
    extra: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class QueryRecord:
    """One queried sample: which id, in which round, its strategy score and its label.

    ``label`` is the original dataset class where the truth is known (a simulated annotator), else
    the answer: the known-class index, -1 for unknown, -2 for skipped.
    """

    round: int
    id: int
    score: float
    label: int
    known: bool
    skipped: bool = False


@dataclass
class PendingQuery:
    """A selected batch whose labels are not all known yet: the first half of a round."""

    round: int
    ids: list[int]
    scores: list[float]
    extra: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    started_at: float = 0.0
    predictions: list[int] | None = None  # per query: the model's guess (0..K-1, -1 unknown), for annotators
    prediction_scores: list[float] | None = None  # how sure the guess is, in [0, 1]


@dataclass
class RunState:
    """Everything needed to continue a run: labeled/invalid sets, queries, rng, checkpoints."""

    strategy: str
    seed: int
    settings: dict[str, Any]
    completed_round: int = -1
    labeled_ids: list[int] = field(default_factory=list)
    labeled_labels: list[int] = field(default_factory=list)
    invalid_ids: list[int] = field(default_factory=list)
    queries: list[QueryRecord] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)
    rng_state: dict[str, Any] = field(default_factory=dict)
    checkpoints: dict[str, str] = field(default_factory=dict)
    carry_file: str | None = None
    skipped_ids: list[int] = field(default_factory=list)
    pending: PendingQuery | None = None
    version: int = STATE_VERSION
    # Strategy parameters this run was saved without (an older osal_ray): it keeps their legacy values.
    legacy_params: list[str] = field(default_factory=list)
    corrections: list[dict[str, Any]] = field(default_factory=list)  # labels changed after their round closed, applied
    # Torch's threads this trajectory computes with (sums depend on it); None: torch's default, as every
    # run did before the count was recorded.
    torch_threads: int | None = None

    def annotated_ids(self) -> np.ndarray:
        """Every sample a person (or the oracle) has answered for: no longer a candidate."""
        return np.asarray(self.labeled_ids + self.invalid_ids + self.skipped_ids, dtype=np.int64)

    def queried_ids(self) -> np.ndarray:
        """Every sample this run has queried, the open round's pending batch included."""
        pending = self.pending.ids if self.pending is not None else []
        return np.asarray([q.id for q in self.queries] + list(pending), dtype=np.int64)

    def labeled_or_invalid_ids(self) -> np.ndarray:
        """The annotated samples the networks learn from (skipped ones are not among them)."""
        return np.asarray(self.labeled_ids + self.invalid_ids, dtype=np.int64)

    def known_index(self, ids: np.ndarray) -> np.ndarray:
        """The recorded label of annotated ``ids``: 0..K-1 for known, -1 for invalid (unknown)."""
        lookup = dict(zip(self.labeled_ids, self.labeled_labels))
        invalid = set(self.invalid_ids)
        result = []
        for i in np.asarray(ids, dtype=np.int64).tolist():
            if i in lookup:
                result.append(lookup[i])
            elif i in invalid:
                result.append(-1)
            else:
                raise KeyError(f"sample {i} has no recorded label")
        return np.asarray(result, dtype=np.int64)

    def apply_correction(self, correction: Correction, round_index: int) -> bool:
        """Move a sample this run answered in ``correction.round`` to its corrected label (known class,
        invalid or skipped), once; recorded in ``corrections``. False when it does not concern this run."""
        if any(done["name"] == correction.name for done in self.corrections):
            return False
        if not any(q.id == correction.id and q.round == correction.round for q in self.queries):
            return False
        if correction.id in self.labeled_ids:
            position = self.labeled_ids.index(correction.id)
            del self.labeled_ids[position], self.labeled_labels[position]
        for ids in (self.invalid_ids, self.skipped_ids):
            if correction.id in ids:
                ids.remove(correction.id)
        if correction.answer >= 0:
            self.labeled_ids.append(correction.id)
            self.labeled_labels.append(correction.answer)
        elif correction.answer == UNKNOWN:
            self.invalid_ids.append(correction.id)
        else:
            self.skipped_ids.append(correction.id)
        self.corrections.append({"name": correction.name, "id": correction.id, "round": correction.round,
                                 "previous": correction.previous, "label": correction.label, "applied_in_round": round_index})
        return True

    def save(self, location: str) -> None:
        """Write the state atomically: a crash leaves the previous round's state intact."""
        storage.write_bytes(location, json.dumps(asdict(self), default=_json_default, allow_nan=True).encode())

    @classmethod
    def load(cls, location: str | Path) -> "RunState":
        """The state saved at ``location``; CorruptFile naming it when it is not one."""
        path = str(location)
        fix = "move it away to start this strategy and seed over"
        raw = storage.read_json(path, dict, "run state", fix)
        try:
            raw["queries"] = [QueryRecord(**q) for q in raw["queries"]]
            raw["rounds"] = [RoundRecord(**r) for r in raw["rounds"]]
            if raw.get("pending") is not None:
                raw["pending"] = PendingQuery(**raw["pending"])
            state = cls(**raw)
        except (KeyError, TypeError) as exc:
            raise CorruptFile(path, f"not a readable run state ({shown_error(exc)}); {fix}") from None
        if state.version != STATE_VERSION:
            raise InputError("--output-dir", f"{path} has state version {state.version}, expected {STATE_VERSION}")
        return state


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old or the new file, never a mix."""
    storage.write_bytes(path, text.encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


# Where the data is and how it is laid out on disk, not what it is: a run may move with its data.
DATA_LOCATION_KEYS = ("root", "download", "verify_checksums", "pool_files")
# What decides the CLIP model's scores (not its batch size or whether it may be downloaded).
CLIP_IDENTITY_KEYS = ("model_name", "checkpoint", "pretrained", "model_config", "domain", "templates")


def run_settings(config: ExperimentConfig, plan: StrategyPlan, seed: int) -> dict[str, Any]:
    """The configuration values that decide a run's results.

    Resources (workers, actors, GPUs, Ray address), the output location, where the data lives,
    which checkpoints are kept and the number of rounds are left out: a run may resume on other
    hardware, with its data moved, keeping more or fewer checkpoints, or be extended with more
    rounds. Strategy parameters are compared resolved, so spelling out a default is no
    difference; the CLIP model counts where the run uses it.
    """
    full = config.to_dict()
    train = {k: v for k, v in full["train"].items()
             if k not in ("num_workers", "use_gpu", "cpus_per_worker", "checkpoint_every", "max_failures", "keep_checkpoints")}
    settings = {
        "strategy": plan.name,
        "seed": seed,
        "params": plan.params.to_dict(),
        "data": {k: v for k, v in full["data"].items() if k not in DATA_LOCATION_KEYS},
        "budget": full["al"]["budget"],
        "model": full["model"],
        "train": train,
        "detector": full["detector"],
    }
    if config.features.extractor is not None:
        from osal_ray.features import features_identity

        settings["features"] = features_identity(config, None)
    if plan.uses_clip:
        from osal_ray.data.clip_store import clip_weights_digest

        settings["clip"] = {**{k: full["clip"][k] for k in CLIP_IDENTITY_KEYS}, "weights_digest": clip_weights_digest(config.clip)}
    return settings


def _only_keys_of(saved: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """``saved`` restricted to the keys ``wanted`` has (an older osal_ray compared more keys)."""
    return {
        key: _only_keys_of(saved[key], value) if isinstance(value, dict) and isinstance(saved[key], dict) and key != "params"
        else saved[key]
        for key, value in wanted.items()
        if key in saved
    }


def _fill_missing(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    filled = dict(saved)
    for key, value in defaults.items():
        if key not in filled:
            filled[key] = value
        elif isinstance(value, dict) and isinstance(filled[key], dict):
            filled[key] = _fill_missing(filled[key], value)
    return filled


# The run-settings sections that are config sections (their keys added later declare legacy values).
SETTINGS_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "detector": DetectorConfig,
                     "clip": ClipConfig}


def legacy_settings(plan: StrategyPlan) -> dict[str, Any]:
    """Run settings a saved run may lack because they were added later, each with its legacy value:
    the value that reproduces how runs behaved before the key existed (``config.added_later``)."""
    settings = {section: values for section, cls in SETTINGS_SECTIONS.items() if (values := legacy_values(cls))}
    return {**settings, "params": type(plan.params).legacy()}


def adopt_legacy_params(state: RunState, plan: StrategyPlan) -> None:
    """Record in ``state`` the legacy value of every strategy parameter it was saved without (it keeps
    it: a parameter added to a strategy never changes a saved run's rule)."""
    params = state.settings.setdefault("params", {})
    for key, value in type(plan.params).legacy().items():
        if key not in params:
            params[key] = json.loads(json.dumps(value, default=_json_default))
            state.legacy_params.append(key)


def resumed_plan(config: ExperimentConfig, plan: StrategyPlan, state: RunState | None) -> StrategyPlan:
    """The plan a trajectory runs with: ``plan``, with the legacy values its saved state keeps."""
    if state is None or not state.legacy_params:
        return plan
    kept = {key: state.settings["params"][key] for key in state.legacy_params}
    if all(getattr(plan.params, key) == value for key, value in kept.items()):
        return plan
    return plan_strategy(config, plan.name, {**plan.params.to_dict(), **kept})


def describe_difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two settings dicts."""
    keys = sorted(set(old) | set(new))
    differences = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            differences += describe_difference(a, b, dotted + ".")
        elif a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
            differences.append(f"{dotted} ({a!r} -> {b!r})")
    return differences


# What every trajectory of one output directory shares, whatever its strategy and seed.
SHARED_SETTINGS = ("data", "budget", "model", "train", "detector")


def open_run_state(location: str, config: ExperimentConfig, plan: StrategyPlan, seed: int,
                   shared_only: bool = False) -> RunState | None:
    """The saved state of ``plan``'s strategy and ``seed``, None if there is none; InputError if it
    was made differently.

    ``shared_only``: compare only what all trajectories of a directory share (for a trajectory the
    config does not name: it stays in the directory's tables, so it must be comparable).
    """
    if not storage.exists(location):
        return None
    state = RunState.load(location)
    adopt_legacy_params(state, plan)
    # Compare through JSON so that tuples and lists, ints and floats compare as they were saved.
    wanted = json.loads(json.dumps(run_settings(config, plan, seed), default=_json_default))
    given = config.strategy_params.get(plan.name, {})
    wanted["params"].update({key: state.settings["params"][key] for key in state.legacy_params if key not in given})
    # A key the saved run did not know yet (an older osal_ray) counts as its legacy value, else as its
    # default (a key older than the first release that recorded every parameter).
    default_config = ExperimentConfig()
    defaults = json.loads(json.dumps(run_settings(default_config, plan_strategy(default_config, plan.name), seed),
                                     default=_json_default))
    if shared_only:
        wanted = {k: v for k, v in wanted.items() if k in SHARED_SETTINGS}
    saved_clip = state.settings.get("clip")
    if isinstance(saved_clip, dict) and "weights_digest" not in saved_clip and "clip" in wanted:
        # Saved before CLIP weights were compared by content: the path is all it recorded.
        saved_clip["weights_digest"] = wanted["clip"]["weights_digest"]
    saved = _fill_missing(_fill_missing(state.settings, legacy_settings(plan)), defaults)
    differences = describe_difference(_only_keys_of(saved, wanted), wanted)
    if differences:
        made = ("made with other settings" if not shared_only else "made with other shared settings (every strategy and "
                "seed of one directory shares data, budget, model, training and detector)")
        raise InputError(
            "--output-dir",
            f"{location} holds a {plan.name} seed {seed} run {made}: {'; '.join(differences[:5])}. "
            "Use another --output-dir, or delete it to start over",
        )
    return state


def saved_trajectories(storage_root: str) -> list[tuple[str, int]]:
    """(strategy, seed) of every run state under ``<storage_root>/runs``."""
    return [(strategy, seed) for strategy, seed, _ in _state_files(storage_root)]


def _state_files(storage_root: str) -> list[tuple[str, int, str]]:
    import pyarrow.fs as pafs

    runs = storage.join(storage_root, "runs")
    filesystem, path = storage.resolve(runs)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return []
    found = []
    for info in filesystem.get_file_info(pafs.FileSelector(path, recursive=True)):
        parts = info.path.rstrip("/").split("/")
        if info.type == pafs.FileType.File and parts[-1] == STATE_FILE and parts[-2].startswith("seed_") and parts[-2][5:].isdigit():
            found.append((parts[-3], int(parts[-2][5:]), info.path))
    return sorted(found)
