"""Speed of the TB1TFL, TB1EPI and TB1SRGE conversions of the ``b1`` model (one core).

Prints voxels/s of the batched model fit on ``--voxels`` simulated voxels, next to a
per-voxel ``scipy.optimize`` reference run in the same process on a subset: for TB1EPI a
bounded least-squares fit of B1 to the STE/SE ratios of the consistent angles, for TB1SRGE
a Brent root of (model ratio - measured ratio) on the monotonic branch.

    python benchmarks/bench_b1_types.py [--voxels 1000000] [--reference 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from bids_app.models.b1 import B1Model
from bids_app.models.b1._epi import EPIProtocol
from bids_app.models.b1._sa2rage import SA2RAGEProtocol
from bids_app.models.b1._tfl import TFLProtocol

FLIPS = tuple(float(f) for f in range(65, 120, 5))
TM, T1 = 0.0338, 1.2


def _time(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    """Run the benchmark and print one line per type."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, m = args.voxels, args.reference
    b1 = rng.uniform(0.6, 1.4, n)

    tfl = B1Model("tb1tfl", protocol=TFLProtocol(1, 0, 38.0, "famp.nii.gz"))
    data = np.stack([np.full(n, 700.0), np.rint(380.0 * b1)], -1)
    out, dt = _time(lambda: tfl.fit(data, nprocs=1).params[:, 0])
    print(f"TB1TFL : {n / dt:12.0f} voxels/s (closed form; no iterative reference needed)")

    th = np.deg2rad(np.asarray(FLIPS))[None] * b1[:, None]
    se = np.abs(np.sin(th) ** 3) + rng.normal(0, 0.01, th.shape)
    ste = np.abs(np.sin(th) ** 3 * np.cos(th)) * np.exp(-TM / T1) + rng.normal(0, 0.01, th.shape)
    se, ste = np.abs(se), np.abs(ste)
    idx = np.arange(len(FLIPS))
    proto = EPIProtocol(tuple(2 * idx), tuple(2 * idx + 1), FLIPS, TM)
    signal = np.empty((n, 2 * len(FLIPS)))
    signal[:, 0::2], signal[:, 1::2] = se, ste
    epi = B1Model("tb1epi", protocol=proto)
    out, dt = _time(lambda: epi.fit(signal, nprocs=1).params[:, 0])
    err = np.median(np.abs(out / b1 - 1))

    def epi_ref(i):
        r = np.clip(np.exp(TM / T1) * ste[i] / se[i], 0, 1)
        keep = np.argsort(-se[i])[:5]
        alpha = np.deg2rad(np.asarray(FLIPS))[keep]

        def cost(x):
            return float(np.sum((np.abs(np.cos(x * alpha)) - r[keep]) ** 2))

        return minimize_scalar(cost, bounds=(0.3, 2.0), method="bounded").x

    ref, dt_ref = _time(lambda: np.array([epi_ref(i) for i in range(m)]))
    ref_err = np.median(np.abs(ref / b1[:m] - 1))
    print(
        f"TB1EPI : {n / dt:12.0f} voxels/s (median |err| {100 * err:.2f} %); scipy "
        f"per-voxel bounded fit {m / dt_ref:8.0f} voxels/s (median |err| {100 * ref_err:.2f} %)"
    )

    sa = SA2RAGEProtocol(2.4, (0.047, 1.8), (4.0, 11.0), 0.0028, 16, 32)
    s1, s2 = sa.signals(b1, T1)
    noisy = np.stack([s1, s2], -1) + rng.normal(0, 0.002, (n, 2))
    srge = B1Model("tb1srge", protocol=sa)
    out, dt = _time(lambda: srge.fit(noisy, nprocs=1).params[:, 0])
    err = np.nanmedian(np.abs(out / b1 - 1))

    def srge_ref(i):
        ratio = noisy[i, 0] / noisy[i, 1]

        def f(x):
            a, b = sa.signals(np.array([x]), T1)
            return float(a[0] / b[0]) - ratio

        try:
            return brentq(f, 0.3, 2.0)
        except ValueError:
            return np.nan

    ref, dt_ref = _time(lambda: np.array([srge_ref(i) for i in range(m)]))
    ref_err = np.nanmedian(np.abs(ref / b1[:m] - 1))
    print(
        f"TB1SRGE: {n / dt:12.0f} voxels/s (median |err| {100 * err:.2f} %); scipy "
        f"per-voxel brentq {m / dt_ref:8.0f} voxels/s (median |err| {100 * ref_err:.2f} %)"
    )


if __name__ == "__main__":
    main()
