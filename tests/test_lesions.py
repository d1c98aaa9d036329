"""Tests for bids_app.lesions: per-lesion volumes, world centroids, locations, core/rim means."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from bids_app.lesions import (
    LESION_COLUMNS,
    lesion_locations,
    lesion_table,
    ventricle_mask,
)
from bids_app.regions import lesion_labels

GM, WM, CSF = 1, 2, 3
SCT_T2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sct-testing-data" / "t2"

# SCT's test_cli_sct_analyze_lesion.py: (start voxel, size in voxels) of three box lesions
SCT_BOXES = [((29, 45, 25), (3, 10, 2)), ((29, 27, 25), (1, 4, 1)), ((29, 0, 25), (4, 15, 3))]


def box_mask(shape, boxes):
    mask = np.zeros(shape, bool)
    for start, size in boxes:
        mask[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return mask


def box_centroids_world(boxes, affine):
    """Centroid of each box by hand: start + (size - 1) / 2 in voxels, then the affine."""
    vox = np.array([[s + (n - 1) / 2 for s, n in zip(start, size)] for start, size in boxes])
    return nib.affines.apply_affine(affine, vox)


def check_sct_boxes(shape, affine, zooms):
    labels = lesion_labels(box_mask(shape, SCT_BOXES), zooms=zooms)
    df = lesion_table(labels, affine=affine, zooms=zooms)
    assert len(df) == 3
    # labels follow raster order: the y = 0 box first, then y = 27, then y = 45
    order = [2, 1, 0]
    voxel_mm3 = float(np.prod(zooms))
    expected = [np.prod(SCT_BOXES[i][1]) * voxel_mm3 for i in order]
    assert_allclose(df["volume_mm3"], expected, rtol=1e-12)
    world = box_centroids_world([SCT_BOXES[i] for i in order], affine)
    assert_allclose(df[["centroid_x", "centroid_y", "centroid_z"]], world, atol=1e-9)
    return df


@pytest.mark.parametrize("scale", [1.0, 0.8])
def test_sct_box_lesions_volume_and_world_centroid(scale):
    affine = np.diag([scale, scale, scale, 1.0])
    affine[:3, 3] = (-30.0, 12.5, 4.0)
    df = check_sct_boxes((60, 55, 52), affine, (scale,) * 3)
    if scale == 0.8:  # product of sizes x 0.512
        assert_allclose(df["volume_mm3"], [180 * 0.512, 4 * 0.512, 60 * 0.512], rtol=1e-12)
    else:
        assert df["volume_mm3"].tolist() == [180.0, 4.0, 60.0]


@pytest.mark.skipif(not SCT_T2.exists(), reason="../shared/data/sct-testing-data is absent")
def test_sct_box_lesions_on_real_t2_geometry():
    """Same recipe on the geometry of SCT's t2.nii.gz (permuted axes + shift affine)."""
    img = nib.load(SCT_T2 / "t2.nii.gz")
    zooms = nib.affines.voxel_sizes(img.affine)
    assert img.shape == (60, 55, 52)
    df = check_sct_boxes(img.shape, img.affine, zooms)
    assert df["volume_mm3"].round(6).tolist() == [180.0, 4.0, 60.0]


def test_world_centroid_permuted_anisotropic_affine():
    # world x = -3 k + 10, world y = 1.5 i - 5, world z = 0.5 j + 7
    affine = np.array([[0, 0, -3.0, 10], [1.5, 0, 0, -5], [0, 0.5, 0, 7], [0, 0, 0, 1]])
    zooms = nib.affines.voxel_sizes(affine)
    assert_allclose(zooms, (1.5, 0.5, 3.0))
    boxes = [((2, 3, 1), (3, 4, 2)), ((7, 10, 4), (1, 1, 1))]
    labels = lesion_labels(box_mask((10, 14, 6), boxes), zooms=zooms)
    df = lesion_table(labels, affine=affine, zooms=zooms)
    assert_allclose(
        df[["centroid_x", "centroid_y", "centroid_z"]], box_centroids_world(boxes, affine)
    )
    assert_allclose(df["volume_mm3"], [24 * 2.25, 2.25])


def test_long_table_rows_per_lesion_and_map_nan_aware():
    labels = np.zeros((12, 12, 12), np.int32)
    labels[1:4, 1:4, 1:4] = 3  # ids need not be consecutive
    labels[7:10, 7:10, 7:10] = 7
    rng = np.random.default_rng(11)
    a = rng.normal(1.0, 0.1, labels.shape)
    a[1, 1, 1] = np.nan
    a[8, 8, 8] = np.inf
    b = np.full(labels.shape, np.nan)  # all NaN
    c = 2.0 * np.ones(labels.shape)
    df = lesion_table(labels, {"a": a, "b": b, "c": c}, affine=np.eye(4), zooms=(1, 1, 1))
    assert tuple(df.columns) == LESION_COLUMNS
    assert df["lesion_id"].tolist() == [3, 3, 3, 7, 7, 7]
    assert df["map"].tolist() == ["a", "b", "c"] * 2
    assert (df["volume_mm3"] == 27.0).all()
    for lid in (3, 7):
        v = a[labels == lid]
        v = v[np.isfinite(v)]
        row = df[(df["lesion_id"] == lid) & (df["map"] == "a")].iloc[0]
        assert_allclose([row["mean"], row["median"], row["std"]],
                        [v.mean(), np.median(v), v.std(ddof=1)])  # fmt: skip
    assert (
        df.loc[df["map"] == "b", ["mean", "median", "std", "core_mean", "rim_mean"]]
        .isna()
        .all(axis=None)
    )
    assert (df.loc[df["map"] == "c", ["mean", "core_mean", "rim_mean"]] == 2.0).all(axis=None)


def test_core_and_rim_means():
    labels = np.zeros((9, 9, 9), np.int32)
    labels[2:7, 2:7, 2:7] = 1  # 5x5x5 cube
    labels[0, 0:4, 0] = 2  # 1x4x1 line: no core
    m = np.full(labels.shape, 2.0)
    m[3:6, 3:6, 3:6] = 1.0  # 3x3x3 core of the cube
    m[4, 4, 4] = 0.0  # centre voxel
    df = lesion_table(labels, {"m": m}, affine=np.eye(4), zooms=(1, 1, 1)).set_index("lesion_id")
    assert_allclose(df.loc[1, "core_mean"], 26 / 27)  # depth > 1 mm: the 3x3x3 core
    assert df.loc[1, "rim_mean"] == 2.0  # the 98-voxel shell
    assert np.isnan(df.loc[2, "core_mean"])
    assert df.loc[2, "rim_mean"] == 2.0
    wide = lesion_table(labels, {"m": m}, affine=np.eye(4), zooms=(1, 1, 1), rim_width_mm=2.0)
    wide = wide.set_index("lesion_id")
    assert wide.loc[1, "core_mean"] == 0.0  # only the centre is deeper than 2 mm
    assert_allclose(wide.loc[1, "rim_mean"], (26 * 1.0 + 98 * 2.0) / 124)


def test_no_maps_and_no_lesions():
    labels = np.zeros((6, 6, 6), np.int32)
    empty = lesion_table(labels, {"m": np.ones(labels.shape)}, affine=np.eye(4), zooms=(1, 1, 1))
    assert empty.empty
    assert tuple(empty.columns) == LESION_COLUMNS
    labels[1:3, 1:3, 1:3] = 1
    labels[4, 4, 4] = 2
    df = lesion_table(labels, None, affine=np.eye(4), zooms=(1, 1, 1))
    assert tuple(df.columns) == LESION_COLUMNS
    assert df["lesion_id"].tolist() == [1, 2]
    assert df["map"].isna().all()
    assert df["mean"].isna().all()
    assert df["location"].isna().all()
    with pytest.raises(ValueError, match="map 'm'"):
        lesion_table(labels, {"m": np.ones((5, 5, 5))}, affine=np.eye(4), zooms=(1, 1, 1))
    with pytest.raises(ValueError, match="integer"):
        lesion_table(labels > 0, affine=np.eye(4), zooms=(1, 1, 1))


# --------------------------------------------------------------------------- location
def sphere_brain(n=64):
    """2 mm brain: WM r <= 23 voxels, GM 23 < r <= 27, outer CSF 27 < r <= 28, ventricle r <= 4."""
    r = np.sqrt(((np.indices((n, n, n)) - n // 2) ** 2).sum(axis=0))
    tissue = np.zeros((n, n, n), np.int16)
    tissue[r <= 28] = CSF
    tissue[r <= 27] = GM
    tissue[r <= 23] = WM
    tissue[r <= 4] = CSF
    return tissue, r


LOCATION_CASES = {
    # name: (box slices, expected location)
    "next_to_ventricle": ((slice(37, 39), slice(32, 34), slice(32, 34)), "periventricular"),
    "4mm_from_ventricle": ((slice(25, 27), slice(32, 34), slice(32, 34)), "deep_white_matter"),
    "touching_cortex": ((slice(32, 34), slice(54, 56), slice(32, 34)), "juxtacortical"),
    "black_hole": ((slice(32, 34), slice(16, 18), slice(32, 34)), "deep_white_matter"),
    "ventricle_and_deep_gm": ((slice(32, 34), slice(32, 34), slice(37, 39)), "periventricular"),
}


def test_lesion_locations():
    tissue, r = sphere_brain()
    tissue[32:34, 32:34, 39:41] = GM  # a deep-GM nucleus next to the last lesion
    labels = np.zeros(tissue.shape, np.int32)
    for i, (box, _) in enumerate(LOCATION_CASES.values(), start=1):
        labels[box] = i
    tissue[LOCATION_CASES["black_hole"][0]] = CSF  # T1 black hole labelled CSF: not a ventricle
    zooms = (2.0, 2.0, 2.0)
    where = lesion_locations(labels, tissue, zooms=zooms)
    assert where == {i: loc for i, (_, loc) in enumerate(LOCATION_CASES.values(), start=1)}
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    df = lesion_table(labels, {"m": r}, affine=affine, zooms=zooms, tissue=tissue)
    assert df["location"].tolist() == list(where.values())
    # a larger margin makes the 4 mm lesion periventricular too
    assert lesion_locations(labels, tissue, zooms=zooms, periventricular_mm=4.0)[2] == (
        "periventricular"
    )


def test_ventricle_mask_keeps_deep_csf_only():
    tissue, r = sphere_brain()
    vent = ventricle_mask(tissue, zooms=(2, 2, 2))
    assert_array_equal(vent, r <= 4)  # the outer CSF shell is shallow
    assert not ventricle_mask(tissue, zooms=(2, 2, 2), depth_mm=60).any()
    lesion = r <= 2
    assert_array_equal(ventricle_mask(tissue, zooms=(2, 2, 2), lesion_mask=lesion), vent & ~lesion)


# --------------------------------------------------------------------------- QSM rim
def rim_phantom(seed=3, noise_ppm=0.005):
    """1 mm chi map (ppm): NAWM 0, three r = 5 mm lesions, Gaussian noise of ``noise_ppm``.

    Lesion 1: +0.05 ppm in its 2 mm border shell (a paramagnetic rim), core 0;
    lesion 2: uniformly +0.03 ppm (myelin loss, no rim); lesion 3: iso-intense.
    """
    shape = (40, 24, 24)
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    chi = np.zeros(shape)
    for k, cx in enumerate((8, 20, 32), start=1):
        r = np.sqrt((grid[0] - cx) ** 2 + (grid[1] - 12) ** 2 + (grid[2] - 12) ** 2)
        labels[r <= 5] = k
        if k == 1:
            chi[(r <= 5) & (r > 3)] = 0.05
        elif k == 2:
            chi[r <= 5] = 0.03
    chi += np.random.default_rng(seed).normal(0.0, noise_ppm, shape)
    nawm = labels == 0
    return labels, chi, nawm


def test_rim_columns_on_chimap_rows_only():
    labels, chi, nawm = rim_phantom()
    maps = {"Chimap": chi, "T1map": np.ones(labels.shape)}
    df = lesion_table(
        labels, maps, affine=np.eye(4), zooms=(1, 1, 1), chi_maps=["Chimap"], nawm=nawm
    )
    assert tuple(df.columns) == LESION_COLUMNS
    q = df[df["map"] == "Chimap"].set_index("lesion_id")
    # SNR: 0.03 ppm excess over the 0.02 threshold is 6 noise SDs: the whole shell is above
    assert q.loc[1, "rim_index"] >= 0.95
    # no rim: shell minus core is noise only (0.02 ppm = 4 SDs of one voxel)
    assert q.loc[2, "rim_index"] <= 0.05
    assert q.loc[3, "rim_index"] <= 0.05
    assert q["prl_candidate"].tolist() == [1.0, 0.0, 0.0]
    # shell means: > 100 voxels, so within 3 x 0.005 / sqrt(100) of the truth
    assert q.loc[1, "rim_mean"] == pytest.approx(0.05, abs=0.0015)
    assert q.loc[1, "core_mean"] == pytest.approx(0.0, abs=0.003)
    assert q.loc[2, "rim_mean"] == pytest.approx(0.03, abs=0.0015)
    other = df[df["map"] == "T1map"]
    assert other[["rim_index", "prl_candidate"]].isna().all(axis=None)
    assert (other["rim_mean"] == 1.0).all()


def test_rim_columns_without_rims_or_nawm(caplog):
    labels, chi, nawm = rim_phantom(seed=5)
    chi[labels == 1] = np.random.default_rng(6).normal(0.0, 0.005, (labels == 1).sum())
    df = lesion_table(
        labels, {"Chimap": chi}, affine=np.eye(4), zooms=(1, 1, 1), chi_maps=["Chimap"],
        nawm=nawm,
    )  # fmt: skip
    assert df["prl_candidate"].tolist() == [0.0, 0.0, 0.0]  # control: no candidate
    no_ref = lesion_table(
        labels, {"Chimap": chi}, affine=np.eye(4), zooms=(1, 1, 1), chi_maps=["Chimap"]
    )
    assert no_ref["rim_index"].isna().all()
    assert "no NAWM mask" in caplog.text
