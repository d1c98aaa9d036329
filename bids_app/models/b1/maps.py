"""Relative B1+ maps (``b1``): actual / nominal flip angle, 1.0 = nominal.

Six inputs are recognised; the first one present wins (:attr:`B1Model.alternatives`,
declared in :mod:`bids_app.models.b1._inputs`):

``tb1map``
    ``fmap/*_TB1map`` given directly. Its scale (fraction or percent) comes from the sidecar
    ``Units`` or, without it, from the values: the caller (which holds the image) calls
    :func:`b1_scale_from_values` and :meth:`B1Model.with_scale`.
``tb1afi``
    Actual flip-angle imaging (Yarnykh 2007): two interleaved TRs ``TR1 < TR2``, one flip
    angle. With ``r = S2/S1`` and ``n = TR2/TR1``, ``cos α = (r n - 1)/(n - r)``, exact for
    ideal spoiling when ``TR1, TR2 << T1`` (error < 0.7 % for T1 >= 0.8 s, B1 <= 1.5 with
    TR1/TR2 = 20/100 ms and 60°).
``tb1dam``
    Double-angle method (Insko & Bolinger 1993): images at α and 2α with TR >> T1, so
    ``S ∝ sin(B1 α)`` and ``B1 α = arccos(S_2α / (2 S_α))``. Magnitude images fold actual
    angles above 90° back below it, so B1 is measurable up to ``90° / α``.
``tb1tfl``
    Siemens ``tfl_b1map`` (Chung et al. 2010): ``B1 = famp / (10 FlipAngle)``, the
    ``acq-anat`` image is registered (:mod:`~bids_app.models.b1._tfl`).
``tb1epi``
    3D-EPI SE/STE (Jiru & Klose 2006, Lutti et al. 2010): ``cos(B1 α) = exp(TM/T1) STE/SE``
    over several α, the consistent candidates averaged (:mod:`~bids_app.models.b1._epi`).
``tb1srge``
    SA2RAGE (Eggenschwiler et al. 2012): the ratio of the two saturation-recovery GRE
    images through a lookup table of the sequence (:mod:`~bids_app.models.b1._sa2rage`).

TB1EPI and TB1SRGE assume a T1 (option ``assumed_t1``, recorded in the sidecars).

After the voxel fit, :meth:`B1Model.spatial_postprocess` smooths the map with a mask-aware
(normalised-convolution) Gaussian and fills voxels outside the mask, because consumers need B1
everywhere inside their own brain masks.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from bids_app.errors import MetadataError
from bids_app.models.b1._epi import EPIProtocol
from bids_app.models.b1._inputs import B1_ALTERNATIVES, B1_INPUTS, CONVERSIONS
from bids_app.models.b1._physics import (
    DEFAULT_FWHM_MM,
    afi_b1,
    b1_scale_from_values,
    dam_b1,
    scale_from_units,
    smooth_fill_b1,
)
from bids_app.models.b1._sa2rage import SA2RAGEProtocol, sa2rage_protocol
from bids_app.models.b1._tfl import TFLProtocol
from bids_app.models.base import (
    B1_RANGE,
    Collection,
    Option,
    OutputSpec,
    QMRIModel,
    example_collection,
    register,
)
from bids_app.models.mt._roles import _RoleError

logger = logging.getLogger(__name__)

__all__ = [
    "B1_RANGE",
    "B1Model",
    "afi_b1",
    "b1_scale_from_values",
    "dam_b1",
    "scale_from_units",
    "smooth_fill_b1",
]

#: the B1 map types whose conversion is a protocol object of a private module
_PROTOCOLS = {"tb1tfl": TFLProtocol, "tb1epi": EPIProtocol, "tb1srge": SA2RAGEProtocol}
#: T1 assumed by the TB1EPI mixing-time decay and the TB1SRGE lookup table (s): white matter
#: at 3 T (1.19 s, the hMRI default of Lutti et al.), near grey/white averages at 7 T
DEFAULT_T1 = 1.2


def _afi_roles(trs: Sequence[float]) -> tuple[int, int]:
    """Return the indices (short TR, long TR) of an AFI pair; raise if the TRs are equal."""
    if len(trs) != 2:
        raise _RoleError(0, "RepetitionTimeExcitation", list(trs), "two AFI volumes")
    i1, i2 = (0, 1) if trs[0] < trs[1] else (1, 0)
    if np.isclose(trs[i1], trs[i2], rtol=1e-3, atol=0):
        msg = f"a TR different from the other AFI volume ({trs[0]:g} s)"
        raise _RoleError(1, "RepetitionTimeExcitation", float(trs[1]), msg)
    return i1, i2


def _dam_roles(flips: Sequence[float]) -> tuple[int, int]:
    """Return the indices (α, 2α) of a DAM pair; raise unless the flip ratio is 2 (±2 %)."""
    if len(flips) != 2:
        raise _RoleError(0, "FlipAngle", list(flips), "two DAM volumes")
    ia, i2a = (0, 1) if flips[0] < flips[1] else (1, 0)
    if not np.isclose(flips[i2a], 2.0 * flips[ia], rtol=0.02, atol=0):
        msg = f"twice the other DAM flip angle ({flips[ia]:g} deg), within 2 %"
        raise _RoleError(i2a, "FlipAngle", float(flips[i2a]), msg)
    return ia, i2a


@register
class B1Model(QMRIModel):
    """Relative B1+ (actual / nominal flip angle) from any BIDS B1 map type.

    Parameters
    ----------
    method : {'tb1map', 'tb1afi', 'tb1dam', 'tb1tfl', 'tb1epi', 'tb1srge'}
        Which input the data come from.
    flip_angles : sequence of float
        Nominal flip angles in degrees, per volume in stacking order (AFI, DAM).
    repetition_times : sequence of float
        TRs in s per volume in stacking order (AFI).
    scale : float or None
        Factor applied to a given TB1map (1 for fractions, 0.01 for percent); ``None`` means
        not decided yet (see :meth:`with_scale`).
    scale_source : str or None
        How the scale was decided (recorded in :attr:`acquisition`).
    protocol : TFLProtocol, EPIProtocol or SA2RAGEProtocol, optional
        The parsed sequence of a ``tb1tfl``, ``tb1epi`` or ``tb1srge`` input (required for
        those methods; see their ``from_collection``).
    smoothing_fwhm_mm : float
        FWHM of :meth:`spatial_postprocess` in mm (default 8; 0 disables smoothing).
    assumed_t1 : float
        T1 in s assumed by the TB1EPI and TB1SRGE conversions (default 1.2).
    """

    #: B1+ maps are smooth, without anatomy to register (measured: a synthetic TB1map moved
    #: 9 mm by MI registration); they are aligned by their headers, like a field map
    registrable = False

    name = "b1"
    description = (
        "Relative B1+ map from a TB1map, AFI (Yarnykh 2007), DAM (Insko 1993), Siemens TFL "
        "(Chung 2010), 3D-EPI SE/STE (Lutti 2010) or SA2RAGE (Eggenschwiler 2012)"
    )
    reference = (
        "Yarnykh VL. Magn Reson Med 2007;57:192-200 (AFI); "
        "Insko EK, Bolinger L. J Magn Reson A 1993;103:82-85 (DAM); "
        "Chung S et al. Magn Reson Med 2010;64:439-446 (TFL); "
        "Lutti A et al. Magn Reson Med 2010;64:229-238 (EPI); "
        "Eggenschwiler F et al. Magn Reson Med 2012;67:1609-1619 (SA2RAGE)"
    )
    inputs = B1_INPUTS
    alternatives = B1_ALTERNATIVES
    outputs = (OutputSpec("B1", "TB1map", "fraction of nominal flip angle", valid_range=B1_RANGE),)
    options_spec: ClassVar[Mapping[str, Option]] = {
        "smoothing_fwhm_mm": Option(
            DEFAULT_FWHM_MM,
            float,
            range=(0.0, 50.0),
            unit="mm",
            doc="FWHM of the mask-aware smoothing (0: none)",
        ),
        "assumed_t1": Option(
            DEFAULT_T1,
            float,
            range=(0.2, 5.0),
            unit="s",
            doc="T1 assumed by TB1EPI (decay during the mixing time) and TB1SRGE (lookup)",
        ),
    }

    def __init__(
        self,
        method: str = "tb1map",
        *,
        flip_angles: Sequence[float] = (),
        repetition_times: Sequence[float] = (),
        scale: float | None = None,
        scale_source: str | None = None,
        tr_key: str = "RepetitionTimeExcitation",
        protocol: TFLProtocol | EPIProtocol | SA2RAGEProtocol | None = None,
        **options: Any,
    ):
        super().__init__(**options)
        methods = [names[0] for names in self.alternatives]
        if method not in methods:
            raise ValueError(f"b1: method={method!r}; valid: {methods}")
        self.method = method
        self.flip_angles = [float(f) for f in flip_angles]
        self.repetition_times = [float(t) for t in repetition_times]
        self.tr_key = tr_key
        self.scale, self.scale_source = None, None
        if scale is not None:
            self._set_scale(scale, scale_source)
        if method == "tb1afi":
            self.order = _afi_roles(self.repetition_times)
            if len(self.flip_angles) != 2 or not np.isclose(*self.flip_angles, rtol=1e-3):
                raise _RoleError(1, "FlipAngle", self.flip_angles, "one flip angle for both")
        elif method == "tb1dam":
            self.order = _dam_roles(self.flip_angles)
        self.protocol = protocol
        if method in _PROTOCOLS and not isinstance(protocol, _PROTOCOLS[method]):
            raise ValueError(f"b1: method={method!r} needs a {_PROTOCOLS[method].__name__}")
        if method == "tb1tfl" and protocol.anat_index is not None:
            self.registrable = True  # the anatomy registers (header alignment otherwise)
        self.fit_notes: dict[str, Any] = {}

    def _set_scale(self, scale: float, source: str | None) -> None:
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"b1: scale must be a positive number, got {scale!r}")
        self.scale, self.scale_source = float(scale), source

    def with_scale(self, scale: float, *, source: str = "values") -> B1Model:
        """Return a copy that multiplies TB1map values by ``scale``.

        ``scale`` comes from :func:`b1_scale_from_values`; ``source`` says how it was decided.
        """
        new = copy.copy(self)
        new._set_scale(scale, source)
        return new

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> B1Model:
        """Build from the first present input of :attr:`alternatives`.

        Raises
        ------
        MetadataError
            If no input is present, the AFI TRs are equal, the AFI flip angles differ, the
            DAM flip angles are not α and 2α, or the TFL, EPI or SA2RAGE metadata are
            incomplete or inconsistent (naming the file and key).
        """
        method = next((n[0] for n in cls.alternatives if all(k in collections for k in n)), None)
        if method is None:
            types = ", ".join(s.query["suffix"] for s in cls.inputs)
            raise MetadataError(None, "inputs", sorted(collections), f"one of {types}")
        coll = collections[method]
        if method == "tb1srge":
            return cls(method, protocol=sa2rage_protocol(coll), **options)
        if method in _PROTOCOLS:
            return cls(method, protocol=_PROTOCOLS[method].from_collection(coll), **options)
        if method == "tb1map":
            units = coll.volumes[0].metadata.get("Units")
            scale = scale_from_units(units, path=coll.volumes[0].path)
            if scale is None:  # decided from the values by the caller (with_scale)
                return cls("tb1map", **options)
            return cls("tb1map", scale=scale, scale_source=f"Units={units!r}", **options)
        flips = coll.values("FlipAngle")
        try:
            if method == "tb1afi":
                coll.common("FlipAngle")
                trs = coll.values("RepetitionTimeExcitation")
                tr_key = coll.sources.get("RepetitionTimeExcitation", "RepetitionTimeExcitation")
                return cls(
                    "tb1afi", flip_angles=flips, repetition_times=trs, tr_key=tr_key, **options
                )
            return cls("tb1dam", flip_angles=flips, **options)
        except _RoleError as err:
            raise err.to_metadata_error(coll) from None

    def prepare(self, data: np.ndarray, mask: np.ndarray, *, path: str | None = None) -> B1Model:
        """Decide the TB1map scale from the in-mask values; check the TFL and SA2RAGE data.

        Raises
        ------
        MetadataError
            A TB1TFL famp image that is not in tenths of a degree of its ``FlipAngle``.
        """
        inside = np.asarray(mask, dtype=bool)
        if self.method == "tb1tfl":
            self.protocol.check_scale(np.asarray(data)[..., self.protocol.famp_index][inside])
        if self.method == "tb1srge":
            self._note_sa2rage_sign(np.asarray(data)[..., 0][inside])
        if self.method != "tb1map" or self.scale is not None:
            return self
        values = np.asarray(data)[..., 0][np.asarray(mask, dtype=bool)]
        return self.with_scale(
            b1_scale_from_values(values, path=path),
            source="inferred from the median of the in-mask values",
        )

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """An AFI pair: 60°, TR1/TR2 = 20/100 ms (Yarnykh 2007)."""
        return {
            "tb1afi": example_collection(
                "tb1afi", FlipAngle=(60.0, 60.0), RepetitionTimeExcitation=(0.02, 0.1)
            )
        }

    def simulate(self, n: int, rng: np.random.Generator):
        """AFI signals in the ideal-spoiling, TR << T1 limit for B1 0.7-1.3 (AFI only)."""
        if self.method != "tb1afi":
            return None
        b1 = rng.uniform(0.7, 1.3, n)
        i, j = self.order
        cos_a = np.cos(b1 * np.deg2rad(self.flip_angles[i]))
        ratio = self.repetition_times[j] / self.repetition_times[i]
        signal = np.empty((n, 2))
        signal[:, i] = 1000.0
        signal[:, j] = 1000.0 * (1 + ratio * cos_a) / (ratio + cos_a)  # r = (1 + n cos)/(n + cos)
        return b1[:, None], signal, {}

    def _note_sa2rage_sign(self, s1: np.ndarray) -> None:
        """Record (and warn) when magnitude SA2RAGE images limit the measurable range."""
        s1 = s1[np.isfinite(s1)]
        if s1.size and (s1 < 0).any():
            self.fit_notes["TB1SRGESignal"] = "signed (phase-sensitive): full table range"
            return
        fold = self.protocol.fold(self.options["assumed_t1"])
        logger.warning(
            "b1: TB1SRGE images have no negative value (magnitude?): B1 above %.3g folds "
            "below it; phase-sensitive (signed) images give the whole range",
            fold,
        )
        self.fit_notes["TB1SRGESignal"] = f"magnitude: B1 above {fold:.3g} folds below it"

    def registration_image(self, data: Mapping[str, np.ndarray]) -> np.ndarray:
        """The TB1TFL anatomy when present, else the first volume of the input."""
        if self.method == "tb1tfl" and self.protocol.anat_index is not None:
            return data[self.method][..., self.protocol.anat_index]
        return super().registration_image(data)

    @property
    def acquisition(self) -> dict[str, Any]:
        """Method, parameters per volume in stacking order, and the conversion used."""
        acq: dict[str, Any] = {"B1Method": self.method}
        if self.method in _PROTOCOLS:
            return {**acq, **self.protocol.acquisition(float(self.options["assumed_t1"]))}
        if self.method == "tb1map":
            acq.update(B1Scale=self.scale, B1ScaleSource=self.scale_source)
        else:
            acq["FlipAngle"] = list(self.flip_angles)
        if self.method == "tb1afi":
            acq[self.tr_key] = list(self.repetition_times)
        acq["B1Conversion"] = CONVERSIONS[self.method]
        return acq

    def _fit_voxels(self, signal: np.ndarray, **covariates: np.ndarray) -> np.ndarray:
        if self.method == "tb1tfl":
            return self.protocol.b1(signal)[:, None]
        if self.method in _PROTOCOLS:
            return self.protocol.b1(signal, float(self.options["assumed_t1"]))[:, None]
        if self.method == "tb1map":
            scale = self.scale
            if scale is None:
                logger.warning(
                    "b1: TB1map scale undecided; inferring it from this chunk (call "
                    "with_scale(b1_scale_from_values(...)) on the whole map)"
                )
                scale = b1_scale_from_values(signal[:, 0])
            b1 = signal[:, 0] * scale
            return np.where(np.isfinite(b1) & (b1 > 0), b1, np.nan)[:, None]
        i, j = self.order
        if self.method == "tb1afi":
            n = self.repetition_times[j] / self.repetition_times[i]
            return afi_b1(signal[:, i], signal[:, j], n, np.deg2rad(self.flip_angles[i]))[:, None]
        return dam_b1(signal[:, i], signal[:, j], np.deg2rad(self.flip_angles[i]))[:, None]

    def spatial_postprocess(
        self,
        maps: dict[str, np.ndarray],
        *,
        zooms: tuple[float, ...],
        mask: np.ndarray,
        affine: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Mask-aware smoothing and filling of the B1 map (see :func:`smooth_fill_b1`)."""
        out = dict(maps)
        b1 = np.asarray(maps["B1"])
        dtype = b1.dtype if np.issubdtype(b1.dtype, np.floating) else np.float64
        fwhm = float(self.options["smoothing_fwhm_mm"])
        inside = np.asarray(mask, dtype=bool)
        trusted = np.isfinite(b1) & (b1 >= B1_RANGE[0]) & (b1 <= B1_RANGE[1])
        n_filled = int((inside & ~trusted).sum())
        if n_filled:
            logger.warning(
                "b1: %d of %d voxels in the mask are invalid (0, negative, NaN or outside %s) "
                "and were filled from their neighbours",
                n_filled,
                int(inside.sum()),
                list(B1_RANGE),
            )
        self.fit_notes = {
            **getattr(self, "fit_notes", {}),
            "NumberOfInvalidVoxelsFilled": n_filled,
            "InvalidVoxelsFilledBy": (
                f"mask-aware Gaussian smoothing (FWHM {fwhm:g} mm) of the valid voxels"
            ),
        }
        out["B1"] = smooth_fill_b1(b1, mask, zooms, fwhm_mm=fwhm).astype(dtype)
        return out
