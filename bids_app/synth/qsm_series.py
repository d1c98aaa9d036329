"""Series writer ``qsm``: the phase of the synthetic MEGRE, from a susceptibility truth.

The magnitude echoes (``anat/<prefix>_echo-<k>_part-mag_MEGRE``) are written by the 3-D
protocol from the R2* truth; this writer adds ``_part-phase_MEGRE`` (``Units`` rad) from the
*same* complex noise (``scene.megre``), so magnitude and phase are one complex image:
``phase_k = angle((S_k + n1) + i n2) + phi_0 + 2 pi gamma_bar B0 dB TE_k``, wrapped to
[-pi, pi). ``dB/B0`` is the forward dipole model in k-space of the truth chi
(:func:`bids_app.synth.qsm.dipole_field`; Salomir 2003, Marques & Bowtell 2005) plus a
background (shim) field that is harmonic inside the brain (linear and ``x^2 - y^2`` terms,
0.6 ppm across the field of view, which wraps the later echoes) and a smooth receive-phase
offset ``phi_0``.

Truth chi (ppm, ``derivatives/truth/sub-X/anat/<prefix>_Chimap``, relative to CSF = 0):
WM -0.03, cortical GM +0.01, deep GM (GM deeper than :data:`DEEP_GM_MM` from the brain
surface: the iron-rich nuclei) +0.08, lesions from the WM value towards +0.005 ppm with their
severity; in patients every odd-numbered lesion with a core left inside its 2 mm border shell
gets a paramagnetic rim of +0.05 ppm in that shell (Absinta M et al., J Clin Invest 2016),
listed in the truth sidecar under ``RimLesions``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from bids_app.synth.qsm import dipole_field
from bids_app.synth.scene import CSF, GM, LESION, WM, Scene

B0_TESLA = 3.0
GAMMA_BAR_MHZ_T = 42.57747892
WM_CHI, GM_CHI, DEEP_GM_CHI, CSF_CHI, LESION_CHI = -0.03, 0.01, 0.08, 0.0, 0.005
RIM_CHI, RIM_MM = 0.05, 2.0
DEEP_GM_MM = 22.0


def chi_truth(scene: Scene) -> tuple[np.ndarray, list[int]]:
    """(X, Y, Z) chi truth (ppm) and the ids of the rim lesions."""
    zooms = np.sqrt((scene.affine[:3, :3] ** 2).sum(0))
    chi = np.zeros(scene.shape, np.float32)
    chi[scene.dseg == WM] = WM_CHI
    chi[scene.dseg == GM] = GM_CHI
    chi[scene.dseg == CSF] = CSF_CHI
    depth = ndi.distance_transform_edt(scene.brain, sampling=zooms)
    chi[(scene.dseg == GM) & (depth > DEEP_GM_MM)] = DEEP_GM_CHI
    les = scene.dseg == LESION
    sev = np.clip(scene.severity[les], 0.0, 1.0)
    chi[les] = WM_CHI + sev * (LESION_CHI - WM_CHI)
    rims: list[int] = []
    if scene.patient:
        inside = ndi.distance_transform_edt(scene.lesion_ids > 0, sampling=zooms)
        for lab in np.unique(scene.lesion_ids[scene.lesion_ids > 0]):
            lesion = scene.lesion_ids == lab
            shell = lesion & (inside <= max(RIM_MM, zooms.max()) + 1e-6)
            if lab % 2 == 1 and (lesion & ~shell).any():
                chi[shell] += RIM_CHI
                rims.append(int(lab))
    return chi, rims


def background_ppm(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic shim field (ppm) and receive phase offset (rad), both (X, Y, Z)."""
    ijk = np.indices(scene.shape, dtype=np.float32).reshape(3, -1).T
    xyz = ijk @ scene.affine[:3, :3].T.astype(np.float32) + scene.affine[:3, 3]
    ext = np.abs(xyz).max(0) + 1.0
    u = xyz / ext
    field = 0.3 * (0.6 * u[:, 0] + 0.8 * u[:, 2]) + 0.15 * (u[:, 0] ** 2 - u[:, 1] ** 2)
    offset = 1.0 + 1.5 * u[:, 0] - 1.0 * u[:, 1]
    return field.reshape(scene.shape), offset.reshape(scene.shape)


def write_phase(scene: Scene) -> None:
    """Write ``anat/<prefix>_echo-<k>_part-phase_MEGRE`` for every MEGRE echo, and chi truth."""
    if not scene.megre:
        return
    chi, rims = chi_truth(scene)
    shim, offset = background_ppm(scene)
    total_ppm = dipole_field(chi, scene.affine) + shim
    hz = total_ppm * GAMMA_BAR_MHZ_T * B0_TESLA
    for k, te in enumerate(sorted(scene.megre), start=1):
        real, imag = scene.megre[te]
        phase = np.angle(real + 1j * imag) + offset + 2 * np.pi * hz * te
        phase = np.angle(np.exp(1j * phase)).astype(np.float32)
        meta = {**scene.megre_metadata[te], "Units": "rad"}
        path = scene.raw_path("anat", f"echo-{k}_part-phase_MEGRE.nii.gz")
        scene.save(path, phase, meta)
    scene.save_truth(
        "anat",
        "Chimap",
        chi,
        Units="ppm",
        Reference="CSF = 0",
        RimLesions=rims,
        RimThickness=RIM_MM,
        RimExcess=RIM_CHI,
    )
