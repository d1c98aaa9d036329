"""The ``mwf`` model: myelin water fraction from multi-echo spin echo (CPMG) images.

Each voxel's decay is the non-negative sum of EPG decay curves over a log-spaced T2 grid
(stimulated echoes included), the refocusing angle fitted per voxel (or taken from the B1
map), and the spectrum regularised (``chi2`` by default); the myelin water fraction is the
share of the spectrum below ``mw_cutoff``. See :mod:`bids_app.models.mwf._fit`.

Inputs: every ``anat/*_echo-<i>_MESE`` collection, as for ``mese_t2`` (CONTRACT section 3;
both models fit the same images, their outputs never share a name: ``mese_t2`` writes
``T2map``, ``R2map``, ``desc-MESE_M0map``, ``mwf`` the ``desc-MW``/``desc-IEW`` T2 maps and
the maps below). A collection that is not a CPMG train of at least :data:`MIN_ECHOES`
echoes (``EchoTime = k * TE1``) is refused with :class:`~bids_app.errors.NotApplicableError`
(the participant level then skips ``mwf`` for it and fits the rest, ``mese_t2`` included).

Accuracy (tests/models/test_mwf.py, test_mwf_synth.py): the median |MWF error| in WM at SNR
100 is about 3 points with the angle fitted (the Cramér-Rao bound of the three-pool signal is
about 6 points SD per voxel), below 2 points from SNR 200 on the synthetic images (1.3 at
300). Speed: ``benchmarks/bench_mwf.py``.

Option ``denoise='mppca'`` denoises the echoes across echoes before the fit (MP-PCA within the
mask dilated by the patch radius, :mod:`bids_app.models.mwf._denoise`; Does MD et al. Magn
Reson Med 2019;81:3503-3514): at SNR 100 the median |MWF error| in WM falls to 1.3-1.5 points
and its SD from 4 to 0.9, the mean signed error stays (-1.3 to -1.5), but the NAWM - lesion
contrast of small lesions shrinks by 1.1-1.7 points (tests/models/test_mwf_denoise.py), so
the default stays ``none``; about 15 CPU us per brain voxel with the default stride 2.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np

from bids_app.errors import NotApplicableError
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
from bids_app.models.mwf._denoise import DENOISE_METHODS, denoise_mese
from bids_app.models.mwf._fit import fit_spectra, make_basis, summarise
from bids_app.models.mwf._regularise import METHODS

logger = logging.getLogger(__name__)

__all__ = ["MIN_ECHOES", "MWFModel"]

#: fewest echoes of a myelin water protocol (a T2 spectrum needs many more than 2 or 3)
MIN_ECHOES = 8
#: residuals below this fraction of the largest echo are float round-off: reported as 0
_ROUNDOFF = 1e-11


@register
class MWFModel(QMRIModel):
    """Myelin water imaging: T2 spectra by NNLS on an EPG basis, MWF and window T2.

    Parameters
    ----------
    echo_time : (n_echoes,) array_like
        Echo times, s, in data order; they must be ``k * TE1`` (a CPMG train).
    **options
        See :attr:`options_spec`.

    Notes
    -----
    Outputs, per voxel: ``MWF`` and ``IEWF`` (percent of the spectrum below ``mw_cutoff``,
    and in ``[mw_cutoff, iew_cutoff)``), their geometric-mean T2 (s), the refocusing angle
    (degrees: fitted, or ``180 - |180 B1 - 180|`` with ``refocusing_angle='b1'``: CPMG
    echoes at ``a`` and ``360 - a`` are the same), the SNR (largest echo over the rms
    residual) and the rms residual (signal units). A voxel with a non-finite
    value or no positive echo gets NaN; one without a valid B1 gets its angle fitted, so no
    output is undefined because of the B1 map.

    With ``denoise='mppca'`` the participant level denoises the series first
    (:meth:`preprocess`, :meth:`with_preprocessed`); the SNR and residual maps then describe
    the fit of the denoised echoes, and ``FitNotes['Denoising']`` records the method, patch
    and the noise and component estimates.
    """

    name = "mwf"
    description = "Myelin water fraction from multi-echo spin echo (EPG-NNLS T2 spectra)"
    reference = (
        "MacKay A et al. Magn Reson Med 1994;31:673-677 (myelin water fraction); "
        "Whittall KP, MacKay AL. J Magn Reson 1989;84:134-152 (regularised NNLS); "
        "Prasloski T et al. Magn Reson Med 2012;67:1803-1814 (EPG stimulated-echo correction)"
    )
    inputs = (
        InputSpec(
            "mese",
            {"datatype": "anat", "suffix": "MESE", "extension": [".nii", ".nii.gz"]},
            metadata=(MetaSpec("EchoTime", "time", (1e-3, 1.0)),),
            stack_along=("EchoTime",),
            index_entities=("echo",),
            # fewer than MIN_ECHOES: not applicable (from_collections), not a bad dataset
        ),
    )
    outputs = (
        OutputSpec("MWF", "MWFmap", "percent", valid_range=(0, 100)),
        OutputSpec("IEWF", "IEWFmap", "percent", valid_range=(0, 100)),
        OutputSpec("T2MW", "T2map", "s", desc="MW", valid_range=(1e-3, 1.0)),
        OutputSpec("T2IEW", "T2map", "s", desc="IEW", valid_range=(1e-3, 5.0)),
        OutputSpec("Angle", "FAmap", "degree", desc="refocusing", valid_range=(1, 180)),
        OutputSpec("SNR", "SNRmap", "ratio", desc="MESE", valid_range=(0, np.inf)),
        OutputSpec("Residual", "residual", "arbitrary", desc="MWF", valid_range=(0, np.inf)),
    )
    requires = (B1_REQUIREMENT,)
    options_spec: ClassVar[Mapping[str, Option]] = {
        "regularization": Option("chi2", str, METHODS, doc="choice of the Tikhonov weight"),
        "chi2_factor": Option(1.02, float, range=(1.0, 2.0), doc="misfit increase of chi2"),
        "t2_min": Option(0.0, float, range=(0.0, 0.1), unit="s", doc="0: the first TE"),
        "t2_max": Option(2.0, float, range=(0.1, 10.0), unit="s", doc="largest T2"),
        "n_t2": Option(40, int, range=(8, 200), doc="log-spaced T2 values"),
        "mw_cutoff": Option(0.04, float, range=(0.005, 0.2), unit="s", doc="MW window top"),
        "iew_cutoff": Option(0.2, float, range=(0.02, 2.0), unit="s", doc="IEW window top"),
        "refocusing_angle": Option(
            "fit", str, ("fit", "b1"), doc="fit per voxel, or 180-|180 B1-180| deg where B1 valid"
        ),
        "angle_min": Option(100.0, float, range=(50.0, 170.0), unit="degree", doc="search"),
        "n_angles": Option(17, int, range=(4, 64), doc="coarse angle grid"),
        "angle_resolution": Option(0.5, float, range=(0.05, 5.0), unit="degree", doc="fine"),
        "t1": Option(1.0, float, range=(0.1, 10.0), unit="s", doc="T1 of the EPG basis"),
        "denoise": Option(
            "none",
            str,
            DENOISE_METHODS,
            doc="whole-volume denoising across echoes before the fit (mppca: MP-PCA, "
            "Veraart 2016, within the mask dilated by the patch radius; Does 2019)",
        ),
        "denoise_patch_radius": Option(
            2, int, range=(1, 5), unit="voxels", doc="MP-PCA patch radius (window 2r+1)"
        ),
        "denoise_stride": Option(
            2, int, range=(1, 3), unit="voxels", doc="MP-PCA patch centres every stride voxels"
        ),
    }

    def __init__(self, echo_time: np.ndarray, **options: Any):
        super().__init__(**options)
        te = np.asarray(echo_time, dtype=np.float64).ravel()
        self.echo_time = te
        self.order = np.argsort(te, kind="stable")
        ts = te[self.order]
        esp = ts[0]
        if ts.size < MIN_ECHOES or not np.allclose(ts, esp * np.arange(1, ts.size + 1), rtol=1e-3):
            raise ValueError(
                f"{self.name}: EchoTime must be k * TE1 (k = 1..n, n >= {MIN_ECHOES}), "
                f"got {te.tolist()}"
            )
        self.echo_spacing = float(esp)
        o = self.options
        if o["refocusing_angle"] == "fit":
            self.fit_notes["RefocusingAngle"] = "fitted per voxel (a B1 map is not used)"
        else:
            self.fit_notes["RefocusingAngle"] = (
                "180 - |180 B1 - 180| deg where B1 is valid, fitted elsewhere"
            )
        # replaced by the preprocessing's record (with_preprocessed) in the pipeline
        self.fit_notes["Denoising"] = (
            "none" if o["denoise"] == "none" else f"{o['denoise']} not applied (no preprocess)"
        )
        if o["mw_cutoff"] >= o["iew_cutoff"]:
            raise ValueError(f"{self.name}: mw_cutoff must be below iew_cutoff")
        t2_min = o["t2_min"] or self.echo_spacing
        if t2_min >= o["t2_max"]:
            raise ValueError(f"{self.name}: t2_min must be below t2_max")
        self.t2 = np.geomspace(t2_min, o["t2_max"], o["n_t2"])
        self.basis = make_basis(
            self.t2,
            self.echo_spacing,
            ts.size,
            angle_min=o["angle_min"],
            n_coarse=o["n_angles"],
            resolution=o["angle_resolution"],
            t1=o["t1"],
        )

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> MWFModel:
        """Build from the ``mese`` collection (echo times in s, equally spaced from TE1)."""
        options = cls.check_options(options)
        coll = collections["mese"]
        te = coll.values("EchoTime")
        ts = np.sort(te)
        cpmg = np.allclose(ts, ts[0] * np.arange(1, ts.size + 1), rtol=1e-3)
        if ts.size < MIN_ECHOES or not cpmg:
            raise NotApplicableError(
                coll.volumes[0].path if coll.volumes else None,
                coll.sources.get("EchoTime", "EchoTime"),
                [float(v) for v in te],
                f"a CPMG train for mwf: EchoTime = k * TE1, k = 1..n, at least {MIN_ECHOES} "
                "echoes",
            )
        return cls(te, **options)

    @property
    def acquisition(self) -> dict[str, Any]:
        """Echo times (s), the echo spacing and the T2 grid used."""
        return {
            "EchoTime": self.echo_time.tolist(),
            "EchoSpacing": self.echo_spacing,
            "T2Range": [float(self.t2[0]), float(self.t2[-1])],
            "NumberOfT2": int(self.t2.size),
        }

    def preprocess_key(self) -> Hashable | None:
        """``None`` without denoising, else the denoising options (one run per value set)."""
        o = self.options
        if o["denoise"] == "none":
            return None
        return ("msqmri-mese-denoise", o["denoise"], o["denoise_patch_radius"],
                o["denoise_stride"])  # fmt: skip

    def preprocess(
        self,
        data: Mapping[str, np.ndarray],
        *,
        mask: np.ndarray,
        affine: np.ndarray,
        pool: Any = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Denoise the echoes across echoes (:func:`~bids_app.models.mwf._denoise.denoise_mese`).

        Returns ``({'mese': denoised}, {'notes': ...})``; the fit mask is unchanged.
        """
        o = self.options
        out = dict(data)
        name = next(iter(data))
        out[name], notes = denoise_mese(
            data[name],
            mask,
            method=o["denoise"],
            patch_radius=o["denoise_patch_radius"],
            stride=o["denoise_stride"],
        )
        return out, {"notes": notes}

    def with_preprocessed(self, state: Mapping[str, Any]) -> MWFModel:
        """A copy whose ``FitNotes`` record the denoising of ``state``."""
        model = copy.copy(self)
        model.fit_notes = dict(self.fit_notes)
        model.fit_notes["Denoising"] = dict(state.get("notes", {}))
        return model

    def _angle_index(self, b1: np.ndarray | None, n: int) -> np.ndarray | None:
        """Fine-grid indices of ``180 - |180 B1 - 180|`` (clipped to the grid); ``-1``: fitted.

        Voxels without a valid B1 (:func:`~bids_app.models.base.valid_b1`) get their angle
        fitted; ``None`` (all fitted) for option ``fit`` or without a B1 map.
        """
        if self.options["refocusing_angle"] != "b1":
            return None
        if b1 is None:
            self.fit_notes["RefocusingAngle"] = "fitted per voxel (no B1 map)"
            return None
        b1 = valid_b1(np.broadcast_to(np.asarray(b1, dtype=np.float64), (n,)))
        with np.errstate(invalid="ignore"):  # CPMG echoes at a and 360 - a are the same
            angle = np.clip(180.0 - np.abs(180.0 * b1 - 180.0), self.basis.angles[0], 180.0)
        index = np.abs(np.nan_to_num(angle)[:, None] - self.basis.angles[None, :]).argmin(axis=1)
        index[~np.isfinite(b1)] = -1
        return index

    def fit_details(
        self, signal: np.ndarray, b1: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Spectra, angles and residuals of (n, n_echoes) signals (no summaries).

        Returns
        -------
        spectra : (n, n_t2) ndarray
            Amplitudes on :attr:`t2` in signal units; NaN rows for unfittable voxels.
        angle : (n,) ndarray
            Refocusing angle, degrees.
        residual : (n,) ndarray
            rms residual, signal units.
        """
        y = np.asarray(signal, dtype=np.float64)[:, self.order]
        n = y.shape[0]
        spectra = np.full((n, self.t2.size), np.nan)
        angle = np.full(n, np.nan)
        rmse = np.full(n, np.nan)
        with np.errstate(all="ignore"):
            scale = np.max(np.abs(y), axis=1)
            ok = np.all(np.isfinite(y), axis=1) & np.isfinite(scale) & (np.max(y, axis=1) > 0)
            ok &= np.isfinite(y / scale[:, None]).all(axis=1)
        given = self._angle_index(b1, n)
        rows = np.flatnonzero(ok)
        if rows.size == 0:
            return spectra, angle, rmse
        ys = y[rows] / scale[rows, None]
        x, index, resid = fit_spectra(
            ys,
            self.basis,
            method=self.options["regularization"],
            chi2_factor=self.options["chi2_factor"],
            angle_index=None if given is None else given[rows],
        )
        resid = np.where(resid < _ROUNDOFF * np.sqrt(y.shape[1]), 0.0, resid)
        spectra[rows] = x * scale[rows, None]
        angle[rows] = self.basis.angles[index]
        rmse[rows] = resid / np.sqrt(y.shape[1]) * scale[rows]
        return spectra, angle, rmse

    def _fit_voxels(self, signal: np.ndarray, b1: np.ndarray | None = None) -> np.ndarray:
        spectra, angle, rmse = self.fit_details(signal, b1)
        s = summarise(
            np.nan_to_num(spectra), self.t2, self.options["mw_cutoff"], self.options["iew_cutoff"]
        )
        with np.errstate(all="ignore"):
            snr = np.max(signal, axis=1) / rmse
        out = np.stack((s["MWF"], s["IEWF"], s["T2MW"], s["T2IEW"], angle, snr, rmse), axis=-1)
        out[np.isnan(angle)] = np.nan
        return out

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """32 echoes, 10 ms spacing (a typical 3 T myelin water protocol)."""
        return {"mese": example_collection("mese", EchoTime=tuple(0.01 * np.arange(1, 33)))}

    def simulate(self, n: int, rng: np.random.Generator):
        """Two T2 grid spikes (MW 10-25 ms, IEW 60-90 ms) at angles of the fine grid.

        Returns ``(params, signal, {})``: noiseless signals lie exactly in the basis, so the
        fit recovers MWF, window T2 and angle to round-off; SNR is infinite (NaN truth).
        """
        t2 = self.t2
        mw_cands = np.flatnonzero((t2 >= 0.01) & (t2 <= 0.025) & (t2 < self.options["mw_cutoff"]))
        ie_cands = np.flatnonzero((t2 >= 0.06) & (t2 <= 0.09) & (t2 >= self.options["mw_cutoff"]))
        i_mw = rng.choice(mw_cands, n)
        i_ie = rng.choice(ie_cands, n)
        mwf = rng.uniform(0.05, 0.3, n)
        m0 = rng.uniform(500, 2000, n)
        # angles below 170 deg: nearer 180 the decay depends on (180 - angle)² only, the
        # misfit is flat and the angle is recovered to ~1 deg, not to round-off
        top = int(np.searchsorted(self.basis.angles, 170.0))
        a_idx = rng.integers(self.basis.coarse[1], top + 1, n)
        x = np.zeros((n, t2.size))
        x[np.arange(n), i_mw] = mwf * m0
        x[np.arange(n), i_ie] = (1 - mwf) * m0
        signal = np.empty((n, self.echo_time.size))
        for g in np.unique(a_idx):
            sel = a_idx == g
            signal[np.ix_(sel, self.order)] = x[sel] @ self.basis.bases[g].T
        params = np.stack(
            (
                100 * mwf,
                100 * (1 - mwf),
                t2[i_mw],
                t2[i_ie],
                self.basis.angles[a_idx],
                np.full(n, np.nan),
                np.zeros(n),
            ),
            axis=-1,
        )
        return params, signal, {}
