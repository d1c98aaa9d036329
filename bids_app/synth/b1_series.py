"""Synthetic B1+ acquisitions of every measured BIDS type from ``scene.truth['B1']``.

Series writers (``msqmri-synth --series b1tfl b1epi b1srge``), each writing one B1 map
type beside the protocol's ``TB1map`` and on its grid (voxels 2x coarser than the subject
grid: the noiseless signals of each 2x2x2 block of subject voxels are averaged, partial
volume included, then the noise is added). The ``b1`` model takes the first
type present (``TB1map`` first), so a dataset meant to exercise one of them leaves the
others (and the ``TB1map``) out. The forward models are written here, independently of
:mod:`bids_app.models.b1`:

``b1tfl`` (``fmap/*_acq-{anat,famp}_TB1TFL``)
    The Siemens ``tfl_b1map`` pair: ``famp`` = actual flip angle of the nominal 38° in
    tenths of a degree (int16), with Gaussian noise of 0.01 in B1; ``anat`` = a proton
    density image (GAIN PD, Rician noise at the scene's SNR).
``b1epi`` (``fmap/*_echo-{1,2}_flip-<i>_TB1EPI``)
    3D-EPI SE/STE at nominal angles 65°-115° (step 5°, the hMRI protocol): with ``θ = B1 α``,
    ``SE = G PD |sin³θ| exp(-TE/T2)`` and ``STE = G PD |sin³θ cos θ| exp(-TM/T1) exp(-TE/T2)``
    (pulses α-2α-α, both echoes with the same transverse time), the voxel's own T1 and T2;
    Rician noise with σ = (WM SE at θ = 90°) / SNR.
``b1srge`` (``fmap/*_flip-{1,2}_inv-{1,2}_TB1SRGE``)
    SA2RAGE (Eggenschwiler et al. 2012) at 3 T timing: saturation ``cos(B1 · 90°)``, trains of
    16 + 32 GRE pulses (4° and 11°, 2.8 ms apart) centred 47 ms and 1.8 s after it, TR 2.4 s,
    walked pulse by pulse into the periodic steady state with the voxel's T1. The images are
    phase-sensitive (signed, as ``S1`` changes sign above B1 ≈ 1.05): Gaussian noise with
    σ = (WM ``S2`` at B1 = 1) / SNR.
"""

from __future__ import annotations

import logging

import numpy as np

from bids_app.synth import writer
from bids_app.synth.anatomy import downsample_affine
from bids_app.synth.protocol import COMMON_METADATA, GAIN
from bids_app.synth.scene import WM, Scene

logger = logging.getLogger(__name__)

TFL_FLIP = 38.0
TFL_B1_NOISE = 0.01
EPI_FLIPS = tuple(float(f) for f in range(65, 120, 5))
EPI_TE, EPI_TM = 0.039, 0.0338
SRGE = {
    "tr": 2.4,
    "delays": (0.047, 1.8),
    "flips": (4.0, 11.0),
    "tr_exc": 0.0028,
    "shots": (16, 32),
    "te": 0.00081,
}


def coarse(x: np.ndarray) -> np.ndarray:
    """Mean over 2x2x2 blocks (edge-padded to even sizes): the grid of the ``TB1map``."""
    x = np.asarray(x, dtype=np.float64)
    pad = [(0, n % 2) for n in x.shape[:3]] + [(0, 0)] * (x.ndim - 3)
    x = np.pad(x, pad, mode="edge")
    nx, ny, nz = (n // 2 for n in x.shape[:3])
    return x.reshape(nx, 2, ny, 2, nz, 2, *x.shape[3:]).mean(axis=(1, 3, 5))


def _save(scene: Scene, name: str, data: np.ndarray, meta: dict, **kw) -> None:
    """Write ``fmap/<prefix>_<name>`` on the coarse grid, with its sidecar."""
    path = scene.raw_path("fmap", name)
    kw.setdefault("dtype", np.float32)
    writer.save_nifti(path, data, downsample_affine(scene.affine, 2), **kw)
    writer.write_json(path.with_name(path.name.removesuffix(".nii.gz") + ".json"),
                      {**meta, **COMMON_METADATA})  # fmt: skip


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    real = signal + rng.normal(0.0, sigma, signal.shape)
    return np.hypot(real, rng.normal(0.0, sigma, signal.shape)).astype(np.float32)


def _tissue(scene: Scene) -> tuple[np.ndarray, ...]:
    """B1, T1, T2, T2*, PD with harmless values outside the brain (PD 0 there)."""
    brain = scene.brain
    t = scene.truth
    b1 = np.asarray(t["B1"], dtype=np.float64)
    t1 = np.where(brain, t["T1"], 1.0)
    t2 = np.where(brain, t.get("T2", np.full(scene.shape, 0.08)), 0.08)
    t2s = np.where(brain, t.get("T2star", np.full(scene.shape, 0.05)), 0.05)
    pd = np.where(brain, t["PD"], 0.0)
    return b1, t1, t2, t2s, pd


def write_b1_tfl(scene: Scene) -> None:
    """Write the ``acq-famp`` and ``acq-anat`` TB1TFL images (+ sidecars)."""
    rng = scene.rng("b1tfl")
    b1, _, _, _, pd = _tissue(scene)
    b1 = coarse(b1)
    famp = 10.0 * TFL_FLIP * (b1 + rng.normal(0.0, TFL_B1_NOISE, b1.shape))
    wm_pd = float(np.median(pd[scene.dseg == WM])) if (scene.dseg == WM).any() else 0.7
    anat = _rician(GAIN * coarse(pd), GAIN * wm_pd / scene.snr, rng)
    meta = {"FlipAngle": TFL_FLIP, "SequenceName": "tfl_b1_map", "EchoTime": 0.00197}
    _save(scene, "acq-famp_TB1TFL.nii.gz", famp, meta, dtype=np.int16, step=1.0)
    _save(scene, "acq-anat_TB1TFL.nii.gz", anat, meta)


def write_b1_epi(scene: Scene) -> None:
    """Write the SE (``echo-1``) and STE (``echo-2``) TB1EPI images of every nominal angle."""
    rng = scene.rng("b1epi")
    b1, t1, t2, _, pd = _tissue(scene)
    wm_pd = float(np.median(pd[scene.dseg == WM])) if (scene.dseg == WM).any() else 0.7
    sigma = GAIN * wm_pd * np.exp(-EPI_TE / 0.075) / scene.snr
    common = {"MixingTime": EPI_TM, "RepetitionTimeExcitation": 0.5, "TotalReadoutTime": 0.0336}
    for i, flip in enumerate(EPI_FLIPS, start=1):
        theta = np.deg2rad(flip) * b1
        se = GAIN * pd * np.abs(np.sin(theta) ** 3) * np.exp(-EPI_TE / t2)
        ste = se * np.abs(np.cos(theta)) * np.exp(-EPI_TM / t1)
        for echo, img, te in ((1, se, EPI_TE), (2, ste, EPI_TE + EPI_TM)):
            meta = {**common, "FlipAngle": flip, "EchoTime": te}
            name = f"echo-{echo}_flip-{i}_TB1EPI.nii.gz"
            _save(scene, name, _rician(coarse(img), sigma, rng), meta)


def sa2rage_mz(b1: np.ndarray, t1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed ``(S1, S2)`` per voxel (M0 = 1) of the :data:`SRGE` protocol, pulse by pulse."""
    p = SRGE
    before, after = p["shots"]
    events: list[tuple[str, np.ndarray | float]] = [("sat", b1 * np.pi / 2)]
    t, centres = 0.0, []
    for delay, flip in zip(p["delays"], p["flips"], strict=True):
        start = delay - before * p["tr_exc"]
        events.append(("wait", start - t))
        for k in range(before + after):
            events.append(("read" if k == before else "rf", np.deg2rad(flip) * b1))
            events.append(("wait", p["tr_exc"]))
        t = start + (before + after) * p["tr_exc"]
    events.append(("wait", p["tr"] - t))

    def affine(kind, value):  # the event as Mz -> alpha Mz + beta
        if kind == "wait":
            e = np.exp(-value / t1)
            return e, 1.0 - e
        return np.cos(value), 0.0

    a, b = np.ones_like(b1), np.zeros_like(b1)  # one period, from just before the saturation
    for kind, value in events:
        alpha, beta = affine(kind, value)
        a, b = alpha * a, alpha * b + beta
    mz = b / (1.0 - a)
    for kind, value in events:
        if kind == "read":
            centres.append(np.sin(value) * mz)
        alpha, beta = affine(kind, value)
        mz = alpha * mz + beta
    return centres[0], centres[1]


def write_b1_srge(scene: Scene) -> None:
    """Write the two phase-sensitive SA2RAGE images (``flip-1_inv-1``, ``flip-2_inv-2``)."""
    rng = scene.rng("b1srge")
    b1, t1, _, t2s, pd = _tissue(scene)
    s1, s2 = sa2rage_mz(b1, t1)
    decay = GAIN * pd * np.exp(-SRGE["te"] / t2s)
    wm = scene.dseg == WM
    ref = sa2rage_mz(np.array([1.0]), np.array([float(np.median(t1[wm])) if wm.any() else 0.85]))
    wm_pd = float(np.median(pd[wm])) if wm.any() else 0.7
    sigma = GAIN * wm_pd * abs(float(ref[1][0])) / scene.snr
    before, after = SRGE["shots"]
    for k, img in enumerate((s1, s2)):
        meta = {
            "RepetitionTimePreparation": SRGE["tr"],
            "RepetitionTimeExcitation": SRGE["tr_exc"],
            "InversionTime": SRGE["delays"][k],
            "FlipAngle": SRGE["flips"][k],
            "NumberShots": [before, after],
            "EchoTime": SRGE["te"],
        }
        clean = coarse(decay * img)
        noisy = clean + rng.normal(0.0, sigma, clean.shape)
        _save(scene, f"flip-{k + 1}_inv-{k + 1}_TB1SRGE.nii.gz", noisy, meta)
