"""Command line: ``python -m osal_ray.run [--config JOB.yaml] [--set key=value ...] [--output-dir DIR]``.

Without arguments it runs the default job (digits, 2 known classes) on an embedded Ray.
``osal-ray label OUTPUT_DIR FILE.csv`` stages human labels (see ``osal_ray.label``).
With RAY_ADDRESS set, or under ``ray job submit``, it joins that cluster instead.
Bad input exits with code 2 and a message naming the field, before Ray starts.
"""

from __future__ import annotations

import argparse
import sys

from osal_ray.errors import InputError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m osal_ray.run", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="a job YAML file (see jobs/); defaults are used without one")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override a config key, e.g. --set al.rounds=3 --set strategies=[random,entropy] (repeatable)",
    )
    parser.add_argument("--output-dir", help="where outputs and resumable state go (default outputs/<name>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the experiment a config describes; returns the process exit code.

    ``osal-ray label OUTPUT_DIR FILE.csv`` (the console script's subcommand) is ``python -m osal_ray.label``.
    """
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["label"]:
        from osal_ray.label import main as label_main

        return label_main(argv[1:])
    args = parse_args(argv)
    from osal_ray.config import load_config
    from osal_ray.sweep import is_sweep

    try:
        config = load_config(args.config, args.overrides)
        if args.output_dir:
            config.output_dir = args.output_dir
        if is_sweep(config):
            from osal_ray.sweep import check_sweep

            check_sweep(config)
        else:
            from osal_ray.experiment.runner import prepare_experiment

            prepared = prepare_experiment(config)
    except InputError as exc:
        print(f"osal_ray: error: {exc}", file=sys.stderr)
        return 2

    if not is_sweep(config) and prepared.waiting is not None:
        from osal_ray.experiment.runner import run_experiment

        run_experiment(prepared)  # says what is missing, starts no Ray
        return 0
    from osal_ray.cluster import connect_ray

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
