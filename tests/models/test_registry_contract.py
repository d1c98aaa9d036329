"""Every registered model, through its own test hooks (no per-name code here).

Each model provides an example acquisition (``example_collections``) and a forward simulation
(``simulate``); a noiseless simulation must be fitted back to its parameters, and the
declarations must be complete. A new model is covered by this file as soon as it registers.
"""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.models import REGISTRY
from bids_app.models.specs import OUTPUT_ENTITIES

#: noiseless data and exact (or Newton-converged) solvers: only rounding remains
RTOL = 1e-6


@pytest.mark.parametrize("name", list(REGISTRY))
def test_simulate_and_fit_recovers_truth(name):
    cls = REGISTRY[name]
    example = cls.example_collections()
    assert example is not None, f"{name}: provide example_collections()"
    model = cls.from_collections(example)
    sim = model.simulate(300, np.random.default_rng(7))
    assert sim is not None, f"{name}: provide simulate()"
    truth, signal, cov = sim
    assert truth.shape == (300, len(cls.outputs))
    fit = model.fit(signal, covariates=cov)
    defined = np.isfinite(truth)
    np.testing.assert_allclose(fit.params[defined], truth[defined], rtol=RTOL)
    assert np.all(np.isnan(fit.params[~defined]))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_declarations_complete(name):
    cls = REGISTRY[name]
    assert cls.description
    assert cls.reference
    assert cls.inputs
    assert cls.kind in ("voxelwise", "volume")
    for out in cls.outputs:
        assert out.units
        assert set(out.entities) <= set(OUTPUT_ENTITIES)
    for key, opt in cls.options_spec.items():
        assert opt.check(key, opt.default) == opt.default
    for req in cls.requires:
        assert req.model in REGISTRY or req.model == "anatomy"
        if req.model in REGISTRY:
            assert req.output in {o.name for o in REGISTRY[req.model].outputs}
