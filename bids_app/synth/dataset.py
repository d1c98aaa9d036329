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

from bids_app.synth import changes as _changes
from bids_app.synth import head as _head
from bids_app.synth import (
    misalign,
    writer,
)
from bids_app.synth.anatomy import Anatomy, downsample_affine, grid_coordinates
from bids_app.synth.anatomy import make_anatomy as _make_anatomy
from bids_app.synth.lesions import PlacementMaps, lesion_rows, place_lesions, render_lesions
from bids_app.synth.protocol import COMMON_METADATA, GAIN, SPGR_TE, build_protocol, noise_sigma
from bids_app.synth.scene import LESION, Scene
from bids_app.synth.series import DEFAULT_SERIES, SERIES_FILES, SERIES_WRITERS
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
    #: each collection on its own grid and head pose (:mod:`bids_app.synth.misalign`)
    misalign: bool = False
    #: a non-brain head shell on a padded grid (:mod:`bids_app.synth.head`)
    head: bool = False

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
    misalign: bool = False,
    head: bool = False,
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
    misalign : bool
        Every 3-D collection but the FLAIR on its own grid and rigid head pose
        (:mod:`bids_app.synth.misalign`); off: all on the subject grid, unmoved.
    head : bool
        Image a non-brain head shell (:mod:`bids_app.synth.head`) on a padded grid
        (the collections on the subject grid only).

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
    anatomy = _head.pad_anatomy(anatomy) if head else anatomy
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
        misalign=misalign,
        head=head,
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
    anatomy = _head.pad_anatomy(anatomy) if plan.head else anatomy
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
        head_rng = np.random.default_rng(child_seed(part.seed, 3))
        head = _head.make_head(anatomy, tissue, head_rng) if plan.head else None
        history = []
        for t, ses in enumerate(plan.sessions):
            noise_rng = np.random.default_rng(child_seed(child_seed(part.seed, 2), t))
            ids, severity = render_lesions(anatomy, lesions, t)
            truth = _truth_maps(anatomy, tissue, severity)
            grids = _misaligned(plan, out_dir, part, ses, t, anatomy, truth, tissue.b1, centre)
            megre, megre_meta = _write_raw(
                plan, out_dir, part, ses, anatomy.brain, truth, noise_rng, grids, head
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
            if head is not None:
                _head.write_head_truth(out_dir, part.label, ses, anatomy, head)
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
        **({"Misalignment": misalign.simulation_record(plan.size)} if plan.misalign else {}),
    }


def _misaligned(plan, root, part, ses, t, anatomy, truth, b1, centre) -> dict:
    """``--misalign``: the moved collections' grids (:mod:`.misalign`), their truth record."""
    if not plan.misalign:
        return {}
    kept = ("MEGRE",) if "qsm" in plan.series else ()  # the phase shares the subject grid
    names = tuple(dict.fromkeys(vol.collection for vol in build_protocol()))
    seed = misalign.pose_seed(part.seed, t)
    args = (plan.size, names, plan.grid_shape, plan.affine, anatomy.brain, truth, b1, seed)
    grids = misalign.collection_grids(*args, centre, skip=kept)
    misalign.write_record(root, part.label, ses, grids, kept)
    return grids


def _write_raw(
    plan, root, part, ses, brain, truth, rng, grids=None, head=None
) -> tuple[dict, dict]:
    """Write the 3-D protocol; return the MEGRE complex channels and sidecars by echo time.

    ``grids`` (``--misalign``): collection -> its own grid, pose and truth; ``head``
    (``--head``): the non-brain head shell, imaged on the subject grid.
    """
    base = writer.subject_dir(root, part.label, ses)
    in_brain = {key: value[brain] for key, value in truth.items()}
    in_head = head.params(truth["B1"]) if head is not None else None
    megre, megre_meta = {}, {}
    for vol in build_protocol():
        own = (grids or {}).get(vol.collection)
        shape, affine = (own.shape, own.affine) if own else (plan.grid_shape, plan.affine)
        clean = np.zeros(shape, dtype=np.float32)
        if own:
            clean[own.brain] = vol.signal(own.maps)
        else:
            clean[brain] = vol.signal(in_brain)
            if in_head is not None:
                clean[head.mask] = vol.signal(in_head)
        sigma = plan.sigma[vol.collection]
        real, imag = complex_noise(clean, sigma, rng)
        noisy = np.hypot(real, imag)
        if vol.collection == "MEGRE":
            megre[vol.metadata["EchoTime"]] = (real, imag)
        step = max(sigma / QUANT_PER_SIGMA, float(noisy.max()) / 30000.0)
        path = base / vol.datatype / vol.filename(part.label, ses)
        writer.save_nifti(path, noisy, affine, dtype=np.int16, step=step)
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
