"""Synthetic MP2RAGE with magnitude and phase of both inversions (series writer ``write_mp2rage``).

Protocol: the 3 T MP2RAGE of Marques et al. (2010): ``TI`` 0.7/2.5 s, flip angles 4°/5°,
``RepetitionTimeExcitation`` 7 ms, ``RepetitionTimePreparation`` 5 s, 176 partitions with
slice partial Fourier 6/8 (44 excitations before the k-space centre, 88 from it on), TE
3 ms, inversion efficiency 0.96.

Forward model, written here independently of the fitting code
(:mod:`bids_app.models.relaxometry._mp2rage_physics`, which sums each readout block in
closed form): the longitudinal magnetisation of every voxel is carried *excitation by
excitation* through one cycle as an affine function ``M = A M_start + B`` of the
magnetisation before the inversion (inversion ``M -> -0.96 M``; each excitation
``M -> cos(B1 α) M``; relaxation over ``t`` ``M -> 1 - (1 - M) exp(-t/T1)``), and the
steady state is the fixed point ``M_start = B / (1 - A)``. The complex signal of block
``j`` is ``GAIN PD sin(B1 α_j) M_j exp(-TE/T2*) exp(iφ)``, with ``M_j`` just before the
k-space centre excitation and ``φ`` a smooth background phase shared by both inversions.
Complex Gaussian noise of s.d. σ (per channel) is added, with σ such that the WM inv-2
magnitude has the scene's SNR; magnitude and phase (radians) are written.

Truth: ``desc-MP2RAGE_T1map`` (s; the scene's T1) and the noiseless ``UNIT1``.

``write_mp2rageme`` writes the multi-echo variant (Caan et al. 2019) as ``acq-me``: the same
first inversion, a second inversion at 3.0 s read with four echoes (TE 3-22.5 ms,
``RepetitionTimeExcitation`` 28 ms), ``RepetitionTimePreparation`` 6 s; the truth
``acq-me_UNIT1`` (the R2* truth is the scene's ``R2starmap``).

References
----------
Marques JP, Kober T, Krueger G, et al. NeuroImage 2010;49:1271-1281.
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.synth.protocol import GAIN
from bids_app.synth.scene import WM, Scene

logger = logging.getLogger(__name__)

TI = (0.7, 2.5)
FLIP = (4.0, 5.0)
TR_EXC = 0.007
TR_PREP = 5.0
NUMBER_SHOTS = 176
SLICE_PARTIAL_FOURIER = 0.75
BEFORE, AFTER = 44, 88  # 176 (0.75 - 0.5), 176 / 2
TE = 0.003
INVERSION_EFFICIENCY = 0.96
#: MP2RAGE-ME (``acq-me``): second inversion time, readout TR and echo times, cycle (s)
ME_TI2, ME_TR_EXC, ME_TR_PREP = 3.0, 0.028, 6.0
ME_TE = (0.003, 0.0095, 0.016, 0.0225)
FILES_ME = (
    *(("anat", f"acq-me_inv-1_part-{p}_MP2RAGE.nii.gz") for p in ("mag", "phase")),
    *(
        ("anat", f"acq-me_echo-{k}_inv-2_part-{p}_MP2RAGE.nii.gz")
        for k in range(1, len(ME_TE) + 1)
        for p in ("mag", "phase")
    ),
)


def _relax(state, t, t1):
    a, b = state
    e = np.exp(-t / t1)
    return a * e, b * e + (1.0 - e)


def steady_state_signals(
    t1: np.ndarray,
    b1: np.ndarray,
    *,
    ti: tuple[float, float] = TI,
    tr_exc: tuple[float, float] = (TR_EXC, TR_EXC),
    tr_prep: float = TR_PREP,
) -> tuple[np.ndarray, np.ndarray]:
    """Signed signals per unit M0 of both readouts, by excitation-by-excitation propagation.

    Parameters
    ----------
    t1, b1 : ndarray
        T1 (s, > 0) and relative B1+ of each voxel (same shape).
    ti, tr_exc, tr_prep : tuple, tuple, float
        Inversion times, readout TR of each block and cycle length (s).

    Returns
    -------
    s1, s2 : ndarray
        ``sin(B1 α_j) M_j`` (no T2* or M0 factor).
    """
    t1 = np.asarray(t1, dtype=float)
    b1 = np.asarray(b1, dtype=float)
    state = (np.full_like(t1, -INVERSION_EFFICIENCY), np.zeros_like(t1))
    clock, centres = 0.0, []
    for t_inv, flip, tr in zip(ti, FLIP, tr_exc, strict=True):
        start = t_inv - BEFORE * tr
        state = _relax(state, start - clock, t1)
        cos = np.cos(np.deg2rad(flip) * b1)
        for k in range(BEFORE + AFTER):
            if k == BEFORE:
                centres.append((state, np.sin(np.deg2rad(flip) * b1)))
            state = _relax((state[0] * cos, state[1] * cos), tr, t1)
        clock = start + (BEFORE + AFTER) * tr
    a, b = _relax(state, tr_prep - clock, t1)
    m_start = b / (1.0 - a)
    return tuple(sin * (ca * m_start + cb) for (ca, cb), sin in centres)


def write_mp2rage(scene: Scene) -> None:
    """Write ``anat/<prefix>_inv-<1,2>_part-<mag,phase>_MP2RAGE`` (+ json) and the truth.

    Parameters
    ----------
    scene : Scene
        Uses ``truth['T1']``, ``truth['PD']``, ``truth['B1']``, ``truth['T2star']`` (if
        present), ``dseg`` and ``snr``.
    """
    _write(scene, "mp2rage", "", TI, (TR_EXC, TR_EXC), TR_PREP, (TE,))


def write_mp2rageme(scene: Scene) -> None:
    """Write the ``acq-me`` MP2RAGE-ME: inv-1 and four echoes of inv-2 (module docstring)."""
    _write(scene, "mp2rageme", "acq-me_", (TI[0], ME_TI2), (TR_EXC, ME_TR_EXC), ME_TR_PREP, ME_TE)


def _write(scene, name, acq, ti, tr_exc, tr_prep, echo_times) -> None:
    rng = scene.rng(name)
    brain = scene.brain
    t1 = np.where(brain, scene.truth["T1"], 1.0)
    b1 = np.asarray(scene.truth.get("B1", np.ones(scene.shape)), dtype=float)
    t2s = scene.truth.get("T2star")
    t2s = np.where(brain, t2s, 1.0) if t2s is not None else np.inf
    m0 = np.where(brain, GAIN * scene.truth["PD"], 0.0)
    s1, s2 = steady_state_signals(t1, b1, ti=ti, tr_exc=tr_exc, tr_prep=tr_prep)
    idx = np.indices(scene.shape, dtype=float)
    phase0 = 0.4 * np.pi * (idx[0] / scene.shape[0] - 0.5) + 0.2 * idx[2] / scene.shape[2]
    wm = scene.dseg == WM
    first = m0 * np.abs(s2) * np.exp(-echo_times[0] / t2s)
    sigma = float(np.median(first[wm])) / scene.snr if wm.any() else 1.0
    multi = len(echo_times) > 1
    for k, (s, t_inv, flip, tr) in enumerate(zip((s1, s2), ti, FLIP, tr_exc, strict=True), 1):
        base = {
            "RepetitionTimeExcitation": tr,
            "RepetitionTimePreparation": tr_prep,
            "NumberShots": NUMBER_SHOTS,
            "SlicePartialFourier": SLICE_PARTIAL_FOURIER,
            "MRAcquisitionType": "3D",
            "PulseSequenceType": "MP2RAGE",
            "InversionTime": t_inv,
            "FlipAngle": flip,
        }
        tes = echo_times if k == 2 else echo_times[:1]
        for j, te in enumerate(tes, 1):
            clean = m0 * s * np.exp(-te / t2s) * np.exp(1j * (phase0 + 2 * np.pi * 5.0 * te))
            noise = rng.normal(size=clean.shape) + 1j * rng.normal(size=clean.shape)
            noisy = clean + sigma * noise
            stem = f"{acq}echo-{j}_inv-{k}" if multi and k == 2 else f"{acq}inv-{k}"
            meta = {**base, "EchoTime": te}
            scene.save(
                scene.raw_path("anat", f"{stem}_part-mag_MP2RAGE.nii.gz"), np.abs(noisy), meta
            )
            scene.save(
                scene.raw_path("anat", f"{stem}_part-phase_MP2RAGE.nii.gz"),
                np.angle(noisy),
                {**meta, "Units": "rad"},
            )
    with np.errstate(all="ignore"):
        unit1 = np.where(brain, s1 * s2 / (s1**2 + s2**2), np.nan)
    about = {"ForwardModel": "MP2RAGE steady state, excitation by excitation", "SNR": scene.snr}
    scene.save_truth(
        "anat", f"{acq}desc-MP2RAGE_T1map", np.where(brain, t1, 0.0), Units="s", **about
    )
    scene.save_truth("anat", f"{acq}UNIT1", unit1, Units="arbitrary", **about)
    logger.debug("sub-%s: %s sigma %.3g", scene.subject, name, sigma)
