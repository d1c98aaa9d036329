"""Registration of a qMRI collection's reference image to the subject's reference image.

Pure array code around :func:`dipy.align.affine_registration` (mutual information, Mattes
et al. IEEE TMI 2003; multi-resolution Gaussian pyramid): translation, then rigid (then
affine), started from the image headers (scanner coordinates agree within a session) and,
when that fails, from the centres of mass. Quality is judged by the normalised mutual
information (Studholme, Hill & Hawkes, Pattern Recognit 1999) of the two images over the
reference brain, compared with the header-only alignment and with a documented threshold.

Conventions: every 4x4 ``matrix`` maps *reference* world coordinates (mm, RAS+) to
*moving* world coordinates, as dipy's ``AffineMap`` and ITK/ANTs transform files do
(:mod:`bids_app.xfm` writes them in ITK's LPS convention).
"""

from __future__ import annotations

import logging

import numpy as np
from dipy.align import affine_registration
from scipy import ndimage

from bids_app import io
from bids_app.registration_types import (
    MODES,
    SHARPNESS_FAIL_THRESHOLD,
    Registration,
    RegistrationOptions,
    identity,
    in_plane,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MODES",
    "SHARPNESS_FAIL_THRESHOLD",
    "Registration",
    "RegistrationOptions",
    "identity",
    "in_plane",
    "normalised_mutual_information",
    "register",
    "warp",
]

_PIPELINES = {
    "rigid": ["translation", "rigid"],
    "affine": ["translation", "rigid", "affine"],
}


def normalised_mutual_information(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, *, nbins: int = 32
) -> float:
    """NMI ``(H(A) + H(B)) / H(A, B)`` (Studholme et al. 1999) over ``mask``.

    Parameters
    ----------
    a, b : (X, Y, Z) ndarray
        Images on one grid; non-finite voxels are left out.
    mask : (X, Y, Z) bool ndarray, optional
    nbins : int
        Histogram bins per image, between the 1st and 99th percentiles.

    Returns
    -------
    float
        1 for independent images, 2 for identical ones; NaN if fewer than 100 voxels.
    """
    keep = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        keep &= mask
    if keep.sum() < 100:
        return float("nan")
    x, y = a[keep].astype(np.float64), b[keep].astype(np.float64)
    edges = [np.unique(np.percentile(v, np.linspace(1, 99, nbins + 1))) for v in (x, y)]
    if len(edges[0]) < 3 or len(edges[1]) < 3:
        return float("nan")
    # the bins of numpy.histogram2d (right-open, the last one closed), counted by bincount:
    # the same counts in a fifth of the time
    nx, ny = len(edges[0]) - 1, len(edges[1]) - 1
    ix = np.clip(np.searchsorted(edges[0], x, side="right") - 1, 0, nx - 1)
    iy = np.clip(np.searchsorted(edges[1], y, side="right") - 1, 0, ny - 1)
    joint = np.bincount(ix * ny + iy, minlength=nx * ny).reshape(nx, ny).astype(np.float64)
    p = joint / joint.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (entropy(p.sum(1)) + entropy(p.sum(0))) / entropy(p)


def warp(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    matrix: np.ndarray,
    shape: tuple[int, ...],
    affine: np.ndarray,
    *,
    order: int = 1,
    cval: float = np.nan,
) -> np.ndarray:
    """Resample ``moving`` onto the grid ``(shape, affine)`` through ``matrix``.

    ``matrix`` maps target world to moving world (see the module conventions); this is
    :func:`bids_app.io.resample` with ``world=matrix``.
    """
    return io.resample(moving, moving_affine, shape, affine, order=order, cval=cval, world=matrix)


def _level(image, affine, voxel_mm, *, order=1):
    """``image`` smoothed and resampled onto an isotropic grid of about ``voxel_mm``.

    The new grid covers the same field of view; axes already coarser are kept.
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    step = np.maximum(voxel_mm / zooms, 1.0)
    if np.all(step == 1.0):
        return image, affine
    shape = np.maximum(np.round(np.asarray(image.shape) / step).astype(int), 1)
    step = np.asarray(image.shape) / shape
    if order:
        image = ndimage.gaussian_filter(image, sigma=np.where(step > 1, step / 2, 0))
    # new voxel i covers old voxels [i*step, (i+1)*step): centre at (i + 1/2) step - 1/2
    offset = (step - 1.0) / 2.0
    small = ndimage.affine_transform(
        image, step, offset=offset, output_shape=tuple(shape), order=order, mode="nearest"
    )
    vox = np.eye(4)
    vox[:3, :3] = np.diag(step)
    vox[:3, 3] = offset
    return small, affine @ vox


def _estimate(moving, moving_affine, static, static_affine, *, pipeline, start, options, mask):
    axis = options.in_plane_axis

    def constrain(m):
        m = np.asarray(m, dtype=np.float64)
        return m if axis is None else in_plane(m, static_affine, static.shape, axis)

    matrix = constrain(start)
    done: list[tuple] = []
    for level, (voxel, iters) in enumerate(zip(options.voxel_mm, options.level_iters)):
        mov, mov_aff = _level(moving, moving_affine, voxel)
        sta, sta_aff = _level(static, static_affine, voxel)
        grids = (mov.shape, sta.shape, mov_aff.tobytes(), sta_aff.tobytes())
        if grids in done:  # images coarser than this level: it would repeat the last one
            continue
        done.append(grids)
        msk, _ = _level(mask.astype(np.float32), static_affine, voxel)
        steps = pipeline if level == 0 else pipeline[1:]
        _, matrix = affine_registration(
            mov,
            sta,
            moving_affine=mov_aff,
            static_affine=sta_aff,
            pipeline=list(steps),
            starting_affine=matrix,
            level_iters=[iters],
            sigmas=[0.0],
            factors=[1],
            static_mask=(msk > 0.25).astype(np.int32),
            nbins=options.nbins,
            sampling_proportion=None,
        )
        matrix = constrain(matrix)
    return matrix


def _crop(mask, affine, *, margin):
    """Slices of the bounding box of ``mask`` (plus ``margin`` voxels) and its affine."""
    if not mask.any():
        return tuple(slice(None) for _ in mask.shape), affine
    first, last = [], []
    for axis in range(mask.ndim):  # per-axis projections: no (n, 3) index array
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        first.append(hit[0])
        last.append(hit[-1])
    lo = np.maximum(np.array(first) - margin, 0)
    hi = np.minimum(np.array(last) + margin + 1, mask.shape)
    shift = np.eye(4)
    shift[:3, 3] = lo
    return tuple(slice(a, b) for a, b in zip(lo, hi)), affine @ shift


def _centre_of_mass_start(moving, moving_affine, static, static_affine) -> np.ndarray:
    """Translation aligning the intensity centres of mass (world mm)."""

    def com(image, affine):
        w = np.where(np.isfinite(image) & (image > 0), image, 0.0)
        return affine[:3, :3] @ np.asarray(ndimage.center_of_mass(w)) + affine[:3, 3]

    start = np.eye(4)
    start[:3, 3] = com(moving, moving_affine) - com(static, static_affine)
    return start


def register(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    static: np.ndarray,
    static_affine: np.ndarray,
    *,
    mode: str = "rigid",
    static_mask: np.ndarray | None = None,
    options: RegistrationOptions | None = None,
) -> Registration:
    """Register ``moving`` (a qMRI reference image) to ``static`` (the subject reference).

    Parameters
    ----------
    moving : (X, Y, Z) ndarray
        E.g. the first echo, the MT-off or the mean b=0 image.
    moving_affine : (4, 4) ndarray
        Its voxel-to-world affine (mm).
    static : (X', Y', Z') ndarray
        The reference image (FLAIR, T1w or T2w).
    static_affine : (4, 4) ndarray
    mode : {'rigid', 'affine', 'none'}
    static_mask : (X', Y', Z') bool ndarray, optional
        The reference brain: the metric is computed there (dilated by 2 voxels for the
        optimiser, so the brain edge contributes).
    options : RegistrationOptions, optional

    Returns
    -------
    Registration
        Started from the headers; if that result is below the threshold, restarted from the
        centres of mass; the better of the estimate and the header alignment (by NMI) is
        kept, so a registration never makes the alignment worse than the headers. A
        registration still below the threshold is ``failed`` (a warning is logged) and its
        ``matrix`` is the header alignment (identity), with the NMI reached as ``metric``.

    Raises
    ------
    ValueError
        For an unknown ``mode``, non-3-D images or a mask of another shape.
    """
    if mode not in MODES:
        raise ValueError(f"registration mode {mode!r}: expected one of {MODES}")
    if moving.ndim != 3 or static.ndim != 3:
        raise ValueError(f"3-D images expected, got {moving.shape} and {static.shape}")
    if static_mask is not None and static_mask.shape != static.shape:
        raise ValueError(f"mask shape {static_mask.shape} != reference shape {static.shape}")
    if mode == "none":
        return identity()
    options = options or RegistrationOptions()
    moving = np.nan_to_num(np.asarray(moving, dtype=np.float32))
    static = np.nan_to_num(np.asarray(static, dtype=np.float32))
    metric_mask = static_mask if static_mask is not None else static > 0
    opt_mask = ndimage.binary_dilation(metric_mask, iterations=2)
    crop, crop_affine = _crop(opt_mask, static_affine, margin=4)

    # the metric is evaluated on the finest pyramid level (cheap, and what was optimised)
    sta_l, sta_l_aff = _level(static[crop], crop_affine, options.voxel_mm[-1])
    msk_l = _level(metric_mask[crop].astype(np.float32), crop_affine, options.voxel_mm[-1])[0]
    msk_l = msk_l > 0.5
    mov_l, mov_l_aff = _level(moving, moving_affine, options.voxel_mm[-1])

    def score(matrix):
        warped = warp(mov_l, mov_l_aff, matrix, sta_l.shape, sta_l_aff)
        return normalised_mutual_information(sta_l, warped, msk_l, nbins=options.nbins)

    def score_full(matrix):
        """NMI on the reference grid: decides between the estimate and the headers.

        On the images' own grids the header alignment of images acquired without motion is
        free of interpolation blur, so it is not traded for a sub-voxel "improvement" that
        only reflects the interpolation of the pyramid grids.
        """
        warped = warp(moving, moving_affine, matrix, static[crop].shape, crop_affine)
        return normalised_mutual_information(
            static[crop], warped, metric_mask[crop], nbins=options.nbins
        )

    def sharpness(matrix):
        """How far the NMI drops when the reference is shifted by ``probe_mm`` (0..1)."""
        metric = score(matrix)
        probes = []
        for direction in probe_directions:
            for sign in (-1.0, 1.0):
                shift = np.eye(4)
                shift[:3, 3] = sign * options.probe_mm * direction
                probes.append(score(matrix @ shift))
        gain = metric - 1.0
        if not np.isfinite(metric) or gain <= 0:
            return 0.0
        return float(np.clip((metric - np.nanmax(probes)) / gain, 0.0, 1.0))

    probe_directions = list(np.eye(3))
    if options.in_plane_axis is not None:  # the two in-plane voxel axes (unit, world)
        cols = [static_affine[:3, i] for i in range(3) if i != options.in_plane_axis]
        probe_directions = [c / np.linalg.norm(c) for c in cols]
    header = score_full(np.eye(4))
    pipeline = _PIPELINES[mode]
    notes = [f"dipy affine_registration (MI), {' -> '.join(pipeline)}, started from headers"]
    if options.in_plane_axis is not None:
        notes.append(f"restricted to in-plane motion (slice axis {options.in_plane_axis})")
    matrix = _estimate(
        moving,
        moving_affine,
        static[crop],
        crop_affine,
        pipeline=pipeline,
        start=np.eye(4),
        options=options,
        mask=opt_mask[crop],
    )
    metric = score_full(matrix)
    sharp = sharpness(matrix)
    if not sharp >= options.fail_sharpness:
        start = _centre_of_mass_start(moving, moving_affine, static, static_affine)
        retry = _estimate(
            moving,
            moving_affine,
            static[crop],
            crop_affine,
            pipeline=pipeline,
            start=start,
            options=options,
            mask=opt_mask[crop],
        )
        retry_metric = score_full(retry)
        notes.append(f"restarted from the centres of mass (NMI {retry_metric:.4f})")
        if retry_metric > metric:
            matrix, metric = retry, retry_metric
            sharp = sharpness(matrix)
    if header > metric:
        notes.append(f"estimate (NMI {metric:.4f}) worse than the headers: headers kept")
        matrix, metric = np.eye(4), header
        sharp = sharpness(matrix)
    failed = not sharp >= options.fail_sharpness
    if failed:
        logger.warning(
            "registration failed: NMI peak sharpness %.3f < %.2f (NMI %.4f); "
            "the header alignment is used",
            sharp,
            options.fail_sharpness,
            metric,
        )
        notes.append(
            f"failed (peak sharpness {sharp:.3f} < {options.fail_sharpness}): headers kept"
        )
        matrix = np.eye(4)
    return Registration(matrix, mode, float(metric), float(header), failed, notes, sharp)
