"""``msqmri`` entry point: parse, configure, run the levels, map errors to exit codes."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from bids_app import __version__
from bids_app.cli.parser import parse_args
from bids_app.config import RunConfig, load_model_options
from bids_app.errors import MsqmriError, OutputError, UsageError
from bids_app.io import save_text
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
    """Every model's options with the defaults filled in (what ``config.toml`` records)."""
    from bids_app.models import REGISTRY

    return {name: model.check_options(given.get(name, {})) for name, model in REGISTRY.items()}


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
        nprocs=ns.nprocs,
        mem_gb=ns.mem_gb,
        skip_bids_validation=ns.skip_bids_validation,
        reports=not ns.no_reports,
        overwrite=ns.overwrite,
        verbosity=ns.verbose,
    )


def _run(cfg: RunConfig, scratch: Path) -> int:
    from bids_app.bids.validate import validate_input
    from bids_app.group import run_group
    from bids_app.participant import run_participants

    code = 0
    if "participant" in cfg.analysis_level:
        if not cfg.skip_bids_validation:
            validate_input(cfg.bids_dir, scratch=scratch / "validator")
        code = max(code, run_participants(cfg))
    if "group" in cfg.analysis_level:
        code = max(code, run_group(cfg.bids_dir, cfg.output_dir, reports=cfg.reports))
    return code


def main(argv: list[str] | None = None) -> int:
    """Run msqmri; return the CONTRACT exit code (section 5)."""
    argv = sys.argv[1:] if argv is None else list(argv)
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
    try:
        cfg = build_config(ns)
        _writable_dir(cfg.output_dir, "output directory")
        _writable_dir(cfg.work_dir, "work directory")
        run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{uuid.uuid4().hex[:6]}"
        logdir = cfg.output_dir / "logs" / f"run-{run_id}"
        setup_logging(cfg.verbosity, logdir / "msqmri.log")
        save_text(logdir / "config.toml", f"# msqmri {__version__}\n" + cfg.to_toml())
        os.environ.setdefault("MPLCONFIGDIR", str(cfg.work_dir / "mpl"))
        logger.info(
            "msqmri %s: %s -> %s (%s)",
            __version__,
            cfg.bids_dir,
            cfg.output_dir,
            " ".join(cfg.analysis_level),
        )
        scratch = cfg.work_dir / f"run-{run_id}"
        try:
            code = _run(cfg, scratch)
        finally:
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
