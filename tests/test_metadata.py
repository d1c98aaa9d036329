"""Metadata resolver: units, ranges, types, duplicates, ordering (CONTRACT 2.1, exit 65)."""

import json
from pathlib import Path

import pytest

from bids_app.bids.metadata import build_collection, check_value
from bids_app.errors import MetadataError
from bids_app.models.base import InputSpec, MetaSpec, Volume

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "bids-examples"

TE = MetaSpec("EchoTime", "time", (1e-4, 0.2))
TR = MetaSpec("RepetitionTimeExcitation", "time", (1e-3, 0.5), aliases=("RepetitionTime",))
FA = MetaSpec("FlipAngle", "angle", (0.5, 90))
MT = MetaSpec("MTState", "bool")


def _vols(metas, suffix="VFA"):
    return [
        Volume(f"/d/sub-01/anat/sub-01_flip-{i + 1}_{suffix}.nii.gz", {"flip": str(i + 1)}, m)
        for i, m in enumerate(metas)
    ]


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [(TE, 0.005, 0.005), (TR, 0.015, 0.015), (FA, 20, 20.0), (FA, 3, 3.0), (MT, True, True)],
)
def test_valid_values_pass(spec, value, expected):
    assert check_value("x.json", spec, spec.key, value) == expected


@pytest.mark.parametrize(
    ("spec", "value", "fragment"),
    [
        (TE, 3.5, "milliseconds"),
        (TR, 15, "milliseconds"),
        (FA, 0.349, "radians"),  # 20 degrees in radians
        (FA, 1.0472, "radians"),  # 60 degrees in radians
        (FA, 200, "degrees"),
        (FA, -5, "degrees"),
        (TE, "0.005", "number in seconds"),
        (FA, "6", "number in degrees"),
        (FA, True, "number in degrees"),
        (MT, "true", "boolean"),
        (TE, float("nan"), "finite"),
        (TE, 0.0, "seconds"),
    ],
)
def test_bad_values_refused_with_file_key_value(spec, value, fragment):
    with pytest.raises(MetadataError) as info:
        check_value("/d/sub-01/anat/x.json", spec, spec.key, value)
    msg = str(info.value)
    assert "/d/sub-01/anat/x.json" in msg
    assert spec.key in msg
    assert repr(value) in msg
    assert fragment in msg
    assert info.value.exit_code == 65


def test_collection_sorted_by_metadata_not_entity():
    spec = InputSpec("vfa", {"suffix": "VFA"}, (FA, TR), stack_along=("FlipAngle",))
    # entity flip-1 has the larger angle: order must follow the metadata value
    vols = _vols(
        [{"FlipAngle": 20, "RepetitionTime": 0.015}, {"FlipAngle": 3, "RepetitionTime": 0.015}]
    )
    coll = build_collection(spec, vols)
    assert coll.values("FlipAngle").tolist() == [3.0, 20.0]
    assert coll.paths[0].endswith("flip-2_VFA.nii.gz")
    assert coll.sources["RepetitionTimeExcitation"] == "RepetitionTime"
    assert coll.common("RepetitionTimeExcitation") == 0.015


def test_duplicated_flip_refused():
    spec = InputSpec("vfa", {"suffix": "VFA"}, (FA,), stack_along=("FlipAngle",))
    with pytest.raises(MetadataError, match="duplicated FlipAngle"):
        build_collection(spec, _vols([{"FlipAngle": 5}, {"FlipAngle": 5}]))


def test_missing_key_named_with_sidecar():
    spec = InputSpec("vfa", {"suffix": "VFA"}, (FA, TR), stack_along=("FlipAngle",))
    with pytest.raises(MetadataError) as info:
        build_collection(spec, _vols([{"FlipAngle": 5}, {"FlipAngle": 10}]))
    assert "sub-01_flip-1_VFA.json" in str(info.value)
    assert "RepetitionTimeExcitation" in str(info.value)


def test_inconsistent_tr_across_collection():
    spec = InputSpec("vfa", {"suffix": "VFA"}, (FA, TR), stack_along=("FlipAngle",))
    coll = build_collection(
        spec,
        _vols(
            [{"FlipAngle": 5, "RepetitionTime": 0.015}, {"FlipAngle": 10, "RepetitionTime": 0.02}]
        ),
    )
    with pytest.raises(MetadataError, match="same value"):
        coll.common("RepetitionTimeExcitation")


def test_volume_count_checked():
    spec = InputSpec("mtr", {"suffix": "MTR"}, (MT,), stack_along=("MTState",), n_volumes=(2, 2))
    with pytest.raises(MetadataError, match="number of volumes"):
        build_collection(spec, _vols([{"MTState": True}], "MTR"))


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="../shared/bids-examples not present")
def test_real_sidecars_of_bids_examples():
    """The qmri_mtsat sidecars (inheritance through the top-level MTS.json) resolve."""
    from bids_app.bids.layout import make_layout
    from bids_app.bids.query import resolve_model
    from bids_app.models import get_model

    layout = make_layout(EXAMPLES / "qmri_mtsat")
    (run,) = resolve_model(layout, get_model("mtsat"), "01", None)
    coll = run.collections["mts"]
    assert coll.values("FlipAngle").tolist() == [6.0, 20.0, 6.0]
    assert [v.entities["mt"] for v in coll.volumes] == ["off", "off", "on"]
    meta = json.loads((EXAMPLES / "qmri_mtsat" / "MTS.json").read_text())
    assert meta["PulseSequenceType"] == "SPGR"


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="../shared/bids-examples not present")
@pytest.mark.parametrize(
    ("dataset", "model", "n_volumes"),
    [
        ("qmri_vfa", "vfa_t1", 2),
        ("qmri_vfa", "b1", 2),  # TB1AFI: two TRs told apart by acq-tr1/acq-tr2
        ("qmri_mtsat", "b1", 2),  # TB1DAM: 60/120 deg
        ("qmri_megre", "megre_r2star", 8),
        ("qmri_mese", "mese_t2", 32),
    ],
)
def test_official_qmri_examples_resolve(dataset, model, n_volumes):
    """The real sidecars of the BIDS qMRI examples pass the resolver and build the model."""
    from bids_app.bids.layout import make_layout
    from bids_app.bids.query import resolve_model
    from bids_app.models import get_model

    (run,) = resolve_model(make_layout(EXAMPLES / dataset), get_model(model), "01", None)
    (name,) = run.stacked
    assert len(run.collections[name].volumes) == n_volumes
    built = run.model.from_collections(run.collections)
    assert built.acquisition
