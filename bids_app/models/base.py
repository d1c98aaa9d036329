"""The qMRI model abstraction: declared inputs/outputs, a model/fit split, and the registry.

A model *declares* what it needs (``InputSpec``: a BIDS query and the sidecar keys with their
units) and what it makes (``OutputSpec``: BIDS suffix, units, valid range), and *implements*
a batched voxel fit ``_fit_voxels((n_vox, n_meas)) -> (n_vox, n_params)``. Masks, chunking,
NaN outside the mask and worker processes are handled once, in
:func:`bids_app.models.fitting.fit_masked`. This is dipy's ``ReconstModel``/``ReconstFit``
split combined with qMRLab's declared model properties.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

from bids_app.models.fitting import fit_masked, fit_rows_as_volume
from bids_app.models.results import QMRIFit
from bids_app.models.specs import (
    Collection,
    Companion,
    InputSpec,
    MetaSpec,
    Option,
    OutputSpec,
    Requirement,
    Volume,
    sidecar_path,
)
from bids_app.models.volume_driver import fit_whole_volume

__all__ = [
    "B1_RANGE",
    "B1_REQUIREMENT",
    "REGISTRY",
    "Collection",
    "Companion",
    "InputSpec",
    "MetaSpec",
    "Option",
    "OutputSpec",
    "QMRIFit",
    "QMRIModel",
    "Requirement",
    "Volume",
    "example_collection",
    "get_model",
    "model_names",
    "register",
    "registered",
    "sidecar_path",
    "valid_b1",
]

#: name -> model class; filled at import by :func:`register`, never changed afterwards.
REGISTRY: dict[str, type[QMRIModel]] = {}


#: plausible relative B1+ (actual / nominal flip angle): ~0.7-1.3 at 3 T, ~0.4-1.6 at 7 T
B1_RANGE = (0.3, 2.0)


#: the relative B1+ map of the ``b1`` model, consumed by flip-angle models (``--b1`` policy)
B1_REQUIREMENT = Requirement(
    "b1", model="b1", output="B1", order=1, sidecar_key="B1Correction", policy="b1"
)


def valid_b1(b1: np.ndarray | None) -> np.ndarray | None:
    """Relative B1+ with values outside :data:`B1_RANGE` (or non-finite) set to NaN.

    Parameters
    ----------
    b1 : (n,) array_like or None

    Returns
    -------
    (n,) float ndarray or None
        ``None`` stays ``None`` (no B1 map: nominal flip angles).
    """
    if b1 is None:
        return None
    b1 = np.asarray(b1, dtype=np.float64)
    return np.where((b1 >= B1_RANGE[0]) & (b1 <= B1_RANGE[1]), b1, np.nan)


class QMRIModel(ABC):
    """Base class of every qMRI model (acquisition-dependent state only).

    Subclasses set the class attributes and implement :meth:`from_collections` and either
    :meth:`_fit_voxels` (``kind = 'voxelwise'``: the batched fit of
    :func:`~bids_app.models.fitting.fit_masked`) or :meth:`_fit_volume`
    (``kind = 'volume'``: the whole masked volume at once, with its affine); :meth:`fit` is
    shared, and so is everything after it (range checks, NaN outside the mask, sidecars).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    inputs: ClassVar[tuple[InputSpec, ...]]
    outputs: ClassVar[tuple[OutputSpec, ...]]
    #: ``'voxelwise'`` or ``'volume'``
    kind: ClassVar[str] = "voxelwise"
    #: alternative sets of input names; the first fully present set is used
    alternatives: ClassVar[tuple[tuple[str, ...], ...]] = ()
    #: products of other models this model consumes (covariates on its own grid)
    requires: ClassVar[tuple[Requirement, ...]] = ()
    #: short reference for sidecars (``EstimationReference``)
    reference: ClassVar[str] = ""
    #: option name -> typed declaration (default, type, choices or range, unit)
    options_spec: ClassVar[Mapping[str, Option]] = {}
    #: whether the model consumes a relative B1+ map (derived from :attr:`requires`)
    uses_b1: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls.uses_b1 = any(r.model == "b1" for r in cls.requires)
        legacy = cls.__dict__.get("option_choices")
        if legacy:  # the older declaration: name -> allowed values, the first the default
            cls.options_spec = {
                k: Option(v[0], type(v[0]), choices=tuple(v)) for k, v in legacy.items()
            }
        if cls.kind not in ("voxelwise", "volume"):
            raise TypeError(f"{cls.__name__}.kind must be 'voxelwise' or 'volume'")
        if cls.separate_acquisitions not in ("volume", "input", "none"):
            raise TypeError(f"{cls.__name__}.separate_acquisitions must be volume/input/none")

    def __init__(self, **options: Any):
        self.options = self.check_options(options)
        #: what the fit or its post-processing did that the sidecars must say (``FitNotes``)
        self.fit_notes: dict[str, Any] = {}

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults and check every value against :attr:`options_spec`.

        Raises
        ------
        ValueError
            For an unknown option or a value of the wrong type, outside its range or not
            among its choices; the message names the model, option, value and what is valid.
        """
        out = {k: spec.default for k, spec in cls.options_spec.items()}
        for key, value in options.items():
            spec = cls.options_spec.get(key)
            if spec is None:
                raise ValueError(
                    f"{cls.name}: unknown option {key!r}; valid: {sorted(cls.options_spec)}"
                )
            try:
                out[key] = spec.check(key, value)
            except ValueError as err:
                raise ValueError(f"{cls.name}: {err}") from None
        return out

    @classmethod
    def input_sets(cls) -> tuple[tuple[str, ...], ...]:
        """The alternative sets of required input names, in order of preference."""
        if cls.alternatives:
            return cls.alternatives
        return (tuple(s.name for s in cls.inputs if not s.optional),)

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection] | None:
        """A typical acquisition for the registry-wide tests (``None``: not provided)."""
        return None

    def simulate(
        self, n: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
        """Forward simulation for the registry-wide tests: ``(params, signal, covariates)``.

        ``params`` (n, n_params) are plausible tissue values, ``signal`` (n, n_meas) their
        noiseless signal; ``None`` if the model provides none.
        """
        return None

    @classmethod
    @abstractmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> QMRIModel:
        """Build the model from checked collections (SI units); raise MetadataError if unfit."""

    @property
    @abstractmethod
    def acquisition(self) -> dict[str, Any]:
        """Acquisition parameters as used, in order, for the output sidecars."""

    def _fit_voxels(self, signal: np.ndarray, **covariates: np.ndarray) -> np.ndarray:
        """Fit ``signal`` of shape (n_vox, n_meas); return (n_vox, n_params), NaN if undefined."""
        raise NotImplementedError(f"{self.name} is a {self.kind} model")

    def _fit_volume(
        self,
        data: Mapping[str, np.ndarray],
        *,
        mask: np.ndarray,
        affine: np.ndarray,
        **covariates: np.ndarray,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
        """Whole-volume fit: input name -> (X, Y, Z, n) data; return (X, Y, Z, n_params).

        May also return ``(params, rmse)``. Voxels outside ``mask`` are set to NaN afterwards.
        """
        raise NotImplementedError(f"{self.name} is a {self.kind} model")

    def predict(self, params: np.ndarray, **covariates: np.ndarray) -> np.ndarray | None:
        """Forward model: (n_vox, n_params) -> (n_vox, n_meas); ``None`` if not defined."""
        return None

    def prepare(self, data: np.ndarray, mask: np.ndarray, *, path: str | None = None) -> QMRIModel:
        """Data-dependent set-up before the voxel fit (e.g. the scale of a given B1 map).

        Parameters
        ----------
        data : (..., n_meas) ndarray
        mask : (...) bool ndarray
        path : str, optional
            The first input image, for error messages.

        Returns
        -------
        QMRIModel
            ``self`` by default, or a configured copy.
        """
        return self

    #: whether the collection is registered to the reference image (``False`` for inputs with
    #: no anatomical contrast to register, such as a smooth B1+ map: header alignment)
    registrable: ClassVar[bool] = True
    #: which loaded volumes are separate acquisitions, between which the subject may move
    #: (``--volume-registration`` registers each to :meth:`registration_image` before the
    #: fit, :mod:`bids_app.stages.volume_align`): ``'volume'`` each volume (MT-off/MT-on,
    #: the VFA flip angles, the inversion times; volume ``i`` of every input moves together),
    #: ``'input'`` each input as a whole (the MPM contrasts, their echoes one acquisition),
    #: ``'none'`` one acquisition (echo trains, DWI with its own motion correction)
    separate_acquisitions: ClassVar[str] = "none"
    #: relative tolerance of the noiseless recovery in tests/models/test_registry_contract.py
    #: (round-off for exact fits; dictionary and grid fits state theirs)
    contract_rtol: ClassVar[float] = 1e-6
    #: absolute tolerance of the same test (fractions of a dictionary fit near zero)
    contract_atol: ClassVar[float] = 0.0
    #: whole-volume models that also fit plain (..., n) rows: the input the rows are
    rows_input: ClassVar[str | None] = None

    def active_requirements(self) -> tuple[Requirement, ...]:
        """The declared :attr:`requires` this instance uses with its options (default all)."""
        return self.requires

    def registration_image(self, data: Mapping[str, np.ndarray]) -> np.ndarray:
        """The 3-D image registered to the subject's reference image for this model.

        The first volume of the lead input by default (the first flip angle, echo or MT
        volume, which has the most anatomical signal); DWI models use the mean b=0 image.

        Parameters
        ----------
        data : mapping of str to (X, Y, Z, n) ndarray
            The loaded inputs, lead input first.

        Returns
        -------
        (X, Y, Z) ndarray
        """
        return next(iter(data.values()))[..., 0]

    def preprocess_key(self) -> Hashable | None:
        """Models returning the same key share one :meth:`preprocess` of the same inputs.

        ``None`` (the default): no preprocessing. The participant level keeps the result of
        the last key per subject, so DTI, DKI and NODDI denoise and motion-correct a DWI once.
        """
        return None

    def preprocess(
        self,
        data: Mapping[str, np.ndarray],
        *,
        mask: np.ndarray,
        affine: np.ndarray,
        pool: Any = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Whole-volume preprocessing before the fit: ``(data, state)``.

        ``state`` is what the fit needs to know about it (rotated gradients, a brain mask
        under ``'mask'``, notes for the sidecars); :meth:`with_preprocessed` receives it.
        ``pool`` is the run's :class:`~bids_app.models.fitting.FitPool` (or ``None``), for
        preprocessing that can use its workers.
        """
        return dict(data), {}

    def with_preprocessed(self, state: Mapping[str, Any]) -> QMRIModel:
        """The model configured by a :meth:`preprocess` ``state`` (``self`` by default)."""
        return self

    def spatial_postprocess(
        self,
        maps: dict[str, np.ndarray],
        *,
        zooms: tuple[float, ...],
        mask: np.ndarray,
        affine: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Spatial step after the fit (e.g. B1 smoothing); identity by default."""
        return maps

    def fit(
        self,
        data: np.ndarray | Mapping[str, np.ndarray],
        *,
        mask: np.ndarray | None = None,
        affine: np.ndarray | None = None,
        **kwargs,
    ) -> QMRIFit:
        """Fit the model.

        Voxelwise models take ``data`` (..., n_meas), see
        :func:`~bids_app.models.fitting.fit_masked`; whole-volume models take a mapping of
        input name to (X, Y, Z, n) arrays, the ``mask`` and the ``affine`` (default identity)
        and ``covariates=`` (same spatial shape).
        """
        if self.kind == "voxelwise":
            return fit_masked(self, data, mask=mask, **kwargs)
        if self.rows_input and not isinstance(data, Mapping):
            return fit_rows_as_volume(self, data, mask=mask, affine=affine, **kwargs)
        return fit_whole_volume(self, data, mask=mask, affine=affine, **kwargs)


def register(cls: type[QMRIModel]) -> type[QMRIModel]:
    """Class decorator adding a model to :data:`REGISTRY` under ``cls.name``."""
    if cls.name in REGISTRY:
        raise RuntimeError(f"model {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get_model(name: str) -> type[QMRIModel]:
    """Look up a model class by its registry name.

    Raises
    ------
    KeyError
        If unknown; the message lists the registered names.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {model_names()}") from None


def example_collection(name: str, **params: tuple[Any, ...]) -> Collection:
    """A :class:`Collection` of in-memory volumes with the given per-volume parameters.

    For :meth:`QMRIModel.example_collections`: ``example_collection('vfa', FlipAngle=(3, 20),
    RepetitionTimeExcitation=(0.015, 0.015))``.
    """
    n = len(next(iter(params.values())))
    volumes = tuple(
        Volume(f"example_{name}_{i}.nii.gz", {}, {k: v[i] for k, v in params.items()})
        for i in range(n)
    )
    return Collection(name, volumes, {k: tuple(v) for k, v in params.items()}, {})


@contextlib.contextmanager
def registered(cls: type[QMRIModel]) -> Iterator[type[QMRIModel]]:
    """Register ``cls`` for the duration of a ``with`` block.

    For models kept outside the package: tests, or a newcomer's model under development.
    """
    register(cls)
    try:
        yield cls
    finally:
        REGISTRY.pop(cls.name, None)


def model_names() -> list[str]:
    """Registered model names in registration order."""
    return list(REGISTRY)
