"""VFA T1 against the OSIPI TF6.2 DCE-DSC-MRI CodeCollection reference voxels.

Data: ``../shared/data/osipi-dce-dsc/test/T1_mapping/data`` (OSIPI/DCE-DSC-MRI_CodeCollection
@ 40984f7, Apache-2.0), three sets described in that project's ``test/T1_mapping/t1_data.py``:

* ``t1_brain_data.csv``: 76 in-vivo 3 T brain voxels (WM, deep GM, CSF; Mild Stroke Study 3,
  Clancy et al. Eur Stroke J 2020), FA 2/5/12°, TR 5.4 ms; reference R1 (/s) from the HIFI
  Matlab code, not B1-corrected.
* ``t1_quiba_data.csv``: 45 voxels of the QIBA T1 DRO v3 (S0/σ ≥ 1500), FA 3-35°, TR 5 ms;
  reference R1 is the ground truth, stored in /ms.
* ``t1_prostate_data.csv``: 50 in-vivo 3 T prostate voxels (NKI, Klawer et al. MRM 2019),
  FA 3-30°, TR in **ms**, B1 in **percent**; reference T1 in **ms** for linear and non-linear
  fits, each with and without B1 correction.

OSIPI's tolerance for all three sets is on R1: ``|R1 - R1_ref| ≤ 0.05 /s + 0.05 R1_ref``
(prostate T1 references are converted to R1 = 1000 / T1[ms] first, as OSIPI does). OSIPI
compares every method with the non-B1-corrected *non-linear* prostate reference and lists one
expected failure for linear fits, the low-SNR voxel ``Pat5_voxel5_prostaat``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from bids_app.models.relaxometry import VFAT1Model

logger = logging.getLogger(__name__)

DATA = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "osipi-dce-dsc"
    / "test"
    / "T1_mapping"
    / "data"
).resolve()

pytestmark = pytest.mark.skipif(
    not DATA.is_dir(),
    reason=f"OSIPI T1 reference data not found at {DATA} (../shared/data is not in the repo)",
)

ARRAY_COLUMNS = ("FA", "TR", "s")
LOW_SNR_VOXEL = "Pat5_voxel5_prostaat"  # OSIPI's expected failure for linear fits


def read_osipi_csv(name: str) -> dict[str, np.ndarray]:
    """Columns of an OSIPI T1 CSV; array cells (space-separated numbers) become 2-D arrays."""
    with open(DATA / f"t1_{name}_data.csv", newline="") as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    out = {"label": np.array([r["label"] for r in rows])}
    for key in rows[0]:
        if key in ARRAY_COLUMNS:
            out[key] = np.array([np.array(r[key].split(), dtype=float) for r in rows])
        elif key != "label":
            out[key] = np.array([float(r[key]) for r in rows])
    return out


def fit_r1(data, method, tr_scale=1.0, b1=None, columns=slice(None)):
    """R1 (/s) and M0 of every voxel; all voxels of a set share one protocol."""
    fa, tr = data["FA"][:, columns], data["TR"][:, columns] * tr_scale
    assert np.all(fa == fa[0]), "flip angles differ between voxels"
    assert np.all(tr == tr[0, 0]), "TR differs between voxels"
    model = VFAT1Model(fa[0], tr[0, 0], fit_method=method)
    cov = None if b1 is None else {"b1": b1}
    params = model.fit(data["s"][:, columns], covariates=cov).params
    return params[:, 1], params[:, 2]


def check_osipi(what, labels, r1, r1_ref, expected_fail=()):
    """Assert the OSIPI tolerance on every voxel except exactly ``expected_fail``."""
    err = np.abs(r1 - r1_ref)
    fail = ~(err <= 0.05 + 0.05 * np.abs(r1_ref))  # NaN counts as a failure
    logger.info(
        "%s: %d/%d voxels within tolerance, max |ΔR1| %.3g /s",
        what,
        (~fail).sum(),
        fail.size,
        np.nanmax(err),
    )
    assert sorted(labels[fail]) == sorted(expected_fail), (
        f"{what}: voxels outside the OSIPI tolerance {list(labels[fail])}, "
        f"expected {list(expected_fail)}; max |dR1| = {np.nanmax(err):.4g} /s"
    )


@pytest.fixture(scope="module")
def brain():
    return read_osipi_csv("brain")


@pytest.fixture(scope="module")
def qiba():
    return read_osipi_csv("quiba")


@pytest.fixture(scope="module")
def prostate():
    return read_osipi_csv("prostate")


@pytest.mark.parametrize("method", ["linear", "nonlinear"])
def test_brain(brain, method):
    r1, m0 = fit_r1(brain, method)
    check_osipi(f"brain {method}", brain["label"], r1, brain["R1"])
    if method == "nonlinear":
        # the HIFI reference is itself a non-linear SPGR fit: ours agrees to ~1e-5
        assert_allclose(r1, brain["R1"], rtol=1e-3)
        assert_allclose(m0, brain["s0"], rtol=1e-3)


@pytest.mark.parametrize("method", ["linear", "nonlinear"])
def test_qiba(qiba, method):
    r1, _ = fit_r1(qiba, method)
    check_osipi(f"QIBA {method}", qiba["label"], r1, qiba["R1"] * 1000.0)  # /ms -> /s


@pytest.mark.parametrize(
    ("dataset", "expected_fail"),
    [("brain", ()), ("qiba", ()), ("prostate", (LOW_SNR_VOXEL,))],
)
def test_two_flip_angles(brain, qiba, prostate, dataset, expected_fail):
    # OSIPI's two-point variant: first and last flip angle only (closed form)
    data = {"brain": brain, "qiba": qiba, "prostate": prostate}[dataset]
    if dataset == "prostate":
        ref, tr_scale = 1000.0 / data["T1 nonlinear"], 1e-3
    else:
        ref, tr_scale = data["R1"] * (1000.0 if dataset == "qiba" else 1.0), 1.0
    r1, _ = fit_r1(data, "linear", tr_scale=tr_scale, columns=[0, -1])
    check_osipi(f"{dataset} 2FA", data["label"], r1, ref, expected_fail)


@pytest.mark.parametrize(
    ("method", "expected_fail"), [("linear", (LOW_SNR_VOXEL,)), ("nonlinear", ())]
)
def test_prostate_osipi_protocol(prostate, method, expected_fail):
    # OSIPI's own test: every method against the non-B1-corrected non-linear reference
    r1, _ = fit_r1(prostate, method, tr_scale=1e-3)  # TR ms -> s
    ref = 1000.0 / prostate["T1 nonlinear"]  # T1 ms -> R1 /s
    check_osipi(f"prostate {method} (OSIPI)", prostate["label"], r1, ref, expected_fail)


@pytest.mark.parametrize(
    ("method", "b1_corrected", "expected_fail"),
    [
        ("linear", False, ()),
        ("nonlinear", False, ()),
        ("nonlinear", True, ()),
        # The linear B1-corrected reference of this one voxel implies B1 = 1.077 while its
        # B1 column says 1.005 (and the reference's own non-linear B1-corrected T1, 1237 ms,
        # agrees with ours, 1224 ms): a reference inconsistency, kept visible here.
        ("linear", True, ("Pat1_voxel5_prostaat",)),
    ],
)
def test_prostate_same_method_reference(prostate, method, b1_corrected, expected_fail):
    # each fit against the NKI reference computed the same way (B1 column in percent)
    b1 = prostate["B1"] / 100.0 if b1_corrected else None
    r1, m0 = fit_r1(prostate, method, tr_scale=1e-3, b1=b1)
    col = f"{method}{' B1cor' if b1_corrected else ''}"
    check_osipi(
        f"prostate {col}", prostate["label"], r1, 1000.0 / prostate[f"T1 {col}"], expected_fail
    )
    if not expected_fail:
        # same estimator as the reference: agreement far inside the tolerance
        assert_allclose(r1, 1000.0 / prostate[f"T1 {col}"], rtol=1e-3)
        assert_allclose(m0, prostate[f"s0 {col}"], rtol=1e-3)
