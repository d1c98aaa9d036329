"""Shared fixtures: the synthetic datasets and the end-to-end run (session-scoped)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"

#: Fixtures that build a BIDS dataset on disk and run the app on it: a test that uses
#: one is an ``integration`` test (see docs/testing.md), excluded from the fast loop.
INTEGRATION_FIXTURES = frozenset(
    {"small_bids", "small_run", "tiny_bids", "dataset", "clean_run", "msqmri", "vfa_ds"}
    | {"_tiny", "subject", "run_cli"}
)


def pytest_collection_modifyitems(config, items):
    """Mark every test that runs the app on a dataset ``integration`` (unless ``slow``)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & INTEGRATION_FIXTURES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.integration)


def tree_digest(root: Path) -> str:
    """SHA-256 over the relative paths and bytes of every file below ``root``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_symlink():
            h.update(str(p.readlink()).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def small_bids(tmp_path_factory) -> Path:
    """``msqmri-synth --size small`` with 3 subjects (2 patients, 1 control), seed 11."""
    from bids_app.synth.cli import main as synth

    root = tmp_path_factory.mktemp("small") / "bids"
    assert synth([str(root), "--size", "small", "--subjects", "3", "--seed", "11"]) == 0
    return root


#: every model with synthetic data except ``fwdti`` (dipy's NLS, ~430 voxels/s: 9 min per
#: subject here) and ``dki`` (dipy's WLS, ~3.5 min per subject here); both are tested against
#: dipy's own fit in tests/models/test_diffusion.py
E2E_MODELS = [
    "b1", "vfa_t1", "mese_t2", "megre_r2star", "mtr", "mtsat", "qsm", "dti", "noddi", "asl_cbf",
    "dce", "irt1", "mp2rage", "mpm", "rb1cor", "mwf",
]  # fmt: skip
#: DWI motion correction off (64 registrations, ~4 min per subject on 2 cores; its accuracy
#: on a known rotation is tested in tests/models/test_diffusion.py); the rest as defaults
E2E_CONFIG = "".join(f'[{m}]\nmotion = "none"\n' for m in ("dti", "noddi"))


@pytest.fixture(scope="session")
def small_run(small_bids, tmp_path_factory):
    """Participant + group on ``small_bids`` with the lesion derivatives; returns paths."""
    from bids_app.cli.run import main

    out = tmp_path_factory.mktemp("small_out") / "out"
    config = out.parent / "e2e.toml"
    config.write_text(E2E_CONFIG)
    before = tree_digest(small_bids)
    code = main(
        [
            str(small_bids),
            str(out),
            "participant",
            "group",
            "--derivatives",
            f"lesions={small_bids / 'derivatives' / 'lesions'}",
            "--config",
            str(config),
            "--models",
            *E2E_MODELS,
        ]
    )
    return {"bids": small_bids, "out": out, "code": code, "digest_before": before}
