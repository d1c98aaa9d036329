"""Volume timing of dynamic perfusion series (DCE, DSC) from their sidecars.

BIDS gives the acquisition time of each volume either as ``VolumeTiming`` (s, one value per
volume) or as a ``RepetitionTime`` interval (s) between volumes. Errors are
:class:`~bids_app.errors.MetadataError` (exit 65) naming the sidecar and key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bids_app.errors import MetadataError

__all__ = ["uniform_interval", "volume_times"]


def volume_times(meta: Mapping[str, Any], n: int, side: str) -> np.ndarray:
    """Volume times (s) from ``VolumeTiming``, else ``n`` x ``RepetitionTime``."""
    timing = meta.get("VolumeTiming")
    if timing is not None:
        try:
            times = np.asarray(timing, dtype=float)
        except (TypeError, ValueError):
            raise MetadataError(side, "VolumeTiming", timing, "a list of times in s") from None
        if times.shape != (n,):
            raise MetadataError(side, "VolumeTiming", f"{times.size} values", f"{n} (volumes)")
        return times
    tr = meta.get("RepetitionTime")
    if isinstance(tr, bool) or not isinstance(tr, (int, float)) or not 0.5 <= tr <= 60:
        raise MetadataError(
            side,
            "RepetitionTime",
            tr,
            "the interval between volumes in s (0.5-60), or a VolumeTiming list; the SPGR TR "
            "goes in RepetitionTimeExcitation",
        )
    return np.arange(n) * float(tr)


def uniform_interval(timing, n: int, side: str) -> float:
    """The sampling interval of a uniform ``VolumeTiming`` list (s)."""
    if not isinstance(timing, list) or len(timing) < 2:
        raise MetadataError(
            side, "RepetitionTime", None, "the sampling interval in s (or a VolumeTiming list)"
        )
    try:
        steps = np.diff(np.asarray(timing, dtype=float))
    except (TypeError, ValueError):
        raise MetadataError(side, "VolumeTiming", timing[:5], "times in s") from None
    if len(timing) != n or not np.all(steps > 0) or np.ptp(steps) > 1e-3 * steps.mean():
        raise MetadataError(
            side, "VolumeTiming", timing[:5], f"{n} uniformly spaced times in s (oSVD)"
        )
    return float(steps.mean())
