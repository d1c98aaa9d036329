"""Synthetic single-delay pCASL with the M0 included (series writer ``write_asl_single``).

The white paper's recommended protocol (Alsop et al. 2015): labelling 1.8 s, one
post-labelling delay of 1.8 s, :data:`PAIRS` control/label pairs, and one M0 volume at the
start of the same series (``M0Type`` ``"Included"``, ``aslcontext`` ``m0scan``), written as
``perf/<prefix>_acq-single_asl.nii.gz``. Truth maps, forward model and noise as in
:mod:`bids_app.synth.asl_series` (its CBF/ATT by tissue and its kinetic model, with the SNR
of the mean GM difference over the pairs = :data:`SNR_MEAN_DIFFERENCE`); the truth is
``acq-single_cbf``. GM and WM transit times (1.2, 1.5 s) are shorter than the delay, as the
single-delay equation assumes; in the most severe lesions (transit up to 1.9 s) they are not,
and the single-delay CBF is low there, as it is on a scanner.

References
----------
Alsop DC, Detre JA, Golay X, et al. Magn Reson Med 2015;73:102-116.
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.synth.asl_series import (
    CBF,
    METADATA,
    QUANT_PER_SIGMA,
    TAU,
    TR_ASL,
    _rician,
    delta_m,
    truth_maps,
)
from bids_app.synth.protocol import GAIN
from bids_app.synth.scene import GM, Scene
from bids_app.synth.tissue import NOMINAL

logger = logging.getLogger(__name__)

PLD = 1.8
PAIRS = 10
SNR_MEAN_DIFFERENCE = 30.0


def write_asl_single(scene: Scene) -> None:
    """Write ``perf/<prefix>_acq-single_asl.nii.gz`` (+ json, aslcontext) and its CBF truth.

    Parameters
    ----------
    scene : Scene
        Uses ``dseg``, ``severity``, ``patient``, ``truth['T1']`` and ``truth['PD']``.
    """
    rng = scene.rng("asl_single")
    cbf, att = truth_maps(scene, rng)
    t1 = np.where(scene.brain, scene.truth["T1"], 1.0)
    m0 = np.where(scene.brain, GAIN * scene.truth["PD"], 0.0)
    dm = delta_m(cbf, att, PLD, m0)
    control = m0 * -np.expm1(-TR_ASL / t1)
    pairs = np.stack([control, control - dm], axis=-1)
    # the included M0 volume is acquired with the series' TR (no labelling, no suppression)
    clean = np.concatenate([control[..., None], np.tile(pairs, PAIRS)], axis=-1)
    gm_dm = float(delta_m(CBF[GM], 1.2, PLD, GAIN * NOMINAL["GM"]["PD"]))
    sigma = gm_dm * np.sqrt(PAIRS) / (SNR_MEAN_DIFFERENCE * np.sqrt(2.0))
    noisy = _rician(clean, sigma, rng)
    step = max(sigma / QUANT_PER_SIGMA, float(noisy.max()) / 30000.0)
    path = scene.raw_path("perf", "acq-single_asl.nii.gz")
    meta = {
        **METADATA,
        "M0Type": "Included",
        "PostLabelingDelay": [0.0] + [PLD] * (2 * PAIRS),
        "TotalAcquiredPairs": PAIRS,
    }
    scene.save(path, noisy, meta, dtype=np.int16, step=step)
    rows = "m0scan\n" + "".join("control\nlabel\n" for _ in range(PAIRS))
    path.with_name(path.name.replace("_asl.nii.gz", "_aslcontext.tsv")).write_text(
        "volume_type\n" + rows
    )
    about = {
        "SNRMeanDifference": SNR_MEAN_DIFFERENCE,
        "ForwardModel": "single-compartment kinetic model, T1app = T1 blood (white paper)",
        "LabelingDuration": TAU,
        "PostLabelingDelay": PLD,
    }
    scene.save_truth("perf", "acq-single_cbf", cbf, Units="mL/100g/min", **about)
    logger.debug("sub-%s: single-delay ASL, sigma %.3g", scene.subject, sigma)
