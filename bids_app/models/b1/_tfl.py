"""Siemens ``tfl_b1map`` (BIDS ``TB1TFL``): a flip-angle map in tenths of a degree.

The sequence (Chung et al. 2010) reconstructs two images: ``acq-anat``, a low-resolution
proton-density-like anatomy, and ``acq-famp``, the actual flip angle of a nominal
``FlipAngle`` (its sidecar) stored in units of 0.1 degree. The relative B1 is therefore::

    B1 = famp / (10 * FlipAngle)

(the scaling the hMRI toolbox applies to the same images). The anatomy carries no B1
information; it is the image registered to the subject's reference.

References
----------
.. [1] Chung S, Kim D, Breton E, Axel L. Rapid B1+ mapping using a preconditioning RF pulse
   with TurboFLASH readout. Magn Reson Med 2010;64:439-446.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.b1._physics import FRACTION_BAND
from bids_app.models.base import Collection, sidecar_path

#: the ``acq`` labels of the two reconstructions (BIDS qMRI appendix, hMRI convention)
FAMP, ANAT = "famp", "anat"
#: tenths of a degree per stored unit
UNITS_PER_DEGREE = 10.0


def tfl_b1(famp: np.ndarray, flip_nominal_deg: float) -> np.ndarray:
    """Relative B1 from a ``tfl_b1map`` flip-angle image.

    Parameters
    ----------
    famp : (...) array_like
        The ``acq-famp`` image: actual flip angle in tenths of a degree.
    flip_nominal_deg : float
        Nominal flip angle in degrees (the sidecar ``FlipAngle``).

    Returns
    -------
    (...) ndarray
        ``famp / (10 * flip_nominal_deg)``; NaN where ``famp <= 0`` or not finite.

    Examples
    --------
    >>> float(tfl_b1(np.array(342.0), 38.0))
    0.9
    """
    famp = np.asarray(famp, dtype=np.float64)
    with np.errstate(all="ignore"):
        b1 = famp / (UNITS_PER_DEGREE * float(flip_nominal_deg))
    return np.where(np.isfinite(b1) & (b1 > 0), b1, np.nan)


@dataclass(frozen=True)
class TFLProtocol:
    """Where the famp (and anatomy) volumes are in the stacked collection, and the angle.

    Attributes
    ----------
    famp_index : int
        Position of ``acq-famp`` on the measurement axis.
    anat_index : int or None
        Position of ``acq-anat`` (``None`` without it).
    flip_angle : float
        Nominal flip angle of the famp image (degrees).
    famp_path : str
        The famp image, named in errors.
    times : dict
        ``EchoTime``/``RepetitionTimeExcitation`` of the famp sidecar when given (s).
    """

    famp_index: int
    anat_index: int | None
    flip_angle: float
    famp_path: str
    times: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_collection(cls, coll: Collection) -> TFLProtocol:
        """Identify the famp/anat volumes by their ``acq`` entity.

        Raises
        ------
        MetadataError
            If there is no ``acq-famp`` image, an ``acq`` label is neither famp nor anat, a
            label is repeated, or the famp ``FlipAngle`` is missing.
        """
        roles: dict[str, int] = {}
        for i, vol in enumerate(coll.volumes):
            acq = str(vol.entities.get("acquisition", ""))
            role = next((r for r in (FAMP, ANAT) if acq.lower().startswith(r)), None)
            if role is None or role in roles:
                msg = (
                    f"acq-{FAMP} (flip-angle map) or acq-{ANAT} (anatomy), once each "
                    "(BIDS qMRI appendix, TB1TFL)"
                )
                raise MetadataError(vol.path, "acq", acq or None, msg)
            roles[role] = i
        if FAMP not in roles:
            path = coll.volumes[0].path
            raise MetadataError(path, "acq", ANAT, f"an acq-{FAMP} image beside it (TB1TFL)")
        i = roles[FAMP]
        flip = coll.params.get("FlipAngle", (None,) * len(coll.volumes))[i]
        if flip is None:
            path = sidecar_path(coll.volumes[i].path)
            raise MetadataError(path, "FlipAngle", None, "the nominal flip angle of acq-famp")
        times = {
            k: float(coll.params[k][i])
            for k in ("EchoTime", "RepetitionTimeExcitation")
            if coll.params.get(k) is not None and coll.params[k][i] is not None
        }
        return cls(i, roles.get(ANAT), float(flip), coll.volumes[i].path, times)

    def b1(self, signal: np.ndarray) -> np.ndarray:
        """(n_vox, n_meas) stacked signal -> (n_vox,) relative B1."""
        return tfl_b1(signal[:, self.famp_index], self.flip_angle)

    def check_scale(self, famp_values: np.ndarray) -> None:
        """Refuse a famp image that is not in tenths of a degree of this ``FlipAngle``.

        Parameters
        ----------
        famp_values : (n,) array_like
            famp voxels inside the brain mask.

        Raises
        ------
        MetadataError
            If the median B1 of the positive voxels leaves ``FRACTION_BAND`` (a famp already
            in degrees gives 0.1, a ``FlipAngle`` in radians ~60): names the famp sidecar and
            ``FlipAngle``.
        """
        b1 = tfl_b1(np.asarray(famp_values).ravel(), self.flip_angle)
        b1 = b1[np.isfinite(b1)]
        if not b1.size:
            return
        median = float(np.median(b1))
        if not FRACTION_BAND[0] <= median <= FRACTION_BAND[1]:
            raise MetadataError(
                sidecar_path(self.famp_path),
                "FlipAngle",
                self.flip_angle,
                f"a nominal angle (deg) for which famp / (10 FlipAngle) is a relative B1 "
                f"(median {median:.3g}, expected in {list(FRACTION_BAND)}: is famp in tenths "
                "of a degree?)",
            )

    def acquisition(self, t1: float | None = None) -> dict[str, Any]:
        """What the sidecars record (``t1`` is not used by this conversion)."""
        return {
            "FlipAngle": self.flip_angle,
            **self.times,
            "B1Conversion": "B1 = famp / (10 FlipAngle) (famp in 0.1 deg, Siemens tfl_b1map)",
            "RegistrationImage": "acq-anat" if self.anat_index is not None else None,
        }
