"""Logging set-up: one line per message on stderr, everything (tracebacks too) in the log file."""

from __future__ import annotations

import logging
from pathlib import Path

_FMT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbosity: int = 0, logfile: Path | None = None) -> logging.Logger:
    """Configure the ``bids_app`` logger; called only by the CLI entry points.

    Parameters
    ----------
    verbosity : int
        0 INFO summary lines, 1 more details, 2 DEBUG.
    logfile : Path, optional
        File receiving DEBUG messages and tracebacks.
    """
    root = logging.getLogger("bids_app")
    for handler in list(root.handlers):  # close the previous run's log file
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG)
    err = logging.StreamHandler()
    err.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    err.setFormatter(logging.Formatter("msqmri %(levelname)s: %(message)s"))
    err.addFilter(lambda rec: not getattr(rec, "file_only", False))
    root.addHandler(err)
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(logfile, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter(_FMT))
        root.addHandler(fh)
    for noisy in ("bids", "dipy", "nibabel"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return root
