"""Command line of ``msqmri-synth``: write a synthetic MS qMRI dataset with known truth.

Usage::

    msqmri-synth OUT_DIR [--subjects N] [--sessions K] [--size {tiny,small,brain}]
                 [--seed S] [--snr SNR] [--series [NAME ...]] [--misalign] [--head] [-v]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from bids_app import __version__
from bids_app.synth.anatomy import SIZES, make_anatomy
from bids_app.synth.dataset import DEFAULT_SERIES, SERIES_WRITERS, make_plan, write_dataset

logger = logging.getLogger(__name__)

EXIT_USAGE = 64
EXIT_CANTCREAT = 73


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit code 64 as in CONTRACT.md section 5
        self.print_usage()
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the ``msqmri-synth`` argument parser."""
    parser = _Parser(
        prog="msqmri-synth",
        description="Write a synthetic multiple-sclerosis qMRI BIDS dataset (raw images, "
        "derivatives/truth with the ground-truth maps, lesion and tissue derivatives).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="dataset root to create")
    parser.add_argument(
        "--subjects", type=_positive_int, default=3, help="participants (odd: patient)"
    )
    parser.add_argument(
        "--sessions", type=_positive_int, default=1, help="sessions (1: no ses- level)"
    )
    parser.add_argument(
        "--size",
        choices=list(SIZES),
        default="tiny",
        help="tiny: 4 mm (tests), small: 2 mm (demo, CI), brain: 1 mm (benchmarks)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--snr", type=_positive_float, default=100.0, help="WM SNR of each collection"
    )
    parser.add_argument(
        "--series",
        nargs="*",
        choices=sorted(SERIES_WRITERS),
        default=list(DEFAULT_SERIES),
        help="series besides the relaxometry/MT protocol (dwi: multi-shell DWI; qsm: MEGRE "
        "phase; asl/asl1: multi/single-delay pCASL; dce; irt1; mp2rage[me]; mpm; mwf: "
        "32-echo MESE; b1tfl/b1epi/b1srge: other B1 map types); give none to write the "
        "relaxometry/MT protocol only",
    )
    parser.add_argument(
        "--misalign",
        action="store_true",
        help="simulate every 3-D collection but the FLAIR on its own grid and voxel size in "
        "a known rigid head pose (true transforms in derivatives/truth/*_desc-collections_xfm"
        ".json; the MEGRE stays on the FLAIR grid with the qsm series, 4-D series are not "
        "moved)",
    )
    parser.add_argument(
        "--head",
        action="store_true",
        help="image a non-brain head (CSF, skull, marrow, scalp, eyes, neck) around the "
        "brain on a padded grid; true brain mask in derivatives/truth/*_desc-brain_mask",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="version", version=f"msqmri-synth {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``msqmri-synth``; returns the exit code (0 success, 64 usage, 73 unwritable)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    level = (
        logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    )
    # the one-line summary (this module, INFO) always shows; per-subject lines with -v
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bids_app.synth").setLevel(level)
    logger.setLevel(min(level, logging.INFO))
    start = time.perf_counter()
    anatomy = make_anatomy(args.size)
    plan = make_plan(
        subjects=args.subjects,
        sessions=args.sessions,
        size=args.size,
        seed=args.seed,
        snr=args.snr,
        anatomy=anatomy,
        series=tuple(args.series),
        misalign=args.misalign,
        head=args.head,
    )
    try:
        write_dataset(plan, args.out_dir, anatomy=anatomy)
    except OSError as exc:
        logger.error("cannot write %s: %s", args.out_dir, exc)
        return EXIT_CANTCREAT
    logger.info(
        "msqmri-synth: wrote %d subject(s) x %d session(s), %s grid %s (%d brain voxels) "
        "to %s in %.1f s",
        len(plan.participants),
        len(plan.sessions),
        args.size,
        "x".join(map(str, plan.grid_shape)),
        plan.n_brain_voxels,
        args.out_dir,
        time.perf_counter() - start,
    )
    return 0
