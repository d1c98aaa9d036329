"""Every registered model, through its own test hooks (no per-name code here).

Each model provides an example acquisition (``example_collections``) and a forward simulation
(``simulate``); a noiseless simulation must be fitted back to its parameters, and the
declarations must be complete. A new model is covered by this file as soon as it registers.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

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
    rtol = max(RTOL, cls.contract_rtol)
    atol = cls.contract_atol
    np.testing.assert_allclose(fit.params[defined], truth[defined], rtol=rtol, atol=atol)
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


_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -1.0, 1e-300, 1e300]),
)


@pytest.mark.parametrize("name", list(REGISTRY))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_signal_gives_nan_or_valid_maps(name, data):
    """Arbitrary signals (zero, negative, NaN, huge) never raise and never leave a map's range."""
    model = REGISTRY[name].from_collections(REGISTRY[name].example_collections())
    n_meas = model.simulate(1, np.random.default_rng(0))[1].shape[1]
    signal = data.draw(arrays(np.float64, (5, n_meas), elements=_VALUES))
    cov = {}
    if model.uses_b1 and data.draw(st.booleans()):
        cov["b1"] = data.draw(arrays(np.float64, (5,), elements=_VALUES))
    fit = model.fit(signal, covariates=cov)
    for spec in model.outputs:
        values = fit.maps()[spec.name]
        finite = values[np.isfinite(values)]
        if spec.valid_range is not None:
            assert np.all((finite >= spec.valid_range[0]) & (finite <= spec.valid_range[1]))
