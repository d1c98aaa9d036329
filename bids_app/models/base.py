"""The qMRI model abstraction: declared inputs/outputs, a model/fit split, and the registry.

A model *declares* what it needs (``InputSpec``: a BIDS query and the sidecar keys with their
units) and what it makes (``OutputSpec``: BIDS suffix, units, valid range), and *implements*
a batched voxel fit ``_fit_voxels((n_vox, n_meas)) -> (n_vox, n_params)``. Masks, chunking,
NaN outside the mask and worker processes are handled once, in
:func:`bids_app.models.fitting.fit_masked`. This is dipy's ``ReconstModel``/``ReconstFit``
split combined with qMRLab's declared model properties.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

#: name -> model class; filled at import by :func:`register`, never changed afterwards.
REGISTRY: dict[str, type[QMRIModel]] = {}


#: plausible relative B1+ (actual / nominal flip angle): ~0.7-1.3 at 3 T, ~0.4-1.6 at 7 T
B1_RANGE = (0.3, 2.0)


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


def sidecar_path(path: str) -> str:
    """The JSON sidecar path of an image path (``x.nii.gz`` -> ``x.json``), for messages."""
    for ext in (".nii.gz", ".nii"):
        if path.endswith(ext):
            return path[: -len(ext)] + ".json"
    return path


@dataclass(frozen=True)
class MetaSpec:
    """A sidecar key a model needs, with its kind and plausible range in SI units.

    Parameters
    ----------
    key : str
        BIDS metadata key, e.g. ``'EchoTime'``.
    kind : {'time', 'angle', 'bool', 'number'}
        ``'time'`` values are seconds, ``'angle'`` values degrees.
    valid : (2,) tuple of float
        Inclusive plausible range (s for times, degrees for angles).
    aliases : tuple of str
        Other keys accepted for the same quantity (first found wins, the key used is recorded).
    required : bool
        Missing required keys raise :class:`~bids_app.errors.MetadataError`.
    """

    key: str
    kind: str = "number"
    valid: tuple[float, float] = (-np.inf, np.inf)
    aliases: tuple[str, ...] = ()
    required: bool = True


@dataclass(frozen=True)
class InputSpec:
    """One input collection of a model.

    Parameters
    ----------
    name : str
        Role name inside the model, e.g. ``'vfa'``.
    query : mapping
        pybids filters selecting the files (``suffix``, ``datatype``, entities).
    metadata : tuple of MetaSpec
        Sidecar keys to resolve and check for every volume.
    stack_along : tuple of str
        Metadata keys that order the volumes on the last axis (sorted lexicographically by
        their values); their combination must be unique within a collection.
    index_entities : tuple of str
        Entities that vary *within* one collection (``flip``, ``echo``, ``mt``, ``inv``); all
        other entities identify the collection (two ``acq`` values are two collections).
    n_volumes : (2,) tuple of int
        Minimum and maximum number of volumes (maximum ``0`` means no limit).
    optional : bool
        Whether the model runs without this input.
    """

    name: str
    query: Mapping[str, Any]
    metadata: tuple[MetaSpec, ...] = ()
    stack_along: tuple[str, ...] = ()
    index_entities: tuple[str, ...] = ()
    n_volumes: tuple[int, int] = (1, 0)
    optional: bool = False


@dataclass(frozen=True)
class OutputSpec:
    """One output map of a model; its position in ``outputs`` is its column in ``params``.

    Parameters
    ----------
    name : str
        Short name used in code and tables, e.g. ``'T1'``.
    suffix : str
        BIDS suffix, e.g. ``'T1map'``.
    units : str
        The sidecar ``Units`` (CONTRACT section 4).
    desc : str or None
        ``desc`` entity, only where the suffix alone would collide with another model's output.
    valid_range : (2,) tuple of float or None
        Physical range; values outside become NaN and are counted.
    """

    name: str
    suffix: str
    units: str
    desc: str | None = None
    valid_range: tuple[float, float] | None = None

    @property
    def key(self) -> str:
        """Name of the map in tables: ``'T1map'`` or ``'desc-MTS_T1map'``."""
        return f"desc-{self.desc}_{self.suffix}" if self.desc else self.suffix


@dataclass(frozen=True)
class Volume:
    """One image of a collection: its path, BIDS entities and raw sidecar metadata."""

    path: str
    entities: Mapping[str, Any]
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class Collection:
    """Ordered volumes of one input with their checked acquisition parameters.

    ``params[key]`` holds one float per volume, in SI units (s, degrees), already checked by
    :mod:`bids_app.bids.metadata`; ``sources[key]`` the sidecar key actually read.
    """

    name: str
    volumes: tuple[Volume, ...]
    params: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        """Image paths in stacking order."""
        return [v.path for v in self.volumes]

    def values(self, key: str) -> np.ndarray:
        """Per-volume values of ``key`` as a float array of shape (n_volumes,)."""
        return np.asarray(self.params[key], dtype=float)

    def common(self, key: str, *, rtol: float = 1e-3) -> float:
        """The single value of ``key`` shared by all volumes.

        Raises
        ------
        MetadataError
            If the volumes disagree (naming the first disagreeing file).
        """
        from bids_app.errors import MetadataError

        vals = self.values(key)
        bad = np.flatnonzero(~np.isclose(vals, vals[0], rtol=rtol, atol=0))
        if bad.size:
            vol = self.volumes[bad[0]]
            raise MetadataError(
                sidecar_path(vol.path),
                self.sources.get(key, key),
                float(vals[bad[0]]),
                f"the same value as {sidecar_path(self.volumes[0].path)} ({float(vals[0])!r})"
                " within one collection",
            )
        return float(vals[0])


class QMRIModel(ABC):
    """Base class of every qMRI model (acquisition-dependent state only).

    Subclasses set the class attributes and implement :meth:`from_collections` and
    :meth:`_fit_voxels`; :meth:`fit` is shared.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    inputs: ClassVar[tuple[InputSpec, ...]]
    outputs: ClassVar[tuple[OutputSpec, ...]]
    #: alternative sets of input names; the first fully present set is used
    alternatives: ClassVar[tuple[tuple[str, ...], ...]] = ()
    #: whether the model accepts a relative B1+ map (``b1=`` voxel covariate)
    uses_b1: ClassVar[bool] = False
    #: short reference for sidecars (``EstimationReference``)
    reference: ClassVar[str] = ""
    #: option name -> allowed values (first is the default); strings only
    option_choices: ClassVar[Mapping[str, tuple[Any, ...]]] = {}

    def __init__(self, **options: Any):
        self.options = self.check_options(options)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults and validate option values against :attr:`option_choices`.

        Raises
        ------
        ValueError
            For an unknown option or value, listing the valid ones.
        """
        out = {k: v[0] for k, v in cls.option_choices.items()}
        for key, value in options.items():
            if key not in cls.option_choices:
                raise ValueError(
                    f"{cls.name}: unknown option {key!r}; valid: {sorted(cls.option_choices)}"
                )
            allowed = cls.option_choices[key]
            if not isinstance(allowed[0], (int, float)) or isinstance(allowed[0], bool):
                if value not in allowed:
                    raise ValueError(f"{cls.name}: {key}={value!r}; valid: {list(allowed)}")
            out[key] = value
        return out

    @classmethod
    def input_sets(cls) -> tuple[tuple[str, ...], ...]:
        """The alternative sets of required input names, in order of preference."""
        if cls.alternatives:
            return cls.alternatives
        return (tuple(s.name for s in cls.inputs if not s.optional),)

    @classmethod
    @abstractmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> QMRIModel:
        """Build the model from checked collections (SI units); raise MetadataError if unfit."""

    @property
    @abstractmethod
    def acquisition(self) -> dict[str, Any]:
        """Acquisition parameters as used, in order, for the output sidecars."""

    @abstractmethod
    def _fit_voxels(self, signal: np.ndarray, **covariates: np.ndarray) -> np.ndarray:
        """Fit ``signal`` of shape (n_vox, n_meas); return (n_vox, n_params), NaN if undefined."""

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

    def spatial_postprocess(
        self, maps: dict[str, np.ndarray], *, zooms: tuple[float, ...], mask: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Spatial step after the voxel fit (e.g. B1 smoothing); identity by default."""
        return maps

    def fit(self, data: np.ndarray, *, mask: np.ndarray | None = None, **kwargs) -> QMRIFit:
        """Fit ``data`` of shape (..., n_meas); see :func:`~bids_app.models.fitting.fit_masked`."""
        from bids_app.models.fitting import fit_masked

        return fit_masked(self, data, mask=mask, **kwargs)


class QMRIFit:
    """Parameters of a fitted model, with maps derived on demand.

    Parameters
    ----------
    model : QMRIModel
    params : (..., n_params) ndarray
        NaN outside the mask and where the fit is undefined.
    rmse : (...) ndarray or None
        Root-mean-square residual of the fit in signal units (``None`` for closed forms that
        fit exactly).
    """

    def __init__(self, model: QMRIModel, params: np.ndarray, rmse: np.ndarray | None = None):
        self.model, self.params, self.rmse = model, params, rmse

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the fit."""
        return self.params.shape[:-1]

    @cached_property
    def _checked(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        maps, n_out = {}, {}
        for i, spec in enumerate(self.model.outputs):
            p = np.asarray(self.params[..., i], dtype=np.float64)
            with np.errstate(over="ignore"):
                m = p.astype(np.float32)
            # the range is checked on the float64 value; a finite value beyond float32 (e.g.
            # 1e300 from a 1e300 signal) would become +-inf in the map, so it is out of range too
            out = np.isfinite(p) & ~np.isfinite(m)
            if spec.valid_range is not None:
                lo, hi = spec.valid_range
                out |= np.isfinite(p) & ((p < lo) | (p > hi))
            n_out[spec.name] = int(out.sum())
            m[out] = np.nan
            maps[spec.name] = m
        return maps, n_out

    def maps(self) -> dict[str, np.ndarray]:
        """Output name -> float32 map, NaN outside the valid range (or beyond float32)."""
        return dict(self._checked[0])

    def n_out_of_range(self) -> dict[str, int]:
        """Output name -> number of finite voxels set to NaN for leaving the valid range.

        Values too large for float32 count as out of range.
        """
        return dict(self._checked[1])


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


def model_names() -> list[str]:
    """Registered model names in registration order."""
    return list(REGISTRY)
