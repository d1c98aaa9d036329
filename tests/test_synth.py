"""Tests of msqmri-synth (bids_app.synth): names, grids, truth, lesions, determinism, BIDS
validity and the independent physics of the forward models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.synth import make_plan, write_dataset
from bids_app.synth.anatomy import make_anatomy
from bids_app.synth.cli import main
from bids_app.synth.lesions import PlacementMaps, place_lesions
from bids_app.synth.signals import add_rician_noise, mese, mtr_percent, spgr, spgr_mt
from bids_app.synth.tissue import NOMINAL

SUBJECTS = ("01", "02", "03")
ANAT = (
    ["T1w", "FLAIR"]
    + [f"flip-{i}_VFA" for i in (1, 2, 3)]
    + [f"echo-{i}_part-mag_MEGRE" for i in range(1, 7)]
    + [f"echo-{i}_MESE" for i in range(1, 17)]
    + ["mt-off_MTR", "mt-on_MTR"]
    + ["flip-1_mt-off_MTS", "flip-1_mt-on_MTS", "flip-2_mt-off_MTS"]
)
TRUTH = ("T1map", "R1map", "T2map", "R2map", "T2starmap", "R2starmap", "M0map", "MTsat")
TRUTH += ("MTRmap", "TB1map", "dseg", "label-lesion_mask", "desc-lesions_dseg")


def _data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=float)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    assert main([str(out), "--size", "tiny", "--seed", "7"]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_sessions(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_ses") / "ds"
    assert main([str(out), "--subjects", "2", "--sessions", "2", "--seed", "3"]) == 0
    return out


def test_raw_file_names_are_exact(tiny):
    expected = set()
    for sub in SUBJECTS:
        for name in ANAT:
            for ext in (".nii.gz", ".json"):
                expected.add(f"sub-{sub}/anat/sub-{sub}_{name}{ext}")
        expected |= {f"sub-{sub}/fmap/sub-{sub}_TB1map{ext}" for ext in (".nii.gz", ".json")}
        expected |= {
            f"sub-{sub}/dwi/sub-{sub}_dwi{e}" for e in (".nii.gz", ".json", ".bval", ".bvec")
        }
        for k in range(1, 7):  # the MEGRE phase of the qsm series
            expected |= {
                f"sub-{sub}/anat/sub-{sub}_echo-{k}_part-phase_MEGRE{e}"
                for e in (".nii.gz", ".json")
            }
        perf = ("asl.nii.gz", "asl.json", "aslcontext.tsv", "m0scan.nii.gz", "m0scan.json")
        perf += ("acq-single_asl.nii.gz", "acq-single_asl.json", "acq-single_aslcontext.tsv")
        perf += ("dce.nii.gz", "dce.json")
        expected |= {f"sub-{sub}/perf/sub-{sub}_{name}" for name in perf}
        anat = [f"inv-{i}_IRT1" for i in range(1, 6)]
        anat += [f"inv-{i}_part-{p}_MP2RAGE" for i in (1, 2) for p in ("mag", "phase")]
        for acq, flip, mt, n in (("PDw", 1, "off", 8), ("T1w", 2, "off", 8), ("MTw", 1, "on", 6)):
            anat += [f"acq-{acq}_echo-{k}_flip-{flip}_mt-{mt}_MPM" for k in range(1, n + 1)]
        fmap = ["fmap/sub-{s}_acq-headPDw_RB1COR", "fmap/sub-{s}_acq-bodyPDw_RB1COR"]
        for stem in [f"anat/sub-{{s}}_{a}" for a in anat] + fmap:
            expected |= {f"sub-{sub}/" + stem.format(s=sub) + e for e in (".nii.gz", ".json")}
    found = {str(p.relative_to(tiny)) for p in tiny.glob("sub-*/**/*") if p.is_file()}
    assert found == expected
    top = {p.name for p in tiny.iterdir()}
    assert {"dataset_description.json", "README.md", "participants.tsv"} <= top
    assert {"participants.json", "derivatives"} <= top


def test_sidecars(tiny):
    anat = tiny / "sub-01" / "anat"
    meta = {name: _json(anat / f"sub-01_{name}.json") for name in ANAT}
    for m in meta.values():
        assert m["MagneticFieldStrength"] == 3
        assert m["Manufacturer"] == "msqmri-synth"
    assert [meta[f"flip-{i}_VFA"]["FlipAngle"] for i in (1, 2, 3)] == [3, 8, 18]
    assert {meta[f"flip-{i}_VFA"]["RepetitionTimeExcitation"] for i in (1, 2, 3)} == {0.015}
    tes = [meta[f"echo-{k}_part-mag_MEGRE"]["EchoTime"] for k in range(1, 7)]
    np.testing.assert_allclose(tes, 0.004 + 0.005 * np.arange(6))
    assert meta["echo-1_part-mag_MEGRE"]["RepetitionTime"] == 0.04
    assert meta["echo-1_part-mag_MEGRE"]["FlipAngle"] == 15
    tes = [meta[f"echo-{k}_MESE"]["EchoTime"] for k in range(1, 17)]
    np.testing.assert_allclose(tes, 0.01 * np.arange(1, 17))
    assert meta["echo-1_MESE"]["RepetitionTime"] == 3.0
    assert meta["mt-off_MTR"]["MTState"] is False
    assert meta["mt-on_MTR"]["MTState"] is True
    assert meta["mt-on_MTR"]["RepetitionTime"] == 0.028
    mts = [meta[n] for n in ANAT if n.endswith("MTS")]
    assert [m["FlipAngle"] for m in mts] == [6, 6, 20]
    assert [m["MTState"] for m in mts] == [False, True, False]
    assert [m["RepetitionTimeExcitation"] for m in mts] == [0.028, 0.028, 0.018]
    for name in ("T1w", "FLAIR"):
        assert {"RepetitionTime", "EchoTime", "InversionTime", "FlipAngle"} <= set(meta[name])
    b1 = _json(tiny / "sub-01" / "fmap" / "sub-01_TB1map.json")
    assert b1["Units"] == "fraction of nominal flip angle"
    assert len(b1["IntendedFor"]) == 6
    for uri in b1["IntendedFor"]:
        assert uri.startswith("bids::")
        assert (tiny / uri.removeprefix("bids::")).is_file()
    desc = _json(tiny / "dataset_description.json")
    assert desc["BIDSVersion"] == "1.10.0"
    assert desc["DatasetType"] == "raw"
    assert desc["GeneratedBy"][0]["Name"] == "msqmri-synth"


def test_grids_and_affines(tiny):
    plan = make_plan(size="tiny")
    for sub in SUBJECTS:
        images = list((tiny / f"sub-{sub}" / "anat").glob("*.nii.gz"))
        images += list((tiny / "derivatives" / "truth" / f"sub-{sub}" / "anat").glob("*.nii.gz"))
        for path in images:
            img = nib.load(path)
            assert img.shape == plan.grid_shape, path.name
            np.testing.assert_allclose(img.affine, plan.affine)
        b1 = nib.load(tiny / f"sub-{sub}" / "fmap" / f"sub-{sub}_TB1map.nii.gz")
        assert b1.shape == plan.b1_shape
        np.testing.assert_allclose(nib.affines.voxel_sizes(b1.affine), 8.0)
        centre = b1.affine @ np.r_[(np.array(b1.shape) - 1) / 2, 1]
        grid_centre = plan.affine @ np.r_[(np.array(plan.grid_shape) - 1) / 2, 1]
        assert np.abs(centre - grid_centre).max() <= 4.0  # same field of view


def test_truth_values_per_label(tiny):
    anat = tiny / "derivatives" / "truth" / "sub-02" / "anat"  # a control
    dseg = _data(anat / "sub-02_dseg.nii.gz")
    assert set(np.unique(dseg)) == {0, 1, 2, 3}
    keys = {"T1map": "T1", "T2map": "T2", "T2starmap": "T2star", "M0map": "PD", "MTsat": "MTsat"}
    for suffix, key in keys.items():
        data = _data(anat / f"sub-02_{suffix}.nii.gz")
        for label, tissue in ((1, "GM"), (2, "WM"), (3, "CSF")):
            median = np.median(data[dseg == label])
            # per-subject SD 3 % (clipped at 6 %) x smooth field 2 %
            np.testing.assert_allclose(median, NOMINAL[tissue][key], rtol=0.09, atol=1e-6)
        assert np.all(data[dseg == 0] == 0)
    t1 = _data(anat / "sub-02_T1map.nii.gz")
    r1 = _data(anat / "sub-02_R1map.nii.gz")
    brain = dseg > 0
    np.testing.assert_allclose(r1[brain], 1 / t1[brain], rtol=1e-6)
    b1 = _data(anat / "sub-02_TB1map.nii.gz")[brain]
    assert b1.min() > 0.7
    assert b1.max() < 1.3
    assert b1.max() - b1.min() > 0.2
    assert _json(anat / "sub-02_MTsat.json")["Units"] == "percent units"
    assert _json(anat / "sub-02_T1map.json")["Units"] == "s"


def test_patient_lesions(tiny):
    for sub in ("01", "03"):
        anat = tiny / "derivatives" / "truth" / f"sub-{sub}" / "anat"
        dseg = _data(anat / f"sub-{sub}_dseg.nii.gz")
        mask = _data(anat / f"sub-{sub}_label-lesion_mask.nii.gz") > 0
        assert mask.any()
        assert np.all(dseg[mask] == 4)
        assert np.all(mask[dseg == 4])
        tissue = _data(
            tiny / "derivatives" / "tissue" / f"sub-{sub}" / "anat" / f"sub-{sub}_dseg.nii.gz"
        )
        assert np.all(tissue[mask] == 2)  # lesions replace WM only
        provided = tiny / "derivatives" / "lesions" / f"sub-{sub}" / "anat"
        np.testing.assert_array_equal(
            _data(provided / f"sub-{sub}_label-lesion_mask.nii.gz") > 0, mask
        )
        ids = _data(anat / f"sub-{sub}_desc-lesions_dseg.nii.gz")
        lines = (anat / f"sub-{sub}_desc-lesions_dseg.tsv").read_text().splitlines()
        header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
        assert 5 <= len(rows) <= 10
        for row in map(dict, (zip(header, r) for r in rows)):
            assert int(row["n_voxels"]) == int((ids == int(row["index"])).sum()) > 0
            assert row["location"] in {"periventricular", "juxtacortical", "deep_white_matter"}
        t1 = _data(anat / f"sub-{sub}_T1map.nii.gz")
        mtsat = _data(anat / f"sub-{sub}_MTsat.nii.gz")
        nawm = dseg == 2
        assert 1.1 < np.median(t1[mask]) < 1.6
        assert np.median(t1[mask]) > np.median(t1[nawm])
        assert np.median(mtsat[mask]) < 0.75 * np.median(mtsat[nawm])
    assert not (tiny / "derivatives" / "lesions" / "sub-02").exists()
    control = tiny / "derivatives" / "truth" / "sub-02" / "anat"
    assert not _data(control / "sub-02_label-lesion_mask.nii.gz").any()


def test_image_contrasts(tiny):
    """Lesions hypointense on T1w, hyperintense on FLAIR; CSF dark on FLAIR."""
    dseg = _data(tiny / "derivatives" / "truth" / "sub-01" / "anat" / "sub-01_dseg.nii.gz")
    t1w = _data(tiny / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    flair = _data(tiny / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz")
    med = {k: (np.median(t1w[dseg == k]), np.median(flair[dseg == k])) for k in (1, 2, 3, 4)}
    assert med[4][0] < 0.8 * med[2][0]
    assert med[4][1] > 1.2 * med[2][1]
    assert med[3][1] < 0.2 * med[2][1]


def test_noise_level_matches_record(tiny):
    record = _json(tiny / "derivatives" / "truth" / "simulation.json")
    dseg = _data(tiny / "derivatives" / "truth" / "sub-02" / "anat" / "sub-02_dseg.nii.gz")
    background = dseg == 0
    mese1 = _data(tiny / "sub-02" / "anat" / "sub-02_echo-1_MESE.nii.gz")[background]
    sigma = record["NoiseSigma"]["MESE"]
    # Rayleigh mean sigma*sqrt(pi/2); ~45k background voxels -> ~0.3 % sampling error
    np.testing.assert_allclose(mese1.mean() / np.sqrt(np.pi / 2), sigma, rtol=0.03)
    assert record["SNR"] == 100


def test_participants(tiny):
    lines = (tiny / "participants.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["participant_id", "group", "age", "sex"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == ["sub-01", "sub-02", "sub-03"]
    assert [r[1] for r in rows] == ["patient", "control", "patient"]
    assert all(r[3] in {"F", "M"} and 18 <= int(r[2]) <= 80 for r in rows)
    assert set(_json(tiny / "participants.json")) == {"participant_id", "group", "age", "sex"}


def test_determinism(tiny, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    assert main([str(again), "--size", "tiny", "--seed", "7"]) == 0
    assert main([str(other), "--size", "tiny", "--seed", "8", "--subjects", "1"]) == 0
    files = [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-03/anat/sub-03_echo-4_MESE.nii.gz",
        "sub-01/fmap/sub-01_TB1map.nii.gz",
        "derivatives/truth/sub-01/anat/sub-01_T1map.nii.gz",
        "derivatives/truth/sub-01/anat/sub-01_desc-lesions_dseg.tsv",
        "participants.tsv",
    ]
    for name in files:
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name
    for name in files[0], files[3]:
        assert (tiny / name).read_bytes() != (other / name).read_bytes(), name


def test_same_plan_written_twice_is_identical(tmp_path):
    plan = make_plan(subjects=1, size="tiny", seed=11)
    write_dataset(plan, tmp_path / "a")
    write_dataset(plan, tmp_path / "b")
    for name in ("sub-01/anat/sub-01_FLAIR.nii.gz", "participants.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bids_validator(tiny):
    exe = shutil.which("bids-validator-deno") or shutil.which(
        "bids-validator-deno", path=str(Path(sys.executable).parent)
    )
    if exe is None:
        pytest.skip("bids-validator-deno executable not installed")
    proc = subprocess.run(
        [exe, str(tiny), "--format", "json"], capture_output=True, text=True, check=False
    )
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == []


def test_sessions_and_lesion_evolution(tiny_sessions):
    root = tiny_sessions
    for ses in ("01", "02"):
        anat = root / "sub-01" / f"ses-{ses}" / "anat"
        assert (anat / f"sub-01_ses-{ses}_flip-1_VFA.nii.gz").is_file()
        assert (anat / f"sub-01_ses-{ses}_flip-1_mt-on_MTS.nii.gz").is_file()
        fmap = root / "sub-01" / f"ses-{ses}" / "fmap"
        uris = _json(fmap / f"sub-01_ses-{ses}_TB1map.json")["IntendedFor"]
        assert all((root / u.removeprefix("bids::")).is_file() for u in uris)
    assert not (root / "sub-01" / "anat").exists()

    def table(ses):
        path = (
            root
            / f"derivatives/truth/sub-01/ses-{ses}/anat/sub-01_ses-{ses}_desc-lesions_dseg.tsv"
        )
        lines = path.read_text().splitlines()
        header = lines[0].split("\t")
        return {r["name"]: r for r in (dict(zip(header, x.split("\t"))) for x in lines[1:])}

    first, second = table("01"), table("02")
    new = [n for n, r in second.items() if r["course"] == "new"]
    assert len(new) == 1
    assert new[0] not in first
    assert second[new[0]]["onset_session"] == "2"
    shrink = next(n for n, r in first.items() if r["course"] == "shrinking")
    assert int(second[shrink]["n_voxels"]) <= int(first[shrink]["n_voxels"])
    remy = next(n for n, r in first.items() if r["course"] == "remyelinating")
    assert float(second[remy]["T1"]) < float(first[remy]["T1"])
    assert float(second[remy]["MTsat"]) > float(first[remy]["MTsat"])
    assert (
        root / "derivatives/lesions/sub-01/ses-02/anat/sub-01_ses-02_label-lesion_mask.nii.gz"
    ).is_file()


def test_lesion_locations_on_small_grid():
    anatomy = make_anatomy("small")
    maps = PlacementMaps.from_anatomy(anatomy)
    lesions = place_lesions(anatomy, maps, np.random.default_rng(0))
    assert 5 <= len(lesions) <= 10
    assert {les.target for les in lesions} == {
        "periventricular",
        "deep_white_matter",
        "juxtacortical",
    }


def test_brain_plan_without_writing(tmp_path):
    plan = make_plan(size="brain", subjects=1)
    assert plan.grid_shape == (156, 192, 164)
    assert plan.n_brain_voxels == 1_854_954  # the shipped 1 mm labels
    assert plan.b1_shape == (78, 96, 82)
    assert plan.voxel_size == 1.0
    # + B1, DWI, phase, ASL + M0, single-delay ASL, DCE, IRT1, MP2RAGE, MPM + RB1COR pair
    assert len(plan.raw_files()) == len(ANAT) + 1 + 1 + 6 + 2 + 1 + 1 + 5 + 4 + 22 + 2
    assert not any(tmp_path.iterdir())


def test_usage_errors_return_64(tmp_path):
    assert main([]) == 64
    assert main([str(tmp_path / "x"), "--size", "huge"]) == 64
    assert main([str(tmp_path / "x"), "--subjects", "0"]) == 64


# --- physics, independent of bids_app.models -------------------------------------------


def test_mt_steady_state_with_zero_saturation_is_ernst():
    t1 = np.array([0.85, 1.35, 4.0])
    b1 = np.array([0.8, 1.0, 1.2])
    for flip, tr in ((6, 0.028), (20, 0.018)):
        a = np.deg2rad(flip) * b1
        e1 = np.exp(-tr / t1)
        ernst = np.sin(a) * (1 - e1) / (1 - e1 * np.cos(a))
        np.testing.assert_allclose(
            spgr_mt(1.0, t1, np.inf, b1, 0.0, flip_angle=flip, tr=tr, te=0), ernst
        )
        np.testing.assert_allclose(spgr(1.0, t1, np.inf, b1, flip_angle=flip, tr=tr, te=0), ernst)


def test_mt_steady_state_by_iteration():
    """The closed form is the fixed point of the per-TR recursion."""
    t1, delta, b1, flip, tr = 0.85, 0.016, 1.1, 6.0, 0.028
    a, e1, mz = np.deg2rad(flip) * b1, np.exp(-tr / t1), 1.0
    for _ in range(2000):
        mz = 1 - (1 - mz * (1 - delta) * np.cos(a)) * e1
    expected = mz * (1 - delta) * np.sin(a)
    got = spgr_mt(1.0, t1, np.inf, b1, delta, flip_angle=flip, tr=tr, te=0)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize(
    ("t1", "delta", "b1"), [(0.85, 0.016, 1.0), (1.35, 0.008, 0.85), (1.3, 0.009, 1.15)]
)
def test_mts_signals_satisfy_helms_small_angle_relations(t1, delta, b1):
    """Helms et al. MRM 2008: small-angle R1, A and delta from the PDw/T1w/MTw triplet."""
    tr1, tr2 = 0.028, 0.018
    a1, a2 = np.deg2rad(6) * b1, np.deg2rad(20) * b1
    s_pd = spgr(2.0, t1, 0.05, b1, flip_angle=6, tr=tr1, te=0.002)
    s_t1 = spgr(2.0, t1, 0.05, b1, flip_angle=20, tr=tr2, te=0.002)
    s_mt = spgr_mt(2.0, t1, 0.05, b1, delta, flip_angle=6, tr=tr1, te=0.002)
    r1 = 0.5 * (s_t1 * a2 / tr2 - s_pd * a1 / tr1) / (s_pd / a1 - s_t1 / a2)
    amp = s_pd * s_t1 * (tr1 * a2 / a1 - tr2 * a1 / a2) / (s_t1 * tr1 * a2 - s_pd * tr2 * a1)
    est = (amp * a1 / s_mt - 1) * r1 * tr1 - a1**2 / 2
    # small-angle approximation error: ~1.5 % on R1, ~3 % on delta for these angles
    np.testing.assert_allclose(r1, 1 / t1, rtol=0.03)
    np.testing.assert_allclose(amp, 2.0 * np.exp(-0.002 / 0.05), rtol=0.02)
    np.testing.assert_allclose(est, delta, rtol=0.05)


def test_mtr_and_mese_closed_forms():
    assert mtr_percent(100.0, 70.0) == pytest.approx(30.0)
    assert mtr_percent(0.0, 0.0) == 0.0
    np.testing.assert_allclose(mese(1.0, 1.0, 0.08, tr=3.0, te=0.08), (1 - np.exp(-3)) / np.e)


def test_rician_noise_statistics():
    rng = np.random.default_rng(0)
    zero = add_rician_noise(np.zeros(200_000), 2.0, rng)
    np.testing.assert_allclose(zero.mean(), 2.0 * np.sqrt(np.pi / 2), rtol=0.01)
    high = add_rician_noise(np.full(200_000, 100.0), 2.0, rng)
    np.testing.assert_allclose([high.mean(), high.std()], [100.0 + 2.0**2 / 200, 2.0], rtol=0.01)


def test_complex_noise_is_the_rician_magnitude_and_series_are_consistent(tiny):
    """The MEGRE phase uses the channels behind the written magnitude (one complex image)."""
    import nibabel as nib

    from bids_app.synth.signals import add_rician_noise, complex_noise

    clean = np.linspace(0, 100, 50, dtype=np.float32)
    real, imag = complex_noise(clean, 3.0, np.random.default_rng(1))
    np.testing.assert_array_equal(
        np.hypot(real, imag), add_rician_noise(clean, 3.0, np.random.default_rng(1))
    )
    anat = tiny / "sub-01" / "anat"
    phase = np.asarray(nib.load(anat / "sub-01_echo-1_part-phase_MEGRE.nii.gz").dataobj)
    assert phase.min() >= -np.pi
    assert phase.max() <= np.pi
    assert np.ptp(phase) > 6
    meta = json.loads((anat / "sub-01_echo-1_part-phase_MEGRE.json").read_text())
    assert meta["Units"] == "rad"
    assert meta["EchoTime"] == 0.004
    dwi = tiny / "sub-01" / "dwi"
    n = nib.load(dwi / "sub-01_dwi.nii.gz").shape[-1]
    assert len((dwi / "sub-01_dwi.bval").read_text().split()) == n == 64
    assert np.loadtxt(dwi / "sub-01_dwi.bvec").shape == (3, n)


def test_dwi_fibre_field_is_defined_at_the_world_origin():
    """A 1 mm grid has a voxel centre at (0, 0, 0), where the circular field vanishes: the
    1 mm DWI once had a NaN row there and dipy's truth fit raised 'SVD did not converge'."""
    from bids_app.synth.dwi_series import fibre_directions

    xyz = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 10.0], [30.0, -4.0, 2.0]])
    d = fibre_directions(xyz)
    assert np.isfinite(d).all()
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
