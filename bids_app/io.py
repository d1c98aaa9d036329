"""Image input/output with checks: readable files, consistent shapes and affines, atomic writes.

Errors name the file and the property at fault and map to exit 65 (bad input) or 73 (cannot
write), see CONTRACT section 5.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_app.errors import MetadataError, OutputError
from bids_app.nifti_data import array_from_bytes, read_checked_bytes

logger = logging.getLogger(__name__)

#: refuse images with more voxels than this (a corrupt header must not allocate terabytes)
MAX_VOXELS = 2_000_000_000
#: affines of one collection must agree to this many mm
AFFINE_ATOL = 1e-3


def load_image(path: str | Path) -> nib.Nifti1Image:
    """Load a NIfTI image lazily after checking that it is a real, sane file.

    Raises
    ------
    MetadataError
        Broken symlink (e.g. un-fetched DataLad content), empty or unreadable file, corrupt
        header, absurd dimensions (more than :data:`MAX_VOXELS` voxels), or a non-finite or
        singular affine. The data are not read here (see :func:`read_data`).
    """
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise MetadataError(
            str(p),
            "file",
            "broken symlink",
            "an image file (un-fetched DataLad/git-annex content? run 'datalad get')",
        )
    if not p.is_file():
        raise MetadataError(str(p), "file", "missing", "an existing NIfTI image file")
    if p.stat().st_size == 0:
        raise MetadataError(
            str(p), "file size", "0 bytes", "a non-empty NIfTI image (an interrupted copy?)"
        )
    try:
        img = nib.load(str(p))
    except Exception as err:  # nibabel raises several types for corrupt files
        raise MetadataError(
            str(p), "file", type(err).__name__, f"a readable NIfTI image ({err})"
        ) from None
    shape = img.shape
    if any(int(n) < 1 for n in shape) or int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        raise MetadataError(
            str(p),
            "dim",
            tuple(int(n) for n in shape),
            f"positive dimensions with at most {MAX_VOXELS} voxels",
        )
    if not np.all(np.isfinite(img.affine)):
        raise MetadataError(str(p), "affine", "non-finite", "a finite sform/qform affine")
    if abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise MetadataError(
            str(p),
            "affine",
            np.round(img.affine, 4).tolist(),
            "a non-singular sform/qform affine (voxel sizes > 0)",
        )
    return img


def require_signal(data: np.ndarray, path: str | Path) -> None:
    """Refuse an image without any finite non-zero voxel (a failed reconstruction or export).

    Raises
    ------
    MetadataError
        If every voxel is zero or non-finite.
    """
    finite = np.isfinite(data)
    if not finite.any():
        raise MetadataError(str(path), "data", "every voxel NaN/Inf", "an image with signal")
    if not np.any(data[finite]):
        raise MetadataError(
            str(path),
            "data",
            "every voxel 0",
            "an image with signal (an all-zero image is a failed reconstruction or export)",
        )


def read_data(img: nib.Nifti1Image, path: str | Path, *, ndim: int = 3) -> np.ndarray:
    """Read image data as float32 with ``ndim`` dimensions (trailing singleton axes dropped).

    Non-finite voxels (NaN, +-Inf) become NaN and are logged.

    Raises
    ------
    MetadataError
        Truncated/corrupt data, or wrong dimensionality (e.g. 4-D where 3-D is expected).
    """
    shape = img.shape
    while len(shape) > ndim and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != ndim:
        raise MetadataError(
            str(path), "dim", tuple(int(n) for n in img.shape), f"a {ndim}-D image"
        )
    raw = read_checked_bytes(img, path)
    try:
        if raw is not None:  # decompressed once, by the check
            data = array_from_bytes(img, raw).reshape(shape)
        else:
            data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as err:
        raise MetadataError(
            str(path), "data", type(err).__name__, f"complete image data ({err})"
        ) from None
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        if not data.flags.writeable:
            data = data.copy()
        data[bad] = np.nan  # +-Inf too: these voxels are missing data, never fitted
        logger.warning("%s: %d NaN/Inf voxel(s), read as missing (NaN)", path, n_bad)
    return data


def load_volumes(paths: Sequence[str], *, series: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Stack 3-D images of one collection along a new last axis.

    Parameters
    ----------
    paths : sequence of str
        Images in stacking order.
    series : bool
        Accept 4-D images (measurements on the last axis), concatenated in order; a 3-D
        image counts as one measurement.

    Returns
    -------
    data : (X, Y, Z, n) float32 ndarray
    affine : (4, 4) ndarray

    Raises
    ------
    MetadataError
        If the images disagree in shape or affine (naming the first that differs), or one has
        no signal (all zero or non-finite, see :func:`require_signal`).
    """
    first = load_image(paths[0])
    ref_shape, ref_aff = first.shape[:3], first.affine
    vols = []
    for path in paths:
        img = first if path == paths[0] else load_image(path)
        if img.shape[:3] != ref_shape:
            raise MetadataError(
                path, "shape", img.shape[:3], f"{ref_shape} like {paths[0]} (same collection)"
            )
        if not np.allclose(img.affine, ref_aff, atol=AFFINE_ATOL):
            raise MetadataError(
                path,
                "affine",
                np.round(img.affine, 4).tolist(),
                f"the affine of {paths[0]} (same collection)",
            )
        data = read_data(img, path, ndim=4 if series and _is_4d(img) else 3)
        require_signal(data, path)
        vols.append(data if data.ndim == 4 else data[..., None])
    if len(vols) == 1:
        return vols[0], ref_aff
    return np.concatenate(vols, axis=-1), ref_aff


def _is_4d(img: nib.Nifti1Image) -> bool:
    shape = img.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return len(shape) == 4


def same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    """Whether two images share voxel grid and world placement."""
    return tuple(shape_a[:3]) == tuple(shape_b[:3]) and np.allclose(
        affine_a, affine_b, atol=AFFINE_ATOL
    )


def resample(
    data: np.ndarray,
    affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    *,
    order: int = 1,
    cval: float = np.nan,
    world: np.ndarray | None = None,
) -> np.ndarray:
    """Resample a 3-D image onto another grid through the affines (world coordinates).

    Parameters
    ----------
    data : (X, Y, Z) ndarray
    affine : (4, 4) ndarray
        Voxel-to-world (mm) of ``data``.
    target_shape : (3,) sequence of int
    target_affine : (4, 4) ndarray
    order : int
        0 nearest (labels, masks), 1 trilinear (maps), 3 cubic B-spline (maps: interpolating
        spline with its prefilter, Unser, IEEE Signal Process Mag 1999; NaN-aware, see
        :func:`_cubic`).
    cval : float
        Value outside the source field of view.
    world : (4, 4) ndarray, optional
        Target world (mm) -> source world (mm), e.g. a registration; identity if omitted.

    Returns
    -------
    (target_shape) ndarray
        ``data`` itself (a copy) when the grids are the same and ``world`` is the identity.
    """
    moved = world is not None and not np.allclose(world, np.eye(4), atol=AFFINE_ATOL)
    if not moved and same_grid(data.shape, affine, target_shape, target_affine):
        return np.array(data, copy=True)
    vox2vox = np.linalg.inv(affine) @ (world if moved else np.eye(4)) @ target_affine
    out_dtype = data.dtype if order == 0 else np.float32
    src = data.astype(np.float32) if order else data
    if order == 3:
        return _cubic(src, vox2vox, tuple(target_shape[:3]), cval)
    return ndimage.affine_transform(
        src,
        vox2vox[:3, :3],
        offset=vox2vox[:3, 3],
        output_shape=tuple(target_shape[:3]),
        order=order,
        mode="constant",
        cval=cval if order else 0,
        prefilter=False,
        output=out_dtype,
    )


def _cubic(src: np.ndarray, vox2vox: np.ndarray, shape: tuple[int, ...], cval: float):
    """Cubic B-spline resampling of a map with missing (NaN) voxels.

    The spline prefilter is recursive along whole lines, so one NaN would spread everywhere:
    missing voxels are first filled with their nearest valid value, and a target voxel is
    valid where the trilinear weight of valid source voxels is 1 (where trilinear
    resampling would be finite), else NaN. Outside the source field of view: ``cval``.
    """
    valid = np.isfinite(src)
    if not valid.any():
        return np.full(shape, np.nan, dtype=np.float32)
    filled = src
    if not valid.all():
        nearest = ndimage.distance_transform_edt(
            ~valid, return_distances=False, return_indices=True
        )
        filled = src[tuple(nearest)]
    kw = {"offset": vox2vox[:3, 3], "output_shape": shape, "mode": "constant"}
    coeffs = ndimage.spline_filter(filled.astype(np.float64), order=3, mode="nearest")
    out = ndimage.affine_transform(
        coeffs, vox2vox[:3, :3], order=3, cval=np.nan, prefilter=False, **kw
    )
    weight = ndimage.affine_transform(
        valid.astype(np.float32), vox2vox[:3, :3], order=1, cval=-1.0, prefilter=False, **kw
    )
    out[weight < 1.0 - 1e-4] = np.nan
    out[weight < 0.0] = cval  # outside the source grid (the constant -1 took part)
    return out.astype(np.float32)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".tmp" + "".join(
        path.suffixes[-2:] if path.name.endswith(".nii.gz") else path.suffixes[-1:]
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_nifti(
    path: str | Path,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    dtype=np.float32,
    header: nib.Nifti1Header | None = None,
) -> None:
    """Write a NIfTI atomically (temporary file, then rename) with sform/qform codes kept.

    Raises
    ------
    OutputError
        If the file cannot be written (exit 73).
    """
    path = Path(path)
    arr = np.asarray(data).astype(dtype)
    img = nib.Nifti1Image(arr, affine)
    if header is not None:
        img.set_sform(affine, int(header["sform_code"]) or 1)
        img.set_qform(affine, int(header["qform_code"]) or 1)
    else:
        img.set_sform(affine, 1)
        img.set_qform(affine, 1)
    img.header.set_xyzt_units("mm", "sec")

    def write(tmp):
        # nibabel writes gzip with mtime 0 and no file name: reruns are byte-identical
        nib.save(img, tmp)

    try:
        _atomic_write(path, write)
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err})") from None


def save_text(path: str | Path, text: str) -> None:
    """Write a text file atomically.

    Raises
    ------
    OutputError
        If the file cannot be written (exit 73).
    """
    path = Path(path)

    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")

    try:
        _atomic_write(path, write)
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err})") from None


def link_or_copy(source: str | Path, path: str | Path) -> str:
    """Make ``path`` the same file as ``source``: a hard link, else a copy (atomically).

    Used for outputs that are voxel-identical to another output (a map already on the
    reference grid and its ``space-<ref>`` name): no second compression, no second copy on
    disk. Filesystems without hard links (or across devices) get a byte copy.

    Returns
    -------
    str
        ``'hardlink'`` or ``'copy'``.

    Raises
    ------
    OutputError
        If neither can be written (exit 73).
    """
    source, path = Path(source), Path(path)
    how = []

    def write(tmp):
        os.unlink(tmp)
        try:
            os.link(source, tmp)
            how.append("hardlink")
        except OSError:
            shutil.copyfile(source, tmp)
            how.append("copy")

    try:
        _atomic_write(path, write)
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err})") from None
    return how[-1]
