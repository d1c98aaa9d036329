"""Throughput and accuracy of the ``mpm`` fit vs a per-voxel scipy reference (prints only).

The data: WM-like voxels (T1 0.85 s, R2* 20 1/s, M0 690, MTsat 1.6 p.u., each +-5 %; B1
0.8-1.2) of the hMRI protocol (PDw 6 deg x 8 echoes, T1w 21 deg x 8, MTw 6 deg x 6, TR 25 ms),
Rician noise at an SNR of ``--snr`` for the first PDw echo. Timed on one core (one BLAS
thread, ``nprocs=1``):

* the joint ESTATICS R2* fit (all echoes, one shared pseudo-inverse);
* the rest (exact-SPGR R1 Newton iterations, M0, MTsat) from the intercepts;
* the whole ``model.fit`` (masking, chunks, range checks, rmse);
* the same whole fit with the RF-spoiling correction (``SpoilingRFPhaseIncrement`` 50 deg)
  and with the S²-weighted ESTATICS option;

and, on ``--reference`` voxels, a per-voxel ``scipy.optimize.least_squares`` fit of the
same signal model (R1, R2*, M0, MTsat on all 22 magnitudes), with the median relative error
in WM of both against the truth, so that the speed-up is at equal accuracy.

    python benchmarks/bench_mpm.py [--voxels 1000000] [--reference 300] [--snr 100]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy.optimize import least_squares  # noqa: E402

from bids_app.models.base import Collection  # noqa: E402
from bids_app.models.relaxometry._estatics import estatics_fit  # noqa: E402
from bids_app.models.relaxometry._mpm_physics import (  # noqa: E402
    m0_exact,
    mtsat_from_m0,
    r1_exact,
)
from bids_app.models.relaxometry.mpm import MPMModel  # noqa: E402

TR = 0.025
TE = 0.0023 * np.arange(1, 9)
PROTOCOL = ((6.0, 8, False), (21.0, 8, False), (6.0, 6, True))


def forward(t1, r2s, m0, mts, b1):
    """(n, 22) noiseless magnitudes (ideal spoiling, Helms MT, exact SPGR)."""
    cols = []
    for flip, n, mt in PROTOCOL:
        a, e1 = np.deg2rad(flip) * b1, np.exp(-TR / t1)
        x = 1 - (mts / 100 if mt else 0.0)
        a0 = m0 * np.sin(a) * x * (1 - e1) / (1 - x * e1 * np.cos(a))
        cols.append(a0[..., None] * np.exp(-np.multiply.outer(r2s, TE[:n])))
    return np.concatenate(cols, axis=-1)


def data(n, snr, rng):
    t1, r2s = rng.normal(0.85, 0.04, n), rng.normal(20.0, 1.0, n)
    m0, mts, b1 = rng.normal(690.0, 30.0, n), rng.normal(1.6, 0.08, n), rng.uniform(0.8, 1.2, n)
    clean = forward(t1, r2s, m0, mts, b1)
    sigma = forward(0.85, 20.0, 690.0, 1.6, 1.0)[0] / snr
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    return noisy, np.stack((1 / t1, r2s, m0, mts), -1), b1


def reference(signal, b1):
    """Per-voxel least squares on the magnitudes: (n, 4) = R1, R2*, M0, MTsat."""
    out = np.empty((signal.shape[0], 4))
    for i in range(signal.shape[0]):
        scale = signal[i, 0]

        def resid(p, i=i, scale=scale):
            r1, r2s, m0, mts = p
            return (forward(1 / r1, r2s, m0 * scale, mts, b1[i]) - signal[i]) / scale

        sol = least_squares(resid, [1.0, 20.0, 10.0, 1.0], x_scale=[1.0, 10.0, 10.0, 1.0])
        out[i] = sol.x * [1, 1, scale, 1]
    return out


def _rate(n, fn, repeat=3):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def _err(params, truth):
    return 100 * np.nanmedian(np.abs(params / truth - 1), axis=0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--voxels", type=int, default=1_000_000)
    p.add_argument("--reference", type=int, default=300)
    p.add_argument("--snr", type=float, default=100.0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    signal, truth, b1 = data(args.voxels, args.snr, rng)
    ex = MPMModel.example_collections()
    model = MPMModel.from_collections(ex)
    inc = {"SpoilingRFPhaseIncrement": (50.0,) * 8}
    weighted = MPMModel.from_collections(ex, r2star_weighting="signal")
    spoiled = MPMModel.from_collections(
        {k: Collection(c.name, c.volumes, {**c.params, **inc}) for k, c in ex.items()}
    )
    n = args.voxels
    inter, _ = estatics_fit(signal, model.design)
    a6, a21 = np.deg2rad(6.0) * b1, np.deg2rad(21.0) * b1

    def rest():
        r1 = r1_exact(inter[:, 0], inter[:, 1], a6, a21, TR, TR)
        m0 = m0_exact(inter[:, 0], r1, a6, TR)
        mtsat_from_m0(inter[:, 2], m0, r1, a6, TR)

    cov = {"b1": b1}
    rows = [
        ("joint R2* (ESTATICS)", _rate(n, lambda: estatics_fit(signal, model.design))),
        ("R1 + PD + MTsat", _rate(n, rest)),
        ("whole mpm fit", _rate(n, lambda: model.fit(signal, covariates=cov), 1)),
        ("whole fit, spoiling corr.", _rate(n, lambda: spoiled.fit(signal, covariates=cov), 1)),
        ("whole fit, S2-weighted R2*", _rate(n, lambda: weighted.fit(signal, covariates=cov), 1)),
    ]
    print(f"one core, {n} voxels, SNR {args.snr:g} (first PDw echo, WM)")
    print(f"{'stage':28s} {'voxels/s':>12s}")
    for label, rate in rows:
        print(f"{label:28s} {rate:12.3g}")
    k = args.reference
    t = time.perf_counter()
    ref = reference(signal[:k], b1[:k])
    ref_rate = k / (time.perf_counter() - t)
    fast = model.fit(signal[:k], covariates={"b1": b1[:k]}).params
    print(f"{'scipy least_squares/voxel':28s} {ref_rate:12.3g}   (on {k} voxels)")
    print(f"speed-up of the whole fit: {rows[2][1] / ref_rate:.0f}x")
    print("median |relative error| in % (R1, R2*, PD, MTsat):")
    print(f"  mpm   (subset) {np.round(_err(fast, truth[:k]), 2)}")
    print(f"  scipy (subset) {np.round(_err(ref, truth[:k]), 2)}")
    full = model.fit(signal, covariates={"b1": b1}).params
    print(f"  mpm   (all)    {np.round(_err(full, truth), 2)}")
    wfit = weighted.fit(signal[:k], covariates={"b1": b1[:k]}).params
    print(f"  mpm S2-weighted R2* (subset) {np.round(_err(wfit, truth[:k]), 2)}")


if __name__ == "__main__":
    main()
