"""``msqmri`` entry point: parse, configure, run the levels, map errors to exit codes."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bids_app import __version__
from bids_app.cli.parser import normalise_argv, parse_args
from bids_app.cli.threads import cap_threads, omp_nthreads_from_argv
from bids_app.config import RunConfig, load_model_options
from bids_app.errors import MsqmriError, OutputError, UsageError
from bids_app.logs import setup_logging

logger = logging.getLogger("bids_app.cli")


def _writable_dir(path: Path, what: str) -> None:
    for attempt in range(3):  # another job may remove an empty shared work dir meanwhile
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".msqmri-write-test-{uuid.uuid4().hex[:8]}"
            probe.write_text("")
            probe.unlink()
            return
        except FileNotFoundError:
            if attempt < 2:
                continue
            raise OutputError(f"{path}: the {what} disappeared while being created") from None
        except OSError as err:
            reason = err.strerror or str(err)
            raise OutputError(
                f"{path}: the {what} cannot be created or written ({reason})"
            ) from None


def list_models() -> str:
    """The model registry as text: name, inputs and outputs of each model."""
    from bids_app.models import REGISTRY

    lines = []
    for name, model in REGISTRY.items():
        sets = " | ".join(
            " + ".join(
                f"{s.query.get('datatype', '')}/*_{s.query.get('suffix', s.name)}"
                for s in model.inputs
                if s.name in names
            )
            for names in model.input_sets()
        )
        outs = ", ".join(f"{o.key} [{o.units}]" for o in model.outputs)
        lines.append(f"{name:14s} inputs: {sets}\n{'':14s} outputs: {outs}")
        if model.requires:
            needs = ", ".join(
                f"{r.model}.{r.output} ({'required' if r.required else 'optional'})"
                for r in model.requires
            )
            lines.append(f"{'':14s} uses: {needs}")
        for key, opt in model.options_spec.items():
            doc = f"  ({opt.doc})" if opt.doc else ""
            lines.append(f"{'':14s} option {key} = {opt.default!r}: {opt.describe()}{doc}")
    return "\n".join(lines)


def effective_options(given: dict[str, dict]) -> dict[str, dict]:
    """Every model's options with the defaults filled in (what ``config.toml`` records).

    The tables that are not models (``[lesionseg]``, ``[brainmask]``: validated by
    :func:`~bids_app.config.load_model_options`) are kept as given.
    """
    from bids_app.models import REGISTRY

    out = {name: model.check_options(given.get(name, {})) for name, model in REGISTRY.items()}
    out.update({name: dict(opts) for name, opts in given.items() if name not in REGISTRY})
    return out


def build_config(ns) -> RunConfig:
    """Turn parsed arguments into the frozen :class:`RunConfig`."""
    out = ns.output_dir
    work = ns.work_dir.expanduser().resolve() if ns.work_dir else out / ".msqmri-work"
    return RunConfig(
        bids_dir=ns.bids_dir,
        output_dir=out,
        work_dir=work,
        analysis_level=tuple(ns.analysis_level),
        participant_label=tuple(ns.participant_label or ()),
        session_label=tuple(ns.session_label or ()),
        models=tuple(ns.models or ()),
        derivatives=dict(ns.derivatives or []),
        bids_filters=ns.bids_filter_file or {},
        model_options=effective_options(load_model_options(ns.config)),
        b1_policy=ns.b1,
        reference=ns.reference,
        registration=ns.registration,
        volume_registration=ns.volume_registration,
        nprocs=ns.nprocs,
        omp_nthreads=ns.omp_nthreads,
        mem_gb=ns.mem_gb,
        skip_bids_validation=ns.skip_bids_validation,
        reports=not ns.no_reports,
        overwrite=ns.overwrite,
        verbosity=ns.verbose,
        group_options=_group_options(ns),
    )


def check_input_dataset(cfg: RunConfig) -> None:
    """Dataset-level checks that come before validation and indexing.

    Raises
    ------
    MissingContentError
        Files of the selected subjects are un-fetched DataLad/git-annex symlinks (exit 66).
    UsageError
        ``BIDS_DIR/dataset_description.json`` is missing and validation is on (exit 64);
        with ``--skip-bids-validation`` the layout warns and the run goes on.
    """
    from bids_app.bids.annex import check_annexed_content
    from bids_app.bids.layout import IGNORED_FOLDERS

    check_annexed_content(
        cfg.bids_dir, participant_label=cfg.participant_label, skip=IGNORED_FOLDERS
    )
    if not cfg.skip_bids_validation and not (cfg.bids_dir / "dataset_description.json").is_file():
        raise UsageError(
            f"{cfg.bids_dir}: no dataset_description.json; expected the root of a BIDS dataset "
            "(or pass --skip-bids-validation to run anyway)"
        )


def _group_options(ns) -> dict:
    """The group-level options of the command line (GroupOptions field names)."""
    return {
        "group_column": ns.group_column,
        "patient_labels": list(ns.patient_labels or []),
        "control_labels": list(ns.control_labels or []),
        "covariates": list(ns.covariates or []),
        "harmonize": ns.harmonize,
        "site_column": ns.site_column,
        "change_fraction": ns.lesion_change_fraction,
        "change_voxels": ns.lesion_change_voxels,
        "longitudinal_registration": ns.longitudinal_registration,
    }


def _run(cfg: RunConfig, scratch: Path) -> int:
    from bids_app.bids.validate import validate_input
    from bids_app.group import run_group
    from bids_app.participant import run_participants

    code = 0
    if "participant" in cfg.analysis_level:
        # before any work (the validator too): absent content (66), no description (64)
        check_input_dataset(cfg)
        if not cfg.skip_bids_validation:
            validate_input(cfg.bids_dir, scratch=scratch / "validator")
        code = max(code, run_participants(cfg))
    if "group" in cfg.analysis_level:
        code = max(
            code,
            run_group(
                cfg.bids_dir, cfg.output_dir, reports=cfg.reports, options=cfg.group_options
            ),
        )
    return code


def main(argv: list[str] | None = None) -> int:
    """Run msqmri; return the CONTRACT exit code (section 5)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # before anything imports numpy (the parser imports the model registry)
    cap_threads(omp_nthreads_from_argv(normalise_argv(argv)))
    try:
        ns = parse_args(argv)
    except SystemExit as exit_:  # --help and --version
        return int(exit_.code or 0)
    except UsageError as err:
        sys.stderr.write(f"msqmri: error: {err}\n(see 'msqmri --help')\n")
        return UsageError.exit_code
    if ns.list_models:
        sys.stdout.write(list_models() + "\n")
        return 0
    setup_logging(getattr(ns, "verbose", 0))
    from bids_app.io import save_text

    try:
        cfg = build_config(ns)
        _writable_dir(cfg.output_dir, "output directory")
        _writable_dir(cfg.work_dir, "work directory")
        run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:6]}"
        logdir = cfg.output_dir / "logs" / f"run-{run_id}"
        setup_logging(cfg.verbosity, logdir / "msqmri.log")
        save_text(logdir / "config.toml", f"# msqmri {__version__}\n" + cfg.to_toml())
        logger.info(
            "msqmri %s: %s -> %s (%s)",
            __version__,
            cfg.bids_dir,
            cfg.output_dir,
            " ".join(cfg.analysis_level),
        )
        scratch = cfg.work_dir / f"run-{run_id}"
        # matplotlib's font cache in a temporary folder ($TMPDIR; HOME is read-only on
        # clusters), never in the derivative (a killed run would leave it there)
        own_mpl = None
        if "MPLCONFIGDIR" not in os.environ:
            own_mpl = tempfile.mkdtemp(prefix="msqmri-mpl-")
            os.environ["MPLCONFIGDIR"] = own_mpl
        try:
            code = _run(cfg, scratch)
        finally:
            if own_mpl is not None:
                os.environ.pop("MPLCONFIGDIR", None)
                shutil.rmtree(own_mpl, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                cfg.work_dir.rmdir()  # only when empty (no other job uses it)
    except MsqmriError as err:
        logger.error("%s", err)
        return err.exit_code
    except Exception as err:
        logger.error(
            "unexpected error (a bug, please report it; traceback in the log file): %r", err
        )
        logger.debug("traceback", exc_info=True, extra={"file_only": True})
        return 1
    logger.info("done, exit code %d", code)
    return code
