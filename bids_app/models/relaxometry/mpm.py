"""Multi-parameter mapping (``mpm``): R1, R2*, PD and MTsat from PDw/T1w/MTw multi-echo FLASH.

Inputs: ``anat/*_acq-<PDw|T1w|MTw>_echo-<i>[_flip-<j>][_mt-<on|off>]_MPM`` (the MTw contrast
is optional), each contrast with one ``FlipAngle`` and ``RepetitionTimeExcitation`` shared
by its echoes, ``EchoTime`` per echo, optional ``MTState`` (must agree with the contrast)
and optional ``SpoilingRFPhaseIncrement``. The B1+ map comes from the ``b1`` model
(``B1_REQUIREMENT``), the relative receive sensitivity from the ``rb1cor`` model when the
subject has ``RB1COR`` images (covariate ``rx``, :mod:`bids_app.models.relaxometry.mpm_receive`).

The fit, per voxel and batched:

1. R2* and the TE = 0 intercept of every contrast by one joint log-linear fit of all echoes
   (ESTATICS, Weiskopf et al. 2014; :mod:`bids_app.models.relaxometry._estatics`);
2. R1 and M0 from the PDw and T1w intercepts with the exact spoiled-GRE equation and
   B1-corrected flip angles (:mod:`bids_app.models.relaxometry._mpm_physics`);
3. when the sidecars give ``SpoilingRFPhaseIncrement``, the correction of R1 for imperfect
   RF spoiling computed from the protocol (Preibisch & Deichmann 2009;
   :mod:`bids_app.models.relaxometry._spoiling`), then M0 again from the corrected R1;
4. MTsat from the MTw intercept, M0 and R1 (exact closed form, B1-corrected excitation
   angle). The empirical MT-pulse B1 factor of Weiskopf et al. 2013 is option
   ``mt_b1_correction='weiskopf2013'``, off by default as in ``mtsat`` (see
   :mod:`bids_app.models.mt.models` for why).

PD is reported in arbitrary units: the equilibrium magnetisation M0 at TE = 0 (no T2*
weighting, corrected for T1 and B1+), divided by the receive sensitivity ``rx`` when that
covariate is given. It is not normalised to water (no percent units).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.base import (
    B1_REQUIREMENT,
    Collection,
    InputSpec,
    MetaSpec,
    Option,
    OutputSpec,
    QMRIModel,
    Requirement,
    example_collection,
    register,
    sidecar_path,
    valid_b1,
)
from bids_app.models.mt._physics import WEISKOPF_LAMBDA, weiskopf2013_correction
from bids_app.models.mt.models import MTSAT_RANGE
from bids_app.models.relaxometry._estatics import estatics_design, estatics_fit
from bids_app.models.relaxometry._estatics import estatics_signal as _estatics_signal
from bids_app.models.relaxometry._mpm_physics import (
    m0_exact,
    mtsat_from_m0,
    r1_exact,
    spgr_intercept,
)
from bids_app.models.relaxometry._spoiling import spoiling_correction
from bids_app.models.relaxometry.mpm_receive import RB1CORModel

logger = logging.getLogger(__name__)

_NII = [".nii", ".nii.gz"]
#: input name -> (acq label, expected MTState)
ROLES = {"pdw": ("PDw", False), "t1w": ("T1w", False), "mtw": ("MTw", True)}
R1_RANGE = (0.1, 20.0)
R2STAR_RANGE = (0.5, 1000.0)
#: the relative receive sensitivity of the ``rb1cor`` model (optional; PD only)
RX_REQUIREMENT = Requirement(
    "rx", model=RB1CORModel.name, output="RX", order=1, sidecar_key="ReceiveCorrection"
)


def _mpm_input(name: str) -> InputSpec:
    acq = ROLES[name][0]
    return InputSpec(
        name,
        {"datatype": "anat", "suffix": "MPM", "acquisition": acq, "part": ["mag", None]}
        | {"extension": _NII},
        metadata=(
            MetaSpec("EchoTime", "time", (1e-4, 0.1)),
            MetaSpec("FlipAngle", "angle", (0.5, 90.0)),
            MetaSpec("RepetitionTimeExcitation", "time", (1e-3, 0.5), aliases=("RepetitionTime",)),
            MetaSpec("MTState", "bool", required=False),
            MetaSpec("SpoilingRFPhaseIncrement", "angle", (0.1, 180.0), required=False),
        ),
        stack_along=("EchoTime",),
        index_entities=("echo", "flip", "mt"),
        n_volumes=(1, 0),
    )


def _side(coll: Collection, index: int = 0) -> str:
    return sidecar_path(coll.volumes[index].path) if coll.volumes else coll.name


@register
class MPMModel(QMRIModel):
    """R1, R2*, PD and MTsat from the multi-parameter mapping protocol.

    Parameters
    ----------
    echo_times : mapping of str to (m_c,) sequence of float
        Echo times (s) per contrast (``'pdw'``, ``'t1w'``, optional ``'mtw'``), in data order.
    flip_angles, repetition_times : mapping of str to float
        Nominal flip angle (degrees) and TR (s) per contrast.
    phase_increment : float or None
        ``SpoilingRFPhaseIncrement`` (degrees) of the PDw/T1w contrasts, ``None`` if unknown.
    tr_key : str
        Sidecar key the TRs were read from (recorded in :attr:`acquisition`).

    Notes
    -----
    ``_fit_voxels(signal, b1=None, rx=None)``: ``signal`` (n, M) holds the PDw, T1w and MTw
    echoes in that order; ``b1`` the relative B1+, ``rx`` the relative receive sensitivity.
    Output columns: R1 (1/s), R2* (1/s), PD (arbitrary units), MTsat (percent units, NaN
    without the MTw contrast).
    """

    name = "mpm"
    separate_acquisitions = "input"
    description = (
        "Multi-parameter mapping: ESTATICS R2*, exact-SPGR R1/PD and MTsat from PDw/T1w/MTw FLASH"
    )
    reference = (
        "Weiskopf N et al. Front Neurosci 2013;7:95 (MPM); Weiskopf N et al. Front Neurosci "
        "2014;8:278 (ESTATICS); Helms G et al. Magn Reson Med 2008;60:1396 (MTsat); "
        "Preibisch C, Deichmann R. Magn Reson Med 2009;61:125 (RF spoiling)"
    )
    inputs = (_mpm_input("pdw"), _mpm_input("t1w"), _mpm_input("mtw"))
    alternatives = (("pdw", "t1w", "mtw"), ("pdw", "t1w"))
    outputs = (
        OutputSpec("R1", "R1map", "1/s", desc="MPM", valid_range=R1_RANGE),
        OutputSpec("R2star", "R2starmap", "1/s", desc="MPM", valid_range=R2STAR_RANGE),
        OutputSpec("PD", "PDmap", "arbitrary", desc="MPM", valid_range=(0.0, np.inf)),
        OutputSpec("MTsat", "MTsat", "percent units", desc="MPM", valid_range=MTSAT_RANGE),
    )
    requires = (B1_REQUIREMENT, RX_REQUIREMENT)
    options_spec: ClassVar[Mapping[str, Option]] = {
        "r2star_weighting": Option(
            "none", str, ("none", "signal"), doc="ESTATICS: OLS on log S or S²-weighted"
        ),
        "rf_spoiling_correction": Option(
            "auto",
            str,
            ("auto", "none"),
            doc="R1 correction from SpoilingRFPhaseIncrement when the sidecars give it",
        ),
        "spoiling_t2": Option(
            0.064, float, range=(0.01, 0.5), unit="s", doc="tissue T2 assumed by the correction"
        ),
        "mt_b1_correction": Option(
            "none", str, ("none", "weiskopf2013"), doc="empirical MT-pulse B1 factor"
        ),
    }

    def __init__(
        self,
        echo_times: Mapping[str, Sequence[float]],
        flip_angles: Mapping[str, float],
        repetition_times: Mapping[str, float],
        *,
        phase_increment: float | None = None,
        tr_key: str = "RepetitionTimeExcitation",
        **options: Any,
    ):
        super().__init__(**options)
        self.roles = [r for r in ROLES if r in echo_times]
        if self.roles[:2] != ["pdw", "t1w"]:
            raise ValueError("mpm needs the pdw and t1w contrasts")
        self.echo_times = {r: [float(t) for t in echo_times[r]] for r in self.roles}
        self.flip_angles = {r: float(flip_angles[r]) for r in self.roles}
        self.repetition_times = {r: float(repetition_times[r]) for r in self.roles}
        if self.flip_angles["pdw"] >= self.flip_angles["t1w"]:
            raise ValueError("the PDw flip angle must be below the T1w flip angle")
        self.design = estatics_design([self.echo_times[r] for r in self.roles])
        self.phase_increment = None if phase_increment is None else float(phase_increment)
        self.tr_key = tr_key
        self.spoiling = None
        if self.phase_increment is not None and self.options["rf_spoiling_correction"] == "auto":
            self.spoiling = spoiling_correction(
                (self.flip_angles["pdw"], self.flip_angles["t1w"]),
                (self.repetition_times["pdw"], self.repetition_times["t1w"]),
                self.phase_increment,
                self.options["spoiling_t2"],
            )
            self.fit_notes["RFSpoilingCorrection"] = dict(self.spoiling.record)
        else:
            why = (
                "no SpoilingRFPhaseIncrement in the sidecars"
                if self.phase_increment is None
                else "option rf_spoiling_correction='none'"
            )
            self.fit_notes["RFSpoilingCorrection"] = {"Applied": False, "Reason": why}
        self.fit_notes["PD"] = (
            "arbitrary units: M0 at TE = 0 (ESTATICS intercept), corrected for T1 and B1+; "
            "divided by the receive sensitivity only where ReceiveCorrection is applied"
        )
        if self.options["mt_b1_correction"] == "weiskopf2013":
            self.fit_notes["MTB1Correction"] = {
                "Formula": "MTsat_nominal = MTsat / B1^2; MTsat_nominal * (1 - L) / (1 - L * B1)",
                "L": WEISKOPF_LAMBDA,
                "AppliedOnlyWith": "a B1 map (B1Correction.Applied true)",
                "Reference": "Weiskopf N et al. Front Neurosci 2013;7:95",
            }

    # ------------------------------------------------------------------ metadata

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> MPMModel:
        """Build from the ``pdw``, ``t1w`` and optional ``mtw`` collections.

        Raises
        ------
        MetadataError
            Naming the file and key: echoes of one contrast with different ``FlipAngle`` or
            ``RepetitionTimeExcitation``; an ``MTState`` that contradicts the contrast; a
            PDw flip angle not below the T1w one; ``SpoilingRFPhaseIncrement`` given for
            one of PDw/T1w only or with different values; no contrast with two echo times.
        """
        options = cls.check_options(options)
        tes, flips, trs, incs = {}, {}, {}, {}
        tr_key = "RepetitionTimeExcitation"
        for role, (acq, mt_expected) in ROLES.items():
            coll = collections.get(role)
            if coll is None:
                continue
            tes[role] = coll.values("EchoTime")
            flips[role] = coll.common("FlipAngle")
            trs[role] = coll.common("RepetitionTimeExcitation")
            tr_key = coll.sources.get("RepetitionTimeExcitation", tr_key)
            for i, state in enumerate(coll.params.get("MTState", ())):
                if state is not None and bool(state) != mt_expected:
                    raise MetadataError(
                        _side(coll, i), "MTState", state, f"{mt_expected} for the {acq} contrast"
                    )
            incs[role] = coll.params.get("SpoilingRFPhaseIncrement", (None,) * len(coll.volumes))
        if flips["pdw"] >= flips["t1w"]:
            raise MetadataError(
                _side(collections["t1w"]),
                collections["t1w"].sources.get("FlipAngle", "FlipAngle"),
                flips["t1w"],
                f"a flip angle above the PDw one ({flips['pdw']:g} deg)",
            )
        given = [(role, i, v) for role in ("pdw", "t1w") for i, v in enumerate(incs[role])]
        values = {v for _, _, v in given}
        if len(values) > 1:
            role, i, v = next(g for g in given if g[2] != given[0][2])
            raise MetadataError(
                _side(collections[role], i),
                "SpoilingRFPhaseIncrement",
                v,
                f"the same value for every PDw and T1w echo ({given[0][2]!r} in "
                f"{_side(collections[given[0][0]], given[0][1])})",
            )
        try:
            estatics_design([tes[r] for r in tes])
        except ValueError:
            raise MetadataError(
                _side(collections["pdw"]),
                "EchoTime",
                [float(t) for t in tes["pdw"]],
                "at least two distinct echo times in one contrast (ESTATICS R2*)",
            ) from None
        inc = values.pop() if values else None
        return cls(tes, flips, trs, phase_increment=inc, tr_key=tr_key, **options)

    @property
    def acquisition(self) -> dict[str, Any]:
        """Per contrast: echo times (s), flip angle (deg), TR (s); the RF phase increment."""
        labels = {r: ROLES[r][0] for r in self.roles}
        return {
            "Contrasts": [labels[r] for r in self.roles],
            "EchoTime": {labels[r]: self.echo_times[r] for r in self.roles},
            "FlipAngle": {labels[r]: self.flip_angles[r] for r in self.roles},
            self.tr_key: {labels[r]: self.repetition_times[r] for r in self.roles},
            "SpoilingRFPhaseIncrement": self.phase_increment,
        }

    # ------------------------------------------------------------------ fit

    def _angles(self, b1: np.ndarray | None) -> dict[str, np.ndarray | float]:
        scale = 1.0 if b1 is None else b1
        return {r: np.deg2rad(self.flip_angles[r]) * scale for r in self.roles}

    def _fit_voxels(
        self, signal: np.ndarray, *, b1: np.ndarray | None = None, rx: np.ndarray | None = None
    ) -> np.ndarray:
        b1 = valid_b1(b1)
        inter, r2star = estatics_fit(
            signal, self.design, weighting=self.options["r2star_weighting"]
        )
        ok = np.all(np.isfinite(inter) & (inter > 0), axis=1) & np.isfinite(r2star)
        alpha, tr = self._angles(b1), self.repetition_times
        r1 = r1_exact(inter[:, 0], inter[:, 1], alpha["pdw"], alpha["t1w"], tr["pdw"], tr["t1w"])
        if self.spoiling is not None:
            r1 = self.spoiling(r1, b1)
        m0 = m0_exact(inter[:, 0], r1, alpha["pdw"], tr["pdw"])
        out = np.full((signal.shape[0], len(self.outputs)), np.nan)
        ok &= np.isfinite(r1) & (r1 > 0) & np.isfinite(m0) & (m0 > 0)
        if b1 is not None:
            ok &= np.isfinite(b1)
        if "mtw" in self.roles:
            delta = mtsat_from_m0(inter[:, 2], m0, r1, alpha["mtw"], tr["mtw"])
            if b1 is not None and self.options["mt_b1_correction"] == "weiskopf2013":
                delta = weiskopf2013_correction(delta / np.square(b1), b1)
            out[ok, 3] = 100.0 * delta[ok]
        pd = m0 if rx is None else m0 / np.where(np.asarray(rx) > 0, rx, np.nan)
        out[ok, 0], out[ok, 1], out[ok, 2] = r1[ok], r2star[ok], pd[ok]
        return out

    def intercepts(
        self, params: np.ndarray, b1: np.ndarray | None = None, rx: np.ndarray | None = None
    ) -> np.ndarray:
        """Ideal-spoiling TE = 0 intercepts (n, C) of params (n, 4) (R1, R2*, PD, MTsat)."""
        params = np.atleast_2d(params)
        alpha = self._angles(None if b1 is None else np.asarray(b1, dtype=float))
        m0 = params[:, 2] * (1.0 if rx is None else np.asarray(rx, dtype=float))
        cols = []
        for r in self.roles:
            delta = params[:, 3] / 100.0 if r == "mtw" else 0.0
            cols.append(
                spgr_intercept(m0, params[:, 0], alpha[r], self.repetition_times[r], delta)
            )
        return np.stack(cols, axis=-1)

    def predict(
        self, params: np.ndarray, b1: np.ndarray | None = None, rx: np.ndarray | None = None
    ) -> np.ndarray:
        """Multi-echo signal (n, M) of params (n, 4) with ideal spoiling (the fit's model)."""
        params = np.atleast_2d(params)
        with np.errstate(all="ignore"):
            return _estatics_signal(self.intercepts(params, b1, rx), params[:, 1], self.design)

    # ------------------------------------------------------------------ test hooks

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """The 3 T hMRI protocol of bids-examples/qmri_mpm: 6°/21°/6° (MT), TR 25 ms."""
        te8 = tuple(round(0.0023 * k, 6) for k in range(1, 9))
        out = {}
        for role, flip, n in (("pdw", 6.0, 8), ("t1w", 21.0, 8), ("mtw", 6.0, 6)):
            out[role] = example_collection(
                role,
                EchoTime=te8[:n],
                FlipAngle=(flip,) * n,
                RepetitionTimeExcitation=(0.025,) * n,
                MTState=(role == "mtw",) * n,
            )
        return out

    def simulate(self, n: int, rng: np.random.Generator):
        """T1 0.6-3 s, R2* 8-40 1/s, M0 500-2000, MTsat 0.5-4 p.u., B1 0.8-1.2 (ideal spoiling).

        Returns ``(params, signal, {'b1': ...})``; MTsat is NaN without the MTw contrast.
        """
        r1 = 1.0 / rng.uniform(0.6, 3.0, n)
        r2s, m0 = rng.uniform(8.0, 40.0, n), rng.uniform(500.0, 2000.0, n)
        mts = rng.uniform(0.5, 4.0, n) if "mtw" in self.roles else np.full(n, np.nan)
        b1 = rng.uniform(0.8, 1.2, n)
        params = np.stack((r1, r2s, m0, np.nan_to_num(mts)), axis=-1)
        signal = self.predict(params, b1=b1)
        params[:, 3] = mts
        return params, signal, {"b1": b1}
