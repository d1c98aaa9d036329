"""Batched MP-PCA (bids_app.models.diffusion._mppca) against dipy and against known truth.

Veraart J et al. NeuroImage 2016;142:394-406 (criterion, reconstruction) and MRM
2016;76:1582-1593 (noise map); overcomplete weights of Manjon et al. PLoS ONE 2013.
"""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.models.diffusion._mppca import mp_classifier, mppca
from bids_app.synth.dwi import multishell_protocol, phantom, simulate_dwi

SIGMA = 60.0


def _rel_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))


@pytest.fixture(scope="module")
def phantom_series():
    """A 20x20x12x40 phantom series (2 shells, 6 b=0) with Rician noise at SNR 20."""
    rng = np.random.default_rng(1)
    ph = phantom((20, 20, 12), rng)
    bvals, bvecs = multishell_protocol((1000, 2000), 17, 6, rng)
    args = (ph["mask"], ph["s0"], ph["fractions"], ph["tensors"], bvals, bvecs)
    noisy, sigma = simulate_dwi(*args, snr=20, rng=rng)
    clean, _ = simulate_dwi(*args)
    return noisy, clean, ph["mask"], sigma


@pytest.fixture(scope="module")
def dipy_result(phantom_series):
    from dipy.denoise.localpca import mppca as dipy_mppca

    noisy, _, mask, _ = phantom_series
    with np.errstate(invalid="ignore"):
        return dipy_mppca(
            noisy, mask=mask, patch_radius=2, return_sigma=True, suppress_warning=True
        )


def _low_rank(rank, rng, shape=(16, 16, 12), n=64):
    """Rank-``rank`` signal (i.i.d. voxel coefficients 12, 6, 3, ... x SIGMA on orthonormal
    volume patterns, offset 2e4 so nothing is clipped) and its Gaussian-noise copy."""
    amp = SIGMA * 12.0 / 2.0 ** np.arange(rank)
    coef = rng.standard_normal((int(np.prod(shape)), rank)) * amp
    basis = np.linalg.qr(rng.standard_normal((n, rank)))[0]
    clean = (2.0e4 + coef @ basis.T).reshape(*shape, n)
    noisy = clean + SIGMA * rng.standard_normal(clean.shape)
    return clean, noisy.astype(np.float32)


def test_agrees_with_dipy(phantom_series, dipy_result):
    """Default (dipy's tau truncation and weights): same output and sigma map up to float32
    rounding (measured 4e-7); the paper's exact-count truncation differs by ~1.5e-3."""
    noisy, clean, mask, _ = phantom_series
    ref, ref_sigma = dipy_result
    assert np.isfinite(ref[mask]).all()
    out, sigma = mppca(noisy, mask=mask, patch_radius=2)
    assert out.dtype == np.float32
    assert sigma.shape == mask.shape
    assert _rel_rms(out[mask], ref[mask]) < 1e-5
    assert _rel_rms(sigma[mask], ref_sigma[mask]) < 1e-5
    assert np.all(out[~mask] == 0)
    assert np.all(sigma[~mask] == 0)
    out_mp, sigma_mp = mppca(noisy, mask=mask, patch_radius=2, truncation="mp")
    assert _rel_rms(out_mp[mask], ref[mask]) < 5e-3
    assert _rel_rms(sigma_mp[mask], ref_sigma[mask]) < 5e-3
    # and it denoises: error to the truth well below the noise (measured 39.7 vs 65.9)
    err = np.sqrt(np.mean((out[mask] - clean[mask]) ** 2))
    assert err < 0.7 * np.sqrt(np.mean((noisy[mask] - clean[mask]) ** 2))


def test_gram_branch_agrees_with_dipy(phantom_series):
    """patch_radius 1: m = 27 < n = 40, decomposed as the 27x27 Gram matrix (dipy uses the
    40x40 covariance; same non-zero spectrum)."""
    from dipy.denoise.localpca import mppca as dipy_mppca

    noisy, _, mask, _ = phantom_series
    sub = np.ascontiguousarray(noisy[4:16, 4:16, 3:9])
    msub = mask[4:16, 4:16, 3:9]
    with np.errstate(invalid="ignore"):
        ref, ref_sigma = dipy_mppca(
            sub, mask=msub, patch_radius=1, return_sigma=True, suppress_warning=True
        )
    ok = msub & np.isfinite(ref).all(-1)
    out, sigma = mppca(sub, mask=msub, patch_radius=1)
    assert _rel_rms(out[ok], ref[ok]) < 1e-4
    assert _rel_rms(sigma[ok], ref_sigma[ok]) < 1e-4


@pytest.mark.parametrize("truncation", ["tau", "mp"])
@pytest.mark.parametrize("stride", [1, 2])
def test_sigma_recovered(truncation, stride):
    """Gaussian noise (sigma 60) on a rank-3 signal: sigma map within 5 % of the truth
    (measured median 0.979 sigma, 5-95 % 0.968-0.993: the MP estimate is slightly low)."""
    _, noisy = _low_rank(3, np.random.default_rng(7))
    _, sigma = mppca(noisy, truncation=truncation, stride=stride)
    assert abs(np.median(sigma) / SIGMA - 1) < 0.05
    assert np.all(np.abs(np.percentile(sigma, [5, 95]) / SIGMA - 1) < 0.05)


@pytest.mark.parametrize("rank", [3, 6])
def test_residual_noise_factor(rank):
    """Residual of a rank-P truncation of an m x n patch (first-order perturbation):
    ``sigma^2 (P/n + P/m - P^2/(mn))`` plus ``sigma^2/m`` for the patch mean; overcomplete
    averaging can only reduce the patch-dependent part, not the ``P/n`` part of each voxel's
    own noise. So ``sqrt(P/n) <= rms / sigma <= sqrt((P(m+n-P) + n)/(mn))``, i.e. 0.217-0.279
    for P=3 (measured 0.248) and 0.306-0.381 for P=6."""
    clean, noisy = _low_rank(rank, np.random.default_rng(11))
    out = mppca(noisy, return_sigma=False)
    m, n = 125, noisy.shape[-1]
    ratio = np.sqrt(np.mean((out - clean) ** 2)) / SIGMA
    assert np.sqrt(rank / n) < ratio < np.sqrt((rank * (m + n - rank) + n) / (m * n))


def test_stride_close_to_full(phantom_series):
    """Stride 2 (1/8 of the patches): error to the truth within 3 % of stride 1 (measured
    +0.8 % at SNR 20) and output within 2 % of it."""
    noisy, clean, mask, _ = phantom_series
    full = mppca(noisy, mask=mask, return_sigma=False)
    fast = mppca(noisy, mask=mask, stride=2, return_sigma=False)
    e_full = np.sqrt(np.mean((full[mask] - clean[mask]) ** 2))
    e_fast = np.sqrt(np.mean((fast[mask] - clean[mask]) ** 2))
    assert e_fast < 1.03 * e_full
    assert _rel_rms(fast[mask], full[mask]) < 0.02


def test_edge_voxels_covered_and_batches_equal(phantom_series):
    """A masked voxel whose neighbours are all unmasked (dipy: NaN) still gets a value, and
    the result does not depend on the batch size."""
    noisy, _, mask, _ = phantom_series
    lone = np.zeros_like(mask)
    lone[0, 10, 6] = lone[10, 10, 0] = lone[12, 10, 6] = True
    out, sigma = mppca(noisy, mask=lone, batch_size=1)
    assert np.isfinite(out).all()
    assert np.all(sigma[lone] > 0)
    assert np.count_nonzero(out.any(-1)) <= 3
    a = mppca(noisy, mask=mask, batch_size=7, return_sigma=False)
    b = mppca(noisy.astype(np.float64), mask=mask, batch_size=5000, return_sigma=False)
    assert _rel_rms(a[mask], b[mask]) < 1e-5


def test_single_slice_and_non_finite():
    """A singleton axis gets radius 0 (5x5x1 patches, as dipy; agreement 1e-5), and a NaN
    voxel neither fails the batch nor spreads NaN."""
    from dipy.denoise.localpca import mppca as dipy_mppca

    _, noisy = _low_rank(3, np.random.default_rng(5), shape=(16, 16, 1), n=20)
    with np.errstate(invalid="ignore"):
        ref = dipy_mppca(noisy, patch_radius=2, suppress_warning=True)
    out = mppca(noisy, return_sigma=False)
    assert _rel_rms(out[2:-2, 2:-2], ref[2:-2, 2:-2]) < 1e-5
    noisy[8, 8, 0, 3] = np.nan
    out, sigma = mppca(noisy)
    assert np.isfinite(out).all()
    assert np.isfinite(sigma).all()


def test_classifier_pure_noise():
    """Pure-noise spectra (m=125, n=64): (nearly) every eigenvalue is noise (the largest one
    crosses the MP edge in ~15 % of patches, Tracy-Widom fluctuation) and the variance is
    the mean noise eigenvalue (unit noise: 1 within 2 %)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 125, 64))
    x -= x.mean(axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(np.matmul(x.transpose(0, 2, 1), x) / 125)
    var, q = mp_classifier(lam, 125)
    assert np.all(q >= 62)
    assert np.mean(q == 64) > 0.6
    assert abs(np.mean(var) - 1) < 0.02


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arr": np.zeros((8, 8, 8))},
        {"arr": np.zeros((4, 8, 8, 5))},
        {"arr": np.zeros((8, 8, 8, 5)), "mask": np.ones((8, 8, 7), bool)},
        {"arr": np.zeros((8, 8, 8, 5)), "truncation": "svd"},
        {"arr": np.zeros((8, 8, 8, 5)), "stride": 6},
        {"arr": np.zeros((8, 8, 8, 5)), "batch_size": 0},
    ],
)
def test_bad_input(kwargs):
    with pytest.raises(ValueError):
        mppca(**kwargs)
