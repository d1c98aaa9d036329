"""The options of ``asl_cbf`` and the record of what its quantification used (sidecars).

The record lists every parameter in the order the equations use it (Alsop et al. 2015,
eqs. 1-2; Buxton et al. 1998), with where the labelling efficiency came from and the notes
of :func:`~bids_app.models.perfusion._asl_params.read_asl_params` (defaults, fallbacks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bids_app.models.base import Option
from bids_app.models.perfusion._asl_params import AslParams
from bids_app.models.perfusion._asl_physics import DEFAULT_T1_TISSUE

#: the typed options of ``asl_cbf`` (zero means "not given" where a default exists)
ASL_OPTIONS: dict[str, Option] = {
    "m0_value": Option(
        0.0,
        float,
        range=(0.0, 1e12),
        unit="signal units",
        doc="M0 for M0Type Absent (0: none given; Absent is then exit 65)",
    ),
    "labeling_efficiency": Option(
        0.0,
        float,
        range=(0.0, 1.0),
        doc="0: the sidecar LabelingEfficiency, else the white-paper default",
    ),
    "t1_blood": Option(
        0.0, float, range=(0.0, 5.0), unit="s", doc="0: white-paper value (1.65 s at 3 T)"
    ),
    "t1_tissue": Option(
        DEFAULT_T1_TISSUE,
        float,
        range=(0.1, 5.0),
        unit="s",
        doc="tissue T1 of the M0 saturation-recovery correction (GM at 3 T)",
    ),
    "partition_coefficient": Option(
        0.9, float, range=(0.1, 2.0), unit="mL/g", doc="blood-brain partition coefficient"
    ),
    "bs_efficiency": Option(
        1.0,
        float,
        range=(0.5, 1.0),
        doc="inversion efficiency per background-suppression pulse (1: no correction)",
    ),
    "m0_tr_fallback": Option(
        False,
        bool,
        doc="missing/zero M0 RepetitionTimePreparation: no TR correction (recorded) "
        "instead of exit 65",
    ),
}


def _timing(params: AslParams) -> dict[str, Any]:
    """The quantification parameters in the order the equations use them (sidecars)."""
    out: dict[str, Any] = {
        "ArterialSpinLabelingType": params.labeling_type,
        "M0Type": params.m0_type,
        "PostLabelingDelay": list(params.label_delays),
    }
    if params.labeling_duration is not None:
        asl = [
            t
            for t, v in zip(params.labeling_duration, params.volume_types, strict=True)
            if v in ("control", "label", "deltam")
        ]
        out["LabelingDuration"] = sorted(set(asl))
    else:
        out["BolusCutOffTechnique"] = params.bolus_cutoff_technique
        out["BolusCutOffDelayTime"] = list(params.bolus_cutoff_delay_time or ())
        out["BolusDuration"] = params.bolus_duration
    return out


def acquisition_record(
    p: AslParams, options: Mapping[str, Any], bs_factor: float
) -> dict[str, Any]:
    """Every parameter the quantification used, in the order the equations use them.

    Parameters
    ----------
    p : AslParams
        The checked parameters (labelling efficiency already scaled by ``bs_factor``).
    options : mapping
        The model options (:data:`ASL_OPTIONS`).
    bs_factor : float
        Background-suppression efficiency factor applied to the labelling efficiency.

    Returns
    -------
    dict
        JSON-serialisable values.
    """
    types = p.volume_types
    out = _timing(p)
    out.update(
        {
            "LabelingEfficiency": p.labeling_efficiency,
            "LabelingEfficiencySource": "white-paper default"
            if p.labeling_efficiency_is_default
            else ("option" if options["labeling_efficiency"] else "sidecar"),
            "BackgroundSuppression": p.background_suppression,
            "BackgroundSuppressionNumberPulses": p.background_suppression_pulses,
            "BackgroundSuppressionEfficiencyFactor": bs_factor,
            "BloodT1": p.t1_blood,
            "PartitionCoefficient": p.partition_coefficient,
            "M0Estimate": p.m0_estimate,
            "M0RepetitionTimePreparation": p.m0_repetition_time,
            "M0TissueT1": options["t1_tissue"] if p.m0_repetition_time else None,
            "MagneticFieldStrength": p.magnetic_field_strength,
            "MRAcquisitionType": p.mr_acquisition_type,
            "SliceTimingApplied": p.slice_timing is not None,
            "SliceEncodingAxis": p.slice_axis,
            "NumberOfVolumes": p.n_volumes,
            "VolumeTypeCounts": {t: p.volume_types.count(t) for t in sorted(set(types))},
            "Quantification": "multi-delay general kinetic model (Buxton 1998)"
            if p.is_multi_delay
            else "single-delay white-paper equation (Alsop 2015)",
            "ParameterNotes": list(p.notes),
        }
    )
    return out
