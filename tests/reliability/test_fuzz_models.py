"""Property-based tests of every registered model's fit on hostile signals.

Each model is built with random but plausible acquisition parameters (within the ranges the
metadata checks accept) and fitted to small arrays mixing realistic signals with zeros,
negatives, NaN, infinities, huge and tiny values, with random B1 maps where the model takes
one. Whatever the input:

* ``fit`` raises nothing (the documented errors concern shapes and acquisition parameters,
  which are valid here; a TB1map whose scale must be inferred may raise ``MetadataError``);
* every output of ``fit.maps()`` and of ``spatial_postprocess`` is NaN, or finite and inside
  its ``OutputSpec.valid_range``; ``rmse`` is NaN or finite and non-negative;
* a voxel whose fit is undefined gets NaN, not a number: any non-finite signal value, a
  signal without a positive value, outside the mask, and (for the outputs that use it) a B1
  that is not a positive finite number.

Hypothesis runs derandomized with a modest number of examples (``MSQMRI_FUZZ_EXAMPLES``
raises it for a longer local search).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bids_app.errors import MetadataError
from bids_app.models import REGISTRY
from bids_app.models.b1 import B1Model
from bids_app.models.base import QMRIModel
from bids_app.models.mwf.mwf import MIN_ECHOES
from bids_app.models.relaxometry import MEGRER2starModel
from tests.models.mt_forward import afi, gre_long_tr, spgr_mt

FUZZ = settings(
    max_examples=int(os.environ.get("MSQMRI_FUZZ_EXAMPLES", "150")),
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
#: outputs that do not depend on the B1 covariate (mwf fits the angle where B1 is not valid;
#: so does mese_t2 with fit_method='epg', and its mono-exponential fits never read B1)
B1_FREE = (
    {("mtsat", "MTR")}
    | {("mwf", o) for o in ("MWF", "IEWF", "T2MW", "T2IEW", "Angle", "SNR", "Residual")}
    | {("mese_t2", o) for o in ("T2", "R2", "M0", "Angle")}
    | {("mp2rage", "UNIT1")}  # from the two inversions alone
)
SPECIAL = [0.0, -0.0, -1.0, np.nan, np.inf, -np.inf, 1e300, -1e300, 1e-300, 5e-324, 3.5e38]
elements = st.one_of(
    st.floats(1e-3, 1e4),  # magnitude images
    st.floats(-1e4, 1e4),
    st.sampled_from(SPECIAL),
    st.floats(allow_nan=True, allow_infinity=True),
)
b1_elements = st.one_of(
    st.floats(0.3, 2.0),
    st.sampled_from([0.0, -0.5, np.nan, np.inf, -np.inf, 1e-300, 1e300]),
)


# ----------------------------------------------------------------------------- models


#: the voxelwise models of 3-D collections, fuzzed here with per-model acquisition
#: strategies; whole-volume and 4-D series models (qsm, the DWI and perfusion models) are
#: fuzzed with arbitrary signals by tests/models/test_registry_contract.py (strategies for
#: them here are still to write)
VOXELWISE = [
    name
    for name, cls in REGISTRY.items()
    if cls.kind == "voxelwise" and not any(spec.series for spec in cls.inputs)
]


def _build(cls, *args, **kwargs) -> QMRIModel:
    try:
        return cls(*args, **kwargs)
    except ValueError:  # documented: e.g. two MT-off flip angles within 0.1 %
        reject()


flips = st.floats(0.5, 90.0)


@st.composite
def models(draw, name: str) -> QMRIModel:
    """A model of the registry with plausible random acquisition parameters and options."""
    cls = REGISTRY[name]
    if name == "vfa_t1":
        return _build(
            cls,
            draw(st.lists(flips, min_size=2, max_size=5, unique=True)),
            draw(st.floats(1e-3, 0.5)),
            fit_method=draw(st.sampled_from(["linear", "nonlinear"])),
        )
    if name in ("megre_r2star", "mese_t2"):
        lo, hi = (1e-4, 0.2) if name == "megre_r2star" else (1e-3, 1.0)
        options = {"fit_method": draw(st.sampled_from(["loglinear", "nonlinear"]))}
        if name == "mese_t2":
            options["drop_first_echo"] = draw(st.booleans())
        n_min = 3 if options.get("drop_first_echo") else 2
        tes = draw(st.lists(st.floats(lo, hi), min_size=n_min, max_size=6, unique=True))
        return _build(cls, tes, **options)
    if name == "mtr":
        return _build(cls, draw(st.permutations([False, True])))
    if name == "mtsat":
        return _build(
            cls,
            draw(st.lists(flips, min_size=3, max_size=3, unique=True)),
            draw(st.lists(st.floats(1e-3, 0.5), min_size=3, max_size=3)),
            draw(st.permutations([False, False, True])),
            mt_b1_correction=draw(st.sampled_from(["none", "weiskopf2013"])),
            fit_method=draw(st.sampled_from(["exact", "helms2008"])),
        )
    if name == "b1":
        method = draw(st.sampled_from(["tb1map", "tb1afi", "tb1dam"]))
        if method == "tb1map":
            return _build(cls, "tb1map", scale=draw(st.sampled_from([1.0, 0.01, None])))
        if method == "tb1afi":
            flip = draw(st.floats(1.0, 180.0))
            trs = draw(st.lists(st.floats(1e-3, 1.0), min_size=2, max_size=2, unique=True))
            return _build(cls, "tb1afi", flip_angles=[flip, flip], repetition_times=trs)
        alpha = draw(st.floats(1.0, 90.0))
        return _build(cls, "tb1dam", flip_angles=draw(st.permutations([alpha, 2 * alpha])))
    if name == "mwf":  # CPMG trains; few distinct protocols, so the cached bases are reused
        n = draw(st.sampled_from([MIN_ECHOES, 17, 32]))
        tes = draw(st.sampled_from([0.005, 0.01])) * np.arange(1, n + 1)
        return _build(
            cls,
            draw(st.permutations(tes)),
            regularization=draw(st.sampled_from(["none", "chi2", "gcv", "lcurve"])),
            refocusing_angle=draw(st.sampled_from(["fit", "b1"])),
            n_t2=draw(st.sampled_from([8, 40])),
            angle_resolution=2.0,
        )
    return _generic(draw, cls, name)


def _generic(draw, cls, name: str) -> QMRIModel:
    """Any other model: its own example protocol with options drawn from their choices."""
    example = cls.example_collections()
    if example is None or cls.simulate is QMRIModel.simulate:
        raise AssertionError(f"no fuzz strategy for the registered model {name!r}: add one")
    options = {k: draw(st.sampled_from(o.choices)) for k, o in cls.options_spec.items()
               if o.choices}  # fmt: skip
    try:
        return cls.from_collections(example, **options)
    except ValueError:  # an option combination the model refuses (MetadataError, exit 65)
        reject()


def n_meas(model: QMRIModel) -> int:
    """Number of volumes the model's data has on its last axis."""
    for attr in ("flip_angle", "echo_time"):
        if hasattr(model, attr):
            return len(getattr(model, attr))
    if isinstance(model, B1Model):
        return 1 if model.method == "tb1map" else 2
    if model.name in ("mtr", "mtsat"):
        return {"mtr": 2, "mtsat": 3}[model.name]
    return model.simulate(1, np.random.default_rng(0))[1].shape[-1]


@st.composite
def realistic(draw, model: QMRIModel, n: int) -> np.ndarray:
    """:func:`simulate` with a seed drawn by hypothesis."""
    return simulate(model, n, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))


def simulate(model: QMRIModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n_meas) signals simulated from brain-like tissue, with 1 % noise."""
    t1, m0 = rng.uniform(0.3, 4.0, n), rng.uniform(100, 5000, n)
    if model.name == "vfa_t1":
        sig = model.predict(np.stack((t1, 1 / t1, m0), -1))
    elif model.name in ("megre_r2star", "mese_t2"):
        rate = rng.uniform(5, 60, n) if model.name == "megre_r2star" else rng.uniform(5, 30, n)
        sig = m0[:, None] * np.exp(-rate[:, None] * model.echo_time[None, :])
    elif model.name == "mwf":  # myelin water (10-25 ms) and intra/extracellular (60-90 ms)
        mwf, te = rng.uniform(0, 0.3, (n, 1)), model.echo_time[None, :]
        t2_mw, t2_ie = rng.uniform(0.01, 0.025, (n, 1)), rng.uniform(0.06, 0.09, (n, 1))
        sig = m0[:, None] * (mwf * np.exp(-te / t2_mw) + (1 - mwf) * np.exp(-te / t2_ie))
    elif model.name == "mtr":
        sig = np.stack((m0, m0 * rng.uniform(0.4, 1.0, n)), -1)[:, [model.i_off, model.i_on]]
    elif model.name == "mtsat":
        delta = [0.0 if not on else rng.uniform(0, 0.05, n) for on in model.mt_states]
        sig = np.stack(
            [
                spgr_mt(m0, t1, tr, flip, delta=d)
                for flip, tr, d in zip(model.flip_angles, model.repetition_times, delta)
            ],
            -1,
        )
    elif not isinstance(model, B1Model):  # the generic strategy: the model's own simulation
        sig = model.simulate(n, rng)[1]
    elif model.method == "tb1map":
        sig = rng.uniform(0.5, 1.5, (n, 1)) / (model.scale or 1.0)
    elif model.method == "tb1afi":
        pair = afi(m0, t1, *sorted(model.repetition_times), model.flip_angles[0])
        sig = np.stack(pair, -1)[:, np.argsort(np.argsort(model.repetition_times))]
    else:
        b1 = rng.uniform(0.7, 1.3, n)
        sig = np.stack([gre_long_tr(m0, f, b1=b1) for f in model.flip_angles], -1)
    return sig * (1 + 0.01 * rng.standard_normal(sig.shape))


@st.composite
def cases(draw, name: str):
    """A model, (n, n_meas) signals and the covariates (a B1 map where the model takes one)."""
    model = draw(models(name))
    m, n = n_meas(model), draw(st.integers(1, 12))
    signal = draw(arrays(np.float64, (n, m), elements=elements))
    # realistic rows, so that the range checks see fitted values and not only NaN
    signal = np.concatenate((signal, draw(realistic(model, draw(st.integers(0, 6))))))
    order = draw(st.permutations(range(len(signal))))
    signal = signal[list(order)]
    covariates = {}
    if model.uses_b1 and draw(st.booleans()):
        covariates["b1"] = draw(arrays(np.float64, (len(signal),), elements=b1_elements))
    return model, signal, covariates


# ----------------------------------------------------------------------------- invariants


def assert_valid_maps(model: QMRIModel, maps: dict[str, np.ndarray], shape: tuple) -> None:
    """Every map has the spatial shape and is NaN or finite inside its valid range."""
    assert list(maps) == [o.name for o in model.outputs]
    for spec in model.outputs:
        values = np.asarray(maps[spec.name])
        assert values.shape == shape, spec.name
        assert not np.any(np.isinf(values)), f"{model.name} {spec.name}: infinite values"
        if spec.valid_range is not None:
            # float32 maps: one float32 step of slack at the bounds (the check is in float64)
            lo, hi = (
                np.nextafter(np.float32(b), np.float32(d))
                for b, d in zip(spec.valid_range, (-np.inf, np.inf), strict=True)
            )
            finite = values[np.isfinite(values)]
            assert np.all((finite >= lo) & (finite <= hi)), (spec.name, finite)


def undefined_rows(signal: np.ndarray) -> np.ndarray:
    """Voxels whose fit is undefined: a non-finite value, or no positive value at all."""
    with np.errstate(invalid="ignore"):
        return ~np.all(np.isfinite(signal), -1) | np.all(signal <= 0, -1)


def _prepared(model: QMRIModel, data: np.ndarray, mask: np.ndarray) -> QMRIModel | None:
    try:
        return model.prepare(data, mask)
    except MetadataError:  # documented: a TB1map whose values say neither fraction nor percent
        event("TB1map scale undecidable: MetadataError")
        return None


@pytest.fixture(autouse=True, scope="module")
def _quiet_models():
    """Models log warnings about odd acquisitions (e.g. MTS without MTR): not under test."""
    logger = logging.getLogger("bids_app.models")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", VOXELWISE)
@FUZZ
@given(data=st.data())
def test_fit_gives_nan_or_valid_values(name, data):
    model, signal, covariates = data.draw(cases(name), label="case")
    model = _prepared(model, signal, np.ones(len(signal), bool))
    if model is None:
        return
    fit = model.fit(signal, covariates=covariates)
    maps = fit.maps()
    assert_valid_maps(model, maps, (len(signal),))
    counts = fit.n_out_of_range()
    assert all(0 <= counts[o.name] <= len(signal) for o in model.outputs)
    if fit.rmse is not None:
        rmse = fit.rmse[np.isfinite(fit.rmse)]
        assert fit.rmse.shape == (len(signal),)
        assert not np.any(np.isinf(fit.rmse))
        assert np.all(rmse >= 0)
    bad = undefined_rows(signal)
    b1 = covariates.get("b1")
    with np.errstate(invalid="ignore"):
        bad_b1 = np.zeros(len(signal), bool) if b1 is None else ~(np.isfinite(b1) & (b1 > 0))
    for spec in model.outputs:
        assert np.all(np.isnan(maps[spec.name][bad])), (spec.name, signal[bad])
        if (model.name, spec.name) not in B1_FREE:
            assert np.all(np.isnan(maps[spec.name][bad_b1])), (spec.name, b1)
    finite = sum(int(np.isfinite(v).any()) for v in maps.values())
    event(f"{finite} of {len(maps)} outputs with finite values")


@st.composite
def images(draw, name: str):
    """A model, a small (X, Y, Z, n_meas) image, a mask, voxel sizes and maybe a B1 map."""
    model = draw(models(name))
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=3, max_size=3)))
    m = n_meas(model)
    flat = draw(realistic(model, int(np.prod(shape))))
    noise = draw(arrays(np.float64, (*shape, m), elements=elements))
    hostile = draw(arrays(bool, (*shape, m), elements=st.booleans()))
    data = np.where(hostile, noise, flat.reshape((*shape, m)))
    mask = draw(arrays(bool, shape, elements=st.booleans()))
    zooms = tuple(draw(st.lists(st.floats(0.5, 5.0), min_size=3, max_size=3)))
    b1 = None
    if model.uses_b1 and draw(st.booleans()):
        b1 = draw(arrays(np.float64, shape, elements=b1_elements))
    return model, data, mask, zooms, b1


@pytest.mark.parametrize("name", VOXELWISE)
@FUZZ
@given(data=st.data())
def test_fit_of_small_images_respects_mask_and_ranges(name, data):
    model, image, mask, zooms, b1 = data.draw(images(name), label="case")
    model = _prepared(model, image, mask)
    if model is None:
        return
    fit = model.fit(image, mask=mask, covariates={} if b1 is None else {"b1": b1})
    maps = fit.maps()
    assert_valid_maps(model, maps, mask.shape)
    for spec in model.outputs:
        assert np.all(np.isnan(maps[spec.name][~mask])), spec.name
        assert np.all(np.isnan(maps[spec.name][undefined_rows(image)])), spec.name
    post = model.spatial_postprocess(maps, zooms=zooms, mask=mask)
    assert_valid_maps(model, post, mask.shape)


# ----------------------------------------------------------------------------- examples

#: one usual protocol per model (the synthetic dataset's)
USUAL = {
    "vfa_t1": lambda: REGISTRY["vfa_t1"]([3.0, 8.0, 18.0], 0.015),
    "megre_r2star": lambda: REGISTRY["megre_r2star"]([0.003, 0.006, 0.009, 0.012, 0.015]),
    "mese_t2": lambda: REGISTRY["mese_t2"]([0.01 * k for k in range(1, 9)]),
    "mtr": lambda: REGISTRY["mtr"]([False, True]),
    "mwf": lambda: REGISTRY["mwf"](0.01 * np.arange(1, 33)),
    "mtsat": lambda: REGISTRY["mtsat"]([6.0, 20.0, 6.0], [0.025] * 3, [False, False, True]),
    "b1": lambda: B1Model("tb1map", scale=1.0),
}


@pytest.mark.parametrize("name", VOXELWISE)
def test_undefined_fits_are_nan_and_plausible_ones_finite(name):
    cls = REGISTRY[name]
    model = USUAL[name]() if name in USUAL else cls.from_collections(cls.example_collections())
    m = n_meas(model)
    good = simulate(model, 1, np.random.default_rng(7))[0]
    rows = [np.zeros(m), -good, good * 0 + np.nan, np.where(np.arange(m) == 0, np.inf, good)]
    signal = np.stack([*rows, good, good])
    mask = np.array([True] * 5 + [False])
    covariates = {"b1": np.ones(6)} if model.uses_b1 else {}
    maps = model.fit(signal, mask=mask, covariates=covariates).maps()
    for spec in model.outputs:
        assert np.all(np.isnan(maps[spec.name][[0, 1, 2, 3, 5]])), spec.name
        assert np.isfinite(maps[spec.name][4]), spec.name  # the positive control


def test_values_beyond_float32_are_out_of_range_not_infinite():
    fit = B1Model("tb1map", scale=1.0).fit(np.array([[1e300], [0.9]]))
    assert np.isnan(fit.maps()["B1"][0])
    assert fit.maps()["B1"][1] == np.float32(0.9)
    assert fit.n_out_of_range()["B1"] == 1
    mtr = REGISTRY["mtr"]([False, True]).fit(np.array([[1e-300, 1.0]]))  # MTR = -1e302 %
    assert np.isnan(mtr.maps()["MTR"][0])
    assert mtr.n_out_of_range()["MTR"] == 1


def test_overflowing_residual_gives_nan_rmse():
    model = MEGRER2starModel([0.005, 0.01, 0.02])
    fit = model.fit(np.array([[1e300, 1e300, 1e-300], [100.0, 90.0, 70.0]]))
    assert np.isnan(fit.rmse[0])  # (1e300 - 1e-300)**2 overflows
    assert np.isfinite(fit.rmse[1])
