"""Arterial spin labelling CBF (``asl_cbf``): BIDS ``perf/*_asl`` (+ ``_m0scan``) to CBF, ATT.

The model wires the pure cores of this subpackage to the pipeline: the sidecars are checked
by :func:`~bids_app.models.perfusion._asl_params.read_asl_params` (every ``M0Type``,
PCASL/CASL/PASL with QUIPSS II or Q2TIPS, labelling efficiency from the sidecar, the user or
the white-paper default, slice timing of 2-D readouts), and the series is quantified by
:func:`~bids_app.models.perfusion._asl_quantify.quantify_asl`: the white-paper single-delay
equation (Alsop et al. 2015, eqs. 1 and 2) for one post-labelling delay, the general kinetic
model (Buxton et al. 1998) fitted for CBF and arterial transit time (ATT) for several.

Inputs: ``asl`` (``perf/*_asl``, a 4-D series with its ``_aslcontext.tsv``) and the optional
``m0scan`` (``perf/*_m0scan`` with the same ``acq``/``run``), required when the sidecar says
``M0Type: "Separate"``. ``M0Type: "Absent"`` needs the option ``m0_value``. A missing or zero
``RepetitionTimePreparation`` of the M0 image is an error (exit 65) unless the option
``m0_tr_fallback`` is true, in which case M0 is taken as fully relaxed and the sidecars say
so (never a silent zero map).

References
----------
Alsop DC, Detre JA, Golay X, et al. Recommended implementation of arterial spin-labeled
perfusion MRI for clinical applications. Magn Reson Med 2015;73:102-116.
Buxton RB, Frank LR, Wong EC, et al. A general kinetic model for quantitative perfusion
imaging with arterial spin labeling. Magn Reson Med 1998;40:383-396.
Garcia DM, Duhamel G, Alsop DC. Efficiency of inversion pulses for background suppressed
arterial spin labeling. Magn Reson Med 2005;54:366-372.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.base import (
    Collection,
    Companion,
    InputSpec,
    Option,
    OutputSpec,
    QMRIFit,
    QMRIModel,
    Volume,
    register,
    sidecar_path,
)
from bids_app.models.perfusion._asl_kinetic import gkm_signal
from bids_app.models.perfusion._asl_params import AslParams, read_asl_params
from bids_app.models.perfusion._asl_physics import (
    mean_by_delay,
    slice_delay_offsets,
    split_asl_series,
)
from bids_app.models.perfusion._asl_quantify import quantify_asl
from bids_app.models.perfusion._asl_record import ASL_OPTIONS, acquisition_record

logger = logging.getLogger(__name__)

ASLCONTEXT = Companion("aslcontext", "aslcontext", ".tsv", "tsv_column", column="volume_type")
ASL_INPUT = InputSpec(
    "asl", {"datatype": "perf", "suffix": "asl"}, series=True, companions=(ASLCONTEXT,)
)
M0_INPUT = InputSpec(
    "m0scan", {"datatype": "perf", "suffix": "m0scan"}, series=True, optional=True
)
#: CBF kept between these bounds (mL/100g/min): negative values within the noise are kept
#: so that region means of low-perfusion tissue stay unbiased; beyond them, artefacts
CBF_RANGE = (-100.0, 400.0)
ATT_RANGE = (0.0, 5.0)


@register
class AslCbfModel(QMRIModel):
    """ASL CBF (mL/100g/min) and, for several delays, ATT (s) from a BIDS ASL series.

    Parameters
    ----------
    params : AslParams
        The checked series parameters (:func:`read_asl_params`).
    n_m0 : int
        Number of separate M0 volumes (the ``m0scan`` input), 0 without one.
    source : str, optional
        The ASL sidecar, named in errors.
    unused_m0 : bool
        An ``m0scan`` image exists but ``M0Type`` is not ``'Separate'`` (recorded).
    **options
        See :attr:`options_spec`.

    Notes
    -----
    ``fit`` also accepts a plain (..., n_asl + n_m0) array: the ASL volumes followed by the
    separate M0 volumes, one row per voxel (a 3-D readout: no slice timing).
    Single-delay series give an all-NaN ATT map (ATT is not estimable from one delay).
    """

    name = "asl_cbf"
    description = (
        "ASL CBF: white-paper single-delay equation or general kinetic model fit (CBF, ATT)"
    )
    reference = (
        "Alsop DC et al. Magn Reson Med 2015;73:102-116 (single delay); "
        "Buxton RB et al. Magn Reson Med 1998;40:383-396 (multi-delay kinetic model)"
    )
    kind = "volume"
    inputs = (ASL_INPUT, M0_INPUT)
    outputs = (
        OutputSpec("CBF", "cbf", "mL/100g/min", valid_range=CBF_RANGE, datatype="perf"),
        OutputSpec("ATT", "att", "s", valid_range=ATT_RANGE, datatype="perf"),
    )
    options_spec: ClassVar[Mapping[str, Option]] = ASL_OPTIONS

    def __init__(
        self,
        params: AslParams,
        *,
        n_m0: int = 0,
        source: str | None = None,
        unused_m0: bool = False,
        **options: Any,
    ):
        super().__init__(**options)
        self.source = source
        self.n_m0 = int(n_m0) if params.m0_type == "Separate" else 0
        if params.m0_type == "Separate" and self.n_m0 < 1:
            raise MetadataError(
                source, "M0Type", "Separate", "a perf/*_m0scan image with the same entities"
            )
        notes = list(params.notes)
        factor = 1.0
        n_bs = params.background_suppression_pulses
        if params.background_suppression and n_bs and self.options["bs_efficiency"] < 1:
            factor = self.options["bs_efficiency"] ** n_bs
            notes.append(
                f"labelling efficiency x {factor:.4g}: {n_bs} background-suppression pulses "
                f"of efficiency {self.options['bs_efficiency']} (Garcia 2005)"
            )
            params = dataclasses.replace(
                params, labeling_efficiency=params.labeling_efficiency * factor
            )
        if unused_m0:
            notes.append(f"m0scan image present but M0Type is {params.m0_type}: not used")
        self.params = dataclasses.replace(params, notes=tuple(notes))
        self.bs_factor = factor

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> AslCbfModel:
        """The model from the ``asl`` collection and, for ``M0Type: Separate``, ``m0scan``.

        Raises
        ------
        MetadataError
            A sidecar key is missing or wrong (:func:`read_asl_params`), ``M0Type`` is
            ``Separate`` without an ``m0scan`` image, ``Absent`` without ``m0_value``, or a
            control/label pair has two delays; the error names the file and the key.
        """
        opts = cls.check_options(options)
        asl = collections["asl"]
        vol = asl.volumes[0]
        if len(asl.volumes) != 1:
            raise MetadataError(
                vol.path, "files", len(asl.volumes), "one ASL series per acquisition/run"
            )
        side = sidecar_path(vol.path)
        types = [str(t) for t in asl.tables["aslcontext"]]
        m0 = collections.get("m0scan")
        m0_type = vol.metadata.get("M0Type")
        if m0_type == "Separate" and m0 is None:
            raise MetadataError(
                side, "M0Type", "Separate", "a perf/*_m0scan image with the same acq/run"
            )
        separate = m0 is not None and m0_type == "Separate"
        params = read_asl_params(
            vol.metadata,
            types,
            m0_sidecar=dict(m0.volumes[0].metadata) if separate else None,
            path=side,
            m0_path=sidecar_path(m0.volumes[0].path) if m0 is not None else None,
            user_m0=opts["m0_value"] or None,
            labeling_efficiency=opts["labeling_efficiency"] or None,
            t1_blood=opts["t1_blood"] or None,
            partition_coefficient=opts["partition_coefficient"],
            allow_missing_tr=opts["m0_tr_fallback"],
        )
        try:
            split_asl_series(np.zeros((1, len(types))), types, params.post_labeling_delay)
        except ValueError as err:
            raise MetadataError(side, "PostLabelingDelay", "per volume", str(err)) from None
        n_m0 = sum(m0.n_measurements) if separate and m0.n_measurements else int(separate)
        unused = m0 is not None and not separate
        return cls(params, n_m0=n_m0, source=side, unused_m0=unused, **opts)

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """3-D pCASL, six delays 0.25-2.5 s (τ 1.8 s), separate M0 with TR 6 s."""
        plds = [0.25, 0.5, 1.0, 1.5, 2.0, 2.5]
        meta = {
            "ArterialSpinLabelingType": "PCASL",
            "PostLabelingDelay": [p for p in plds for _ in (0, 1)],
            "LabelingDuration": 1.8,
            "M0Type": "Separate",
            "BackgroundSuppression": False,
            "MagneticFieldStrength": 3,
            "MRAcquisitionType": "3D",
        }
        types = np.array(["control", "label"] * len(plds))
        asl = Collection(
            "asl",
            (Volume("example_asl.nii.gz", {}, meta),),
            tables={"aslcontext": types},
            n_measurements=(types.size,),
        )
        m0 = Collection(
            "m0scan",
            (Volume("example_m0scan.nii.gz", {}, {"RepetitionTimePreparation": 6.0}),),
            n_measurements=(1,),
        )
        return {"asl": asl, "m0scan": m0}

    # ----------------------------------------------------------------- declarations

    @property
    def acquisition(self) -> dict[str, Any]:
        """Every parameter the quantification used (:func:`acquisition_record`)."""
        return acquisition_record(self.params, self.options, self.bs_factor)

    def registration_image(self, data: Mapping[str, np.ndarray]) -> np.ndarray:
        """The mean M0 image (separate or included), else the mean control image."""
        series = np.asarray(data["asl"])
        types = np.array(self.params.volume_types)
        if self.n_m0 and "m0scan" in data:
            return np.asarray(data["m0scan"]).mean(axis=-1)
        for kind in ("m0scan", "control"):
            if np.any(types == kind):
                return series[..., types == kind].mean(axis=-1)
        return series.mean(axis=-1)

    # ------------------------------------------------------------------------- fit

    def fit(self, data, *, mask=None, affine=None, **kwargs) -> QMRIFit:
        """Fit ``{'asl': (X, Y, Z, n)[, 'm0scan': (X, Y, Z, k)]}`` or a plain array.

        A plain array has shape (..., n_asl + n_m0) (see the class Notes); its maps come back
        with shape (..., 2).
        """
        if isinstance(data, Mapping):
            return super().fit(data, mask=mask, affine=affine, **kwargs)
        arr = np.asarray(data, dtype=np.float64)
        arr = arr[None] if arr.ndim == 1 else arr
        n_asl = self.params.n_volumes
        if arr.shape[-1] != n_asl + self.n_m0:
            raise ValueError(
                f"{self.name}: {n_asl} ASL + {self.n_m0} M0 volumes expected on the last "
                f"axis, got {arr.shape}"
            )
        lead = arr.shape[:-1]
        vol = arr.reshape(-1, 1, 1, arr.shape[-1])
        split = {"asl": vol[..., :n_asl]}
        if self.n_m0:
            split["m0scan"] = vol[..., n_asl:]
        if mask is not None:
            mask = np.asarray(mask, bool).reshape(-1, 1, 1)
        fit = super().fit(split, mask=mask, affine=affine, **kwargs)
        rmse = None if fit.rmse is None else fit.rmse.reshape(lead)
        return QMRIFit(self, fit.params.reshape(*lead, -1), rmse)

    def _offsets(self, shape: tuple[int, ...]) -> np.ndarray:
        p = self.params
        n = shape[p.slice_axis]
        if p.slice_timing is not None and len(p.slice_timing) != n:
            raise MetadataError(
                self.source,
                "SliceTiming",
                f"{len(p.slice_timing)} values",
                f"one per slice ({n} slices along axis {p.slice_axis})",
            )
        return np.broadcast_to(
            slice_delay_offsets(n, p.slice_timing, p.slice_axis, p.slice_reversed), shape
        )

    def _fit_volume(self, data, *, mask, affine, **covariates):
        p = self.params
        asl = np.asarray(data["asl"], dtype=np.float64)
        if asl.ndim != 4 or asl.shape[-1] != p.n_volumes:
            raise MetadataError(
                self.source,
                "aslcontext",
                f"{p.n_volumes} rows",
                f"one row per volume of the series (image shape {asl.shape})",
            )
        offsets = self._offsets(asl.shape[:3])
        m0_image = data.get("m0scan") if self.n_m0 else None
        maps = quantify_asl(
            asl,
            p,
            m0_image=m0_image,
            mask=mask,
            t1_tissue=self.options["t1_tissue"],
        )
        att = np.full(asl.shape[:3], np.nan) if maps.att is None else maps.att
        fitted = np.isfinite(maps.cbf)
        self.fit_notes.update(
            {
                "Quantification": self.acquisition["Quantification"],
                "Delays": maps.delays.tolist(),
                "DifferenceVolumesPerDelay": maps.counts.tolist(),
                "NumberOfQuantifiedVoxels": int(fitted.sum()),
                "NumberOfMaskVoxelsWithoutM0": int((mask & ~np.isfinite(maps.m0)).sum()),
                "Notes": [n for n in maps.notes if n not in p.notes],
            }
        )
        if maps.att is None:
            self.fit_notes["ATT"] = "not estimable from a single delay: all NaN"
        rmse = None
        if maps.att is not None:
            rmse = self._residual(maps, offsets)
        return np.stack([maps.cbf, att], axis=-1), rmse

    def _durations(self) -> np.ndarray | float:
        """Labelling duration τ per distinct timing (PCASL/CASL) or TI1 (PASL), s."""
        p = self.params
        if p.labeling_type == "PASL":
            return float(p.bolus_duration)
        series = split_asl_series(np.zeros((1, p.n_volumes)), p.volume_types)
        idx = series.deltam_index
        pld = np.asarray(p.post_labeling_delay)[idx]
        tau = np.asarray(p.labeling_duration)[idx]
        return mean_by_delay(np.zeros((1, idx.size)), pld, tau)[1]

    def _residual(self, maps, offsets: np.ndarray) -> np.ndarray:
        """RMS residual (signal units) of the kinetic-model fit, weighted by the counts."""
        p = self.params
        pred = maps.m0[..., None] * gkm_signal(
            maps.cbf[..., None],
            np.nan_to_num(maps.att, nan=ATT_RANGE[1])[..., None],
            maps.delays + offsets[..., None],
            self._durations(),
            labeling_type=p.labeling_type,
            labeling_efficiency=p.labeling_efficiency,
            t1_blood=p.t1_blood,
            partition_coefficient=p.partition_coefficient,
        )
        w = maps.counts / maps.counts.sum()
        return np.sqrt(np.sum(w * (maps.deltam - pred) ** 2, axis=-1))

    # ----------------------------------------------------------------- test hooks

    def simulate(self, n: int, rng: np.random.Generator):
        """CBF 10-90 mL/100g/min, ATT 0.5-2.0 s (NaN for one delay) through the kinetic model.

        The signal columns are the series (control ``c``, label ``c - ΔM``) followed by the
        separate M0 volumes, saturation-recovery weighted with ``t1_tissue`` at the M0 TR.
        """
        p = self.params
        cbf = rng.uniform(10.0, 90.0, n)
        att = rng.uniform(0.5, 2.0, n) if p.is_multi_delay else np.full(n, np.nan)
        m0 = rng.uniform(500.0, 2000.0, n)
        if p.m0_type in ("Estimate", "Absent"):
            m0 = np.full(n, float(p.m0_estimate))
        tau = p.labeling_duration or (p.bolus_duration,) * p.n_volumes
        dm = m0[:, None] * gkm_signal(
            cbf[:, None],
            np.nan_to_num(att, nan=0.0)[:, None],
            np.asarray(p.post_labeling_delay)[None, :],
            np.asarray(tau)[None, :],
            labeling_type=p.labeling_type,
            labeling_efficiency=p.labeling_efficiency,
            t1_blood=p.t1_blood,
            partition_coefficient=p.partition_coefficient,
        )
        types = np.array(p.volume_types)
        control = 0.3 * m0[:, None] * np.ones((1, p.n_volumes))
        series = np.where(types == "label", control - dm, control)
        series = np.where(types == "deltam", dm, series)
        tr = p.m0_repetition_time
        sat = 1.0 if tr is None else -np.expm1(-tr / self.options["t1_tissue"])
        series = np.where(types == "m0scan", (m0 * sat)[:, None], series)
        cols = [series] + [(m0 * sat)[:, None]] * self.n_m0
        return np.stack([cbf, att], axis=1), np.concatenate(cols, axis=1), {}
