"""B1+ physics and map handling (pure NumPy/SciPy).

AFI and DAM formulas, the scale of a given TB1map (fraction or percent), and mask-aware
smoothing and filling.

References
----------
.. [1] Yarnykh VL. Actual flip-angle imaging in the pulsed steady state. Magn Reson Med
   2007;57:192-200.
.. [2] Insko EK, Bolinger L. Mapping of the radiofrequency field. J Magn Reson A
   1993;103:82-85.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from bids_app.errors import MetadataError
from bids_app.models.base import B1_RANGE

logger = logging.getLogger(__name__)

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

#: Default smoothing. B1+ varies over fractions of the RF wavelength in tissue (~26 cm at
#: 3 T, ~12 cm at 7 T), i.e. over several cm: an 8 mm FWHM Gaussian (σ = 3.4 mm) biases such
#: a field by < 1 % while it averages the noise of 3-5 mm AFI/DAM voxels and bridges holes.
#: 0 disables smoothing (holes and the outside of the mask are still filled).
DEFAULT_FWHM_MM = 8.0
#: Medians of positive voxels that identify a fraction- or a percent-valued map.
FRACTION_BAND = (0.4, 1.6)
PERCENT_BAND = (40.0, 160.0)

_PERCENT_UNITS = {"%", "percent", "percentage", "pct", "p.u.", "pu"}
_FRACTION_UNITS = {"1", "fraction", "ratio", "relative", "unitless", "dimensionless", "none"}
_UNINFORMATIVE_UNITS = {"", "a.u.", "au", "arbitrary", "arbitrary units"}


def b1_scale_from_values(
    values: np.ndarray | None, units: str | None = None, *, path: Any = None
) -> float:
    """Factor that turns a given B1 map into a fraction of the nominal flip angle.

    Parameters
    ----------
    values : array_like or None
        Map values, preferably inside the brain mask; only positive finite ones are used.
        May be ``None`` when ``units`` is informative.
    units : str or None
        The sidecar ``Units``. ``'percent'``/``'%'`` gives 0.01 and ``'fraction'``/``'1'``
        gives 1; absent or ``'a.u.'`` means the scale is inferred from the median of the
        values: within ``FRACTION_BAND`` -> 1, within ``PERCENT_BAND`` -> 0.01.
    path : str or Path, optional
        File named in errors.

    Returns
    -------
    float
        1.0 or 0.01.

    Raises
    ------
    MetadataError
        For unknown units, for values that contradict the units, or when the median fits
        neither band.

    Examples
    --------
    >>> b1_scale_from_values(np.array([0.0, 0.9, 1.1]))
    1.0
    >>> b1_scale_from_values(None, "percent")
    0.01
    """
    expected = (
        f"'Units' percent or fraction, or values whose median is in {FRACTION_BAND} "
        f"(fraction) or {PERCENT_BAND} (percent of the nominal flip angle)"
    )
    scale = scale_from_units(units, path=path)
    median = None
    if values is not None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v) & (v > 0)]
        median = float(np.median(v)) if v.size else None
    if scale is not None:
        if median is not None and not FRACTION_BAND[0] <= median * scale <= FRACTION_BAND[1]:
            msg = f"units matching the values (median of positive voxels {median:.4g})"
            raise MetadataError(path, "Units", units, msg)
        return scale
    if median is None:
        raise MetadataError(path, "Units", units, expected + "; the map has no positive voxel")
    if FRACTION_BAND[0] <= median <= FRACTION_BAND[1]:
        return 1.0
    if PERCENT_BAND[0] <= median <= PERCENT_BAND[1]:
        return 0.01
    raise MetadataError(
        path, "Units", f"{units!r} (median of positive voxels {median:.4g})", expected
    )


def scale_from_units(units: str | None, *, path: Any = None) -> float | None:
    """Scale of a TB1map from its sidecar ``Units`` alone.

    Returns
    -------
    float or None
        0.01 for percent, 1.0 for fractions, ``None`` when ``units`` is absent or says
        nothing (``'a.u.'``, ``'arbitrary'``).

    Raises
    ------
    MetadataError
        For any other value.

    Examples
    --------
    >>> scale_from_units("%"), scale_from_units("fraction"), scale_from_units(None)
    (0.01, 1.0, None)
    """
    if units is None:
        return None
    u = str(units).strip().lower()
    if u in _PERCENT_UNITS or u.startswith("percent"):
        return 0.01
    if u in _FRACTION_UNITS or u.startswith(("fraction", "ratio", "relative")):
        return 1.0
    if u in _UNINFORMATIVE_UNITS:
        return None
    raise MetadataError(
        path, "Units", units, "'percent' or 'fraction' (of the nominal flip angle), or absent"
    )


def smooth_fill_b1(
    b1: np.ndarray,
    mask: np.ndarray | None,
    zooms: Sequence[float],
    *,
    fwhm_mm: float = DEFAULT_FWHM_MM,
    valid_range: tuple[float, float] | None = B1_RANGE,
) -> np.ndarray:
    """Mask-aware Gaussian smoothing of a B1 map, filled everywhere.

    Parameters
    ----------
    b1 : (X, Y, Z) array_like
        Relative B1.
    mask : (X, Y, Z) array_like of bool or None
        Voxels whose values are trusted (default: all finite voxels).
    zooms : sequence of float
        Voxel sizes in mm (at least ``b1.ndim`` of them).
    fwhm_mm : float
        Gaussian FWHM in mm; 0 disables smoothing.
    valid_range : (2,) tuple of float or None
        Values outside are not trusted either.

    Returns
    -------
    (X, Y, Z) ndarray
        ``G*(w b1) / G*w`` with ``w`` the trusted voxels (normalised convolution), so a
        constant field stays constant and voxels outside the mask get a weighted average of
        nearby trusted values. Voxels beyond the kernel's reach take the value of the nearest
        filled voxel. All NaN if no voxel is trusted.

    Examples
    --------
    >>> m = np.zeros((9, 9, 9), bool); m[3:6, 3:6, 3:6] = True
    >>> out = smooth_fill_b1(np.where(m, 0.9, np.nan), m, (2.0, 2.0, 2.0))
    >>> bool(np.allclose(out, 0.9))
    True
    """
    b1 = np.asarray(b1, dtype=np.float64)
    w = np.isfinite(b1)
    if mask is not None:
        w &= np.asarray(mask, dtype=bool)
    if valid_range is not None:
        w &= (b1 >= valid_range[0]) & (b1 <= valid_range[1])
    if not w.any():
        return np.full(b1.shape, np.nan)
    if fwhm_mm < 0:
        raise ValueError(f"smoothing_fwhm_mm must be >= 0, got {fwhm_mm}")
    zooms = np.asarray(zooms, dtype=float)[: b1.ndim]
    if fwhm_mm > 0:
        sigma = fwhm_mm * _FWHM_TO_SIGMA / zooms
        num = gaussian_filter(np.where(w, b1, 0.0), sigma, mode="constant", cval=0.0)
        den = gaussian_filter(w.astype(np.float64), sigma, mode="constant", cval=0.0)
        with np.errstate(all="ignore"):
            out = np.where(den > 1e-8, num / den, np.nan)
    else:
        out = np.where(w, b1, np.nan)
    holes = ~np.isfinite(out)
    if holes.any():
        idx = distance_transform_edt(
            holes, sampling=zooms, return_distances=False, return_indices=True
        )
        out = out[tuple(idx)]
    return out


def afi_b1(s1: np.ndarray, s2: np.ndarray, tr_ratio: float, flip_nominal: float) -> np.ndarray:
    """Relative B1 from actual flip-angle imaging (AFI).

    Parameters
    ----------
    s1, s2 : (...) array_like
        Signals acquired after the short (TR1) and the long (TR2) interval.
    tr_ratio : float
        ``n = TR2 / TR1`` (> 1).
    flip_nominal : float
        Nominal flip angle in radians.

    Returns
    -------
    (...) ndarray
        ``arccos((r n - 1) / (n - r)) / flip_nominal`` with ``r = s2 / s1``; NaN where
        ``s1 <= 0``, ``s2 < 0``, an input is not finite or ``r > 1`` (cos α > 1).

    References
    ----------
    .. [1] Yarnykh VL. Actual flip-angle imaging in the pulsed steady state: a method for
       rapid three-dimensional mapping of the transmitted radiofrequency field. Magn Reson
       Med 2007;57:192-200.

    Examples
    --------
    >>> n, a = 5.0, np.deg2rad(60.0)
    >>> r = (1 + n * np.cos(a)) / (n + np.cos(a))  # the TR << T1 limit of the signal ratio
    >>> round(float(afi_b1(1.0, r, n, a)), 12)
    1.0
    """
    s1, s2 = np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    with np.errstate(all="ignore"):
        r = s2 / s1
        cos_a = (r * tr_ratio - 1.0) / (tr_ratio - r)
        ok = np.isfinite(s1) & np.isfinite(s2) & (s1 > 0) & (s2 >= 0) & (np.abs(cos_a) <= 1.0)
        return np.where(ok, np.arccos(np.clip(cos_a, -1.0, 1.0)) / flip_nominal, np.nan)


def dam_b1(s_a: np.ndarray, s_2a: np.ndarray, flip_nominal: float) -> np.ndarray:
    """Relative B1 from the double-angle method.

    Parameters
    ----------
    s_a, s_2a : (...) array_like
        Signals at nominal flip angles α and 2α (TR >> T1).
    flip_nominal : float
        α in radians.

    Returns
    -------
    (...) ndarray
        ``arccos(s_2a / (2 s_a)) / flip_nominal``; NaN where ``s_a <= 0``, an input is not
        finite or the ratio leaves [-1, 1].

    References
    ----------
    .. [1] Insko EK, Bolinger L. Mapping of the radiofrequency field. J Magn Reson A
       1993;103:82-85.

    Examples
    --------
    >>> a = np.deg2rad(60.0)
    >>> round(float(dam_b1(np.sin(0.9 * a), np.sin(1.8 * a), a)), 12)
    0.9
    """
    s_a, s_2a = np.asarray(s_a, dtype=np.float64), np.asarray(s_2a, dtype=np.float64)
    with np.errstate(all="ignore"):
        ratio = s_2a / (2.0 * s_a)
        ok = np.isfinite(s_a) & np.isfinite(s_2a) & (s_a > 0) & (np.abs(ratio) <= 1.0)
        return np.where(ok, np.arccos(np.clip(ratio, -1.0, 1.0)) / flip_nominal, np.nan)
