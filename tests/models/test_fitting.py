"""Tests of the generic fitting driver :func:`bids_app.models.fitting.fit_masked`.

A toy linear model (``signal = X @ params + offset``) stands in for a real one, so that every
expected value is exact: the driver must not change what the solver returns.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, ClassVar

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from bids_app.models.base import OutputSpec, QMRIFit, QMRIModel
from bids_app.models.fitting import (
    IN_FLIGHT_PER_WORKER,
    FitPool,
    _as_completed_bounded,
    _fit_chunk_pickled,
    _iter_chunks,
    _unpickle_model,
    fit_masked,
)

DESIGN = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 4.0]])


class ToyLinearModel(QMRIModel):
    """Straight line through four points; ``offset`` is a per-voxel covariate."""

    name = "toy_linear"
    inputs = ()
    outputs = (OutputSpec("a", "amap", "arbitrary"), OutputSpec("b", "bmap", "arbitrary"))
    option_choices: ClassVar[dict[str, tuple[Any, ...]]] = {"solver": ("pinv", "lstsq")}

    @classmethod
    def from_collections(cls, collections, **options):
        return cls(**options)

    @property
    def acquisition(self):
        return {"x": DESIGN[:, 1].tolist()}

    def _fit_voxels(self, signal, offset=None):
        # the driver must only ever hand over finite signals
        assert np.all(np.isfinite(signal))
        if offset is not None:
            signal = signal - offset[:, None]
        return signal @ np.linalg.pinv(DESIGN).T

    def predict(self, params, offset=None):
        pred = params @ DESIGN.T
        return pred if offset is None else pred + offset[:, None]


class NoPredictModel(ToyLinearModel):
    """Same fit, without a forward model (so no rmse map)."""

    def predict(self, params, offset=None):
        return None


class BadShapeModel(ToyLinearModel):
    """Returns one column too many."""

    def _fit_voxels(self, signal, offset=None):
        return np.zeros((signal.shape[0], 3))


class InfModel(ToyLinearModel):
    """Returns +inf for the first parameter of every voxel."""

    def _fit_voxels(self, signal, offset=None):
        out = super()._fit_voxels(signal, offset)
        out[:, 0] = np.inf
        return out


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture
def volume(rng):
    """Truth (5, 6, 7, 2) and noiseless data (5, 6, 7, 4)."""
    truth = rng.uniform(-2, 2, (5, 6, 7, 2))
    return truth, truth @ DESIGN.T


def test_exact_recovery_and_rmse(volume):
    truth, data = volume
    fit = fit_masked(ToyLinearModel(), data)
    assert isinstance(fit, QMRIFit)
    assert fit.shape == data.shape[:-1]
    assert_allclose(fit.params, truth, rtol=1e-10, atol=1e-12)
    assert fit.rmse.shape == data.shape[:-1]
    assert np.nanmax(fit.rmse) < 1e-12


def test_mask_respected_nan_outside(volume, rng):
    _, data = volume
    mask = rng.random(data.shape[:-1]) > 0.5
    fit = fit_masked(ToyLinearModel(), data, mask=mask)
    assert np.all(np.isnan(fit.params[~mask]))
    assert np.all(np.isnan(fit.rmse[~mask]))
    full = fit_masked(ToyLinearModel(), data)
    assert_array_equal(fit.params[mask], full.params[mask])
    maps = fit.maps()
    assert set(maps) == {"a", "b"}
    assert np.all(np.isnan(maps["a"][~mask]))
    assert maps["a"].dtype == np.float32


def test_one_dimensional_single_voxel(volume):
    truth, data = volume
    voxel = data[1, 2, 3]
    fit = fit_masked(ToyLinearModel(), voxel)
    assert fit.params.shape == (2,)
    assert fit.shape == ()
    assert_allclose(fit.params, truth[1, 2, 3], rtol=1e-10)
    assert_array_equal(fit.params, fit_masked(ToyLinearModel(), voxel[None]).params[0])


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 10**6])
def test_chunking_gives_same_result(volume, rng, chunk_size):
    _, data = volume
    noisy = data + rng.normal(0, 0.1, data.shape)
    mask = rng.random(data.shape[:-1]) > 0.3
    one = fit_masked(ToyLinearModel(), noisy, mask=mask, chunk_size=10**7)
    many = fit_masked(ToyLinearModel(), noisy, mask=mask, chunk_size=chunk_size)
    # equal up to rounding: BLAS may order a matrix product's sums differently by batch size
    assert_array_equal(np.isnan(many.params), np.isnan(one.params))
    assert_allclose(many.params, one.params, rtol=1e-12, atol=1e-14)
    assert_allclose(many.rmse, one.rmse, rtol=1e-10, atol=1e-14)


def test_nprocs_two_equals_one(volume, rng):
    _, data = volume
    noisy = data + rng.normal(0, 0.1, data.shape)
    offset = rng.normal(0, 1, data.shape[:-1])
    kw = {"covariates": {"offset": offset}, "chunk_size": 50}
    serial = fit_masked(ToyLinearModel(), noisy, nprocs=1, **kw)
    parallel = fit_masked(ToyLinearModel(), noisy, nprocs=2, **kw)
    assert_array_equal(parallel.params, serial.params)
    assert_array_equal(parallel.rmse, serial.rmse)


def test_covariate_is_passed_per_voxel(volume, rng):
    truth, data = volume
    offset = rng.normal(0, 1, data.shape[:-1])
    fit = fit_masked(
        ToyLinearModel(), data + offset[..., None], covariates={"offset": offset}, chunk_size=13
    )
    assert_allclose(fit.params, truth, rtol=1e-10, atol=1e-12)
    assert np.nanmax(fit.rmse) < 1e-12


@pytest.mark.parametrize("bad_shape", [(5, 6), (5, 6, 8), (210,)])
def test_covariate_shape_error(volume, bad_shape):
    _, data = volume
    with pytest.raises(ValueError, match="covariate 'offset'"):
        fit_masked(ToyLinearModel(), data, covariates={"offset": np.zeros(bad_shape)})


def test_mask_shape_error(volume):
    _, data = volume
    with pytest.raises(ValueError, match="mask shape"):
        fit_masked(ToyLinearModel(), data, mask=np.ones((5, 6), dtype=bool))


def test_zero_dimensional_data_rejected():
    with pytest.raises(ValueError, match="at least one dimension"):
        fit_masked(ToyLinearModel(), np.float64(1.0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_signal_voxels_give_nan(volume, bad):
    truth, data = volume
    data = data.copy()
    data[0, 0, 0, 1] = bad
    data[4, 5, 6, 3] = bad
    fit = fit_masked(ToyLinearModel(), data)
    assert np.all(np.isnan(fit.params[0, 0, 0]))
    assert np.all(np.isnan(fit.params[4, 5, 6]))
    assert np.isnan(fit.rmse[0, 0, 0])
    good = np.ones(data.shape[:-1], dtype=bool)
    good[0, 0, 0] = good[4, 5, 6] = False
    assert_allclose(fit.params[good], truth[good], rtol=1e-10, atol=1e-12)


def test_empty_mask_gives_all_nan(volume):
    _, data = volume
    fit = fit_masked(ToyLinearModel(), data, mask=np.zeros(data.shape[:-1], dtype=bool))
    assert np.all(np.isnan(fit.params))
    assert fit.rmse is None


def test_no_predict_means_no_rmse(volume):
    truth, data = volume
    fit = fit_masked(NoPredictModel(), data)
    assert fit.rmse is None
    assert_allclose(fit.params, truth, rtol=1e-10, atol=1e-12)


def test_wrong_solver_output_shape_raises(volume):
    _, data = volume
    with pytest.raises(RuntimeError, match="returned shape"):
        fit_masked(BadShapeModel(), data)


def test_non_finite_params_become_nan(volume):
    _, data = volume
    fit = fit_masked(InfModel(), data)
    assert np.all(np.isnan(fit.params[..., 0]))
    assert np.all(np.isfinite(fit.params[..., 1]))


def test_model_fit_method_uses_driver(volume):
    truth, data = volume
    mask = np.zeros(data.shape[:-1], dtype=bool)
    mask[2:4] = True
    fit = ToyLinearModel().fit(data, mask=mask, chunk_size=9)
    assert_allclose(fit.params[mask], truth[mask], rtol=1e-10, atol=1e-12)
    assert np.all(np.isnan(fit.params[~mask]))


def test_option_validation_lists_valid_names():
    assert ToyLinearModel().options == {"solver": "pinv"}
    with pytest.raises(ValueError, match=r"valid: \['pinv', 'lstsq'\]"):
        ToyLinearModel(solver="qr")
    with pytest.raises(ValueError, match="unknown option"):
        ToyLinearModel(method="pinv")


# --- streaming, bounded in-flight chunks and a shared worker pool ---------------------------


class _CountingExecutor:
    """In-process stand-in for a process pool: threads, counting outstanding submissions."""

    def __init__(self, workers):
        self._threads = ThreadPoolExecutor(workers)
        self._lock = threading.Lock()
        self.outstanding = self.max_outstanding = self.submitted = 0
        self.payloads = set()

    def submit(self, fn, *args):
        with self._lock:
            self.submitted += 1
            self.outstanding += 1
            self.max_outstanding = max(self.max_outstanding, self.outstanding)
        self.payloads.add(id(args[0]))
        future = self._threads.submit(fn, *args)
        future.add_done_callback(self._done)
        return future

    def _done(self, _):
        with self._lock:
            self.outstanding -= 1


class _ThreadPool:
    """Duck-typed :class:`FitPool` whose executor is a :class:`_CountingExecutor`."""

    def __init__(self, nprocs):
        self.nprocs = nprocs
        self.counting = _CountingExecutor(nprocs)

    def executor(self):
        return self.counting


def test_iter_chunks_is_lazy_and_converts_per_chunk(rng):
    flat = rng.normal(size=(23, 4)).astype(np.float32)
    idx = np.array([0, 2, 3, 5, 8, 13, 21])
    cov = {"offset": np.arange(23, dtype=np.float32)}
    gen = _iter_chunks(flat, idx, cov, 3)
    assert isinstance(gen, Iterator)
    chunks = list(gen)
    assert [c.tolist() for c, _, _ in chunks] == [[0, 2, 3], [5, 8, 13], [21]]
    for chunk, signal, c in chunks:
        assert signal.dtype == np.float64
        assert c["offset"].dtype == np.float64
        assert_array_equal(signal, flat[chunk].astype(np.float64))
        assert_array_equal(c["offset"], chunk)
    assert list(_iter_chunks(flat, idx[:0], cov, 3)) == []


def test_bounded_helper_never_exceeds_in_flight():
    bound, n_jobs = 3, 40
    pulled = 0

    def jobs():
        nonlocal pulled
        for i in range(n_jobs):
            pulled += 1
            yield i, (i,)

    consumed = []
    with ThreadPoolExecutor(2) as ex:
        for key, result in _as_completed_bounded(
            partial(ex.submit, lambda x: x * x), jobs(), bound
        ):
            assert pulled - len(consumed) <= bound  # submitted but not yet consumed
            assert result == key * key
            consumed.append(key)
    assert sorted(consumed) == list(range(n_jobs))


def test_bounded_helper_stops_pulling_after_an_error():
    pulled = 0

    def jobs():
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield i, (i,)

    def fail(i):
        raise ZeroDivisionError(i)

    with ThreadPoolExecutor(1) as ex, pytest.raises(ZeroDivisionError):
        list(_as_completed_bounded(partial(ex.submit, fail), jobs(), 4))
    assert pulled <= 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_fit_bounded_and_bit_identical(volume, rng, dtype):
    _, data = volume
    noisy = (data + rng.normal(0, 0.1, data.shape)).astype(dtype)
    offset = rng.normal(0, 1, data.shape[:-1])
    mask = rng.random(data.shape[:-1]) > 0.2
    kw = {"mask": mask, "covariates": {"offset": offset}, "chunk_size": 11}
    serial = fit_masked(ToyLinearModel(), noisy, **kw)
    fake = _ThreadPool(2)
    streamed = fit_masked(ToyLinearModel(), noisy, pool=fake, **kw)
    assert_array_equal(streamed.params, serial.params)
    assert_array_equal(streamed.rmse, serial.rmse)
    assert fake.counting.submitted == -(-int(mask.sum()) // 11)
    assert fake.counting.max_outstanding <= IN_FLIGHT_PER_WORKER * 2
    assert len(fake.counting.payloads) == 1  # the model is pickled once per fit
    if dtype is np.float32:  # float32 data is converted chunk by chunk, exactly as float64
        assert_array_equal(
            serial.params, fit_masked(ToyLinearModel(), noisy.astype(float), **kw).params
        )


def test_model_unpickled_once_per_worker(volume):
    _, data = volume
    signal = data.reshape(-1, 4)[:5]
    payload = pickle.dumps(ToyLinearModel())
    _unpickle_model.cache_clear()
    first = _fit_chunk_pickled(payload, signal, {})
    second = _fit_chunk_pickled(payload, signal, {})
    assert _unpickle_model.cache_info().misses == 1
    assert _unpickle_model.cache_info().hits == 1
    assert_array_equal(first[0], second[0])


def test_shared_fit_pool_serves_consecutive_fits(volume, rng):
    _, data = volume
    noisy = (data + rng.normal(0, 0.1, data.shape)).astype(np.float32)
    offset = rng.normal(0, 1, data.shape[:-1])
    kw = {"covariates": {"offset": offset}, "chunk_size": 17}
    serial = fit_masked(ToyLinearModel(), noisy, **kw)
    serial_np = fit_masked(NoPredictModel(), noisy, chunk_size=23)
    with FitPool(2) as pool:
        assert not pool.started
        one = fit_masked(ToyLinearModel(), noisy, pool=pool, **kw)
        executor = pool.executor()
        two = fit_masked(NoPredictModel(), noisy, pool=pool, chunk_size=23)
        assert pool.executor() is executor  # one pool served both fits
    assert not pool.started
    assert_array_equal(one.params, serial.params)
    assert_array_equal(one.rmse, serial.rmse)
    assert_array_equal(two.params, serial_np.params)
    assert two.rmse is None


def test_fit_pool_not_started_when_not_needed(volume):
    _, data = volume
    with FitPool(1) as single:
        fit_masked(ToyLinearModel(), data, pool=single, chunk_size=7)
        assert not single.started
    with FitPool(2) as pool:
        fit_masked(ToyLinearModel(), data, pool=pool)  # one chunk: in this process
        assert not pool.started
    assert repr(pool) == "FitPool(nprocs=2, started=False)"
