"""MP2RAGE T1 (``mp2rage``) and MP2RAGE-ME R2* (``mp2rageme_r2star``).

``mp2rage`` maps T1 from the UNIT1 combination of the two inversions through a lookup table
computed from the sequence parameters of the sidecars (Marques et al. 2010), with a second
dimension in B1 when the ``b1`` model's map exists (Marques & Gruetter 2013); the signal
equations and the table are in :mod:`bids_app.models.relaxometry._mp2rage_physics`, the
sidecar parsing in :mod:`bids_app.models.relaxometry._mp2rage_protocol`.

UNIT1 comes from a given ``*_UNIT1`` image when there is one (the BIDS-recommended primary
input; scanner integers ``(U + 0.5) 4095`` are rescaled), else from the complex signals of
``part-mag`` and ``part-phase`` images of inv-1 and inv-2. Magnitude images alone cannot
give UNIT1 (the sign of the first inversion is lost), so the model needs one of the two.
The UNIT1 output is the combination used; with ``robust_beta > 0`` it is the robust
combination of O'Brien et al. (2014) while T1 still comes from the plain combination the
lookup table describes.

``mp2rageme_r2star`` fits R2* to the echoes of the second inversion of MP2RAGE-ME (Caan et
al. 2019) with the mono-exponential fits of the other echo models.
"""

from __future__ import annotations

import functools
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
from bids_app.models.relaxometry._mp2rage_physics import (
    B1_GRID,
    INVERSION_EFFICIENCY,
    MP2RAGEProtocol,
    UNIT1LookupTable,
    mp2rage_signals,
    unit1_combination,
)
from bids_app.models.relaxometry._mp2rage_protocol import (
    infer_phase_scale,
    infer_unit1_scale,
    protocol_from_collections,
)
from bids_app.models.relaxometry.classic import _echo_input, _MonoExpModel
from bids_app.models.specs import sidecar_path

logger = logging.getLogger(__name__)

__all__ = ["MP2RAGEMER2starModel", "MP2RAGEModel"]

_NII = [".nii", ".nii.gz"]
_MP2RAGE = {"datatype": "anat", "suffix": "MP2RAGE", "extension": _NII}
_TI = MetaSpec("InversionTime", "time", (0.01, 10.0))
_TE = MetaSpec("EchoTime", "time", (1e-4, 0.1), required=False)


@functools.lru_cache(maxsize=8)
def _table(protocol: MP2RAGEProtocol) -> UNIT1LookupTable:
    """The lookup table of a protocol, built once per process (~0.2 s)."""
    return UNIT1LookupTable(protocol)


@register
class MP2RAGEModel(QMRIModel):
    """T1, R1 and UNIT1 from MP2RAGE (Marques et al. 2010), B1-corrected if a map is given.

    Parameters
    ----------
    protocol : MP2RAGEProtocol
        Sequence parameters (SI units, degrees), inversion efficiency included.
    roles : Roles
        Columns of the stacked signal (see
        :class:`~bids_app.models.relaxometry._mp2rage_protocol.Roles`).
    record : dict
        The acquisition record (what the sidecars said and what was assumed).
    phase_scale : float or None
        Factor from phase values to radians (``None``: decided from the data in
        :meth:`prepare`).
    unit1_scale : (2,) tuple or None
        ``(scale, offset)`` of a given UNIT1 image (``None``: decided in :meth:`prepare`).

    Notes
    -----
    ``_fit_voxels(signal, b1=None)``: ``signal`` (n, m) holds the ``inv`` magnitudes, then
    the phases or the UNIT1 value; ``b1`` (n,) the relative B1+. Outputs: T1 (s), R1 (1/s),
    UNIT1 (in [-0.5, 0.5]). A voxel whose UNIT1 lies off the monotone branch of the table
    gets NaN T1.
    """

    name = "mp2rage"
    description = "MP2RAGE T1 mapping by UNIT1 lookup table, B1-corrected with a B1 map"
    reference = (
        "Marques JP et al. NeuroImage 2010;49:1271-1281; "
        "Marques JP, Gruetter R. PLoS One 2013;8:e69294 (B1 correction); "
        "O'Brien KR et al. PLoS One 2014;9:e99676 (robust combination)"
    )
    inputs = (
        InputSpec(
            "inv",
            {**_MP2RAGE, "part": ["mag", None]},
            metadata=(
                _TI,
                MetaSpec("FlipAngle", "angle", (0.5, 45.0)),
                MetaSpec("RepetitionTimeExcitation", "time", (1e-3, 0.1)),
                MetaSpec("RepetitionTimePreparation", "time", (0.5, 20.0)),
                _TE,
            ),
            index_entities=("inv", "echo"),
            n_volumes=(2, 0),
        ),
        InputSpec(
            "unit1",
            {"datatype": "anat", "suffix": "UNIT1", "extension": _NII},
            n_volumes=(1, 1),
            optional=True,
        ),
        InputSpec(
            "phase",
            {**_MP2RAGE, "part": "phase"},
            metadata=(_TI, _TE),
            index_entities=("inv", "echo"),
            n_volumes=(2, 0),
            optional=True,
        ),
    )
    alternatives = (("inv", "unit1"), ("inv", "phase"))
    outputs = (
        OutputSpec("T1", "T1map", "s", desc="MP2RAGE", valid_range=(0.05, 10.0)),
        OutputSpec("R1", "R1map", "1/s", desc="MP2RAGE", valid_range=(0.1, 20.0)),
        OutputSpec("UNIT1", "UNIT1", "arbitrary", valid_range=(-0.5, 0.5)),
    )
    requires = (B1_REQUIREMENT,)
    options_spec: ClassVar[Mapping[str, Option]] = {
        "inversion_efficiency": Option(
            INVERSION_EFFICIENCY,
            float,
            range=(0.5, 1.0),
            doc="inversion efficiency (no BIDS key; 0.96 of Marques et al. 2010)",
        ),
        "robust_beta": Option(
            0.0,
            float,
            range=(0.0, 100.0),
            unit="x background noise",
            doc="O'Brien 2014 robust UNIT1 output: beta = (value x noise s.d.)^2 (0: off)",
        ),
        "slice_partial_fourier": Option(
            0.0,
            float,
            range=(0.0, 1.0),
            doc="slice partial Fourier fraction overriding the sidecars (0: from sidecars)",
        ),
    }
    #: bilinear interpolation of R1 on a 0.01 x 2.5e-4 (B1, UNIT1) grid (measured < 3e-5)
    contract_rtol = 2e-4
    contract_atol = 1e-9

    def __init__(self, protocol: MP2RAGEProtocol, roles, record: Mapping[str, Any], **options):
        super().__init__(**options)
        pf = self.options["slice_partial_fourier"]
        if pf and pf <= 0.5:
            raise ValueError(f"mp2rage: slice_partial_fourier={pf!r}; expected 0 or (0.5, 1]")
        self.protocol, self.roles, self.record = protocol, roles, dict(record)
        self.phase_scale: float | None = None
        self.unit1_scale: tuple[float, float] | None = None
        self.beta: float | None = 0.0 if not self.options["robust_beta"] else None

    @property
    def table(self) -> UNIT1LookupTable:
        """The (B1, UNIT1) -> R1 lookup table of the protocol (cached per process, not pickled)."""
        return _table(self.protocol)

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> MP2RAGEModel:
        """Build from ``inv`` and ``unit1`` or ``phase`` (times in s, angles in degrees).

        Raises
        ------
        MetadataError
            A missing or implausible sequence parameter (naming the sidecar and key), or
            neither a UNIT1 image nor phase images.
        """
        options = cls.check_options(options)
        protocol, roles, record = protocol_from_collections(
            collections,
            inversion_efficiency=options["inversion_efficiency"],
            slice_partial_fourier=options["slice_partial_fourier"],
        )
        if roles.phase is None and roles.unit1 is None:
            raise MetadataError(
                sidecar_path(collections["inv"].volumes[0].path),
                "part",
                "mag only",
                "part-phase images or a UNIT1 image (magnitudes lose the sign of inv-1)",
            )
        model = cls(protocol, roles, record, **options)
        if "phase" in collections and roles.phase is not None:
            units = collections["phase"].volumes[0].metadata.get("Units")
            if units == "rad":
                model.phase_scale = 1.0
                model.record["PhaseScale"] = "1 (Units rad)"
        return model

    @property
    def acquisition(self) -> dict[str, Any]:
        """The sequence parameters used, in inversion order, and the table's ranges."""
        acq = dict(self.record)
        i = int(np.argmin(np.abs(self.table.b1 - 1.0)))
        acq["LookupTable"] = {
            "B1Range": [B1_GRID[0], B1_GRID[1]],
            "T1RangeAtNominalB1": self.table.t1_range[i].tolist(),
        }
        if self.options["robust_beta"]:
            acq["RobustBeta"] = self.beta
        return acq

    def registration_image(self, data: Mapping[str, np.ndarray]) -> np.ndarray:
        """The inv-2 magnitude (proton-density-like, the most anatomical image)."""
        return data["inv"][..., self.roles.mag[1]]

    def prepare(self, data: np.ndarray, mask: np.ndarray, *, path: str | None = None):
        """Decide the phase or UNIT1 scale and the robust β from the whole volume.

        Raises
        ------
        MetadataError
            A given UNIT1 image whose values fit none of the known ranges.
        """
        data = np.asarray(data)
        inside = np.asarray(mask, dtype=bool)
        r = self.roles
        if r.phase is not None and self.phase_scale is None:
            self.phase_scale = infer_phase_scale(data[..., list(r.phase)][inside])
            self.record["PhaseScale"] = f"{self.phase_scale!r} (from the value range)"
        if r.unit1 is not None and self.unit1_scale is None:
            self.unit1_scale = infer_unit1_scale(data[..., r.unit1][inside])
            if self.unit1_scale is None:
                raise MetadataError(
                    path, "UNIT1 values", "outside known ranges", "[-0.5,0.5], [0,1] or [0,4095]"
                )
            self.record["UNIT1Scale"] = list(self.unit1_scale)
        if self.beta is None:
            background = data[..., r.mag[1]][~inside]
            background = background[np.isfinite(background)]
            if background.size:
                # Rayleigh median σ sqrt(2 ln 2): robust to the scalp and skull voxels
                # outside the brain mask as long as at least half of them are air
                sigma = float(np.median(background)) / np.sqrt(2 * np.log(2))
                self.beta = (self.options["robust_beta"] * sigma) ** 2
                self.fit_notes["RobustUNIT1"] = {
                    "Beta": self.beta,
                    "NoiseSD": sigma,
                    "NoiseFrom": "median inv-2 magnitude outside the mask (Rayleigh)",
                    "T1From": "the plain combination (the lookup table's)",
                }
            else:
                logger.warning("mp2rage: no voxel outside the mask; robust_beta not applied")
                self.beta = 0.0
        return self

    def unit1(self, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Plain and output UNIT1 of ``signal`` (n, m): ``(for T1, as written)``."""
        r = self.roles
        if r.unit1 is not None:
            scale = self.unit1_scale or infer_unit1_scale(signal[:, r.unit1]) or (np.nan, 0.0)
            u = scale[0] * signal[:, r.unit1] + scale[1]
            u = np.where((u >= -0.5) & (u <= 0.5), u, np.nan)
            return u, u
        m1, m2 = signal[:, r.mag[0]], signal[:, r.mag[1]]
        ok = (m1 >= 0) & (m2 >= 0)
        scale = self.phase_scale
        if scale is None:
            scale = infer_phase_scale(signal[:, list(r.phase)]) or np.nan
        dphi = (signal[:, r.phase[1]] - signal[:, r.phase[0]]) * scale
        with np.errstate(all="ignore"):
            num = np.where(ok, m1 * m2 * np.cos(dphi), np.nan)  # Re(S1* S2)
            den = m1**2 + m2**2
            plain = np.where(np.isfinite(num / den), num / den, np.nan)
            beta = self.beta or 0.0
            robust = (num - beta) / (den + 2.0 * beta) if beta else plain
        return plain, np.where(np.isfinite(robust), robust, np.nan)

    def _fit_voxels(self, signal: np.ndarray, b1: np.ndarray | None = None) -> np.ndarray:
        plain, written = self.unit1(signal)
        r1 = self.table.r1_of(plain, valid_b1(b1))
        with np.errstate(all="ignore"):
            return np.stack((1.0 / r1, r1, written), axis=-1)

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """The 3 T protocol of Marques et al. (2010): TI 0.7/2.5 s, 4°/5°, TR 7 ms, 5 s."""
        return {
            "inv": example_collection(
                "inv",
                InversionTime=(0.7, 2.5),
                FlipAngle=(4.0, 5.0),
                RepetitionTimeExcitation=(0.007, 0.007),
                RepetitionTimePreparation=(5.0, 5.0),
                NumberShots=(176, 176),
                SlicePartialFourier=(0.75, 0.75),
            ),
            "phase": example_collection("phase", InversionTime=(0.7, 2.5)),
        }

    def simulate(self, n: int, rng: np.random.Generator):
        """T1 0.6-3 s, M0 500-2000, B1 0.8-1.2, a random common phase (complex input only).

        Returns ``(params, signal, {'b1': ...})`` with signal columns as :attr:`roles`.
        """
        if self.roles.phase is None:
            return None
        t1, m0 = rng.uniform(0.6, 3.0, n), rng.uniform(500, 2000, n)
        b1, phi0 = rng.uniform(0.8, 1.2, n), rng.uniform(-np.pi, np.pi, n)
        s1, s2 = mp2rage_signals(t1, self.protocol, b1)
        signal = np.zeros((n, self.roles.n_columns))
        for s, im, ip in zip((s1, s2), self.roles.mag, self.roles.phase, strict=True):
            signal[:, im] = m0 * np.abs(s)
            signal[:, ip] = np.angle(np.exp(1j * (phi0 + np.where(s < 0, np.pi, 0.0))))
        params = np.stack((t1, 1 / t1, unit1_combination(s1, s2)), axis=-1)
        return params, signal, {"b1": b1}


_ECHO_LABELS = [str(k) for k in range(1, 65)] + [f"{k:02d}" for k in range(1, 10)]


@register
class MP2RAGEMER2starModel(_MonoExpModel):
    """R2*, T2* and S0 from the echoes of the second inversion of MP2RAGE-ME.

    Parameters
    ----------
    echo_time : (m,) array_like
        Echo times of the ``inv-2`` echoes, s, in the order of the data's last axis.
    fit_method : {'loglinear', 'nonlinear'}
        S²-weighted log-linear (default) or least-squares mono-exponential fit.
    """

    name = "mp2rageme_r2star"
    description = "Mono-exponential R2*/T2* from the inv-2 echoes of MP2RAGE-ME"
    reference = (
        "Caan MWA et al. Hum Brain Mapp 2019;40:1786-1798 (MP2RAGE-ME); "
        "Veraart J et al. NeuroImage 2013;81:335-346 (weighted log-linear fit)"
    )
    # only files with an echo entity: a plain MP2RAGE's single inv-2 image is not an input
    inputs = (
        _echo_input(
            "mp2rageme", "MP2RAGE", (1e-4, 0.2), part=["mag", None], inv="2", echo=_ECHO_LABELS
        ),
    )
    _example_times = (0.01, 0.08)
    _example_te = (0.006, 0.0145, 0.023, 0.0315)
    outputs = (
        OutputSpec("R2star", "R2starmap", "1/s", desc="MP2RAGE", valid_range=(0.5, 1000)),
        OutputSpec("T2star", "T2starmap", "s", desc="MP2RAGE", valid_range=(0.001, 2)),
        OutputSpec("S0", "S0map", "arbitrary", desc="MP2RAGE", valid_range=(0, np.inf)),
    )
