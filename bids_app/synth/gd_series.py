"""Synthetic post-gadolinium T1w (series writer ``write_gd``): ``anat/*_ce-gadolinium_T1w``.

The enhancing lesions are those of the DCE series
(:func:`bids_app.synth.dce_series.enhancing_labels`: every third lesion, ``k % 3 == 1``),
with the same Ktrans, ve and vp (:func:`bids_app.synth.dce_series.truth_maps`). The
post-contrast image is acquired :data:`DELAY_S` (5 min, the minimum delay of the 2021
MAGNIMS-CMSC-NAIMS recommendations) after a standard-dose bolus: the tissue gadolinium
concentration ``C`` (mM) at that time is the extended Tofts model driven by the Parker
population AIF (:func:`bids_app.synth.dce_series.tofts_curves`; intravascular only,
``vp cp(t)``, outside enhancing lesions). It shortens T1 by the fast-exchange relation

    1 / T1_post = 1 / T1 + r1 C,

with the relaxivity ``r1`` = :data:`bids_app.synth.dce_series.RELAXIVITY` (4.5 /s/mM, in
the 3.5-5 /s/mM range of the gadolinium chelates in plasma at 3 T, Rohrer et al. 2005).
The image is the T1w of the synthetic protocol (:mod:`bids_app.synth.protocol`: the same
MPRAGE-like signal equation, B1, PD and T2* weighting) evaluated with ``T1_post``, with
Rician noise of the protocol's T1w noise level and int16 storage like the T1w.

Truth: ``derivatives/truth/.../anat/<prefix>_ce-gadolinium_T1map`` (post-contrast T1, s;
0 outside the brain) whose sidecar lists ``EnhancingLesions`` (lesion labels of the truth
``desc-lesions_dseg``) and the simulation constants.

References
----------
Rohrer M, Bauer H, Mintorovitch J, Requardt M, Weinmann HJ. Comparison of magnetic
properties of MRI contrast media solutions at different magnetic field strengths. Invest
Radiol 2005;40:715-724.
Wattjes MP et al. 2021 MAGNIMS-CMSC-NAIMS consensus recommendations on the use of MRI in
patients with multiple sclerosis. Lancet Neurol 2021;20:653-670.
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.synth import dce_series
from bids_app.synth.protocol import build_protocol, noise_sigma
from bids_app.synth.scene import Scene
from bids_app.synth.signals import complex_noise

logger = logging.getLogger(__name__)

#: acquisition delay after the injection (s)
DELAY_S = 300.0
#: Ktrans samples (/min) of the concentration table of the leaky voxels
_KTRANS_SAMPLES = 64
QUANT_PER_SIGMA = 8
FILES = (("anat", "ce-gadolinium_T1w.nii.gz"),)


def acquisition_time() -> float:
    """Time of the post-contrast image on the DCE clock (s; injection at INJECTION_S)."""
    return dce_series.INJECTION_S + DELAY_S


def concentration(scene: Scene) -> tuple[np.ndarray, list[int]]:
    """Tissue gadolinium concentration (mM) at :func:`acquisition_time`, enhancing labels.

    Parameters
    ----------
    scene : Scene
        Uses ``dseg``, ``severity`` and ``lesion_ids``.

    Returns
    -------
    conc : (X, Y, Z) float64 ndarray
        0 outside the brain and in CSF (vp 0).
    enhancing : list of int
        Enhancing lesion labels.
    """
    ktrans, _ve, vp, enhancing = dce_series.truth_maps(scene)
    t = np.array([acquisition_time()])
    conc = dce_series.tofts_curves(np.zeros(vp.size), np.zeros(vp.size), vp.ravel(), t)
    conc = conc[:, 0].reshape(vp.shape)
    leaky = ktrans > 0
    if leaky.any():
        # C is smooth in Ktrans (ve fixed): tabulate it, then interpolate per voxel
        grid = np.linspace(ktrans[leaky].min(), ktrans[leaky].max(), _KTRANS_SAMPLES)
        extra = dce_series.tofts_curves(grid, np.full(grid.size, dce_series.ENHANCING_VE),
                                        np.zeros(grid.size), t)[:, 0]  # fmt: skip
        conc[leaky] += np.interp(ktrans[leaky], grid, extra)
    return conc, enhancing


def write_gd(scene: Scene) -> None:
    """Write ``anat/<prefix>_ce-gadolinium_T1w.nii.gz`` (+ json) and its T1 truth.

    Parameters
    ----------
    scene : Scene
        Uses ``truth`` (``T1``, ``PD``, ``T2star``, ``B1``), ``dseg``, ``severity``,
        ``lesion_ids`` and ``snr``.
    """
    rng = scene.rng("gd")
    conc, enhancing = concentration(scene)
    brain = scene.brain
    t1_post = np.zeros(scene.shape)
    t1_post[brain] = 1.0 / (1.0 / scene.truth["T1"][brain] + dce_series.RELAXIVITY * conc[brain])
    protocol = build_protocol()
    t1w = next(vol for vol in protocol if vol.collection == "T1w")
    maps = {key: value[brain] for key, value in scene.truth.items()}
    maps["T1"] = t1_post[brain]
    clean = np.zeros(scene.shape, np.float32)
    clean[brain] = t1w.signal(maps)
    sigma = noise_sigma(protocol, scene.snr)["T1w"]
    noisy = np.hypot(*complex_noise(clean, sigma, rng))
    step = max(sigma / QUANT_PER_SIGMA, float(noisy.max()) / 30000.0)
    meta = {**t1w.metadata, "ContrastBolusIngredient": "GADOLINIUM"}
    scene.save(scene.raw_path(*FILES[0]), noisy, meta, dtype=np.int16, step=step)
    scene.save_truth(
        "anat",
        "ce-gadolinium_T1map",
        t1_post,
        Units="s",
        Description="Ground truth: T1 after gadolinium, 1/T1 + r1 C; 0 outside the brain",
        EnhancingLesions=enhancing,
        Relaxivity=dce_series.RELAXIVITY,
        RelaxivityUnits="1/s/mM",
        DelayAfterInjection=DELAY_S,
        ForwardModel="extended Tofts (Parker AIF) concentration at the delay; T1w signal "
        "equation of the synthetic protocol",
        MaxConcentration=float(conc.max()),
    )
    logger.debug("sub-%s: ce-gadolinium T1w, %d enhancing lesions", scene.subject,
                 len(enhancing))  # fmt: skip
