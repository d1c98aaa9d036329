"""Helpers of the durability tests: run msqmri in or out of process, kill it, compare trees.

Outputs are compared file by file through SHA-256 digests. The only files allowed to differ
between two runs on the same inputs are the per-run log folders ``logs/run-<time>-<id>/``
(their names and the time stamps in ``msqmri.log``), which :func:`snapshot` leaves out.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bids_app.cli.run import main
from bids_app.staging import STAGING

logger = logging.getLogger(__name__)

#: seconds a subprocess run may take before the test gives up on it (a hang, not a timing)
PROCESS_TIMEOUT = 300
#: participant-level files outside the subject folders
PARTICIPANT_LEVEL_ROOT = (".bidsignore", "dataset_description.json")


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(tmp_path_factory, name: str, build: Callable[[Path], dict]) -> tuple[Path, dict]:
    """Build ``name`` once per test session, shared by the pytest-xdist workers.

    The first worker calls ``build(path)`` (which returns JSON-able information) while the
    others wait for it; everyone gets ``(path, information)``. Users must not modify
    ``path`` (copy it first).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session folder shared by the workers
    target, info = root / name, root / f"{name}.json"
    with _exclusive(root / f"{name}.lock"):
        if not info.exists():
            if target.exists():  # a build interrupted by an error
                shutil.rmtree(target)
            info.write_text(json.dumps(build(target)))
    return target, json.loads(info.read_text())


def app_args(bids: Path, out: Path, *levels_and_options: str) -> list[str]:
    """Command-line arguments of a run with the lesion derivatives, without validation."""
    return [
        str(bids),
        str(out),
        *levels_and_options,
        "--skip-bids-validation",
        "--derivatives",
        f"lesions={bids / 'derivatives' / 'lesions'}",
    ]


def run_app(bids: Path, out: Path, *levels_and_options: str) -> int:
    """Run msqmri in this process; return its exit code."""
    return main(app_args(bids, out, *levels_and_options))


def start_app(bids: Path, out: Path, log: Path, *levels_and_options: str) -> subprocess.Popen:
    """Start ``python -m bids_app ...`` in a subprocess, stderr going to ``log``."""
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "bids_app", *app_args(bids, out, *levels_and_options)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def wait_for(proc: subprocess.Popen, condition: Callable[[], bool]) -> bool:
    """Poll every 5 ms until ``condition()`` holds or ``proc`` ends.

    Returns
    -------
    bool
        Whether the condition held while the process was still running.
    """
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            return proc.poll() is None
        time.sleep(0.005)
    return False


def kill(proc: subprocess.Popen) -> int:
    """SIGKILL the process (it has no children: ``--nprocs 1``) and reap it."""
    proc.kill()
    return proc.wait(PROCESS_TIMEOUT)


def snapshot(root: Path, *, group: bool = True) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below ``root``, hidden ones included.

    ``logs/`` is left out (one folder per run, named by its start time). With
    ``group=False`` only the participant-level files are kept.
    """
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel.startswith("logs/"):
            continue
        if not group and not (rel.startswith("sub-") or rel in PARTICIPANT_LEVEL_ROOT):
            continue
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def differences(found: dict[str, str], expected: dict[str, str]) -> str:
    """A readable list of missing, unexpected and changed files (empty when equal)."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    changed = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    lines = [f"missing: {p}" for p in missing] + [f"unexpected: {p}" for p in extra]
    return "\n".join(lines + [f"changed: {p}" for p in changed])


def subject_folders(out: Path) -> list[Path]:
    """The published ``sub-*`` folders of an output directory."""
    return sorted(p for p in out.glob("sub-*") if p.is_dir())


def staged_table_exists(out: Path) -> bool:
    """Whether a subject in staging already has its regions table (it is about to move)."""
    return any((out / STAGING).glob("*/sub-*/*_desc-regions_stats.tsv"))


def stderr_of(log: Path) -> str:
    """What a subprocess wrote to stderr (for assertion messages)."""
    return log.read_text(errors="replace") if log.exists() else ""
