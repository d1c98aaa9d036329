"""Fixtures of the reliability suite: a tiny synthetic dataset, copied and broken per test.

``tiny_bids`` is written once per session (``msqmri-synth --size tiny``, 2 subjects: sub-01
a patient with a lesion mask in ``derivatives/lesions``, sub-02 a control). Each test takes
``dataset`` (a private copy), breaks it in one way with ``edit_json`` / ``edit_nifti`` and
runs the command line through ``msqmri``, which keeps the runs short (one subject and one
model unless a test asks for more) and returns the exit code with what went to stderr.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.cli.run import main
from tests.conftest import tree_digest


@dataclass
class Result:
    """Outcome of one ``msqmri`` run."""

    code: int
    err: str
    out: Path

    @property
    def errors(self) -> list[str]:
        """The ERROR lines written to stderr."""
        return [line for line in self.err.splitlines() if " ERROR: " in line]

    def one_error(self, *fragments: str) -> str:
        """The single ERROR line, after checking it holds every fragment and no traceback."""
        assert "Traceback" not in self.err, self.err
        assert len(self.errors) == 1, self.err
        line = self.errors[0]
        for fragment in fragments:
            assert fragment in line, f"{fragment!r} not in {line!r}"
        return line


@pytest.fixture(scope="session")
def tiny_bids(tmp_path_factory) -> Path:
    """``msqmri-synth --size tiny --subjects 2 --seed 1`` (read only: tests copy it)."""
    from bids_app.synth.cli import main as synth

    root = tmp_path_factory.mktemp("tiny") / "bids"
    assert synth([str(root), "--size", "tiny", "--subjects", "2", "--seed", "1", "--series"]) == 0
    return root


@pytest.fixture
def dataset(tiny_bids, tmp_path) -> Path:
    """A private copy of ``tiny_bids`` that the test may break."""
    return Path(shutil.copytree(tiny_bids, tmp_path / "bids", symlinks=True))


@pytest.fixture
def msqmri(tmp_path, capsys) -> Callable[..., Result]:
    """Run ``msqmri BIDS OUT participant`` and return a :class:`Result`.

    Keywords: ``subjects`` (default ``("01",)``, empty for all), ``models`` (default
    ``("vfa_t1",)``, empty for all), ``validate`` (default False: ``--skip-bids-validation``),
    ``lesions`` (add ``--derivatives lesions=BIDS/derivatives/lesions``), ``out``.
    Other positional arguments are appended to the command line.
    """

    def run(
        bids: Path,
        *extra: str,
        subjects=("01",),
        models=("vfa_t1",),
        validate: bool = False,
        lesions: bool = False,
        out: Path | None = None,
    ) -> Result:
        out = out or tmp_path / "out"
        argv = [str(bids), str(out), "participant", "--no-reports"]
        argv += [] if validate else ["--skip-bids-validation"]
        argv += ["--participant-label", *subjects] if subjects else []
        argv += ["--models", *models] if models else []
        if lesions:
            argv += ["--derivatives", f"lesions={bids / 'derivatives' / 'lesions'}"]
        capsys.readouterr()
        code = main([*argv, *extra])
        return Result(code, capsys.readouterr().err, out)

    return run


def _edit_json(path: Path, *, drop: tuple[str, ...] = (), **changes) -> None:
    meta = json.loads(path.read_text())
    for key in drop:
        meta.pop(key, None)
    meta.update(changes)
    path.write_text(json.dumps(meta, indent=2))


@pytest.fixture
def edit_json() -> Callable[..., None]:
    """``edit_json(path, drop=("Key",), Other=value)`` rewrites a sidecar."""
    return _edit_json


def _edit_nifti(path: Path, change: Callable[[np.ndarray], np.ndarray], affine=None) -> None:
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    new = np.asarray(change(data.copy()))
    # float32 (not the source's int16 with scaling): NaN and Inf survive the write
    nib.save(nib.Nifti1Image(new, img.affine if affine is None else affine), path)


@pytest.fixture
def edit_nifti() -> Callable[..., None]:
    """``edit_nifti(path, change, affine=None)`` rewrites an image with ``change(data)``."""
    return _edit_nifti


@pytest.fixture
def digest() -> Callable[[Path], str]:
    """:func:`tree_digest`, to check that a run left a folder untouched."""
    return tree_digest


def load(path: Path) -> np.ndarray:
    """Image data as float64."""
    return np.asarray(nib.load(path).dataobj, dtype=float)


@pytest.fixture
def read_image() -> Callable[[Path], np.ndarray]:
    """:func:`load`: image data as float64."""
    return load


@pytest.fixture(scope="session")
def clean_run(tiny_bids, tmp_path_factory) -> Path:
    """Outputs of ``--participant-label 01 --models vfa_t1`` (with B1) on the intact data."""
    out = tmp_path_factory.mktemp("clean") / "out"
    argv = [str(tiny_bids), str(out), "participant", "--no-reports", "--skip-bids-validation"]
    assert main([*argv, "--participant-label", "01", "--models", "vfa_t1"]) == 0
    return out
