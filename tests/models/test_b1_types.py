"""The measured B1 map types of the ``b1`` model: TB1TFL, TB1EPI (SE/STE) and TB1SRGE (SA2RAGE).

Per type: a forward simulation from a known B1 field (independent simulators in
:mod:`tests.models.b1_forward`: isochromats for SE/STE, pulse-by-pulse steady state for
SA2RAGE), noiseless and noisy, with the T1 the conversion assumes and with other T1; the
real sidecars of ``../shared/bids-examples`` parsed into SI values through pybids and the
project's query layer (:func:`resolve_model`), with their unit slips refused; and the
synthetic series of ``msqmri-synth`` (:mod:`bids_app.synth.b1_series`) recovered.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.bids.layout import make_layout
from bids_app.bids.query import resolve_model
from bids_app.errors import MetadataError
from bids_app.models.b1 import B1Model
from bids_app.models.b1._epi import epi_b1
from bids_app.models.b1._sa2rage import SA2RAGEProtocol
from bids_app.models.b1._tfl import TFLProtocol
from bids_app.models.base import Collection, Volume, sidecar_path
from bids_app.stages.maps import load_inputs
from bids_app.synth import b1_series
from bids_app.synth.scene import CSF, GM, WM, Scene
from bids_app.synth.tissue import NOMINAL
from tests.models import b1_forward as bf

logger = logging.getLogger(__name__)

EXAMPLES = Path("/work/shared/bids-examples")
if not EXAMPLES.is_dir():
    EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "bids-examples"
B1_TRUE = np.linspace(0.5, 1.45, 20)
EPI_FLIPS = np.arange(65.0, 116.0, 5.0)  # the qmri_mpm / hMRI protocol
TM = 0.0338
SRGE = {"tr": 2.4, "delays": (0.047, 1.8), "flips": (4.0, 11.0), "tr_exc": 0.0028}
SHOTS = (16, 32)


def _example(name):
    folder = EXAMPLES / name
    if not folder.is_dir():
        pytest.skip(f"bids-examples not found at {folder}")
    return folder


def _resolve(root):
    (run,) = resolve_model(make_layout(root), B1Model, "01", None)
    return run


def _coll(name, metas, paths, entities):
    keys = sorted({k for m in metas for k in m})
    params = {k: tuple(m.get(k) for m in metas) for k in keys}
    vols = tuple(Volume(p, e, m) for p, m, e in zip(paths, metas, entities, strict=True))
    return Collection(name, vols, params, {})


# ------------------------------------------------------------------------------- TB1TFL
def _tfl_model(flip=38.0):
    metas = [{"FlipAngle": flip}] * 2
    paths = ["fmap/sub-01_acq-anat_TB1TFL.nii.gz", "fmap/sub-01_acq-famp_TB1TFL.nii.gz"]
    ents = [{"acquisition": "anat"}, {"acquisition": "famp"}]
    return B1Model.from_collections({"tb1tfl": _coll("tb1tfl", metas, paths, ents)})


def test_tfl_forward_stored_as_integers_with_noise():
    """famp = round(10 * 38 deg * B1 + noise) as int16, noise 0.01 in B1.

    Noiseless, the integer storage alone costs < 0.5/380 (0.13 %); with noise the RMS error
    must match the 0.01 put in (measured 0.0100, 20 000 voxels) within 5 %.
    """
    model = _tfl_model()
    assert model.registrable
    assert model.acquisition["RegistrationImage"] == "acq-anat"
    anat = np.full_like(B1_TRUE, 700.0)
    clean = np.stack([anat, np.rint(380.0 * B1_TRUE)], -1)
    np.testing.assert_allclose(model.fit(clean).params[:, 0], B1_TRUE, rtol=0.5 / 190)
    rng = np.random.default_rng(7)
    b1 = rng.uniform(0.5, 1.45, 20_000)
    famp = np.rint(380.0 * (b1 + rng.normal(0, 0.01, b1.size)))
    err = model.fit(np.stack([np.full_like(b1, 700.0), famp], -1)).params[:, 0] - b1
    rms = float(np.sqrt(np.mean(err**2)))
    logger.info("TB1TFL: RMS B1 error %.4f for noise 0.01", rms)
    assert abs(rms / 0.01 - 1) < 0.05
    data = {"tb1tfl": np.stack([np.full((2, 2, 2), 7.0), np.full((2, 2, 2), 380.0)], -1)}
    assert model.registration_image(data)[0, 0, 0] == 7.0  # the anatomy, not the famp


def test_tfl_rejects_famp_not_in_tenths_of_a_degree_and_bad_roles():
    model = _tfl_model()
    with pytest.raises(MetadataError) as err:  # famp already in degrees: B1 ~ 0.1
        model.prepare(np.stack([np.full(50, 700.0), np.full(50, 38.0)], -1), np.ones(50, bool))
    assert (err.value.key, err.value.path) == (
        "FlipAngle",
        sidecar_path("fmap/sub-01_acq-famp_TB1TFL.nii.gz"),
    )
    metas = [{"FlipAngle": 38.0}]
    only_anat = _coll("tb1tfl", metas, ["a_acq-anat_TB1TFL.nii.gz"], [{"acquisition": "anat"}])
    with pytest.raises(MetadataError, match="acq-famp"):
        TFLProtocol.from_collection(only_anat)
    odd = _coll("tb1tfl", metas, ["a_acq-x_TB1TFL.nii.gz"], [{"acquisition": "x"}])
    with pytest.raises(MetadataError) as err:
        TFLProtocol.from_collection(odd)
    assert err.value.key == "acq"


def test_tfl_bids_example_unit_slips_si_values_and_flip_in_radians(tmp_path):
    """qmri_tb1tfl through pybids: its EchoTime 1.97 (ms) is refused naming the file and key;
    with the times in s, famp/anat are told apart by acq, FlipAngle 38 deg, times recorded."""
    with pytest.raises(MetadataError, match="milliseconds") as err:
        _resolve(_example("qmri_tb1tfl"))
    assert (err.value.key, Path(err.value.path).name) == (
        "EchoTime",
        "sub-01_acq-anat_TB1TFL.json",
    )
    root = tmp_path / "tfl"
    shutil.copytree(_example("qmri_tb1tfl"), root)
    for side in (root / "sub-01" / "fmap").glob("*.json"):
        meta = json.loads(side.read_text())  # "6.8" (a string, ms) and 1.97 (ms) in the example
        side.write_text(
            json.dumps({**meta, "RepetitionTimeExcitation": 0.0068, "EchoTime": 0.00197})
        )
    run = _resolve(root)
    assert run.stacked == ("tb1tfl",)
    model = run.model.from_collections(run.collections)
    coll = run.collections["tb1tfl"]
    assert [v.entities["acquisition"] for v in coll.volumes] == ["anat", "famp"]
    assert (model.protocol.famp_index, model.protocol.anat_index) == (1, 0)
    acq = model.acquisition
    assert (acq["FlipAngle"], acq["EchoTime"], acq["RepetitionTimeExcitation"]) == (
        38.0,
        0.00197,
        0.0068,
    )
    side = root / "sub-01" / "fmap" / "sub-01_acq-famp_TB1TFL.json"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "FlipAngle": float(np.deg2rad(38.0))}))
    with pytest.raises(MetadataError, match="radians") as err:
        _resolve(root)
    assert (err.value.key, Path(err.value.path).name) == ("FlipAngle", side.name)


# ------------------------------------------------------------------------------- TB1EPI
def _epi_signals(b1, t1, rng=None, sigma=0.0):
    se, ste = zip(*(bf.seste_isochromats(b1, f, TM, t1) for f in EPI_FLIPS), strict=True)
    se, ste = np.stack(se, -1), np.stack(ste, -1)
    if rng is not None:
        se = np.hypot(se + rng.normal(0, sigma, se.shape), rng.normal(0, sigma, se.shape))
        ste = np.hypot(ste + rng.normal(0, sigma, ste.shape), rng.normal(0, sigma, ste.shape))
    return se, ste


def test_epi_isochromat_forward_exact_at_the_assumed_t1_and_close_otherwise():
    """11 angles 65-115 deg, TM 33.8 ms, B1 0.5-1.45.

    With the assumed T1 the recovery is exact (round-off: the isochromat average leaves
    only the echo pathways). A T1 of 0.8 or 2 s against the assumed 1.2 s changes
    exp(TM/T1) by 1.4 % / 1.1 %: measured max |error| 1.19 % / 0.97 % (at B1 = 0.5, actual
    angles 33-58 deg, far from 90 deg where cos is least sensitive), medians 0.10 % /
    0.08 %; 1.5 % tolerance.
    """
    se, ste = _epi_signals(B1_TRUE, 1.2)
    np.testing.assert_allclose(epi_b1(se, ste, EPI_FLIPS, TM, 1.2), B1_TRUE, rtol=1e-9)
    for t1 in (0.8, 2.0):
        se, ste = _epi_signals(B1_TRUE, t1)
        out = epi_b1(se, ste, EPI_FLIPS, TM, 1.2)
        logger.info("TB1EPI T1 %.1f s: max |dB1/B1| %.4f", t1, np.max(np.abs(out / B1_TRUE - 1)))
        np.testing.assert_allclose(out, B1_TRUE, rtol=0.015)


def test_epi_noisy_recovery():
    """Rician noise σ = 1 % of M0 on every image (SE SNR 100 at 90 deg), T1 = 0.85 s (WM).

    Measured median |dB1/B1| 0.25 % and 99th percentile 1.3 % over 20 000 voxels; the bounds
    (1 %, 4 %) leave room for the seed, not for a wrong candidate (an ambiguity error is
    > 10 %).
    """
    rng = np.random.default_rng(11)
    b1 = rng.uniform(0.6, 1.4, 20_000)
    se, ste = _epi_signals(b1, 0.85, rng, 0.01)
    err = np.abs(epi_b1(se, ste, EPI_FLIPS, TM, 1.2) / b1 - 1)
    med, p99 = float(np.median(err)), float(np.percentile(err, 99))
    logger.info("TB1EPI SNR 100: median |dB1/B1| %.4f, p99 %.4f", med, p99)
    assert med < 0.01
    assert p99 < 0.04


def _mpm_epi(tmp_path):
    """qmri_mpm's TB1EPI files with TotalReadoutTime 6720 (us) written in s."""
    root = tmp_path / "mpm"
    fmap = root / "sub-01" / "fmap"
    fmap.mkdir(parents=True)
    shutil.copy(_example("qmri_mpm") / "dataset_description.json", root)
    for src in (_example("qmri_mpm") / "sub-01" / "fmap").glob("*_TB1EPI.*"):
        shutil.copy(src, fmap)
    for side in fmap.glob("*.json"):
        meta = json.loads(side.read_text())
        side.write_text(json.dumps({**meta, "TotalReadoutTime": meta["TotalReadoutTime"] / 1e6}))
    return root, fmap


def test_epi_bids_example_unit_slip_then_pairs_se_ste(tmp_path):
    """qmri_mpm: TotalReadoutTime 6720 (not s) refused naming the file; in s, 22 TB1EPI
    files -> 11 (SE, STE) pairs, 65-115 deg, MixingTime 33.8 ms."""
    with pytest.raises(MetadataError) as err:
        _resolve(_example("qmri_mpm"))
    assert err.value.key == "TotalReadoutTime"
    assert Path(err.value.path).name == "sub-01_echo-1_flip-01_TB1EPI.json"
    root, _ = _mpm_epi(tmp_path)
    run = _resolve(root)
    assert run.stacked == ("tb1epi",)
    model = run.model.from_collections(run.collections)
    proto = model.protocol
    assert proto.flip_angles == tuple(EPI_FLIPS)
    assert proto.mixing_time == pytest.approx(0.0338)
    assert proto.total_readout_time == pytest.approx(0.00672)
    vols = run.collections["tb1epi"].volumes
    assert all(vols[i].entities["echo"] == "1" for i in proto.se_index)
    assert all(vols[i].entities["echo"] == "2" for i in proto.ste_index)
    assert [vols[i].metadata["EchoTime"] for i in proto.se_index[:1]] == [0.03906]
    se, ste = _epi_signals(B1_TRUE, 1.2)  # the fit through the model's stacking order
    signal = np.empty((B1_TRUE.size, 22))
    signal[:, list(proto.se_index)], signal[:, list(proto.ste_index)] = se, ste
    np.testing.assert_allclose(model.fit(signal).params[:, 0], B1_TRUE, rtol=1e-9)


def test_epi_metadata_errors(tmp_path):
    root, fmap = _mpm_epi(tmp_path)
    side = fmap / "sub-01_echo-2_flip-03_TB1EPI.json"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "MixingTime": 33.8}))  # milliseconds
    with pytest.raises(MetadataError, match="milliseconds") as err:
        _resolve(root)
    assert (err.value.key, Path(err.value.path).name) == ("MixingTime", side.name)
    side.write_text(json.dumps({**meta, "MixingTime": 0.0338, "EchoTime": 0.03}))  # < SE's
    with pytest.raises(MetadataError) as err:
        _resolve(root).model.from_collections(_resolve(root).collections)
    assert err.value.key == "echo"
    side.write_text(json.dumps(meta))
    for ext in (".json", ".nii"):
        (fmap / f"sub-01_echo-2_flip-05_TB1EPI{ext}").unlink()
    run = _resolve(root)
    with pytest.raises(MetadataError, match="two TB1EPI images") as err:
        run.model.from_collections(run.collections)
    assert err.value.key == "FlipAngle"


# ------------------------------------------------------------------------------ TB1SRGE
def _srge(shots=SHOTS):
    return SA2RAGEProtocol(
        SRGE["tr"], SRGE["delays"], SRGE["flips"], SRGE["tr_exc"], shots[0], shots[1]
    )


def _srge_signals(b1, t1):
    return bf.sa2rage_signals(b1, t1, **SRGE, n_before=SHOTS[0], n_after=SHOTS[1])


def test_sa2rage_pulse_by_pulse_forward_through_the_lookup():
    """Signed images, B1 0.5-1.45 (off the table's grid), 16 + 32 pulses per train.

    With T1 = the assumed 1.2 s the table (B1 step 0.0025, linear interpolation) recovers B1
    within 1e-5 (measured 2.1e-6). T1 0.8 / 2.0 s: the ratio's weak T1 dependence; measured
    max |dB1/B1| 1.9 % / 1.05 %, median 1.4 % / 0.95 %; 3 % tolerance on the max.
    """
    model = B1Model("tb1srge", protocol=_srge(), assumed_t1=1.2)
    b1 = np.linspace(0.5013, 1.4497, 383)
    s1, s2 = _srge_signals(b1, 1.2)
    np.testing.assert_allclose(model.fit(np.stack([s1, s2], -1)).params[:, 0], b1, 1e-5)
    for t1 in (0.8, 2.0):
        s1, s2 = _srge_signals(B1_TRUE, t1)
        err = np.abs(model.fit(np.stack([s1, s2], -1)).params[:, 0] / B1_TRUE - 1)
        logger.info("TB1SRGE T1 %.1f s: max %.4f median %.4f", t1, err.max(), np.median(err))
        assert err.max() < 0.03


def test_sa2rage_noisy_and_magnitude_fold(caplog):
    """Gaussian noise σ = 1 % of the B1 = 1 S2 signal on both images, T1 = 0.85 s.

    The ratio changes by ~0.5 per unit B1 while its noise is ~1.4 % of S2 (S1 is small near
    B1 = 1): measured median |dB1/B1| 1.5 %, 90th percentile 4.4 %; bounds 2.5 % / 6 %.
    Magnitude images: the model warns and B1 below the fold (~1.05) is still recovered.
    """
    rng = np.random.default_rng(5)
    b1 = rng.uniform(0.6, 1.4, 20_000)
    s1, s2 = _srge_signals(b1, 0.85)
    sigma = 0.01 * abs(float(_srge_signals(np.array([1.0]), 0.85)[1][0]))
    noisy = np.stack([s1 + rng.normal(0, sigma, b1.size), s2 + rng.normal(0, sigma, b1.size)], -1)
    model = B1Model("tb1srge", protocol=_srge()).prepare(noisy, np.ones(b1.size, bool))
    assert model.fit_notes["TB1SRGESignal"].startswith("signed")
    err = np.abs(model.fit(noisy).params[:, 0] / b1 - 1)
    med, p90 = float(np.nanmedian(err)), float(np.nanpercentile(err, 90))
    logger.info("TB1SRGE noise 1 %%: median |dB1/B1| %.4f, p90 %.4f", med, p90)
    assert med < 0.025
    assert p90 < 0.06
    mag = np.abs(np.stack([s1, s2], -1))
    with caplog.at_level(logging.WARNING):
        model = B1Model("tb1srge", protocol=_srge(), assumed_t1=0.85).prepare(mag, b1 > 0)
    assert "folds" in caplog.text
    assert "magnitude" in model.fit_notes["TB1SRGESignal"]
    low = b1 < 0.95
    np.testing.assert_allclose(model.fit(mag[low]).params[:, 0], b1[low], rtol=1e-3)


def test_sa2rage_bids_example_unit_slip_and_si_values(tmp_path):
    """qmri_sa2rage: InversionTime 45 (ms) is refused naming the file; corrected, it parses."""
    src = _example("qmri_sa2rage")
    with pytest.raises(MetadataError, match="milliseconds") as err:
        _resolve(src)
    assert (err.value.key, Path(err.value.path).name) == (
        "InversionTime",
        "sub-01_flip-1_inv-1_TB1SRGE.json",
    )
    root = tmp_path / "sa2rage"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("derivatives"))
    side = root / "sub-01" / "fmap" / "sub-01_flip-1_inv-1_TB1SRGE.json"
    meta = json.loads(side.read_text())
    side.write_text(
        json.dumps({**meta, "InversionTime": meta["global"]["const"]["InversionTime"]})
    )
    run = _resolve(root)
    model = run.model.from_collections(run.collections)
    p = model.protocol
    assert (p.tr, p.delays, p.flip_angles) == (2.4, (0.047, 1.8), (4.0, 11.0))
    assert p.tr_excitation == 0.0275
    assert (p.n_before, p.n_after) == (0, 1)  # NumberShots 1, PartialFourier 0.75
    acq = model.acquisition
    assert acq["B1Method"] == "tb1srge"
    assert acq["AssumedT1"] == 1.2
    assert "Eggenschwiler" in acq["B1Conversion"]
    side.write_text(json.dumps({**meta, "InversionTime": 0.047, "NumberShots": 40}))
    run = _resolve(root)  # 40 shots: 10 pulses before the centre no longer fit in 47 ms
    with pytest.raises(MetadataError, match="NumberShots") as err:
        run.model.from_collections(run.collections)
    assert err.value.key == "NumberShots"


# --------------------------------------------------------------------- synthetic series
SHAPE = (20, 16, 10)


def _scene(root) -> Scene:
    dseg = np.zeros(SHAPE, np.uint8)
    dseg[2:18, 2:14, 2:8] = WM
    dseg[2:18, 2:6, 2:8] = GM
    dseg[8:12, 8:10, 2:8] = CSF
    names = {GM: "GM", WM: "WM", CSF: "CSF"}
    truth = {k: np.zeros(SHAPE) for k in ("T1", "T2", "T2star", "PD")}
    for label, tissue in names.items():
        for k in truth:
            truth[k][dseg == label] = NOMINAL[tissue][k]
    x = np.indices(SHAPE)[0] / (SHAPE[0] - 1)
    truth["B1"] = 0.75 + 0.5 * x  # 0.75 .. 1.25 across the grid
    return Scene(
        root=root,
        subject="01",
        session=None,
        patient=False,
        affine=np.diag([3.0, 3.0, 3.0, 1.0]),
        dseg=dseg,
        severity=np.zeros(SHAPE),
        lesion_ids=np.zeros(SHAPE, int),
        truth=truth,
        snr=50.0,
        seed=np.random.SeedSequence(2026),
    )


@pytest.mark.parametrize(
    ("series", "method", "bound_raw", "bound"),
    [
        ("b1tfl", "tb1tfl", 0.01, 0.01),
        ("b1epi", "tb1epi", 0.01, 0.01),
        ("b1srge", "tb1srge", 0.04, 0.02),
    ],
)
def test_synthetic_series_recovered_by_the_b1_model(tmp_path, series, method, bound_raw, bound):
    """Each msqmri-synth B1 series at SNR 50 on the TB1map grid (6 mm voxels: 2x2x2 blocks of
    the 3 mm scene), B1 0.75-1.25, GM/WM/CSF T1; blocks entirely GM or WM are compared.

    Median |dB1/B1| of the voxel fit / after the default 8 mm smoothing: measured 0.71 /
    0.43 % (TFL: the 0.01 noise), 0.44 / 0.29 % (EPI, T1 0.85 / 1.35 s against the assumed
    1.2 s) and 2.6 / 1.4 % (SA2RAGE: noise-dominated; the T1 mismatch alone costs ~0.9 %).
    Bounds 1 / 1 %, 1 / 1 %, 4 / 2 %.
    """
    from bids_app.synth.dataset import SERIES_FILES, SERIES_WRITERS

    (tmp_path / "dataset_description.json").write_text(
        json.dumps({"Name": "b1", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    scene = _scene(tmp_path)
    SERIES_WRITERS[series](scene)
    written = sorted(p.name for p in (tmp_path / "sub-01" / "fmap").glob("*.nii.gz"))
    assert written == sorted(f"sub-01_{name}" for _, name in SERIES_FILES[series])
    run = _resolve(tmp_path)
    assert run.stacked == (method,)
    model = run.model.from_collections(run.collections)
    inputs = load_inputs(run)
    data = inputs.stacked(run.stacked)
    assert inputs.grid.shape == tuple(-(-n // 2) for n in SHAPE)  # the TB1map grid
    tissue = b1_series.coarse((scene.dseg == GM) | (scene.dseg == WM)) == 1.0
    model = model.prepare(data, tissue, path=inputs.paths[0])
    fit = model.fit(data, mask=tissue)
    smooth = model.spatial_postprocess(fit.maps(), zooms=inputs.grid.zooms, mask=tissue)["B1"]
    truth = b1_series.coarse(scene.truth["B1"])[tissue]
    raw = float(np.median(np.abs(fit.params[..., 0][tissue] / truth - 1)))
    err = float(np.median(np.abs(smooth[tissue] / truth - 1)))
    logger.info("synthetic %s SNR 50: median |dB1/B1| %.4f raw, %.4f smoothed", series, raw, err)
    assert raw < bound_raw
    assert err < bound
    assert np.isfinite(smooth).all()


def test_chosen_b1_type_does_not_load_the_other_types(tmp_path):
    """A subject with a TB1map and a TB1TFL on another grid: the TB1map wins and the TFL
    images are neither loaded nor required to share its grid (they once were: exit 65)."""
    from bids_app.stages.maps import load_inputs

    root = tmp_path / "two_b1"
    fmap = root / "sub-01" / "fmap"
    fmap.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "two b1", "BIDSVersion": "1.10.0"})
    )
    small, big = np.diag([4.0, 4.0, 4.0, 1.0]), np.diag([3.0, 3.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), small), fmap / "sub-01_TB1map.nii.gz")
    (fmap / "sub-01_TB1map.json").write_text(json.dumps({"Units": "fraction"}))
    for acq, value in (("anat", 100.0), ("famp", 380.0)):
        img = nib.Nifti1Image(np.full((6, 5, 4), value, np.float32), big)
        nib.save(img, fmap / f"sub-01_acq-{acq}_TB1TFL.nii.gz")
        (fmap / f"sub-01_acq-{acq}_TB1TFL.json").write_text(json.dumps({"FlipAngle": 38}))
    run = _resolve(root)
    assert run.stacked == ("tb1map",)
    assert set(run.collections) == {"tb1map"}
    inputs = load_inputs(run)
    assert inputs.grid.shape == (4, 4, 4)
