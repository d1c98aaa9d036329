"""Fixtures for models written outside the package, as a newcomer would.

``subject`` is a private copy of a tiny synthetic subject (FLAIR, T1w, VFA, MESE, MEGRE, B1,
and a lesion mask in ``derivatives/lesions``) to which a test adds its own files;
``run_cli`` runs ``msqmri`` on it through the command line and returns the exit code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.cli.run import main


@pytest.fixture(scope="session")
def _tiny(tmp_path_factory) -> Path:
    from bids_app.synth.cli import main as synth

    root = tmp_path_factory.mktemp("contract") / "bids"
    assert synth([str(root), "--size", "tiny", "--subjects", "1", "--seed", "3", "--series"]) == 0
    return root


@pytest.fixture
def subject(_tiny, tmp_path) -> Path:
    """A private copy of the tiny dataset; add files under ``sub-01/``."""
    return Path(shutil.copytree(_tiny, tmp_path / "bids"))


@pytest.fixture
def reference(subject) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(shape, affine, brain)`` of the subject's FLAIR (brain: FLAIR > 0)."""
    img = nib.load(subject / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    return img.shape, img.affine, data > 0.2 * data.max()


@pytest.fixture
def run_cli(subject, tmp_path):
    """``run_cli(*models) -> (exit code, OUTPUT_DIR)``, lesions from the derivatives."""

    def run(*models: str, extra: tuple[str, ...] = ()) -> tuple[int, Path]:
        out = tmp_path / "out"
        argv = [str(subject), str(out), "participant", "--skip-bids-validation", "--no-reports"]
        argv += ["--models", *models, "--derivatives", f"lesions={subject}/derivatives/lesions"]
        return main([*argv, *extra]), out

    return run


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write a float32 NIfTI (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)
    return path


def region_rows(out: Path, map_key: str) -> pd.DataFrame:
    """The rows of ``map_key`` in sub-01's region table."""
    table = pd.read_csv(out / "sub-01" / "sub-01_desc-regions_stats.tsv", sep="\t")
    return table[table["map"] == map_key].set_index("region")
