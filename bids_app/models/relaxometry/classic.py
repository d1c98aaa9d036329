"""Relaxometry models: VFA (DESPOT1) T1 and multi-echo GRE R2* (MESE T2 in :mod:`.mese`).

The signal equations and solvers are pure functions on ``(n_vox, n_meas)`` arrays, written in
:mod:`bids_app.models.relaxometry._fits` and re-exported here; the model classes only hold the
acquisition and pick a solver by name. All times are in seconds and flip angles in degrees
at the interface, radians inside. A voxel with any zero, negative or non-finite signal value
gets NaN parameters (no exception, no warning).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.base import (
    B1_REQUIREMENT,
    Collection,
    InputSpec,
    MetaSpec,
    Option,
    OutputSpec,
    QMRIModel,
    example_collection,
    register,
    valid_b1,
)
from bids_app.models.relaxometry._fits import (
    despot1_linear,
    despot1_nonlinear,
    monoexp_loglinear,
    monoexp_nonlinear,
    monoexp_signal,
    spgr_signal,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MEGRER2starModel",
    "VFAT1Model",
    "despot1_linear",
    "despot1_nonlinear",
    "monoexp_loglinear",
    "monoexp_nonlinear",
    "monoexp_signal",
    "spgr_signal",
]

_NII = [".nii", ".nii.gz"]


_VFA_METHODS = {"linear": despot1_linear, "nonlinear": despot1_nonlinear}
_MONOEXP_METHODS = {"loglinear": monoexp_loglinear, "nonlinear": monoexp_nonlinear}
_MONOEXP_OPTION = Option(
    "loglinear", str, tuple(_MONOEXP_METHODS), doc="S²-weighted log-linear or least squares"
)


def _require_distinct(coll: Collection, key: str, values: np.ndarray, n_min: int, why: str):
    """Raise MetadataError unless ``values`` holds at least ``n_min`` distinct values."""
    if np.unique(values).size < n_min:
        path = coll.volumes[0].path if coll.volumes else None
        raise MetadataError(
            path,
            coll.sources.get(key, key),
            [float(v) for v in values],
            f"at least {n_min} distinct values of {key} in collection {coll.name!r} {why}",
        )


def _distinct_or_raise(model: str, key: str, values: np.ndarray, n_min: int) -> None:
    """Raise ValueError unless ``values`` are finite, positive and ``n_min`` are distinct."""
    if values.ndim != 1 or not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(f"{model}: {key} must be a 1-D array of positive numbers, got {values}")
    if np.unique(values).size < n_min:
        raise ValueError(f"{model}: needs at least {n_min} distinct {key} values, got {values}")


# --------------------------------------------------------------------------- models


@register
class VFAT1Model(QMRIModel):
    """T1, R1 and M0 from variable flip angle SPGR images (DESPOT1), B1-corrected if given.

    Parameters
    ----------
    flip_angle : (m,) array_like
        Nominal flip angle of each volume, degrees, in the order of the data's last axis.
    repetition_time : float
        Excitation repetition time, s.
    fit_method : {'linear', 'nonlinear'}
        :func:`despot1_linear` (closed form) or :func:`despot1_nonlinear` (SPGR least squares).

    Notes
    -----
    ``_fit_voxels(signal, b1=None)`` takes the relative B1+ (actual / nominal flip angle) as a
    per-voxel covariate. Ignoring a true B1+ of ``b`` scales the apparent T1 by about ``b²``
    (small-angle limit), e.g. 0.72 for b = 0.85.
    """

    name = "vfa_t1"
    separate_acquisitions = "volume"
    description = "VFA (DESPOT1) T1 mapping from spoiled gradient-echo images"
    reference = (
        "Deoni SCL, Rutt BK, Peters TM. Magn Reson Med 2003;49:515-526; "
        "Fram EK et al. Magn Reson Imaging 1987;5:201-208; "
        "Wang HZ, Riederer SJ, Lee JN. Magn Reson Med 1987;5:399-416"
    )
    inputs = (
        InputSpec(
            "vfa",
            {"datatype": "anat", "suffix": "VFA", "extension": _NII},
            metadata=(
                MetaSpec("FlipAngle", "angle", (0.5, 90)),
                MetaSpec(
                    "RepetitionTimeExcitation", "time", (1e-3, 0.5), aliases=("RepetitionTime",)
                ),
            ),
            stack_along=("FlipAngle",),
            index_entities=("flip",),
            n_volumes=(2, 0),
        ),
    )
    outputs = (
        OutputSpec("T1", "T1map", "s", valid_range=(0.05, 10)),
        OutputSpec("R1", "R1map", "1/s", valid_range=(0.1, 20)),
        OutputSpec("M0", "M0map", "arbitrary", valid_range=(0, np.inf)),
    )
    requires = (B1_REQUIREMENT,)
    options_spec: ClassVar[Mapping[str, Option]] = {
        "fit_method": Option(
            "linear", str, tuple(_VFA_METHODS), doc="closed-form DESPOT1 or SPGR least squares"
        )
    }

    def __init__(self, flip_angle: np.ndarray, repetition_time: float, **options: Any):
        super().__init__(**options)
        self.flip_angle = np.asarray(flip_angle, dtype=float).ravel()
        self.repetition_time = float(repetition_time)
        _distinct_or_raise(self.name, "FlipAngle", self.flip_angle, 2)
        if not np.isfinite(self.repetition_time) or self.repetition_time <= 0:
            raise ValueError(f"{self.name}: repetition_time must be > 0 s, got {repetition_time}")

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> VFAT1Model:
        """Build from the ``vfa`` collection (flip angles in degrees, TR in s)."""
        coll = collections["vfa"]
        flips = coll.values("FlipAngle")
        _require_distinct(coll, "FlipAngle", flips, 2, "for a VFA T1 fit")
        return cls(flips, coll.common("RepetitionTimeExcitation"), **options)

    @property
    def acquisition(self) -> dict[str, Any]:
        """Flip angles (degrees) in data order and the repetition time (s)."""
        return {
            "FlipAngle": self.flip_angle.tolist(),
            "RepetitionTimeExcitation": self.repetition_time,
        }

    def _fit_voxels(self, signal: np.ndarray, b1: np.ndarray | None = None) -> np.ndarray:
        solver = _VFA_METHODS[self.options["fit_method"]]
        r1, m0 = solver(signal, self.flip_angle, self.repetition_time, b1=valid_b1(b1))
        with np.errstate(all="ignore"):
            return np.stack((1 / r1, r1, m0), axis=-1)

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """A 3 T DESPOT1 protocol: flip angles 3° and 20°, TR 15 ms."""
        return {
            "vfa": example_collection(
                "vfa", FlipAngle=(3.0, 20.0), **{"RepetitionTimeExcitation": (0.015, 0.015)}
            )
        }

    def simulate(self, n: int, rng: np.random.Generator):
        """Brain T1 0.6-4 s, M0 500-2000, B1 0.8-1.2: ``(params, signal, {'b1': ...})``."""
        t1 = rng.uniform(0.6, 4.0, n)
        m0 = rng.uniform(500, 2000, n)
        b1 = rng.uniform(0.8, 1.2, n)
        params = np.stack((t1, 1 / t1, m0), axis=-1)
        return params, self.predict(params, b1=b1), {"b1": b1}

    def predict(self, params: np.ndarray, b1: np.ndarray | None = None) -> np.ndarray:
        """SPGR signal (n, m) from params (n, 3) = (T1, R1, M0)."""
        params = np.atleast_2d(params)
        return spgr_signal(
            params[:, 2], params[:, 1], self.flip_angle, self.repetition_time, b1=b1
        )


def _echo_input(name: str, suffix: str, te_range: tuple, extra=(), **entities) -> InputSpec:
    """A multi-echo collection ordered by ``EchoTime`` (s), at least two echoes."""
    return InputSpec(
        name,
        {"datatype": "anat", "suffix": suffix, "extension": _NII, **entities},
        metadata=(MetaSpec("EchoTime", "time", te_range), *extra),
        stack_along=("EchoTime",),
        index_entities=("echo",),
        n_volumes=(2, 0),
    )


class _MonoExpModel(QMRIModel):
    """Shared mono-exponential echo-decay model; subclasses set specs and the input name."""

    #: which of (rate, 1/rate, S0) each output column holds, in ``outputs`` order
    _columns: ClassVar[tuple[str, str, str]] = ("rate", "time", "s0")
    options_spec: ClassVar[Mapping[str, Option]] = {"fit_method": _MONOEXP_OPTION}

    def __init__(self, echo_time: np.ndarray, **options: Any):
        super().__init__(**options)
        self.echo_time = np.asarray(echo_time, dtype=float).ravel()
        first = 1 if self.options.get("drop_first_echo", False) else 0
        _distinct_or_raise(self.name, "EchoTime", self.echo_time, 2 + first)
        # echoes fitted, in data order (the earliest one left out if drop_first_echo)
        self.fitted = np.sort(np.argsort(self.echo_time, kind="stable")[first:])

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> QMRIModel:
        """Build from the model's only input collection (echo times in s)."""
        options = cls.check_options(options)  # bad options first, then the metadata
        coll = collections[cls.inputs[0].name]
        te = coll.values("EchoTime")
        drop = bool(options.get("drop_first_echo", False))
        why = "(one more than 2 because drop_first_echo is set)" if drop else "for a decay fit"
        _require_distinct(coll, "EchoTime", te, 2 + drop, why)
        return cls(te, **options, **cls._collection_kwargs(coll, options))

    @classmethod
    def _collection_kwargs(cls, coll: Collection, options: Mapping[str, Any]) -> dict:
        """Further constructor arguments read from the collection (none by default)."""
        return {}

    @property
    def acquisition(self) -> dict[str, Any]:
        """Echo times (s) in data order and the ones actually fitted."""
        return {
            "EchoTime": self.echo_time.tolist(),
            "EchoTimeFitted": self.echo_time[self.fitted].tolist(),
        }

    def _fit_voxels(self, signal: np.ndarray) -> np.ndarray:
        solver = _MONOEXP_METHODS[self.options["fit_method"]]
        rate, s0 = solver(signal[:, self.fitted], self.echo_time[self.fitted])
        with np.errstate(all="ignore"):
            cols = {"rate": rate, "time": 1 / rate, "s0": s0}
        return np.stack([cols[c] for c in self._columns], axis=-1)

    #: plausible decay times (s) for :meth:`simulate`
    _example_times: ClassVar[tuple[float, float]] = (0.02, 0.15)
    _example_te: ClassVar[tuple[float, ...]] = (0.01, 0.02, 0.03, 0.04)

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """Four echoes (:attr:`_example_te`)."""
        return {
            cls.inputs[0].name: example_collection(cls.inputs[0].name, EchoTime=cls._example_te)
        }

    def simulate(self, n: int, rng: np.random.Generator):
        """Decay times in :attr:`_example_times`, S0 500-2000: ``(params, signal, {})``."""
        time = rng.uniform(*self._example_times, n)
        cols = {"rate": 1 / time, "time": time, "s0": rng.uniform(500, 2000, n)}
        params = np.stack([cols[c] for c in self._columns], axis=-1)
        return params, self.predict(params), {}

    def predict(self, params: np.ndarray) -> np.ndarray:
        """Decay (n, m) at every echo, dropped ones included, from params (n, 3)."""
        params = np.atleast_2d(params)
        rate, s0 = (params[:, self._columns.index(c)] for c in ("rate", "s0"))
        return monoexp_signal(s0, rate, self.echo_time)


@register
class MEGRER2starModel(_MonoExpModel):
    """R2*, T2* and S0 from magnitude multi-echo gradient-echo images.

    Parameters
    ----------
    echo_time : (m,) array_like
        Echo times, s, in the order of the data's last axis.
    fit_method : {'loglinear', 'nonlinear'}
        :func:`monoexp_loglinear` (S²-weighted, closed form) or :func:`monoexp_nonlinear`.
    """

    name = "megre_r2star"
    description = "Mono-exponential R2*/T2* mapping from magnitude multi-echo GRE"
    reference = (
        "Veraart J et al. NeuroImage 2013;81:335-346 (weighted log-linear fit); "
        "Weiskopf N et al. Front Neurosci 2014;8:278 (ESTATICS)"
    )
    # magnitude only: volumes with ``part-mag`` or without a ``part`` entity
    inputs = (_echo_input("megre", "MEGRE", (1e-4, 0.2), part=["mag", None]),)
    _example_times = (0.01, 0.08)
    _example_te = (0.004, 0.008, 0.012, 0.016, 0.02, 0.024)
    outputs = (
        OutputSpec("R2star", "R2starmap", "1/s", valid_range=(0.5, 1000)),
        OutputSpec("T2star", "T2starmap", "s", valid_range=(0.001, 2)),
        OutputSpec("S0", "S0map", "arbitrary", valid_range=(0, np.inf)),
    )
