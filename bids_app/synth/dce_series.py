"""Synthetic DCE-MRI with leaky (enhancing) lesions (series writer ``write_dce``).

Truth (extended Tofts parameters): blood-brain barrier intact outside enhancing lesions
(Ktrans 0, ve undefined = NaN), plasma volume vp GM 0.04, WM 0.02 (lesions as WM); CSF none.
Every third lesion (label ``k`` with ``k % 3 == 1``) enhances: Ktrans
``ENHANCING_KTRANS[0] + ENHANCING_KTRANS[1] x severity`` (/min, severity clipped to [0, 2]),
ve :data:`ENHANCING_VE`. The truth sidecar lists them (``EnhancingLesions``).

Forward model, written here independently of the fitting code
(:mod:`bids_app.models.perfusion._dce_physics`): the plasma AIF is the published population
curve of Parker et al. (2006; blood to plasma with Hct 0.42) injected at
:data:`INJECTION_S`; the tissue concentration is the extended Tofts model (Tofts et al. 1999)
``C(t) = vp cp(t) + Ktrans int_0^t cp(u) exp(-kep (t - u)) du``, integrated on a 0.05 s grid
with the exact exponential recursion of a piecewise-linear AIF and sampled at the volume
times; the signal is the spoiled gradient echo ``M0 sin(a) (1 - E) / (1 - cos(a) E)``,
``E = exp(-TR (1/T10 + r1 C))`` at the actual flip angle ``B1 x FlipAngle`` (the model
assumes the nominal angle: a B1 error remains, as on a scanner), ``M0 = GAIN x PD``, T2*
effects ignored (short TE). Rician noise with the WM baseline SNR of the dataset.

References
----------
Parker GJM et al. Magn Reson Med 2006;56:993-1000.
Tofts PS et al. J Magn Reson Imaging 1999;10:223-232.
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.models.perfusion._aif import parker_aif
from bids_app.synth.protocol import GAIN
from bids_app.synth.scene import CSF, GM, LESION, WM, Scene
from bids_app.synth.tissue import NOMINAL

logger = logging.getLogger(__name__)

#: protocol: volumes, interval (s), flip angle (deg), SPGR TR (s), injection time (s)
N_VOLUMES, INTERVAL_S = 60, 5.0
FLIP_ANGLE, TR = 15.0, 0.004
INJECTION_S = 30.0
#: gadolinium relaxivity (1/s/mM) and large-vessel hematocrit of the simulation
RELAXIVITY, HEMATOCRIT = 4.5, 0.42
VP = {GM: 0.04, WM: 0.02, LESION: 0.02, CSF: 0.0}
#: Ktrans (/min) of an enhancing lesion: offset + slope x severity; its ve
ENHANCING_KTRANS = (0.05, 0.1)
ENHANCING_VE = 0.3
FINE_DT = 0.05
QUANT_PER_SIGMA = 8

METADATA = {
    "FlipAngle": FLIP_ANGLE,
    "RepetitionTimeExcitation": TR,
    "EchoTime": 0.0015,
    "MRAcquisitionType": "3D",
    "PulseSequenceType": "spoiled gradient echo (DCE)",
    "ContrastBolusIngredient": "GADOLINIUM",
}


def times() -> np.ndarray:
    """Volume acquisition times (s)."""
    return INTERVAL_S * np.arange(N_VOLUMES)


def enhancing_labels(lesion_ids: np.ndarray) -> list[int]:
    """Lesion labels that enhance (``k % 3 == 1``)."""
    return [int(k) for k in np.unique(lesion_ids) if k > 0 and k % 3 == 1]


def tofts_curves(ktrans, ve, vp, t: np.ndarray) -> np.ndarray:
    """Extended Tofts tissue curves (mM) at ``t`` for parameter arrays of shape (n,).

    Parameters
    ----------
    ktrans : (n,) array_like
        /min.
    ve, vp : (n,) array_like
        Fractions (ve ignored where Ktrans is 0).
    t : (n_t,) ndarray
        Sample times (s).

    Returns
    -------
    (n, n_t) ndarray
    """
    kt = np.asarray(ktrans, float) / 60.0
    fine = np.arange(0.0, t[-1] + FINE_DT / 2, FINE_DT)
    cp = parker_aif(fine, delay_s=INJECTION_S, hematocrit=HEMATOCRIT)
    keep = np.rint(np.asarray(t) / FINE_DT).astype(int)
    out = np.asarray(vp, float)[:, None] * cp[keep][None, :]
    leaky = np.flatnonzero(kt > 0)
    if leaky.size:
        kep = kt[leaky] / np.asarray(ve, float)[leaky]
        # exact recursion of int cp(u) exp(-kep (t - u)) du for cp linear on each step
        x = kep * FINE_DT
        decay = np.exp(-x)
        w_prev = FINE_DT * (1 - (1 + x) * decay) / x**2
        w_next = FINE_DT * (x - 1 + decay) / x**2
        conv = np.empty((leaky.size, fine.size))
        acc = np.zeros(leaky.size)
        conv[:, 0] = 0.0
        for i in range(1, fine.size):
            acc = decay * acc + w_prev * cp[i - 1] + w_next * cp[i]
            conv[:, i] = acc
        out[leaky] += kt[leaky, None] * conv[:, keep]
    return out


def truth_maps(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Ktrans (/min), ve and vp maps, and the enhancing lesion labels."""
    ktrans = np.zeros(scene.shape)
    ve = np.full(scene.shape, np.nan)
    vp = np.zeros(scene.shape)
    for label, value in VP.items():
        vp[scene.dseg == label] = value
    enhancing = enhancing_labels(scene.lesion_ids)
    leaky = np.isin(scene.lesion_ids, enhancing) & (scene.dseg == LESION)
    sev = np.clip(scene.severity[leaky], 0.0, 2.0)
    ktrans[leaky] = ENHANCING_KTRANS[0] + ENHANCING_KTRANS[1] * sev
    ve[leaky] = ENHANCING_VE
    return ktrans, ve, vp, enhancing


def write_dce(scene: Scene) -> None:
    """Write ``perf/<prefix>_dce.nii.gz`` (+ json) and the Ktrans/ve/vp truth.

    Parameters
    ----------
    scene : Scene
        Uses ``dseg``, ``severity``, ``lesion_ids``, ``truth['T1']``, ``truth['PD']`` and
        ``truth['B1']``.
    """
    rng = scene.rng("dce")
    t = times()
    ktrans, ve, vp, enhancing = truth_maps(scene)
    brain = scene.brain
    conc = tofts_curves(ktrans[brain], ve[brain], vp[brain], t)
    t10 = scene.truth["T1"][brain][:, None]
    m0 = GAIN * scene.truth["PD"][brain][:, None]
    alpha = np.deg2rad(FLIP_ANGLE * scene.truth["B1"][brain])[:, None]
    e = np.exp(-TR * (1.0 / t10 + RELAXIVITY * conc))
    clean = np.zeros((*scene.shape, t.size), np.float32)
    clean[brain] = m0 * np.sin(alpha) * (1 - e) / (1 - np.cos(alpha) * e)
    wm = NOMINAL["WM"]
    e_wm = np.exp(-TR / wm["T1"])
    a = np.deg2rad(FLIP_ANGLE)
    sigma = GAIN * wm["PD"] * np.sin(a) * (1 - e_wm) / (1 - np.cos(a) * e_wm) / scene.snr
    clean += np.float32(sigma) * rng.standard_normal(clean.shape, dtype=np.float32)
    imag = rng.standard_normal(clean.shape, dtype=np.float32)
    imag *= np.float32(sigma)
    noisy = np.hypot(clean, imag)
    del imag
    step = max(sigma / QUANT_PER_SIGMA, float(noisy.max()) / 30000.0)
    meta = {**METADATA, "VolumeTiming": [float(x) for x in t]}
    scene.save(scene.raw_path("perf", "dce.nii.gz"), noisy, meta, dtype=np.int16, step=step)
    about = {
        "ForwardModel": "extended Tofts, Parker population AIF (plasma, Hct 0.42)",
        "InjectionTime": INJECTION_S,
        "Relaxivity": RELAXIVITY,
        "EnhancingLesions": enhancing,
    }
    scene.save_truth("perf", "desc-dce_ktrans", ktrans, Units="1/min", **about)
    scene.save_truth("perf", "desc-dce_ve", ve, Units="1", **about)
    scene.save_truth("perf", "desc-dce_vp", vp, Units="1", **about)
    logger.debug("sub-%s: DCE %d volumes, %d enhancing lesions", scene.subject, t.size,
                 len(enhancing))  # fmt: skip
