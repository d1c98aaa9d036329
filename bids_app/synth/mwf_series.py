"""Series writer ``mwf``: a 32-echo CPMG multi-echo spin echo with myelin water, and its truth.

Protocol (the same for every subject): 32 echoes at 10 ms spacing (TE 10-320 ms), TR 1.5 s,
90° excitation and nominal 180° refocusing pulses (CPMG), written as
``anat/<prefix>_acq-mwf_echo-<i>_MESE.nii.gz`` (one int16 image per echo, sidecar
``EchoTime`` in s, ``RepetitionTime``, ``FlipAngle`` = the excitation; BIDS has no key for
the refocusing angle, so the nominal 180° is stated in ``PulseSequenceDetails``).

Tissue (MacKay A et al. Magn Reson Med 1994;31:673-677; Laule C et al. Mult Scler
2004;10:19-26 for the lesion decrease): each voxel is the sum of three water pools,

* myelin water (MW): T2 15 ms in WM, 20 ms in GM, 17 ms in lesions (about 10-25 ms with the
  voxel jitter), a fraction :data:`WM_MWF` (drawn per subject in 12.5-15 %; patients' NAWM
  7 % lower) in WM, 5 % in GM, none in CSF, and in lesions the NAWM value times
  ``1 - LESION_MWF_DROP x severity`` (severity clipped to [0, 1.5]);
* intra/extracellular water (IEW): T2 70 ms in WM, 85 ms in GM, ``70 + 15 x severity`` ms in
  lesions (60-90 ms with the jitter);
* CSF: T2 2 s, T1 4 s; the whole of CSF voxels, 3 % of GM voxels (partial volume).

Voxel jitter (uniform, drawn with the writer's generator): MWF ±1 point, MW T2 ±2 ms, IEW T2
±5 ms. ``MWF`` is the MW share of the summed pool amplitudes (the TE = 0 signal), as the
``mwf`` model estimates it; the saturation ``1 - exp(-TR/T1)`` (voxel T1) scales the voxel.

Forward model: :func:`bids_app.synth.mwf.epg_cpmg_signal`, an explicit complex F+/F-/Z
extended phase graph (Weigel M. J Magn Reson Imaging 2015;41:266-295) with T1 recovery
(voxel T1 for MW and IEW, 4 s for CSF), written independently of the fitting basis
(:mod:`bids_app.models._epg`); pools add as complex echoes, the image is the modulus. The
actual refocusing flip is ``180° x B1`` (the scene's B1+ truth) clipped to [150°, 210°]
(a calibrated pulse within ±30°). CPMG echoes at ``α`` and ``360° - α`` are identical, so the
truth refocusing angle is the effective one, ``180° - |α - 180°|`` in [150°, 180°], the range
the ``mwf`` model fits.

Noise: Rician, σ per channel = the noiseless first echo of nominal control WM (B1 = 1)
divided by ``scene.snr x MWF_SNR_RATIO`` (SNR 100 at the first, highest echo for the default
dataset SNR 100).
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.synth.mwf import epg_cpmg_signal
from bids_app.synth.protocol import GAIN
from bids_app.synth.scene import CSF, GM, LESION, WM, Scene
from bids_app.synth.tissue import NOMINAL

logger = logging.getLogger(__name__)

__all__ = ["ECHO_TIMES", "FILES", "pool_maps", "refocusing_angle", "write_mese_mwf"]

N_ECHOES, ECHO_SPACING, TR = 32, 0.010, 1.5
ECHO_TIMES = tuple(round(ECHO_SPACING * k, 6) for k in range(1, N_ECHOES + 1))
#: the raw images written (datatype, name after the subject prefix)
FILES = tuple(("anat", f"acq-mwf_echo-{k}_MESE.nii.gz") for k in range(1, N_ECHOES + 1))
#: SNR of the first echo of nominal WM = dataset SNR x this ratio
MWF_SNR_RATIO = 1.0
#: per-subject WM myelin water fraction range (percent), patients' NAWM factor
WM_MWF, PATIENT_NAWM_MWF = (12.5, 15.0), 0.93
GM_MWF, GM_CSF = 5.0, 3.0
LESION_MWF_DROP = 0.6
#: pool T2 (s) by tissue: (myelin water, intra/extracellular water)
T2_POOLS = {WM: (0.015, 0.070), GM: (0.020, 0.085), LESION: (0.017, 0.070)}
LESION_IEW_T2_RISE = 0.015
T2_CSF, T1_CSF = 2.0, 4.0
#: uniform voxel jitter half-widths: MWF (points), MW T2 (s), IEW T2 (s)
JITTER = (1.0, 0.002, 0.005)
ANGLE_LIMITS = (150.0, 210.0)
QUANT_PER_SIGMA = 8
#: voxels per EPG chunk (memory: about 3 x 66 complex states per voxel, a few copies)
CHUNK = 20_000

METADATA = {
    "PulseSequenceType": "Multi-echo spin echo (CPMG)",
    "PulseSequenceDetails": "90 deg excitation, nominal 180 deg refocusing pulses",
    "MRAcquisitionType": "2D",
    "RepetitionTime": TR,
    "FlipAngle": 90,
}


def refocusing_angle(b1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Actual and effective refocusing angles (degrees) of a relative B1+ map.

    Parameters
    ----------
    b1 : ndarray
        Relative B1+ (fraction of nominal).

    Returns
    -------
    actual : ndarray
        ``180 B1`` clipped to :data:`ANGLE_LIMITS`.
    effective : ndarray
        ``180 - |actual - 180|``: the angle in [0, 180] with the same CPMG echoes.
    """
    actual = np.clip(180.0 * np.asarray(b1, dtype=float), *ANGLE_LIMITS)
    return actual, 180.0 - np.abs(actual - 180.0)


def pool_maps(scene: Scene, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Pool fractions (0-1) and T2 (s) of every voxel of a scene.

    Returns
    -------
    dict of (X, Y, Z) ndarray
        ``mwf``, ``csf`` (fractions of the water, the rest is IEW), ``t2_mw``, ``t2_iew``
        (s); zero outside the brain. Draws the subject's WM MWF, then the voxel jitter.
    """
    shape, dseg = scene.shape, scene.dseg
    wm_mwf = rng.uniform(*WM_MWF) * (PATIENT_NAWM_MWF if scene.patient else 1.0)
    sev = np.clip(scene.severity, 0.0, 1.5)
    mwf, csf = np.zeros(shape), np.zeros(shape)
    t2_mw, t2_iew = np.zeros(shape), np.zeros(shape)
    mwf[dseg == WM] = wm_mwf
    mwf[dseg == GM] = GM_MWF
    lesion = dseg == LESION
    mwf[lesion] = wm_mwf * (1.0 - LESION_MWF_DROP * sev[lesion])
    csf[dseg == GM] = GM_CSF / 100.0
    csf[dseg == CSF] = 1.0
    for label, (mw, iew) in T2_POOLS.items():
        t2_mw[dseg == label], t2_iew[dseg == label] = mw, iew
    t2_iew[lesion] += LESION_IEW_T2_RISE * np.minimum(sev[lesion], 4 / 3)
    tissue = np.isin(dseg, (WM, GM, LESION))
    jit = rng.uniform(-1.0, 1.0, (3, *shape)) * np.reshape(JITTER, (3, 1, 1, 1))
    mwf = np.where(tissue, np.clip(mwf + jit[0], 0.0, None), 0.0) / 100.0
    t2_mw = np.where(tissue, t2_mw + jit[1], 0.0)
    t2_iew = np.where(tissue, t2_iew + jit[2], 0.0)
    return {"mwf": mwf, "csf": csf, "t2_mw": t2_mw, "t2_iew": t2_iew}


def _decay(pools: dict[str, np.ndarray], t1: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """(n, N_ECHOES) magnitude decay of unit water at the pools of n voxels (chunked EPG)."""
    n = angle.size
    out = np.empty((n, N_ECHOES))
    kw = {"echo_spacing": ECHO_SPACING, "n_echoes": N_ECHOES}
    for lo in range(0, n, CHUNK):
        s = slice(lo, lo + CHUNK)
        mwf, csf = pools["mwf"][s], pools["csf"][s]
        total = np.zeros((mwf.size, N_ECHOES), dtype=complex)
        tissue = np.flatnonzero(csf < 1.0)
        if tissue.size:
            a, t1t = angle[s][tissue], t1[s][tissue]
            total[tissue] += mwf[tissue, None] * epg_cpmg_signal(
                pools["t2_mw"][s][tissue], a, t1=t1t, **kw
            )
            iew = 1.0 - mwf[tissue] - csf[tissue]
            total[tissue] += iew[:, None] * epg_cpmg_signal(
                pools["t2_iew"][s][tissue], a, t1=t1t, **kw
            )
        wet = np.flatnonzero(csf > 0.0)
        if wet.size:
            total[wet] += csf[wet, None] * epg_cpmg_signal(
                np.full(wet.size, T2_CSF), angle[s][wet], t1=T1_CSF, **kw
            )
        out[s] = np.abs(total)
    return out


def reference_sigma(snr: float) -> float:
    """Noise SD per channel: the first echo of nominal control WM (B1 = 1) over ``snr``."""
    wm = NOMINAL["WM"]
    mw, iew = T2_POOLS[WM]
    pools = {
        "mwf": np.array([np.mean(WM_MWF) / 100.0]),
        "csf": np.zeros(1),
        "t2_mw": np.array([mw]),
        "t2_iew": np.array([iew]),
    }
    first = _decay(pools, np.array([wm["T1"]]), np.array([180.0]))[0, 0]
    return float(GAIN * wm["PD"] * -np.expm1(-TR / wm["T1"]) * first / snr)


def write_mese_mwf(scene: Scene) -> None:
    """Write the 32 ``acq-mwf`` MESE echoes (+ json) and the truth maps.

    Parameters
    ----------
    scene : Scene
        Uses ``dseg``, ``severity``, ``patient``, ``snr`` and ``truth['T1']``, ``['PD']``,
        ``['B1']``.

    Notes
    -----
    Truth (``derivatives/truth/sub-X/anat``, named as the ``mwf`` model's outputs):
    ``acq-mwf_MWFmap`` and ``acq-mwf_IEWFmap`` (percent), ``acq-mwf_desc-MW_T2map`` and
    ``acq-mwf_desc-IEW_T2map`` (s, NaN where the pool is absent) and
    ``acq-mwf_desc-refocusing_FAmap`` (effective refocusing angle, degrees); NaN outside the
    brain.
    """
    rng = scene.rng("mwf")
    pools = pool_maps(scene, rng)
    brain = scene.brain
    t1 = np.where(brain, scene.truth["T1"], 1.0)
    actual, effective = refocusing_angle(scene.truth["B1"])
    flat = {k: v[brain] for k, v in pools.items()}
    decay = _decay(flat, t1[brain], actual[brain])
    m0 = GAIN * scene.truth["PD"][brain] * -np.expm1(-TR / t1[brain])
    clean = np.zeros((*scene.shape, N_ECHOES))
    clean[brain] = m0[:, None] * decay
    snr = scene.snr * MWF_SNR_RATIO
    sigma = reference_sigma(snr)
    real = clean + rng.normal(0.0, sigma, clean.shape)
    noisy = np.hypot(real, rng.normal(0.0, sigma, clean.shape)).astype(np.float32)
    step = max(sigma / QUANT_PER_SIGMA, float(noisy.max()) / 30000.0)
    for k, te in enumerate(ECHO_TIMES):
        path = scene.raw_path("anat", f"acq-mwf_echo-{k + 1}_MESE.nii.gz")
        scene.save(path, noisy[..., k], {**METADATA, "EchoTime": te}, dtype=np.int16, step=step)
    about = {"SNRFirstEchoNominalWM": snr, "NoiseSigma": sigma, "ForwardModel": "EPG, 3 pools"}
    nan = np.nan
    iewf = 1.0 - pools["mwf"] - pools["csf"]
    scene.save_truth("anat", "acq-mwf_MWFmap", np.where(brain, 100 * pools["mwf"], nan),
                     Units="percent", **about)  # fmt: skip
    scene.save_truth("anat", "acq-mwf_IEWFmap", np.where(brain, 100 * iewf, nan),
                     Units="percent", **about)  # fmt: skip
    for name, key, frac in (("MW", "t2_mw", pools["mwf"]), ("IEW", "t2_iew", iewf)):
        t2 = np.where(brain & (frac > 0), pools[key], nan)
        scene.save_truth("anat", f"acq-mwf_desc-{name}_T2map", t2, Units="s", **about)
    scene.save_truth("anat", "acq-mwf_desc-refocusing_FAmap",
                     np.where(brain, effective, nan), Units="degree", **about)  # fmt: skip
    logger.debug("sub-%s: MWF MESE %d echoes, sigma %.3g", scene.subject, N_ECHOES, sigma)
