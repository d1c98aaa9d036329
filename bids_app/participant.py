"""Participant level: the only place that wires the stages together for one subject/session.

Outputs are staged and published by :mod:`bids_app.staging` (atomic, kill-safe).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from bids_app.bids.derivatives import build_name, init_output
from bids_app.bids.layout import make_derivative_layouts, make_layout, select_subjects
from bids_app.bids.query import STRUCTURAL, InputLayouts, find_volumes, resolve_model
from bids_app.config import RunConfig
from bids_app.errors import (
    MsqmriError,
    NoInputsError,
    OutputError,
    SelectionError,
    UsageError,
)
from bids_app.failures import clear_failure, record_failure
from bids_app.models import REGISTRY
from bids_app.models.fitting import FitPool
from bids_app.stages import anatomy, maps, products, qmri_reference, tables
from bids_app.stages.context import SubjectContext
from bids_app.stages.inventory import inventory
from bids_app.staging import (
    STAGING,
    close_stage,
    move_reports,
    open_stage,
    publish,
    remove_stale_stages,
    unit_dir,
)

logger = logging.getLogger(__name__)

NO_INPUTS = "no-inputs"


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


def _done_marker(out: Path, subject: str, session: str | None) -> Path:
    ents = {"subject": subject, "session": session, "desc": "regions"}
    return unit_dir(out, subject, session) / build_name(ents, "stats", ".tsv")


def run_subject(
    cfg: RunConfig,
    layout,
    derivative_layouts,
    subject: str,
    session: str | None,
    *,
    pool=None,
) -> str:
    """Process one subject/session into ``cfg.output_dir`` (a staging root). Return status."""
    ctx = SubjectContext(cfg, layout, derivative_layouts, subject, session, pool=pool)
    anatomy.choose_reference(ctx)
    runs, unpaired = [], []
    layouts = InputLayouts(layout, derivative_layouts)
    models = selected_models(cfg)
    for model in models:
        found = resolve_model(layouts, model, subject, session, cfg.bids_filters, unused=unpaired)
        if not found:
            ctx.skipped.append(f"{model.name}: no inputs")
            logger.debug("%s: %s skipped (no inputs)", ctx.label, model.name)
        runs += found
    _log_inventory(ctx, runs, models, unpaired)
    if not runs and ctx.grid is None:
        logger.info("%s: skipped, no input of any selected model and no FLAIR/T1w/T2w", ctx.label)
        return NO_INPUTS
    # no FLAIR/T1w/T2w: reference image and brain mask from a qMRI collection
    qmri_ref = qmri_reference.choose(ctx, runs)
    if ctx.grid is not None and not qmri_ref:
        anatomy.find_masks(ctx)
    products.add_anatomy_products(ctx)
    for run in runs:
        maps.fit_run(ctx, run)
    if ctx.grid is not None:
        maps.to_reference(ctx)
        if qmri_ref:
            qmri_reference.tissue_from_maps(ctx)
        tables.summarise(ctx, brain_region=qmri_ref)
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


def _holdings(layout, units) -> str:
    """``'anat/*_IRT1 (4), dwi/*_dwi (1)'``: the images of the selected subjects by kind."""
    counts: dict[str, int] = {}
    subjects = {sub for sub, _ in units}
    for f in layout.get(subject=sorted(subjects), extension=[".nii", ".nii.gz"]):
        ent = f.get_entities()
        key = f"{ent.get('datatype', '?')}/*_{ent.get('suffix', '?')}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} ({n})" for k, n in sorted(counts.items()))


def _log_inventory(ctx: SubjectContext, runs, models, unpaired: list[str]) -> None:
    """Log (and keep for the report) what each collection goes to, and what is not used."""
    structural = [v.path for v in ctx.structural.values()]
    used, unused = inventory(
        ctx.layout, ctx.subject, ctx.session, runs, structural, models, REGISTRY
    )
    for line in used:
        logger.info("%s: found %s", ctx.label, line)
    for line in [*unpaired, *unused]:
        logger.info("%s: not used: %s", ctx.label, line)
        ctx.skipped.append(f"not used: {line}")


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
    layout = make_layout(
        cfg.bids_dir,
        participant_label=cfg.participant_label,
        require_description=not cfg.skip_bids_validation,
    )
    units = select_subjects(layout, cfg.participant_label, cfg.session_label)
    check_filters(cfg, layout, units)
    deriv = make_derivative_layouts(cfg.derivatives, participant_label=cfg.participant_label)
    init_output(cfg.output_dir, cfg.bids_dir, cfg.derivatives)
    remove_stale_stages(cfg.output_dir)
    codes, statuses = [], []
    # one worker pool for every fit of every subject of this run (not one per fit)
    with FitPool(cfg.nprocs) as pool:
        for subject, session in units:
            label = f"sub-{subject}" + (f"_ses-{session}" if session else "")
            if not cfg.overwrite and _done_marker(cfg.output_dir, subject, session).exists():
                logger.info("%s: outputs exist, skipped (use --overwrite to recompute)", label)
                statuses.append("ok")
                codes.append(0)
                clear_failure(cfg.output_dir, subject, session)
                continue
            # staging lives inside OUTPUT_DIR so the final move is an atomic rename
            stage, lock_fd = None, None
            try:
                stage, lock_fd = open_stage(cfg.output_dir, label)
                status = run_subject(
                    replace(cfg, output_dir=stage), layout, deriv, subject, session, pool=pool
                )
                # the report first: a run killed in between leaves no trusted subject folder, so
                # the rerun redoes the subject and its report (the other order could lose it)
                move_reports(stage, cfg.output_dir)
                publish(stage, cfg.output_dir, subject, session)
                statuses.append(status)
                codes.append(0)
                clear_failure(cfg.output_dir, subject, session)
            except MsqmriError as err:
                logger.error("%s: %s", label, err)
                codes.append(err.exit_code)
                statuses.append("failed")
                record_failure(cfg.output_dir, subject, session, err.exit_code, err)
            except OSError as err:
                logger.error("%s: %s", label, OutputError(str(err)))
                codes.append(OutputError.exit_code)
                statuses.append("failed")
                record_failure(cfg.output_dir, subject, session, OutputError.exit_code, err)
            except Exception as err:
                logger.error(
                    "%s: unexpected error (a bug; traceback in the log file): %r", label, err
                )
                logger.debug("traceback", exc_info=True, extra={"file_only": True})
                codes.append(1)
                statuses.append("failed")
                record_failure(cfg.output_dir, subject, session, 1, err)
            finally:
                if stage is not None:
                    close_stage(stage, lock_fd)
    if statuses and all(s == NO_INPUTS for s in statuses):
        raise NoInputsError(
            f"{cfg.bids_dir}: no selected subject has inputs of the selected models "
            f"({[m.name for m in selected_models(cfg)]}) nor a FLAIR/T1w/T2w image; "
            f"the selected subjects hold: {_holdings(layout, units) or 'no NIfTI image'}"
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
