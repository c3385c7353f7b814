"""Command line: ``python -m osal_ray.run [--config JOB.yaml] [--set key=value ...] [--output-dir DIR]``.

Without arguments it runs the default job (digits, 2 known classes) on an embedded Ray.
``osal-ray label OUTPUT_DIR FILE.csv`` stages human labels (see ``osal_ray.label``); ``osal-ray serve ...``
runs a job as an HTTP service (see ``osal_ray.serve``).
With RAY_ADDRESS set, or under ``ray job submit``, it joins that cluster instead.
Bad input exits with code 2 and a message naming the field, before Ray starts.
"""

from __future__ import annotations

import dataclasses

import argparse
import sys
from typing import TYPE_CHECKING

from osal_ray.errors import InputError

if TYPE_CHECKING:
    from osal_ray.config import ExperimentConfig
    from osal_ray.experiment.runner import PreparedExperiment


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="osal-ray", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="a job YAML file (see jobs/); defaults are used without one")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override a config key, e.g. --set al.rounds=3 --set strategies=[random,entropy] (repeatable)",
    )
    parser.add_argument("--output-dir", help="where outputs and resumable state go (default outputs/<name>)")
    parser.add_argument("--version", action="store_true", help="print the versions of osal_ray, Ray and PyTorch and exit")
    parser.add_argument("--list", choices=LISTABLE, metavar="{" + ",".join(LISTABLE) + "}",
                        help="print the registered strategies, datasets or models and exit")
    return parser.parse_args(argv)


LISTABLE = ("strategies", "datasets", "models")


def version_line() -> str:
    """osal_ray's version and those of the libraries that decide its behaviour."""
    from importlib.metadata import PackageNotFoundError, version

    import osal_ray

    parts = []
    for package in ("ray", "torch", "open_clip_torch"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} not installed")
    return f"osal_ray {osal_ray.__version__} ({', '.join(parts)})"


def registry_listing(kind: str) -> list[str]:
    """One line per registered entry of ``kind`` (strategies with their description and score columns)."""
    if kind == "strategies":
        from osal_ray.strategies import STRATEGIES

        rows = []
        for name in STRATEGIES:
            strategy = STRATEGIES.get(name)
            columns = ", ".join(strategy.required_columns()) or "-"
            summary = (strategy.description.strip().splitlines() or [""])[0]
            rows.append(f"{name:<18} {summary}  [scores: {columns}]")
        return rows
    if kind == "datasets":
        from osal_ray.data import DATASETS

        return list(DATASETS)
    from osal_ray.models import MODELS

    return list(MODELS)


def main(argv: list[str] | None = None) -> int:
    """Run the experiment a config describes; returns the process exit code.

    ``osal-ray label OUTPUT_DIR FILE.csv`` (the console script's subcommand) is ``python -m osal_ray.label``,
    ``osal-ray serve ...`` is ``python -m osal_ray.serve``.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["label"]:
        from osal_ray.label import main as label_main

        return label_main(argv[1:])
    if argv[:1] == ["serve"]:
        from osal_ray.serve import main as serve_main

        return serve_main(argv[1:])
    args = parse_args(argv)
    if args.version:
        print(version_line())
        return 0
    if args.list:
        print("\n".join(registry_listing(args.list)))
        return 0
    from osal_ray.config import load_config
    from osal_ray.sweep import is_sweep

    try:
        config = load_config(args.config, args.overrides)
        if args.output_dir:
            config = dataclasses.replace(config, output_dir=args.output_dir)
        if is_sweep(config):
            from osal_ray.sweep import check_sweep

            check_sweep(config)
        else:
            from osal_ray.experiment.runner import prepare_experiment

            prepared = prepare_experiment(config)
    except InputError as exc:
        print(f"osal_ray: error: {exc}", file=sys.stderr)
        return 2

    from osal_ray.runlog import run_log

    with run_log(config.resolved_output_dir().resolve(), argv):
        if not is_sweep(config) and prepared.waiting is not None:
            from osal_ray.experiment.runner import run_experiment

            run_experiment(prepared)  # says what is missing, starts no Ray
            return 0
        return _run(config, None if is_sweep(config) else prepared)


def _run(config: "ExperimentConfig", prepared: "PreparedExperiment | None") -> int:
    """Start or join Ray and run the experiment or sweep (inputs already checked)."""
    from osal_ray.cluster import connect_ray
    from osal_ray.sweep import is_sweep

    connect_ray(config.ray)
    try:
        if is_sweep(config):
            from osal_ray.sweep import run_sweep

            run_sweep(config)
        else:
            from osal_ray.experiment.runner import run_experiment

            run_experiment(prepared)
    except InputError as exc:
        print(f"osal_ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume after the last finished round", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
