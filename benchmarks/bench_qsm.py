"""Benchmark: whole-brain 1 mm 4-echo QSM with the default pipeline, each step timed.

Synthesises the phantom of :mod:`bids_app.synth.qsm` on 182 x 218 x 182 at 1 mm (4 echoes,
SNR 100), then runs :func:`bids_app.models.qsm._pipeline.qsm_pipeline` in a child process
limited to ``--workers`` FFT threads and prints the step times, the total, the peak resident
memory of the child (``ru_maxrss``) and the errors against the truth.

Usage: ``python benchmarks/bench_qsm.py [--workers 2] [--inversion tvadmm]``
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (182, 218, 182)
TE = np.array([4.0, 8.0, 12.0, 16.0]) * 1e-3


def _synth(path: Path) -> None:
    from bids_app.synth import qsm as sq

    rng = np.random.default_rng(0)
    ph = sq.qsm_phantom(SHAPE, (1.0, 1.0, 1.0), n_rim=6, n_plain=6, rng=rng)
    d = sq.megre(ph, TE, snr=100.0, rng=rng)
    np.savez(
        path,
        mag=d["mag"],
        phase=d["phase"],
        total=d["total_hz"],
        chi=ph.chi,
        deep=ph.deep_gm,
        affine=ph.affine,
    )


def _child(path: Path, workers: int, inversion: str) -> None:
    import scipy.fft

    from bids_app.models.qsm._pipeline import qsm_pipeline

    d = np.load(path)
    t = time.perf_counter()
    with scipy.fft.set_workers(workers):
        res = qsm_pipeline(d["mag"], d["phase"], TE, 3.0, d["affine"], inversion=inversion)
    total = time.perf_counter() - t
    for step, sec in res.timings.items():
        print(f"  {step:20s} {sec:7.2f} s")
    print(f"  {'total':20s} {total:7.2f} s")
    m = res.mask
    truth = d["chi"] - d["chi"][m].mean()
    rmse = np.sqrt(np.mean((res.chi[m] - truth[m]) ** 2))
    dgm = [
        abs(res.chi[(d["deep"] == i) & m].mean() - truth[(d["deep"] == i) & m].mean())
        for i in range(1, 5)
    ]
    print(
        f"  brain RMSE {rmse:.4f} ppm; deep GM |error| max {max(dgm):.4f} ppm; "
        f"total field max error {np.nanmax(np.abs(res.total_hz - d['total'])[m]):.2f} Hz"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"  peak resident memory {peak:.2f} GB (includes the loaded inputs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--inversion", default="tvadmm")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.workers, args.inversion)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qsm_bench.npz"
        t = time.perf_counter()
        _synth(path)
        print(f"synthesis {time.perf_counter() - t:.1f} s ({SHAPE}, 1 mm, {TE.size} echoes)")
        print(f"QSM pipeline ({args.workers} FFT workers, inversion {args.inversion}):")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.workers))
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(path),
            "--workers",
            str(args.workers),
            "--inversion",
            args.inversion,
        ]
        return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
