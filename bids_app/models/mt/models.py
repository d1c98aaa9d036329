"""Magnetisation transfer models: MTR (``mtr``) and MT saturation (``mtsat``).

``mtr`` divides an MT-on by an MT-off image. ``mtsat`` implements Helms et al. (2008) from the
three SPGR images of the BIDS ``MTS`` collection; the derivation of its closed-form solution
and of the B1 correction is in :mod:`bids_app.models.mt._physics`.

B1 policy of ``mtsat``: a relative B1+ map (``b1`` covariate) multiplies *every* nominal flip
angle, in R1, in A and in both flip-angle terms of the MTsat expression. This is the
correction the signal model asks for; it returns the saturation δ the spins actually
experienced, and it equals ``B1**2`` times the MTsat computed with nominal flip angles.

The saturation an MT pulse produces depends on the pulse's own amplitude, which also scales
with B1 (about as B1**2 for weak saturation). Option ``mt_b1_correction``:

``'none'`` (default)
    Report δ as experienced. This is the only choice that returns the true δ when the
    saturation does not depend on B1, and it makes no assumption about the MT pulse.
``'weiskopf2013'``
    Report δ normalised to the nominal MT pulse as in the MPM pipeline of Weiskopf et al.
    (2013): ``δ / B1**2 * (1 - 0.4) / (1 - 0.4 B1)``. The published factor
    ``(1 - λ) / (1 - λ B1)`` with λ = 0.4 was calibrated on MT maps computed with *nominal*
    flip angles, i.e. on ``δ / B1**2`` (Helms 2008's first-order "inherent" compensation of the
    B1**2 dependence of the MT pulse); applying it to the fully corrected δ instead would
    count B1 twice. λ is specific to one 3 T protocol and MT pulse; it is not the default.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from bids_app.models.base import (
    B1_REQUIREMENT,
    Collection,
    InputSpec,
    MetaSpec,
    Option,
    OutputSpec,
    QMRIModel,
    example_collection,
    register,
    valid_b1,
)
from bids_app.models.mt._physics import (
    WEISKOPF_LAMBDA,
    mtr,
    mtsat_exact,
    mtsat_helms,
    weiskopf2013_correction,
)
from bids_app.models.mt._roles import _as_bool, _mt_states, _RoleError, mtr_roles, mts_roles

logger = logging.getLogger(__name__)

_EXTENSIONS = [".nii", ".nii.gz"]

#: MTR range. MT can only remove signal, so with magnitude images 0 <= MTR <= 100 and 100 is
#: a hard bound (S_on = 0). Negative values come from noise; MTR < -100 means S_on > 2 S_off,
#: which no tissue voxel with usable SNR produces (background, vessels, misregistration).
MTR_RANGE = (-100.0, 100.0)
#: MTsat range in percent units. δ is a fraction of the longitudinal magnetisation, so
#: 0 <= δ <= 100 p.u.; in vivo brain and cord values are ~0.5-5 p.u. for common protocols at
#: 1.5-7 T. -5 and 20 p.u. leave room for noise (δ noise is ~0.1 p.u. at SNR 50) and strong
#: MT pulses, and flag flow, partial volume with background and misregistration.
MTSAT_RANGE = (-5.0, 20.0)
#: T1 range in s: tissue, blood and CSF lie within 0.2-5 s at 1.5-7 T; beyond [0.05, 10] s
#: the two-angle estimate is noise.
T1_RANGE = (0.05, 10.0)
R1_RANGE = (1.0 / T1_RANGE[1], 1.0 / T1_RANGE[0])


@register
class MTRModel(QMRIModel):
    """Magnetisation transfer ratio, ``100 (S_off - S_on) / S_off`` in percent.

    Parameters
    ----------
    mt_states : (2,) sequence of bool
        ``MTState`` of the two volumes in stacking order.
    """

    name = "mtr"
    description = "Magnetisation transfer ratio from an MT-off and an MT-on image"
    separate_acquisitions = "volume"
    reference = "Wolff SD, Balaban RS. Magn Reson Med 1989;10:135-144"
    inputs = (
        InputSpec(
            "mtr",
            {"datatype": "anat", "suffix": "MTR", "extension": _EXTENSIONS},
            metadata=(MetaSpec("MTState", "bool"),),
            stack_along=("MTState",),
            index_entities=("mt",),
            n_volumes=(2, 2),
        ),
    )
    outputs = (OutputSpec("MTR", "MTRmap", "percent", valid_range=MTR_RANGE),)

    def __init__(self, mt_states: Sequence[bool] = (False, True), **options: Any):
        super().__init__(**options)
        self.mt_states = [_as_bool(s, i) for i, s in enumerate(mt_states)]
        self.i_off, self.i_on = mtr_roles(self.mt_states)

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> MTRModel:
        """Build from the ``mtr`` collection.

        Raises
        ------
        MetadataError
            Unless exactly one volume has ``MTState`` false and one true.
        """
        coll = collections["mtr"]
        states = _mt_states(coll)
        try:
            return cls(states, **options)
        except _RoleError as err:
            raise err.to_metadata_error(coll) from None

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """An MT-off / MT-on pair."""
        return {"mtr": example_collection("mtr", MTState=(False, True))}

    def simulate(self, n: int, rng: np.random.Generator):
        """MTR 0-60 percent, S_off 500-2000: ``(params, signal, {})``."""
        ratio = rng.uniform(0, 60, n)
        s_off = rng.uniform(500, 2000, n)
        signal = np.empty((n, 2))
        signal[:, self.i_off], signal[:, self.i_on] = s_off, s_off * (1 - ratio / 100)
        return ratio[:, None], signal, {}

    @property
    def acquisition(self) -> dict[str, Any]:
        """``MTState`` per volume, in stacking order."""
        return {"MTState": list(self.mt_states)}

    def _fit_voxels(self, signal: np.ndarray, **covariates: np.ndarray) -> np.ndarray:
        return mtr(signal[:, self.i_off], signal[:, self.i_on])[:, None]


@register
class MTsatModel(QMRIModel):
    """MT saturation, R1 and apparent M0 from PDw, T1w and MTw SPGR images (Helms 2008).

    Parameters
    ----------
    flip_angles : (3,) sequence of float
        Nominal flip angles in degrees, in stacking order.
    repetition_times : (3,) sequence of float
        Repetition times in s, in stacking order (they may differ between volumes).
    mt_states : (3,) sequence of bool
        ``MTState`` per volume.
    mt_b1_correction : {'none', 'weiskopf2013'}
        Extra empirical B1 factor on MTsat; see the module docstring for why the default is
        ``'none'``.
    tr_key : str
        Sidecar key the repetition times were read from (recorded in :attr:`acquisition`).

    Notes
    -----
    Outputs (columns of ``params``): MTsat (percent units), T1 (s), R1 (1/s), M0 (apparent,
    arbitrary units) and MTR (percent; only when the PDw and MTw images share flip angle and
    TR, otherwise NaN).
    """

    name = "mtsat"
    separate_acquisitions = "volume"
    description = "MT saturation (Helms 2008) with T1, R1, M0 and MTR from the MTS collection"
    reference = (
        "Helms G, Dathe H, Kallenberg K, Dechent P. Magn Reson Med 2008;60:1396-1407; "
        "erratum Magn Reson Med 2010;64:1856"
    )
    requires = (B1_REQUIREMENT,)
    options_spec: ClassVar[Mapping[str, Option]] = {
        "mt_b1_correction": Option(
            "none", str, ("none", "weiskopf2013"), doc="empirical MT-pulse B1 factor"
        ),
        "fit_method": Option(
            "exact", str, ("exact", "helms2008"), doc="exact solution or Helms' formulas"
        ),
    }
    inputs = (
        InputSpec(
            "mts",
            {"datatype": "anat", "suffix": "MTS", "extension": _EXTENSIONS},
            metadata=(
                MetaSpec("FlipAngle", "angle", (0.5, 90.0)),
                MetaSpec("MTState", "bool"),
                MetaSpec(
                    "RepetitionTimeExcitation", "time", (1e-3, 0.5), aliases=("RepetitionTime",)
                ),
            ),
            stack_along=("MTState", "FlipAngle"),
            index_entities=("flip", "mt"),
            n_volumes=(3, 3),
        ),
    )
    outputs = (
        OutputSpec("MTsat", "MTsat", "percent units", valid_range=MTSAT_RANGE),
        OutputSpec("T1", "T1map", "s", desc="MTS", valid_range=T1_RANGE),
        OutputSpec("R1", "R1map", "1/s", desc="MTS", valid_range=R1_RANGE),
        OutputSpec("M0", "M0map", "arbitrary", desc="MTS", valid_range=(0.0, np.inf)),
        OutputSpec("MTR", "MTRmap", "percent", desc="MTS", valid_range=MTR_RANGE),
    )

    def __init__(
        self,
        flip_angles: Sequence[float],
        repetition_times: Sequence[float],
        mt_states: Sequence[bool],
        *,
        tr_key: str = "RepetitionTimeExcitation",
        **options: Any,
    ):
        super().__init__(**options)
        self.flip_angles = [float(f) for f in flip_angles]
        self.repetition_times = [float(t) for t in repetition_times]
        self.mt_states = [_as_bool(s, i) for i, s in enumerate(mt_states)]
        if not len(self.flip_angles) == len(self.repetition_times) == len(self.mt_states) == 3:
            raise ValueError("mtsat needs exactly three flip angles, TRs and MT states")
        if min(self.flip_angles) <= 0 or min(self.repetition_times) <= 0:
            raise ValueError("flip angles and repetition times must be positive")
        self.tr_key = tr_key
        if self.options["mt_b1_correction"] == "weiskopf2013":
            self.fit_notes["MTB1Correction"] = {
                "Formula": "MTsat_nominal = MTsat / B1^2; MTsat_nominal * (1 - L) / (1 - L * B1)",
                "L": WEISKOPF_LAMBDA,
                "AppliedOnlyWith": "a B1 map (B1Correction.Applied true)",
                "Reference": "Weiskopf N et al. Front Neurosci 2013;7:95 (L calibrated on one "
                "3 T MPM protocol and MT pulse)",
            }
        self.roles = mts_roles(self.mt_states, self.flip_angles)
        i_pd, _, i_mt = self.roles
        self.has_mtr = bool(
            np.isclose(self.flip_angles[i_pd], self.flip_angles[i_mt], rtol=1e-3)
            and np.isclose(self.repetition_times[i_pd], self.repetition_times[i_mt], rtol=1e-3)
        )
        if not self.has_mtr:
            logger.warning(
                "mtsat: PDw and MTw differ in flip angle or TR; the MTS-derived MTR is left NaN"
            )

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> MTsatModel:
        """Build from the ``mts`` collection.

        Raises
        ------
        MetadataError
            Unless there are two MT-off volumes with distinct flip angles and one MT-on volume
            (naming the file and key at fault).
        """
        coll = collections["mts"]
        states = _mt_states(coll)
        flips = coll.values("FlipAngle")
        trs = coll.values("RepetitionTimeExcitation")
        try:
            mts_roles(states, flips)
        except _RoleError as err:
            raise err.to_metadata_error(coll) from None
        tr_key = coll.sources.get("RepetitionTimeExcitation", "RepetitionTimeExcitation")
        return cls(flips, trs, states, tr_key=tr_key, **options)

    @property
    def acquisition(self) -> dict[str, Any]:
        """Flip angles (deg), TRs (s), MT states and roles of the volumes in stacking order."""
        roles = [""] * 3
        for role, i in zip(("PDw", "T1w", "MTw"), self.roles, strict=True):
            roles[i] = role
        return {
            "FlipAngle": list(self.flip_angles),
            self.tr_key: list(self.repetition_times),
            "MTState": list(self.mt_states),
            "VolumeRoles": roles,
        }

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """The 3 T MPM-like protocol: PDw 5°, T1w 20°, MTw 5° with MT, TR 25 ms."""
        return {
            "mts": example_collection(
                "mts",
                FlipAngle=(5.0, 20.0, 5.0),
                MTState=(False, False, True),
                RepetitionTimeExcitation=(0.025, 0.025, 0.025),
            )
        }

    def simulate(self, n: int, rng: np.random.Generator):
        """Helms' steady state with saturation δ before each excitation (exact SPGR).

        T1 0.6-3 s, M0 500-2000, δ 0.5-4 p.u., B1 0.8-1.2; ``(params, signal, {'b1'})``.
        """
        t1, m0 = rng.uniform(0.6, 3.0, n), rng.uniform(500, 2000, n)
        delta, b1 = rng.uniform(0.005, 0.04, n), rng.uniform(0.8, 1.2, n)
        signal = np.empty((n, 3))
        for i, (flip, tr, on) in enumerate(
            zip(self.flip_angles, self.repetition_times, self.mt_states, strict=True)
        ):
            a, e1 = np.deg2rad(flip) * b1, np.exp(-tr / t1)
            x = 1 - delta if on else 1.0
            signal[:, i] = m0 * np.sin(a) * x * (1 - e1) / (1 - x * e1 * np.cos(a))
        params = np.full((n, len(self.outputs)), np.nan)
        params[:, :4] = np.stack((100 * delta, t1, 1 / t1, m0), axis=-1)
        if self.has_mtr:
            i_pd, _, i_mt = self.roles
            params[:, 4] = 100 * (signal[:, i_pd] - signal[:, i_mt]) / signal[:, i_pd]
        return params, signal, {"b1": b1}

    def _fit_voxels(self, signal: np.ndarray, *, b1: np.ndarray | None = None) -> np.ndarray:
        b1 = valid_b1(b1)
        i_pd, i_t1, i_mt = self.roles
        s_pd, s_t1, s_mt = signal[:, i_pd], signal[:, i_t1], signal[:, i_mt]
        flips = tuple(np.deg2rad(self.flip_angles[i]) for i in self.roles)
        trs = tuple(self.repetition_times[i] for i in self.roles)
        solver = mtsat_exact if self.options["fit_method"] == "exact" else mtsat_helms
        delta, r1, a = solver(s_pd, s_t1, s_mt, flips, trs, b1)
        ok = np.all(np.isfinite(signal) & (signal > 0), axis=1)
        if b1 is not None:
            ok &= np.isfinite(b1) & (b1 > 0)
            if self.options["mt_b1_correction"] == "weiskopf2013":
                delta = weiskopf2013_correction(delta / np.square(b1), b1)
        ok &= np.isfinite(r1) & (r1 > 0) & np.isfinite(a) & (a > 0) & np.isfinite(delta)
        out = np.full((signal.shape[0], len(self.outputs)), np.nan)
        with np.errstate(all="ignore"):
            out[ok, 0] = 100.0 * delta[ok]
            out[ok, 1] = 1.0 / r1[ok]
            out[ok, 2] = r1[ok]
            out[ok, 3] = a[ok]
        if self.has_mtr:
            out[:, 4] = mtr(s_pd, s_mt)
        return out
