"""Throughput of each model's vectorised fit vs a per-voxel scipy reference (prints only)."""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from scipy.optimize import curve_fit

from bids_app.models.mt import MTRModel, MTsatModel
from bids_app.models.relaxometry import MEGRER2starModel, MESET2Model, VFAT1Model


def _rician(signal, sigma, rng):
    return np.hypot(
        signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape)
    )


def cases(n, rng):
    """(label, model, data, covariates, per-voxel reference function or None)."""
    t1 = rng.uniform(0.7, 1.5, n)
    m0 = rng.uniform(800, 1200, n)
    flips, tr = np.array([3.0, 8.0, 18.0]), 0.015
    vfa = VFAT1Model(flip_angle=flips, repetition_time=tr)
    b1 = rng.uniform(0.85, 1.15, n)
    sig = vfa.predict(np.stack([t1, 1 / t1, m0], -1), b1=b1)
    yield "vfa_t1 linear", vfa, _rician(sig, 2.0, rng), {"b1": b1}, None
    vfa_nl = VFAT1Model(flip_angle=flips, repetition_time=tr, fit_method="nonlinear")
    a = np.deg2rad(flips)

    def spgr(x, t1_, m0_):
        e = np.exp(-tr / t1_)
        return m0_ * np.sin(a) * (1 - e) / (1 - e * np.cos(a))

    yield "vfa_t1 nonlinear", vfa_nl, _rician(sig, 2.0, rng), {"b1": b1}, (spgr, [1.0, 1000.0])
    te = 0.004 + 0.005 * np.arange(6)
    r2s = rng.uniform(15, 30, n)
    gre = MEGRER2starModel(echo_time=te)
    sig = m0[:, None] * np.exp(-np.outer(r2s, te))
    mono = (lambda x, s0, r: s0 * np.exp(-r * x), [1000.0, 20.0])
    yield "megre_r2star loglinear", gre, _rician(sig, 5.0, rng), {}, mono
    yield (
        "megre_r2star nonlinear",
        MEGRER2starModel(echo_time=te, fit_method="nonlinear"),
        _rician(sig, 5.0, rng),
        {},
        mono,
    )
    te2 = 0.01 * np.arange(1, 17)
    r2 = rng.uniform(10, 15, n)
    sig = m0[:, None] * np.exp(-np.outer(r2, te2))
    yield (
        "mese_t2 loglinear",
        MESET2Model(echo_time=te2),
        _rician(sig, 5.0, rng),
        {},
        (lambda x, s0, r: s0 * np.exp(-r * x), [1000.0, 12.0]),
    )
    off = m0 * 0.05
    yield "mtr", MTRModel(), np.stack([off, off * 0.6], -1), {}, None
    mts = MTsatModel((6.0, 20.0, 6.0), (0.028, 0.028, 0.028), (False, False, True))
    data = np.stack([m0 * 0.08, m0 * 0.1, m0 * 0.05], -1) * rng.uniform(0.98, 1.02, (n, 3))
    yield "mtsat exact", mts, data, {"b1": b1}, None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--voxels", type=int, default=1_000_000)
    p.add_argument("--reference-voxels", type=int, default=500)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"{'model':26s} {'voxels/s':>12s} {'ref voxels/s':>13s} {'speed-up':>9s}")
    for label, model, data, cov, ref in cases(args.voxels, rng):
        t = time.perf_counter()
        model.fit(data, covariates=cov)
        rate = args.voxels / (time.perf_counter() - t)
        ref_rate = np.nan
        if ref is not None:
            fn, p0 = ref
            x = getattr(model, "echo_time", getattr(model, "flip_angle", None))
            k = args.reference_voxels
            t = time.perf_counter()
            for i in range(k):
                try:
                    curve_fit(fn, x, data[i], p0=p0, maxfev=2000)
                except RuntimeError:
                    pass
            ref_rate = k / (time.perf_counter() - t)
        print(f"{label:26s} {rate:12.0f} {ref_rate:13.0f} {rate / ref_rate:9.0f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: {peak:.0f} MB for {args.voxels} voxels per model")


if __name__ == "__main__":
    main()
