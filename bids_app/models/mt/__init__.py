"""Magnetisation transfer: MTR and MTsat.

:mod:`bids_app.models.mt.models` holds the models, :mod:`bids_app.models.mt._physics` the
signal equations and :mod:`bids_app.models.mt._roles` the MT-on/off, PD/T1-weighted roles.
"""

from bids_app.models.mt.models import MTRModel, MTsatModel

__all__ = ["MTRModel", "MTsatModel"]
