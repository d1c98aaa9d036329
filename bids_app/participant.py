"""Participant level: the only place that wires the stages together for one subject/session.

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
from dataclasses import replace
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: stale staging folders are left alone
    fcntl = None

from bids_app.bids.derivatives import build_name, init_output
from bids_app.bids.layout import make_layout, select_subjects
from bids_app.bids.query import STRUCTURAL, find_volumes, resolve_model
from bids_app.config import RunConfig
from bids_app.errors import (
    MsqmriError,
    NoInputsError,
    OutputError,
    SelectionError,
    UsageError,
)
from bids_app.models import REGISTRY
from bids_app.stages import anatomy, maps, products, tables
from bids_app.stages.context import SubjectContext

logger = logging.getLogger(__name__)

NO_INPUTS = "no-inputs"
#: hidden folder of OUTPUT_DIR holding subjects being written (ignored by BIDS tools)
STAGING = ".msqmri-staging"


def _policy_off(cfg: RunConfig, req) -> bool:
    return req.policy == "b1" and cfg.b1_policy == "none"


def selected_models(cfg: RunConfig) -> list:
    """Model classes to run, producers before their consumers.

    The producers of what the selected models require are added (unless the run's policy
    switches the product off, e.g. ``--b1 none``); the order is the registry order, changed
    only where a consumer would come before its producer.

    Raises
    ------
    UsageError
        If the requirements form a cycle (a bug in a model's declaration).
    """
    names = list(cfg.models) or list(REGISTRY)
    queue = list(names)
    while queue:
        for req in REGISTRY[queue.pop(0)].requires:
            if req.model in REGISTRY and req.model not in names and not _policy_off(cfg, req):
                names.append(req.model)
                queue.append(req.model)
    ordered: list[str] = []
    pending = list(names)
    while pending:
        ready = [
            n
            for n in pending
            if all(r.model not in pending or r.model == n for r in REGISTRY[n].requires)
        ]
        if not ready:
            raise UsageError(f"models {pending} require each other's outputs (a cycle)")
        ordered.append(ready[0])
        pending.remove(ready[0])
    return [REGISTRY[n] for n in ordered]


def _unit_dir(root: Path, subject: str, session: str | None) -> Path:
    d = root / f"sub-{subject}"
    return d / f"ses-{session}" if session else d


def _publish(stage_root: Path, out: Path, subject: str, session: str | None) -> None:
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
    src, dst = _unit_dir(stage_root, subject, session), _unit_dir(out, subject, session)
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


def _open_stage(out: Path, label: str) -> tuple[Path, int]:
    """Create a private staging folder ``OUTPUT_DIR/.msqmri-staging/<label>-<id>``.

    Its lock file ``<label>-<id>.lock`` is created and locked *before* the folder, and stays
    locked (the returned descriptor) until :func:`_close_stage`.
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


def _close_stage(stage: Path, fd: int) -> None:
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


def _done_marker(out: Path, subject: str, session: str | None) -> Path:
    ents = {"subject": subject, "session": session, "desc": "regions"}
    return _unit_dir(out, subject, session) / build_name(ents, "stats", ".tsv")


def run_subject(
    cfg: RunConfig, layout, derivative_layouts, subject: str, session: str | None
) -> str:
    """Process one subject/session into ``cfg.output_dir`` (a staging root). Return status."""
    ctx = SubjectContext(cfg, layout, derivative_layouts, subject, session)
    anatomy.choose_reference(ctx)
    runs = []
    for model in selected_models(cfg):
        found = resolve_model(layout, model, subject, session, cfg.bids_filters)
        if not found:
            ctx.skipped.append(f"{model.name}: no inputs")
            logger.debug("%s: %s skipped (no inputs)", ctx.label, model.name)
        runs += found
    if not runs and ctx.grid is None:
        logger.info("%s: skipped, no input of any selected model and no FLAIR/T1w/T2w", ctx.label)
        return NO_INPUTS
    if ctx.grid is not None:
        anatomy.find_masks(ctx)
    products.add_anatomy_products(ctx)
    for run in runs:
        maps.fit_run(ctx, run)
    if ctx.grid is not None:
        maps.to_reference(ctx)
        tables.summarise(ctx)
    else:
        logger.warning(
            "%s: no structural reference image: maps are written natively, no region tables",
            ctx.label,
        )
    if cfg.reports:
        try:
            from bids_app.reports.html import participant_report

            participant_report(ctx)
        except Exception:  # reports never fail a run (NiPreps habit)
            logger.warning("%s: report failed (see log)", ctx.label)
            logger.debug("report traceback", exc_info=True, extra={"file_only": True})
    return "ok"


def _input_queries() -> dict[str, dict]:
    """Input name -> BIDS query, for every model input and structural image."""
    queries = {name.lower(): dict(q) for name, q in STRUCTURAL.items()}
    for model in REGISTRY.values():
        queries.update({spec.name: dict(spec.query) for spec in model.inputs})
    return queries


def check_filters(cfg: RunConfig, layout, units) -> None:
    """Refuse ``--bids-filter-file`` entries that select no file of any selected unit.

    Raises
    ------
    SelectionError
        Naming the filter that matched nothing (exit 18).
    """
    queries = _input_queries()
    for name, extra in cfg.bids_filters.items():
        query = queries.get(name)
        if query is None:
            continue  # the parser already refused unknown names
        if not any(find_volumes(layout, sub, ses, query, extra) for sub, ses in units):
            raise SelectionError(
                f"--bids-filter-file: {name}={dict(extra)} selects no file of the selected "
                "subject(s)/session(s)"
            )


def run_participants(cfg: RunConfig) -> int:
    """Run every selected subject/session; return the highest exit code among them.

    Raises
    ------
    SelectionError, UsageError, MetadataError
        Dataset-level problems (labels select nothing, no dataset_description.json, invalid
        JSON) before any subject runs.
    NoInputsError
        When no subject has any input of any selected model nor a structural image (66).
    """
    layout = make_layout(cfg.bids_dir, participant_label=cfg.participant_label)
    units = select_subjects(layout, cfg.participant_label, cfg.session_label)
    check_filters(cfg, layout, units)
    deriv = {name: make_layout(path, derivative=True) for name, path in cfg.derivatives.items()}
    init_output(cfg.output_dir, cfg.bids_dir)
    remove_stale_stages(cfg.output_dir)
    codes, statuses = [], []
    for subject, session in units:
        label = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        if not cfg.overwrite and _done_marker(cfg.output_dir, subject, session).exists():
            logger.info("%s: outputs exist, skipped (use --overwrite to recompute)", label)
            statuses.append("ok")
            codes.append(0)
            continue
        # staging lives inside OUTPUT_DIR so the final move is an atomic rename
        stage, lock_fd = None, None
        try:
            stage, lock_fd = _open_stage(cfg.output_dir, label)
            status = run_subject(replace(cfg, output_dir=stage), layout, deriv, subject, session)
            # the report first: a run killed in between leaves no trusted subject folder, so
            # the rerun redoes the subject and its report (the other order could lose it)
            _move_reports(stage, cfg.output_dir)
            _publish(stage, cfg.output_dir, subject, session)
            statuses.append(status)
            codes.append(0)
        except MsqmriError as err:
            logger.error("%s: %s", label, err)
            codes.append(err.exit_code)
            statuses.append("failed")
        except OSError as err:
            logger.error("%s: %s", label, OutputError(str(err)))
            codes.append(OutputError.exit_code)
            statuses.append("failed")
        except Exception as err:
            logger.error("%s: unexpected error (a bug; traceback in the log file): %r", label, err)
            logger.debug("traceback", exc_info=True, extra={"file_only": True})
            codes.append(1)
            statuses.append("failed")
        finally:
            if stage is not None:
                _close_stage(stage, lock_fd)
    if statuses and all(s == NO_INPUTS for s in statuses):
        raise NoInputsError(
            f"{cfg.bids_dir}: no selected subject has inputs of the selected models "
            f"({[m.name for m in selected_models(cfg)]}) nor a FLAIR/T1w/T2w image"
        )
    try:
        (cfg.output_dir / STAGING).rmdir()
    except OSError:
        pass  # another job still stages a subject here
    failed = sum(c != 0 for c in codes)
    logger.info(
        "participant level: %d of %d subject/session(s) done, %d failed",
        len(codes) - failed,
        len(codes),
        failed,
    )
    return max(codes, default=0)


def _move_reports(stage: Path, out: Path) -> None:
    for html in stage.glob("*.html"):
        os.replace(html, out / html.name)
    figs = stage / "figures"
    if figs.is_dir():
        (out / "figures").mkdir(exist_ok=True)
        for f in figs.iterdir():
            os.replace(f, out / "figures" / f.name)
