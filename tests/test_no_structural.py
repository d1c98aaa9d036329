"""Subjects without a structural image: reference image, brain mask and tables from qMRI.

A ``msqmri-synth --size tiny --series`` dataset (the relaxometry/MT protocol) with its FLAIR
and T1w deleted is run through the command line (participant, then group). Truth: the
synthetic tissue labels (brain = label > 0) and the true T1 and R2* maps of
``derivatives/truth``. Tolerances: brain-mask Dice >= 0.95 against the true brain; the
``brain``, ``WM`` and ``GM`` means of T1 and R2* within 3 % of the true means over the true
regions (measured: within 0.8 %, Dice 0.989); GM and WM Dice of the tissue classes segmented
on the R1 map >= 0.9 (measured 0.987, 0.995).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.bids.query import ModelRun
from bids_app.cli.run import main
from bids_app.failures import FAILED_DIR
from bids_app.models import REGISTRY
from bids_app.models.base import Collection, Volume
from bids_app.stages.qmri_reference import candidates, reference_image

MODELS = ("vfa_t1", "megre_r2star")
STRUCTURAL = ("_T1w.", "_FLAIR.", "_T2w.")


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=float)


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _run(*argv) -> int:
    return main([str(a) for a in argv] + ["--skip-bids-validation", "--no-reports"])


@pytest.fixture(scope="module")
def bids(tmp_path_factory) -> Path:
    """The tiny synthetic dataset (2 subjects) without its structural images."""
    from bids_app.synth.cli import main as synth

    root = tmp_path_factory.mktemp("nostruct") / "bids"
    assert synth([str(root), "--size", "tiny", "--subjects", "2", "--series"]) == 0
    removed = [f for f in root.glob("sub-*/anat/*") if any(s in f.name for s in STRUCTURAL)]
    assert removed  # the synth writes a FLAIR and a T1w per subject
    for f in removed:
        f.unlink()
    assert list(root.glob("sub-01/anat/*_VFA.nii.gz"))
    assert list(root.glob("sub-*/anat/*MEGRE*"))
    return root


@pytest.fixture(scope="module")
def run_out(bids, tmp_path_factory) -> Path:
    """``participant`` then ``group`` (two calls) into a fresh output folder."""
    out = tmp_path_factory.mktemp("nostruct_out") / "out"
    assert _run(bids, out, "participant", "--models", *MODELS) == 0
    assert _run(bids, out, "group") == 0
    return out


@pytest.mark.parametrize("sub", ["01", "02"])
def test_brain_mask_fits_and_region_rows(bids, run_out, sub):
    truth_dir = bids / "derivatives" / "truth" / f"sub-{sub}" / "anat"
    labels = _load(truth_dir / f"sub-{sub}_dseg.nii.gz").astype(int)  # 1 GM 2 WM 3 CSF 4 lesion
    anat = run_out / f"sub-{sub}" / "anat"
    masks = list(anat.glob("*_desc-brain_mask.nii.gz"))
    assert len(masks) == 1
    mask_img = nib.load(masks[0])
    assert np.allclose(mask_img.affine, nib.load(truth_dir / f"sub-{sub}_dseg.nii.gz").affine)
    mask = np.asarray(mask_img.dataobj) > 0
    assert _dice(mask, labels > 0) >= 0.95

    # the mask sidecar names the qMRI image it was computed on, which exists in the dataset
    side = json.loads(masks[0].with_name(masks[0].name.replace(".nii.gz", ".json")).read_text())
    ref = side["SpatialReference"]
    assert ref.startswith(f"bids:raw:sub-{sub}/anat/")
    assert (bids / ref[9:]).is_file()
    ref_name = Path(ref).name
    assert ref_name.endswith(("_VFA.nii.gz", "_MEGRE.nii.gz"))
    assert side["Method"].startswith(f"computed on {ref_name}")

    # fits restricted to the mask; sidecars say so and name the image
    t1_side = json.loads((anat / f"sub-{sub}_T1map.json").read_text())
    r2s_side = json.loads((anat / f"sub-{sub}_R2starmap.json").read_text())
    for meta in (t1_side, r2s_side):
        assert meta["SkullStripped"] is True
        assert ref_name in meta["BrainMask"]
        assert 0.95 * mask.sum() <= meta["NumberOfFittedVoxels"] <= 1.05 * mask.sum()
    t1 = _load(anat / f"sub-{sub}_T1map.nii.gz")  # the VFA grid is the reference grid
    assert t1.shape == mask.shape
    assert not np.isfinite(t1[~mask]).any()
    assert t1_side["NumberOfFittedVoxels"] == int(mask.sum())

    # region rows: brain, and the tissue classes segmented on the R1 map
    stats = _read(run_out / f"sub-{sub}" / f"sub-{sub}_desc-regions_stats.tsv")
    regions = {
        "brain": labels > 0,
        "WM": np.isin(labels, (2, 4)),  # lesions count as WM (regions.build_regions)
        "GM": labels == 1,
    }
    for name in ("GM", "WM"):
        seg = next(iter(anat.glob(f"*_label-{name}_mask.nii.gz")))
        assert _dice(_load(seg) > 0, regions[name]) >= 0.9, name
    for key, truth_name in (("T1map", "T1map"), ("R2starmap", "R2starmap")):
        truth = _load(truth_dir / f"sub-{sub}_{truth_name}.nii.gz")
        for region, where in regions.items():
            row = stats[(stats["map"] == key) & (stats["region"] == region)]
            assert len(row) == 1, (key, region)
            expected = truth[where].mean()
            assert row["mean"].iloc[0] == pytest.approx(expected, rel=0.03), (key, region)
    brain_rows = stats[stats["region"] == "brain"]
    assert (brain_rows["n_voxels"] == mask.sum()).all()
    assert (brain_rows["space"] == Path(ref_name).name.split("_")[-1].split(".")[0]).all()


def test_group_tables_written(run_out):
    group = _read(run_out / "group_desc-regions_stats.tsv")
    brain = group[(group["region"] == "brain") & (group["map"] == "T1map")]
    assert sorted(brain["participant_id"]) == ["sub-01", "sub-02"]
    assert (run_out / "group_desc-summary_stats.tsv").is_file()
    assert not (run_out / FAILED_DIR).exists() or not list((run_out / FAILED_DIR).iterdir())


def test_no_mask_is_not_called_skull_stripped(bids, tmp_path, capsys):
    """A B1+ map alone gives no reference image: its fit is not skull stripped, and says so."""
    out = tmp_path / "out"
    assert _run(bids, out, "participant", "--models", "b1", "--participant-label", "01") == 0
    meta = json.loads(next(out.glob("sub-01/fmap/*_TB1map.json")).read_text())
    assert meta["SkullStripped"] is False
    assert "positive signal" in meta["BrainMask"]
    assert not list(out.glob("sub-01/*_desc-regions_stats.tsv"))
    capsys.readouterr()
    assert _run(bids, out, "group") == 66  # nothing to aggregate, and the message says why
    err = capsys.readouterr().err
    assert "sub-01 hold maps only" in err
    assert "run the participant level first" not in err


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if " ERROR: " in line]


def test_group_names_participant_failures(bids, tmp_path, capsys):
    data = Path(shutil.copytree(bids, tmp_path / "bids"))
    bad = data / "sub-02" / "anat" / "sub-02_flip-1_VFA.nii.gz"
    good = bad.read_bytes()
    bad.write_bytes(good[:300])  # a truncated (corrupt) qMRI image
    out = tmp_path / "out"

    assert _run(data, out, "participant", "--models", "vfa_t1") == 65
    capsys.readouterr()
    # group alone: tables of sub-01, exit code and message of sub-02's failure
    assert _run(data, out, "group") == 65
    errors = _errors(capsys)
    assert len(errors) == 1, errors
    assert "participant level failed for sub-02 (exit 65" in errors[0]
    assert bad.name in errors[0]
    assert "run the participant level first" not in errors[0]
    group = _read(out / "group_desc-regions_stats.tsv")
    assert set(group["participant_id"]) == {"sub-01"}

    # every participant failed: no tables, still the failure (not 66)
    alone = tmp_path / "alone"
    assert (
        _run(
            data, alone, "participant", "group", "--participant-label", "02", "--models", "vfa_t1"
        )
        == 65
    )
    errors = _errors(capsys)
    assert any("no participant tables" in e and "failed for sub-02" in e for e in errors), errors
    assert not any("run the participant level first" in e for e in errors)

    # repaired and rerun: the failure record goes, the group level succeeds
    bad.write_bytes(good)
    assert (
        _run(
            data, alone, "participant", "group", "--participant-label", "02", "--models", "vfa_t1"
        )
        == 0
    )
    assert not list((alone / FAILED_DIR).glob("*.json"))


def _collection(tmp_path, name, stems, voxel_mm, params=None) -> Collection:
    vols = []
    for stem in stems:
        path = tmp_path / f"{stem}.nii.gz"
        data = np.ones((4, 4, 4), np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([voxel_mm] * 3 + [1.0])), path)
        ents = dict(part.split("-") for part in stem.split("_")[1:-1])
        vols.append(Volume(str(path), ents, {}))
    return Collection(name, tuple(vols), params=params or {})


def test_reference_order_and_image(tmp_path):
    """Finest voxels first, then the documented contrast order; VFA brightest, MT-off only."""
    vfa = _collection(tmp_path, "vfa", ["sub-01_flip-1_VFA", "sub-01_flip-2_VFA"], 2.0)
    megre_fine = _collection(tmp_path, "megre", ["sub-01_echo-1_MEGRE"], 1.0)
    megre_same = _collection(tmp_path, "megre", ["sub-01_echo-2_MEGRE"], 2.0)
    b1 = _collection(tmp_path, "tb1map", ["sub-01_acq-x_TB1map"], 0.5)
    runs = {
        "vfa": ModelRun(REGISTRY["vfa_t1"], {"vfa": vfa}),
        "fine": ModelRun(REGISTRY["megre_r2star"], {"megre": megre_fine}),
        "same": ModelRun(REGISTRY["megre_r2star"], {"megre": megre_same}),
        "b1": ModelRun(REGISTRY["b1"], {"tb1map": b1}),  # no anatomy: never a reference
    }
    order = candidates([runs["same"], runs["b1"], runs["vfa"], runs["fine"]])
    assert order == [runs["fine"], runs["vfa"], runs["same"]]

    data = {"vfa": np.stack([np.full((4, 4, 4), v, np.float32) for v in (3.0, 7.0)], -1)}
    image, path, what = reference_image(runs["vfa"], None, data)
    assert path == vfa.paths[1]
    assert np.all(image == 7.0)
    assert "volume 2 of 2" in what

    # MT-on made brighter than MT-off: the MT-off volume is still the one used
    stems = ["sub-01_mt-on_MTR", "sub-01_mt-off_MTR"]
    mtr = _collection(tmp_path, "mtr", stems, 1.0, params={"MTState": (True, False)})
    data = {"mtr": np.stack([np.full((4, 4, 4), v, np.float32) for v in (9.0, 5.0)], -1)}
    image, path, _ = reference_image(ModelRun(REGISTRY["mtr"], {"mtr": mtr}), None, data)
    assert path == mtr.paths[1]
    assert np.all(image == 5.0)
