"""Inversion-recovery T1 throughput on one core: batched RD-NLS vs per-voxel curve_fit.

``--voxels`` voxels (default 1e6) of Rician magnitude IR data, the synthetic protocol
(:mod:`bids_app.synth.irt1_series`: TI 50 ms-2.5 s, TR 4 s; WM SNR 100 at the longest TI),
tissue T1 40 % WM (0.85 s +- 5 %), 40 % GM (1.4 s +- 5 %), 20 % lesion (1.2-1.6 s), B1
0.8-1.2. The ``irt1`` model fits all of them (``rdnls`` and ``grid``); the reference fits
``|a + b exp(-TI/T1)|`` to each voxel of a subset with ``scipy.optimize.curve_fit``
(Levenberg-Marquardt from T1 = 1 s, a = max, b = -2 max), in the same process. Both print
their median relative T1 error on the subset, so the speed-up is at equal accuracy.

BLAS and OpenMP are pinned to one thread before numpy loads (one core); rates are per
CPU second of the process (``time.process_time``), with the wall-clock rate beside them,
since a shared machine's wall time includes other processes.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from scipy.optimize import OptimizeWarning, curve_fit  # noqa: E402

from bids_app.models.relaxometry.irt1 import IRT1Model  # noqa: E402
from bids_app.synth.irt1_series import INVERSION_TIMES, TR_IR, ir_magnetisation  # noqa: E402

M0 = 690.0


def data(n: int, rng: np.random.Generator, snr: float):
    """True T1 (n,) and noisy magnitude (n, m)."""
    tissue = rng.choice(3, n, p=(0.4, 0.4, 0.2))
    t1 = np.where(tissue == 0, 0.85, 1.4) * rng.normal(1.0, 0.05, n)
    t1 = np.where(tissue == 2, rng.uniform(1.2, 1.6, n), t1)
    b1 = rng.uniform(0.8, 1.2, n)
    ti = np.asarray(INVERSION_TIMES)
    clean = M0 * ir_magnetisation(t1[:, None], b1[:, None], ti)
    sigma = M0 * ir_magnetisation(0.85, 1.0, ti.max()) / snr
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    return t1, noisy


def reference(y: np.ndarray, ti: np.ndarray) -> np.ndarray:
    """Per-voxel curve_fit of the magnitude model; NaN where it fails."""

    def model(x, t1, a, b):
        return np.abs(a + b * np.exp(-x / t1))

    out = np.full(y.shape[0], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, row in enumerate(y):
            top = float(row.max())
            try:
                p, _ = curve_fit(model, ti, row, p0=(1.0, top, -2 * top), maxfev=2000)
                out[i] = abs(p[0])
            except RuntimeError:
                pass
    return out


def _errors(fit: np.ndarray, truth: np.ndarray) -> str:
    rel = fit / truth - 1
    ok = np.isfinite(rel)
    return (
        f"median |rel err| {np.median(np.abs(rel[ok])) * 100:5.2f} %, "
        f"bias {np.median(rel[ok]) * 100:+5.2f} %, failed {np.mean(~ok) * 100:.2f} %"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voxels", type=int, default=1_000_000)
    p.add_argument("--reference-voxels", type=int, default=1000)
    p.add_argument("--snr", type=float, default=100.0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    t1, y = data(args.voxels, rng, args.snr)
    ti = np.asarray(INVERSION_TIMES)
    k = min(args.reference_voxels, args.voxels)
    print(f"irt1: {args.voxels} voxels, {ti.size} TIs, SNR {args.snr:g}, one thread")
    rates = {}
    for method in ("rdnls", "grid"):
        model = IRT1Model(ti, TR_IR, fit_method=method)
        start, cpu = time.perf_counter(), time.process_time()
        fit = model.fit(y)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        rates[method] = args.voxels / cpu
        t1_fit = fit.params[:, 0]
        print(
            f"  {method:6s} {rates[method]:10.0f} voxels/s (CPU; wall {args.voxels / wall:.0f})"
            f"   all: {_errors(t1_fit, t1)}"
        )
        print(f"  {'':6s} {'':10s}            subset of {k}: {_errors(t1_fit[:k], t1[:k])}")
    start, cpu = time.perf_counter(), time.process_time()
    ref = reference(y[:k], ti)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ref_rate = k / cpu
    print(
        f"  curve_fit {ref_rate:7.0f} voxels/s (CPU; wall {k / wall:.0f})"
        f"   subset of {k}: {_errors(ref, t1[:k])}"
    )
    for method, rate in rates.items():
        print(f"  speed-up {method}: {rate / ref_rate:.0f}x")


if __name__ == "__main__":
    main()
