"""The ``qsm`` model: susceptibility (``Chimap``, ppm) from multi-echo GRE magnitude and phase.

Inputs: ``anat/*_echo-<i>_part-mag_MEGRE`` and ``*_echo-<i>_part-phase_MEGRE`` (or one echo of
``part-mag``/``part-phase`` ``T1w``, as ``bids-examples/qmri_qsm``). The phase sidecar
``Units`` is ``rad`` (used as is, wrapped to [-pi, pi)) or ``arbitrary`` (rescaled linearly
from its range to [-pi, pi), recorded under ``PhaseScaling``); B0 comes from
``MagneticFieldStrength`` (T) or ``ImagingFrequency`` (MHz / 42.577); the B0 direction from
the affine. Steps and their references: :mod:`._echoes`, :mod:`._unwrap`, :mod:`._bgremoval`,
:mod:`._inversion`; the chain in :func:`._pipeline.qsm_pipeline`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.base import (
    Collection,
    InputSpec,
    MetaSpec,
    Option,
    OutputSpec,
    QMRIFit,
    QMRIModel,
    Requirement,
    Volume,
    register,
    sidecar_path,
)
from bids_app.models.qsm._bgremoval import BG_METHODS
from bids_app.models.qsm._dipole import GAMMA_BAR_MHZ_T
from bids_app.models.qsm._echoes import temporal_fit
from bids_app.models.qsm._inversion import INVERSION_METHODS
from bids_app.models.qsm._pipeline import qsm_pipeline
from bids_app.models.qsm._unwrap import UNWRAP_METHODS, wrap

B0_RANGE = (0.1, 12.0)  # T


def _input(name, suffix, part, n_volumes):
    return InputSpec(
        name,
        {"datatype": "anat", "suffix": suffix, "part": part},
        metadata=(MetaSpec("EchoTime", "time", (1e-4, 0.2)),),
        stack_along=("EchoTime",),
        index_entities=("echo",),
        n_volumes=n_volumes,
    )


def phase_to_rad(
    phase: np.ndarray, units: str, dtype=np.float32
) -> tuple[np.ndarray, dict[str, Any]]:
    """Phase in rad in [-pi, pi) and the scaling record for the sidecars.

    Parameters
    ----------
    phase : ndarray
        As stored (any shape).
    units : {'rad', 'arbitrary'}
        ``arbitrary``: the finite range ``[lo, hi]`` maps to [-pi, pi) (integer data:
        ``hi - lo + 1`` levels per cycle, as scanners store 0..4095; float data: ``hi - lo``).

    dtype : numpy dtype
        Of the result.

    Returns
    -------
    (ndarray, dict)

    Raises
    ------
    ValueError
        Other ``units``.
    """
    phase = np.asarray(phase, np.float64)
    if units == "rad":
        return wrap(phase).astype(dtype), {"Units": "rad"}
    if units != "arbitrary":
        raise ValueError(f"phase Units {units!r}; expected 'rad' or 'arbitrary'")
    fin = phase[np.isfinite(phase)]
    if fin.size == 0 or np.ptp(fin) == 0:
        return np.full(phase.shape, np.nan, dtype), {"Units": "arbitrary", "Range": None}
    lo, hi = float(fin.min()), float(fin.max())
    integer = bool(np.all(fin == np.round(fin)))
    span = hi - lo + (1.0 if integer else 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        rad = wrap((phase - lo) / span * 2 * np.pi - np.pi)
    record = {
        "Units": "arbitrary",
        "Range": [lo, hi],
        "Integer": integer,
        "Formula": f"(phase - {lo:g}) / {span:g} * 2 pi - pi",
    }
    return rad.astype(dtype), record


def _meta_value(vol: Volume, key: str):
    val = vol.metadata.get(key)
    return None if val is None else val


def field_strength(vol: Volume) -> tuple[float, str]:
    """B0 (T) from ``MagneticFieldStrength`` or ``ImagingFrequency`` (MHz) and the key used.

    Raises
    ------
    MetadataError
        Neither key (naming ``MagneticFieldStrength``), or a value outside 0.1-12 T.
    """
    path = sidecar_path(vol.path)
    for key, scale in (("MagneticFieldStrength", 1.0), ("ImagingFrequency", 1 / GAMMA_BAR_MHZ_T)):
        val = _meta_value(vol, key)
        if val is None:
            continue
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise MetadataError(path, key, val, "a number")
        b0 = float(val) * scale
        if not B0_RANGE[0] <= b0 <= B0_RANGE[1]:
            raise MetadataError(path, key, val, f"a field of {B0_RANGE[0]}-{B0_RANGE[1]} T")
        return b0, key
    raise MetadataError(
        path, "MagneticFieldStrength", None, "the key to be present (or ImagingFrequency in MHz)"
    )


@register
class QSMModel(QMRIModel):
    """Quantitative susceptibility mapping (whole-volume)."""

    name = "qsm"
    kind = "volume"
    description = "QSM: susceptibility from multi-echo GRE phase (Chimap, local/total field)"
    reference = (
        "Wu B et al. NeuroImage 2012 (echo fit); Schofield & Zhu Opt Lett 2003 (Laplacian "
        "unwrapping); Schweser F et al. NeuroImage 2011 (V-SHARP); Liu T et al. NMR Biomed "
        "2011 (PDF); Shmueli K et al. MRM 2009 (TKD); Bilgic B et al. MRM 2014 (TV-ADMM)"
    )
    inputs = (
        _input("mag", "MEGRE", ["mag", None], (1, 0)),  # as megre_r2star
        _input("phase", "MEGRE", "phase", (1, 0)),
        _input("mag_t1w", "T1w", "mag", (1, 1)),
        _input("phase_t1w", "T1w", "phase", (1, 1)),
    )
    alternatives = (("mag", "phase"), ("mag_t1w", "phase_t1w"))
    outputs = (
        OutputSpec("chi", "Chimap", "ppm", valid_range=(-2.0, 2.0)),
        OutputSpec("local_field", "fieldmap", "Hz", desc="localfield", valid_range=(-500, 500)),
        OutputSpec("total_field", "fieldmap", "Hz", desc="totalfield", valid_range=(-5000, 5000)),
    )
    requires = (Requirement("tissue", model="anatomy", output="tissue", order=0),)
    options_spec: ClassVar[Mapping[str, Option]] = {
        "unwrap": Option(
            "laplacian",
            str,
            UNWRAP_METHODS,
            doc="spatial unwrapping: Laplacian (snapped) or quality-guided",
        ),
        "background": Option("vsharp", str, BG_METHODS, doc="background-field removal"),
        "inversion": Option("tvadmm", str, INVERSION_METHODS, doc="dipole inversion"),
        "reference": Option(
            "whole_brain",
            str,
            ("whole_brain", "csf"),
            doc="chi referenced to the brain mean or the CSF mean",
        ),
        "mask_erosion": Option(
            2.0, float, range=(0.0, 10.0), unit="mm", doc="erosion of the magnitude brain mask"
        ),
        "vsharp_radius": Option(
            10.0, float, range=(1.0, 25.0), unit="mm", doc="largest V-SHARP sphere"
        ),
        "tkd_threshold": Option(0.19, float, range=(0.05, 1 / 3), doc="TKD truncation"),
        "tikhonov_lambda": Option(
            0.01, float, range=(1e-6, 10.0), unit="mm^2", doc="gradient-L2 weight"
        ),
        "tv_lambda": Option(3e-4, float, range=(1e-6, 0.1), unit="ppm mm", doc="TV-ADMM weight"),
        "tv_iterations": Option(40, int, range=(1, 500), doc="TV-ADMM iterations at most"),
    }

    def __init__(
        self,
        echo_times,
        b0_tesla: float,
        *,
        phase_units: str = "rad",
        b0_source: str = "MagneticFieldStrength",
        **options: Any,
    ):
        super().__init__(**options)
        self.echo_times = np.asarray(echo_times, float)
        self.b0_tesla = float(b0_tesla)
        self.phase_units = phase_units
        self.b0_source = b0_source

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> QSMModel:
        """Echo times (mag and phase must agree), B0, and the phase units.

        Raises
        ------
        MetadataError
            Missing or invalid ``Units`` / ``MagneticFieldStrength``, or echo times that
            differ between magnitude and phase (naming the file and key).
        """
        pair = next((a for a in cls.alternatives if set(a) <= set(collections)), None)
        if pair is None:
            given = next(iter(collections.values()))
            raise MetadataError(
                given.volumes[0].path,
                "part",
                f"only {', '.join(collections)}",
                "magnitude and phase images of the same echoes (QSM)",
            )
        mag_name, ph_name = pair
        mag, ph = collections[mag_name], collections[ph_name]
        te_mag, te_ph = mag.values("EchoTime"), ph.values("EchoTime")
        if te_mag.shape != te_ph.shape or not np.allclose(te_mag, te_ph, rtol=1e-3):
            raise MetadataError(
                sidecar_path(ph.volumes[0].path),
                "EchoTime",
                te_ph.tolist(),
                f"the echo times of the magnitude {te_mag.tolist()}",
            )
        units = {v.metadata.get("Units") for v in ph.volumes}
        vol = ph.volumes[0]
        if None in units:
            raise MetadataError(
                sidecar_path(vol.path),
                "Units",
                None,
                "the key to be present ('rad' or 'arbitrary')",
            )
        if len(units) != 1 or not units <= {"rad", "arbitrary"}:
            raise MetadataError(
                sidecar_path(vol.path),
                "Units",
                sorted(units),
                "'rad' or 'arbitrary', the same for every echo",
            )
        b0, key = field_strength(vol)
        return cls(te_ph, b0, phase_units=units.pop(), b0_source=key, **options)

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """Four echoes (4-16 ms) at 3 T, phase in rad."""
        te = (0.004, 0.008, 0.012, 0.016)
        meta = {"MagneticFieldStrength": 3.0}
        out = {}
        for name, part in (("mag", "mag"), ("phase", "phase")):
            extra = {"Units": "rad"} if part == "phase" else {}
            vols = tuple(
                Volume(
                    f"example_echo-{i}_part-{part}_MEGRE.nii.gz",
                    {},
                    {**meta, **extra, "EchoTime": t},
                )
                for i, t in enumerate(te, 1)
            )
            out[name] = Collection(name, vols, {"EchoTime": te}, {"EchoTime": "EchoTime"})
        return out

    @property
    def acquisition(self) -> dict[str, Any]:
        """Echo times (s), B0 (T) and where it came from, phase units."""
        return {
            "EchoTime": self.echo_times.tolist(),
            "MagneticFieldStrength": self.b0_tesla,
            "B0Source": self.b0_source,
            "PhaseUnits": self.phase_units,
        }

    def simulate(self, n: int, rng: np.random.Generator):
        """Voxels without neighbours: only the total field is defined (chi, local: NaN).

        Fields within +-0.9 / (2 dTE) (no wrap of the first echo difference), random
        receive offsets, M0 in [0.5, 1], R2* in [10, 40] 1/s.
        """
        te = self.echo_times
        limit = 0.9 / (2 * np.diff(te).min()) if te.size > 1 else 0.9 / (2 * te[0])
        f = rng.uniform(-limit, limit, n)
        offset = rng.uniform(-np.pi, np.pi, n) if te.size > 1 else np.zeros(n)
        m0, r2s = rng.uniform(0.5, 1.0, n), rng.uniform(10, 40, n)
        mag = m0[:, None] * np.exp(-r2s[:, None] * te)
        phase = wrap(offset[:, None] + 2 * np.pi * f[:, None] * te)
        truth = np.column_stack([np.full(n, np.nan), np.full(n, np.nan), f])
        return truth, np.hstack([mag, phase]), {}

    def fit(self, data, *, mask=None, affine=None, **kwargs) -> QMRIFit:
        """Fit a mapping ``{input: (X, Y, Z, n_echo)}`` (the pipeline) or plain rows.

        Plain (n, 2 n_echo) rows ``[magnitudes, phases]`` have no neighbours: only the
        voxelwise echo fit is done (total field, Hz); chi and the local field are NaN.
        """
        if isinstance(data, Mapping):
            return super().fit(data, mask=mask, affine=affine, **kwargs)
        arr = np.atleast_2d(np.asarray(data, np.float64))
        n_te = self.echo_times.size
        if arr.shape[-1] != 2 * n_te:
            raise ValueError(f"qsm: rows of 2 x {n_te} values (magnitudes, phases) expected")
        with np.errstate(all="ignore"):
            mag = np.where(np.isfinite(arr[:, :n_te]), np.abs(arr[:, :n_te]), np.nan)
            phase, _ = phase_to_rad(arr[:, n_te:], self.phase_units, np.float64)
            dte = self.echo_times[1] - self.echo_times[0] if n_te > 1 else self.echo_times[0]
            d = wrap(phase[:, 1] - phase[:, 0]) if n_te > 1 else phase[:, 0]
            omega, _ = temporal_fit(mag, phase, self.echo_times, d / dte, np.float64)
        params = np.full((arr.shape[0], 3), np.nan)
        params[:, 2] = omega / (2 * np.pi)
        params[~np.isfinite(params)] = np.nan
        return QMRIFit(self, params)

    def _fit_volume(self, data, *, mask, affine, tissue=None, **covariates):
        names = ("mag", "phase") if "mag" in data else ("mag_t1w", "phase_t1w")
        mag = np.abs(np.nan_to_num(np.asarray(data[names[0]], np.float32)))
        phase, record = phase_to_rad(data[names[1]], self.phase_units)
        csf = None if tissue is None else np.rint(tissue) == 3
        reference = self.options["reference"]
        if reference == "csf" and (csf is None or not (csf & mask).any()):
            self.fit_notes["ReferenceFallback"] = "no CSF in the mask: whole-brain mean used"
            reference = "whole_brain"
        opts = self.options
        inv_kwargs = {
            "tvadmm": {"lam": opts["tv_lambda"], "max_iter": opts["tv_iterations"]},
            "tkd": {"threshold": opts["tkd_threshold"]},
            "tikhonov": {"lam": opts["tikhonov_lambda"]},
        }[opts["inversion"]]
        res = qsm_pipeline(
            mag,
            np.nan_to_num(phase),
            self.echo_times,
            self.b0_tesla,
            affine,
            mask,
            unwrap=opts["unwrap"],
            background=opts["background"],
            inversion=opts["inversion"],
            reference=reference,
            csf=csf,
            erosion_mm=opts["mask_erosion"],
            vsharp_radius_mm=opts["vsharp_radius"],
            inversion_kwargs=inv_kwargs,
        )
        self.fit_notes.update(
            {
                "PhaseScaling": record,
                "Reference": reference,
                "ReferenceValue_ppm": res.reference_ppm,
                "B0Direction": [float(v) for v in _b0(affine)],
                "NumberOfQSMMaskVoxels": int(res.mask.sum()),
                "StepSeconds": {k: round(v, 3) for k, v in res.timings.items()},
            }
        )
        return np.stack([res.chi, res.local_hz, res.total_hz], axis=-1)


def _b0(affine):
    from bids_app.models.qsm._dipole import b0_direction

    return b0_direction(affine)
