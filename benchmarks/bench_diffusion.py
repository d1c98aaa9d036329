"""Benchmark: DTI and NODDI fits, and a per-voxel non-linear NODDI reference (scipy).

Simulates ``--voxels`` NODDI voxels (exact forward model, random orientations, ICVF 0.3-0.8,
ODI 0.05-0.5, ISOVF 0-0.2) on the synthetic protocol of ``msqmri-synth`` (b = 0 x4,
1000 x30, 2000 x30 s/mm²) with Rician noise at b=0 SNR 50, fits them with the ``dti`` and
``noddi`` models (no preprocessing) and, on ``--reference`` of them, with a per-voxel
``scipy.optimize.least_squares`` fit of the same NODDI model (start: the dictionary grid
centre, ICVF/ODI/ISOVF bounded in [0, 1]). Prints voxels/s, the extrapolation to the 1 mm
synthetic brain (1.8 M voxels), peak memory, the speed ratio and both median errors.

Usage::

    python benchmarks/bench_diffusion.py [--voxels 200000] [--reference 100] [--nprocs 2]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from scipy.optimize import least_squares

from bids_app.models import REGISTRY
from bids_app.models.diffusion._noddi_forward import noddi_signal
from bids_app.synth.dwi import add_rician
from bids_app.synth.dwi_series import protocol

BRAIN_VOXELS = 1_800_000
SNR = 50.0
NO_PREPROC = {"denoise": "none", "gibbs": False, "motion": "none", "brain_mask": "given"}


def _simulate(n, rng, bvals, bvecs):
    mu = rng.standard_normal((n, 3))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    truth = np.stack(
        [rng.uniform(0.3, 0.8, n), rng.uniform(0.05, 0.5, n), rng.uniform(0, 0.2, n)], 1
    )
    chunks = np.array_split(np.arange(n), max(1, n // 20000))
    clean = np.concatenate(
        [noddi_signal(bvals, bvecs, mu[s], *truth[s].T, s0=1000.0) for s in chunks]
    )
    return truth, mu, add_rician(clean, 1000.0 / SNR, rng)


def _nonlinear_noddi(signal, bvals, bvecs, mu):
    """Per-voxel bounded least squares of (S0, ICVF, ODI, ISOVF) with the fibre direction fixed."""

    def residual(p):
        return noddi_signal(bvals, bvecs, mu, p[1], p[2], p[3], s0=p[0])[0] - signal

    s0 = signal[bvals < 50].mean()
    fit = least_squares(residual, [s0, 0.5, 0.3, 0.1], bounds=([0, 0, 0.01, 0], [np.inf, 1, 1, 1]))
    return fit.x[1:]


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=200_000)
    parser.add_argument("--reference", type=int, default=100)
    parser.add_argument("--nprocs", type=int, default=1, help="worker processes over chunks")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    bvals, bvecs = protocol()
    truth, mu, noisy = _simulate(args.voxels, rng, bvals, bvecs)
    rows = []
    for name in ("dti", "noddi"):
        model = REGISTRY[name](bvals, bvecs, **NO_PREPROC)
        start = time.perf_counter()
        fit = model.fit(noisy, nprocs=args.nprocs)
        wall = time.perf_counter() - start
        rows.append((name, wall, fit))
        rate = args.voxels / wall
        print(
            f"{name:6s} ({args.nprocs} proc): {args.voxels} voxels in {wall:.1f} s = "
            f"{rate:,.0f} voxels/s; 1.8 M voxels: {BRAIN_VOXELS / rate:.0f} s"
        )
    noddi_wall, noddi_fit = rows[1][1], rows[1][2]
    maps = noddi_fit.maps()
    err = np.abs(np.stack([maps["ICVF"], maps["ODI"], maps["ISOVF"]], 1) - truth)
    k = min(args.reference, args.voxels)
    start = time.perf_counter()
    ref = np.array([_nonlinear_noddi(noisy[i], bvals, bvecs, mu[i]) for i in range(k)])
    ref_wall = time.perf_counter() - start
    ref_err = np.abs(ref - truth[:k])
    ratio = (args.voxels / noddi_wall) / (k / ref_wall)
    print(
        f"scipy per-voxel NODDI (direction given): {k} voxels in {ref_wall:.1f} s = "
        f"{k / ref_wall:,.1f} voxels/s; msqmri noddi is {ratio:,.0f}x faster"
    )
    print(
        "median |error| ICVF/ODI/ISOVF at SNR 50: msqmri "
        + "/".join(f"{v:.3f}" for v in np.median(err, 0))
        + f" (all {args.voxels}); scipy "
        + "/".join(f"{v:.3f}" for v in np.median(ref_err, 0))
        + f" (first {k}); msqmri on the same {k}: "
        + "/".join(f"{v:.3f}" for v in np.median(err[:k], 0))
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {peak:.0f} MB")


if __name__ == "__main__":
    main()
