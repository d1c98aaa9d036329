"""Tests for bids_app.regions: lesion labelling, region masks and region statistics."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from bids_app.regions import (
    STATS_COLUMNS,
    as_binary_mask,
    build_regions,
    lesion_distance,
    lesion_labels,
    region_stats,
)

GM, WM, CSF = 1, 2, 3


def offsets_within(shape, centre, zooms, lo, hi):
    """Voxels whose centre-to-centre distance d to ``centre`` satisfies lo < d <= hi (by hand)."""
    out = np.zeros(shape, bool)
    for idx in itertools.product(*(range(n) for n in shape)):
        d = np.sqrt(sum(((i - c) * z) ** 2 for i, c, z in zip(idx, centre, zooms)))
        out[idx] = lo < d <= hi
    return out


# --------------------------------------------------------------------------- masks, labels
def test_as_binary_mask_kinds():
    assert_array_equal(as_binary_mask(np.array([0, 1, 3, 7], np.int16)), [0, 1, 1, 1])
    assert_array_equal(as_binary_mask(np.array([0.0, 1.0, 2.0])), [0, 1, 1])  # float labels
    assert_array_equal(as_binary_mask(np.array([0.2, 0.49, 0.5, 0.9])), [0, 0, 1, 1])
    assert_array_equal(as_binary_mask(np.array([np.nan, 1.0, 0.7])), [0, 1, 1])
    with pytest.raises(ValueError, match="outside"):
        as_binary_mask(np.array([0.5, 2.5]))


def test_lesion_labels_two_blobs_in_raster_order():
    m = np.zeros((10, 10, 10), bool)
    m[6:8, 1:3, 1:3] = True  # later in raster order ...
    m[1:3, 6:9, 6:9] = True  # ... than this one
    lab = lesion_labels(m, zooms=(1, 1, 1))
    assert lab.dtype == np.int32
    assert lab.max() == 2
    assert np.all(lab[1:3, 6:9, 6:9] == 1)
    assert np.all(lab[6:8, 1:3, 1:3] == 2)
    assert_array_equal(lab, lesion_labels(m.astype(np.float32), zooms=(1, 1, 1)))


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        # shared corner: one lesion only with 26-connectivity
        ((1, 1, 1), {26: 1, 18: 2, 6: 2}),
        # shared edge: one lesion with 18 and 26
        ((1, 1, 0), {26: 1, 18: 1, 6: 2}),
        # shared face: always one lesion
        ((1, 0, 0), {26: 1, 18: 1, 6: 1}),
    ],
)
def test_lesion_labels_connectivity(offset, expected):
    m = np.zeros((5, 5, 5), bool)
    m[2, 2, 2] = True
    m[2 + offset[0], 2 + offset[1], 2 + offset[2]] = True
    for conn, n in expected.items():
        assert lesion_labels(m, zooms=(1, 1, 1), connectivity=conn).max() == n
    with pytest.raises(ValueError, match="connectivity"):
        lesion_labels(m, zooms=(1, 1, 1), connectivity=8)


def test_lesion_labels_min_volume_anisotropic():
    m = np.zeros((8, 8, 8), bool)
    m[1, 1, 1:4] = True  # 3 voxels x 2 mm^3 = 6 mm^3
    m[5, 5, 5] = True  # 2 mm^3
    m[6:8, 1, 1] = True  # 4 mm^3
    zooms = (1.0, 1.0, 2.0)
    assert lesion_labels(m, zooms=zooms, min_volume_mm3=4).max() == 2
    lab = lesion_labels(m, zooms=zooms, min_volume_mm3=4.5)
    assert lab.max() == 1  # relabelled 1..N
    assert np.all(lab[1, 1, 1:4] == 1)
    assert lab[5, 5, 5] == 0
    with pytest.raises(ValueError, match="zooms"):
        lesion_labels(m, zooms=(1, 1))


# --------------------------------------------------------------------------- regions
def wm_block(shape=(9, 9, 9)):
    return np.full(shape, WM, np.int16)


def test_rings_single_voxel_lesion_1mm():
    tissue = wm_block()
    lesion = np.zeros(tissue.shape, bool)
    c = (4, 4, 4)
    lesion[c] = True
    r = build_regions(tissue, lesion, zooms=(1, 1, 1))
    ring1, ring2, ring3 = (r[f"perilesional_{k}mm"] for k in (1, 2, 3))
    # ring 1: the 6 face neighbours
    assert ring1.sum() == 6
    assert_array_equal(ring1, offsets_within(tissue.shape, c, (1, 1, 1), 0, 1))
    # ring 2: 12 edge (sqrt 2) + 8 corner (sqrt 3) neighbours + 6 voxels at distance 2
    assert ring2.sum() == 12 + 8 + 6
    assert_array_equal(ring2, offsets_within(tissue.shape, c, (1, 1, 1), 1, 2))
    # ring 3: squared distances 5, 6, 8, 9:
    # (2,1,0) 24, (2,1,1) 24, (2,2,0) 12, (3,0,0) 6, (2,2,1) 24
    assert ring3.sum() == 24 + 24 + 12 + 6 + 24
    assert_array_equal(ring3, offsets_within(tissue.shape, c, (1, 1, 1), 2, 3))
    assert r["lesion"].sum() == 1
    # NAWM = WM beyond the 3 mm dilation: disjoint from lesion and rings, and together all WM
    parts = [r["lesion"], ring1, ring2, ring3, r["NAWM"]]
    assert_array_equal(np.sum(parts, axis=0), 1)


def test_rings_stay_inside_wm_label():
    tissue = wm_block()
    tissue[:4] = GM  # the face neighbour at x=3 is GM
    lesion = np.zeros(tissue.shape, bool)
    lesion[4, 4, 4] = True
    r = build_regions(tissue, lesion, zooms=(1, 1, 1))
    assert r["perilesional_1mm"].sum() == 5
    assert not (r["perilesional_2mm"] & (tissue == GM)).any()
    # NAGM: GM farther than 3 mm from the lesion
    expected_nagm = (tissue == GM) & (lesion_distance(lesion, (1, 1, 1)) > 3)
    assert_array_equal(r["NAGM"], expected_nagm)
    assert r["NAGM"].sum() < r["GM"].sum()


def test_rings_2mm_voxels_first_ring_empty():
    tissue = wm_block()
    lesion = np.zeros(tissue.shape, bool)
    lesion[4, 4, 4] = True
    r = build_regions(tissue, lesion, zooms=(2, 2, 2))
    assert r["perilesional_1mm"].sum() == 0  # nearest voxel centres are 2 mm away
    assert r["perilesional_2mm"].sum() == 6  # faces at 2 mm
    assert r["perilesional_3mm"].sum() == 12  # edges at 2.83 mm; corners (3.46 mm) are NAWM
    assert r["NAWM"][5, 5, 5]
    assert not r["NAWM"][5, 5, 4]


def test_rings_anisotropic_and_custom_radii():
    tissue = wm_block()
    lesion = np.zeros(tissue.shape, bool)
    lesion[4, 4, 4] = True
    zooms = (1.0, 1.5, 3.0)
    r = build_regions(tissue, lesion, zooms=zooms, ring_radii_mm=(1.5, 4.0))
    assert list(r)[-2:] == ["perilesional_1.5mm", "perilesional_4mm"]
    assert_array_equal(
        r["perilesional_1.5mm"], offsets_within(tissue.shape, (4, 4, 4), zooms, 0, 1.5)
    )
    assert_array_equal(
        r["perilesional_4mm"], offsets_within(tissue.shape, (4, 4, 4), zooms, 1.5, 4)
    )
    with pytest.raises(ValueError, match="ring_radii_mm"):
        build_regions(tissue, lesion, zooms=zooms, ring_radii_mm=(2, 1))


def test_nawm_excludes_dilated_lesion():
    tissue = wm_block((15, 15, 15))
    lesion = np.zeros(tissue.shape, bool)
    lesion[5:8, 5:8, 5:8] = True
    r = build_regions(tissue, lesion, zooms=(1, 1, 1), lesion_dilation_mm=3.0)
    assert not r["NAWM"][10, 6, 6]  # 3 mm from the lesion border voxel (7, 6, 6)
    assert r["NAWM"][11, 6, 6]  # 4 mm
    assert not r["NAWM"][9, 9, 6]  # sqrt(4 + 4) = 2.8 mm from the lesion edge voxel (7, 7, 6)
    assert r["NAWM"][10, 9, 6]  # sqrt(9 + 4) = 3.6 mm
    r0 = build_regions(tissue, lesion, zooms=(1, 1, 1), lesion_dilation_mm=0.0)
    assert_array_equal(r0["NAWM"], (tissue == WM) & ~lesion)


def test_tissue_regions_partition_brain_and_lesion_counts_as_wm():
    tissue = wm_block((10, 10, 10))
    tissue[:3] = GM
    tissue[:, :2] = CSF
    tissue[0, 0, 0] = 0
    lesion = np.zeros(tissue.shape, bool)
    lesion[2:5, 4:6, 4:6] = True  # partly labelled GM by the "classifier"
    lesion[0, 0, 0] = True  # outside the brain: ignored
    r = build_regions(tissue, lesion, zooms=(1, 1, 1))
    assert r["lesion"].sum() == 12
    assert not r["lesion"][0, 0, 0]
    assert r["WM"][2, 4, 4]
    assert not r["GM"][2, 4, 4]
    assert_array_equal(r["WM"].astype(int) + r["GM"] + r["CSF"], tissue > 0)
    assert list(r) == [
        "lesion", "WM", "GM", "CSF", "NAWM", "NAGM",
        "perilesional_1mm", "perilesional_2mm", "perilesional_3mm",
    ]  # fmt: skip


@pytest.mark.parametrize("lesion", [None, np.zeros((6, 6, 6), bool)])
def test_no_lesion(lesion):
    tissue = wm_block((6, 6, 6))
    tissue[0] = GM
    r = build_regions(tissue, lesion, zooms=(1, 1, 1))
    assert r["lesion"].sum() == 0
    assert all(r[f"perilesional_{k}mm"].sum() == 0 for k in (1, 2, 3))
    assert_array_equal(r["NAWM"], tissue == WM)
    assert_array_equal(r["NAGM"], tissue == GM)


def test_build_regions_deterministic_and_validates():
    rng = np.random.default_rng(20240501)
    tissue = rng.integers(0, 4, size=(12, 12, 12))
    lesion = rng.random((12, 12, 12))  # probabilistic
    a = build_regions(tissue, lesion, zooms=(1, 1.5, 3))
    b = build_regions(tissue, lesion, zooms=(1, 1.5, 3))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["lesion"].sum() == np.count_nonzero((lesion >= 0.5) & (tissue > 0))
    with pytest.raises(ValueError, match="labels"):
        build_regions(tissue + 1, None, zooms=(1, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        build_regions(tissue, lesion[:-1], zooms=(1, 1, 1))


# --------------------------------------------------------------------------- statistics
def test_region_stats_constant_phantom_anisotropic():
    tissue = np.zeros((10, 12, 8), np.int16)
    tissue[1:9, 1:11, 1:7] = WM
    tissue[1:3, 1:11, 1:7] = GM
    tissue[1:9, 1:3, 1:7] = CSF
    lesion = np.zeros(tissue.shape, bool)
    lesion[5:7, 6:8, 3:5] = True
    zooms = (1.0, 1.5, 3.0)
    regions = build_regions(tissue, lesion, zooms=zooms)
    value = {GM: 60.0, WM: 80.0, CSF: 400.0}
    t1 = np.zeros(tissue.shape)
    for k, v in value.items():
        t1[tissue == k] = v
    t1[lesion] = 120.0
    df = region_stats({"T1map": t1, "ones": np.ones(tissue.shape)}, regions, zooms=zooms)
    assert tuple(df.columns) == STATS_COLUMNS
    assert len(df) == 2 * len(regions)
    rows = df[df["map"] == "T1map"].set_index("region")
    expected = {"lesion": 120.0, "GM": 60.0, "CSF": 400.0, "NAWM": 80.0, "perilesional_3mm": 80.0}
    for region, v in expected.items():
        row = rows.loc[region]
        assert row["mean"] == v
        assert row["median"] == v
        assert row["p05"] == v
        assert row["p95"] == v
        assert row["std"] == 0
        assert row["n_invalid"] == 0
    n_gm = 2 * 8 * 6  # x 1:3 (2), y 3:11 (8, y 1:3 is CSF), z 1:7 (6)
    assert rows.loc["GM", "n_voxels"] == n_gm
    assert rows.loc["GM", "volume_mm3"] == n_gm * 4.5
    assert rows.loc["lesion", "volume_mm3"] == 8 * 4.5
    assert rows.loc["WM", "n_voxels"] == int(((tissue == WM) | lesion).sum())
    # 1.5 mm in y, 3 mm in z: the 1 mm ring is only the two x-neighbours of each lesion face
    assert rows.loc["perilesional_1mm", "n_voxels"] == 2 * 2 * 2
    assert df["n_voxels"].dtype == np.int64
    assert df["n_invalid"].dtype == np.int64


def test_region_stats_nan_inf_and_empty_regions():
    data = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    data[0, 0, :2] = np.nan
    data[1, 2, 3] = np.inf
    regions = {
        "all": np.ones(data.shape, bool),
        "empty": np.zeros(data.shape, bool),
        "nan_only": np.isnan(data),
        "single": data == 5,
    }
    df = region_stats({"m": data}, regions, zooms=(2, 1, 1)).set_index("region")
    finite = data[np.isfinite(data)]
    row = df.loc["all"]
    assert row["n_voxels"] == 24
    assert row["volume_mm3"] == 48
    assert row["n_invalid"] == 3
    assert_allclose(row["mean"], finite.mean())
    assert_allclose(row["std"], finite.std(ddof=1))
    assert_allclose([row["p05"], row["median"], row["p95"]], np.percentile(finite, [5, 50, 95]))
    assert df.loc["empty", "n_voxels"] == 0
    assert df.loc["empty", "n_invalid"] == 0
    assert df.loc["empty", ["mean", "median", "std", "p05", "p95"]].isna().all()
    assert df.loc["nan_only", "n_invalid"] == 2
    assert np.isnan(df.loc["nan_only", "mean"])
    assert df.loc["single", "mean"] == 5
    assert np.isnan(df.loc["single", "std"])


def test_region_stats_matches_nan_functions_and_validates():
    rng = np.random.default_rng(7)
    data = rng.normal(1.0, 0.2, size=(8, 8, 8)).astype(np.float32)
    data[rng.random(data.shape) < 0.1] = np.nan
    mask = rng.random(data.shape) < 0.5
    df = region_stats({"m": data}, {"r": mask}, zooms=(1, 1, 1))
    v = data[mask].astype(np.float64)
    assert_allclose(df.loc[0, "mean"], np.nanmean(v), rtol=1e-12)
    assert_allclose(df.loc[0, "std"], np.nanstd(v, ddof=1), rtol=1e-12)
    assert_allclose(df.loc[0, "p95"], np.nanpercentile(v, 95), rtol=1e-12)
    assert df.loc[0, "n_invalid"] == np.isnan(v).sum()
    with pytest.raises(ValueError, match="map 'm'"):
        region_stats({"m": data[:-1]}, {"r": mask}, zooms=(1, 1, 1))
    empty = region_stats({}, {"r": mask}, zooms=(1, 1, 1))
    assert isinstance(empty, pd.DataFrame)
    assert empty.empty
    assert tuple(empty.columns) == STATS_COLUMNS
