"""Dynamic contrast-enhanced perfusion (``dce``): Ktrans, ve and vp.

Input naming (BIDS has no DCE suffix yet, bids-specification#1549): one spoiled
gradient-echo dynamic series per acquisition,
``perf/sub-<label>[_ses-<label>][_acq-<label>][_run-<label>]_dce.nii.gz`` with a JSON
sidecar giving ``FlipAngle`` (degrees), ``RepetitionTimeExcitation`` (s, the SPGR TR) and the
acquisition times of the volumes, ``VolumeTiming`` (s, may be non-uniform) or
``RepetitionTime`` (s, the interval between volumes, 0.5-60 s). Several series are told
apart by ``acq``/``run`` and selected with ``--bids-filter-file`` (``{"dce": {...}}``); list
``*_dce.*`` in ``.bidsignore`` for the BIDS validator. The pre-contrast T1 comes from the
``vfa_t1`` model (a declared requirement: it runs first and its T1 map is resampled onto
the DCE grid).

Pipeline (whole volume, batched): signal to concentration by the SPGR equation with the
pre-contrast T1 and the relaxivity (fast exchange) over an automatic (or given) baseline;
a population AIF (Parker et al. 2006 or Georgiou et al. 2018, blood to plasma with the
hematocrit) placed before the detected bolus arrival, or a measured AIF from automatically
selected arterial voxels (their maps are NaN; location in ``FitNotes``); the arterial delay
is grid-searched per voxel; then the Tofts or extended Tofts model (Murase's linear least
squares, optional batched Levenberg-Marquardt refinement), Patlak (linear) or the
two-compartment exchange model.

References
----------
Tofts PS, Brix G, Buckley DL, et al. J Magn Reson Imaging 1999;10:223-232.
Murase K. Magn Reson Med 2004;51:858-862. Patlak CS et al. J Cereb Blood Flow Metab
1983;3:1-7. Sourbron SP, Buckley DL. Magn Reson Med 2011;66:735-745 (2CXM).
Parker GJM et al. Magn Reson Med 2006;56:993-1000. Georgiou L et al. Magn Reson Med
2018;81:1955-1963.
"""

from __future__ import annotations

import logging
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
    QMRIModel,
    Requirement,
    Volume,
    register,
    sidecar_path,
)
from bids_app.models.perfusion._aif import georgiou_aif, parker_aif
from bids_app.models.perfusion._dce_2cxm import _two_cxm_linear, fit_two_cxm
from bids_app.models.perfusion._dce_fit import _finite, fit_patlak, fit_tofts, linear_delay_fit
from bids_app.models.perfusion._dce_physics import signal_to_concentration, tofts_conc
from bids_app.models.perfusion._dsc_physics import select_aif_voxels
from bids_app.models.perfusion._timing import volume_times

logger = logging.getLogger(__name__)

DCE_INPUT = InputSpec(
    "dce",
    {"datatype": "perf", "suffix": "dce"},
    metadata=(
        MetaSpec("FlipAngle", "angle", (1.0, 90.0)),
        MetaSpec("RepetitionTimeExcitation", "time", (1e-3, 0.1)),
    ),
    series=True,
)
#: the population AIF's injection is placed this long before the detected arrival (s)
AIF_LEAD = 15.0
#: arterial delays scanned after that injection time (s)
DELAY_GRID = np.arange(0.0, 30.01, 0.5)
#: voxels fitted together (memory: CHUNK x volumes x delays x 8 bytes)
CHUNK = 20_000
#: enhancement counts as arrived above this fraction of the mean curve's largest rise
ARRIVAL_FRACTION = 0.1


def _out(name: str, suffix: str, units: str, valid: tuple[float, float]) -> OutputSpec:
    return OutputSpec(name, suffix, units, desc="dce", valid_range=valid, datatype="perf")


def arrival_index(mean_signal: np.ndarray) -> int:
    """First volume whose rise above the first volume exceeds 10 % of the largest rise."""
    s = np.asarray(mean_signal, dtype=float)
    rise = s - s[0]
    if not np.isfinite(rise).all() or rise.max() <= 0:
        return 1
    return max(1, int(np.argmax(rise > ARRIVAL_FRACTION * rise.max())))


@register
class DCEModel(QMRIModel):
    """DCE perfusion: Ktrans (1/min), ve and vp (fractions) with the T1 of ``vfa_t1``.

    Parameters
    ----------
    flip_angle : float
        Degrees.
    tr : float
        SPGR repetition time (s).
    times : (n_t,) array_like
        Acquisition times of the volumes (s, increasing).
    source : str, optional
        The sidecar, named in errors.
    **options
        See :attr:`options_spec`.

    Notes
    -----
    ``fit`` also accepts a plain (..., n_t) signal array with ``covariates={'t1': (...)}``.
    Standard Tofts gives NaN vp, Patlak NaN ve; the 2CXM's Ktrans is ``E Fp`` with the
    extraction ``E = PS / (PS + Fp)``.
    """

    name = "dce"
    description = "DCE perfusion: SPGR signal to concentration, population/measured AIF, Tofts"
    reference = (
        "Tofts PS et al. J Magn Reson Imaging 1999;10:223-232; Murase K. Magn Reson Med "
        "2004;51:858-862; Parker GJM et al. Magn Reson Med 2006;56:993-1000"
    )
    kind = "volume"
    rows_input = "dce"
    inputs = (DCE_INPUT,)
    requires = (
        Requirement("t1", model="vfa_t1", output="T1", required=True, sidecar_key="T10Source"),
    )
    outputs = (
        _out("Ktrans", "ktrans", "1/min", (0.0, 5.0)),
        _out("ve", "ve", "1", (0.0, 1.0)),
        _out("vp", "vp", "1", (0.0, 1.0)),
    )
    options_spec: ClassVar[Mapping[str, Option]] = {
        "kinetic_model": Option(
            "etofts", str, ("etofts", "tofts", "patlak", "2cxm"), doc="tracer-kinetic model"
        ),
        "aif": Option(
            "parker", str, ("parker", "georgiou", "measured"), doc="arterial input function"
        ),
        "refine": Option(True, bool, doc="non-linear refinement of the linear Tofts fit"),
        "relaxivity": Option(
            4.5, float, range=(0.5, 20.0), unit="1/s/mM", doc="r1 of the contrast agent"
        ),
        "hematocrit": Option(0.42, float, range=(0.0, 0.8), doc="large-vessel hematocrit"),
        "n_baseline": Option(
            0, int, range=(0, 500), unit="volumes", doc="pre-contrast volumes (0: automatic)"
        ),
        "n_aif_voxels": Option(5, int, range=(1, 200), doc="voxels of a measured AIF"),
    }

    def __init__(self, flip_angle, tr, times, *, source=None, **options: Any):
        super().__init__(**options)
        self.flip_angle, self.tr = float(flip_angle), float(tr)
        self.times = np.asarray(times, dtype=float)
        self.source = source
        if self.times.ndim != 1 or self.times.size < 5 or np.any(np.diff(self.times) <= 0):
            raise MetadataError(
                source, "VolumeTiming", self.times.tolist()[:5], "5 or more increasing times"
            )

    @classmethod
    def from_collections(cls, collections: Mapping[str, Collection], **options) -> DCEModel:
        """The model from one DCE series.

        Raises
        ------
        MetadataError
            No usable timing (``VolumeTiming`` or ``RepetitionTime``), a timing list of the
            wrong length, or several files in one collection.
        """
        coll = collections["dce"]
        vol = coll.volumes[0]
        side = sidecar_path(vol.path)
        if len(coll.volumes) != 1:
            raise MetadataError(vol.path, "files", len(coll.volumes), "one DCE series")
        n = int(coll.n_measurements[0]) if coll.n_measurements else 0
        times = volume_times(vol.metadata, n, side)
        return cls(
            coll.params["FlipAngle"][0],
            coll.params["RepetitionTimeExcitation"][0],
            times,
            source=side,
            **options,
        )

    @classmethod
    def example_collections(cls) -> Mapping[str, Collection]:
        """3-D SPGR, flip 15°, TR 4 ms, 80 volumes every 4 s."""
        times = [4.0 * k for k in range(80)]
        meta = {"FlipAngle": 15, "RepetitionTimeExcitation": 0.004, "VolumeTiming": times}
        vol = Volume("example_dce.nii.gz", {}, meta)
        params = {"FlipAngle": (15.0,), "RepetitionTimeExcitation": (0.004,)}
        return {"dce": Collection("dce", (vol,), params, {}, {}, (80,))}

    @property
    def acquisition(self) -> dict[str, Any]:
        """Flip angle, SPGR TR and the volume times used."""
        return {
            "FlipAngle": self.flip_angle,
            "RepetitionTimeExcitation": self.tr,
            "VolumeTiming": self.times.tolist(),
            "NumberOfVolumes": int(self.times.size),
        }

    # ------------------------------------------------------------------------- fit

    def _fit_volume(self, data, *, mask, affine, t1=None, **covariates):
        sig = np.asarray(data["dce"], dtype=np.float64)
        if sig.ndim != 4 or sig.shape[-1] != self.times.size:
            raise MetadataError(
                self.source, "dim", sig.shape, f"(X, Y, Z, {self.times.size}) (VolumeTiming)"
            )
        spatial = sig.shape[:3]
        out = np.full((*spatial, len(self.outputs)), np.nan)
        if t1 is None:  # the pipeline always passes it (a required product): NaN, said so
            logger.warning("dce: no pre-contrast T1 map (covariate 't1'): maps are NaN")
            self.fit_notes["Fitted"] = "no pre-contrast T1 map"
            return out
        vox = np.flatnonzero(np.asarray(mask, bool).ravel())
        s = sig.reshape(-1, self.times.size)[vox]
        t10 = np.asarray(t1, dtype=float).ravel()[vox]
        with np.errstate(all="ignore"):
            ok = np.all(np.isfinite(s), 1) & np.all(s > 0, 1) & np.isfinite(t10) & (t10 > 0)
        if not ok.any():
            self.fit_notes["Fitted"] = "no voxel with a positive signal and a T1"
            return out
        # the volume just before the detected arrival may already hold contrast: left out
        n_base = self.options["n_baseline"] or arrival_index(s[ok].mean(axis=0)) - 1
        n_base = min(max(1, n_base), self.times.size - 2)
        conc = np.full(s.shape, np.nan)
        conc[ok] = signal_to_concentration(
            s[ok], self.flip_angle, self.tr, t10[ok], self.options["relaxivity"], n_base
        )
        with np.errstate(invalid="ignore"):
            ok &= np.all(np.isfinite(conc), axis=1) & (np.abs(conc).max(axis=1) < 1e3)
        self.fit_notes["BaselineVolumes"] = int(n_base)
        cp, arteries = self._aif(conc, ok, n_base, vox, spatial, affine)
        if cp is None:
            return out
        ok[arteries] = False
        res = self._kinetics(conc[ok], cp)
        flat = out.reshape(-1, len(self.outputs))
        for col, key in enumerate(("ktrans", "ve", "vp")):
            flat[vox[ok], col] = res[key]
        delay = res.get("delay")
        if delay is not None and np.isfinite(delay).any():
            self.fit_notes["MedianArterialDelay"] = float(np.nanmedian(delay))
        return out

    def _aif(self, conc, ok, n_base, vox, spatial, affine):
        """The plasma AIF (n_t,) and the arterial voxels (indices into ``conc``)."""
        hct, t = self.options["hematocrit"], self.times
        if self.options["aif"] == "measured":
            picked = select_aif_voxels(conc, t, ok, self.options["n_aif_voxels"])
            if picked.size == 0:
                self.fit_notes["AIF"] = {"Type": "measured", "NumberOfVoxels": 0}
                return None, picked
            cp = conc[picked].mean(axis=0) / (1.0 - hct)
            ijk = np.stack(np.unravel_index(vox[picked], spatial), axis=1)
            world = (np.asarray(affine) @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
            self.fit_notes["AIF"] = {
                "Type": "measured (automatic selection, Rempp 1994 criteria)",
                "NumberOfVoxels": int(picked.size),
                "VoxelIndices": ijk.tolist(),
                "WorldCoordinatesMm": np.round(world, 2).tolist(),
                "PlasmaCurveMm": np.round(cp, 5).tolist(),
                "Hematocrit": hct,
            }
            return cp, picked
        injection = t[n_base] - AIF_LEAD
        make = parker_aif if self.options["aif"] == "parker" else georgiou_aif
        self.fit_notes["AIF"] = {
            "Type": f"population ({self.options['aif']}), blood to plasma with the hematocrit",
            "InjectionTime": float(injection),
            "Hematocrit": hct,
            "DelayGrid": [float(DELAY_GRID[0]), float(DELAY_GRID[-1]), 0.5],
        }
        return (lambda d: make(t, delay_s=injection + d, hematocrit=hct)), np.array([], int)

    def _kinetics(self, conc: np.ndarray, cp) -> dict[str, np.ndarray]:
        """Fit the chosen model; returns ``ktrans`` (/min), ``ve``, ``vp`` and ``delay`` (s).

        ``cp`` is a measured plasma AIF (n_t,) (the core's delay search shifts it by linear
        interpolation) or a callable ``delay -> (n_t,)`` population AIF, evaluated exactly at
        every delay of :data:`DELAY_GRID`: the chosen model is fitted at each voxel's best
        delay of the linear fit (:meth:`_linear_sse`) (2CXM: and at its two neighbours,
        keeping the one of least squares).
        """
        model = self.options["kinetic_model"]
        keys = ("ktrans", "ve", "vp", "delay", "sse")
        out = {k: np.full(conc.shape[0], np.nan) for k in keys}
        out["converged"] = np.zeros(conc.shape[0], bool)
        for start in range(0, conc.shape[0], CHUNK):
            sl = slice(start, start + CHUNK)
            y = conc[sl]
            if not callable(cp):
                grid = np.arange(0.0, 10.01, 0.5)
                res = self._fit_model(model, y, cp, fit_delay=True, delay_grid=grid)
                res.setdefault("converged", np.ones(y.shape[0], bool))
                for key in out:
                    out[key][sl] = res[key]
                continue
            table = np.stack([cp(d) for d in DELAY_GRID])
            if model == "2cxm":
                sse = np.stack([self._linear_sse(y, row) for row in table])
                best = np.argmin(np.where(np.isfinite(sse), sse, np.inf), axis=0)
            else:
                best = linear_delay_fit(self.times, _finite(y)[0], table, model)[2]
            chunk = {k: np.full(y.shape[0], np.inf if k == "sse" else np.nan) for k in keys}
            chunk["converged"] = np.zeros(y.shape[0], bool)
            # the 2CXM's linear form is approximate: its neighbours are tried as well
            for step in (0, -1, 1) if model == "2cxm" else (0,):
                idx = np.clip(best + step, 0, DELAY_GRID.size - 1)
                res = self._fit_model(model, y, table[idx])
                res["delay"] = DELAY_GRID[idx]
                better = np.isfinite(res["sse"]) & (res["sse"] < chunk["sse"])
                res.setdefault("converged", np.ones(y.shape[0], bool))
                for key in chunk:
                    chunk[key][better] = res[key][better]
            for key in out:
                out[key][sl] = chunk[key]
        if model != "patlak":
            self.fit_notes["ConvergedFraction"] = float(np.mean(out["converged"]))
        self.fit_notes["KineticModel"] = model
        return out

    def _linear_sse(self, conc: np.ndarray, cp: np.ndarray) -> np.ndarray:
        """Residual of the 2CXM's linear fit (Flouri 2016), used to choose the delay."""
        return _two_cxm_linear(self.times, _finite(conc)[0], cp)[1]

    def _fit_model(self, model: str, conc, cp, **kw) -> dict[str, np.ndarray]:
        t = self.times
        if model in ("etofts", "tofts"):
            extended = model == "etofts"
            res = fit_tofts(t, conc, cp, extended=extended, refine=self.options["refine"], **kw)
            if not extended:
                res["vp"] = np.full(conc.shape[0], np.nan)
            return res
        if model == "patlak":
            res = fit_patlak(t, conc, cp, **kw)
            res["ve"] = np.full(conc.shape[0], np.nan)
            return res
        res = fit_two_cxm(t, conc, cp, **kw)
        fp = res["fp"] / 100.0  # /min
        with np.errstate(divide="ignore", invalid="ignore"):
            res["ktrans"] = fp * res["ps"] / (fp + res["ps"])
        return res

    # ----------------------------------------------------------------- test hooks

    def simulate(self, n: int, rng: np.random.Generator):
        """Extended Tofts tissue on the Parker AIF, with the T10 covariate.

        Ktrans 0.01-0.2 /min, ve 0.1-0.5, vp 0.01-0.08 (0 for ``tofts``), T10 0.8-1.6 s;
        the AIF is injected at 30 s + a delay of 0-8 s in 0.5 s steps; SPGR signal with the
        model's flip angle, TR and relaxivity. Returns ``covariates = {'t1': T10}``.
        """
        t, hct = self.times, self.options["hematocrit"]
        delay = rng.integers(0, 17, n) * 0.5
        cp = np.stack([parker_aif(t, delay_s=30.0 + d, hematocrit=hct) for d in delay])
        kt, ve = rng.uniform(0.01, 0.2, n), rng.uniform(0.1, 0.5, n)
        vp = rng.uniform(0.01, 0.08, n) * (self.options["kinetic_model"] != "tofts")
        conc = tofts_conc(t, cp, kt, ve, vp)
        t10 = rng.uniform(0.8, 1.6, n)
        r1 = 1.0 / t10[:, None] + self.options["relaxivity"] * conc
        e, a = np.exp(-self.tr * r1), np.deg2rad(self.flip_angle)
        m0 = rng.uniform(500.0, 2000.0, n)[:, None]
        sig = m0 * np.sin(a) * (1 - e) / (1 - np.cos(a) * e)
        truth = np.stack([kt, ve, vp], axis=1)
        if self.options["kinetic_model"] == "tofts":
            truth[:, 2] = np.nan
        return truth, sig, {"t1": t10}
