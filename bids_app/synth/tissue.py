"""Ground-truth tissue parameters at 3 T, their per-subject variation and the B1+ field.

Nominal values (3 T) used for the synthetic subjects:

======  =====  ======  =======  ====  ==========
tissue  T1 s   T2 s    T2* s    PD    MTsat p.u.
======  =====  ======  =======  ====  ==========
GM      1.35   0.090   0.045    0.80  0.8
WM      0.85   0.075   0.050    0.69  1.6
CSF     4.0    1.0     0.5      1.00  0.0
lesion  1.30   0.120   0.065    0.80  0.9
======  =====  ======  =======  ====  ==========

T1 and T2 follow Wansapura et al. [1]_ and Stanisz et al. [2]_ (WM T1 0.83-1.08 s, GM
1.33-1.82 s, WM T2 69-80 ms, GM T2 ~ 99 ms); T2* is rounded from Peters et al. [3]_;
PD is the water content of Neeb et al. [4]_; MTsat (Helms' saturation per TR, percent
units) from Helms et al. [5]_. MS lesions have a longer T1 and T2, a lower MTsat/MTR and a
higher water content, and normal-appearing WM (NAWM) is mildly abnormal: T1 a few percent
longer, MT a few percent lower (review: Granziera et al. [6]_). CSF T1 is set to 4.0 s.

Each subject multiplies every (tissue, parameter) value by ``1 + e`` with
``e ~ N(0, 0.03)`` clipped to +-0.06 (SD 0.01 for CSF, so that FLAIR stays nulled), and
every parameter map by a smooth field of amplitude 2 % (a sum of three plane waves,
wavelengths 120-250 mm). Patients' NAWM gets ``NAWM_CHANGE``. Lesion voxels move from the
subject's NAWM value towards its lesion value by the lesion's local severity
(:mod:`bids_app.synth.lesions`).

References
----------
.. [1] Wansapura JP, Holland SK, Dunn RS, Ball WS. NMR relaxation times in the human
   brain at 3.0 tesla. J Magn Reson Imaging 1999;9:531-538.
.. [2] Stanisz GJ, Odrobina EE, Pun J, et al. T1, T2 relaxation and magnetization
   transfer in tissue at 3T. Magn Reson Med 2005;54:507-512.
.. [3] Peters AM, Brookes MJ, Hoogenraad FG, et al. T2* measurements in human brain at
   1.5, 3 and 7 T. Magn Reson Imaging 2007;25:748-753.
.. [4] Neeb H, Zilles K, Shah NJ. A new method for fast quantitative mapping of absolute
   water content in vivo. NeuroImage 2006;31:1156-1168.
.. [5] Helms G, Dathe H, Kallenberg K, Dechent P. High-resolution maps of magnetization
   transfer with inherent correction for RF inhomogeneity and T1 relaxation obtained
   from 3D FLASH MRI. Magn Reson Med 2008;60:1396-1407.
.. [6] Granziera C, Wuerfel J, Barkhof F, et al. Quantitative magnetic resonance imaging
   towards clinical application in multiple sclerosis. Brain 2021;144:1296-1311.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_app.synth.anatomy import CSF, GM, WM, Anatomy, apply_linear

#: Parameters of the truth, in this order; units s, s, s, relative, percent units.
PARAMS: tuple[str, ...] = ("T1", "T2", "T2star", "PD", "MTsat")
NOMINAL: dict[str, dict[str, float]] = {
    "GM": {"T1": 1.35, "T2": 0.090, "T2star": 0.045, "PD": 0.80, "MTsat": 0.8},
    "WM": {"T1": 0.85, "T2": 0.075, "T2star": 0.050, "PD": 0.69, "MTsat": 1.6},
    "CSF": {"T1": 4.0, "T2": 1.0, "T2star": 0.5, "PD": 1.0, "MTsat": 0.0},
    "lesion": {"T1": 1.30, "T2": 0.120, "T2star": 0.065, "PD": 0.80, "MTsat": 0.9},
}
#: Multiplicative change of patients' NAWM.
NAWM_CHANGE: dict[str, float] = {"T1": 1.03, "T2": 1.02, "T2star": 1.0, "PD": 1.01, "MTsat": 0.95}
SUBJECT_SD = 0.03
FIELD_AMPLITUDE = 0.02
_LABEL_TISSUE = {GM: "GM", WM: "WM", CSF: "CSF"}


@dataclass(frozen=True)
class B1Field:
    """Smooth relative transmit field: a broad Gaussian bump plus a linear tilt.

    ``B1(x) = floor + (peak - floor) exp(-k q / 2) + tilt . (x - centre) / 100`` with
    ``q = sum(((x - centre) / semi_axes)^2)``, ``k`` such that ``B1 = edge`` where
    ``q = 1`` (an ellipsoid 10-25 % larger than the brain's bounding box), so that B1 spans
    about 0.8-1.2 over the brain. Values are clipped to [0.4, 1.4].
    """

    centre: np.ndarray
    semi_axes: np.ndarray
    peak: float
    edge: float
    tilt: np.ndarray
    floor: float = 0.5

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        """Evaluate at world coordinates ``coords`` (..., 3) in mm; returns (...)."""
        rel = coords - self.centre
        q = ((rel / self.semi_axes) ** 2).sum(axis=-1)
        k = -2.0 * np.log((self.edge - self.floor) / (self.peak - self.floor))
        b1 = self.floor + (self.peak - self.floor) * np.exp(-0.5 * k * q)
        return np.clip(b1 + apply_linear(rel, self.tilt[None, :])[..., 0] / 100.0, 0.4, 1.4)


@dataclass(frozen=True)
class SmoothField:
    """``1 + amplitude * mean_j sin(k_j . x + phase_j)``, x in mm."""

    wavevectors: np.ndarray
    phases: np.ndarray
    amplitude: float = FIELD_AMPLITUDE

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        """Evaluate at world coordinates ``coords`` (..., 3) in mm; returns (...)."""
        waves = np.sin(apply_linear(coords, self.wavevectors) + self.phases)
        return 1.0 + self.amplitude * waves.mean(axis=-1)


@dataclass(frozen=True)
class SubjectTissue:
    """One subject's tissue values, smooth fields and B1+ field.

    Parameters
    ----------
    values : dict
        ``values[tissue][param]``, tissue in GM, WM (= NAWM for patients), CSF, lesion.
    fields : dict
        ``fields[param]`` a :class:`SmoothField`.
    b1 : B1Field
        Relative transmit field.
    """

    values: dict[str, dict[str, float]]
    fields: dict[str, SmoothField]
    b1: B1Field


def brain_ellipsoid(anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Centre (mm) and half-extents (mm) of the brain's bounding box.

    Returns
    -------
    centre, semi_axes : (3,) ndarray
    """
    idx = np.argwhere(anatomy.brain)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    aff = anatomy.affine
    centre = aff[:3, :3] @ ((lo + hi) / 2.0) + aff[:3, 3]
    semi = np.abs(aff[:3, :3] @ (hi - lo + 1)) / 2.0
    return centre, semi


def draw_subject_tissue(
    rng: np.random.Generator, *, patient: bool, centre: np.ndarray, semi_axes: np.ndarray
) -> SubjectTissue:
    """Draw one subject's tissue values and fields.

    Parameters
    ----------
    rng : numpy.random.Generator
        The subject's generator.
    patient : bool
        Apply ``NAWM_CHANGE`` to WM.
    centre, semi_axes : (3,) ndarray
        Brain centre and half-extents (mm), see :func:`brain_ellipsoid`.

    Returns
    -------
    SubjectTissue
    """
    values = {}
    for tissue, nominal in NOMINAL.items():
        sd = SUBJECT_SD / 3 if tissue == "CSF" else SUBJECT_SD
        eps = np.clip(rng.normal(0.0, sd, len(PARAMS)), -2 * sd, 2 * sd)
        values[tissue] = {p: nominal[p] * (1.0 + e) for p, e in zip(PARAMS, eps)}
    if patient:
        values["WM"] = {p: v * NAWM_CHANGE[p] for p, v in values["WM"].items()}
    fields = {}
    for p in PARAMS:
        directions = rng.normal(size=(3, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(120.0, 250.0, 3)
        fields[p] = SmoothField(
            2 * np.pi * directions / wavelengths[:, None], rng.uniform(0, 2 * np.pi, 3)
        )
    b1 = B1Field(
        centre=centre + rng.normal(0.0, 6.0, 3),
        semi_axes=semi_axes * rng.uniform(1.1, 1.25, 3),
        peak=float(rng.uniform(1.15, 1.22)),
        edge=float(rng.uniform(0.78, 0.85)),
        tilt=rng.uniform(-0.03, 0.03, 3),
    )
    return SubjectTissue(values, fields, b1)


def truth_maps(
    anatomy: Anatomy, tissue: SubjectTissue, lesion_severity: np.ndarray
) -> dict[str, np.ndarray]:
    """Ground-truth parameter maps on the anatomy's grid.

    Parameters
    ----------
    anatomy : Anatomy
        Labels and grid.
    tissue : SubjectTissue
        The subject's values and fields.
    lesion_severity : (X, Y, Z) ndarray
        Local lesion severity, 0 outside lesions (1 = the subject's nominal lesion value).

    Returns
    -------
    dict of (X, Y, Z) float32 ndarray
        ``T1`` (s), ``T2`` (s), ``T2star`` (s), ``PD`` (relative), ``MTsat`` (percent
        units), zero outside the brain; ``B1`` (fraction of nominal) on the whole grid.
    """
    coords = anatomy.world_coordinates()
    brain = anatomy.brain
    xyz = coords[brain]
    labels = anatomy.labels[brain]
    severity = lesion_severity[brain]
    in_lesion = severity > 0
    maps = {}
    for p in PARAMS:
        lut = np.zeros(4)
        for label, name in _LABEL_TISSUE.items():
            lut[label] = tissue.values[name][p]
        vals = lut[labels]
        nawm = tissue.values["WM"][p]
        vals[in_lesion] = nawm + severity[in_lesion] * (tissue.values["lesion"][p] - nawm)
        out = np.zeros(anatomy.shape, dtype=np.float32)
        out[brain] = vals * tissue.fields[p](xyz)
        maps[p] = out
    maps["B1"] = tissue.b1(coords).astype(np.float32)
    return maps


def nominal_wm() -> dict[str, float]:
    """Control-like WM parameters with B1 = 1 (the reference of the noise level)."""
    return {**NOMINAL["WM"], "B1": 1.0}
