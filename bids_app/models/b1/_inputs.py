"""The BIDS inputs of the ``b1`` model, one per B1 map type, in order of preference.

Entity conventions are those of the BIDS qMRI appendix: ``acq-tr1``/``acq-tr2`` (TB1AFI),
``flip`` (TB1DAM), ``acq-famp``/``acq-anat`` (TB1TFL), ``echo-1`` SE / ``echo-2`` STE and
``flip`` (TB1EPI), ``flip`` and ``inv`` (TB1SRGE).
"""

from __future__ import annotations

from bids_app.models.base import InputSpec, MetaSpec

_EXTENSIONS = [".nii", ".nii.gz"]


def _fmap(suffix: str) -> dict:
    return {"datatype": "fmap", "suffix": suffix, "extension": _EXTENSIONS}


B1_INPUTS = (
    InputSpec("tb1map", _fmap("TB1map"), n_volumes=(1, 1), optional=True),
    InputSpec(
        "tb1afi",
        _fmap("TB1AFI"),
        metadata=(
            MetaSpec("FlipAngle", "angle", (1.0, 180.0)),
            MetaSpec("RepetitionTimeExcitation", "time", (1e-3, 1.0), aliases=("RepetitionTime",)),
        ),
        stack_along=("RepetitionTimeExcitation",),
        index_entities=("acquisition",),
        n_volumes=(2, 2),
        optional=True,
    ),
    InputSpec(
        "tb1dam",
        _fmap("TB1DAM"),
        metadata=(MetaSpec("FlipAngle", "angle", (1.0, 180.0)),),
        stack_along=("FlipAngle",),
        index_entities=("flip",),
        n_volumes=(2, 2),
        optional=True,
    ),
    InputSpec(
        "tb1tfl",
        _fmap("TB1TFL"),
        # FlipAngle is required for acq-famp only (checked by the model); the times are not
        # used by the conversion but checked when given (unit slips) and recorded
        metadata=(
            MetaSpec("FlipAngle", "angle", (1.0, 180.0), required=False),
            MetaSpec("EchoTime", "time", (1e-4, 0.1), required=False),
            MetaSpec("RepetitionTimeExcitation", "time", (1e-4, 20.0), required=False),
        ),
        index_entities=("acquisition",),
        n_volumes=(1, 2),
        optional=True,
    ),
    InputSpec(
        "tb1epi",
        _fmap("TB1EPI"),
        metadata=(
            MetaSpec("FlipAngle", "angle", (1.0, 180.0)),
            MetaSpec("EchoTime", "time", (1e-3, 1.0)),
            MetaSpec("MixingTime", "time", (1e-3, 1.0)),
            # BIDS requires it (distortion correction, not done here): checked and recorded
            MetaSpec("TotalReadoutTime", "time", (1e-4, 1.0), required=False),
        ),
        stack_along=("FlipAngle", "EchoTime"),
        index_entities=("flip", "echo"),
        n_volumes=(2, 0),
        optional=True,
    ),
    InputSpec(
        "tb1srge",
        _fmap("TB1SRGE"),
        metadata=(
            MetaSpec("FlipAngle", "angle", (0.5, 90.0)),
            MetaSpec("InversionTime", "time", (1e-3, 20.0)),
            MetaSpec("RepetitionTimePreparation", "time", (0.1, 20.0)),
            MetaSpec("RepetitionTimeExcitation", "time", (1e-4, 0.1)),
        ),
        stack_along=("InversionTime",),
        index_entities=("flip", "inv"),
        n_volumes=(2, 2),
        optional=True,
    ),
)
#: the first input set present wins
B1_ALTERNATIVES = tuple((spec.name,) for spec in B1_INPUTS)
#: the conversion each given/closed-form type records (the protocol types record their own)
CONVERSIONS = {
    "tb1map": "B1 = value x B1Scale (given map)",
    "tb1afi": "cos(B1 FlipAngle) = (r n - 1)/(n - r), r = S2/S1, n = TR2/TR1 (Yarnykh 2007)",
    "tb1dam": "cos(B1 FlipAngle) = S(2 FlipAngle) / (2 S(FlipAngle)) (Insko & Bolinger 1993)",
}
