"""Series writer ``dwi``: a multi-shell diffusion series of the synthetic brain, with truth.

Protocol (the same for every subject): 4 b=0 volumes, 30 directions at b = 1000 and 30 at
2000 s/mm² (electrostatic repulsion, shells interleaved), TR 4 s, TE 80 ms, one 4-D
``dwi/<prefix>_dwi.nii.gz`` with ``.bval``/``.bvec`` (gradient directions in voxel axes).

Signal: the exact NODDI forward model [1]_ (:func:`bids_app.models.diffusion._noddi_forward
.noddi_signal`, Legendre series of the Watson-dispersed sticks) with tissue values from the
literature range [1]_ [2]_ (:data:`TISSUE`): lesions move from the NAWM value towards the
``lesion`` value with their severity (lower neurite density, more dispersion, more free
water: Granziera et al. 2021), patients' NAWM has 5 % lower ICVF. Fibres follow a smooth
field circling the z axis with a vertical component (no anatomical tractography claimed).
``S0 = GAIN * PD * (1 - exp(-TR/T1)) * exp(-TE/T2)`` from the relaxometry truth, Rician noise
of SD ``S0(nominal WM) / (SNR * DWI_SNR_RATIO)`` (SNR 50 at b=0 for the default SNR 100).

Truth (``derivatives/truth/sub-X/dwi``): ``model-noddi_param-icvf|odi|isovf_dwimap`` (the
generating values) and ``model-tensor_param-fa|md|ad|rd_dwimap``: the apparent tensor of the
*noiseless* series fitted by dipy's weighted least squares on every volume (as the ``dti``
model does), since a tensor fit of non-Gaussian signal is biased by the kurtosis (about
-12 % in MD at b = 1000-2000): the truth of the estimator, whose errors under noise,
denoising, motion correction and registration the end-to-end test measures.

References
----------
.. [1] Zhang H, Schneider T, Wheeler-Kingshott CA, Alexander DC. NODDI: practical in vivo
   neurite orientation dispersion and density imaging of the human brain. NeuroImage
   2012;61:1000-1016.
.. [2] Grussu F, Schneider T, Tur C, et al. Neurite dispersion: a new marker of multiple
   sclerosis spinal cord pathology? Ann Clin Transl Neurol 2017;4:663-679.
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.synth.dwi import multishell_protocol
from bids_app.synth.protocol import GAIN
from bids_app.synth.scene import CSF, GM, LESION, WM, Scene

logger = logging.getLogger(__name__)

SHELLS = (1000.0, 2000.0)
N_DIRS = 30
N_B0 = 4
TR, TE = 4.0, 0.08
#: DWI b=0 SNR in nominal WM = dataset SNR x this ratio
DWI_SNR_RATIO = 0.5
QUANT_PER_SIGMA = 8
#: tissue -> (ICVF, ODI, ISOVF)
TISSUE = {
    "WM": (0.60, 0.15, 0.02),
    "GM": (0.35, 0.45, 0.05),
    "CSF": (0.0, 0.5, 1.0),
    "lesion": (0.35, 0.28, 0.15),
}
PATIENT_NAWM_ICVF = 0.95
#: voxels per forward-model chunk (memory: chunk x volumes x 33 Legendre terms)
CHUNK = 20_000

METADATA = {
    "PulseSequenceType": "Spin-echo EPI with Stejskal-Tanner diffusion encoding",
    "MRAcquisitionType": "2D",
    "RepetitionTime": TR,
    "EchoTime": TE,
    "PhaseEncodingDirection": "j-",
    "TotalReadoutTime": 0.05,
}


def protocol() -> tuple[np.ndarray, np.ndarray]:
    """The fixed gradient table: bvals (n,) s/mm² and unit bvecs (n, 3), n = 64."""
    bvals, bvecs = multishell_protocol(SHELLS, N_DIRS, N_B0, np.random.default_rng(2024))
    return np.round(bvals), bvecs


def fibre_directions(xyz: np.ndarray) -> np.ndarray:
    """Smooth unit fibre field at world points ``xyz`` (n, 3) mm: circles about z, tilted."""
    r = np.hypot(xyz[:, 0], xyz[:, 1]) + 5.0
    d = np.stack([-xyz[:, 1] / r, xyz[:, 0] / r, 0.4 * np.tanh(xyz[:, 2] / 40.0)], axis=1)
    # the field vanishes at the world origin itself (a voxel centre on 1 mm grids): any
    # direction is a circle there; take x
    d[np.linalg.norm(d, axis=1) < 1e-9] = (1.0, 0.0, 0.0)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def noddi_truth(scene: Scene) -> dict[str, np.ndarray]:
    """(X, Y, Z) ICVF, ODI, ISOVF truth maps (0 outside the brain)."""
    out = {k: np.zeros(scene.shape, np.float32) for k in ("icvf", "odi", "isovf")}
    for label, name in ((GM, "GM"), (WM, "WM"), (CSF, "CSF"), (LESION, "WM")):
        sel = scene.dseg == label
        for key, value in zip(out, TISSUE[name], strict=True):
            out[key][sel] = value
    if scene.patient:
        out["icvf"][scene.dseg == WM] *= PATIENT_NAWM_ICVF
    les = scene.dseg == LESION
    sev = np.clip(scene.severity[les], 0.0, 1.5)
    for key, nawm, lesion in zip(out, TISSUE["WM"], TISSUE["lesion"], strict=True):
        base = nawm * (PATIENT_NAWM_ICVF if key == "icvf" and scene.patient else 1.0)
        out[key][les] = np.clip(base + sev * (lesion - base), 0.0, 1.0)
    out["odi"][scene.brain] = np.clip(out["odi"][scene.brain], 0.02, 0.98)
    return out


def s0_map(scene: Scene) -> np.ndarray:
    """(X, Y, Z) b=0 signal from the relaxometry truth (0 outside the brain)."""
    t = scene.truth
    brain = scene.brain
    s0 = np.zeros(scene.shape, np.float64)
    t1, t2 = t["T1"][brain].astype(float), t["T2"][brain].astype(float)
    s0[brain] = GAIN * t["PD"][brain] * (1 - np.exp(-TR / t1)) * np.exp(-TE / t2)
    return s0


def nominal_wm_s0() -> float:
    """b=0 signal of nominal control WM (the noise reference)."""
    from bids_app.synth.tissue import nominal_wm

    wm = nominal_wm()
    return float(GAIN * wm["PD"] * (1 - np.exp(-TR / wm["T1"])) * np.exp(-TE / wm["T2"]))


def clean_series(scene: Scene, bvals, bvecs) -> np.ndarray:
    """(n_brain, n) noiseless signal of the brain voxels (C order)."""
    from bids_app.models.diffusion._noddi_forward import noddi_signal

    brain = scene.brain
    ijk = np.argwhere(brain)
    xyz = ijk @ scene.affine[:3, :3].T + scene.affine[:3, 3]
    # fibre directions in voxel axes (the frame of the bvecs)
    lin = scene.affine[:3, :3] / np.linalg.norm(scene.affine[:3, :3], axis=0)
    mu = fibre_directions(xyz) @ lin
    truth = noddi_truth(scene)
    s0 = s0_map(scene)[brain]
    vals = [truth[k][brain] for k in ("icvf", "odi", "isovf")]
    out = np.empty((ijk.shape[0], bvals.size), np.float32)
    for start in range(0, ijk.shape[0], CHUNK):
        sl = slice(start, start + CHUNK)
        out[sl] = noddi_signal(bvals, bvecs, mu[sl], *(v[sl] for v in vals), s0=s0[sl])
    return out


def tensor_truth(clean: np.ndarray, bvals, bvecs) -> dict[str, np.ndarray]:
    """FA, MD, AD, RD (n_vox,) of dipy's WLS tensor fit of the noiseless signal."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    gtab = gradient_table(bvals, bvecs=np.where(bvals[:, None] > 50, bvecs, 0.0), b0_threshold=50)
    fit = TensorModel(gtab, fit_method="WLS").fit(np.maximum(clean.astype(float), 1e-6))
    return {"fa": fit.fa, "md": fit.md, "ad": fit.ad, "rd": fit.rd}


def write_dwi(scene: Scene) -> None:
    """Write ``dwi/<prefix>_dwi.nii.gz`` (+ json, bval, bvec) and its truth maps."""
    bvals, bvecs = protocol()
    brain = scene.brain
    clean = clean_series(scene, bvals, bvecs)
    sigma = nominal_wm_s0() / (scene.snr * DWI_SNR_RATIO)
    rng = scene.rng("dwi")
    series = np.zeros((*scene.shape, bvals.size), np.float32)
    series[brain] = clean
    real = series + rng.standard_normal(series.shape, dtype=np.float32) * np.float32(sigma)
    noisy = np.hypot(real, rng.standard_normal(series.shape, dtype=np.float32) * sigma)
    step = max(sigma / QUANT_PER_SIGMA, float(noisy.max()) / 30000.0)
    path = scene.raw_path("dwi", "dwi.nii.gz")
    scene.save(path, noisy, dict(METADATA), dtype=np.int16, step=step)
    stem = path.name.removesuffix(".nii.gz")
    path.with_name(stem + ".bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    rows = [" ".join(f"{v:.6f}" for v in bvecs[:, i]) for i in range(3)]
    path.with_name(stem + ".bvec").write_text("\n".join(rows) + "\n")
    for key, value in noddi_truth(scene).items():
        scene.save_truth("dwi", f"model-noddi_param-{key}_dwimap", value, Units="1")
    units = {"fa": "1", "md": "mm^2/s", "ad": "mm^2/s", "rd": "mm^2/s"}
    for key, value in tensor_truth(clean, bvals, bvecs).items():
        vol = np.zeros(scene.shape, np.float32)
        vol[brain] = value
        scene.save_truth(
            "dwi",
            f"model-tensor_param-{key}_dwimap",
            vol,
            Units=units[key],
            Description="dipy WLS tensor fit of the noiseless series (every volume)",
        )
    logger.debug("sub-%s: DWI %d volumes, sigma %.3g", scene.subject, bvals.size, sigma)
