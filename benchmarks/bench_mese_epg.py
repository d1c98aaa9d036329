"""EPG T2 of ``mese_t2`` (``fit_method = "epg"``) vs a per-voxel scipy reference (prints only).

Voxels: T2 40-150 ms, refocusing angle 110-180°, M0 1000, Rician noise at SNR 100 (M0 over
the noise sigma of each channel); CPMG trains of 16 and 32 echoes 10 ms apart. The batched
fit (dictionary match + Gauss-Newton refinement, angle fitted per voxel) runs in this process
on one core (one BLAS thread) through ``model.fit`` (which also computes the rmse map), on
``--voxels`` voxels (default 1e6) simulated with the model's own forward model.

The reference fits a random subset (``--reference`` voxels), one voxel at a time, with
:func:`scipy.optimize.least_squares` (trust-region reflective, bounds T2 1 ms-5 s, angle
50-180°, started at T2 100 ms / 150° / the first echo) on the same EPG model, the shared
kernel :func:`~bids_app.models._epg.epg_cpmg_decay` evaluated at each trial point. Both fit
the same subset, simulated with that exact kernel (not the dictionary), so the accuracy of
both is measured against the same truth: median relative T2 error and median absolute angle
error are printed beside the speeds and their ratio. The load average is printed too (the
machine may be shared: judge the wall times by it, or by the CPU-second rates printed beside
them, which load disturbs less).

    python benchmarks/bench_mese_epg.py [--voxels 1000000] [--reference 200] [--echoes 16 32]
"""

from __future__ import annotations

import os

# one BLAS thread: the figures are for one core
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy.optimize import least_squares  # noqa: E402

from bids_app.models._epg import epg_cpmg_decay  # noqa: E402
from bids_app.models.relaxometry import MESET2Model  # noqa: E402
from bids_app.models.relaxometry._epg_dictionary import _cached  # noqa: E402

logger = logging.getLogger("bench_mese_epg")

ESP, M0, SNR = 0.01, 1000.0, 100.0


def rician(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``clean`` plus complex Gaussian noise of sigma ``M0 / SNR``."""
    sigma = M0 / SNR
    re = clean + rng.normal(0, sigma, clean.shape)
    return np.hypot(re, rng.normal(0, sigma, clean.shape))


def truth(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """T2 (s) and refocusing angles (degrees) of ``n`` voxels."""
    return rng.uniform(0.04, 0.15, n), rng.uniform(110.0, 180.0, n)


def exact_signal(t2: np.ndarray, angle: np.ndarray, n_echoes: int) -> np.ndarray:
    """M0 x |EPG| of every voxel with the shared kernel, one voxel at a time."""
    return np.stack(
        [M0 * np.abs(epg_cpmg_decay([t], ESP, n_echoes, a)[0, :, 0]) for t, a in zip(t2, angle)]
    )


def scipy_reference(data: np.ndarray, n_echoes: int) -> np.ndarray:
    """Per-voxel least squares on (T2, angle, M0): (n, 3)."""
    out = np.empty((data.shape[0], 3))

    def residual(p, y):
        return p[2] * np.abs(epg_cpmg_decay([p[0]], ESP, n_echoes, p[1])[0, :, 0]) - y

    for k, y in enumerate(data):
        res = least_squares(
            residual,
            (0.1, 150.0, y[0]),
            args=(y,),
            bounds=((1e-3, 50.0, 0.0), (5.0, 180.0, np.inf)),
            x_scale=(0.05, 10.0, y[0]),
        )
        out[k] = res.x
    return out


def run(n_voxels: int, n_ref: int, n_echoes: int, rng: np.random.Generator) -> None:
    """Benchmark one protocol and print the figures."""
    te = ESP * np.arange(1, n_echoes + 1)
    _cached.cache_clear()
    t0 = time.perf_counter()
    model = MESET2Model(te, fit_method="epg")  # builds the dictionary
    setup = time.perf_counter() - t0

    t2, angle = truth(n_voxels, rng)
    params = np.stack((t2, 1 / t2, np.full(n_voxels, M0), angle), axis=-1)
    data = np.empty((n_voxels, n_echoes))
    for s in range(0, n_voxels, 100000):
        data[s : s + 100000] = rician(model.predict(params[s : s + 100000]), rng)
    t0, c0 = time.perf_counter(), time.process_time()
    fit = model.fit(data)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    fast_rate = n_voxels / wall
    big_err = np.nanmedian(np.abs(fit.params[:, 0] / t2 - 1))

    rt2, rangle = truth(n_ref, rng)
    sub = rician(exact_signal(rt2, rangle, n_echoes), rng)
    t0 = time.perf_counter()
    fast = model.fit(sub).params
    t_fast_sub = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    ref = scipy_reference(sub, n_echoes)
    ref_rate = n_ref / (time.perf_counter() - t0)
    ref_cpu_rate = n_ref / (time.process_time() - c0)

    def errors(t2_est, a_est):
        return np.median(np.abs(t2_est / rt2 - 1)), np.median(np.abs(a_est - rangle))

    e_fast, e_ref = errors(fast[:, 0], fast[:, 3]), errors(ref[:, 0], ref[:, 1])
    print(f"--- {n_echoes} echoes, {ESP * 1e3:g} ms spacing, SNR {SNR:g} ---")
    print(f"dictionary set-up            {setup:8.3f} s (once per protocol)")
    print(
        f"batched EPG fit              {fast_rate:12.0f} voxels/s  ({n_voxels} voxels in "
        f"{wall:.2f} s, rmse map included; median |dT2/T2| {100 * big_err:.2f} %)"
    )
    print(f"  per CPU second             {n_voxels / cpu:12.0f} voxels/s  ({cpu:.2f} CPU s)")
    print(f"scipy least_squares per voxel{ref_rate:12.1f} voxels/s  ({n_ref} voxels)")
    print(f"  per CPU second             {ref_cpu_rate:12.1f} voxels/s")
    print(
        f"speed ratio                  {fast_rate / ref_rate:12.0f} x (wall), "
        f"{n_voxels / cpu / ref_cpu_rate:.0f} x (CPU)"
    )
    print(
        f"accuracy on the {n_ref} exact-kernel voxels: median |dT2/T2| batched "
        f"{100 * e_fast[0]:.2f} % vs scipy {100 * e_ref[0]:.2f} %; median |d angle| "
        f"{e_fast[1]:.2f} vs {e_ref[1]:.2f} deg (batched subset fit {t_fast_sub:.3f} s)"
    )


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=200)
    parser.add_argument("--echoes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(args.seed)
    print(f"load average before: {os.getloadavg()}")
    for n_echoes in args.echoes:
        run(args.voxels, args.reference, n_echoes, rng)
    print(f"load average after:  {os.getloadavg()}")


if __name__ == "__main__":
    main()
