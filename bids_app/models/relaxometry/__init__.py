"""Relaxometry: T1, T2 and T2*/R2* maps.

:mod:`bids_app.models.relaxometry.classic` holds VFA T1, MEGRE R2* and mono-exponential MESE
T2, with their fits in :mod:`bids_app.models.relaxometry._fits`. Each further model of the
family is one module here, imported below (importing registers it).
"""

from bids_app.models.relaxometry.classic import (
    MEGRER2starModel,
    MESET2Model,
    VFAT1Model,
    despot1_linear,
    despot1_nonlinear,
    monoexp_loglinear,
    monoexp_nonlinear,
    monoexp_signal,
    spgr_signal,
)

__all__ = [
    "MEGRER2starModel",
    "MESET2Model",
    "VFAT1Model",
    "despot1_linear",
    "despot1_nonlinear",
    "monoexp_loglinear",
    "monoexp_nonlinear",
    "monoexp_signal",
    "spgr_signal",
]
