"""Whole-brain myelin water fit vs a per-voxel scipy NNLS reference (prints only).

Voxels are three-pool EPG simulations (:mod:`bids_app.synth.mwf`; WM/GM/lesion mix, true
refocusing angle 150-180°, Rician noise at SNR 100 of the largest echo), 32 echoes 10 ms
apart, by default 1.5 M of them (the 1 mm brain). The vectorised fit (angle fitted per voxel,
chi2 1.02) runs through :func:`~bids_app.models.fitting.fit_masked` on ``--nprocs`` workers.
The reference fits a random subset one voxel at a time with :func:`scipy.optimize.nnls` and the
same bases: the coarse angle grid, the spline minimum, then chi2 1.02 by bisection in log mu
on the augmented system ``[A; sqrt(mu) I]``. Prints voxels/s of both, their ratio, the wall
time, the MWF error of both on the subset and the peak memory (this process and its workers).

    python benchmarks/bench_mwf.py [--voxels 1500000] [--nprocs 2] [--reference 200]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.optimize import nnls

from bids_app.models.mwf import MWFModel
from bids_app.synth.mwf import simulate_voxels


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


def reference_fit(model, y, factor=1.02):
    """MWF (percent) of one voxel by scipy NNLS calls (the per-voxel approach)."""
    b = model.basis
    y = y / np.max(np.abs(y))
    chi2 = np.array([nnls(b.bases[a], y)[1] ** 2 for a in b.coarse])
    fine = b.angles
    j = int(np.argmin(CubicSpline(fine[b.coarse], chi2)(fine)))
    a = b.bases[j]
    x0, r0 = nnls(a, y)
    target = factor * r0**2
    scale = np.trace(b.grams[j]) / a.shape[1]
    zeros = np.zeros(a.shape[1])
    lo, hi, x = -9.0, 2.0, x0
    for _ in range(12):  # bisection in log10 of the relative weight
        mid = 0.5 * (lo + hi)
        aug = np.vstack([a, np.sqrt(10**mid * scale) * np.eye(a.shape[1])])
        xm, _ = nnls(aug, np.r_[y, zeros])
        if np.sum((a @ xm - y) ** 2) > target:
            hi = mid
        else:
            lo, x = mid, xm
    mw = model.t2 < model.options["mw_cutoff"]
    return 100 * x[mw].sum() / x.sum()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=1_500_000)
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--reference", type=int, default=200, help="voxels of the scipy loop")
    ap.add_argument("--chunk", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    data, truth = make_voxels(args.voxels, rng)
    model = MWFModel.from_collections(MWFModel.example_collections())
    print(
        f"{args.voxels} voxels x {data.shape[1]} echoes, {model.t2.size} T2, "
        f"{model.basis.angles.size} fine / {model.basis.coarse.size} coarse angles"
    )

    t0 = time.perf_counter()
    fit = model.fit(data, nprocs=args.nprocs, chunk_size=args.chunk)
    wall = time.perf_counter() - t0
    mwf = fit.params[:, 0]
    sub = rng.choice(args.voxels, min(args.reference, args.voxels), replace=False)
    t0 = time.perf_counter()
    ref = np.array([reference_fit(model, data[i].astype(float)) for i in sub])
    ref_wall = time.perf_counter() - t0

    fast, slow = args.voxels / wall, sub.size / ref_wall
    print(f"batched : {fast:10.0f} voxels/s  wall {wall:8.1f} s on {args.nprocs} process(es)")
    print(f"scipy   : {slow:10.1f} voxels/s  ({sub.size} voxels, 1 process)")
    print(f"ratio   : {fast / slow:10.1f} x  (per core: {fast / slow / args.nprocs:.1f} x)")
    print(f"1.5 M voxels would take {1.5e6 / fast:.0f} s at this rate")
    err = np.abs(mwf - truth)
    ref_err = np.nanmedian(np.abs(ref - truth[sub]))
    print(
        f"MWF |error| median {np.nanmedian(err):.2f} points (all), subset: batched "
        f"{np.nanmedian(err[sub]):.2f} / scipy {ref_err:.2f}"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: this process {peak:.0f} MB, largest worker {kids:.0f} MB")


if __name__ == "__main__":
    main()
