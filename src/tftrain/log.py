"""What tftrain says: library code logs through the `tftrain` logger (`logging.getLogger(__name__)` in each
module) and never prints; whoever runs it decides what is shown. The CLI, a Ray worker and the test suite call
`setup`; a program that imports tftrain configures logging as it likes (Python's default shows warnings only).

Where `setup` sends it: information on stdout, beside the results the CLI prints there; warnings and errors on
stderr, prefixed `warning: `; and the `tftrain.progress` logger's lines (counting files, reading images,
predicting) on stderr, so that a command whose stdout is data (`tftrain predict`) keeps it clean.
"""

from __future__ import annotations

import logging
import sys

ROOT = "tftrain"
progress_log = logging.getLogger(f"{ROOT}.progress")  # transient progress lines: stderr


class _Console(logging.Handler):
    """Writes to sys.stdout or sys.stderr as they are at each record (tests and Ray swap them), flushed at once so
    that the lines keep their order with what native code writes."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            to_stderr = record.levelno >= logging.WARNING or record.name.startswith(progress_log.name)
            stream = sys.stderr if to_stderr else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 (logging's own contract: a failing handler reports, never raises)
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"warning: {text}" if record.levelno == logging.WARNING else text


def setup(verbose: bool = False) -> None:
    """Show tftrain's messages on the console; `verbose` adds its debug lines. Idempotent: one handler."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, _Console)]:
        logger.removeHandler(handler)
    handler = _Console()
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False  # not twice, when a program also configures the root logger
