"""Synthetic multi-parameter mapping protocol (series writer ``write_mpm``).

Three multi-echo 3D FLASH contrasts as in the hMRI example dataset (bids-examples
``qmri_mpm``): PDw (6 deg, 8 echoes), T1w (21 deg, 8 echoes), MTw (6 deg with MT pulse,
6 echoes), TR 25 ms, TE 2.3 ms x k. Forward model, written here independently of the fit
(:mod:`bids_app.models.relaxometry.mpm`): ideally spoiled steady state with Helms' MT
saturation (a fraction ``MTsat/100`` of Mz saturated before each excitation), exact sin/cos
of the actual flip angle ``B1 x nominal``, mono-exponential T2* decay::

    S = GAIN PD sin(a) x (1 - E1) / (1 - x E1 cos a) exp(-TE / T2*),  x = 1 - MTsat/100,
    E1 = exp(-TR / T1)

Rician noise with the same sigma in every image, ``sigma = (noiseless first PDw echo in
control-like WM at B1 = 1) / scene.snr``; images are int16 with ``sigma/8`` per step. The
sidecars give no ``SpoilingRFPhaseIncrement`` (the forward model is ideally spoiled, so the
fit must apply no spoiling correction). Every MPM image is received by a head array of
relative sensitivity ``RX`` (a smooth gradient of +-20 % across the grid, median 1 in the
brain); the ``RB1COR`` pair ``fmap/*_acq-headPDw_RB1COR`` (RX x body) and
``*_acq-bodyPDw_RB1COR`` (FLASH 6 deg, TR 6 ms, TE 2.2 ms, same noise) measures it. Truth
maps (``derivatives/truth/anat``): ``desc-MPM_R1map`` (1/s), ``desc-MPM_R2starmap`` (1/s),
``desc-MPM_PDmap`` (``GAIN x PD``: the fit's arbitrary units once divided by RX),
``desc-MPM_MTsat`` (p.u.) and ``desc-MPM_RB1map`` (RX).

References
----------
Weiskopf N et al. Front Neurosci 2013;7:95. Helms G et al. Magn Reson Med 2008;60:1396.
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.synth.protocol import GAIN, MT_PULSE
from bids_app.synth.scene import Scene
from bids_app.synth.tissue import nominal_wm

logger = logging.getLogger(__name__)

TR = 0.025
ECHO_SPACING = 0.0023
#: acq label -> (flip index, flip angle deg, MT on, number of echoes)
CONTRASTS = {"PDw": (1, 6.0, False, 8), "T1w": (2, 21.0, False, 8), "MTw": (1, 6.0, True, 6)}
QUANT_PER_SIGMA = 8


def file_names() -> tuple[tuple[str, str], ...]:
    """``(datatype, name after the subject prefix)`` of every image :func:`write_mpm` writes."""
    out = []
    for acq, (fi, _, mt, n) in CONTRASTS.items():
        state = "on" if mt else "off"
        out += [
            ("anat", f"acq-{acq}_echo-{k}_flip-{fi}_mt-{state}_MPM.nii.gz")
            for k in range(1, n + 1)
        ]
    out += [("fmap", f"acq-{coil}PDw_RB1COR.nii.gz") for coil in ("head", "body")]
    return tuple(out)


def receive_field(scene: Scene) -> np.ndarray:
    """RX: a linear +-20 % gradient along the second axis, median 1 inside the brain."""
    y = np.linspace(-0.2, 0.2, scene.shape[1])[None, :, None]
    rx = np.broadcast_to(1.0 + y, scene.shape).astype(np.float64)
    return rx / float(np.median(rx[scene.brain])) if scene.brain.any() else rx


def mpm_signal(pd, t1, t2star, mtsat, b1, flip: float, te: float, mt: bool) -> np.ndarray:
    """Noiseless magnitude of one MPM echo (module docstring), ``GAIN`` included.

    Parameters
    ----------
    pd, t1, t2star, mtsat, b1 : array_like
        Water fraction, T1 (s), T2* (s), MT saturation (p.u.), relative B1+.
    flip : float
        Nominal flip angle, degrees.
    te : float
        Echo time, s.
    mt : bool
        Whether the MT pulse is on.

    Returns
    -------
    ndarray
    """
    t1 = np.asarray(t1, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.deg2rad(flip) * np.asarray(b1, dtype=float)
        x = 1.0 - np.asarray(mtsat, dtype=float) / 100.0 if mt else 1.0
        e1 = np.exp(-TR / np.where(t1 > 0, t1, np.inf))
        ss = np.sin(a) * x * (1 - e1) / (1 - x * e1 * np.cos(a))
        decay = np.exp(-te / np.where(np.asarray(t2star) > 0, t2star, np.inf))
    return np.nan_to_num(GAIN * np.asarray(pd) * ss * decay)


def write_mpm(scene: Scene) -> None:
    """Write the PDw/T1w/MTw echoes (``anat/*_MPM``), their sidecars and the truth maps.

    Parameters
    ----------
    scene : Scene
        Uses ``truth`` (``T1``, ``T2star``, ``PD``, ``MTsat``, ``B1``), ``brain`` and ``snr``.
    """
    rng = scene.rng("mpm")
    tr = scene.truth
    brain = scene.brain
    t1, t2s = np.where(brain, tr["T1"], 0.0), np.where(brain, tr["T2star"], 0.0)
    pd, mts = np.where(brain, tr["PD"], 0.0), np.where(brain, tr["MTsat"], 0.0)
    b1 = tr["B1"]
    rx = receive_field(scene)
    wm = nominal_wm()
    sigma = (
        float(mpm_signal(wm["PD"], wm["T1"], wm["T2star"], 0.0, 1.0, 6.0, ECHO_SPACING, False))
        / scene.snr
    )
    for acq, (fi, flip, mt, n) in CONTRASTS.items():
        state = "on" if mt else "off"
        for k in range(1, n + 1):
            te = round(ECHO_SPACING * k, 6)
            clean = rx * mpm_signal(pd, t1, t2s, mts, b1, flip, te, mt)
            real = clean + rng.normal(0.0, sigma, clean.shape)
            noisy = np.hypot(real, rng.normal(0.0, sigma, clean.shape)).astype(np.float32)
            meta = {
                "PulseSequenceType": "Multi-echo spoiled gradient echo (MPM)",
                "MRAcquisitionType": "3D",
                "EchoTime": te,
                "FlipAngle": flip,
                "RepetitionTimeExcitation": TR,
                "MTState": mt,
                **(MT_PULSE if mt else {}),
            }
            path = scene.raw_path("anat", f"acq-{acq}_echo-{k}_flip-{fi}_mt-{state}_MPM.nii.gz")
            step = max(sigma / QUANT_PER_SIGMA, float(noisy.max()) / 30000.0)
            scene.save(path, noisy, meta, dtype=np.int16, step=step)
    _write_rb1cor(scene, rx, (pd, t1, t2s, b1), sigma, rng)
    about = {
        "SNRFirstPDwEchoWM": float(scene.snr),
        "ForwardModel": "ideal-spoiling FLASH, Helms MT",
    }
    with np.errstate(divide="ignore"):
        r1 = np.where(brain & (t1 > 0), 1.0 / np.where(t1 > 0, t1, 1.0), np.nan)
        r2s = np.where(brain & (t2s > 0), 1.0 / np.where(t2s > 0, t2s, 1.0), np.nan)
    scene.save_truth("anat", "desc-MPM_R1map", r1, Units="1/s", **about)
    scene.save_truth("anat", "desc-MPM_R2starmap", r2s, Units="1/s", **about)
    scene.save_truth("anat", "desc-MPM_PDmap", np.where(brain, GAIN * pd, np.nan),
                     Units="arbitrary", Scale=f"GAIN x PD, GAIN = {GAIN:g}", **about)  # fmt: skip
    scene.save_truth("anat", "desc-MPM_MTsat", np.where(brain, mts, np.nan),
                     Units="percent units", **about)  # fmt: skip
    scene.save_truth("anat", "desc-MPM_RB1map", np.where(brain, rx, np.nan),
                     Units="arbitrary", **about)  # fmt: skip
    logger.debug("sub-%s: MPM %d echoes, sigma %.3g", scene.subject, len(file_names()), sigma)


def _write_rb1cor(scene: Scene, rx, maps, sigma: float, rng: np.random.Generator) -> None:
    """The head/body receive pair, ``IntendedFor`` the PDw echoes."""
    pd, t1, t2s, b1 = maps
    with np.errstate(divide="ignore", invalid="ignore"):
        a, e1 = np.deg2rad(6.0) * b1, np.exp(-0.006 / np.where(t1 > 0, t1, np.inf))
        decay = np.exp(-0.0022 / np.where(t2s > 0, t2s, np.inf))
    body = np.nan_to_num(GAIN * pd * np.sin(a) * (1 - e1) / (1 - e1 * np.cos(a)) * decay)
    pdw = [n for dt, n in file_names() if "acq-PDw" in n]
    targets = [
        f"bids::{scene.raw_path('anat', n).relative_to(scene.root).as_posix()}" for n in pdw
    ]
    meta = {
        "PulseSequenceType": "Spoiled gradient echo (receive sensitivity)",
        "MRAcquisitionType": "3D",
        "EchoTime": 0.0022,
        "FlipAngle": 6.0,
        "RepetitionTimeExcitation": 0.006,
        "MTState": False,
        "IntendedFor": targets,
    }
    for coil, clean in (("head", rx * body), ("body", body)):
        real = clean + rng.normal(0.0, sigma, clean.shape)
        noisy = np.hypot(real, rng.normal(0.0, sigma, clean.shape)).astype(np.float32)
        step = max(sigma / QUANT_PER_SIGMA, float(noisy.max()) / 30000.0)
        path = scene.raw_path("fmap", f"acq-{coil}PDw_RB1COR.nii.gz")
        scene.save(path, noisy, meta, dtype=np.int16, step=step)
