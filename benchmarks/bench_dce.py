"""Extended Tofts on many voxels: batched fit vs per-voxel scipy ``curve_fit`` (prints only).

Simulates ``--voxels`` curves (default 1.5 M) of ``--nt`` samples (default 60, 5 s apart,
Parker AIF with Hct 0.42 arriving at 30 s, Gaussian noise sd 0.01 mM), fits them with
:func:`bids_app.models.perfusion._dce_fit.fit_tofts` (Murase linear solution + batched
Levenberg-Marquardt) in chunks spread over ``--workers`` threads, and fits the first
``--ref-voxels`` (default 300) one by one with ``scipy.optimize.curve_fit`` (same forward
model, same bounds). Prints wall times, voxels/s, their ratio, peak RSS and the accuracy of
both against the simulated truth (median absolute error and the fraction of voxels within
the OSIPI tolerances).

    python benchmarks/bench_dce.py [--voxels 1500000] [--workers 2]
"""

from __future__ import annotations

import argparse
import logging
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.optimize import curve_fit

from bids_app.models.perfusion._aif import parker_aif
from bids_app.models.perfusion._dce_fit import TOFTS_BOUNDS, fit_tofts
from bids_app.models.perfusion._dce_physics import tofts_conc

logger = logging.getLogger("bench_dce")
TOL = {"ktrans": (0.005, 0.1), "ve": (0.05, 0.0), "vp": (0.025, 0.0)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def simulate(n, nt, rng, chunk=200_000):
    t = np.arange(nt) * 5.0
    cp = parker_aif(t, delay_s=30.0, hematocrit=0.42)
    truth = {
        "ktrans": rng.uniform(0.01, 0.5, n),
        "ve": rng.uniform(0.05, 0.6, n),
        "vp": rng.uniform(0.005, 0.1, n),
    }
    ct = np.empty((n, nt))
    for s in range(0, n, chunk):
        sl = slice(s, min(s + chunk, n))
        ct[sl] = tofts_conc(t, cp, truth["ktrans"][sl], truth["ve"][sl], truth["vp"][sl])
        ct[sl] += rng.normal(0.0, 0.01, (sl.stop - sl.start, nt))
    return t, cp, ct, truth


def accuracy(fit, truth, sl=slice(None)):
    parts = []
    for k, (atol, rtol) in TOL.items():
        err = np.abs(fit[k] - truth[k][sl])
        ok = err <= atol + rtol * np.abs(truth[k][sl])
        parts.append(f"{k}: median |err| {np.median(err):.4f}, within OSIPI tol {ok.mean():.1%}")
    return "; ".join(parts)


def batched(t, cp, ct, workers, chunk):
    starts = range(0, ct.shape[0], chunk)

    def job(s):
        return s, fit_tofts(t, ct[s : s + chunk], cp, extended=True, chunk_size=chunk)

    out = {k: np.empty(ct.shape[0]) for k in ("ktrans", "ve", "vp")}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for s, res in pool.map(job, starts):
            for k in out:
                out[k][s : s + chunk] = res[k][: ct.shape[0] - s]
    return out


def per_voxel(t, cp, ct):
    def model(tt, kt, ve, vp):
        return tofts_conc(tt, cp, np.array([kt]), np.array([ve]), np.array([vp]))[0]

    lo = [TOFTS_BOUNDS[k][0] for k in ("ktrans", "ve", "vp")]
    hi = [TOFTS_BOUNDS[k][1] for k in ("ktrans", "ve", "vp")]
    out = np.empty((ct.shape[0], 3))
    for i, y in enumerate(ct):
        try:
            out[i] = curve_fit(model, t, y, p0=[0.6, 0.2, 0.01], bounds=(lo, hi))[0]
        except RuntimeError:
            out[i] = np.nan
    return dict(zip(("ktrans", "ve", "vp"), out.T))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=int, default=1_500_000)
    ap.add_argument("--nt", type=int, default=60)
    ap.add_argument("--ref-voxels", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    t, cp, ct, truth = simulate(args.voxels, args.nt, rng)
    logger.info(
        "simulated %d voxels x %d samples in %.1f s (RSS %.0f MB)",
        args.voxels,
        args.nt,
        time.perf_counter() - t0,
        peak_rss_mb(),
    )
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    fit = batched(t, cp, ct, args.workers, args.chunk)
    wall = time.perf_counter() - t0
    rate = args.voxels / wall
    logger.info(
        "batched extended Tofts: %.1f s, %.0f voxels/s (%d threads, chunks of %d); "
        "peak RSS %.0f MB (%.0f MB above the data)",
        wall,
        rate,
        args.workers,
        args.chunk,
        peak_rss_mb(),
        peak_rss_mb() - rss0,
    )
    logger.info("  accuracy (all voxels): %s", accuracy(fit, truth))
    m = min(args.ref_voxels, args.voxels)
    sl = slice(0, m)
    t0 = time.perf_counter()
    ref = per_voxel(t, cp, ct[sl])
    ref_wall = time.perf_counter() - t0
    ref_rate = m / ref_wall
    logger.info("per-voxel curve_fit on %d voxels: %.1f s, %.0f voxels/s", m, ref_wall, ref_rate)
    logger.info("  accuracy (curve_fit): %s", accuracy(ref, truth, sl))
    logger.info(
        "  accuracy (batched, same voxels): %s",
        accuracy({k: v[sl] for k, v in fit.items()}, truth, sl),
    )
    logger.info(
        "speed-up %.0fx; curve_fit would take %.0f min for %d voxels",
        rate / ref_rate,
        args.voxels / ref_rate / 60.0,
        args.voxels,
    )


if __name__ == "__main__":
    main()
