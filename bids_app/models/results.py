"""The result of a fit: parameters, rmse, and checked maps derived on demand."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the model is only held, never called, here
    from bids_app.models.base import QMRIModel


class QMRIFit:
    """Parameters of a fitted model, with maps derived on demand.

    Parameters
    ----------
    model : QMRIModel
    params : (..., n_params) ndarray
        NaN outside the mask and where the fit is undefined.
    rmse : (...) ndarray or None
        Root-mean-square residual of the fit in signal units (``None`` for closed forms that
        fit exactly).
    """

    def __init__(self, model: QMRIModel, params: np.ndarray, rmse: np.ndarray | None = None):
        self.model, self.params, self.rmse = model, params, rmse

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the fit."""
        return self.params.shape[:-1]

    @cached_property
    def _checked(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        maps, n_out = {}, {}
        for i, spec in enumerate(self.model.outputs):
            p = np.asarray(self.params[..., i], dtype=np.float64)
            with np.errstate(over="ignore"):
                m = p.astype(np.float32)
            # the range is checked on the float64 value; a finite value beyond float32 (e.g.
            # 1e300 from a 1e300 signal) would become +-inf in the map, so it is out of range too
            out = np.isfinite(p) & ~np.isfinite(m)
            if spec.valid_range is not None:
                lo, hi = spec.valid_range
                out |= np.isfinite(p) & ((p < lo) | (p > hi))
            n_out[spec.name] = int(out.sum())
            m[out] = np.nan
            maps[spec.name] = m
        return maps, n_out

    def maps(self) -> dict[str, np.ndarray]:
        """Output name -> float32 map, NaN outside the valid range (or beyond float32)."""
        return dict(self._checked[0])

    def n_out_of_range(self) -> dict[str, int]:
        """Output name -> number of finite voxels set to NaN for leaving the valid range.

        Values too large for float32 count as out of range.
        """
        return dict(self._checked[1])
