"""Performance budget of a whole synthetic subject at the participant level (issue 25).

Writes ``msqmri-synth --size SIZE --subjects 1`` with the series of a protocol (or reuses
``--bids``), runs the participant level, and prints:

- the time of each logged stage, and per model the wall time since the previous stage and
  the voxels/s of its fit (from the ``<model> fitted N voxels`` lines);
- the peak resident memory of the main process and of its worker processes;
- the I/O floor measured in the same process: decompressing every input image once and
  gzip-writing every output image once (nibabel, the same compression level), and the ratio
  of the run to it;
- with ``--compare-nprocs``, the same run with ``--nprocs 1`` and the ratio.

Protocols: ``typical`` (FLAIR, T1w, VFA with B1, MEGRE with phase, MT, MTsat, multi-shell
DWI, MESE for MWF: the issue's 5-minute protocol) and ``all`` (every series of
``msqmri-synth``).
"""

from __future__ import annotations

import argparse
import logging
import re
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.cli.run import main as msqmri
from bids_app.synth.cli import main as synth
from bids_app.synth.series import SERIES_WRITERS

PROTOCOLS = {"typical": ("dwi", "qsm", "mwf"), "all": tuple(SERIES_WRITERS)}
_FITTED = re.compile(r"(\S+) fitted (\d+) voxels")


class _Laps(logging.Handler):
    """Collect (elapsed seconds, message) for each INFO record."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.t0, self.laps = time.perf_counter(), []

    def emit(self, record):
        self.laps.append((time.perf_counter() - self.t0, record.getMessage()))


def _run(bids: Path, out: Path, nprocs: int, extra: list[str]) -> tuple[int, list, float]:
    laps = _Laps()
    root = logging.getLogger()
    root.addHandler(laps)  # the CLI resets the bids_app handlers, not the root's
    t = time.perf_counter()
    argv = [str(bids), str(out), "participant", "--skip-bids-validation", "--no-reports"]
    code = msqmri([*argv, "--nprocs", str(nprocs), *extra])
    wall = time.perf_counter() - t
    root.removeHandler(laps)
    return code, laps.laps, wall


def _print_laps(laps: list) -> None:
    prev = 0.0
    models = []
    for elapsed, msg in laps:
        print(f"{elapsed:8.1f} s (+{elapsed - prev:6.1f})  {msg[:100]}")
        hit = _FITTED.search(msg)
        if hit:
            models.append((hit.group(1), int(hit.group(2)), elapsed - prev))
        prev = elapsed
    print("\nper model (wall time since the previous logged stage, including its reads):")
    for name, voxels, dt in models:
        rate = voxels / max(dt, 1e-9)
        print(f"  {name:14s} {voxels:9d} voxels {dt:7.1f} s {rate:12.0f} voxels/s")


def io_floor(bids: Path, out: Path) -> tuple[float, float, int, int]:
    """Seconds to decompress every input image once and gzip-write every output once."""
    inputs = sorted(p for p in bids.rglob("*.nii*") if "derivatives" not in p.parts)
    outputs = sorted(out.rglob("*.nii*"))
    t = time.perf_counter()
    for p in inputs:
        np.asanyarray(nib.load(p).dataobj)
    read = time.perf_counter() - t
    arrays = [(nib.load(p), np.asanyarray(nib.load(p).dataobj)) for p in outputs]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        for k, (img, arr) in enumerate(arrays):
            nib.save(nib.Nifti1Image(arr, img.affine, img.header), Path(tmp) / f"{k}.nii.gz")
        write = time.perf_counter() - t
    return read, write, len(inputs), len(outputs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="brain", choices=("tiny", "small", "brain"))
    p.add_argument("--protocol", default="typical", choices=tuple(PROTOCOLS))
    p.add_argument("--bids", type=Path, help="reuse this msqmri-synth dataset")
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--compare-nprocs", action="store_true", help="also run --nprocs 1")
    p.add_argument("--tissue", action="store_true", help="use the provided tissue derivative")
    p.add_argument("--models", nargs="+", help="passed to msqmri --models (default: all)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bids = args.bids or Path(tmp) / "bids"
        if args.bids is None:
            t = time.perf_counter()
            series = PROTOCOLS[args.protocol]
            synth([str(bids), "--size", args.size, "--subjects", "1", "--seed", "5",
                   "--series", *series])  # fmt: skip
            print(f"msqmri-synth --size {args.size} --series {' '.join(series)}: "
                  f"{time.perf_counter() - t:.1f} s")  # fmt: skip
        derivs = [f"lesions={bids / 'derivatives' / 'lesions'}"]
        if args.tissue:
            derivs.append(f"tissue={bids / 'derivatives' / 'tissue'}")
        extra = ["--derivatives", *derivs] + (["--models", *args.models] if args.models else [])
        out = Path(tmp) / "out"
        code, laps, wall = _run(bids, out, args.nprocs, extra)
        _print_laps(laps)
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"\nexit {code}; participant level --nprocs {args.nprocs}: {wall:.1f} s; "
              f"peak RSS {own:.0f} MB (main), {kids:.0f} MB (largest worker)")  # fmt: skip
        read, write, n_in, n_out = io_floor(bids, out)
        floor = read + write
        print(f"I/O floor: read {n_in} inputs {read:.1f} s + write {n_out} outputs {write:.1f} s"
              f" = {floor:.1f} s; run / floor = {wall / floor:.2f}")  # fmt: skip
        if args.compare_nprocs:
            _, _, wall1 = _run(bids, Path(tmp) / "out1", 1, extra)
            print(f"--nprocs 1: {wall1:.1f} s; --nprocs {args.nprocs} / --nprocs 1 = "
                  f"{wall / wall1:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
