"""Batched MP-PCA denoising of a 4-D series (Marchenko-Pastur PCA, Veraart et al. 2016).

Shared by the DWI preprocessing (:mod:`bids_app.models.diffusion.preproc`) and the
multi-echo denoising of the ``mwf`` model (:mod:`bids_app.models.mwf.mwf`; Does MD et al.
Magn Reson Med 2019;81:3503-3514 evaluate PCA denoising of multi-exponential T2 data).

For every centre voxel ``v`` of the mask the ``(2r+1)^3`` patch around it gives the matrix
``X`` (``m`` patch voxels x ``n`` volumes), centred by its column mean ``M``. The
eigenvalues ``lambda_1 <= ... <= lambda_k`` (``k = min(n, m - 1)``, the rank after
centring) of ``X'X / m`` (or of ``XX' / m`` when ``m < n``: same non-zero spectrum) are
split into noise and signal by the Marchenko-Pastur criterion of [1]_ (eqs. 11-12): the
number of noise components is the largest ``q`` with

``lambda_q - lambda_1 <= 4 sqrt(q / m) sigma_q^2``,  ``sigma_q^2 = (1/q) sum_{i<=q} lambda_i``

(the MP width ``lambda_+ - lambda_- = 4 sqrt(gamma) sigma^2`` of ``q`` pure-noise
eigenvalues, ``gamma = q / m``, agrees with their mean), and ``sigma^2 = sigma_q^2``. The
patch is rebuilt from the retained components, ``X_hat = X W W' + M`` [1]_ [2]_:

- ``truncation="tau"`` (default, as ``dipy.denoise.localpca.mppca``): keep the eigenvalues
  ``>= tau = (1 + sqrt(n / m))^2 sigma^2``, the upper MP edge of a pure-noise ``m x n``
  patch;
- ``truncation="mp"``: keep exactly the ``P = k - q`` components above the criterion [1]_.

Overcomplete averaging (as dipy): every patch estimate is added to all its voxels with the
weight ``1 / (1 + P)`` of Manjon et al. [3]_ (eq. 3; ``P`` retained components), and the
voxel value is the weighted mean; the sigma map is the same weighted mean of the patch
variances, square-rooted. Centres are the masked voxels whose full patch fits in the
volume (dipy's choice), optionally thinned to every ``stride``-th voxel along each axis; a
masked voxel that no centre's patch covers gets the patch centred at its position clamped
into the volume (dipy leaves it NaN). Output is clipped at 0 and zero outside the mask (as
dipy).

Speed comes from batches: the patch matrices of ``batch_size`` centres are gathered by flat
index arithmetic, decomposed by one stacked ``np.linalg.eigh`` and scattered back offset by
offset (no two centres of a batch write the same voxel for a given offset).

References
----------
.. [1] Veraart J, Novikov DS, Christiaens D, Ades-aron B, Sijbers J, Fieremans E.
   Denoising of diffusion MRI using random matrix theory. NeuroImage 2016;142:394-406.
.. [2] Veraart J, Fieremans E, Novikov DS. Diffusion MRI noise mapping using random matrix
   theory. Magn Reson Med 2016;76:1582-1593.
.. [3] Manjon JV, Coupe P, Concha L, Buades A, Collins DL, Robles M. Diffusion weighted
   image denoising using overcomplete local PCA. PLoS ONE 2013;8:e73021.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

__all__ = ["mp_classifier", "mppca"]

log = logging.getLogger(__name__)


def mp_classifier(eigvals: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise variance and number of noise components of many spectra (criterion of [1]_).

    Parameters
    ----------
    eigvals : (B, k) ndarray
        Eigenvalues of ``X'X / m`` of ``B`` centred patches, ascending, ``k <= m - 1``.
    m : int
        Number of voxels (rows) of each patch matrix.

    Returns
    -------
    var : (B,) ndarray
        ``sigma^2``, mean of the ``q`` noise eigenvalues (signal units squared).
    q : (B,) int ndarray
        Number of noise components, the largest ``q`` in ``1..k`` with
        ``lambda_q - lambda_1 <= 4 sqrt(q / m) mean(lambda_1..q)`` (1 if none).
    """
    lam = np.asarray(eigvals)
    k = lam.shape[1]
    qs = np.arange(1, k + 1)
    mean_q = np.cumsum(lam, axis=1, dtype=np.float64) / qs
    r = lam - lam[:, :1] - 4.0 * np.sqrt(qs / float(m)) * mean_q
    ok = r <= 0
    q = np.where(ok.any(axis=1), k - np.argmax(ok[:, ::-1], axis=1), 1)
    var = np.take_along_axis(mean_q, (q - 1)[:, None], axis=1)[:, 0]
    return var, q


def _radius(shape: tuple[int, ...], patch_radius) -> np.ndarray:
    rad = np.broadcast_to(np.asarray(patch_radius, dtype=int), (3,)).copy()
    if np.any(rad < 0):
        raise ValueError(f"patch_radius must be >= 0, got {patch_radius}")
    sp = np.asarray(shape[:3])
    rad[sp == 1] = 0  # a singleton axis gets no extent (as dipy)
    if np.any(sp < 2 * rad + 1):
        raise ValueError(f"volume {tuple(sp)} is smaller than the patch {tuple(2 * rad + 1)}")
    if np.prod(2 * rad + 1) < 2:
        raise ValueError("the patch must hold at least 2 voxels: increase patch_radius")
    return rad


def _centres(mask: np.ndarray, rad: np.ndarray, stride: int) -> np.ndarray:
    """Flat C-order indices of the patch centres in ``mask``'s grid (see module notes)."""
    shape = np.asarray(mask.shape)
    inner = np.zeros(mask.shape, bool)
    inner[tuple(slice(r, s - r) for r, s in zip(rad, shape))] = True
    cen = mask & inner
    if stride > 1:
        grid = np.zeros(mask.shape, bool)
        grid[tuple(slice(r, s - r, stride) for r, s in zip(rad, shape))] = True
        cen &= grid
    size = tuple(2 * rad + 1)
    cover = ndimage.uniform_filter(cen.astype(np.float32), size=size, mode="constant")
    gaps = np.argwhere(mask & (cover * np.prod(size) < 0.5))
    extra = np.clip(gaps, rad, shape - rad - 1) if gaps.size else np.zeros((0, 3), int)
    idx = np.concatenate([np.flatnonzero(cen), np.ravel_multi_index(tuple(extra.T), mask.shape)])
    return np.unique(idx)


def _denoise_patches(x: np.ndarray, k: int, tau_factor: float, truncation: str):
    """Weighted MP-PCA estimates of a batch of patch matrices (see module notes).

    Parameters
    ----------
    x : (B, m, n) ndarray
        Patch matrices (overwritten: centred).
    k : int
        ``min(n, m - 1)``, eigenvalues passed to :func:`mp_classifier`.
    tau_factor : float
        ``(1 + sqrt(n / m))^2``.
    truncation : {'tau', 'mp'}

    Returns
    -------
    xh : (B, m, n) ndarray
        Denoised patches multiplied by their weights ``theta``.
    theta : (B,) ndarray
        ``1 / (1 + P)`` [3]_.
    var : (B,) ndarray
        Noise variance of each patch.
    kept : (B,) int ndarray
        ``P``, the retained components of each patch.
    """
    dt = x.dtype
    m, n = x.shape[1:]
    mean = x.mean(axis=1, keepdims=True)
    x -= mean
    if m >= n:
        d, w = np.linalg.eigh(np.matmul(x.transpose(0, 2, 1), x) / m)  # (B, n, n)
    else:
        d, w = np.linalg.eigh(np.matmul(x, x.transpose(0, 2, 1)) / m)  # (B, m, m)
    var, q = mp_classifier(d[:, -k:], m)
    if truncation == "tau":
        keep = d >= (tau_factor * var)[:, None]
    else:
        keep = np.arange(d.shape[1])[None, :] >= d.shape[1] - (k - q)[:, None]
    wk = w * keep[:, None, :].astype(dt)
    if m >= n:  # X W W' with W the retained eigenvectors of X'X
        xh = np.matmul(x, np.matmul(wk, wk.transpose(0, 2, 1)))
    else:  # U U' X with U the retained eigenvectors of XX'
        xh = np.matmul(wk, np.matmul(wk.transpose(0, 2, 1), x))
    xh += mean
    kept = keep.sum(axis=1)
    theta = (1.0 / (1.0 + kept)).astype(dt)
    xh *= theta[:, None, None]
    return xh, theta, var.astype(dt), kept


def _openblas_handles() -> list:
    """(get, set) thread-count functions of the OpenBLAS copies loaded in this process.

    Linux only (``/proc/self/maps``); numpy and scipy wheels each bundle one, with prefixed
    and 64-bit-suffixed symbol names. Empty when none is found.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as fh:
            paths = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and "/" in ln}
    except OSError:
        return []
    out = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for pre, suf in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "")):
            get = getattr(lib, f"{pre}_get_num_threads{suf}", None)
            put = getattr(lib, f"{pre}_set_num_threads{suf}", None)
            if get is not None and put is not None:
                out.append((get, put))
                break
    return out


class _one_blas_thread:
    """Limit BLAS to one thread while inside (threadpoolctl if installed, else OpenBLAS).

    Small stacked LAPACK calls are many times slower with OpenBLAS threads on a loaded
    machine (measured here: 64x64 ``eigh`` 0.35 ms single-threaded, 27 ms with 2 threads;
    dipy's loop 0.56 vs 4.2 ms per voxel).
    """

    def __enter__(self):
        self._lim, self._saved = None, []
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            for get, put in _openblas_handles():
                self._saved.append((put, int(get())))
                put(1)
            return self
        self._lim = threadpool_limits(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc):
        if self._lim is not None:
            self._lim.restore_original_limits()
        for put, n in self._saved:
            put(n)
        return False


def mppca(
    arr: np.ndarray,
    mask: np.ndarray | None = None,
    patch_radius=2,
    return_sigma: bool = True,
    *,
    truncation: str = "tau",
    stride: int = 1,
    batch_size: int = 256,
    return_components: bool = False,
):
    """MP-PCA denoising of a 4-D series with batched eigen-decompositions ([1]_, [2]_).

    Parameters
    ----------
    arr : (X, Y, Z, n) array_like
        Series in signal units; computed in float64 if ``arr`` is float64, else float32
        (read in place when float32 and C-ordered). Non-finite values are taken as 0.
    mask : (X, Y, Z) bool array_like, optional
        Voxels to denoise (default all). Patches read unmasked neighbours too.
    patch_radius : int or (3,) ints
        Patch half-width in voxels (window ``2 r + 1``; 0 along singleton axes).
    return_sigma : bool
        Also return the noise s.d. map.
    truncation : {'tau', 'mp'}
        Retained components: eigenvalues above ``(1 + sqrt(n/m))^2 sigma^2`` (dipy's
        choice) or the ``k - q`` components above the MP criterion ([1]_).
    stride : int
        Compute the patches of every ``stride``-th voxel only along each axis (1: all, as
        dipy); overcomplete averaging covers the others (must be ``<= 2 r + 1``).
    batch_size : int
        Patches per stacked decomposition. Working memory ~ ``18 batch_size m n`` bytes
        in float32 (twice in float64): 145 MB for 1024 patches of 5x5x5 voxels x 64, 36 MB
        for the default 256 (speed is flat from 64 to 1024).

    Returns
    -------
    denoised : (X, Y, Z, n) float32 ndarray
        Clipped at 0; 0 outside the mask.
    sigma : (X, Y, Z) float32 ndarray
        Noise s.d. (signal units), 0 outside the mask; only if ``return_sigma``.
    components : (X, Y, Z) float32 ndarray
        The number ``P`` of retained components, averaged with the same weights as the
        voxel values over the patches covering the voxel; 0 outside the mask; only if
        ``return_components``.

    Raises
    ------
    ValueError
        ``arr`` not 4-D, mask of another shape, volume smaller than the patch, bad
        ``truncation``, ``stride`` or ``batch_size``.
    """
    arr = np.asarray(arr)
    if arr.ndim != 4:
        raise ValueError(f"MP-PCA needs a 4-D series, got shape {arr.shape}")
    mask = np.ones(arr.shape[:3], bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != arr.shape[:3]:
        raise ValueError(f"mask shape {mask.shape} != series shape {arr.shape[:3]}")
    if truncation not in ("tau", "mp"):
        raise ValueError(f"truncation must be 'tau' or 'mp', got {truncation!r}")
    rad = _radius(arr.shape, patch_radius)
    if not 1 <= int(stride) <= 2 * rad.min(initial=99, where=rad > 0) + 1:
        raise ValueError(f"stride must be in 1..2r+1, got {stride}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dt = np.float64 if arr.dtype == np.float64 else np.float32
    n = arr.shape[3]
    out = np.zeros(arr.shape, np.float32)
    sig = np.zeros(arr.shape[:3], np.float32)
    comp = np.zeros(arr.shape[:3], np.float32)

    def _result():
        res = (out,) + ((sig,) if return_sigma else ()) + ((comp,) if return_components else ())
        return res if len(res) > 1 else out

    if not mask.any():
        return _result()

    flat = np.ascontiguousarray(arr, dtype=dt).reshape(-1, n)  # a view when possible
    if not np.isfinite(flat).all():  # LAPACK fails on a whole batch otherwise
        log.warning("MP-PCA: non-finite values in the series are denoised as 0")
        flat = np.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    centres = _centres(mask, rad, int(stride))
    steps = [np.arange(-r, r + 1) for r in rad]
    off3 = np.stack(np.meshgrid(*steps, indexing="ij"), -1).reshape(-1, 3)
    offs = np.ravel_multi_index(tuple((off3 + rad).T), mask.shape)
    offs -= np.ravel_multi_index(tuple(rad), mask.shape)
    m = offs.size
    k = min(n, m - 1)
    tau_factor = (1.0 + np.sqrt(n / m)) ** 2
    # float32 input: accumulate straight into the output (no second full-size copy)
    in_place = dt == np.float32
    acc = out.reshape(-1, n) if in_place else np.zeros(flat.shape, dt)
    wsum = np.zeros(flat.shape[0], dt)
    vsum = np.zeros(flat.shape[0], dt)
    psum = np.zeros(flat.shape[0], dt) if return_components else None
    log.debug("MP-PCA: %d centres, patch %d x %d, batch %d", centres.size, m, n, batch_size)
    with _one_blas_thread():
        for start in range(0, centres.size, int(batch_size)):
            c = centres[start : start + int(batch_size)]
            xh, theta, var, kept = _denoise_patches(
                flat[c[:, None] + offs[None, :]], k, tau_factor, truncation
            )
            tv = theta * var
            tp = theta * kept if return_components else None
            for j, o in enumerate(offs):
                t = c + o  # distinct within the batch for a fixed offset
                acc[t] += xh[:, j]
                wsum[t] += theta
                vsum[t] += tv
                if tp is not None:
                    psum[t] += tp

    good = (wsum > 0) & mask.ravel()
    np.divide(acc, np.where(good, wsum, 1)[:, None], out=acc)  # in place, no masked copy
    acc[~good] = 0
    np.clip(acc, 0, None, out=acc)
    if not in_place:
        out[...] = acc.reshape(arr.shape)
    sig.reshape(-1)[good] = np.sqrt(np.maximum(vsum[good] / wsum[good], 0))
    if return_components:
        comp.reshape(-1)[good] = psum[good] / wsum[good]
    return _result()
