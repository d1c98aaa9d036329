"""Metadata resolver: every sidecar value a model uses is checked here, never guessed.

Times must be in seconds and angles in degrees (BIDS). A value that is plausible only in
another unit (an ``EchoTime`` of 3.5, a ``RepetitionTime`` of 15, a ``FlipAngle`` of 0.349)
is refused with :class:`~bids_app.errors.MetadataError` naming the file, the key, the value
and the expected unit, which the CLI turns into exit 65.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.base import Collection, InputSpec, MetaSpec, Volume
from bids_app.models.base import sidecar_path as _sidecar


def _lookup(meta: Mapping[str, Any], spec: MetaSpec) -> tuple[str, Any]:
    for key in (spec.key, *spec.aliases):
        if meta.get(key) is not None:  # a key set to null is absent: try the aliases
            return key, meta[key]
    return spec.key, None


def _looks_like_radians(value: float) -> bool:
    """True for non-integer values below pi that are an integer number of degrees in radians."""
    if value >= math.pi or float(value).is_integer():
        return False
    deg = math.degrees(value)
    return abs(deg - round(deg)) < 0.02 * max(1.0, abs(deg)) and round(deg) >= 1


def check_value(path: str, spec: MetaSpec, key: str, value: Any) -> Any:
    """Check one metadata value against its spec and return it in SI units / degrees.

    Parameters
    ----------
    path : str
        The sidecar (or image) the value came from, for the error message.
    spec : MetaSpec
        Kind and plausible range.
    key : str
        The key actually read (``spec.key`` or an alias).
    value : object
        The raw JSON value.

    Returns
    -------
    float or bool

    Raises
    ------
    MetadataError
        Wrong type, non-finite, out of range, or plausible only in another unit.
    """
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise MetadataError(path, key, value, "a JSON boolean (true or false)")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        unit = {"time": "a number in seconds", "angle": "a number in degrees"}
        raise MetadataError(path, key, value, unit.get(spec.kind, "a number"))
    try:
        x = float(value)
    except OverflowError:  # JSON integers have no size limit
        raise MetadataError(path, key, value, "a finite number") from None
    lo, hi = spec.valid
    if not math.isfinite(x):
        raise MetadataError(path, key, value, "a finite number")
    if spec.kind == "time":
        if x > hi and lo * 1000 <= x <= hi * 1000:
            raise MetadataError(
                path,
                key,
                value,
                f"seconds in [{lo:g}, {hi:g}]; this looks like milliseconds "
                f"({x / 1000:g} s?) — BIDS times are in seconds",
            )
        if not lo <= x <= hi:
            raise MetadataError(path, key, value, f"seconds in [{lo:g}, {hi:g}]")
    elif spec.kind == "angle":
        if _looks_like_radians(x) or (x < lo and x <= math.pi and x > 0):
            raise MetadataError(
                path,
                key,
                value,
                f"degrees in [{lo:g}, {hi:g}]; this looks like radians "
                f"({math.degrees(x):.4g} deg?) — BIDS angles are in degrees",
            )
        if not (lo <= x <= hi and x > 0):
            raise MetadataError(path, key, value, f"degrees in ({max(lo, 0):g}, {hi:g}]")
    elif not lo <= x <= hi:
        raise MetadataError(path, key, value, f"a number in [{lo:g}, {hi:g}]")
    return x


def build_collection(spec: InputSpec, volumes: Sequence[Volume], layout=None) -> Collection:
    """Check the metadata of ``volumes`` and order them along ``spec.stack_along``.

    Parameters
    ----------
    spec : InputSpec
        The model input being resolved.
    volumes : sequence of Volume
        Images of one collection (their ``metadata`` already merged by pybids inheritance).
    layout : BIDSLayout, optional
        Where companion tables of a 4-D series are looked up (inheritance); without it, beside
        the image.

    Returns
    -------
    Collection
        Volumes sorted by their stacking metadata values; ``params`` holds checked values.

    Raises
    ------
    MetadataError
        Missing required key, wrong unit/type/range, too few/many volumes, or two volumes
        with the same stacking value (duplicated echo or flip).
    """
    if not volumes:
        raise ValueError(f"no volumes for input {spec.name!r}")
    lo_n, hi_n = spec.n_volumes
    if len(volumes) < lo_n or (hi_n and len(volumes) > hi_n):
        expected = (
            f"{lo_n}"
            if lo_n == hi_n
            else f"at least {lo_n}" + (f" and at most {hi_n}" if hi_n else "")
        )
        raise MetadataError(
            volumes[0].path,
            "number of volumes",
            len(volumes),
            f"{expected} {spec.query.get('suffix', spec.name)} images in one collection "
            f"(found {[v.path for v in volumes]})",
        )
    params: dict[str, list[Any]] = {}
    sources: dict[str, str] = {}
    for ms in spec.metadata:
        if ms.per_measurement:
            continue  # read per measurement below, once the order is known
        vals = []
        for vol in volumes:
            key, raw = _lookup(vol.metadata, ms)
            if raw is None:
                if ms.required:
                    raise MetadataError(
                        _sidecar(vol.path),
                        ms.key,
                        None,
                        f"the key to be present (aliases: {list(ms.aliases)})"
                        if ms.aliases
                        else "the key to be present",
                    )
                vals.append(None)
                continue
            vals.append(check_value(_sidecar(vol.path), ms, key, raw))
            sources[ms.key] = key
        params[ms.key] = vals
    if "MTState" in params:  # an mt-on file must not say MTState false (and vice versa)
        unordered = Collection(spec.name, tuple(volumes), {k: tuple(v) for k, v in params.items()})
        check_entity_agreement(unordered, "mt", "MTState", {"on": True, "off": False})
    order = list(range(len(volumes)))
    if spec.stack_along:
        for k in spec.stack_along:
            for i, v in enumerate(params[k]):
                if v is None:
                    raise MetadataError(
                        _sidecar(volumes[i].path),
                        k,
                        None,
                        "the key to be present: it orders the volumes of the collection",
                    )
        keys = [tuple(params[k][i] for k in spec.stack_along) for i in order]
        seen: dict[tuple, int] = {}
        for i, k in enumerate(keys):
            if k in seen:
                raise MetadataError(
                    _sidecar(volumes[i].path),
                    "/".join(spec.stack_along),
                    k[0] if len(k) == 1 else k,
                    f"a value distinct from {volumes[seen[k]].path} (duplicated "
                    f"{'/'.join(spec.stack_along)} within one collection)",
                )
            seen[k] = i
        order.sort(key=lambda i: keys[i])
    ordered = tuple(volumes[i] for i in order)
    tables, counts = _series_tables(spec, ordered, layout, sources) if spec.series else ({}, ())
    coll = Collection(
        name=spec.name,
        volumes=ordered,
        params={k: tuple(v[i] for i in order) for k, v in params.items()},
        sources=sources,
        tables=tables,
        n_measurements=counts,
    )
    return coll


def _series_tables(
    spec: InputSpec, volumes: Sequence[Volume], layout, sources: dict[str, str]
) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
    """Companion tables and per-measurement metadata of a 4-D series, concatenated."""
    from bids_app.bids.companions import check_gradients, n_measurements, read_companion

    counts = tuple(n_measurements(v.path) for v in volumes)
    tables: dict[str, list[np.ndarray]] = {}
    for vol, n in zip(volumes, counts, strict=True):
        for comp in spec.companions:
            arr = read_companion(vol.path, comp, n, layout)
            if arr is not None:
                tables.setdefault(comp.name, []).append(arr)
        if "bval" in tables and "bvec" in tables:
            check_gradients(tables["bval"][-1], tables["bvec"][-1], vol.path)
        for ms in spec.metadata:
            if ms.per_measurement:
                tables.setdefault(ms.key, []).append(_per_measurement(vol, ms, n, sources))
    out = {k: np.concatenate(v) for k, v in tables.items() if len(v) == len(volumes)}
    return out, counts


def _per_measurement(vol: Volume, ms: MetaSpec, n: int, sources: dict[str, str]) -> np.ndarray:
    """A per-measurement key: a list of ``n`` values, or one value repeated ``n`` times."""
    key, raw = _lookup(vol.metadata, ms)
    path = _sidecar(vol.path)
    if raw is None:
        if ms.required:
            raise MetadataError(path, ms.key, None, "the key to be present")
        return np.full(n, np.nan)
    sources[ms.key] = key
    if isinstance(raw, list):
        if len(raw) != n:
            raise MetadataError(path, key, f"{len(raw)} values", f"{n} (one per volume) or one")
        return np.asarray([check_value(path, ms, key, v) for v in raw], dtype=float)
    return np.full(n, float(check_value(path, ms, key, raw)))


def check_entity_agreement(coll: Collection, entity: str, key: str, mapping: Mapping) -> None:
    """Check an entity agrees with its metadata (e.g. ``mt-on`` with ``MTState: true``).

    Raises
    ------
    MetadataError
        When the entity value and the metadata disagree.
    """
    for vol, val in zip(coll.volumes, coll.params.get(key, ()), strict=False):
        ent = vol.entities.get(entity)
        if ent is not None and ent in mapping and val is not None and mapping[ent] != val:
            raise MetadataError(
                _sidecar(vol.path), key, val, f"{mapping[ent]!r} to agree with {entity}-{ent}"
            )


def as_float_array(values: Sequence[Any]) -> np.ndarray:
    """Convert checked values to a float array (booleans become 0/1)."""
    return np.asarray([float(v) for v in values])
