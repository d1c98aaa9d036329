"""Staging and publishing of one subject/session's outputs (kill-safe, concurrent-safe).

Each subject/session is written to a private staging folder inside ``OUTPUT_DIR`` and moved
into place by one atomic rename only when complete, so a failed or killed run never leaves
outputs a rerun would trust, and one subject's failure never touches another subject's
outputs. A staging folder is locked (``flock``) by the job using it; the kernel drops the
lock when the job dies, even by SIGKILL, so the next run removes what a killed run left
behind without touching the folders of jobs still running on the same ``OUTPUT_DIR``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: stale staging folders are left alone
    fcntl = None

from bids_app.errors import OutputError

logger = logging.getLogger(__name__)

#: hidden folder of OUTPUT_DIR holding subjects being written (ignored by BIDS tools)
STAGING = ".msqmri-staging"


def unit_dir(root: Path, subject: str, session: str | None) -> Path:
    """``root/sub-<l>[/ses-<s>]``."""
    d = root / f"sub-{subject}"
    return d / f"ses-{session}" if session else d


def publish(stage_root: Path, out: Path, subject: str, session: str | None) -> None:
    """Move a finished subject/session from staging into the output (atomic rename).

    A copy already in place (an older run, or a concurrent job on the same subject) is moved
    into ``stage_root`` first, from where it is deleted with the staging folder; the rename is
    retried if a concurrent job publishes the same subject/session in between.

    Raises
    ------
    OutputError
        If the staging folder is gone (removed by another process: a file system whose locks
        do not reach across hosts), or another job keeps replacing the destination (exit 73).
    """
    if not stage_root.is_dir():
        raise OutputError(f"{stage_root}: the staging folder was removed by another process")
    src, dst = unit_dir(stage_root, subject, session), unit_dir(out, subject, session)
    if not src.is_dir():
        return  # nothing written for this subject (no inputs)
    dst.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(20):
        try:
            os.replace(src, dst)  # fails when dst is a non-empty directory
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        with contextlib.suppress(FileNotFoundError):  # a concurrent job moved it already
            os.replace(dst, stage_root / f".replaced-{attempt}")
    raise OutputError(f"{dst}: cannot be replaced (another job keeps publishing it)")


def _lock(fd: int) -> bool | None:
    """Try an exclusive non-blocking ``flock`` on ``fd``.

    Returns
    -------
    bool or None
        True if taken, False if another process holds it, None if the file system (or the
        platform) has no locks.
    """
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP: no locks on this file system
        return None
    return True


def open_stage(out: Path, label: str) -> tuple[Path, int]:
    """Create a private staging folder ``OUTPUT_DIR/.msqmri-staging/<label>-<id>``.

    Its lock file ``<label>-<id>.lock`` is created and locked *before* the folder, and stays
    locked (the returned descriptor) until :func:`close_stage`.
    """
    root = out / STAGING
    for _ in range(20):
        stage = root / f"{label}-{uuid.uuid4().hex[:12]}"
        lock = stage.with_name(stage.name + ".lock")
        root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileNotFoundError:  # another job removed the empty staging root meanwhile
            continue
        if _lock(fd) is not False:
            with contextlib.suppress(FileNotFoundError):
                # a cleaner may have taken the fresh lock file for stale and unlinked it
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    stage.mkdir()
                    return stage, fd
        os.close(fd)
    raise OutputError(f"{root}: cannot create a staging folder")


def close_stage(stage: Path, fd: int) -> None:
    """Delete a staging folder, then its lock file, then release the lock."""
    try:
        shutil.rmtree(stage, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stage.with_name(stage.name + ".lock"))
    finally:
        os.close(fd)


def remove_stale_stages(out: Path) -> list[str]:
    """Delete the staging folders of killed runs; leave those of running jobs alone.

    A folder is stale when its lock file can be locked (its job is gone) or when it has no
    lock file (jobs lock before they create their folder). Where the file system has no
    locks, nothing is removed.

    Returns
    -------
    list of str
        Names of the removed folders.
    """
    root = out / STAGING
    try:
        entries = sorted(root.iterdir())
    except OSError:  # no staging folder (the usual case)
        return []
    removed = []
    for entry in entries:
        if entry.name.endswith(".lock"):
            stage = entry.with_name(entry.name[: -len(".lock")])
            try:
                fd = os.open(entry, os.O_RDONLY)  # flock needs no write permission
            except OSError:  # gone meanwhile, or not ours to read
                continue
            try:
                if _lock(fd) is not True:
                    continue
                shutil.rmtree(stage, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.unlink(entry)
                removed.append(stage.name)
            finally:
                os.close(fd)
        elif entry.is_dir() and not entry.with_name(entry.name + ".lock").exists():
            if fcntl is not None:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    for name in removed:
        logger.info("removed %s/%s left by an interrupted run", STAGING, name)
    return removed


def move_reports(stage: Path, out: Path) -> None:
    """Move the reports and figures of a finished subject from staging into the output."""
    for html in stage.glob("*.html"):
        os.replace(html, out / html.name)
    figs = stage / "figures"
    if figs.is_dir():
        (out / "figures").mkdir(exist_ok=True)
        for f in figs.iterdir():
            os.replace(f, out / "figures" / f.name)
