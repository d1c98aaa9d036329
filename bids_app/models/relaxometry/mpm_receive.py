"""Relative receive sensitivity from the ``RB1COR`` head-coil/body-coil pair (``rb1cor``).

BIDS ``fmap/*_acq-<head|headPDw>_RB1COR`` and ``*_acq-<body|bodyPDw>_RB1COR`` are two fast
low-resolution images with identical parameters, received by the head array and by the body
coil (whose sensitivity is taken as uniform). Their ratio is the head array's relative
receive sensitivity (Papp et al. 2016 build a smooth map of the same ratio, with a model of
the transmit field and regularisation; here: the ratio, normalised to a median of 1 inside
the mask and smoothed by the mask-aware Gaussian of the ``b1`` model). The map is a product
for ``mpm``, which divides PD by it (``Requirement('rx', ...)``); R1 and MTsat do not depend
on it when every contrast is received by the same coil. The hMRI example names the pair per
contrast (``acq-headPDw``...): the PDw pair is used, since PD comes from the PDw intercept.

References
----------
.. [1] Papp D, Callaghan MF, Meyer H, Buckley C, Weiskopf N. Correction of inter-scan motion
   artifacts in quantitative R1 mapping by accounting for receive coil sensitivity effects.
   Magn Reson Med 2016;76:1478-1485.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from bids_app.models.b1._physics import DEFAULT_FWHM_MM, smooth_fill_b1
from bids_app.models.base import (
    Collection,
    InputSpec,
    Option,
    OutputSpec,
    QMRIModel,
    example_collection,
    register,
)

_NII = [".nii", ".nii.gz"]
#: plausible relative receive sensitivity of a head array against the body coil
RX_RANGE = (0.05, 20.0)


def _coil_input(name: str, labels: list[str]) -> InputSpec:
    return InputSpec(
        name,
        {"datatype": "fmap", "suffix": "RB1COR", "acquisition": labels, "extension": _NII},
        n_volumes=(1, 1),
    )


@register
class RB1CORModel(QMRIModel):
    """Relative receive sensitivity (head / body coil), normalised and smoothed.

    Notes
    -----
    ``_fit_voxels(signal)``: ``signal`` (n, 2) = (head, body); output column ``RX`` is the
    ratio (NaN where either is not positive). :meth:`spatial_postprocess` divides by the
    median inside the mask and smooths (option ``smoothing_fwhm_mm``).
    """

    name = "rb1cor"
    description = "Relative receive sensitivity from the RB1COR head/body coil images"
    reference = "Papp D et al. Magn Reson Med 2016;76:1478-1485"
    registrable = False  # low-resolution images of one session: aligned by their headers
    inputs = (
        _coil_input("head", ["head", "headPDw"]),
        _coil_input("body", ["body", "bodyPDw"]),
    )
    outputs = (OutputSpec("RX", "RB1map", "arbitrary", valid_range=RX_RANGE),)
    options_spec: ClassVar[Mapping[str, Option]] = {
        "smoothing_fwhm_mm": Option(
            DEFAULT_FWHM_MM, float, range=(0.0, 50.0), unit="mm", doc="FWHM (0: none)"
        )
    }

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> RB1CORModel:
        """Build from the ``head`` and ``body`` collections (no metadata needed)."""
        return cls(**options)

    @property
    def acquisition(self) -> dict[str, Any]:
        """Nothing is read from the sidecars."""
        return {}

    def _fit_voxels(self, signal: np.ndarray) -> np.ndarray:
        head, body = signal[:, 0], signal[:, 1]
        ok = np.isfinite(head) & np.isfinite(body) & (head > 0) & (body > 0)
        with np.errstate(all="ignore"):
            return np.where(ok, head / np.where(ok, body, 1.0), np.nan)[:, None]

    def spatial_postprocess(
        self,
        maps: dict[str, np.ndarray],
        *,
        zooms: tuple[float, ...],
        mask: np.ndarray,
        affine: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Normalise to a median of 1 in the mask, then the mask-aware smoothing of ``b1``."""
        rx = np.asarray(maps["RX"], dtype=np.float64)
        inside = np.asarray(mask, bool) & np.isfinite(rx)
        if not inside.any():
            return dict(maps)
        median = float(np.median(rx[inside]))
        rx = rx / median
        fwhm = float(self.options["smoothing_fwhm_mm"])
        out = smooth_fill_b1(rx, inside, zooms, fwhm_mm=fwhm, valid_range=RX_RANGE)
        self.fit_notes = {
            **self.fit_notes,
            "Normalisation": f"divided by the median head/body ratio in the mask ({median:.6g})",
            "Smoothing": f"mask-aware Gaussian, FWHM {fwhm:g} mm",
        }
        return {**maps, "RX": np.where(np.asarray(mask, bool), out, np.nan)}

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """One head-coil and one body-coil image."""
        return {
            "head": example_collection("head", FlipAngle=(6.0,)),
            "body": example_collection("body", FlipAngle=(6.0,)),
        }

    def simulate(self, n: int, rng: np.random.Generator):
        """Body-coil signal 100-1000, sensitivity 0.5-1.5: ``(params, signal, {})``."""
        rx, body = rng.uniform(0.5, 1.5, n), rng.uniform(100.0, 1000.0, n)
        return rx[:, None], np.stack((rx * body, body), axis=-1), {}
