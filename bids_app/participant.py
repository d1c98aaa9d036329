"""Participant level: the only place that wires the stages together for one subject/session.

Each subject/session is written to a private staging directory and moved into ``OUTPUT_DIR``
only when complete, so a failed or killed run never leaves outputs a rerun would trust, and
one subject's failure never touches another subject's outputs.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

from bids_app.bids.derivatives import build_name, init_output
from bids_app.bids.layout import make_layout, select_subjects
from bids_app.bids.query import resolve_model
from bids_app.config import RunConfig
from bids_app.errors import MsqmriError, NoInputsError, OutputError
from bids_app.models import REGISTRY
from bids_app.stages import anatomy, maps, tables
from bids_app.stages.context import SubjectContext

logger = logging.getLogger(__name__)

NO_INPUTS = "no-inputs"
#: hidden folder of OUTPUT_DIR holding subjects being written (ignored by BIDS tools)
STAGING = ".msqmri-staging"


def selected_models(cfg: RunConfig) -> list:
    """Model classes to run, B1 first (its maps feed the others)."""
    names = list(cfg.models) or list(REGISTRY)
    names.sort(key=lambda n: n != "b1")
    if any(REGISTRY[n].uses_b1 for n in names) and "b1" not in names and cfg.b1_policy != "none":
        names.insert(0, "b1")
    return [REGISTRY[n] for n in names]


def _unit_dir(root: Path, subject: str, session: str | None) -> Path:
    d = root / f"sub-{subject}"
    return d / f"ses-{session}" if session else d


def _publish(stage_root: Path, out: Path, subject: str, session: str | None) -> None:
    """Move a finished subject/session from staging into the output (replacing atomically)."""
    src, dst = _unit_dir(stage_root, subject, session), _unit_dir(out, subject, session)
    if not src.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if session is None or not dst.exists():
        old = None
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(dst, old)
        os.replace(src, dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    # sessions: replace only this session's folder
    old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


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
    for run in runs:
        if run.model.name == "b1":
            maps.fit_b1(ctx, run)
        else:
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
    deriv = {name: make_layout(path, derivative=True) for name, path in cfg.derivatives.items()}
    init_output(cfg.output_dir, cfg.bids_dir)
    codes, statuses = [], []
    for subject, session in units:
        label = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        if not cfg.overwrite and _done_marker(cfg.output_dir, subject, session).exists():
            logger.info("%s: outputs exist, skipped (use --overwrite to recompute)", label)
            statuses.append("ok")
            codes.append(0)
            continue
        # staging lives inside OUTPUT_DIR so the final move is an atomic rename
        stage = cfg.output_dir / STAGING / f"{label}-{uuid.uuid4().hex[:12]}"
        try:
            stage.mkdir(parents=True)
            status = run_subject(replace(cfg, output_dir=stage), layout, deriv, subject, session)
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
            shutil.rmtree(stage, ignore_errors=True)
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
