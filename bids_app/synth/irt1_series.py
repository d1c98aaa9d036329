"""Series writer ``irt1``: an inversion-recovery spin-echo T1 series, with its truth.

Protocol (the same for every subject): five magnitude images ``anat/<prefix>_inv-<i>_IRT1``
at ``TI`` = :data:`INVERSION_TIMES` (50 ms to 2.5 s), ``RepetitionTimePreparation`` 4 s
(inversion to inversion), TE 12 ms; ``InversionTime`` and the shared keys in each file's
sidecar (a subject-level ``anat/<prefix>_IRT1.json`` is not valid BIDS: the validator asks for
the ``inv`` entity; inheritance from the dataset's ``IRT1.json`` is tested on qmri_irt1).

Forward model, written here independently of the fit (:mod:`bids_app.models.relaxometry.
_irt1_fit`): an inversion pulse of angle ``theta = 180 deg x B1`` and a readout excitation of
``alpha = 90 deg x B1`` that leaves ``Mz cos(alpha)`` (refocusing and readout-train effects
ignored), steady state over TR (Bloch equations between the pulses)::

    Mz(TI) / M0 = [1 - (1 - cos theta) exp(-TI/T1) - cos theta exp(-TR/T1)]
                  / (1 - cos theta cos alpha exp(-TR/T1))

and ``S = GAIN PD sin(alpha) exp(-TE/T2) |Mz(TI)| / M0`` with Rician noise of SD ``S(WM,
nominal, B1 = 1, longest TI) / SNR``. The signal is ``a + b exp(-TI/T1)`` exactly, with the
inversion efficiency ``-b/a = (1 - cos theta) / (1 - cos theta exp(-TR/T1))`` and ``a`` the
``TI -> infinity`` signal; the truth maps (``derivatives/truth``) are ``desc-IR_T1map`` (s),
``desc-IR_M0map`` (``a``) and ``desc-IR_InvEffmap`` (``-b/a``), NaN outside the brain.

References
----------
Barral JK, Gudmundson E, Stikov N, et al. A robust methodology for in vivo T1 mapping.
Magn Reson Med 2010;64:1057-1067.
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.synth import writer
from bids_app.synth.protocol import COMMON_METADATA, GAIN
from bids_app.synth.scene import Scene
from bids_app.synth.signals import complex_noise
from bids_app.synth.tissue import NOMINAL

logger = logging.getLogger(__name__)

#: inversion times (s) of the protocol
INVERSION_TIMES = (0.05, 0.2, 0.5, 1.1, 2.5)
TI_MAX = max(INVERSION_TIMES)
#: inversion repetition time and spin-echo echo time (s)
TR_IR, TE_IR = 4.0, 0.012
#: raw images are int16 with this many quantisation steps per noise s.d.
QUANT_PER_SIGMA = 8
SHARED_METADATA = {
    "PulseSequenceType": "IR-SE (synthetic)",
    "RepetitionTimePreparation": TR_IR,
    "EchoTime": TE_IR,
    "FlipAngle": 90,
    "MRAcquisitionType": "2D",
}


def ir_magnetisation(t1, b1, ti, tr: float = TR_IR):
    """``Mz(TI) / M0`` of the steady state in the module docstring (signed).

    Parameters
    ----------
    t1, b1 : array_like
        T1 (s) and relative B1+ (inversion angle 180 x B1, excitation 90 x B1).
    ti : array_like
        Inversion time (s), broadcast against ``t1``.
    tr : float
        Inversion repetition time (s).

    Returns
    -------
    ndarray

    Examples
    --------
    >>> float(np.round(ir_magnetisation(1.0, 1.0, np.log(2.0), tr=np.inf), 12))
    0.0
    """
    t1 = np.asarray(t1, dtype=float)
    theta, alpha = np.pi * np.asarray(b1, dtype=float), 0.5 * np.pi * np.asarray(b1, dtype=float)
    e_tr = np.exp(-tr / t1)
    num = 1.0 - (1.0 - np.cos(theta)) * np.exp(-np.asarray(ti) / t1) - np.cos(theta) * e_tr
    return num / (1.0 - np.cos(theta) * np.cos(alpha) * e_tr)


def truth_maps(scene: Scene) -> dict[str, np.ndarray]:
    """T1 (s), the apparent M0 ``a`` and the inversion efficiency ``-b/a`` (NaN outside)."""
    brain = scene.brain
    t1 = np.where(brain, scene.truth["T1"], np.nan)
    b1 = scene.truth["B1"]
    theta = np.pi * b1
    e_tr = np.exp(-TR_IR / t1)
    with np.errstate(invalid="ignore"):
        eff = (1.0 - np.cos(theta)) / (1.0 - np.cos(theta) * e_tr)
        a = ir_magnetisation(t1, b1, np.inf) * _readout(scene)
    return {"T1": t1, "M0": np.where(brain, a, np.nan), "InvEff": np.where(brain, eff, np.nan)}


def _readout(scene: Scene) -> np.ndarray:
    """``GAIN PD sin(alpha) exp(-TE/T2)`` (0 outside the brain)."""
    t2 = np.where(scene.brain, scene.truth["T2"], 1.0)
    return np.where(
        scene.brain,
        GAIN * scene.truth["PD"] * np.sin(0.5 * np.pi * scene.truth["B1"]) * np.exp(-TE_IR / t2),
        0.0,
    )


def noise_sd(snr: float) -> float:
    """Noise SD: nominal WM signal (B1 = 1) at the longest TI over ``snr``."""
    wm = NOMINAL["WM"]
    s = GAIN * wm["PD"] * np.exp(-TE_IR / wm["T2"]) * ir_magnetisation(wm["T1"], 1.0, TI_MAX)
    return float(s / snr)


def write_irt1(scene: Scene) -> None:
    """Write ``anat/<prefix>_inv-<i>_IRT1.nii.gz`` (+ json), the shared sidecar and the truth.

    Parameters
    ----------
    scene : Scene
        Uses ``brain``, ``truth['T1']``, ``truth['T2']``, ``truth['PD']``, ``truth['B1']``
        and ``snr``; noise from ``scene.rng('irt1')``.
    """
    rng = scene.rng("irt1")
    sigma = noise_sd(scene.snr)
    t1 = np.where(scene.brain, scene.truth["T1"], 1.0)
    readout = _readout(scene)
    for i, ti in enumerate(INVERSION_TIMES, start=1):
        clean = np.abs(readout * ir_magnetisation(t1, scene.truth["B1"], ti))
        real, imag = complex_noise(clean, sigma, rng)
        noisy = np.hypot(real, imag)
        step = max(sigma / QUANT_PER_SIGMA, float(noisy.max()) / 30000.0)
        path = scene.raw_path("anat", f"inv-{i}_IRT1.nii.gz")
        scene.save(path, noisy, None, dtype=np.int16, step=step)
        writer.write_json(
            path.with_name(f"{scene.prefix}_inv-{i}_IRT1.json"),
            {"InversionTime": ti, **SHARED_METADATA, **COMMON_METADATA},
        )
    about = {"SNR": scene.snr, "NoiseSigma": sigma, "ForwardModel": "IR-SE steady state"}
    truth = truth_maps(scene)
    scene.save_truth("anat", "desc-IR_T1map", truth["T1"], Units="s", **about)
    scene.save_truth("anat", "desc-IR_M0map", truth["M0"], Units="arbitrary", **about)
    scene.save_truth("anat", "desc-IR_InvEffmap", truth["InvEff"], Units="ratio", **about)
    logger.debug("sub-%s: IRT1 %d inversion times, sigma %.3g", scene.subject, i, sigma)
