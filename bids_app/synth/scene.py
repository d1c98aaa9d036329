"""One synthetic subject/session as the 4-D series writers see it (DWI, QSM phase, ASL, ...).

The 3-D relaxometry/MT protocol is written by :mod:`bids_app.synth.dataset` itself; every
other modality is a *series writer*: a function ``write(scene: Scene) -> None`` in its own
module that writes its raw images (``scene.raw_path``) and its truth maps
(``scene.truth_path``). :data:`bids_app.synth.series.SERIES_WRITERS` lists them in the
order they run; each gets its own noise generator (``scene.rng(name)``), so adding a
modality never changes the images of another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bids_app.synth import writer
from bids_app.synth.protocol import COMMON_METADATA

#: labels of :class:`bids_app.synth.anatomy.Anatomy` (and 4 = lesion in ``dseg``)
GM, WM, CSF, LESION = 1, 2, 3, 4


@dataclass(frozen=True)
class Scene:
    """What a series writer needs to know about one subject/session.

    Attributes
    ----------
    root : Path
        Raw dataset root.
    subject, session : str, str or None
        Labels without ``sub-``/``ses-``.
    patient : bool
        Patient (lesions possible) or control.
    affine : (4, 4) ndarray
        Subject grid affine (mm).
    dseg : (X, Y, Z) uint8 ndarray
        0 background, 1 GM, 2 WM (NAWM), 3 CSF, 4 lesion.
    severity : (X, Y, Z) float ndarray
        Local lesion severity, 0 outside lesions, 1 = the nominal lesion value.
    lesion_ids : (X, Y, Z) int ndarray
        One label per lesion, 0 outside lesions.
    truth : dict of (X, Y, Z) ndarray
        The relaxometry truth maps (``T1``, ``T2``, ``T2star``, ``PD``, ``MTsat``, ``B1``).
    snr : float
        WM SNR of each collection's first volume.
    seed : numpy.random.SeedSequence
        The subject/session's noise seed sequence (see :meth:`rng`).
    megre : dict
        Echo time (s) -> ``(real, imag)`` (X, Y, Z) float32 channels of the noisy MEGRE echo
        before the field phase (the written magnitude is their ``hypot``), for the phase.
    megre_metadata : dict
        Echo time (s) -> the magnitude image's sidecar fields.
    """

    root: Path
    subject: str
    session: str | None
    patient: bool
    affine: np.ndarray
    dseg: np.ndarray
    severity: np.ndarray
    lesion_ids: np.ndarray
    truth: dict[str, np.ndarray]
    snr: float
    seed: np.random.SeedSequence
    megre: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    megre_metadata: dict[float, dict[str, Any]] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return tuple(int(n) for n in self.dseg.shape)

    @property
    def brain(self) -> np.ndarray:
        """(X, Y, Z) bool: GM, WM, CSF or lesion."""
        return self.dseg > 0

    @property
    def prefix(self) -> str:
        """``sub-<label>[_ses-<label>]``."""
        return writer.entity_prefix(self.subject, self.session)

    def rng(self, name: str) -> np.random.Generator:
        """A generator for the writer ``name``, independent of every other writer's."""
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
        return np.random.default_rng(
            np.random.SeedSequence(self.seed.entropy, spawn_key=(*self.seed.spawn_key, 1000 + key))
        )

    def raw_path(self, datatype: str, name: str) -> Path:
        """``<root>/sub-X[/ses-Y]/<datatype>/<prefix>_<name>``."""
        return (
            writer.subject_dir(self.root, self.subject, self.session)
            / datatype
            / (f"{self.prefix}_{name}")
        )

    def truth_path(self, datatype: str, name: str) -> Path:
        """The same below ``derivatives/truth``."""
        base = writer.subject_dir(self.root / "derivatives" / "truth", self.subject, self.session)
        return base / datatype / f"{self.prefix}_{name}"

    def save(self, path: Path, data: np.ndarray, meta: dict[str, Any] | None, **kw) -> None:
        """Write ``data`` (float32 unless ``dtype=``/``step=`` are given) and its sidecar."""
        kw.setdefault("dtype", np.float32)
        writer.save_nifti(path, np.asarray(data), self.affine, **kw)
        if meta is not None:
            name = path.name.removesuffix(".nii.gz")
            writer.write_json(path.with_name(name + ".json"), {**meta, **COMMON_METADATA})

    def save_truth(self, datatype: str, name: str, data: np.ndarray, **meta: Any) -> None:
        """Write a float32 truth map ``<prefix>_<name>.nii.gz`` with a small sidecar."""
        self.save(self.truth_path(datatype, name + ".nii.gz"), data.astype(np.float32), meta)
