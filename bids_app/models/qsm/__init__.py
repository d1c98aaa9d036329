"""Quantitative susceptibility mapping: the ``qsm`` model, its array cores, the rim index."""

from bids_app.models.qsm import qsm  # noqa: F401  (registration side effect)
