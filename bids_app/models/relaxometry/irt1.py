"""The ``irt1`` model: T1 from an inversion-recovery series (``anat/*_inv-<i>_IRT1``).

Inputs: the magnitude images ``*_inv-<i>[_part-mag]_IRT1`` (at least three distinct
``InversionTime``, s, one per file, sidecar inheritance included), optionally their
``part-phase`` partners (sidecar ``Units`` ``rad`` or ``arbitrary``), which then restore the
polarity of the signal: each inversion time takes the sign of ``cos(phase - phase at the
longest TI)``. Without phase the polarity is restored by the sign-flip search of Barral et
al. 2010. ``RepetitionTimePreparation`` (or ``RepetitionTime``, ``RepetitionTimeExcitation``)
is read when present, must be one value for the series (the model's constant ``a`` assumes
it) and exceed every inversion time; it is recorded, not used by the fit.

Signal model ``S(TI) = a + b exp(-TI/T1)``, fitted by reduced-dimension non-linear least
squares (:mod:`bids_app.models.relaxometry._irt1_fit`). Outputs: ``T1`` (s), ``M0 = a`` (the
signal at TI -> infinity, arbitrary units; the equilibrium signal when TR >> T1) and the
inversion efficiency ``-b/a`` (2 for a perfect inversion with full recovery), all with
``desc-IR`` (a subject may also have a VFA ``T1map``), and the rmse of the magnitude fit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.base import (
    Collection,
    InputSpec,
    MetaSpec,
    Option,
    OutputSpec,
    QMRIModel,
    Volume,
    register,
    sidecar_path,
)
from bids_app.models.qsm.qsm import phase_to_rad
from bids_app.models.relaxometry._irt1_fit import fit_ir, ir_signal

logger = logging.getLogger(__name__)

__all__ = ["IRT1Model", "fit_ir", "ir_signal"]

_NII = [".nii", ".nii.gz"]
#: sidecar keys read for the inversion repetition time, first present wins
_TR_KEYS = ("RepetitionTimePreparation", "RepetitionTime", "RepetitionTimeExcitation")
#: voxels per call of the batched fit (bounds the memory of the refinement)
_CHUNK = 65536


def _series(name: str, part) -> InputSpec:
    return InputSpec(
        name,
        {"datatype": "anat", "suffix": "IRT1", "extension": _NII, "part": part},
        metadata=(
            MetaSpec("InversionTime", "time", (1e-3, 10.0)),
            MetaSpec("RepetitionTimePreparation", "time", (1e-3, 30.0), _TR_KEYS[1:], False),
        ),
        stack_along=("InversionTime",),
        index_entities=("inv",),
        n_volumes=(3, 0),
    )


def _repetition_time(coll: Collection, ti: np.ndarray) -> float | None:
    """The one repetition time of the series (s), ``None`` if no sidecar gives one.

    Raises
    ------
    MetadataError
        Files that disagree, or an inversion repetition time not longer than every TI.
    """
    key = "RepetitionTimePreparation"
    vals = coll.params.get(key, ())
    if not vals or all(v is None for v in vals):
        return None
    known = [(vol, v) for vol, v in zip(coll.volumes, vals, strict=True) if v is not None]
    first = known[0][1]
    source = coll.sources.get(key, key)
    for vol, v in known:
        if not np.isclose(v, first, rtol=1e-3):
            raise MetadataError(
                sidecar_path(vol.path),
                source,
                v,
                f"one repetition time for the series ({first!r} in "
                f"{sidecar_path(known[0][0].path)}): S = a + b exp(-TI/T1) needs a constant TR",
            )
    if source != "RepetitionTimeExcitation" and first <= ti.max():
        raise MetadataError(
            sidecar_path(known[0][0].path),
            source,
            first,
            f"a repetition time longer than every InversionTime (max {ti.max():g} s)",
        )
    return float(first)


@register
class IRT1Model(QMRIModel):
    """T1, M0 and inversion efficiency from inversion-recovery images (RD-NLS, Barral 2010).

    Parameters
    ----------
    inversion_time : (m,) array_like
        Inversion times, s, in the order of the data's last axis (at least 3 distinct).
    repetition_time : float, optional
        Inversion repetition time, s (recorded only).
    phase_units : {'rad', 'arbitrary'} or None
        Units of the ``irt1_phase`` input; ``None`` without phase.
    fit_method : {'rdnls', 'grid'}
        Grid search plus variable-projection Gauss-Newton (default), or grid plus parabolic
        interpolation only (faster, within a few tenths of a percent).
    t1_min, t1_max : float
        T1 search range, s; fits outside it are NaN.
    n_grid : int
        Log-spaced T1 grid points.
    polarity : {'auto', 'magnitude'}
        ``auto``: from the phase when given, else by the sign-flip search; ``magnitude``:
        always the sign-flip search.
    """

    name = "irt1"
    kind = "volume"
    separate_acquisitions = "volume"
    rows_input = "irt1"
    description = "Inversion-recovery T1 mapping (reduced-dimension NLS, polarity restored)"
    reference = (
        "Barral JK, Gudmundson E, Stikov N, et al. Magn Reson Med 2010;64:1057-1067 "
        "(RD-NLS with polarity restoration)"
    )
    inputs = (_series("irt1", ["mag", None]), _series("irt1_phase", "phase"))
    alternatives = (("irt1", "irt1_phase"), ("irt1",))
    outputs = (
        OutputSpec("T1", "T1map", "s", desc="IR", valid_range=(1e-3, 30.0)),
        OutputSpec("M0", "M0map", "arbitrary", desc="IR", valid_range=(0.0, np.inf)),
        OutputSpec("InvEff", "InvEffmap", "ratio", desc="IR", valid_range=(0.0, 3.0)),
    )
    options_spec: ClassVar[Mapping[str, Option]] = {
        "fit_method": Option(
            "rdnls", str, ("rdnls", "grid"), doc="grid + Gauss-Newton, or grid + parabola"
        ),
        "t1_min": Option(0.05, float, range=(1e-3, 1.0), unit="s", doc="T1 search minimum"),
        "t1_max": Option(5.0, float, range=(0.5, 30.0), unit="s", doc="T1 search maximum"),
        "n_grid": Option(100, int, range=(10, 2000), doc="log-spaced T1 grid points"),
        "polarity": Option(
            "auto", str, ("auto", "magnitude"), doc="phase when given, or sign-flip search"
        ),
    }

    def __init__(
        self,
        inversion_time: np.ndarray,
        repetition_time: float | None = None,
        phase_units: str | None = None,
        **options: Any,
    ):
        super().__init__(**options)
        self.inversion_time = np.asarray(inversion_time, dtype=float).ravel()
        ti = self.inversion_time
        if not np.all(np.isfinite(ti) & (ti > 0)) or np.unique(ti).size < 3:
            raise ValueError(f"{self.name}: needs 3 distinct positive InversionTime, got {ti}")
        if self.options["t1_min"] >= self.options["t1_max"]:
            raise ValueError(
                f"{self.name}: t1_min={self.options['t1_min']} must be below "
                f"t1_max={self.options['t1_max']}"
            )
        self.repetition_time = None if repetition_time is None else float(repetition_time)
        if phase_units not in (None, "rad", "arbitrary"):
            raise ValueError(f"{self.name}: phase_units {phase_units!r}; 'rad' or 'arbitrary'")
        self.phase_units = phase_units

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> IRT1Model:
        """Inversion times (s), the repetition time if given, the phase units if phase.

        Raises
        ------
        MetadataError
            Fewer than 3 distinct inversion times, repetition times that disagree or are not
            longer than the TIs, phase images whose TIs differ from the magnitude's, or a
            phase without ``Units`` (naming the file and key).
        """
        options = cls.check_options(options)
        coll = collections["irt1"]
        ti = coll.values("InversionTime")
        if np.unique(ti).size < 3:
            raise MetadataError(
                sidecar_path(coll.volumes[0].path),
                coll.sources.get("InversionTime", "InversionTime"),
                ti.tolist(),
                "at least 3 distinct InversionTime values for the 3 unknowns of the IR fit",
            )
        tr = _repetition_time(coll, ti)
        units = None
        phase = collections.get("irt1_phase")
        if phase is not None and options["polarity"] == "auto":
            ti_ph = phase.values("InversionTime")
            if ti_ph.shape != ti.shape or not np.allclose(ti_ph, ti, rtol=1e-3):
                raise MetadataError(
                    sidecar_path(phase.volumes[0].path),
                    "InversionTime",
                    ti_ph.tolist(),
                    f"the inversion times of the magnitude images {ti.tolist()}",
                )
            found = {v.metadata.get("Units") for v in phase.volumes}
            if len(found) != 1 or not found <= {"rad", "arbitrary"}:
                raise MetadataError(
                    sidecar_path(phase.volumes[0].path),
                    "Units",
                    sorted(map(str, found)),
                    "'rad' or 'arbitrary', the same for every phase image",
                )
            units = found.pop()
        return cls(ti, tr, units, **options)

    @property
    def acquisition(self) -> dict[str, Any]:
        """Inversion times (s) in data order, the repetition time, the polarity source."""
        return {
            "InversionTime": self.inversion_time.tolist(),
            "RepetitionTime": self.repetition_time,
            "PolarityRestoration": (
                "phase (sign of cos(phase - phase at the longest TI))"
                if self.phase_units
                else "sign-flip search over the sorted inversion times (magnitude)"
            ),
        }

    def registration_image(self, data: Mapping[str, np.ndarray]) -> np.ndarray:
        """The longest-TI magnitude (the most recovered, most PD-like image)."""
        lead = data["irt1"]
        return lead[..., int(np.argmax(self.inversion_time))]

    def fit_rows(
        self, magnitude: np.ndarray, phase: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Parameters (n, 3) = (T1 s, M0, InvEff) and rmse (n,) of magnitude rows (n, m).

        ``phase`` (n, m) in rad, when given, restores the polarity; otherwise the sign-flip
        search does. Rows with a non-finite or negative magnitude, no signal, or no
        recovering fit inside the T1 range get NaN.
        """
        mag = np.atleast_2d(np.asarray(magnitude, dtype=np.float64))
        params = np.full((mag.shape[0], 3), np.nan)
        rmse = np.full(mag.shape[0], np.nan)
        opts = self.options
        kw = {
            "t1_range": (opts["t1_min"], opts["t1_max"]),
            "n_grid": opts["n_grid"],
            "refine": opts["fit_method"] == "rdnls",
        }
        for lo in range(0, mag.shape[0], _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            y = mag[sl]
            signed = phase is not None
            if signed:
                ref = phase[sl][:, [int(np.argmax(self.inversion_time))]]
                with np.errstate(invalid="ignore"):
                    sign = np.where(np.cos(phase[sl] - ref) < 0, -1.0, 1.0)
                    neg = np.any(y < 0, axis=1)
                y = np.where(neg[:, None], np.nan, y * sign)
            t1, a, b, _ = fit_ir(y, self.inversion_time, signed=signed, **kw)
            with np.errstate(all="ignore"):
                params[sl] = np.stack((t1, a, -b / a), axis=-1)
                rmse[sl] = np.sqrt(np.mean((self.predict(params[sl]) - mag[sl]) ** 2, axis=-1))
        rmse[~np.isfinite(rmse)] = np.nan
        return params, rmse

    def _fit_volume(self, data, *, mask, affine, **_covariates):
        """Fit the masked voxels of ``irt1`` (+ ``irt1_phase``): ``(params, rmse)``."""
        mag = data["irt1"]
        phase = None
        if self.phase_units and "irt1_phase" in data:
            rad, record = phase_to_rad(data["irt1_phase"], self.phase_units, np.float64)
            self.fit_notes["PhaseScaling"] = record
            phase = rad[mask]
        params, rmse = self.fit_rows(mag[mask], phase)
        out = np.full((*mask.shape, len(self.outputs)), np.nan)
        out[mask] = params
        rmse_map = np.full(mask.shape, np.nan)
        rmse_map[mask] = rmse
        n_nan = int(np.isnan(params[:, 0]).sum())
        self.fit_notes["NumberOfVoxelsWithoutFit"] = n_nan
        logger.debug("irt1: %d of %d voxels without a fit", n_nan, params.shape[0])
        return out, rmse_map

    def predict(self, params: np.ndarray, **_covariates) -> np.ndarray:
        """Magnitude signal (n, m) ``|M0 (1 - InvEff exp(-TI/T1))|`` from params (n, 3)."""
        params = np.atleast_2d(params)
        m0 = params[:, 1]
        return np.abs(ir_signal(params[:, 0], m0, -params[:, 2] * m0, self.inversion_time))

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """The qmri_irt1 protocol: TI 50, 400, 1100, 2500 ms, TR 2.55 s (magnitude)."""
        tis = (0.05, 0.4, 1.1, 2.5)
        vols = tuple(
            Volume(f"example_inv-{i}_IRT1.nii.gz", {}, {"InversionTime": t})
            for i, t in enumerate(tis, start=1)
        )
        params = {"InversionTime": tis, "RepetitionTimePreparation": (2.55,) * len(tis)}
        return {"irt1": Collection("irt1", vols, params, {})}

    def simulate(self, n: int, rng: np.random.Generator):
        """T1 0.4-3 s, M0 500-2000, efficiency 1.7-2: ``(params, magnitude, {})``."""
        params = np.stack(
            (rng.uniform(0.4, 3.0, n), rng.uniform(500, 2000, n), rng.uniform(1.7, 2.0, n)),
            axis=-1,
        )
        return params, self.predict(params), {}
