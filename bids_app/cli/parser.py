"""Command-line parser of msqmri (CONTRACT section 1, the BIDS-Apps convention).

``build_parser`` only builds; ``parse_args`` adds the cross-option checks. Usage errors raise
:class:`~bids_app.errors.UsageError` (exit 64) instead of argparse's exit 2.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from bids_app import __version__
from bids_app.errors import UsageError

ANALYSIS_LEVELS = ("participant", "group")
REFERENCES = ("auto", "FLAIR", "T1w", "T2w")
#: the modes of bids_app.registration.MODES (kept here: parsing does not import dipy)
REGISTRATION_MODES = ("rigid", "affine", "none")
#: the modes of bids_app.stages.volume_align.MODES
VOLUME_REGISTRATION_MODES = ("rigid", "none")
_LABEL = re.compile(r"^[a-zA-Z0-9]+$")
#: snake_case spellings used by the Boutiques bids-app template and CBRAIN
SNAKE_ALIASES = {
    "--participant_label": "--participant-label",
    "--session_label": "--session-label",
    "--skip_bids_validator": "--skip-bids-validation",
    "--skip-bids-validator": "--skip-bids-validation",
    "--skip_bids_validation": "--skip-bids-validation",
    "--bids_filter_file": "--bids-filter-file",
    "--work_dir": "--work-dir",
    "--mem_gb": "--mem-gb",
    "--omp_nthreads": "--omp-nthreads",
    "--no_reports": "--no-reports",
}

#: fMRIPrep's memory options (in MB): a usage error with a hint, never a --mem-gb value
MB_OPTIONS = ("--mem", "--mem-mb", "--mem_mb")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser raising UsageError (exit 64) rather than exiting with 2."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def _label(prefix: str):
    def convert(value: str) -> str:
        label = value[len(prefix) :] if value.startswith(prefix) else value
        if not _LABEL.match(label):
            raise argparse.ArgumentTypeError(
                f"invalid label {value!r}: expected letters and digits, optionally after "
                f"{prefix!r}"
            )
        return label

    return convert


def _existing_dir(value: str) -> Path:
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: not an existing directory")
    return path


def _derivative(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep:
        name, path = Path(value).name, value
    p = Path(path).expanduser().resolve()
    if not name or not p.is_dir():
        raise argparse.ArgumentTypeError(
            f"{value}: expected NAME=PATH with PATH an existing directory"
        )
    return name, p


def _filter_file(value: str) -> dict:
    path = Path(value)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise argparse.ArgumentTypeError(f"{value}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise argparse.ArgumentTypeError(
            f"{value}: expected an object mapping input names to entity filters"
        )
    # a misspelt name would silently filter nothing (pybids' invalid_filters='error' habit)
    inputs, entities = _filter_names()
    unknown = sorted(set(data) - set(inputs))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{value}: unknown input name(s) {unknown}; expected some of {sorted(inputs)}"
        )
    for name, filters in data.items():
        bad = sorted(set(filters) - set(entities))
        if bad:
            raise argparse.ArgumentTypeError(
                f"{value}: {name}: unknown entity name(s) {bad}; expected pybids entity names "
                f"such as {sorted(entities)}"
            )
    return data


def _filter_names() -> tuple[set[str], set[str]]:
    """Input names a filter file may use (models' inputs, structural) and entity names."""
    from bids.layout.models import Config

    from bids_app.bids.query import STRUCTURAL
    from bids_app.models import REGISTRY

    inputs = {s.name for m in REGISTRY.values() for s in m.inputs}
    inputs |= {name.lower() for name in STRUCTURAL}
    entities = set(Config.load("bids").entities) | set(Config.load("derivatives").entities)
    return inputs, entities


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive integer")
    return n


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = 0.0
    if not x > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive number")
    return x


def build_parser() -> argparse.ArgumentParser:
    """Build the msqmri argument parser (no I/O beyond path checks)."""
    from bids_app.models import model_names

    p = _Parser(
        prog="msqmri",
        description="Quantitative MRI maps and lesion / normal-appearing tissue metrics for "
        "multiple sclerosis studies, from a BIDS dataset (a BIDS-App).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # '--mem 16000' (fMRIPrep, MB) must never become --mem-gb
    )
    p.add_argument("bids_dir", type=_existing_dir, help="the input BIDS dataset (read only)")
    p.add_argument("output_dir", type=Path, help="where the derivative dataset is written")
    p.add_argument(
        "analysis_level",
        nargs="+",
        choices=ANALYSIS_LEVELS,
        help="'participant' fits and summarises each subject, 'group' aggregates; both may "
        "be given",
    )
    p.add_argument("--version", action="version", version=f"msqmri {__version__}")

    sel = p.add_argument_group("selecting data")
    sel.add_argument(
        "--participant-label",
        nargs="+",
        type=_label("sub-"),
        metavar="L",
        help="subjects to process (with or without 'sub-'); default all",
    )
    sel.add_argument(
        "--session-label",
        nargs="+",
        type=_label("ses-"),
        metavar="S",
        help="sessions to process (with or without 'ses-'); default all",
    )
    sel.add_argument(
        "--bids-filter-file",
        type=_filter_file,
        metavar="FILE",
        help="JSON mapping input names (e.g. 'vfa', 'flair') to extra entity filters",
    )
    sel.add_argument(
        "--derivatives",
        nargs="+",
        type=_derivative,
        metavar="NAME=PATH",
        default=[],
        help="existing derivatives: lesion masks, tissue segmentations, brain masks",
    )

    mod = p.add_argument_group("models")
    mod.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help=f"models to run ('list' prints them); choices: {model_names()}; "
        "default: every model whose inputs exist",
    )
    mod.add_argument(
        "--b1",
        choices=("auto", "none"),
        default="auto",
        help="'auto' corrects flip angles with a B1+ map when the subject has "
        "one; 'none' never does (recorded in every sidecar)",
    )
    mod.add_argument(
        "--reference",
        choices=REFERENCES,
        default="auto",
        help="reference image for regions ('auto': FLAIR, else T1w, else T2w)",
    )
    mod.add_argument(
        "--registration",
        choices=REGISTRATION_MODES,
        default="rigid",
        help="registration of every collection (and the T1w/T2w) to the reference image: "
        "'rigid' (default) or 'affine' by mutual information, 'none' = image affines only",
    )
    mod.add_argument(
        "--volume-registration",
        choices=VOLUME_REGISTRATION_MODES,
        default="rigid",
        help="motion inside a collection: register its separately acquired volumes (MT "
        "on/off, VFA flip angles, IR inversion times, MPM contrasts; never echoes) to its "
        "first before the fit: 'rigid' (default; in-plane only for slices thicker than 3x "
        "the in-plane voxels) or 'none'",
    )
    mod.add_argument(
        "--config",
        type=Path,
        metavar="FILE.toml",
        help="TOML file of model options, e.g. [vfa_t1] fit_method='nonlinear'",
    )

    grp = p.add_argument_group("group level")
    grp.add_argument(
        "--group-column",
        default="group",
        metavar="NAME",
        help="participants.tsv column telling patients from controls",
    )
    grp.add_argument(
        "--patient-labels",
        nargs="+",
        metavar="L",
        help="values of the group column read as patients (default: patient, ms, rrms, ...)",
    )
    grp.add_argument(
        "--control-labels",
        nargs="+",
        metavar="L",
        help="values of the group column read as controls (default: control, hc, ...)",
    )
    grp.add_argument(
        "--covariates",
        nargs="+",
        metavar="NAME",
        help="participants.tsv columns adjusted for by least squares (e.g. age sex)",
    )
    grp.add_argument(
        "--harmonize",
        choices=("none", "combat"),
        default="none",
        help="'combat': harmonise region means across the site column (needs neuroCombat)",
    )
    grp.add_argument(
        "--site-column", default="site", metavar="NAME", help="participants.tsv site column"
    )
    grp.add_argument(
        "--lesion-change-fraction",
        type=_positive_float,
        default=0.25,
        metavar="F",
        help="a lesion enlarges/shrinks when its volume changes by more than this fraction",
    )
    grp.add_argument(
        "--lesion-change-voxels",
        type=float,
        default=3.0,
        metavar="N",
        help="... and by more than this many voxels",
    )
    grp.add_argument(
        "--longitudinal-registration",
        choices=("rigid", "none"),
        default="rigid",
        help="alignment of a subject's sessions before lesions are matched by overlap",
    )

    run = p.add_argument_group("execution")
    run.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        metavar="WORK_DIR",
        help="scratch directory (default: OUTPUT_DIR/.msqmri-work, removed after the run)",
    )
    run.add_argument(
        "--nprocs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes within a subject",
    )
    run.add_argument(
        "--omp-nthreads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="threads of the numerical libraries (BLAS, OpenMP) in the main process and in "
        "each --nprocs worker: the CPUs used are about nprocs x N",
    )
    run.add_argument(
        "--mem-gb",
        type=_positive_float,
        metavar="G",
        help="memory budget in GB (sets the fitting chunk size)",
    )
    run.add_argument(
        "--skip-bids-validation",
        action="store_true",
        help="do not run bids-validator-deno on the input",
    )
    run.add_argument("--no-reports", action="store_true", help="do not write HTML reports")
    run.add_argument(
        "--overwrite", action="store_true", help="recompute outputs that already exist"
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging (-v info details, -vv debug)",
    )
    return p


def normalise_argv(argv: list[str]) -> list[str]:
    """Map snake_case option spellings (Boutiques, CBRAIN) to the canonical ones."""
    out = []
    for arg in argv:
        opt, eq, val = arg.partition("=")
        if opt in SNAKE_ALIASES:
            arg = SNAKE_ALIASES[opt] + (eq + val if eq else "")
        out.append(arg)
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` and run the cross-option checks.

    Raises
    ------
    UsageError
        For any usage error (exit 64), including unknown model names and an OUTPUT_DIR or
        WORK_DIR inside BIDS_DIR (other than BIDS_DIR/derivatives/<name> for OUTPUT_DIR).
    """
    from bids_app.models import model_names

    argv = normalise_argv(list(argv))
    for arg in argv:
        opt = arg.partition("=")[0]
        if opt in MB_OPTIONS:
            raise UsageError(
                f"{opt} is not an msqmri option (fMRIPrep's memory in MB); give the memory "
                "budget in GB with --mem-gb, e.g. --mem-gb 16 for 16000 MB"
            )
    if "--models" in argv:
        i = argv.index("--models")
        if i + 1 < len(argv) and argv[i + 1] == "list":
            return argparse.Namespace(models=["list"], list_models=True)
    ns = build_parser().parse_args(argv)
    ns.list_models = False
    if ns.models:
        unknown = [m for m in ns.models if m not in model_names()]
        if unknown:
            raise UsageError(f"unknown model(s) {unknown}; choices: {model_names()}")
    ns.analysis_level = list(dict.fromkeys(ns.analysis_level))
    ns.output_dir = ns.output_dir.expanduser().resolve()
    bids = ns.bids_dir
    out = ns.output_dir
    if out == bids or (bids in out.parents and out.parent != bids / "derivatives"):
        raise UsageError(
            f"OUTPUT_DIR {out} is inside BIDS_DIR {bids}: the input dataset is read only; "
            "use a directory outside it or BIDS_DIR/derivatives/<name>"
        )
    if ns.work_dir is not None:
        work = ns.work_dir.expanduser().resolve()
        if (work == bids or bids in work.parents) and not (work == out or out in work.parents):
            raise UsageError(
                f"WORK_DIR {work} is inside BIDS_DIR {bids}: the input dataset is read only; "
                "use a directory outside it (or inside OUTPUT_DIR)"
            )
    return ns
