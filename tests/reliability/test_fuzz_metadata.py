"""Property-based tests of the metadata resolver over arbitrary sidecar values.

Whatever JSON a sidecar holds (numbers, strings, booleans, null, lists, nested objects, NaN,
infinities, values in the wrong unit), :func:`~bids_app.bids.metadata.check_value` and
:func:`~bids_app.bids.metadata.build_collection` give either a valid value or a
:class:`~bids_app.errors.MetadataError` naming the file and the key; values are never
converted or repaired. A checked collection then builds its model or fails with
``MetadataError`` as well (exit 65), never with another exception (exit 1, "a bug").

Hypothesis runs derandomized (the same examples on every run, no example database) with a
modest number of examples; set ``MSQMRI_FUZZ_EXAMPLES`` for a longer local search.
"""

from __future__ import annotations

import json
import math
import os

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from bids_app.bids.metadata import build_collection, check_value
from bids_app.errors import MetadataError
from bids_app.models import REGISTRY
from bids_app.models.base import InputSpec, MetaSpec, Volume

FUZZ = settings(
    max_examples=int(os.environ.get("MSQMRI_FUZZ_EXAMPLES", "500")),
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SIDECAR = "/data/sub-01/anat/sub-01_fuzz.json"
DELETE = object()  # a mutation that removes the key

#: every sidecar key a registered model reads, with its kind and range
REGISTRY_SPECS = sorted(
    {ms for model in REGISTRY.values() for spec in model.inputs for ms in spec.metadata},
    key=lambda ms: (ms.key, ms.kind, ms.valid),
)
#: (model, input) pairs of the registry
#: the registry's inputs of 3-D volumes: 4-D series read their images to count measurements,
#: which these file-less cases do not have (their checks: tests/contract/test_newcomer_series.py
#: and tests/models/test_diffusion.py, with real files; fuzzing them with files is to do)
INPUTS = [(model, spec) for model in REGISTRY.values() for spec in model.inputs if not spec.series]

json_scalars = (
    st.none()
    | st.booleans()
    # integers beyond the float range are test_integer_beyond_float_range_... below
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats()  # NaN, +-inf, -0.0 and subnormals included
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


def _edge_numbers(ms: MetaSpec) -> st.SearchStrategy:
    """Values at and beyond the range, and the same quantity in another unit."""
    lo, hi = ms.valid
    finite = [v for v in (lo, hi) if math.isfinite(v)]
    others = [0, -0.0, -1, 1, 3.5, 15, 90, 180, 1e-12, 1e12, math.pi]
    for v in finite:
        others += [v * 1000, v / 1000, math.radians(v), math.nextafter(v, -math.inf)]
        others += [math.nextafter(v, math.inf), -v]
    return st.sampled_from(finite + others)


@st.composite
def metaspecs(draw, kinds=("time", "angle", "bool", "number")) -> MetaSpec:
    """A key spec of the registry, or a random one with a finite range."""
    if draw(st.booleans()):
        ms = draw(st.sampled_from([m for m in REGISTRY_SPECS if m.kind in kinds]))
        return MetaSpec("Key", ms.kind, ms.valid)
    lo = draw(st.floats(-1e3, 1e3))
    hi = lo + draw(st.floats(0, 1e3))
    return MetaSpec("Key", draw(st.sampled_from(kinds)), (lo, hi))


def is_valid(ms: MetaSpec, raw, got) -> bool:
    """Whether ``got`` is what ``check_value`` may return for ``raw`` (unchanged, in range)."""
    if ms.kind == "bool":
        return got is raw and isinstance(got, bool)
    lo, hi = ms.valid
    ok = type(got) is float and math.isfinite(got) and lo <= got <= hi and got == raw
    return ok and (ms.kind != "angle" or got > 0)


# ----------------------------------------------------------------------------- check_value


def outcome(func, *args):
    """``(result, None)``, or ``(None, error)`` when ``func`` raises MetadataError."""
    try:
        return func(*args), None
    except MetadataError as err:
        return None, err


@FUZZ
@given(ms=metaspecs(), data=st.data())
def test_check_value_gives_a_valid_value_or_metadata_error(ms, data):
    raw = data.draw(json_values | _edge_numbers(ms), label="raw")
    got, err = outcome(check_value, SIDECAR, ms, "Key", raw)
    event("refused" if err else "accepted")
    if err is not None:
        assert (err.path, err.key) == (SIDECAR, "Key")
        assert SIDECAR in str(err)
        assert "Key=" in str(err)
    else:
        assert is_valid(ms, raw, got), (raw, got)


@FUZZ
@given(ms=metaspecs(kinds=("time", "number", "angle")), data=st.data())
def test_check_value_accepts_every_plausible_value(ms, data):
    lo, hi = ms.valid
    if ms.kind == "angle":  # whole degrees are never mistaken for radians
        assume(math.floor(hi) >= math.ceil(max(lo, 1)))
        raw = data.draw(st.integers(math.ceil(max(lo, 1)), math.floor(hi)))
    else:
        raw = data.draw(st.floats(lo, hi))
    assert check_value(SIDECAR, ms, "Key", raw) == raw


def test_integer_beyond_float_range_is_a_metadata_error():
    """JSON integers have no size limit (``json.loads('1' + 400 * '0')`` is an int)."""
    for kind in ("time", "angle", "number"):
        with pytest.raises(MetadataError, match="Key="):
            check_value(SIDECAR, MetaSpec("Key", kind, (0.0, 1.0)), "Key", 10**400)


# ----------------------------------------------------------------------------- collections


@st.composite
def plausible_value(draw, ms: MetaSpec):
    if ms.kind == "bool":
        return draw(st.booleans())
    lo, hi = ms.valid
    if ms.kind == "angle":
        return draw(st.integers(math.ceil(max(lo, 1)), math.floor(hi)))
    return draw(st.floats(lo, hi))


@st.composite
def collection_case(draw):
    """A registry input, sidecars that mostly make sense, and a few arbitrary mutations."""
    model, spec = draw(st.sampled_from(INPUTS))
    lo_n, hi_n = spec.n_volumes
    n = draw(st.integers(lo_n, hi_n or lo_n + 3))
    n = draw(st.sampled_from([n, n, n, max(1, lo_n - 1), (hi_n or lo_n + 3) + 1]))
    metas = [{} for _ in range(n)]
    for ms in spec.metadata:
        if ms.key in spec.stack_along and ms.kind != "bool":  # distinct, as the roles need
            values = draw(st.lists(plausible_value(ms), min_size=n, max_size=n, unique=True))
        elif draw(st.booleans()):
            values = [draw(plausible_value(ms))] * n  # shared by the collection
        else:
            values = [draw(plausible_value(ms)) for _ in range(n)]
        for meta, value in zip(metas, values, strict=True):
            meta[ms.key] = value
    keys = [ms.key for ms in spec.metadata]
    if "MTState" in keys:  # the usual roles: one MT-on volume
        states = draw(st.permutations([False] * (n - 1) + [True]))
        for meta, state in zip(metas, states, strict=True):
            meta["MTState"] = state
    if spec.name == "tb1dam" and n == 2:
        alpha = draw(st.integers(1, 90))
        for meta, flip in zip(metas, draw(st.permutations([alpha, 2 * alpha])), strict=True):
            meta["FlipAngle"] = flip
    targets = keys + [a for ms in spec.metadata for a in ms.aliases] + ["Units"]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        i, key = draw(st.integers(0, n - 1)), draw(st.sampled_from(targets))
        new = draw(st.just(DELETE) | json_values | st.sampled_from([0, -1, 15, 3.5, 0.349]))
        if new is DELETE:
            metas[i].pop(key, None)
        else:
            metas[i][key] = new
    volumes = [Volume(f"/data/sub-01/vol-{i}.nii.gz", {}, meta) for i, meta in enumerate(metas)]
    return model, spec, volumes


def _check_collection(spec: InputSpec, volumes: list[Volume], coll) -> None:
    assert sorted(coll.paths) == sorted(v.path for v in volumes)
    for ms in spec.metadata:
        values = coll.params[ms.key]
        assert len(values) == len(volumes)
        for vol, value in zip(coll.volumes, values, strict=True):
            names = [k for k in (ms.key, *ms.aliases) if vol.metadata.get(k) is not None]
            if not names:  # an optional key absent from this sidecar
                assert not ms.required
                assert value is None
                continue
            assert is_valid(ms, vol.metadata[names[0]], value), (ms.key, names, value)
        if any(v is not None for v in values):
            assert coll.sources[ms.key] in (ms.key, *ms.aliases)
    if spec.stack_along:
        order = [tuple(coll.params[k][i] for k in spec.stack_along) for i in range(len(values))]
        assert order == sorted(order)
        assert len(set(order)) == len(order)


@FUZZ
@given(case=collection_case())
def test_collection_and_model_or_metadata_error(case):
    model, spec, volumes = case
    coll, err = outcome(build_collection, spec, volumes)
    if err is not None:
        event("collection refused")
        assert err.key
        assert err.path is None or err.path.startswith("/data/sub-01/vol-")
        return
    _check_collection(spec, volumes, coll)
    if (spec.name,) not in model.input_sets():
        return  # the pipeline builds the model from a whole input set only
    built, err = outcome(model.from_collections, {spec.name: coll})
    event(f"{model.name}/{spec.name}: " + ("model refused" if err else "model built"))
    if err is not None:
        assert err.key
        return
    # what goes into the sidecars is finite JSON
    json.dumps(built.acquisition, allow_nan=False)
    assert built.name == model.name


def test_missing_optional_stacking_key_is_a_metadata_error():
    """A volume without an optional key that orders the collection (no such model yet)."""
    spec = InputSpec(
        "x",
        {"suffix": "X"},
        metadata=(MetaSpec("EchoTime", "time", (1e-3, 1.0), required=False),),
        stack_along=("EchoTime",),
    )
    volumes = [
        Volume("/data/a.nii.gz", {}, {"EchoTime": 0.01}),
        Volume("/data/b.nii.gz", {}, {}),
    ]
    outcome(build_collection, spec, volumes)  # a collection or MetadataError
