"""Synthetic MPM (``bids_app.synth.mpm_series``) written to disk and fitted by ``mpm``.

A hand-built scene (GM, WM, CSF, a lesion block) with a B1+ field from 0.8 to 1.2 is
written as BIDS ``anat/*_acq-<PDw|T1w|MTw>_echo-<k>_flip-<j>_mt-<on|off>_MPM`` (int16,
Rician noise at a first-PDw-echo WM SNR of 100), resolved by the pipeline's query code and
fitted with the true B1 as covariate and the receive field of the ``rb1cor`` model (fitted
on the written RB1COR pair). Issue 22 acceptance in WM: median relative error
< 3 % for R1 and R2*, < 5 % for PD and MTsat (measured: see the log line; at this SNR the
voxelwise simulation of tests/models/test_mpm.py gives 0.7 / 1.8 / 0.5 / 1.6 %).
"""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest

from bids_app.bids.layout import make_layout
from bids_app.bids.query import resolve_model
from bids_app.models import REGISTRY
from bids_app.stages.maps import load_inputs
from bids_app.synth import mpm_series
from bids_app.synth.scene import CSF, GM, LESION, WM, Scene
from bids_app.synth.tissue import NOMINAL
from tests.synth_scenes import b1_gradient, block_scene, raw_root

logger = logging.getLogger(__name__)
SHAPE = (16, 14, 8)
SNR = 100.0


def _scene(root) -> Scene:
    dseg = np.zeros(SHAPE, np.uint8)
    dseg[1:15, 1:13, 1:7] = WM
    dseg[1:15, 1:4, 1:7] = GM
    dseg[1:15, 10:13, 1:7] = GM
    dseg[6:9, 6:8, 1:7] = CSF
    dseg[11:13, 6:8, 2:5] = LESION
    return block_scene(
        root,
        dseg,
        keys=("T1", "T2", "T2star", "PD", "MTsat"),
        snr=SNR,
        seed=2214,
        b1=b1_gradient(SHAPE),
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_mpm")
    raw_root(root, "mpm")
    scene = _scene(root)
    mpm_series.write_mpm(scene)
    return root, scene


def _truth(scene, name):
    return np.asarray(nib.load(scene.truth_path("anat", f"{name}.nii.gz")).dataobj)


def test_files_sidecars_and_truth(written):
    root, scene = written
    anat = root / "sub-01" / "anat"
    expected = {f"{dt}/sub-01_{n}" for dt, n in mpm_series.file_names()}
    written_files = {
        p.relative_to(root / "sub-01").as_posix() for p in (root / "sub-01").rglob("*")
    }
    assert expected <= written_files
    assert len(expected) == 24  # 22 echoes and the RB1COR pair
    meta = json.loads((anat / "sub-01_acq-MTw_echo-3_flip-1_mt-on_MPM.json").read_text())
    assert meta["MTState"] is True
    assert meta["FlipAngle"] == 6.0
    assert meta["EchoTime"] == pytest.approx(0.0069)
    assert "SpoilingRFPhaseIncrement" not in meta
    wm = scene.dseg == WM
    np.testing.assert_allclose(
        _truth(scene, "desc-MPM_R1map")[wm], 1 / NOMINAL["WM"]["T1"], rtol=1e-6
    )
    np.testing.assert_allclose(
        _truth(scene, "desc-MPM_MTsat")[wm], NOMINAL["WM"]["MTsat"], rtol=1e-6
    )


def test_written_images_fitted_meet_the_acceptance_bounds(written):
    root, scene = written
    (run,) = resolve_model(make_layout(root), REGISTRY["mpm"], "01", None)
    assert run.stacked == ("pdw", "t1w", "mtw")
    model = run.model.from_collections(run.collections)
    assert model.fit_notes["RFSpoilingCorrection"]["Applied"] is False
    inputs = load_inputs(run)
    mask = scene.dseg > 0
    rx = _receive_map(root, mask)
    cov = {"b1": scene.truth["B1"], "rx": rx}
    maps = model.fit(inputs.stacked(run.stacked), mask=mask, covariates=cov).maps()
    wm = scene.dseg == WM
    errs = {}
    for name, truth in (("R1", "desc-MPM_R1map"), ("R2star", "desc-MPM_R2starmap"),
                        ("PD", "desc-MPM_PDmap"), ("MTsat", "desc-MPM_MTsat")):  # fmt: skip
        errs[name] = float(np.median(np.abs(maps[name][wm] / _truth(scene, truth)[wm] - 1)))
    logger.info("synthetic MPM SNR %g, WM median |rel. error| %%: %s", SNR,
                {k: round(100 * v, 2) for k, v in errs.items()})  # fmt: skip
    assert errs["R1"] < 0.03
    assert errs["R2star"] < 0.03
    assert errs["PD"] < 0.05
    assert errs["MTsat"] < 0.05
    # lesions: lower R1 and MTsat than WM, as written
    les = scene.dseg == LESION
    assert np.median(maps["R1"][les]) < np.median(maps["R1"][wm])
    assert np.median(maps["MTsat"][les]) < np.median(maps["MTsat"][wm])
    assert np.all(np.isnan(maps["R1"][~mask]))
    # without the receive correction PD carries the +-20 % receive field
    del cov["rx"]
    raw_pd = model.fit(inputs.stacked(run.stacked), mask=mask, covariates=cov).maps()["PD"]
    pd_t = _truth(scene, "desc-MPM_PDmap")
    assert np.median(np.abs(raw_pd[wm] / pd_t[wm] - 1)) > 0.03  # measured 4.9 %


def _receive_map(root, mask):
    """The ``rb1cor`` model on the written RB1COR pair (same grid here), post-processed."""
    (run,) = resolve_model(make_layout(root), REGISTRY["rb1cor"], "01", None)
    model = run.model.from_collections(run.collections)
    inputs = load_inputs(run)
    fit = model.fit(inputs.stacked(run.stacked), mask=mask)
    maps = model.spatial_postprocess(fit.maps(), zooms=inputs.grid.zooms, mask=mask)
    return maps["RX"]


def test_receive_map_from_rb1cor_matches_the_written_field(written):
    root, scene = written
    mask = scene.dseg > 0
    rx = _receive_map(root, mask)
    truth = _truth(scene, "desc-MPM_RB1map")
    err = np.median(np.abs(rx[mask] / truth[mask] - 1))
    logger.info("rb1cor: median |RX error| %.2f %%", 100 * err)
    assert err < 0.02
    assert np.median(rx[mask]) == pytest.approx(1.0, abs=0.01)
