"""Diffusion tensor (``dti``) and free-water tensor (``fwdti``) models through dipy.

Wrappers, not re-implementations: ``dipy.reconst.dti.TensorModel`` (Basser et al. 1994;
WLS default, NLLS, RESTORE of Chang et al. 2005) and ``dipy.reconst.fwdti.
FreeWaterTensorModel`` (Hoy et al. 2014). Diffusivities in mm²/s (b-values in s/mm²).

References
----------
Basser PJ, Mattiello J, LeBihan D. MR diffusion tensor spectroscopy and imaging. Biophys J
1994;66:259-267. Chang LC, Jones DK, Pierpaoli C. RESTORE: robust estimation of tensors by
outlier rejection. Magn Reson Med 2005;53:1088-1095. Hoy AR, Koay CG, Kecskemeti SR,
Alexander AL. Optimization of a free water elimination two-compartment model for diffusion
tensor imaging. NeuroImage 2014;103:323-333.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from bids_app.models.base import Option, OutputSpec, register
from bids_app.models.diffusion._inputs import B0_THRESHOLD, PREPROC_OPTIONS, DWIModel

logger = logging.getLogger(__name__)

#: plausible diffusivities (mm²/s): free water at 37 °C is 3.0e-3
DIFFUSIVITY_RANGE = (0.0, 0.01)
#: free water diffusivity of the fwDTI model (dipy's default), mm²/s
D_FREE_WATER = 3.0e-3


def dwimap(name: str, model: str, param: str, units: str, valid_range=None) -> OutputSpec:
    """A BEP016 ``<source>_model-<model>_param-<param>_dwimap`` output in ``dwi/``."""
    return OutputSpec(
        name,
        "dwimap",
        units,
        valid_range=valid_range,
        entities={"model": model, "param": param},
        datatype="dwi",
    )


def _simulated_tensors(n: int, rng: np.random.Generator):
    """Random WM/GM-like tensors: eigenvalues (n, 3) descending and rotations (n, 3, 3)."""
    from bids_app.synth.dwi import tensor_from_eigen

    l1 = rng.uniform(1.0e-3, 2.0e-3, n)
    ratio = rng.uniform(0.2, 0.8, n)
    evals = np.stack([l1, l1 * ratio, l1 * ratio * rng.uniform(0.7, 1.0, n)], 1)
    q, _ = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    return evals, tensor_from_eigen(evals, q)


@register
class DTI(DWIModel):
    """Diffusion tensor: FA, MD, AD, RD and S0 (dipy ``TensorModel``).

    Parameters
    ----------
    bvals, bvecs : see :class:`~bids_app.models.diffusion._inputs.DWIModel`
    fit_method : {'WLS', 'NLLS', 'RESTORE'}
        RESTORE needs the noise s.d.: the MP-PCA estimate of the preprocessing, else the
        median ``dipy.denoise.noise_estimate.estimate_sigma`` of the b=0 volumes.
    """

    name = "dti"
    description = "diffusion tensor (dipy): FA, MD, AD, RD, S0"
    reference = (
        "Basser PJ et al. Biophys J 1994;66:259-267 (dipy.reconst.dti); "
        "Chang LC et al. Magn Reson Med 2005;53:1088-1095 (RESTORE)"
    )
    outputs = (
        dwimap("FA", "tensor", "fa", "1", (0.0, 1.0)),
        dwimap("MD", "tensor", "md", "mm^2/s", DIFFUSIVITY_RANGE),
        dwimap("AD", "tensor", "ad", "mm^2/s", DIFFUSIVITY_RANGE),
        dwimap("RD", "tensor", "rd", "mm^2/s", DIFFUSIVITY_RANGE),
        dwimap("S0", "tensor", "s0", "arbitrary", (0.0, np.inf)),
    )
    options_spec: ClassVar[Mapping[str, Option]] = {
        "fit_method": Option(
            "WLS", str, ("WLS", "NLLS", "RESTORE"), doc="dipy TensorModel fit method"
        ),
        **PREPROC_OPTIONS,
    }
    noise_sigma: float | None = None

    def _dipy_model(self):
        from dipy.reconst.dti import TensorModel

        kwargs: dict[str, Any] = {}
        if self.options["fit_method"] == "RESTORE":
            kwargs["sigma"] = self.noise_sigma
        return TensorModel(
            self.gtab, fit_method=self.options["fit_method"], return_S0_hat=True, **kwargs
        )

    def _fit_volume(self, data, *, mask, affine, **covariates):
        if self.options["fit_method"] == "RESTORE" and not self.noise_sigma:
            from dipy.denoise.noise_estimate import estimate_sigma

            arr = next(iter(data.values()))
            b0 = np.asarray(arr[..., self.bvals <= B0_THRESHOLD], float)
            sig = np.asarray(estimate_sigma(b0))
            self.noise_sigma = float(np.median(sig[np.isfinite(sig)])) if sig.size else 1.0
            self.fit_notes["RestoreSigma"] = {"Value": self.noise_sigma, "From": "b=0 volumes"}
        return super()._fit_volume(data, mask=mask, affine=affine, **covariates)

    def _fit_signal(self, dipy_model, signal):
        fit = dipy_model.fit(signal)
        return np.stack([fit.fa, fit.md, fit.ad, fit.rd, fit.S0_hat], axis=-1)

    def simulate(self, n: int, rng: np.random.Generator):
        """Single tensors with FA ~0.2-0.8, MD ~0.6-1.5e-3 mm²/s, S0 ~500-1500."""
        from bids_app.synth.dwi import mixture_signal, tensor_metrics

        evals, tensors = _simulated_tensors(n, rng)
        s0 = rng.uniform(500, 1500, n)
        signal = mixture_signal(s0, np.ones((n, 1)), tensors[:, None], self.bvals, self.bvecs)
        m = tensor_metrics(evals)
        truth = np.stack([m["FA"], m["MD"], m["AD"], m["RD"], s0], axis=1)
        return truth, signal, {}


@register
class FreeWaterDTI(DWIModel):
    """Free-water elimination DTI: free-water fraction and tissue FA, MD (dipy ``fwdti``).

    Needs two or more non-zero shells.
    """

    name = "fwdti"
    description = "free-water DTI (dipy): free-water fraction, corrected FA and MD"
    reference = "Hoy AR et al. NeuroImage 2014;103:323-333 (dipy.reconst.fwdti)"
    min_shells = 2
    outputs = (
        dwimap("FW", "fwdti", "fw", "1", (0.0, 1.0)),
        dwimap("FA", "fwdti", "fa", "1", (0.0, 1.0)),
        dwimap("MD", "fwdti", "md", "mm^2/s", DIFFUSIVITY_RANGE),
    )
    options_spec: ClassVar[Mapping[str, Option]] = {
        "fit_method": Option("NLS", str, ("NLS", "WLS"), doc="dipy FreeWaterTensorModel fit"),
        **PREPROC_OPTIONS,
    }

    def _dipy_model(self):
        from dipy.reconst.fwdti import FreeWaterTensorModel

        return FreeWaterTensorModel(self.gtab, fit_method=self.options["fit_method"])

    def _fit_signal(self, dipy_model, signal):
        fit = dipy_model.fit(signal)
        return np.stack([fit.f, fit.fa, fit.md], axis=-1)

    def simulate(self, n: int, rng: np.random.Generator):
        """A tissue tensor plus free water (3.0e-3 mm²/s) with fraction 0.05-0.5."""
        from bids_app.synth.dwi import mixture_signal, tensor_metrics

        evals, tensors = _simulated_tensors(n, rng)
        f = rng.uniform(0.05, 0.5, n)
        both = np.stack([tensors, np.broadcast_to(D_FREE_WATER * np.eye(3), tensors.shape)], 1)
        s0 = rng.uniform(500, 1500, n)
        signal = mixture_signal(s0, np.stack([1 - f, f], 1), both, self.bvals, self.bvecs)
        m = tensor_metrics(evals)
        return np.stack([f, m["FA"], m["MD"]], axis=1), signal, {}
