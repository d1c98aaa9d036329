"""Plan and write a synthetic MS dataset (raw BIDS plus truth, lesion and tissue derivatives).

Randomness: child ``k`` of ``SeedSequence(seed)`` (as ``spawn`` makes them) is subject
``k``'s sequence, so a subject is the same whatever the number of subjects; its children
0, 1, 2 seed the demographics, the anatomy (tissue values, fields, lesions) and the noise
(child ``t`` of that one for session ``t``). Children are derived without the stateful
``spawn`` so that writing a plan twice gives the same files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_app.synth import (
    asl_series,
    dce_series,
    dwi_series,
    mpm_series,
    mwf_series,
    qsm_series,
    writer,
)
from bids_app.synth import changes as _changes
from bids_app.synth.anatomy import Anatomy, downsample_affine, grid_coordinates
from bids_app.synth.anatomy import make_anatomy as _make_anatomy
from bids_app.synth.asl_single_series import write_asl_single
from bids_app.synth.b1_series import EPI_FLIPS as _B1_EPI_FLIPS
from bids_app.synth.b1_series import write_b1_epi, write_b1_srge, write_b1_tfl
from bids_app.synth.irt1_series import INVERSION_TIMES as _IRT1_TIS
from bids_app.synth.irt1_series import write_irt1
from bids_app.synth.lesions import PlacementMaps, lesion_rows, place_lesions, render_lesions
from bids_app.synth.mp2rage_series import FILES_ME, write_mp2rage, write_mp2rageme
from bids_app.synth.protocol import COMMON_METADATA, GAIN, SPGR_TE, build_protocol, noise_sigma
from bids_app.synth.scene import LESION, Scene
from bids_app.synth.signals import complex_noise
from bids_app.synth.tissue import NAWM_CHANGE, NOMINAL, brain_ellipsoid, draw_subject_tissue
from bids_app.synth.tissue import truth_maps as _truth_maps
from bids_app.synth.truth import write_truth

logger = logging.getLogger(__name__)

B1_NOISE_SD = 0.01
#: Raw images are int16 with ``scl_slope = sigma / QUANT_PER_SIGMA`` (rounding noise is
#: then ``1 / (12 * 8**2)`` = 0.13 % of the Gaussian noise variance).
QUANT_PER_SIGMA = 8
_B1_TARGETS = ("VFA", "MTS")
#: the 4-D series writers (:mod:`bids_app.synth.scene`), run in this order
SERIES_WRITERS = {
    "dwi": dwi_series.write_dwi,
    "qsm": qsm_series.write_phase,
    "asl": asl_series.write_asl,
    "dce": dce_series.write_dce,
    "asl1": write_asl_single,
    "mpm": mpm_series.write_mpm,
    "mwf": mwf_series.write_mese_mwf,
    "mp2rage": write_mp2rage,
    "mp2rageme": write_mp2rageme,
    "irt1": write_irt1,
    "b1tfl": write_b1_tfl,
    "b1epi": write_b1_epi,
    "b1srge": write_b1_srge,
}
#: the raw images each series writer adds: (datatype, name after the subject prefix)
SERIES_FILES = {
    "dwi": (("dwi", "dwi.nii.gz"),),
    "qsm": tuple(("anat", f"echo-{k}_part-phase_MEGRE.nii.gz") for k in range(1, 7)),
    "asl": (("perf", "asl.nii.gz"), ("perf", "m0scan.nii.gz")),
    "dce": (("perf", "dce.nii.gz"),),
    "asl1": (("perf", "acq-single_asl.nii.gz"),),
    "mpm": mpm_series.file_names(),
    "mwf": mwf_series.FILES,
    "mp2rage": tuple(
        ("anat", f"inv-{k}_part-{p}_MP2RAGE.nii.gz") for k in (1, 2) for p in ("mag", "phase")
    ),
    "mp2rageme": FILES_ME,
    "irt1": tuple(("anat", f"inv-{k}_IRT1.nii.gz") for k in range(1, len(_IRT1_TIS) + 1)),
    "b1tfl": (("fmap", "acq-anat_TB1TFL.nii.gz"), ("fmap", "acq-famp_TB1TFL.nii.gz")),
    "b1epi": tuple(
        ("fmap", f"echo-{e}_flip-{i}_TB1EPI.nii.gz")
        for i in range(1, len(_B1_EPI_FLIPS) + 1)
        for e in (1, 2)
    ),
    "b1srge": tuple(("fmap", f"flip-{k}_inv-{k}_TB1SRGE.nii.gz") for k in (1, 2)),
}
DEFAULT_SERIES = ("dwi", "qsm", "asl", "asl1", "dce", "irt1", "mp2rage", "mpm")


@dataclass(frozen=True)
class Participant:
    """One synthetic participant: label, group, age (years), sex and seed sequence."""

    label: str
    group: str
    age: int
    sex: str
    seed: np.random.SeedSequence

    @property
    def patient(self) -> bool:
        """True for patients."""
        return self.group == "patient"


@dataclass(frozen=True)
class SynthPlan:
    """Everything decided before writing: grid, participants, sessions, noise levels.

    Attributes
    ----------
    grid_shape : tuple of 3 int
        Subject grid (same for everyone).
    affine : (4, 4) ndarray
        Subject grid affine (mm).
    b1_shape, b1_affine
        The B1 map's grid (voxels 2x coarser).
    n_brain_voxels : int
        GM + WM + CSF voxels of the grid.
    sessions : tuple
        Session labels, ``(None,)`` for a single session.
    sigma : dict
        Gaussian noise SD per collection (raw intensity units).
    """

    size: str
    voxel_size: float
    grid_shape: tuple[int, int, int]
    affine: np.ndarray
    b1_shape: tuple[int, int, int]
    b1_affine: np.ndarray
    n_brain_voxels: int
    participants: tuple[Participant, ...]
    sessions: tuple[str | None, ...]
    seed: int
    snr: float
    sigma: dict[str, float]
    series: tuple[str, ...] = DEFAULT_SERIES

    def raw_files(self) -> list[str]:
        """Relative paths of every raw image (``.nii.gz``) the plan writes."""
        out = []
        for part in self.participants:
            for ses in self.sessions:
                base = Path(f"sub-{part.label}") / (f"ses-{ses}" if ses else "")
                for vol in build_protocol():
                    out.append(str(base / vol.datatype / vol.filename(part.label, ses)))
                prefix = writer.entity_prefix(part.label, ses)
                out.append(str(base / "fmap" / f"{prefix}_TB1map.nii.gz"))
                for name in self.series:
                    out += [str(base / dt / f"{prefix}_{n}") for dt, n in SERIES_FILES[name]]
        return out


def child_seed(seq: np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    """Return child ``index`` of ``seq`` as ``seq.spawn`` would make it, but statelessly.

    Examples
    --------
    >>> root = np.random.SeedSequence(0)
    >>> child_seed(root, 1).spawn_key == root.spawn(2)[1].spawn_key
    True
    """
    return np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, index))


def make_plan(
    *,
    subjects: int = 3,
    sessions: int = 1,
    size: str = "tiny",
    seed: int = 0,
    snr: float = 100.0,
    anatomy: Anatomy | None = None,
    series: tuple[str, ...] = DEFAULT_SERIES,
) -> SynthPlan:
    """Plan a dataset without writing anything.

    Parameters
    ----------
    subjects : int
        Number of participants (odd: patient, even: control).
    sessions : int
        Sessions per participant; 1 means no ``ses-`` level.
    size : {'tiny', 'small', 'brain'}
        4, 2 or 1 mm voxels.
    seed : int
        Seed of every random draw.
    snr : float
        WM signal-to-noise ratio of each collection's first volume.
    anatomy : Anatomy, optional
        Pre-built anatomy for ``size``.
    series : tuple of str
        The 4-D series written besides the 3-D protocol (keys of :data:`SERIES_WRITERS`).

    Returns
    -------
    SynthPlan

    Raises
    ------
    ValueError
        Non-positive counts or SNR, or an unknown series.
    """
    if subjects < 1 or sessions < 1 or snr <= 0:
        raise ValueError("subjects and sessions must be >= 1 and snr > 0")
    unknown = sorted(set(series) - set(SERIES_WRITERS))
    if unknown:
        raise ValueError(f"unknown series {unknown}; expected some of {sorted(SERIES_WRITERS)}")
    anatomy = anatomy or _make_anatomy(size)
    width = max(2, len(str(subjects)))
    parts = []
    root = np.random.SeedSequence(seed)
    for k in range(subjects):
        seq = child_seed(root, k)
        group = "patient" if k % 2 == 0 else "control"
        demo = np.random.default_rng(child_seed(seq, 0))
        age = int(demo.integers(22, 60))
        sex = str(demo.choice(["F", "M"], p=[0.7, 0.3] if group == "patient" else [0.5, 0.5]))
        parts.append(Participant(f"{k + 1:0{width}d}", group, age, sex, seq))
    ses = (None,) if sessions == 1 else tuple(f"{s:02d}" for s in range(1, sessions + 1))
    b1_shape = tuple(-(-n // 2) for n in anatomy.shape)
    return SynthPlan(
        size=size,
        voxel_size=anatomy.voxel_size,
        grid_shape=anatomy.shape,
        affine=anatomy.affine,
        b1_shape=b1_shape,
        b1_affine=downsample_affine(anatomy.affine, 2),
        n_brain_voxels=anatomy.n_brain,
        participants=tuple(parts),
        sessions=ses,
        seed=seed,
        snr=snr,
        sigma=noise_sigma(build_protocol(), snr),
        series=tuple(series),
    )


def write_dataset(plan: SynthPlan, out_dir: Path, *, anatomy: Anatomy | None = None) -> Path:
    """Write the planned dataset under ``out_dir``.

    Parameters
    ----------
    plan : SynthPlan
        From :func:`make_plan`.
    out_dir : Path
        Dataset root (created).
    anatomy : Anatomy, optional
        Pre-built anatomy for ``plan.size``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    anatomy = anatomy or _make_anatomy(plan.size)
    _write_dataset_files(plan, out_dir)
    maps = (
        PlacementMaps.from_anatomy(anatomy) if any(p.patient for p in plan.participants) else None
    )
    centre, semi = brain_ellipsoid(anatomy)
    several = len(plan.sessions) > 1
    for k, part in enumerate(plan.participants):
        rng = np.random.default_rng(child_seed(part.seed, 1))
        tissue = draw_subject_tissue(rng, patient=part.patient, centre=centre, semi_axes=semi)
        lesions = []
        if part.patient:
            lesions = place_lesions(anatomy, maps, rng, n_sessions=len(plan.sessions))
        history = []
        for t, ses in enumerate(plan.sessions):
            noise_rng = np.random.default_rng(child_seed(child_seed(part.seed, 2), t))
            ids, severity = render_lesions(anatomy, lesions, t)
            truth = _truth_maps(anatomy, tissue, severity)
            megre, megre_meta = _write_raw(
                plan, out_dir, part, ses, anatomy.brain, truth, noise_rng
            )
            _write_b1(plan, out_dir, part, ses, tissue.b1, noise_rng)
            rows = lesion_rows(anatomy, lesions, t, ids, truth)
            if several:
                history.append(_changes.session_record(ids, truth))
            scene = Scene(
                root=out_dir,
                subject=part.label,
                session=ses,
                patient=part.patient,
                affine=plan.affine,
                dseg=np.where(ids > 0, LESION, anatomy.labels).astype(np.uint8),
                severity=severity,
                lesion_ids=ids,
                truth=truth,
                snr=plan.snr,
                seed=child_seed(child_seed(part.seed, 2), t),
                megre=megre,
                megre_metadata=megre_meta,
            )
            for name in plan.series:
                SERIES_WRITERS[name](scene)
            write_truth(
                out_dir,
                part.label,
                ses,
                patient=part.patient,
                anatomy=anatomy,
                truth=truth,
                ids=ids,
                rows=rows,
            )
            logger.info(
                "sub-%s%s (%s): %d lesions, %d lesion voxels",
                part.label,
                f" ses-{ses}" if ses else "",
                part.group,
                len(rows),
                int((ids > 0).sum()),
            )
        if several:  # sessions.tsv and the truth of the lesion changes
            vox = anatomy.voxel_size**3
            _changes.write_changes(out_dir, part.label, k, plan.sessions, lesions, history, vox)
    return out_dir


def _write_dataset_files(plan: SynthPlan, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    writer.write_json(root / "dataset_description.json", writer.raw_description())
    text = writer.readme(
        size=plan.size, voxel=plan.voxel_size, snr=plan.snr, seed=plan.seed, sigma=plan.sigma
    )
    (root / "README.md").write_text(text)
    rows = [
        {"participant_id": f"sub-{p.label}", "group": p.group, "age": p.age, "sex": p.sex}
        for p in plan.participants
    ]
    writer.write_tsv(root / "participants.tsv", rows, ["participant_id", "group", "age", "sex"])
    writer.write_json(root / "participants.json", writer.PARTICIPANTS_JSON)
    if "dce" in plan.series:  # no BIDS suffix yet (bids-specification#1549)
        (root / ".bidsignore").write_text("*_dce.*\n")
    deriv = root / "derivatives"
    descriptions = {
        "truth": "Ground truth of the synthetic dataset (maps, segmentation, lesions)",
        "lesions": "True lesion masks of the synthetic patients",
        "tissue": "True GM/WM/CSF segmentation; lesions labelled WM",
    }
    for name, text in descriptions.items():
        desc = writer.derivative_description(f"msqmri-synth {name}", text)
        writer.write_json(deriv / name / "dataset_description.json", desc)
    writer.write_json(deriv / "truth" / "simulation.json", _simulation_record(plan))


def _simulation_record(plan: SynthPlan) -> dict:
    return {
        "Size": plan.size,
        "VoxelSize": plan.voxel_size,
        "Seed": plan.seed,
        "SNR": plan.snr,
        "NoiseModel": (
            "Rician: Gaussian noise of SD NoiseSigma on the real and imaginary channels, "
            "then magnitude; NoiseSigma = noiseless WM signal (nominal control values, "
            "B1 = 1) of the collection's first volume / SNR"
        ),
        "NoiseSigma": plan.sigma,
        "B1NoiseSD": B1_NOISE_SD,
        "SignalGain": GAIN,
        "SPGREchoTime": SPGR_TE,
        "NominalTissueValues": NOMINAL,
        "PatientNAWMChange": NAWM_CHANGE,
        "TissueValueUnits": {"T1": "s", "T2": "s", "T2star": "s", "PD": "1", "MTsat": "p.u."},
        "Participants": {f"sub-{p.label}": p.group for p in plan.participants},
    }


def _write_raw(plan, root, part, ses, brain, truth, rng) -> tuple[dict, dict]:
    """Write the 3-D protocol; return the MEGRE complex channels and sidecars by echo time."""
    base = writer.subject_dir(root, part.label, ses)
    in_brain = {key: value[brain] for key, value in truth.items()}
    clean = np.zeros(plan.grid_shape, dtype=np.float32)
    megre, megre_meta = {}, {}
    for vol in build_protocol():
        clean[brain] = vol.signal(in_brain)
        sigma = plan.sigma[vol.collection]
        real, imag = complex_noise(clean, sigma, rng)
        noisy = np.hypot(real, imag)
        if vol.collection == "MEGRE":
            megre[vol.metadata["EchoTime"]] = (real, imag)
        step = max(sigma / QUANT_PER_SIGMA, float(noisy.max()) / 30000.0)
        path = base / vol.datatype / vol.filename(part.label, ses)
        writer.save_nifti(path, noisy, plan.affine, dtype=np.int16, step=step)
        meta = {**vol.metadata, **COMMON_METADATA}
        writer.write_json(path.with_name(vol.filename(part.label, ses, ".json")), meta)
        if vol.collection == "MEGRE":
            megre_meta[vol.metadata["EchoTime"]] = dict(vol.metadata)
    return megre, megre_meta


def _write_b1(plan, root, part, ses, b1_field, rng) -> None:
    coords = grid_coordinates(plan.b1_shape, plan.b1_affine)
    b1 = b1_field(coords) + rng.normal(0.0, B1_NOISE_SD, plan.b1_shape)
    prefix = writer.entity_prefix(part.label, ses)
    path = writer.subject_dir(root, part.label, ses) / "fmap" / f"{prefix}_TB1map.nii.gz"
    writer.save_nifti(path, b1.astype(np.float32), plan.b1_affine, dtype=np.float32)
    rel = f"sub-{part.label}/" + (f"ses-{ses}/" if ses else "")
    targets = [
        f"bids::{rel}{vol.datatype}/{vol.filename(part.label, ses)}"
        for vol in build_protocol()
        if vol.collection in _B1_TARGETS
    ]
    meta = {
        "Units": "fraction of nominal flip angle",
        "PulseSequenceType": "synthetic: true relative B1+ with Gaussian noise",
        "IntendedFor": targets,
        **COMMON_METADATA,
    }
    writer.write_json(path.with_name(f"{prefix}_TB1map.json"), meta)
