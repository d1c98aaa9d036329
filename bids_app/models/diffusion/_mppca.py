"""Re-export of :mod:`bids_app.models._mppca` (the batched MP-PCA, shared by DWI and ``mwf``)."""

from bids_app.models._mppca import _one_blas_thread, mp_classifier, mppca

__all__ = ["_one_blas_thread", "mp_classifier", "mppca"]
