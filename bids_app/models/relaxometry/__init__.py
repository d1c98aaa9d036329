"""Relaxometry: T1, T2 and T2*/R2* maps.

:mod:`bids_app.models.relaxometry.classic` holds VFA T1 and MEGRE R2*, :mod:`.mese` the MESE
T2 (mono-exponential or EPG), with their fits in :mod:`bids_app.models.relaxometry._fits`.
Each further model of the family is one module here, imported below (importing registers
it).
"""

from bids_app.models.relaxometry.classic import (
    MEGRER2starModel,
    VFAT1Model,
    despot1_linear,
    despot1_nonlinear,
    monoexp_loglinear,
    monoexp_nonlinear,
    monoexp_signal,
    spgr_signal,
)
from bids_app.models.relaxometry.irt1 import IRT1Model  # noqa: F401
from bids_app.models.relaxometry.mese import MESET2Model
from bids_app.models.relaxometry.mp2rage import MP2RAGEMER2starModel, MP2RAGEModel  # noqa: F401
from bids_app.models.relaxometry.mpm import MPMModel

__all__ = [
    "MEGRER2starModel",
    "MESET2Model",
    "MPMModel",
    "VFAT1Model",
    "despot1_linear",
    "despot1_nonlinear",
    "monoexp_loglinear",
    "monoexp_nonlinear",
    "monoexp_signal",
    "spgr_signal",
]
