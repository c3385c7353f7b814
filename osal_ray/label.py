"""``python -m osal_ray.label OUTPUT_DIR FILE.csv``: check a label file and stage it for the open round.

FILE.csv has a header with ``label`` and ``key`` (or ``path``) columns; extra columns are ignored
and rows with an empty label are left for later (a partly filled ``labels_template.csv`` is fine).
A label is a known class name, the unknown label, or ``skip``. Any problem (a key or path not
queried in the open round, one key with two labels, a label outside the allowed set, a missing
column, an empty or non-UTF-8 file) is exit code 2 with every bad row named, and nothing is
staged. Accepted labels are staged durably; run the experiment command again once every queried
image has a label.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from osal_ray.annotation.staging import stage_labels
from osal_ray.errors import InputError


def stage_label_file(output_dir: Path, label_file: Path) -> tuple[int, int, dict]:
    """Validate ``label_file`` against the open round of ``output_dir`` and stage it.

    Returns (labels staged, round, the new status). InputError for anything wrong; nothing is
    written then.
    """
    from osal_ray.annotation.labels import read_label_file

    _check_run_dir(output_dir)
    return stage_labels(output_dir, lambda: read_label_file(label_file), str(label_file), str(label_file.resolve()),
                        purpose=f"osal_ray.label {label_file}")


def _check_run_dir(output_dir: Path) -> None:
    if not (output_dir / "config.yaml").is_file():
        raise InputError("OUTPUT_DIR", f"{output_dir} holds no osal_ray run (no config.yaml)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m osal_ray.label", description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the run's output directory")
    parser.add_argument("label_file", metavar="FILE.csv", help="labels: key,label or path,label")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        staged, round_index, status = stage_label_file(Path(args.output_dir).resolve(), Path(args.label_file))
    except InputError as exc:
        print(f"osal_ray.label: error: {exc}", file=sys.stderr)
        return 2
    done = "complete: run the experiment command again to import them" if not status["missing"] else \
        f"{status['missing']} still missing"
    print(f"round {round_index}: staged {staged} label(s); {status['labeled']}/{status['queried']} labeled, {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
