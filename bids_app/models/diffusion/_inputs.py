"""The DWI inputs shared by the diffusion models, and their common base class.

Two inputs, of which the first present is used (:attr:`DWIModel.alternatives`):
``dwi_preproc`` (``dwi/*_desc-preproc_dwi`` from a ``--derivatives`` dataset, fitted as
is) and ``dwi`` (the raw ``dwi/*_dwi`` series, preprocessed by
:mod:`bids_app.models.diffusion.preproc` once per subject for every model with the same
preprocessing options). Both carry their ``.bval``/``.bvec`` companions (FSL layout, already
checked at load: counts, unit norms, a b=0 volume).
"""

from __future__ import annotations

import copy
import logging
from abc import abstractmethod
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.base import (
    Collection,
    Companion,
    InputSpec,
    Option,
    QMRIModel,
    Volume,
)
from bids_app.models.diffusion import preproc

logger = logging.getLogger(__name__)

#: b-values up to this many s/mm² are b=0 (as :mod:`bids_app.bids.companions`)
B0_THRESHOLD = 50.0
#: signals at or above this magnitude are not fitted (NaN)
MAX_SIGNAL = 1e30
#: b-values within this many s/mm² of each other belong to one shell
SHELL_TOLERANCE = 100.0

COMPANIONS = (
    Companion("bval", "dwi", ".bval", "bval"),
    Companion("bvec", "dwi", ".bvec", "bvec"),
)
DWI_PREPROC = InputSpec(
    "dwi_preproc",
    {"datatype": "dwi", "suffix": "dwi", "desc": "preproc"},
    series=True,
    companions=COMPANIONS,
    from_derivatives=True,
)
DWI_RAW = InputSpec(
    "dwi", {"datatype": "dwi", "suffix": "dwi", "desc": None}, series=True, companions=COMPANIONS
)
DWI_INPUTS = (DWI_PREPROC, DWI_RAW)
DWI_ALTERNATIVES = (("dwi_preproc",), ("dwi",))

#: the preprocessing options every DWI model has (one shared preprocessing per value set)
PREPROC_OPTIONS: dict[str, Option] = {
    "denoise": Option(
        "mppca",
        str,
        ("mppca", "mppca_dipy", "patch2self", "none"),
        doc="denoising of the raw series (mppca: batched MP-PCA, Veraart 2016; mppca_dipy: "
        "dipy's implementation of the same)",
    ),
    "denoise_patch_radius": Option(
        2, int, range=(1, 5), unit="voxels", doc="MP-PCA patch radius (window 2r+1)"
    ),
    "denoise_stride": Option(
        2,
        int,
        range=(1, 3),
        unit="voxels",
        doc="mppca: patch centres every stride voxels (1: every voxel, as dipy)",
    ),
    "gibbs": Option(
        False,
        bool,
        doc="Gibbs-ringing removal (subvoxel shifts, per slice; Kellner 2016); off by "
        "default: it assumes full k-space sampling, and most clinical DWI is partial Fourier",
    ),
    "motion": Option(
        "rigid", str, ("rigid", "affine", "none"), doc="volume-to-mean-b0 registration"
    ),
    "motion_grid_mm": Option(
        4.0,
        float,
        range=(0.0, 8.0),
        unit="mm",
        doc="voxel size of the motion-correction grid (block averages; 0: the native grid)",
    ),
    "brain_mask": Option(
        "auto",
        str,
        ("auto", "median_otsu", "given"),
        doc="auto: median_otsu of the mean b0 unless a subject brain mask is given",
    ),
}


def shells(bvals: np.ndarray) -> np.ndarray:
    """Distinct non-zero shells (s/mm²): b-values > 50 clustered within 100 s/mm²."""
    b = np.sort(np.asarray(bvals, float)[np.asarray(bvals) > B0_THRESHOLD])
    if b.size == 0:
        return b
    starts = np.flatnonzero(np.diff(b, prepend=-np.inf) > SHELL_TOLERANCE)
    return np.array([b[s:e].mean() for s, e in zip(starts, [*starts[1:], b.size])])


def bval_path(coll: Collection) -> str:
    """The ``.bval`` file of a collection's first image (for error messages)."""
    from bids_app.bids.companions import find_companion

    if not coll.volumes:
        return "<no file>.bval"
    found = find_companion(coll.volumes[0].path, COMPANIONS[0])
    return str(found) if found else coll.volumes[0].path


def example_dwi(bvals_shells=(1000, 2000), n_dirs=30, n_b0=3) -> dict[str, Collection]:
    """An in-memory raw ``dwi`` collection (tables only) for the registry-wide tests."""
    from bids_app.synth.dwi import multishell_protocol

    bvals, bvecs = multishell_protocol(bvals_shells, n_dirs, n_b0, np.random.default_rng(3))
    vol = Volume("example_dwi.nii.gz", {}, {})
    return {"dwi": Collection("dwi", (vol,), {}, {}, {"bval": bvals, "bvec": bvecs})}


class DWIModel(QMRIModel):
    """Base of the dipy-wrapping DWI models: gradients, shared preprocessing, masked fit.

    Parameters
    ----------
    bvals : (n,) array_like
        s/mm², in the order of the volumes.
    bvecs : (n, 3) array_like
        Unit gradient directions (image axes, FSL convention).
    preprocessed : bool
        The data come preprocessed (``desc-preproc`` from ``--derivatives``): no
        preprocessing, whatever the options.
    source : str, optional
        The ``.bval`` file, for error messages.

    Notes
    -----
    A voxelwise model: after the shared whole-volume preprocessing (:meth:`preprocess`), the
    generic driver fits rows of brain voxels in chunks, over ``--nprocs`` processes.
    """

    kind = "voxelwise"
    inputs = DWI_INPUTS
    alternatives = DWI_ALTERNATIVES
    #: smallest number of distinct non-zero shells the model needs
    min_shells: ClassVar[int] = 1

    def __init__(self, bvals, bvecs, *, preprocessed=False, source=None, **options: Any):
        super().__init__(**options)
        self.bvals = np.asarray(bvals, dtype=float)
        self.bvecs = np.asarray(bvecs, dtype=float)
        if self.bvals.ndim != 1 or self.bvecs.shape != (self.bvals.size, 3):
            raise ValueError(
                f"{self.name}: bvals (n,) and bvecs (n, 3) expected, got "
                f"{self.bvals.shape} and {self.bvecs.shape}"
            )
        self.preprocessed = bool(preprocessed)
        self.source = source
        found = shells(self.bvals)
        if found.size < self.min_shells:
            raise MetadataError(
                source,
                "bval",
                [round(float(b)) for b in found],
                f"at least {self.min_shells} distinct non-zero b-value shells for "
                f"{self.name} (b > {B0_THRESHOLD:g} s/mm², {SHELL_TOLERANCE:g} apart)",
            )

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> DWIModel:
        """The model from the first present DWI input (preprocessed derivative or raw).

        Raises
        ------
        MetadataError
            Too few shells for the model (naming the ``.bval`` file and key ``bval``).
        """
        name = next(n for (n,) in DWI_ALTERNATIVES if n in collections)
        coll = collections[name]
        return cls(
            coll.tables["bval"],
            coll.tables["bvec"],
            preprocessed=name == "dwi_preproc",
            source=bval_path(coll),
            **options,
        )

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """Two shells (1000, 2000 s/mm²), 30 directions each, 3 b=0."""
        return example_dwi()

    @property
    def acquisition(self) -> dict[str, Any]:
        """b-values, shells and volume counts used by the fit."""
        return {
            "bval": [float(b) for b in self.bvals],
            "Shells": [round(float(b)) for b in shells(self.bvals)],
            "NumberOfVolumes": int(self.bvals.size),
            "NumberOfB0": int((self.bvals <= B0_THRESHOLD).sum()),
        }

    def registration_image(self, data: Mapping[str, np.ndarray]) -> np.ndarray:
        """The mean b=0 image (registered to the subject's reference image)."""
        series = next(iter(data.values()))
        return series[..., self.bvals <= B0_THRESHOLD].mean(axis=-1)

    @property
    def gtab(self):
        """The dipy ``GradientTable`` of the (possibly motion-rotated) gradients."""
        from dipy.core.gradients import gradient_table

        bvecs = np.where(self.bvals[:, None] > B0_THRESHOLD, self.bvecs, 0.0)
        return gradient_table(self.bvals, bvecs=bvecs, b0_threshold=B0_THRESHOLD, atol=0.05)

    # ----------------------------------------------------------- preprocessing hooks

    def _preproc_options(self) -> dict[str, Any]:
        return {k: self.options[k] for k in PREPROC_OPTIONS}

    def preprocess_key(self) -> Hashable | None:
        """``None`` for derivative data or with every step off; else the option values."""
        opts = self._preproc_options()
        if self.preprocessed or (
            opts["denoise"] == "none"
            and not opts["gibbs"]
            and opts["motion"] == "none"
            and opts["brain_mask"] == "given"
        ):
            return None
        return ("msqmri-dwi-preproc", *sorted(opts.items()))

    def preprocess(self, data, *, mask, affine, pool=None):
        """Denoise, remove Gibbs ringing, motion-correct, brain mask (see :mod:`.preproc`).

        The per-volume registrations run on the workers of ``pool`` when it has several.
        """
        name = next(iter(data))
        executor = pool.executor() if pool is not None and pool.nprocs > 1 else None
        out, state = preproc.preprocess_dwi(
            data[name],
            self.bvals,
            self.bvecs,
            affine,
            mask,
            executor=executor,
            **self._preproc_options(),
        )
        return {name: out}, state

    def with_preprocessed(self, state: Mapping[str, Any]) -> DWIModel:
        """A copy with the rotated b-vectors of ``state`` and its notes for the sidecars."""
        model = copy.copy(self)
        model.fit_notes = dict(self.fit_notes)
        if state.get("bvecs") is not None:
            model.bvecs = np.asarray(state["bvecs"], float)
        model.fit_notes["Preprocessing"] = dict(state.get("notes", {}))
        model.noise_sigma = state.get("sigma")
        return model

    # ------------------------------------------------------------------------- fit

    def _fit_voxels(self, signal: np.ndarray, **covariates: np.ndarray) -> np.ndarray:
        """Fit (n_vox, n_volumes) signal rows; NaN rows where the signal is unusable.

        The generic driver (:func:`~bids_app.models.fitting.fit_masked`) chunks the brain
        voxels and spreads the chunks over ``--nprocs`` worker processes.
        """
        if signal.shape[-1] != self.bvals.size:
            raise ValueError(
                f"{self.name}: DWI rows of {self.bvals.size} volumes (one per b-value) "
                f"expected, got {signal.shape[-1]}"
            )
        out = np.full((signal.shape[0], len(self.outputs)), np.nan)
        # finite and representable (a float32 image holds < 3.4e38; dipy's solvers fail on
        # absurd magnitudes): other voxels are NaN
        ok = np.all(np.isfinite(signal), axis=1) & (np.abs(signal).max(axis=1) < MAX_SIGNAL)
        if ok.any():
            out[ok] = self._fit_guarded(self._dipy_model(), signal[ok])
        return out

    def _fit_guarded(self, dipy_model, signal: np.ndarray) -> np.ndarray:
        """:meth:`_fit_signal`, bisecting a batch on a linear-algebra failure.

        The voxels whose fit fails on their own are NaN (logged), never the whole batch.
        """
        try:
            return np.asarray(self._fit_signal(dipy_model, signal), dtype=float)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            if signal.shape[0] == 1:
                logger.debug("%s: fit failed on one voxel: NaN", self.name)
                return np.full((1, len(self.outputs)), np.nan)
            half = signal.shape[0] // 2
            return np.concatenate(
                [
                    self._fit_guarded(dipy_model, signal[:half]),
                    self._fit_guarded(dipy_model, signal[half:]),
                ]
            )

    @abstractmethod
    def _dipy_model(self):
        """The configured dipy model for :attr:`gtab`."""

    @abstractmethod
    def _fit_signal(self, dipy_model, signal: np.ndarray) -> np.ndarray:
        """Fit (n_vox, n) finite signals with ``dipy_model``: (n_vox, n_outputs)."""
