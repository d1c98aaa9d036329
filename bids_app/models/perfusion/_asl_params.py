"""Checked SI parameters of a BIDS ASL series (``*_asl.json`` + ``*_aslcontext.tsv``).

The reader turns the sidecar dictionary, the ``volume_type`` column of the aslcontext file and,
for ``M0Type = "Separate"``, the M0 sidecar into one frozen :class:`AslParams`. Every value
the quantification needs is checked here (type, unit range, length) so that the physics cores
in :mod:`bids_app.models.perfusion._asl_physics` receive plain floats and arrays. Defaults
that are not in the sidecar are taken from the ASL white paper and recorded in
``AslParams.notes``.

References
----------
.. [1] Alsop DC, Detre JA, Golay X, et al. Recommended implementation of arterial spin-labeled
   perfusion MRI for clinical applications. Magn Reson Med 2015;73:102-116 (Table 1:
   λ = 0.9 ml/g, T1 of blood 1.65 s at 3 T and 1.35 s at 1.5 T, labelling efficiency
   0.85 PCASL and 0.98 PASL).
.. [2] BIDS specification, "Arterial Spin Labeling" (perf datatype) and the
   ``SliceEncodingDirection`` definition.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bids_app.models.perfusion._asl_readers import (
    _MAX_TIME_S,
    _bad,
    _flag,
    _m0_repetition_time,
    _number,
    _per_volume,
    _t1_blood,
)

logger = logging.getLogger(__name__)

#: aslcontext volume types of BIDS.
VOLUME_TYPES = ("control", "label", "m0scan", "deltam", "cbf", "noRF")
LABELING_TYPES = ("PCASL", "CASL", "PASL")
M0_TYPES = ("Separate", "Included", "Estimate", "Absent")
#: White-paper labelling efficiencies [1]; CASL has none there, so it must be given.
DEFAULT_LABELING_EFFICIENCY = {"PCASL": 0.85, "PASL": 0.98}
DEFAULT_PARTITION_COEFFICIENT = 0.9  # ml/g, whole brain [1]
_AXES = {"i": 0, "j": 1, "k": 2}


@dataclass(frozen=True)
class AslParams:
    """Parameters of one ASL series in SI units (s), one entry per volume where per-volume.

    Attributes
    ----------
    labeling_type : str
        ``'PCASL'``, ``'CASL'`` or ``'PASL'``.
    volume_types : tuple of str
        aslcontext ``volume_type`` per volume, length ``n_volumes``.
    post_labeling_delay : tuple of float
        PLD per volume (s); for PASL the inversion time TI (BIDS definition).
    labeling_duration : tuple of float or None
        Labelling duration τ per volume (s), PCASL/CASL only.
    bolus_cutoff_flag : bool or None
        PASL only: whether a bolus cut-off (QUIPSS) was used.
    bolus_cutoff_delay_time : tuple of float or None
        ``BolusCutOffDelayTime`` (s), one value (QUIPSSII) or start/end (Q2TIPS).
    bolus_cutoff_technique : str or None
        ``'QUIPSSII'`` or ``'Q2TIPS'`` (QUIPSS I is rejected).
    bolus_duration : float or None
        PASL bolus duration TI1 (s): the (first) bolus cut-off delay time.
    m0_type : str
        ``M0Type``; ``'Absent'`` only appears together with a user M0 (``m0_estimate``).
    m0_estimate : float or None
        ``M0Estimate`` of the sidecar, or the user M0 when ``M0Type`` is ``'Absent'``.
    m0_repetition_time : float or None
        ``RepetitionTimePreparation`` of the M0 volumes (s) for the saturation-recovery
        correction; ``None`` only with the recorded no-correction fallback or no M0 image.
    repetition_time_preparation : tuple of float or None
        The ASL sidecar ``RepetitionTimePreparation`` per volume (s), if given.
    background_suppression : bool
    background_suppression_pulses : int or None
    labeling_efficiency : float
        α in (0, 1].
    labeling_efficiency_is_default : bool
        True when α is the white-paper default rather than the sidecar or user value.
    t1_blood : float
        T1 of arterial blood (s).
    partition_coefficient : float
        Blood-brain partition coefficient λ (ml/g).
    magnetic_field_strength : float or None
        B0 (T).
    mr_acquisition_type : str or None
        ``'2D'`` or ``'3D'``.
    slice_timing : tuple of float or None
        ``SliceTiming`` (s) of a 2-D readout, in slice-index order of the sidecar.
    slice_axis : int
        Array axis of the slices (``SliceEncodingDirection``, default ``k`` = 2).
    slice_reversed : bool
        True for a negative ``SliceEncodingDirection`` (first timing = last slice index).
    vascular_crushing : bool or None
    total_acquired_pairs : int or None
    notes : tuple of str
        Defaults and fallbacks used, for the provenance record.
    """

    labeling_type: str
    volume_types: tuple[str, ...]
    post_labeling_delay: tuple[float, ...]
    labeling_duration: tuple[float, ...] | None
    bolus_cutoff_flag: bool | None
    bolus_cutoff_delay_time: tuple[float, ...] | None
    bolus_cutoff_technique: str | None
    bolus_duration: float | None
    m0_type: str
    m0_estimate: float | None
    m0_repetition_time: float | None
    repetition_time_preparation: tuple[float, ...] | None
    background_suppression: bool
    background_suppression_pulses: int | None
    labeling_efficiency: float
    labeling_efficiency_is_default: bool
    t1_blood: float
    partition_coefficient: float
    magnetic_field_strength: float | None
    mr_acquisition_type: str | None
    slice_timing: tuple[float, ...] | None
    slice_axis: int
    slice_reversed: bool
    vascular_crushing: bool | None
    total_acquired_pairs: int | None
    notes: tuple[str, ...]

    @property
    def n_volumes(self) -> int:
        """Number of volumes of the series."""
        return len(self.volume_types)

    @property
    def label_delays(self) -> tuple[float, ...]:
        """Sorted distinct PLDs (s) of the control, label and deltam volumes."""
        asl = {"control", "label", "deltam"}
        return tuple(
            sorted({p for p, v in zip(self.post_labeling_delay, self.volume_types) if v in asl})
        )

    @property
    def is_multi_delay(self) -> bool:
        """True when the series has more than one distinct PLD."""
        return len(self.label_delays) > 1


def read_asl_params(
    sidecar: Mapping[str, Any],
    volume_types: Sequence[str],
    *,
    m0_sidecar: Mapping[str, Any] | None = None,
    path: Any = None,
    m0_path: Any = None,
    user_m0: float | None = None,
    labeling_efficiency: float | None = None,
    t1_blood: float | None = None,
    partition_coefficient: float = DEFAULT_PARTITION_COEFFICIENT,
    allow_missing_tr: bool = False,
) -> AslParams:
    """Check and convert the metadata of an ASL series.

    Parameters
    ----------
    sidecar : mapping
        The (inheritance-resolved) ``*_asl.json`` dictionary.
    volume_types : sequence of str
        The aslcontext ``volume_type`` column, one entry per volume.
    m0_sidecar : mapping, optional
        The ``*_m0scan.json`` dictionary; needed when ``M0Type`` is ``'Separate'``.
    path, m0_path : str or Path, optional
        The ASL and M0 sidecar files, named in errors.
    user_m0 : float, optional
        M0 given by the user; required when ``M0Type`` is ``'Absent'``, ignored otherwise.
    labeling_efficiency : float, optional
        α overriding the sidecar ``LabelingEfficiency`` and the white-paper default.
    t1_blood : float, optional
        Blood T1 (s) overriding the white-paper value for the field strength.
    partition_coefficient : float
        λ in ml/g (default 0.9).
    allow_missing_tr : bool
        If True, a missing/zero M0 ``RepetitionTimePreparation`` skips the TR correction
        (recorded in ``notes``) instead of raising.

    Returns
    -------
    AslParams

    Raises
    ------
    bids_app.errors.MetadataError
        A required key is missing or a value has the wrong type, range or length; the error
        names the file and the key.
    """
    meta, n, notes = sidecar, len(volume_types), []
    types = tuple(str(v).strip() for v in volume_types)
    for v in types:
        if v not in VOLUME_TYPES:
            raise _bad(path, "volume_type", v, f"one of {', '.join(VOLUME_TYPES)} (aslcontext)")
    if n == 0:
        raise _bad(path, "volume_type", [], "at least one volume (aslcontext)")
    if types.count("control") != types.count("label"):
        raise _bad(path, "volume_type", types, "as many control as label volumes")
    for key in ("ArterialSpinLabelingType", "PostLabelingDelay", "M0Type"):
        if key not in meta:
            raise _bad(path, key, None, "a value (required for ASL)")
    kind = meta["ArterialSpinLabelingType"]
    if kind not in LABELING_TYPES:
        raise _bad(path, "ArterialSpinLabelingType", kind, "'PCASL', 'CASL' or 'PASL'")
    s_range = f"seconds in [0, {_MAX_TIME_S}]"
    pld = _per_volume(meta, "PostLabelingDelay", n, path, 0.0, _MAX_TIME_S, s_range)

    tau = cut_flag = cut_times = cut_kind = bolus = None
    if kind in ("PCASL", "CASL"):
        if "LabelingDuration" not in meta:
            raise _bad(path, "LabelingDuration", None, f"a value in s (required for {kind})")
        tau = _per_volume(meta, "LabelingDuration", n, path, 0.0, _MAX_TIME_S, s_range)
        if any(t <= 0 for t, v in zip(tau, types) if v in ("control", "label", "deltam")):
            raise _bad(path, "LabelingDuration", meta["LabelingDuration"], "> 0 s")
    else:
        cut_flag = _flag(meta, "BolusCutOffFlag", path, required=True)
        if not cut_flag:
            raise _bad(path, "BolusCutOffFlag", cut_flag, "true: PASL CBF needs a bolus cut-off")
        cut_kind = meta.get("BolusCutOffTechnique")
        if cut_kind not in ("QUIPSSII", "Q2TIPS"):
            raise _bad(path, "BolusCutOffTechnique", cut_kind, "'QUIPSSII' or 'Q2TIPS'")
        raw = meta.get("BolusCutOffDelayTime")
        raw = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        cut_times = tuple(
            _number(v, path, "BolusCutOffDelayTime", 0.0, _MAX_TIME_S, s_range) for v in raw
        )
        if cut_kind == "Q2TIPS" and (len(cut_times) != 2 or cut_times[1] < cut_times[0]):
            raise _bad(path, "BolusCutOffDelayTime", raw, "[start, end] in s for Q2TIPS")
        bolus = cut_times[0]
        if bolus <= 0:
            raise _bad(path, "BolusCutOffDelayTime", raw, "a bolus duration TI1 > 0 s")

    m0_type = meta["M0Type"]
    if m0_type not in M0_TYPES:
        raise _bad(path, "M0Type", m0_type, "'Separate', 'Included', 'Estimate' or 'Absent'")
    m0_estimate = m0_tr = None
    if m0_type == "Included" and "m0scan" not in types:
        raise _bad(path, "M0Type", m0_type, "an m0scan volume in aslcontext for 'Included'")
    if m0_type == "Estimate":
        if "M0Estimate" not in meta:
            raise _bad(path, "M0Estimate", None, "a positive M0 value (M0Type 'Estimate')")
        m0_estimate = _number(meta["M0Estimate"], path, "M0Estimate", 1e-12, math.inf, "> 0")
    elif m0_type == "Absent":
        if user_m0 is None:
            raise _bad(path, "M0Type", m0_type, "an M0 image or estimate, or a user M0 value")
        m0_estimate = _number(user_m0, None, "user_m0", 1e-12, math.inf, "a positive M0")
        notes.append(f"M0Type Absent: user M0 = {m0_estimate} used")
    else:
        m0_tr = _m0_repetition_time(
            meta, types, m0_sidecar, path, m0_path, allow_missing_tr, notes
        )
        if user_m0 is not None:
            notes.append(f"user M0 ignored: M0Type is {m0_type}")

    tr_prep = None
    if meta.get("RepetitionTimePreparation") is not None:
        tr_prep = _per_volume(meta, "RepetitionTimePreparation", n, path, 0.0, 1e3, "TR in s")

    bs = _flag(meta, "BackgroundSuppression", path, required=True)
    bs_pulses = meta.get("BackgroundSuppressionNumberPulses")
    if bs_pulses is not None and (
        isinstance(bs_pulses, bool) or not isinstance(bs_pulses, int) or bs_pulses < 0
    ):
        raise _bad(path, "BackgroundSuppressionNumberPulses", bs_pulses, "an integer >= 0")

    alpha_default = False
    if labeling_efficiency is not None:
        alpha = _number(labeling_efficiency, None, "labeling_efficiency", 1e-3, 1.0, "(0, 1]")
        notes.append(f"labelling efficiency {alpha} given by the user")
    elif meta.get("LabelingEfficiency") is not None:
        alpha = _number(
            meta["LabelingEfficiency"], path, "LabelingEfficiency", 1e-3, 1.0, "(0, 1]"
        )
    elif kind in DEFAULT_LABELING_EFFICIENCY:
        alpha, alpha_default = DEFAULT_LABELING_EFFICIENCY[kind], True
        notes.append(f"labelling efficiency {alpha}: white-paper default for {kind}")
    else:
        raise _bad(path, "LabelingEfficiency", None, "a value in (0, 1] (no CASL default)")

    b0 = meta.get("MagneticFieldStrength")
    t1b = _t1_blood(meta, path, t1_blood, notes)
    lam = _number(partition_coefficient, None, "partition_coefficient", 0.1, 2.0, "ml/g")

    acq = meta.get("MRAcquisitionType")
    if acq is not None and acq not in ("2D", "3D"):
        raise _bad(path, "MRAcquisitionType", acq, "'2D' or '3D'")
    timing, axis, reverse = None, 2, False
    direction = meta.get("SliceEncodingDirection", "k")
    if direction not in ("i", "j", "k", "i-", "j-", "k-"):
        raise _bad(path, "SliceEncodingDirection", direction, "i, j, k, i-, j- or k-")
    axis, reverse = _AXES[direction[0]], direction.endswith("-")
    if acq == "2D":
        if meta.get("SliceTiming") is None:
            notes.append("2-D readout without SliceTiming: one PLD for all slices")
        else:
            raw = meta["SliceTiming"]
            if not isinstance(raw, (list, tuple)) or not raw:
                raise _bad(path, "SliceTiming", raw, "a list of times in s")
            timing = tuple(_number(t, path, "SliceTiming", 0.0, _MAX_TIME_S, s_range) for t in raw)

    pairs = meta.get("TotalAcquiredPairs")
    if pairs is not None and (isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1):
        raise _bad(path, "TotalAcquiredPairs", pairs, "an integer >= 1")
    for note in notes:
        logger.info("ASL parameters (%s): %s", path, note)
    return AslParams(
        labeling_type=kind,
        volume_types=types,
        post_labeling_delay=pld,
        labeling_duration=tau,
        bolus_cutoff_flag=cut_flag,
        bolus_cutoff_delay_time=cut_times,
        bolus_cutoff_technique=cut_kind,
        bolus_duration=bolus,
        m0_type=m0_type,
        m0_estimate=m0_estimate,
        m0_repetition_time=m0_tr,
        repetition_time_preparation=tr_prep,
        background_suppression=bool(bs),
        background_suppression_pulses=bs_pulses,
        labeling_efficiency=alpha,
        labeling_efficiency_is_default=alpha_default,
        t1_blood=t1b,
        partition_coefficient=lam,
        magnetic_field_strength=None if b0 is None else float(b0),
        mr_acquisition_type=acq,
        slice_timing=timing,
        slice_axis=axis,
        slice_reversed=reverse,
        vascular_crushing=_flag(meta, "VascularCrushing", path),
        total_acquired_pairs=pairs,
        notes=tuple(notes),
    )
