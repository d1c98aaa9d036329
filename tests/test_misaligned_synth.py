"""Issue 18 acceptance on ``msqmri-synth --misalign``: every collection on its own grid and pose.

The misaligned dataset simulates each collection (VFA 2.5 mm, MEGRE 2x2x3 mm, MTR 2.2 mm,
T1w 1.8 mm) from the truth maps in a known rigid head pose (1.5-3 degrees, 2-4 mm) relative
to the FLAIR (:mod:`bids_app.synth.misalign`). The participant level must recover every pose
(within 0.5 mm over the brain and 0.5 degree) and the region means must not depend on the
motion: the registered maps equal, within 2 %, the native maps resampled through the *true*
poses, and without registration the error is clearly larger.

Against the aligned dataset (same seed, every collection on the 2 mm FLAIR grid) the region
means also differ by the coarser voxels themselves (partial volume with CSF and GM, and the
resampling of a 2.5 mm map onto the 2 mm grid), whatever the registration: measured with
the true poses (no registration error), WM T1 +10 % (mean; the median +1 to +6 %), lesion T1
-3 %, lesion R2* +4 to +6 %. That part of the issue's acceptance is therefore an expected
failure here (``xfail``), kept to show the figures.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app import io
from bids_app.cli.run import main
from bids_app.registration import register
from bids_app.synth import misalign
from bids_app.xfm import parse_itk_affine, read_xfm
from tests.test_registration import rotation_error_deg

SEED = "5"
MODELS = ["vfa_t1", "megre_r2star", "mtr"]
#: ``from-`` label of the transform files -> collection of the truth record
COLLECTION = {"vfat1": "VFA", "megrer2star": "MEGRE", "mtr": "MTR", "T1w": "T1w"}
#: map -> the collection it is fitted on
MAPS = {"T1map": "VFA", "R2starmap": "MEGRE", "MTRmap": "MTR"}
#: truth dseg labels (1 GM, 2 NAWM, 3 CSF, 4 lesion) of the regions
REGIONS = {"WM": (2, 4), "GM": (1,), "NAWM": (2,), "lesion": (4,)}


def _synth(path: Path, *extra: str, size: str = "small") -> None:
    from bids_app.synth.cli import main as synth

    common = ["--size", size, "--subjects", "1", "--seed", SEED, "--series"]
    assert synth([str(path), *common, *extra]) == 0


def test_pose_draws_and_record_convention():
    rng = np.random.default_rng(0)
    centre = np.array([1.0, -17.0, 10.0])
    for _ in range(20):
        pose, axis, angle, shift = misalign.draw_pose(rng, centre)
        assert misalign.ROTATION_DEG[0] <= angle <= misalign.ROTATION_DEG[1]
        assert misalign.TRANSLATION_MM[0] <= np.linalg.norm(shift) <= misalign.TRANSLATION_MM[1]
        assert np.allclose(pose[:3, :3] @ axis, axis)  # the axis is kept
        assert np.allclose(pose[:3, :3] @ centre + pose[:3, 3], centre + shift)
        assert np.isclose(rotation_error_deg(pose, np.eye(4)), angle)


def test_tiny_misaligned_dataset_holds_the_poses(tmp_path):
    """The written images sit in the recorded poses: resampling one through its pose gives
    back the aligned image (same anatomy), the identity does not."""
    _synth(tmp_path / "aligned", size="tiny")
    _synth(tmp_path / "moved", "--misalign", size="tiny")
    rec_path = tmp_path / "moved/derivatives/truth/sub-01/anat/sub-01_desc-collections_xfm.json"
    record = json.loads(rec_path.read_text())
    assert not (tmp_path / "aligned/derivatives/truth/sub-01/anat" / rec_path.name).exists()
    sim = json.loads((tmp_path / "moved/derivatives/truth/simulation.json").read_text())
    assert sim["Misalignment"]["VoxelSizeMM"]["VFA"] == [5.0, 5.0, 5.0]  # tiny: 4 mm grid
    dseg = nib.load(tmp_path / "aligned/derivatives/truth/sub-01/anat/sub-01_dseg.nii.gz")
    brain = np.asarray(dseg.dataobj) > 0
    for coll, entry in record["Collections"].items():
        matrix = np.asarray(entry["Matrix"])
        itk = "\n".join(
            [
                "#Insight Transform File V1.0",
                "Transform: AffineTransform_double_3_3",
                "Parameters: " + " ".join(map(str, entry["ITKParameters"])),
                "FixedParameters: " + " ".join(map(str, entry["ITKFixedParameters"])),
            ]
        )
        assert np.allclose(parse_itk_affine(itk), matrix, atol=1e-6), coll
    images = {"T1w": "T1w", "VFA": "flip-3_VFA", "MTR": "mt-off_MTR"}
    images["MEGRE"] = "echo-1_part-mag_MEGRE"
    for coll, name in images.items():
        entry = record["Collections"][coll]
        ref = nib.load(tmp_path / f"aligned/sub-01/anat/sub-01_{name}.nii.gz")
        img = nib.load(tmp_path / f"moved/sub-01/anat/sub-01_{name}.nii.gz")
        assert np.allclose(img.affine, entry["Affine"], atol=1e-4)
        data, aligned = np.asarray(img.dataobj, np.float32), np.asarray(ref.dataobj, np.float32)

        def corr(world, data=data, img=img, ref=ref, aligned=aligned):
            back = io.resample(data, img.affine, ref.shape, ref.affine, world=world)
            ok = np.isfinite(back) & brain
            return np.corrcoef(back[ok], aligned[ok])[0, 1]

        # measured (tiny, seed 5): T1w 0.90 vs 0.79, VFA 0.65 vs 0.54, MTR 0.55 vs 0.45,
        # MEGRE 0.50 vs 0.37 (5-6 mm voxels resampled to 4 mm; noise)
        true, header = corr(np.asarray(entry["Matrix"])), corr(None)
        assert true > header + 0.05, (coll, true, header)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("misaligned")
    _synth(base / "aligned")
    _synth(base / "misaligned", "--misalign")
    # the same true lesion and tissue masks for every run (the truth does not move)
    deriv = base / "aligned" / "derivatives"
    masks = ["--derivatives", f"lesions={deriv / 'lesions'}", f"tissue={deriv / 'tissue'}"]
    out = {"raw": base / "misaligned", "truth": base / "misaligned" / "derivatives" / "truth"}
    for name, root, mode in [
        ("aligned", "aligned", "none"),
        ("registered", "misaligned", "rigid"),
        ("unregistered", "misaligned", "none"),
    ]:
        dest = base / f"out_{name}"
        args = [str(base / root), str(dest), "participant", "--models", *MODELS]
        assert main([*args, "--registration", mode, *masks, "--no-reports"]) == 0
        out[name] = dest
    return out


def _record(runs) -> dict:
    path = runs["truth"] / "sub-01" / "anat" / "sub-01_desc-collections_xfm.json"
    return json.loads(path.read_text())["Collections"]


def _dseg(runs) -> nib.Nifti1Image:
    return nib.load(runs["truth"] / "sub-01" / "anat" / "sub-01_dseg.nii.gz")


def _pose_errors(matrix, truth, dseg) -> tuple[float, float]:
    idx = np.argwhere(np.asarray(dseg.dataobj) > 0)
    pts = (dseg.affine @ np.c_[idx, np.ones(len(idx))].T)[:3].T
    diff = matrix - truth
    shift = np.linalg.norm(pts @ diff[:3, :3].T + diff[:3, 3], axis=1).max()
    return float(shift), float(rotation_error_deg(matrix, truth))


def _table_means(out: Path) -> pd.DataFrame:
    table = pd.read_csv(out / "sub-01" / "sub-01_desc-regions_stats.tsv", sep="\t")
    table = table[table["map"].isin(list(MAPS)) & table["region"].isin(list(REGIONS))]
    return table.pivot(index="region", columns="map", values="mean").loc[list(REGIONS), list(MAPS)]


def _region_means(maps: dict[str, np.ndarray], labels: np.ndarray) -> pd.DataFrame:
    rows = {}
    for region, values in REGIONS.items():
        inside = np.isin(labels, values)
        rows[region] = {k: float(np.nanmean(np.where(inside, v, np.nan))) for k, v in maps.items()}
    return pd.DataFrame(rows).T


@pytest.mark.slow
def test_truth_records_every_moved_collection(runs):
    moved = _record(runs)
    assert set(moved) == {"T1w", "VFA", "MEGRE", "MESE", "MTR", "MTS"}
    for entry in moved.values():
        assert 1.5 <= entry["RotationDegrees"] <= 3.0
        assert 2.0 <= np.linalg.norm(entry["TranslationMM"]) <= 4.0
    assert moved["MEGRE"]["VoxelSizeMM"] == [2.0, 2.0, 3.0]
    img = nib.load(runs["raw"] / "sub-01" / "anat" / "sub-01_flip-2_VFA.nii.gz")
    assert np.allclose(img.affine, moved["VFA"]["Affine"], atol=1e-4)


@pytest.mark.slow
def test_transforms_match_the_true_poses(runs):
    record, dseg = _record(runs), _dseg(runs)
    files = sorted((runs["registered"] / "sub-01" / "anat").glob("*_xfm.txt"))
    labels = {f.name.split("from-")[1].split("_")[0]: f for f in files}
    assert {"vfat1", "megrer2star", "mtr"} <= set(labels), labels
    errors = {
        label: _pose_errors(read_xfm(path), np.asarray(record[COLLECTION[label]]["Matrix"]), dseg)
        for label, path in labels.items()
    }
    print("max displacement over the brain (mm), rotation error (deg):", errors)
    for label, (shift, angle) in errors.items():
        assert shift <= 0.5, (label, errors)  # issue 18: 0.5 mm over the brain
        assert angle <= 0.5, (label, errors)  # and 0.5 degree


@pytest.mark.slow
def test_t1w_on_its_own_grid_registers(runs):
    anat = runs["raw"] / "sub-01" / "anat"
    flair, t1w = nib.load(anat / "sub-01_FLAIR.nii.gz"), nib.load(anat / "sub-01_T1w.nii.gz")
    dseg = _dseg(runs)
    reg = register(
        np.asarray(t1w.dataobj, np.float32),
        t1w.affine,
        np.asarray(flair.dataobj, np.float32),
        flair.affine,
        static_mask=np.asarray(dseg.dataobj) > 0,
    )
    shift, angle = _pose_errors(reg.matrix, np.asarray(_record(runs)["T1w"]["Matrix"]), dseg)
    assert shift <= 0.5, (shift, angle)
    assert angle <= 0.5, (shift, angle)


@pytest.mark.slow
def test_registration_removes_the_motion_error(runs):
    """Registered maps vs the native maps resampled through the true poses (same voxels)."""
    record, dseg = _record(runs), _dseg(runs)
    labels = np.asarray(dseg.dataobj)
    anat = runs["registered"] / "sub-01" / "anat"
    oracle, registered, unregistered = {}, {}, {}
    for name, coll in MAPS.items():
        native = nib.load(anat / f"sub-01_{name}.nii.gz")
        ref = f"sub-01_space-FLAIR_{name}.nii.gz"
        pose = np.asarray(record[coll]["Matrix"])
        data = np.asarray(native.dataobj, np.float32)
        oracle[name] = io.resample(data, native.affine, labels.shape, dseg.affine, world=pose)
        registered[name] = np.asarray(nib.load(anat / ref).dataobj)
        unregistered[name] = np.asarray(
            nib.load(runs["unregistered"] / "sub-01/anat" / ref).dataobj
        )
    truth = _region_means(oracle, labels)
    rel = (_region_means(registered, labels) - truth).abs() / truth
    err_none = (_region_means(unregistered, labels) - truth).abs() / truth
    print("registered vs true poses:\n", rel.round(4), "\nunregistered:\n", err_none.round(4))
    assert (rel < 0.02).all().all(), rel  # issue 18: within 2 %
    assert err_none.max().max() > 3 * rel.max().max(), (err_none, rel)
    for name in MAPS:
        assert err_none[name].max() > 2 * rel[name].max(), (name, err_none, rel)


def _vs_aligned(runs) -> tuple[pd.DataFrame, pd.DataFrame]:
    aligned = _table_means(runs["aligned"])
    rel = (_table_means(runs["registered"]) - aligned).abs() / aligned
    err_none = (_table_means(runs["unregistered"]) - aligned).abs() / aligned
    print("vs aligned, registered:\n", rel.round(4), "\nunregistered:\n", err_none.round(4))
    return rel, err_none


@pytest.mark.slow
def test_registration_brings_the_means_closer_to_the_aligned_case(runs):
    rel, err_none = _vs_aligned(runs)
    assert err_none.mean().mean() > 1.3 * rel.mean().mean(), (err_none, rel)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="coarser voxels of the misaligned collections change the region means by "
    "themselves (partial volume, resampling to 2 mm): WM T1 +10 % even with the true poses",
)
def test_region_means_match_the_aligned_case(runs):
    rel, _ = _vs_aligned(runs)
    assert (rel < 0.02).all().all(), rel  # issue 18 acceptance, literally
