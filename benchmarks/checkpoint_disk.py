"""How much checkpoint disk one sweep trial uses with ``train.keep_checkpoints: all`` and ``last``.

For each trial of the job's sweep (every combination of its swept values; the ends of a range),
this builds the real network of every recipe of every strategy the trial runs (``plan_strategy``:
the strategy's heads and model kwargs), gives it the optimizer state a run leaves behind (SGD
with the job's momentum after one step: a momentum buffer per trainable parameter) and writes
the checkpoint with the training loop's own writer (``model.pt`` + ``train_state.pt``, what a Ray
Train run keeps at the end of a round; Ray Train adds ~1 KB of its own per run). No training, no
data: the input shape comes from the dataset (or ``--input``).

A trial runs every strategy x seed of its config, one trajectory after another; each trajectory
trains each network in rounds 0..al.rounds (a ``once`` network, e.g. MQNet's encoder, in round 0
only). ``all`` keeps every one of those runs; ``last`` keeps one run per network per trajectory.
While a trajectory trains a round under ``last``, its previous round's runs are still there (they
go once the round's state is saved), and with ``train.checkpoint_every`` a run briefly holds two
checkpoints (Ray Train writes the next before deleting the last): the "peak" column.
Writes ``benchmarks/results/checkpoint_disk.md``.

    python benchmarks/checkpoint_disk.py [--config jobs/sweep_cifar10_mismatch.yaml] [--set key=value ...] [--input C,SIDE]
"""

from __future__ import annotations

import argparse
import itertools
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from osal_ray.config import ExperimentConfig, load_config
from osal_ray.experiment.plan import plan_strategy
from osal_ray.models import model_input
from osal_ray.sweep import _representatives, is_sweep, variant_config
from osal_ray.training.checkpoints import NetworkSpec
from osal_ray.training.recipe import NetworkRecipe
from osal_ray.training.worker import _write_checkpoint

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# (channels, side, classes) of the built-in datasets, so that no data has to be read.
DATASET_SHAPES = {"cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "digits": (1, 8, 10), "fashion_mnist": (1, 28, 10)}
RAY_TRAIN_FILES = 1024  # checkpoint_manager_snapshot.json (~0.7 KB) + .validate_storage_marker, per run (Ray 2.60)


@dataclass
class Network:
    strategy: str
    name: str
    model: str
    once: bool
    parameters: int
    model_bytes: int
    train_state_bytes: int

    @property
    def checkpoint_bytes(self) -> int:
        return self.model_bytes + self.train_state_bytes + RAY_TRAIN_FILES


@dataclass
class Trial:
    label: str
    config: ExperimentConfig
    networks: list[Network]

    @property
    def trajectories(self) -> int:
        return len(self.config.seeds) * len(self.config.strategies)

    def runs(self, keep: str) -> int:
        """Training runs left on disk at the end of the trial."""
        rounds = self.config.al.rounds + 1  # round 0 included
        per_seed = sum(1 if keep == "last" or n.once else rounds for n in self.networks)
        return per_seed * len(self.config.seeds)

    def disk(self, keep: str) -> int:
        rounds = self.config.al.rounds + 1
        per_seed = sum(n.checkpoint_bytes * (1 if keep == "last" or n.once else rounds) for n in self.networks)
        return per_seed * len(self.config.seeds)

    def peak_last(self) -> int:
        """Most disk at once under ``last``. Trajectories run one after another (seed by seed, strategy by
        strategy); while one trains a round, the finished ones' kept runs, its own previous round's runs
        and its new runs are on disk (a new run at two checkpoints while ``checkpoint_every`` replaces one)."""
        c = self.config
        transient = 2 if c.train.checkpoint_every and c.train.num_workers >= 1 else 1
        kept = {s: sum(n.checkpoint_bytes for n in self.networks if n.strategy == s) for s in c.strategies}
        retrained = {s: sum(n.checkpoint_bytes for n in self.networks if n.strategy == s and not n.once) for s in c.strategies}
        peak, finished = 0, 0
        for _seed in c.seeds:
            for s in c.strategies:
                round_0 = transient * kept[s]  # every network trains; nothing of this trajectory before
                later = kept[s] + transient * retrained[s]
                peak = max(peak, finished + max(round_0, later))
                finished += kept[s]
        return peak


def trials(config: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """(label, experiment) of every trial the job runs: each combination of its swept values."""
    if not is_sweep(config):
        return [("the job", config)]
    space = config.sweep.space
    base = config.to_dict()
    combos = itertools.product(*(_representatives(key, spec) for key, spec in space.items()))
    return [(", ".join(f"{k}={v}" for k, v in zip(space, values)), variant_config(base, dict(zip(space, values))))
            for values in combos]


def input_shape(config: ExperimentConfig, given: str | None) -> tuple[int, int, int]:
    """(channels, side, number of classes) of the job's images."""
    data = config.data
    if given:
        channels, side = (int(v) for v in given.split(","))
        return channels, side, data.num_classes
    if data.dataset in DATASET_SHAPES:
        return DATASET_SHAPES[data.dataset]
    return data.channels or 3, data.image_size, data.num_classes


def num_known(config: ExperimentConfig, classes: int) -> int:
    data = config.data
    if data.mismatch_ratio is not None:
        return int(round(data.mismatch_ratio * classes))
    if isinstance(data.known_classes, int):
        return data.known_classes
    if isinstance(data.known_classes, list):
        return len(data.known_classes)
    raise SystemExit("data.known_classes is not set: give a count, a list or data.mismatch_ratio")


def measure(recipe: NetworkRecipe, strategy: str, channels: int, side: int, known: int, folder: Path) -> Network:
    """Build ``recipe``'s network, give it one SGD step's optimizer state and write its checkpoint as a run does."""
    if model_input(recipe.model) != "image":
        raise SystemExit(f"{strategy}'s {recipe.name} reads the stored column {model_input(recipe.model)!r}; "
                         "this script measures image models only")
    spec = NetworkSpec(recipe.model, recipe.num_outputs(known), channels, side, dict(recipe.model_kwargs),
                       head=recipe.head, head_kwargs=dict(recipe.head_kwargs))
    model = spec.build()
    train = recipe.train
    # The training loop's optimizer and schedule; a zero gradient on every trainable parameter makes SGD
    # create the momentum buffers a trained run holds (an upper bound where an objective leaves some unused).
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=train.lr_step, gamma=train.lr_gamma)
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    scheduler.step()
    target = folder / f"{strategy}-{recipe.name}"
    target.mkdir()
    _write_checkpoint(target, SimpleNamespace(spec=spec), model, optimizer, scheduler, train.epochs)
    return Network(strategy, recipe.name, recipe.model, recipe.once, sum(p.numel() for p in model.parameters()),
                   (target / "model.pt").stat().st_size, (target / "train_state.pt").stat().st_size)


def measure_trial(label: str, config: ExperimentConfig, given_input: str | None, cache: dict) -> Trial:
    channels, side, classes = input_shape(config, given_input)
    known = num_known(config, classes)
    networks = []
    with tempfile.TemporaryDirectory(prefix="checkpoint-disk-") as tmp:
        for strategy in config.strategies:
            for recipe in plan_strategy(config, strategy).networks:
                key = (recipe.model, repr(recipe.model_kwargs), recipe.head, repr(recipe.head_kwargs),
                       recipe.num_outputs(known), channels, side, recipe.train.momentum)
                if key not in cache:
                    cache[key] = measure(recipe, strategy, channels, side, known, Path(tmp))
                found = cache[key]
                networks.append(Network(strategy, recipe.name, recipe.model, recipe.once, found.parameters,
                                        found.model_bytes, found.train_state_bytes))
    return Trial(label, config, networks)


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def report(job: str, trial_list: list[Trial], seconds: float) -> str:
    first = trial_list[0]
    c = first.config
    lines = [
        f"# Checkpoint disk per trial: `{job}`",
        "",
        f"{len(trial_list)} trial(s); each runs {len(c.strategies)} strategies x {len(c.seeds)} seeds = {first.trajectories} "
        f"trajectories of {c.al.rounds} rounds (+ round 0), `train.checkpoint_every: {c.train.checkpoint_every}`, "
        f"`train.momentum: {c.train.momentum}`.",
        "",
        f"## One checkpoint (a Ray Train run at the end of a round; {first.label})",
        "",
        "| strategy | network | model | parameters | model.pt | train_state.pt | run total |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for n in first.networks:
        lines.append(f"| {n.strategy} | {n.name}{' (once)' if n.once else ''} | {n.model} | {n.parameters:,} | {mb(n.model_bytes)} | "
                     f"{mb(n.train_state_bytes)} | {mb(n.checkpoint_bytes)} |")
    lines += [
        "",
        "## Per trial",
        "",
        "| trial | runs kept, `all` | disk, `all` (before) | runs kept, `last` | disk, `last` (after) "
        "| peak while training, `last` | saved |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in trial_list:
        lines.append(f"| {t.label} | {t.runs('all')} | {gb(t.disk('all'))} | {t.runs('last')} | {gb(t.disk('last'))} | "
                     f"{gb(t.peak_last())} | {1 - t.disk('last') / t.disk('all'):.0%} |")
    total_all, total_last = sum(t.disk("all") for t in trial_list), sum(t.disk("last") for t in trial_list)
    lines += [
        "",
        f"Whole sweep ({len(trial_list)} trials): {gb(total_all)} with `all`, {gb(total_last)} with `last`.",
        "",
        "`all` keeps every round's run of every network (the behaviour before `train.keep_checkpoints`); `last` keeps "
        "each network's latest run per trajectory (a `once` network's round-0 run), what a resume or an extension "
        "with more rounds needs. Peak: the other trajectories' kept runs plus, for the trajectory in training, its "
        "previous round's runs and the new ones"
        + (" at two checkpoints each (`checkpoint_every` replaces a checkpoint by writing the next first)." if c.train.checkpoint_every
           else "."),
        "",
        "Bytes per checkpoint are measured: the real network of each recipe written by the training loop's own "
        "checkpoint writer after one SGD step (momentum buffers for every trainable parameter); ~1 KB of Ray Train "
        "files per run added. Counts follow `osal_ray.sweep` (a trial is one variant config, every strategy x seed).",
        "",
        f"Measured in {seconds:.0f} s on {platform.processor() or platform.machine()}, torch {torch.__version__}; "
        f"`python benchmarks/checkpoint_disk.py --config {job}`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="jobs/sweep_cifar10_mismatch.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--input", help="C,SIDE of the images, for a dataset this script does not know")
    parser.add_argument("--output", default=str(RESULTS / "checkpoint_disk.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    path = Path(args.config) if Path(args.config).is_file() else REPO / args.config
    config = load_config(path, args.overrides)
    cache: dict = {}
    trial_list = [measure_trial(label, variant, args.input, cache) for label, variant in trials(config)]
    text = report(args.config, trial_list, time.perf_counter() - started)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
