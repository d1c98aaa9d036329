"""Whole-brain myelin water fit vs a per-voxel scipy NNLS reference (prints only).

Voxels are three-pool EPG simulations (:mod:`bids_app.synth.mwf`; WM/GM/lesion mix, true
refocusing angle 150-180°, Rician noise at SNR 100 of the largest echo), 32 echoes 10 ms
apart, by default 1.5 M of them (the 1 mm brain). The vectorised fit (angle fitted per voxel,
chi2 1.02) runs through :func:`~bids_app.models.fitting.fit_masked` on ``--nprocs`` workers.

The reference fits a random subset one voxel at a time with the same bases and the same
angle treatment: the same ridge-misfit angle criterion on the coarse grid, spline minimum and
local fine-grid search (numpy, per voxel), then :func:`scipy.optimize.nnls` for the plain
spectrum and chi2 1.02 by the same secant steps in log mu (same start, prior slope and
tolerance) on the augmented system ``[A; sqrt(mu) I]``, one scipy call per weight.

Prints voxels/s of both, their ratio, the wall time and its extrapolation to 1.5 M voxels,
the MWF error of both on the subset, the peak memory (this process and its largest worker),
the CPU seconds of the fit (a figure less sensitive to other load than the wall time) and the
load average before and after (the machine may be shared: judge the figures by it).

    python benchmarks/bench_mwf.py [--voxels 1500000] [--nprocs 2] [--reference 300]
"""

from __future__ import annotations

import os

# one BLAS thread per process (the workers inherit it): --nprocs processes, not oversubscribed
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy.interpolate import CubicSpline  # noqa: E402
from scipy.optimize import nnls  # noqa: E402

from bids_app.models.mwf import MWFModel, _dual, _fit  # noqa: E402
from bids_app.synth.mwf import simulate_voxels  # noqa: E402

logger = logging.getLogger("bench_mwf")


def _cpu_seconds():
    """User + system CPU seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_voxels(n, rng, *, unique=40000, snr=100.0):
    """``n`` noisy voxels (float32) from ``unique`` noiseless ones; returns (data, MWF truth)."""
    parts = [simulate_voxels(unique // 3, rng, tissue=t, snr=None) for t in ("WM", "GM", "lesion")]
    clean = np.vstack([p[0] for p in parts])
    mwf = np.concatenate([p[1]["MWF"] for p in parts])
    pick = rng.integers(0, clean.shape[0], n)
    data = np.empty((n, clean.shape[1]), dtype=np.float32)
    for s in range(0, n, 100000):  # noise block by block: bounded memory
        c = clean[pick[s : s + 100000]]
        sigma = c.max(axis=1, keepdims=True) / snr
        noise = rng.normal(size=(2, *c.shape)) * sigma
        data[s : s + 100000] = np.hypot(c + noise[0], noise[1])
    return data, mwf[pick]


def reference_angle(basis, y, yy):
    """Fine-grid angle index of one voxel: the model's criterion, evaluated per voxel."""
    crit = basis.criterion
    coarse = yy - np.sum((y @ crit[basis.coarse]) ** 2, axis=-1)
    fine = basis.angles
    j = int(np.argmin(CubicSpline(fine[basis.coarse], coarse)(fine)))
    span = min(2 * _fit._LOCAL + 1, fine.size)
    lo = int(np.clip(j - _fit._LOCAL, 0, fine.size - span))
    local = np.sum((y @ crit[lo : lo + span]) ** 2, axis=-1)
    return lo + int(np.argmax(local))


def reference_fit(model, y, factor=1.02, tol=1e-3, max_iter=12):
    """MWF (percent) of one voxel by scipy NNLS calls (the per-voxel approach)."""
    b = model.basis
    y = y / np.max(np.abs(y))
    j = reference_angle(b, y, float(y @ y))
    a = b.bases[j]
    m = a.shape[1]
    x, r0 = nnls(a, y)
    chi2_0 = r0**2
    target = factor * chi2_0
    scale = np.trace(b.grams[j]) / m
    zeros = np.zeros(m)
    t, prev, best = _dual._START, None, np.inf
    for _ in range(max_iter):  # secant steps in log10 of the relative weight
        aug = np.vstack([a, np.sqrt(10**t * scale) * np.eye(m)])
        xm, _ = nnls(aug, np.r_[y, zeros])
        chi2 = np.sum((a @ xm - y) ** 2)
        err = abs(chi2 - target) / target
        if err < best:
            x, best = xm, err
        if best <= tol:
            break
        g = np.log(max(chi2 / chi2_0 - 1, 1e-30)) - np.log(factor - 1)
        slope = _dual._SLOPE if prev is None else (g - prev[1]) / (t - prev[0])
        slope = slope if np.isfinite(slope) and slope > 0.05 else _dual._SLOPE
        prev = (t, g)
        t = t - float(np.clip(g / slope, -1.5, 1.5))
    mw = model.t2 < model.options["mw_cutoff"]
    return 100 * x[mw].sum() / x.sum()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=1_500_000)
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--reference", type=int, default=300, help="voxels of the scipy loop")
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load0 = os.getloadavg()
    rng = np.random.default_rng(args.seed)
    data, truth = make_voxels(args.voxels, rng)
    model = MWFModel.from_collections(MWFModel.example_collections())
    logger.info(
        "%d voxels x %d echoes, %d T2, %d fine / %d coarse angles; load average before %s",
        args.voxels,
        data.shape[1],
        model.t2.size,
        model.basis.angles.size,
        model.basis.coarse.size,
        " ".join(f"{v:.2f}" for v in load0),
    )

    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    fit = model.fit(data, nprocs=args.nprocs, chunk_size=args.chunk)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    mwf = fit.params[:, 0]
    sub = rng.choice(args.voxels, min(args.reference, args.voxels), replace=False)
    t0 = time.perf_counter()
    ref = np.array([reference_fit(model, data[i].astype(float)) for i in sub])
    ref_wall = time.perf_counter() - t0

    fast, slow = args.voxels / wall, sub.size / ref_wall
    nproc = args.nprocs
    logger.info("batched : %10.0f voxels/s  wall %7.1f s on %d process(es)", fast, wall, nproc)
    logger.info("scipy   : %10.1f voxels/s  (%d voxels, 1 process)", slow, sub.size)
    logger.info("ratio   : %10.1f x  (per process: %.1f x)", fast / slow, fast / slow / nproc)
    logger.info("1.5 M voxels would take %.0f s at this rate", 1.5e6 / fast)
    logger.info(
        "CPU time of the fit (this process + workers): %.1f s, %.0f voxels per CPU second: "
        "with %d idle cores 1.5 M voxels would take about %.0f s",
        cpu,
        args.voxels / cpu,
        nproc,
        1.5e6 / (args.voxels / cpu) / nproc,
    )
    err = np.abs(mwf - truth)
    logger.info(
        "MWF |error| median %.2f points (all), subset: batched %.2f / scipy %.2f; "
        "batched vs scipy on the subset: median |difference| %.3f points",
        np.nanmedian(err),
        np.nanmedian(err[sub]),
        np.nanmedian(np.abs(ref - truth[sub])),
        np.nanmedian(np.abs(ref - mwf[sub])),
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    logger.info("peak RSS: this process %.0f MB, largest worker %.0f MB", peak, kids)
    logger.info("load average after %s", " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
