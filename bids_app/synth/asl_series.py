"""Synthetic multi-delay pCASL with a separate M0 scan (series writer ``write_asl``).

Truth by tissue: CBF GM 60, WM 20 mL/100g/min (patients' NAWM 5 % lower), lesions lower by
``LESION_CBF_DROP x severity``, CSF 0; ATT GM 1.2 s, WM 1.5 s, lesions 1.5 s +
``LESION_ATT_DELAY x severity`` (undefined, NaN, where CBF is 0). Each subject/session scales
its tissue CBF by a factor drawn around 1 (s.d. :data:`SUBJECT_SD`).

Forward model, written here independently of the fitting code
(:mod:`bids_app.models.perfusion._asl_kinetic`): the single-compartment kinetic model of
Buxton et al. (1998) under the white-paper assumptions (Alsop et al. 2015: labelled water
relaxes with the blood T1 before and after arrival, λ = 0.9 mL/g, α = 0.85, T1b = 1.65 s at
3 T). Blood labelled during ``[0, τ]`` reaches the voxel during ``[Δt, Δt + τ]``; every
element relaxes by ``exp(-Δt/T1b)`` on its way and by ``exp(-(t - u)/T1b)`` after it
arrives at ``u``, so at the readout ``t = τ + PLD``::

    ΔM = 2 α M0 (f/λ) exp(-Δt/T1b) T1b [exp(-(t - b)/T1b) - exp(-(t - Δt)/T1b)],
    b = min(t, Δt + τ), and ΔM = 0 for t <= Δt,

with ``f = CBF / 6000`` (mL/g/s) and ``M0 = GAIN x PD`` the equilibrium tissue
magnetisation. Control images are the saturation-recovery tissue signal at the ASL
``RepetitionTimePreparation``, labels the control minus ΔM; the M0 scan is
``M0 (1 - exp(-TR_M0/T1))`` with the voxel's T1. Noise is Rician with σ set so that the GM
difference at its best delay, averaged over the pairs of that delay, has an SNR of
:data:`SNR_PER_DELAY`.

References
----------
Buxton RB, Frank LR, Wong EC, et al. Magn Reson Med 1998;40:383-396.
Alsop DC, Detre JA, Golay X, et al. Magn Reson Med 2015;73:102-116.
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.synth.protocol import GAIN
from bids_app.synth.scene import CSF, GM, LESION, WM, Scene
from bids_app.synth.tissue import NOMINAL

logger = logging.getLogger(__name__)

#: labelling duration (s) and post-labelling delays (s) of the protocol
TAU = 1.8
PLDS = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5)
PAIRS_PER_DELAY = 2
TR_ASL, TR_M0 = 4.5, 6.0
ALPHA, T1_BLOOD, LAMBDA = 0.85, 1.65, 0.9
#: SNR of the GM control-label difference at its best delay (mean of the pairs of a delay)
SNR_PER_DELAY = 50.0
CBF = {GM: 60.0, WM: 20.0, LESION: 20.0, CSF: 0.0}
ATT = {GM: 1.2, WM: 1.5, LESION: 1.5, CSF: np.nan}
NAWM_CBF_CHANGE = 0.95
LESION_CBF_DROP = 0.35
LESION_ATT_DELAY = 0.2
SUBJECT_SD = 0.05
#: raw images are int16 with this many quantisation steps per noise s.d.
QUANT_PER_SIGMA = 8

METADATA = {
    "ArterialSpinLabelingType": "PCASL",
    "PCASLType": "balanced",
    "LabelingDuration": TAU,
    "M0Type": "Separate",
    "BackgroundSuppression": False,
    "VascularCrushing": False,
    "RepetitionTimePreparation": TR_ASL,
    "MRAcquisitionType": "3D",
    "EchoTime": 0.012,
    "FlipAngle": 90,
}


def delta_m(cbf, att, pld, m0, tau=TAU, alpha=ALPHA, t1b=T1_BLOOD, lam=LAMBDA):
    """ΔM of pCASL by the arrival integral of the module docstring.

    Parameters
    ----------
    cbf : array_like
        mL/100g/min.
    att : array_like
        Arterial transit time Δt (s); NaN is treated as no arrival (ΔM = 0).
    pld : array_like
        Post-labelling delay (s).
    m0 : array_like
        Equilibrium tissue magnetisation.
    tau, alpha, t1b, lam : float
        Labelling duration (s), efficiency, blood T1 (s), partition coefficient (mL/g).

    Returns
    -------
    ndarray
        Broadcast of the inputs, in the units of ``m0``.
    """
    f = np.asarray(cbf, dtype=float) / 6000.0
    dt = np.nan_to_num(np.asarray(att, dtype=float), nan=np.inf)
    t = tau + np.asarray(pld, dtype=float)
    end = np.minimum(t, dt + tau)
    with np.errstate(invalid="ignore", over="ignore"):
        window = np.exp(-(t - end) / t1b) - np.exp(-(t - dt) / t1b)
        out = 2 * alpha * np.asarray(m0) * f / lam * np.exp(-dt / t1b) * t1b * window
    return np.where(t > dt, out, 0.0)


def truth_maps(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CBF (mL/100g/min) and ATT (s) maps of a scene; ATT is NaN where CBF is 0."""
    factor = np.clip(rng.normal(1.0, SUBJECT_SD, 2), 1 - 2 * SUBJECT_SD, 1 + 2 * SUBJECT_SD)
    cbf = np.zeros(scene.shape)
    att = np.full(scene.shape, np.nan)
    for label in (GM, WM, LESION, CSF):
        sel = scene.dseg == label
        cbf[sel] = CBF[label] * (factor[0] if label == GM else factor[1])
        att[sel] = ATT[label]
    if scene.patient:
        cbf[scene.dseg == WM] *= NAWM_CBF_CHANGE
    lesion = scene.dseg == LESION
    cbf[lesion] *= 1.0 - LESION_CBF_DROP * np.clip(scene.severity[lesion], 0.0, 2.0)
    att[lesion] += LESION_ATT_DELAY * np.clip(scene.severity[lesion], 0.0, 2.0)
    att[cbf <= 0] = np.nan
    return cbf, att


def write_asl(scene: Scene) -> None:
    """Write ``perf/<prefix>_asl.nii.gz`` (+ json, aslcontext), the M0 scan and the truth.

    Parameters
    ----------
    scene : Scene
        Uses ``dseg``, ``severity``, ``patient``, ``truth['T1']`` and ``truth['PD']``.
    """
    rng = scene.rng("asl")
    cbf, att = truth_maps(scene, rng)
    t1 = np.where(scene.brain, scene.truth["T1"], 1.0)
    m0 = np.where(scene.brain, GAIN * scene.truth["PD"], 0.0)
    plds = np.repeat(np.asarray(PLDS), PAIRS_PER_DELAY)
    dm = delta_m(cbf[..., None], att[..., None], plds, m0[..., None])
    control = (m0 * -np.expm1(-TR_ASL / t1))[..., None] + np.zeros_like(dm)
    clean = np.stack([control, control - dm], axis=-1).reshape(*scene.shape, -1)
    gm_peak = float(delta_m(CBF[GM], ATT[GM], np.asarray(PLDS), GAIN * NOMINAL["GM"]["PD"]).max())
    sigma = gm_peak * np.sqrt(PAIRS_PER_DELAY) / (SNR_PER_DELAY * np.sqrt(2.0))
    noisy = _rician(clean, sigma, rng)
    step = max(sigma / QUANT_PER_SIGMA, float(noisy.max()) / 30000.0)
    path = scene.raw_path("perf", "asl.nii.gz")
    meta = {
        **METADATA,
        "PostLabelingDelay": [float(p) for p in np.repeat(plds, 2)],
        "TotalAcquiredPairs": int(plds.size),
    }
    scene.save(path, noisy, meta, dtype=np.int16, step=step)
    rows = "".join("control\nlabel\n" for _ in plds)
    path.with_name(path.name.replace("_asl.nii.gz", "_aslcontext.tsv")).write_text(
        "volume_type\n" + rows
    )
    m0_img = _rician(m0 * -np.expm1(-TR_M0 / t1), sigma, rng)
    rel = path.relative_to(scene.root).as_posix()
    m0_meta = {
        "RepetitionTimePreparation": TR_M0,
        "MRAcquisitionType": "3D",
        "EchoTime": METADATA["EchoTime"],
        "FlipAngle": 90,
        "IntendedFor": [f"bids::{rel}"],
    }
    scene.save(scene.raw_path("perf", "m0scan.nii.gz"), m0_img, m0_meta, dtype=np.int16,
               step=max(sigma / QUANT_PER_SIGMA, float(m0_img.max()) / 30000.0))  # fmt: skip
    about = {
        "SNRPerDelay": SNR_PER_DELAY,
        "ForwardModel": "single-compartment kinetic model, T1app = T1 blood (white paper)",
    }
    scene.save_truth("perf", "cbf", cbf, Units="mL/100g/min", **about)
    scene.save_truth("perf", "att", att, Units="s", **about)
    logger.debug("sub-%s: ASL %d volumes, sigma %.3g", scene.subject, clean.shape[-1], sigma)


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of s.d. ``sigma`` per channel."""
    real = signal + rng.normal(0.0, sigma, signal.shape)
    return np.hypot(real, rng.normal(0.0, sigma, signal.shape)).astype(np.float32)
