"""Input resolution: collections grouped by identifying entities, magnitude-only MEGRE."""

from bids_app.bids.layout import make_layout
from bids_app.bids.query import resolve_model
from bids_app.models import get_model
from tests.bids_builder import vfa_spec, write_dataset


def test_megre_uses_magnitude_only(tmp_path):
    files = {}
    for echo, te in ((1, 0.005), (2, 0.010)):
        for part in ("mag", "phase"):
            files[f"anat/sub-01_echo-{echo}_part-{part}_MEGRE"] = ({"EchoTime": te}, None)
    ds = write_dataset(tmp_path / "bids", {"sub-01": files})
    (run,) = resolve_model(make_layout(ds), get_model("megre_r2star"), "01", None)
    vols = run.collections["megre"].volumes
    assert [v.entities["part"] for v in vols] == ["mag", "mag"]
    assert run.entities == {"subject": "01", "part": "mag"}


def _two_acquisitions(tmp_path):
    """One subject with two VFA collections, ``acq-sag`` and ``acq-ax``."""
    spec = {}
    for acq in ("sag", "ax"):
        for stem, value in vfa_spec("sub-01").items():
            spec[stem.replace("sub-01_flip", f"sub-01_acq-{acq}_flip")] = value
    return write_dataset(tmp_path / "bids", {"sub-01": spec})


def test_two_acquisitions_are_two_collections(tmp_path):
    ds = _two_acquisitions(tmp_path)
    runs = resolve_model(make_layout(ds), get_model("vfa_t1"), "01", None)
    assert sorted(r.entities["acquisition"] for r in runs) == ["ax", "sag"]
    assert all(len(r.collections["vfa"].volumes) == 2 for r in runs)


def test_filters_restrict_a_collection(tmp_path):
    ds = _two_acquisitions(tmp_path)
    runs = resolve_model(
        make_layout(ds), get_model("vfa_t1"), "01", None, {"vfa": {"acquisition": "ax"}}
    )
    assert [r.entities["acquisition"] for r in runs] == ["ax"]
