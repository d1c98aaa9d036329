"""Batched MP-PCA (:mod:`bids_app.models.diffusion._mppca`) vs dipy's ``mppca`` (prints only).

Data: the synthetic phantom (:func:`bids_app.synth.dwi.phantom`, ``--shape``) with 64
volumes (6 b=0, 29 directions at b=1000 and 2000 s/mm²) and Rician noise at SNR 20.

- dipy (``dipy.denoise.localpca.mppca``, patch radius 2) runs on a random subset of
  ``--subset`` masked voxels only (its cost is one patch per masked voxel), once with the
  BLAS threads as they are (what the pipeline gets) and once with one BLAS thread;
- ours runs on the same subset (interior voxels, so the same patches: agreement with dipy
  printed) and on the whole mask with stride 1 (every patch, as dipy), 2 (1/8 of the
  patches) and 3 (1/27), with its error to the noiseless truth.

Prints voxels/s (wall) and CPU s per 1000 voxels (less sensitive to other load), the
extrapolated wall time for 230 000 (2 mm brain) and 1 800 000 (1 mm brain) masked voxels,
the peak memory our call allocates besides its output (tracemalloc; a float32 C-order
input is read in place) and the load average
before and after: the machine may be shared, judge the figures by it.

    python benchmarks/bench_mppca.py [--shape 64 64 30] [--subset 400] [--batch 256]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import tracemalloc
import warnings

import numpy as np

from bids_app.models.diffusion._mppca import _one_blas_thread, mppca
from bids_app.synth.dwi import multishell_protocol, phantom, simulate_dwi

logger = logging.getLogger("bench_mppca")
TARGETS = (230_000, 1_800_000)


def _timed(fn, *args, **kwargs):
    w0, c0 = time.perf_counter(), time.process_time()
    res = fn(*args, **kwargs)
    return res, time.perf_counter() - w0, time.process_time() - c0


def _dipy(data, mask):
    from dipy.denoise.localpca import mppca as dipy_mppca

    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore")
        return dipy_mppca(
            data, mask=mask, patch_radius=2, return_sigma=True, suppress_warning=True
        )


def _row(name, n_vox, wall, cpu):
    ext = "  ".join(f"{t:,} vox: {t / n_vox * wall / 60:7.1f} min" for t in TARGETS)
    logger.info(
        "%-34s %8d vox %8.2f s %9.0f vox/s %7.2f CPU s/1000 vox | %s",
        name,
        n_vox,
        wall,
        n_vox / wall,
        1000 * cpu / n_vox,
        ext,
    )
    return n_vox / wall


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 64, 30))
    ap.add_argument("--subset", type=int, default=400, help="masked voxels given to dipy")
    ap.add_argument("--batch", type=int, default=256, help="patches per stacked eigh")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    rng = np.random.default_rng(0)
    ph = phantom(tuple(args.shape), rng)
    bvals, bvecs = multishell_protocol((1000, 2000), 29, 6, rng)
    sim = (ph["mask"], ph["s0"], ph["fractions"], ph["tensors"], bvals, bvecs)
    data, sigma = simulate_dwi(*sim, snr=20, rng=rng)
    clean, _ = simulate_dwi(*sim)
    mask = ph["mask"]
    n_mask = int(mask.sum())
    inner = np.zeros_like(mask)  # centres whose full patch fits (dipy's; no clamped ones)
    inner[2:-2, 2:-2, 2:-2] = mask[2:-2, 2:-2, 2:-2]
    pool = np.flatnonzero(inner)
    pick = rng.choice(pool, size=min(args.subset, pool.size), replace=False)
    sub = np.zeros_like(mask)
    sub.ravel()[pick] = True
    logger.info(
        "series %s, %d masked voxels, true sigma %.1f, dipy subset %d, batch %d",
        data.shape,
        n_mask,
        sigma,
        sub.sum(),
        args.batch,
    )
    logger.info("load average before: %s (%d CPUs)", os.getloadavg(), os.cpu_count())

    (ref, ref_s), w, c = _timed(_dipy, data, sub)
    v_dipy = _row("dipy, BLAS threads as they are", int(sub.sum()), w, c)
    with _one_blas_thread():
        (ref1, _), w, c = _timed(_dipy, data, sub)
    v_dipy1 = _row("dipy, 1 BLAS thread", int(sub.sum()), w, c)
    (ours, ours_s), w, c = _timed(mppca, data, mask=sub, batch_size=args.batch)
    v_sub = _row("ours, same subset", int(sub.sum()), w, c)
    ok = sub & np.isfinite(ref).all(-1)
    rel = np.sqrt(np.mean((ours[ok] - ref[ok]) ** 2) / np.mean(ref[ok] ** 2))
    rel_s = np.sqrt(np.mean((ours_s[ok] - ref_s[ok]) ** 2) / np.mean(ref_s[ok] ** 2))
    logger.info("  ours vs dipy on the subset: rel. RMS output %.2e, sigma %.2e", rel, rel_s)

    noise = np.sqrt(np.mean((data[mask] - clean[mask]) ** 2))
    for stride in (1, 2, 3):
        tracemalloc.start()
        (out, s), w, c = _timed(mppca, data, mask=mask, batch_size=args.batch, stride=stride)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        v = _row(f"ours, whole mask, stride {stride}", n_mask, w, c)
        err = np.sqrt(np.mean((out[mask] - clean[mask]) ** 2))
        logger.info(
            "  RMS error to truth %.2f (noisy %.2f), median sigma %.2f; %.1fx dipy as is, "
            "%.1fx dipy 1-thread; peak %.0f MB allocated besides the output (%.0f MB)",
            err,
            noise,
            float(np.median(s[mask])),
            v / v_dipy,
            v / v_dipy1,
            (peak - out.nbytes) / 2**20,
            out.nbytes / 2**20,
        )
    del ref1, v_sub
    logger.info("load average after: %s", os.getloadavg())


if __name__ == "__main__":
    main()
