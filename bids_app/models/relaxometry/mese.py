"""Multi-echo spin-echo T2: mono-exponential fits or the EPG fit with the refocusing angle.

The mono-exponential machinery is shared with MEGRE R2* (:class:`.classic._MonoExpModel`);
the EPG protocol lives in :mod:`._epg_protocol`. Times in seconds, angles in degrees.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from bids_app.models.base import B1_REQUIREMENT, Collection, Option, OutputSpec, register
from bids_app.models.relaxometry._epg_protocol import (
    ANGLE_OUTPUT,
    EPG_OPTIONS,
    REFOCUSING_METADATA,
    EPGT2Protocol,
    check_cpmg_collection,
    nominal_refocusing_angle,
)
from bids_app.models.relaxometry.classic import _MONOEXP_METHODS, _echo_input, _MonoExpModel

__all__ = ["MESET2Model"]


@register
class MESET2Model(_MonoExpModel):
    """T2, R2 and M0 from multi-echo spin-echo images: mono-exponential or EPG.

    Parameters
    ----------
    echo_time : (m,) array_like
        Echo times, s, in the order of the data's last axis.
    nominal_angle : (float, str), optional
        Nominal refocusing angle (degrees) and its sidecar key (:func:`nominal_refocusing_angle`).
    fit_method : {'loglinear', 'nonlinear', 'epg'}
        :func:`monoexp_loglinear` (S²-weighted, closed form), :func:`monoexp_nonlinear`, or
        the EPG fit of T2, M0 and the refocusing angle (:mod:`._epg_t2`, CPMG echoes only:
        else ValueError, MetadataError naming ``EchoTime`` from ``from_collections``), which
        adds the refocusing angle map ``Angle`` (degrees) to the outputs.
    drop_first_echo : bool
        Leave out the earliest echo, which lacks the stimulated-echo contribution of the
        later ones with imperfect refocusing pulses. The rmse map still compares the model
        with every echo.
    refocusing_angle, t1, angle_min, angle_step, t2_min, t2_max, n_t2
        EPG only (:data:`._epg_protocol.EPG_OPTIONS`): angle fitted or ``B1 x nominal``, the
        T1 assumed (s) and the dictionary grid.
    """

    name = "mese_t2"
    description = "T2 mapping from multi-echo spin echo (mono-exponential or EPG)"
    reference = (
        "Veraart J et al. NeuroImage 2013;81:335-346 (weighted log-linear fit); "
        "Milford D et al. PLoS One 2015;10:e0145255 (mono-exponential MESE T2, first echo); "
        "Lebel RM, Wilman AH. Magn Reson Med 2010;64:1005-1014 (EPG, fit_method epg)"
    )
    inputs = (_echo_input("mese", "MESE", (1e-3, 1.0), REFOCUSING_METADATA),)
    _example_times = (0.04, 0.3)
    _example_te = tuple(0.01 * k for k in range(1, 9))
    outputs = (
        OutputSpec("T2", "T2map", "s", valid_range=(0.005, 5)),
        OutputSpec("R2", "R2map", "1/s", valid_range=(0.2, 200)),
        OutputSpec("M0", "M0map", "arbitrary", desc="MESE", valid_range=(0, np.inf)),
    )
    _columns = ("time", "rate", "s0")
    requires = (B1_REQUIREMENT,)  # read by fit_method='epg' with refocusing_angle='b1' only
    options_spec: ClassVar[Mapping[str, Option]] = {
        "fit_method": Option(
            "loglinear", str, (*_MONOEXP_METHODS, "epg"), doc="log-linear, least squares, EPG"
        ),
        "drop_first_echo": Option(False, bool, doc="leave out the earliest echo"),
        **EPG_OPTIONS,
    }

    def __init__(self, echo_time, nominal_angle=(180.0, "default"), **options: Any):
        super().__init__(echo_time, **options)
        self.epg = None
        if self.options["fit_method"] == "epg":
            self.epg = EPGT2Protocol(self.echo_time, self.fitted, self.options, *nominal_angle)
            self.outputs = (*type(self).outputs, ANGLE_OUTPUT)  # this instance's columns
            self.fit_notes.update(self.epg.record())

    def active_requirements(self):
        """The B1 map only for ``fit_method='epg'`` with ``refocusing_angle='b1'``."""
        return self.requires if self.epg is not None and self.epg.use_b1 else ()

    @classmethod
    def _collection_kwargs(cls, coll: Collection, options: Mapping[str, Any]) -> dict:
        """The EPG fit needs a CPMG train (MetadataError otherwise) and the nominal angle."""
        if options["fit_method"] != "epg":
            return {}
        check_cpmg_collection(coll)
        return {"nominal_angle": nominal_refocusing_angle(coll)}

    @property
    def acquisition(self) -> dict[str, Any]:
        """Echo times (s), the ones fitted, and for EPG the spacing and nominal angle."""
        return {**super().acquisition, **(self.epg.acquisition() if self.epg else {})}

    def _fit_voxels(self, signal: np.ndarray, b1: np.ndarray | None = None) -> np.ndarray:
        if self.epg is None:  # the mono-exponential fits do not use B1
            return super()._fit_voxels(signal)
        self.fit_notes.update(self.epg.record(b1 is not None))
        t2, m0, angle = self.epg.fit(signal, b1)
        with np.errstate(all="ignore"):
            return np.stack((t2, 1 / t2, m0, angle), axis=-1)

    def predict(self, params: np.ndarray, b1: np.ndarray | None = None) -> np.ndarray:
        """Decay (n, m) at every echo from params (n, 3), or (n, 4) with the angle for EPG."""
        if self.epg is None:
            return super().predict(params)
        params = np.atleast_2d(params)
        return self.epg.predict(params[:, 0], params[:, 2], params[:, 3])

    def simulate(self, n: int, rng: np.random.Generator):
        """Mono-exponential as the base class; EPG: T2 40-300 ms, angle 110-180 degrees."""
        if self.epg is None:
            return super().simulate(n, rng)
        t2, angle = rng.uniform(*self._example_times, n), rng.uniform(110, 180, n)
        params = np.stack((t2, 1 / t2, rng.uniform(500, 2000, n), angle), axis=-1)
        return params, self.predict(params), {}
