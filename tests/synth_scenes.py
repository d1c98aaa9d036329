"""Small hand-built scenes for the series-writer tests (``bids_app.synth.scene.Scene``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bids_app.synth.scene import CSF, GM, LESION, WM, Scene
from bids_app.synth.tissue import NOMINAL

TISSUES = {GM: "GM", WM: "WM", CSF: "CSF", LESION: "lesion"}


def block_scene(
    root: Path,
    dseg: np.ndarray,
    *,
    keys: tuple[str, ...],
    snr: float,
    seed: int,
    b1: np.ndarray | None = None,
) -> Scene:
    """A patient scene on ``dseg`` (labels of :mod:`bids_app.synth.scene`), 2 mm voxels.

    Parameters
    ----------
    root : Path
        Raw dataset root (see :func:`raw_root`).
    dseg : (X, Y, Z) uint8 ndarray
    keys : tuple of str
        Truth maps filled with the nominal tissue values (``T1``, ``PD``, ...).
    snr : float
    seed : int
        Entropy of the scene's seed sequence.
    b1 : (X, Y, Z) ndarray, optional
        The ``B1`` truth map.

    Returns
    -------
    Scene
        Lesion severity 1, one lesion label.
    """
    truth = {k: np.zeros(dseg.shape) for k in keys}
    for label, tissue in TISSUES.items():
        for k in truth:
            truth[k][dseg == label] = NOMINAL[tissue][k]
    if b1 is not None:
        truth["B1"] = b1
    return Scene(
        root=root,
        subject="01",
        session=None,
        patient=True,
        affine=np.diag([2.0, 2.0, 2.0, 1.0]),
        dseg=dseg,
        severity=np.where(dseg == LESION, 1.0, 0.0),
        lesion_ids=(dseg == LESION).astype(int),
        truth=truth,
        snr=snr,
        seed=np.random.SeedSequence(seed),
    )


def b1_gradient(shape: tuple[int, int, int], lo: float = 0.8, hi: float = 1.2) -> np.ndarray:
    """A B1 map rising linearly from ``lo`` to ``hi`` along the first axis."""
    return np.broadcast_to(np.linspace(lo, hi, shape[0])[:, None, None], shape).copy()


def raw_root(root: Path, name: str) -> Path:
    """``root`` with a raw ``dataset_description.json`` named ``name``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": name, "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    return root
