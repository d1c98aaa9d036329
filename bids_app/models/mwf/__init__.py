"""Myelin water imaging: EPG decay bases, batched NNLS, regularisation and the ``mwf`` model.

:func:`epg_cpmg_decay` (the EPG kernel), :func:`nnls_gram` (the batched solver) and
:class:`GramStack` (Gram matrices prepared for it) are public for reuse by other EPG-based
models. :class:`MWFModel` is the registered ``mwf`` model.
"""

from bids_app.models._epg import epg_cpmg_decay
from bids_app.models.mwf._nnls import GramStack, nnls_gram, nnls_objective
from bids_app.models.mwf._regularise import regularised_nnls
from bids_app.models.mwf.mwf import MWFModel

__all__ = [
    "GramStack",
    "MWFModel",
    "epg_cpmg_decay",
    "nnls_gram",
    "nnls_objective",
    "regularised_nnls",
]
