"""Options of the built-in lesion segmentation (:mod:`bids_app.lesionseg`).

Defaults, checks and the sidecar description; re-exported by :mod:`bids_app.lesionseg`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bids_app.regions import CONNECTIVITIES
from bids_app.segmentation import TISSUE_METHODS

#: name of the method (sidecars)
METHOD = "msqmri-lga"

#: options of :func:`segment_lesions`: name -> (default, documentation)
LESION_OPTIONS: dict[str, tuple[object, str]] = {
    "kappa": (3.5, "seed threshold: FLAIR z-score relative to the GM peak, inside the WM"),
    "grow_z": (2.5, "growth threshold: FLAIR z-score relative to the WM peak"),
    "grow_mm": (2.0, "maximum geodesic growth (mm) from the seeds"),
    "grow_fraction": (0.5, "growth voxels are also above this fraction of WM-to-seed contrast"),
    "t2w_z": (0.0, "with a T2w: lesion voxels need a T2w z-score relative to WM above this"),
    "min_volume_mm3": (10.0, "lesions (connected components) below this volume are dropped"),
    "connectivity": (26, "voxel neighbourhood of a lesion: 6, 18 or 26"),
    "closing_mm": (5.0, "ball radius (mm) closing the WM labels before hole filling"),
    "cortex_mm": (3.0, "voxels within this distance (mm) of the brain outside are excluded"),
    "smoothing_mm": (1.0, "Gaussian sigma (mm) applied to the FLAIR first (0: none)"),
    "tissue_method": ("multiotsu", "segment_tissue method when no tissue labels are given"),
}
_NUMBERS = ("kappa", "grow_z", "t2w_z")
_NON_NEGATIVE = (
    "grow_mm",
    "grow_fraction",
    "min_volume_mm3",
    "closing_mm",
    "cortex_mm",
    "smoothing_mm",
)


def option_defaults() -> dict[str, object]:
    """Return the default options of :func:`segment_lesions` (a new dict)."""
    return {name: default for name, (default, _) in LESION_OPTIONS.items()}


def check_options(options: dict[str, object]) -> dict[str, object]:
    """Validate lesion-segmentation options and return them merged with the defaults.

    Parameters
    ----------
    options : dict
        Any subset of :data:`LESION_OPTIONS`.

    Returns
    -------
    dict
        All options, numbers as float (``connectivity`` int, ``tissue_method`` str).

    Raises
    ------
    ValueError
        For an unknown name, a non-numeric, non-finite or negative value where a number
        >= 0 is expected, a connectivity other than 6, 18, 26 or an unknown tissue method.
    """
    unknown = set(options) - set(LESION_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown lesion-segmentation option(s) {sorted(unknown)}; "
            f"expected some of {sorted(LESION_OPTIONS)}"
        )
    opts = option_defaults() | dict(options)
    for name in (*_NUMBERS, *_NON_NEGATIVE):
        value = opts[name]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(f"{name}={value!r}: expected a number")
        value = float(value)
        if not np.isfinite(value) or (name in _NON_NEGATIVE and value < 0):
            what = "a finite number >= 0" if name in _NON_NEGATIVE else "a finite number"
            raise ValueError(f"{name}={opts[name]!r}: expected {what}")
        opts[name] = value
    if isinstance(opts["connectivity"], bool) or opts["connectivity"] not in CONNECTIVITIES:
        raise ValueError(
            f"connectivity={opts['connectivity']!r}: expected one of {list(CONNECTIVITIES)}"
        )
    opts["connectivity"] = int(opts["connectivity"])
    if opts["tissue_method"] not in TISSUE_METHODS:
        raise ValueError(
            f"tissue_method={opts['tissue_method']!r}: expected one of {sorted(TISSUE_METHODS)}"
        )
    return opts


def describe_lesion_segmentation(
    *, tissue_source: str = "T1w", contrasts: Sequence[str] = ("FLAIR",), **options
) -> str:
    """Return the method description of :func:`segment_lesions` with these options.

    Parameters
    ----------
    tissue_source : {'T1w', 'FLAIR', 'given'}, optional
        Where the tissue labels came from.
    contrasts : sequence of str, optional
        Images used (``'FLAIR'`` plus ``'T1w'`` / ``'T2w'``).
    **options
        Any of :data:`LESION_OPTIONS` (missing ones take their defaults).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        For an unknown or invalid option or tissue source.
    """
    opts = check_options(options)
    if tissue_source == "given":
        tissue = "given tissue labels"
    elif tissue_source in ("T1w", "FLAIR"):
        tissue = f"tissue from {tissue_source} ({opts['tissue_method']})"
    else:
        raise ValueError(f"tissue_source={tissue_source!r}: expected 'T1w', 'FLAIR' or 'given'")
    text = (
        f"{METHOD}: LGA-style unsupervised lesion segmentation (after Schmidt et al. 2012) "
        f"on {'+'.join(contrasts)}; {tissue}; FLAIR smoothed {opts['smoothing_mm']:g} mm, "
        f"tissue peaks by histogram mode and FWHM; seeds z_GM>{opts['kappa']:g} in WM "
        f"(closing {opts['closing_mm']:g} mm, holes filled, not within "
        f"{opts['cortex_mm']:g} mm of the brain surface), growth up to "
        f"{opts['grow_mm']:g} mm into z_WM>{opts['grow_z']:g} and "
        f">{opts['grow_fraction']:g} of the WM-to-seed contrast"
    )
    if "T2w" in contrasts:
        text += f", T2w z_WM>{opts['t2w_z']:g}"
    text += f"; lesions >= {opts['min_volume_mm3']:g} mm3 ({opts['connectivity']}-connected)"
    return text
