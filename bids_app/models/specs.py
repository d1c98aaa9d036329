"""What a model declares: inputs, metadata, companion tables, outputs, options, requirements.

These are frozen dataclasses, data only; the pipeline reads them to find files
(:mod:`bids_app.bids.query`), check metadata (:mod:`bids_app.bids.metadata`), check options at
start-up, order the models by what they need from each other, and name and describe outputs.
The declarations follow qMRLab's model properties (inputs, ``xnames``, protocol with units,
options) and dipy's acquisition-only models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: entities an output may add to the source entities (BEP016 ``model``/``param``, ``desc``)
OUTPUT_ENTITIES = ("model", "param", "desc")


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
    per_measurement : bool
        The value may be a list with one entry per measurement of a 4-D series (e.g. ASL
        ``PostLabelingDelay``); a scalar applies to every measurement. The checked values are
        in :attr:`Collection.tables` under ``key``.
    """

    key: str
    kind: str = "number"
    valid: tuple[float, float] = (-np.inf, np.inf)
    aliases: tuple[str, ...] = ()
    required: bool = True
    per_measurement: bool = False


@dataclass(frozen=True)
class Companion:
    """A file beside a 4-D series giving one row per measurement (``.bval``, ``_aslcontext``).

    Parameters
    ----------
    name : str
        Key in :attr:`Collection.tables`, e.g. ``'bval'``.
    suffix : str
        Suffix of the companion file (``'dwi'`` for ``.bval``, ``'aslcontext'``).
    extension : str
        ``'.bval'``, ``'.bvec'`` or ``'.tsv'``.
    reader : {'bval', 'bvec', 'tsv_column'}
        How it is read (:mod:`bids_app.bids.companions`).
    column : str
        The TSV column for ``'tsv_column'`` (``'volume_type'``).
    required : bool
        Missing required companions raise :class:`~bids_app.errors.MetadataError`.
    """

    name: str
    suffix: str
    extension: str
    reader: str
    column: str = ""
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
        Sidecar keys to resolve and check for every file.
    stack_along : tuple of str
        Metadata keys that order the files on the last axis (sorted lexicographically by
        their values); their combination must be unique within a collection.
    index_entities : tuple of str
        Entities that vary *within* one collection (``flip``, ``echo``, ``mt``, ``inv``); all
        other entities identify the collection (two ``acq`` values are two collections).
    n_volumes : (2,) tuple of int
        Minimum and maximum number of files (maximum ``0`` means no limit).
    optional : bool
        Whether the model runs without this input.
    series : bool
        Files may be 4-D, measurements on the last axis (DWI, ASL); several files of one
        collection are concatenated along it in stacking order.
    companions : tuple of Companion
        Per-measurement tables read beside each file (series only).
    from_derivatives : bool
        Look for the files in the ``--derivatives`` datasets (e.g. preprocessed DWI) before
        the raw dataset; a file found there is used as is.
    """

    name: str
    query: Mapping[str, Any]
    metadata: tuple[MetaSpec, ...] = ()
    stack_along: tuple[str, ...] = ()
    index_entities: tuple[str, ...] = ()
    n_volumes: tuple[int, int] = (1, 0)
    optional: bool = False
    series: bool = False
    companions: tuple[Companion, ...] = ()
    from_derivatives: bool = False


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
    entities : mapping
        Further entities of the name, from :data:`OUTPUT_ENTITIES` only (BEP016
        ``{'model': 'tensor', 'param': 'fa'}``); others raise ``ValueError``.
    datatype : str or None
        Folder of the output (``'dwi'``, ``'perf'``); default the lead input's datatype.
    """

    name: str
    suffix: str
    units: str
    desc: str | None = None
    valid_range: tuple[float, float] | None = None
    entities: Mapping[str, str] = field(default_factory=dict)
    datatype: str | None = None

    def __post_init__(self):
        unknown = set(self.entities) - set(OUTPUT_ENTITIES)
        if unknown:
            raise ValueError(
                f"output {self.name!r}: unknown entities {sorted(unknown)}; "
                f"allowed: {list(OUTPUT_ENTITIES)}"
            )
        for key, value in self.entities.items():
            if not str(value).isalnum():
                raise ValueError(f"output {self.name!r}: {key}={value!r} is not alphanumeric")

    @property
    def name_entities(self) -> dict[str, str]:
        """The entities this output adds to the source entities (``desc`` included)."""
        out = dict(self.entities)
        if self.desc:
            out["desc"] = self.desc
        return out

    @property
    def key(self) -> str:
        """Name of the map in tables, e.g. ``'desc-MTS_T1map'``, ``'model-a_param-b_dwimap'``."""
        ents = self.name_entities
        parts = [f"{k}-{ents[k]}" for k in OUTPUT_ENTITIES if k in ents]
        return "_".join([*parts, self.suffix])


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Option:
    """A typed model option: default, type, choices or range, unit.

    Parameters
    ----------
    default : bool, int, float or str
    type : {bool, int, float, str}
        ``float`` accepts integers; ``bool`` accepts only ``true``/``false``, never 0/1.
    choices : tuple
        Allowed values (empty: any value of the type within ``range``).
    range : (2,) tuple of float or None
        Inclusive range of a number.
    unit : str
        Unit of a number, shown in ``--models list`` and errors.
    doc : str
        One line for ``--models list``.
    """

    default: Any
    type: type = str
    choices: tuple[Any, ...] = ()
    range: tuple[float, float] | None = None
    unit: str = ""
    doc: str = ""

    def check(self, name: str, value: Any) -> Any:
        """Return ``value`` (floats as float) if valid.

        Raises
        ------
        ValueError
            Naming the option, the value and what was expected.
        """
        ok_type = isinstance(value, self.type) and not (
            self.type is not bool and isinstance(value, bool)
        )
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            ok_type = True
        if not ok_type:
            raise ValueError(f"{name}={value!r}; expected {self.describe()}")
        if self.type is float:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{name}={value!r}; expected {self.describe()}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{name}={value!r}; valid: {list(self.choices)}")
        if self.range is not None and not self.range[0] <= value <= self.range[1]:
            raise ValueError(f"{name}={value!r}; expected {self.describe()}")
        return value

    def describe(self) -> str:
        """What the option accepts, e.g. ``'a number in [0, 50] mm'``."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        text = _TYPE_NAMES.get(self.type, self.type.__name__)
        if self.range is not None:
            text += f" in [{self.range[0]:g}, {self.range[1]:g}]"
        return text + (f" {self.unit}" if self.unit else "")


@dataclass(frozen=True)
class Requirement:
    """A product of another model (or of the anatomy stage) that a model consumes.

    Parameters
    ----------
    name : str
        Covariate name the consumer receives, e.g. ``'b1'``.
    model : str
        Producer: a registered model name (``'b1'``, ``'vfa_t1'``) or ``'anatomy'`` for the
        subject's masks (outputs ``'brain'``, ``'tissue'``, ``'lesion'``).
    output : str
        The producer's output name (``'B1'``, ``'T1'``).
    required : bool
        Without the product the consumer is skipped with a logged reason (required) or fitted
        without it, with a warning and ``Applied: false`` in its sidecar (optional).
    order : int
        Interpolation order onto the consumer's grid (1 trilinear, 0 nearest for labels).
    sidecar_key : str
        Key of the provenance record in the consumer's sidecars (``'B1Correction'``).
    policy : str
        Name of the run option that may switch the product off (``'b1'``: ``--b1 none``).
    """

    name: str
    model: str
    output: str
    required: bool = False
    order: int = 1
    sidecar_key: str = ""
    policy: str = ""

    @property
    def record_key(self) -> str:
        """The sidecar key of the provenance record."""
        return self.sidecar_key or f"Requires_{self.name}"


@dataclass(frozen=True)
class Volume:
    """One image file: path, BIDS entities, merged sidecar metadata, and its dataset.

    ``dataset`` is ``'raw'`` for the input dataset, else the ``--derivatives`` name;
    ``root`` the dataset root (for ``bids:<dataset>:<relpath>`` URIs).
    """

    path: str
    entities: Mapping[str, Any]
    metadata: Mapping[str, Any]
    dataset: str = "raw"
    root: str | None = None


@dataclass(frozen=True)
class Collection:
    """Ordered files of one input with their checked acquisition parameters.

    ``params[key]`` holds one value per file, in SI units (s, degrees), already checked by
    :mod:`bids_app.bids.metadata`; ``sources[key]`` the sidecar key actually read.
    ``tables[name]`` holds one row per *measurement* (4-D series): companion tables
    (``bval`` (n,), ``bvec`` (n, 3), ``aslcontext`` (n,) str) and per-measurement metadata.
    """

    name: str
    volumes: tuple[Volume, ...]
    params: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    tables: Mapping[str, np.ndarray] = field(default_factory=dict)
    n_measurements: tuple[int, ...] = ()

    @property
    def paths(self) -> list[str]:
        """Image paths in stacking order."""
        return [v.path for v in self.volumes]

    def values(self, key: str) -> np.ndarray:
        """Per-file values of ``key`` as a float array of shape (n_files,)."""
        return np.asarray(self.params[key], dtype=float)

    def common(self, key: str, *, rtol: float = 1e-3) -> float:
        """The single value of ``key`` shared by all files.

        Raises
        ------
        MetadataError
            If the files disagree (naming the first disagreeing file).
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
