"""The series writers of ``msqmri-synth --series`` and the raw files each one adds.

Each writer takes a :class:`~bids_app.synth.scene.Scene` and writes its images beside the
3-D protocol (CONTRIBUTING, point 8: how to add one). :data:`DEFAULT_SERIES` are written
unless ``--series`` names others.
"""

from __future__ import annotations

from bids_app.synth import (
    asl_series,
    dce_series,
    dwi_series,
    mpm_series,
    mwf_series,
    qsm_series,
)
from bids_app.synth.asl_single_series import write_asl_single
from bids_app.synth.b1_series import EPI_FLIPS as _B1_EPI_FLIPS
from bids_app.synth.b1_series import write_b1_epi, write_b1_srge, write_b1_tfl
from bids_app.synth.gd_series import FILES as _GD_FILES
from bids_app.synth.gd_series import write_gd
from bids_app.synth.irt1_series import INVERSION_TIMES as _IRT1_TIS
from bids_app.synth.irt1_series import write_irt1
from bids_app.synth.mp2rage_series import FILES_ME, write_mp2rage, write_mp2rageme

__all__ = ["DEFAULT_SERIES", "SERIES_FILES", "SERIES_WRITERS"]

#: the 4-D series writers (:mod:`bids_app.synth.scene`), run in this order
SERIES_WRITERS = {
    "dwi": dwi_series.write_dwi,
    "qsm": qsm_series.write_phase,
    "asl": asl_series.write_asl,
    "dce": dce_series.write_dce,
    "asl1": write_asl_single,
    "mpm": mpm_series.write_mpm,
    "mwf": mwf_series.write_mese_mwf,
    "mp2rage": write_mp2rage,
    "mp2rageme": write_mp2rageme,
    "irt1": write_irt1,
    "b1tfl": write_b1_tfl,
    "b1epi": write_b1_epi,
    "b1srge": write_b1_srge,
    "gd": write_gd,
}
#: the raw images each series writer adds: (datatype, name after the subject prefix)
SERIES_FILES = {
    "dwi": (("dwi", "dwi.nii.gz"),),
    "qsm": tuple(("anat", f"echo-{k}_part-phase_MEGRE.nii.gz") for k in range(1, 7)),
    "asl": (("perf", "asl.nii.gz"), ("perf", "m0scan.nii.gz")),
    "dce": (("perf", "dce.nii.gz"),),
    "asl1": (("perf", "acq-single_asl.nii.gz"),),
    "mpm": mpm_series.file_names(),
    "mwf": mwf_series.FILES,
    "mp2rage": tuple(
        ("anat", f"inv-{k}_part-{p}_MP2RAGE.nii.gz") for k in (1, 2) for p in ("mag", "phase")
    ),
    "mp2rageme": FILES_ME,
    "irt1": tuple(("anat", f"inv-{k}_IRT1.nii.gz") for k in range(1, len(_IRT1_TIS) + 1)),
    "b1tfl": (("fmap", "acq-anat_TB1TFL.nii.gz"), ("fmap", "acq-famp_TB1TFL.nii.gz")),
    "b1epi": tuple(
        ("fmap", f"echo-{e}_flip-{i}_TB1EPI.nii.gz")
        for i in range(1, len(_B1_EPI_FLIPS) + 1)
        for e in (1, 2)
    ),
    "b1srge": tuple(("fmap", f"flip-{k}_inv-{k}_TB1SRGE.nii.gz") for k in (1, 2)),
    "gd": _GD_FILES,
}
DEFAULT_SERIES = ("dwi", "qsm", "asl", "asl1", "dce", "irt1", "mp2rage", "mpm")
