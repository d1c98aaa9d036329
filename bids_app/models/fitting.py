"""The one generic fitting driver shared by every model (DESIGN 2.2).

``fit_masked`` validates the mask, selects the masked voxels with a finite signal, and streams
them to the model's pure ``_fit_voxels`` in chunks: each chunk is gathered and converted to
float64 only when it is about to be fitted, at most :data:`IN_FLIGHT_PER_WORKER` chunks per
worker process are submitted but not yet collected, and every result is scattered back as soon
as it arrives. Peak memory is therefore the output maps plus a few chunks, whatever the volume.
Voxels outside the mask stay NaN. Models never repeat any of this.

A :class:`FitPool` holds one pool of worker processes for a whole run, so that the start-up of
the (spawned) workers is paid once rather than once per fit.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from functools import lru_cache
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_app.models.results import QMRIFit

if TYPE_CHECKING:  # models are passed in, never imported: no import cycle with base
    from bids_app.models.base import QMRIModel

logger = logging.getLogger(__name__)

#: default number of voxels handed to a solver at once (bounds peak memory)
CHUNK_SIZE = 65536

#: chunks submitted to the workers but not yet collected, per worker process
IN_FLIGHT_PER_WORKER = 2

_Result = tuple[np.ndarray, np.ndarray | None]


class FitPool:
    """One pool of worker processes shared by every fit of a run.

    Parameters
    ----------
    nprocs : int
        Worker processes. With ``1`` (or less) every fit runs in the calling process and no
        pool is ever started.

    Notes
    -----
    The spawn-context :class:`~concurrent.futures.ProcessPoolExecutor` is started lazily, on
    the first fit that has more than one chunk, and shut down by :meth:`shutdown` or on leaving
    the ``with`` block; a later fit would start a new one. A pool broken by a dead worker is
    discarded (the fit raises) and a fresh one is started by the next fit.

    Examples
    --------
    >>> with FitPool(2) as pool:
    ...     pool.started  # nothing is spawned before the first parallel fit
    False
    """

    def __init__(self, nprocs: int):
        self.nprocs = max(int(nprocs), 1)
        self._executor: ProcessPoolExecutor | None = None

    @property
    def started(self) -> bool:
        """Whether the worker processes are running."""
        return self._executor is not None

    def executor(self) -> ProcessPoolExecutor:
        """The executor, started on first use.

        Returns
        -------
        concurrent.futures.ProcessPoolExecutor
            ``nprocs`` spawned workers.
        """
        if self._executor is None:
            logger.debug("starting %d fitting worker processes", self.nprocs)
            self._executor = ProcessPoolExecutor(
                max_workers=self.nprocs, mp_context=get_context("spawn")
            )
        return self._executor

    def shutdown(self, *, cancel: bool = False) -> None:
        """Stop the workers (waiting for running chunks); no-op if none were started.

        Parameters
        ----------
        cancel : bool
            Also cancel chunks submitted but not started.
        """
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> FitPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(cancel=exc_type is not None)

    def __repr__(self) -> str:
        return f"FitPool(nprocs={self.nprocs}, started={self.started})"


def _fit_chunk(
    model: QMRIModel, signal: np.ndarray, covariates: Mapping[str, np.ndarray]
) -> _Result:
    """Fit one chunk; return params (n, n_params) and rmse (n,) or None."""
    n_params = len(model.outputs)
    with np.errstate(all="ignore"):
        params = np.asarray(model._fit_voxels(signal, **covariates), dtype=np.float64)
        if params.shape != (signal.shape[0], n_params):
            raise RuntimeError(
                f"{model.name}._fit_voxels returned shape {params.shape}, "
                f"expected {(signal.shape[0], n_params)}"
            )
        params[~np.isfinite(params)] = np.nan
        pred = model.predict(params, **covariates)
        rmse = None
        if pred is not None:
            rmse = np.sqrt(np.mean((pred - signal) ** 2, axis=-1))
            # an overflowing residual (e.g. a 1e300 signal) is not a fit quality: NaN
            rmse[~np.isfinite(rmse) | (rmse > np.finfo(np.float32).max)] = np.nan
    return params, rmse


@lru_cache(maxsize=4)
def _unpickle_model(payload: bytes) -> QMRIModel:
    """The model pickled in ``payload``, unpickled once per worker process and fit."""
    return pickle.loads(payload)


def _fit_chunk_pickled(
    payload: bytes, signal: np.ndarray, covariates: Mapping[str, np.ndarray]
) -> _Result:
    """Worker entry point: :func:`_fit_chunk` with the model pickled once per fit."""
    return _fit_chunk(_unpickle_model(payload), signal, covariates)


def _fit_rows(flat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``flat`` (n, m) inside ``mask`` (n,) whose values are all finite.

    Column by column: no (n, m) temporary, and far faster than a reduction over a short axis.
    """
    ok = mask.copy()
    for j in range(flat.shape[1]):
        ok &= np.isfinite(flat[:, j])
    return np.flatnonzero(ok)


def _iter_chunks(
    flat: np.ndarray, idx: np.ndarray, covariates: Mapping[str, np.ndarray], chunk_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """Lazily yield ``(voxel indices, float64 signal, float64 covariates)`` chunk by chunk.

    Parameters
    ----------
    flat : (n_vox, n_meas) ndarray
        All voxels, any real dtype (only the chunk is converted).
    idx : (n_fit,) int ndarray
        Rows of ``flat`` to fit, in order.
    covariates : mapping of str to (n_vox,) ndarray
        Flat per-voxel covariates.
    chunk_size : int
        Rows per chunk (at least 1).

    Yields
    ------
    tuple
        ``idx`` slice, ``flat`` rows as float64 and the covariates at those rows as float64.
    """
    step = max(int(chunk_size), 1)
    for s in range(0, idx.size, step):
        chunk = idx[s : s + step]
        cov = {k: np.asarray(v[chunk], dtype=np.float64) for k, v in covariates.items()}
        yield chunk, np.asarray(flat[chunk], dtype=np.float64), cov


def _as_completed_bounded(
    submit: Callable[..., Future], jobs: Iterable[tuple[Any, tuple]], max_in_flight: int
) -> Iterator[tuple[Any, Any]]:
    """Submit ``jobs`` with at most ``max_in_flight`` pending; yield results as they complete.

    Parameters
    ----------
    submit : callable
        ``submit(*args) -> Future``, e.g. ``functools.partial(executor.submit, fn)``.
    jobs : iterable of (key, args)
        Pulled lazily: a job is taken only when a slot is free.
    max_in_flight : int
        Submitted jobs whose result has not been yielded yet, at most.

    Yields
    ------
    (key, result)
        In completion order. On an error (or when the consumer stops early) jobs not yet
        started are cancelled.
    """
    jobs = iter(jobs)
    pending: dict[Future, Any] = {}
    more = True
    try:
        while True:
            while more and len(pending) < max(max_in_flight, 1):
                job = next(jobs, None)
                if job is None:
                    more = False
                else:
                    pending[submit(*job[1])] = job[0]
                    del job  # the parent keeps no reference to a submitted chunk's data
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                key = pending.pop(future)
                yield key, future.result()
    finally:
        for future in pending:
            future.cancel()


def _fit_in_pool(
    model: QMRIModel,
    chunks: Iterable[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]],
    pool: FitPool,
) -> Iterator[tuple[np.ndarray, _Result]]:
    """Stream ``chunks`` through ``pool``'s workers, the model pickled once for the fit."""
    payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    executor = pool.executor()

    def submit(signal, cov):
        return executor.submit(_fit_chunk_pickled, payload, signal, cov)

    tasks = ((chunk, (signal, cov)) for chunk, signal, cov in chunks)
    yield from _as_completed_bounded(submit, tasks, IN_FLIGHT_PER_WORKER * pool.nprocs)


def _scatter(
    results: Iterable[tuple[np.ndarray, _Result]], params: np.ndarray, rmse: np.ndarray
) -> bool:
    """Write each chunk's results into ``params``/``rmse``; return whether any had an rmse."""
    has_rmse = False
    for chunk, (p, r) in results:
        params[chunk] = p
        if r is not None:
            rmse[chunk] = r
            has_rmse = True
    return has_rmse


def fit_masked(
    model: QMRIModel,
    data: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    covariates: Mapping[str, np.ndarray] | None = None,
    chunk_size: int = CHUNK_SIZE,
    nprocs: int = 1,
    pool: FitPool | None = None,
) -> QMRIFit:
    """Fit ``model`` to every voxel of ``data`` inside ``mask``.

    Parameters
    ----------
    model : QMRIModel
        The model; its ``_fit_voxels`` takes (n_vox, n_meas) and returns (n_vox, n_params).
    data : (..., n_meas) array_like
        Signal, any real dtype (e.g. float32: only one chunk at a time is converted to
        float64); a 1-D array is one voxel.
    mask : (...) array_like of bool, optional
        Voxels to fit; default all. Voxels whose signal has a non-finite value are not fitted.
    covariates : mapping of str to (...) ndarray, optional
        Per-voxel inputs of the model such as ``b1`` (relative B1+), same spatial shape.
    chunk_size : int
        Voxels per solver call.
    nprocs : int
        Worker processes over chunks (1: in this process). Without ``pool``, a temporary
        pool is started for this fit; ignored when ``pool`` is given.
    pool : FitPool, optional
        Worker pool shared between fits (its ``nprocs`` sets the parallelism).

    Returns
    -------
    QMRIFit
        ``params`` of shape (..., n_params), NaN outside the mask and where undefined. The
        result does not depend on ``nprocs`` or on the order in which chunks complete.

    Raises
    ------
    ValueError
        If the mask or a covariate does not have the spatial shape of ``data``.
    """
    data = np.asarray(data)
    if data.ndim == 0:
        raise ValueError("data must have at least one dimension (the measurements)")
    spatial = data.shape[:-1]
    if mask is None:
        mask = np.ones(spatial, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != spatial:
        raise ValueError(f"mask shape {mask.shape} does not match data shape {spatial}")
    covariates = dict(covariates or {})
    for name, cov in covariates.items():
        if np.shape(cov) != spatial:
            raise ValueError(f"covariate {name!r} shape {np.shape(cov)} != data shape {spatial}")

    flat = data.reshape(-1, data.shape[-1])
    idx = _fit_rows(flat, mask.reshape(-1))
    cov_flat = {k: np.asarray(v).reshape(-1) for k, v in covariates.items()}
    n_params = len(model.outputs)
    params = np.full((flat.shape[0], n_params), np.nan)
    rmse = np.full(flat.shape[0], np.nan)

    step = max(int(chunk_size), 1)
    n_chunks = -(-idx.size // step)
    chunks = _iter_chunks(flat, idx, cov_flat, step)
    workers = pool.nprocs if pool is not None else max(int(nprocs), 1)
    if workers > 1 and n_chunks > 1:
        temporary = pool is None
        fit_pool = FitPool(workers) if temporary else pool
        try:
            with closing(_fit_in_pool(model, chunks, fit_pool)) as results:
                has_rmse = _scatter(results, params, rmse)
        except BrokenProcessPool:
            fit_pool.shutdown()  # a dead worker breaks the executor: the next fit starts afresh
            raise
        finally:
            if temporary:
                fit_pool.shutdown(cancel=True)
    else:
        workers = 1
        has_rmse = _scatter(
            ((chunk, _fit_chunk(model, sig, cov)) for chunk, sig, cov in chunks), params, rmse
        )
    logger.debug(
        "%s: fitted %d voxels in %d chunk(s), %d process(es)",
        model.name,
        idx.size,
        n_chunks,
        workers,
    )
    params = params.reshape((*spatial, n_params))
    return QMRIFit(model, params, rmse.reshape(spatial) if has_rmse else None)


def fit_rows_as_volume(
    model: QMRIModel,
    data: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    covariates: Mapping[str, np.ndarray] | None = None,
    **kwargs: Any,
) -> QMRIFit:
    """Fit plain signal rows with a whole-volume model that declares ``rows_input``.

    Parameters
    ----------
    model : QMRIModel
        A ``kind = "volume"`` model whose ``rows_input`` names the input the rows are.
    data : (..., n) array_like
        One row per voxel; fitted as a (N, 1, 1, n) volume.
    mask, covariates : array_like, optional
        Shaped like ``data[..., 0]``.
    affine : (4, 4) array_like, optional

    Returns
    -------
    QMRIFit
        ``params`` (..., n_params), ``rmse`` (...) or None.
    """
    arr = np.asarray(data, dtype=np.float64)
    arr = arr[None] if arr.ndim == 1 else arr
    lead = arr.shape[:-1]
    vol = arr.reshape(-1, 1, 1, arr.shape[-1])
    cov = {k: np.asarray(v, float).reshape(-1, 1, 1) for k, v in (covariates or {}).items()}
    if mask is not None:
        mask = np.asarray(mask, bool).reshape(-1, 1, 1)
    fit = model.fit({model.rows_input: vol}, mask=mask, affine=affine, covariates=cov, **kwargs)
    rmse = None if fit.rmse is None else fit.rmse.reshape(lead)
    return QMRIFit(model, fit.params.reshape(*lead, -1), rmse)
