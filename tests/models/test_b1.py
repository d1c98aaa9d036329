"""Ground-truth tests of the ``b1`` model (TB1map, AFI, DAM) and of its spatial step."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from bids_app.errors import MetadataError
from bids_app.models.b1 import (
    B1_RANGE,
    B1Model,
    afi_b1,
    b1_scale_from_values,
    dam_b1,
    scale_from_units,
    smooth_fill_b1,
)
from bids_app.models.base import Collection, Volume, sidecar_path
from tests.models import mt_forward as fw

BIDS_EXAMPLES = Path("/work/shared/bids-examples")
if not BIDS_EXAMPLES.is_dir():
    BIDS_EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "bids-examples"

B1_TRUE = np.linspace(0.5, 1.45, 20)


def collection(name, metas, paths, sources=None):
    keys = sorted({k for m in metas for k in m if k != "Units"})
    params = {k: tuple(m[k] for m in metas) for k in keys}
    vols = tuple(Volume(p, {}, m) for p, m in zip(paths, metas, strict=True))
    return Collection(name, vols, params, dict(sources or {}))


def _sidecars(*parts):
    folder = BIDS_EXAMPLES.joinpath(*parts)
    if not folder.is_dir():
        pytest.skip(f"bids-examples not found at {folder}")
    return folder


# ------------------------------------------------------------------------------------ AFI
@pytest.mark.parametrize("t1", [0.8, 1.4, 4.0])
def test_afi_round_trip(t1):
    """Exact AFI steady state (ideal spoiling) at TR1/TR2 = 20/100 ms, 60 deg (qmri_vfa).

    Yarnykh's closed form is first order in TR/T1 (the error falls as T1 grows and vanishes in
    the limit, see the next test): measured max error 0.63 % (T1 = 0.8 s, B1 = 1.45), 0.36 %
    (1.4 s), 0.12 % (4 s); 1 % tolerance.
    """
    s1, s2 = fw.afi(1000.0, t1, 0.02, 0.1, 60.0, b1=B1_TRUE)
    model = B1Model("tb1afi", flip_angles=(60.0, 60.0), repetition_times=(0.02, 0.1))
    np.testing.assert_allclose(model.fit(np.stack([s1, s2], -1)).params[:, 0], B1_TRUE, rtol=0.01)


def test_afi_exact_in_the_short_tr_limit():
    s1, s2 = fw.afi(1.0, 1e4, 0.02, 0.1, 60.0, b1=B1_TRUE)  # TR/T1 = 1e-5
    np.testing.assert_allclose(afi_b1(s1, s2, 5.0, np.deg2rad(60.0)), B1_TRUE, rtol=1e-4)


def test_afi_from_real_sidecars_any_order():
    fmap = _sidecars("qmri_vfa", "sub-01", "fmap")
    jsons = sorted(fmap.glob("*_TB1AFI.json"), reverse=True)  # tr2 first: order must not matter
    metas = [json.loads(p.read_text()) for p in jsons]
    coll = collection("TB1AFI", metas, [str(p.with_suffix(".nii.gz")) for p in jsons])
    model = B1Model.from_collections({"tb1afi": coll})
    assert model.order == (1, 0)
    acq = dict(model.acquisition)
    assert "Yarnykh" in acq.pop("B1Conversion")
    assert acq == {
        "B1Method": "tb1afi",
        "FlipAngle": [60.0, 60.0],
        "RepetitionTimeExcitation": [0.1, 0.02],
    }
    s1, s2 = fw.afi(1000.0, 1.2, 0.02, 0.1, 60.0, b1=B1_TRUE)
    out = model.fit(np.stack([s2, s1], -1)).params[:, 0]
    np.testing.assert_allclose(out, B1_TRUE, rtol=0.01)


def test_afi_rejects_bad_metadata():
    paths = ["fmap/sub-01_acq-tr1_TB1AFI.nii.gz", "fmap/sub-01_acq-tr2_TB1AFI.nii.gz"]
    same_tr = [{"FlipAngle": 60.0, "RepetitionTimeExcitation": 0.02}] * 2
    with pytest.raises(MetadataError) as err:
        B1Model.from_collections({"tb1afi": collection("TB1AFI", same_tr, paths)})
    assert (err.value.key, err.value.path) == ("RepetitionTimeExcitation", sidecar_path(paths[1]))
    flips = [
        {"FlipAngle": 60.0, "RepetitionTimeExcitation": 0.02},
        {"FlipAngle": 50.0, "RepetitionTimeExcitation": 0.1},
    ]
    with pytest.raises(MetadataError) as err:
        B1Model.from_collections({"tb1afi": collection("TB1AFI", flips, paths)})
    assert (err.value.key, err.value.path) == ("FlipAngle", sidecar_path(paths[1]))


def test_afi_edge_cases():
    out = afi_b1([0.0, 1.0, 1.0, np.nan, 1.0], [1.0, 1.2, -0.1, 1.0, 0.5], 5.0, np.pi / 3)
    assert np.isnan(out[:4]).all()  # S1 = 0, r > 1, S2 < 0, NaN
    assert np.isfinite(out[4])


# ------------------------------------------------------------------------------------ DAM
def test_dam_round_trip_from_real_sidecars():
    fmap = _sidecars("qmri_mtsat", "sub-01", "fmap")
    jsons = sorted(fmap.glob("*_TB1DAM.json"))
    metas = [json.loads(p.read_text()) for p in jsons]
    paths = [str(p.with_suffix(".nii.gz")) for p in jsons]
    model = B1Model.from_collections({"tb1dam": collection("TB1DAM", metas, paths)})
    acq = dict(model.acquisition)
    assert "Insko" in acq.pop("B1Conversion")
    assert acq == {"B1Method": "tb1dam", "FlipAngle": [60.0, 120.0]}
    signals = np.stack([fw.gre_long_tr(800.0, m["FlipAngle"], b1=B1_TRUE) for m in metas], -1)
    np.testing.assert_allclose(model.fit(signals).params[:, 0], B1_TRUE, rtol=1e-10)
    # the same through a finite but long TR (TR = 10 T1): e^-10 of T1 weighting remains
    long_tr = [fw.spgr_mt(800.0, 1.0, 10.0, m["FlipAngle"], b1=B1_TRUE) for m in metas]
    np.testing.assert_allclose(model.fit(np.stack(long_tr, -1)).params[:, 0], B1_TRUE, rtol=1e-3)


def test_dam_rejects_flips_not_doubled():
    paths = ["fmap/sub-01_flip-1_TB1DAM.nii.gz", "fmap/sub-01_flip-2_TB1DAM.nii.gz"]
    coll = collection("TB1DAM", [{"FlipAngle": 60.0}, {"FlipAngle": 100.0}], paths)
    with pytest.raises(MetadataError) as err:
        B1Model.from_collections({"tb1dam": coll})
    assert (err.value.key, err.value.path) == ("FlipAngle", sidecar_path(paths[1]))
    assert sidecar_path(paths[1]) in str(err.value)


def test_dam_edge_cases():
    out = dam_b1([0.0, 1.0, -1.0, 1.0], [1.0, 2.5, 1.0, 1.0], np.pi / 3)
    assert np.isnan(out[:3]).all()
    np.testing.assert_allclose(out[3], 1.0)  # cos(B1 α) = 1/2


# --------------------------------------------------------------------------------- TB1map
def test_b1_scale_from_values():
    rng = np.random.default_rng(3)
    frac = np.r_[np.zeros(500), rng.normal(1.0, 0.1, 1000)]  # background 0 is ignored
    assert b1_scale_from_values(frac) == 1.0
    assert b1_scale_from_values(100 * frac) == 0.01
    assert b1_scale_from_values(frac, "a.u.") == 1.0  # uninformative units: from the values
    assert b1_scale_from_values(None, "percent") == 0.01
    assert b1_scale_from_values(100 * frac, "%") == 0.01
    assert scale_from_units("fraction of nominal flip angle") == 1.0
    for bad, units in [(10 * frac, None), (800 * frac, None), (np.zeros(5), None)]:
        with pytest.raises(MetadataError, match=r"median|positive"):
            b1_scale_from_values(bad, units, path="fmap/x_TB1map.nii.gz")
    with pytest.raises(MetadataError, match="matching"):
        b1_scale_from_values(frac, "percent")  # units contradict the values
    with pytest.raises(MetadataError) as err:
        b1_scale_from_values(frac, "degrees", path="fmap/x_TB1map.nii.gz")
    assert (err.value.key, err.value.path) == ("Units", "fmap/x_TB1map.nii.gz")


def test_tb1map_scaling_paths(caplog):
    path = "fmap/sub-01_TB1map.nii.gz"
    data = np.array([[95.0], [105.0], [0.0]])
    pct = B1Model.from_collections({"tb1map": collection("TB1map", [{"Units": "%"}], [path])})
    np.testing.assert_allclose(pct.fit(data).params[:2, 0], [0.95, 1.05])
    assert np.isnan(pct.fit(data).params[2, 0])
    acq = dict(pct.acquisition)
    assert acq.pop("B1Conversion").startswith("B1 = value")
    assert acq == {"B1Method": "tb1map", "B1Scale": 0.01, "B1ScaleSource": "Units='%'"}
    bare = B1Model.from_collections({"tb1map": collection("TB1map", [{}], [path])})
    assert bare.scale is None
    scaled = bare.with_scale(b1_scale_from_values(data), source="median of values")
    assert scaled.acquisition["B1Scale"] == 0.01
    assert bare.scale is None  # with_scale returns a copy
    np.testing.assert_allclose(scaled.fit(data).params[:2, 0], [0.95, 1.05])
    with caplog.at_level(logging.WARNING):  # undecided: inferred per chunk, with a warning
        np.testing.assert_allclose(bare.fit(data).params[:2, 0], [0.95, 1.05])
    assert "undecided" in caplog.text


def test_alternatives_first_present_wins():
    assert B1Model.input_sets() == (
        ("tb1map",),
        ("tb1afi",),
        ("tb1dam",),
        ("tb1tfl",),
        ("tb1epi",),
        ("tb1srge",),
    )
    assert all(spec.optional for spec in B1Model.inputs)
    afi = collection(
        "TB1AFI",
        [{"FlipAngle": 60.0, "RepetitionTimeExcitation": t} for t in (0.02, 0.1)],
        ["a.nii.gz", "b.nii.gz"],
    )
    tb1map = collection("TB1map", [{"Units": "fraction"}], ["m.nii.gz"])
    assert B1Model.from_collections({"tb1afi": afi, "tb1map": tb1map}).method == "tb1map"
    assert B1Model.from_collections({"tb1afi": afi}).method == "tb1afi"
    with pytest.raises(MetadataError, match="TB1DAM"):
        B1Model.from_collections({})
    with pytest.raises(ValueError, match="smoothing_fwhm_mm"):
        B1Model("tb1map", smoothing_fwhm_mm=-1.0)


# ------------------------------------------------------------------------ spatial step
def _ball(shape=(24, 24, 16), radius=7.0):
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape)[:, None, None, None] - 1) / 2
    return np.sqrt(((grid - centre) ** 2).sum(0)) <= radius


def test_smoothing_keeps_constant_field_and_fills_outside_mask():
    mask = _ball()
    b1 = np.where(mask, 0.87, np.nan)
    b1[12, 12, 8] = np.nan  # a hole inside the mask
    b1[11, 12, 8] = 5.0  # an out-of-range value is not trusted
    model = B1Model("tb1map", scale=1.0)
    out = model.spatial_postprocess(
        {"B1": b1.astype(np.float32)}, zooms=(2.0, 2.0, 3.0), mask=mask
    )
    assert out["B1"].dtype == np.float32
    assert np.isfinite(out["B1"]).all()  # filled everywhere, far corners included
    np.testing.assert_allclose(out["B1"], 0.87, rtol=1e-6)


def test_smoothing_preserves_linear_field_inside_and_reduces_noise():
    rng = np.random.default_rng(11)
    mask = _ball(radius=9.0)
    x = np.indices(mask.shape)[0].astype(float)
    field = 0.8 + 0.01 * x  # 2 %/voxel gradient along x (2 mm voxels: 1 % per mm)
    noisy = np.where(mask, field + rng.normal(0, 0.05, mask.shape), np.nan)
    out = smooth_fill_b1(noisy, mask, (2.0, 2.0, 2.0), fwhm_mm=8.0)
    core = _ball(radius=4.0)  # > 2 sigma from the mask edge: symmetric kernel, no bias
    err = (out - field)[core]
    assert abs(err.mean()) < 0.005
    assert err.std() < 0.05 / 3  # noise averaged over many voxels
    assert np.isfinite(out).all()


def test_fwhm_zero_only_fills():
    mask = _ball()
    rng = np.random.default_rng(5)
    b1 = np.where(mask, rng.uniform(0.8, 1.2, mask.shape), np.nan)
    model = B1Model("tb1map", scale=1.0, smoothing_fwhm_mm=0)
    out = model.spatial_postprocess({"B1": b1}, zooms=(1.0, 1.0, 1.0), mask=mask)["B1"]
    np.testing.assert_array_equal(out[mask], b1[mask])
    assert np.isfinite(out).all()
    assert set(np.unique(out[~mask])) <= set(np.unique(b1[mask]))  # nearest in-mask value
    empty = smooth_fill_b1(np.full(mask.shape, np.nan), mask, (1.0, 1.0, 1.0))
    assert np.isnan(empty).all()


def test_b1_range_is_the_output_range():
    assert B1Model.outputs[0].valid_range == B1_RANGE
    assert B1Model.outputs[0].suffix == "TB1map"


def test_b1_model_pickles_and_runs_in_workers():
    model = B1Model("tb1afi", flip_angles=(60.0, 60.0), repetition_times=(0.02, 0.1))
    clone = pickle.loads(pickle.dumps(model))
    s1, s2 = fw.afi(1000.0, 1.2, 0.02, 0.1, 60.0, b1=B1_TRUE)
    data = np.stack([s1, s2], -1)
    np.testing.assert_array_equal(
        clone.fit(data, nprocs=2, chunk_size=8).params, model.fit(data).params
    )
