"""The run log: everything a run prints (its tables, progress, warnings, forwarded worker lines) also
goes to ``<output_dir>/run.log``, appended, one header per invocation, colour codes stripped."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, TextIO

RUN_LOG = "run.log"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Tee:
    """A text stream that writes to the terminal stream and to the log file."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._log.write(_ANSI.sub("", text))
        self._log.flush()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding...: the terminal's
        return getattr(self._stream, name)


def _teed_by_ray(ray_logger: logging.Logger, ours: logging.Handler) -> bool:
    """Whether one of Ray's own handlers already writes into the teed stderr (Ray makes it again when
    ``ray.init`` runs inside the run log): then the record reaches the log through it, and ours would
    write it twice."""
    return any(isinstance(getattr(h, "stream", None), _Tee) for h in ray_logger.handlers if h is not ours)


@contextlib.contextmanager
def run_log(output_dir: Path, argv: list[str]) -> Iterator[Path]:
    """Copy stdout, stderr, Python warnings and Ray's driver-side log records to ``output_dir/run.log``."""
    path = Path(output_dir) / RUN_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} on {socket.gethostname()}: "
                  f"osal-ray {' '.join(argv)}\n")
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(stdout, log), _Tee(stderr, log)
        # Ray's own logger writes through a handler made at import time, not through sys.stderr.
        handler = logging.StreamHandler(log)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ray_logger = logging.getLogger("ray")
        handler.addFilter(lambda record: not _teed_by_ray(ray_logger, handler))
        ray_logger.addHandler(handler)
        try:
            yield path
        finally:
            ray_logger.removeHandler(handler)
            sys.stdout, sys.stderr = stdout, stderr
