"""Myelin water imaging: EPG decay bases, batched NNLS, regularisation and the ``mwf`` model.

:func:`epg_cpmg_decay` (the EPG kernel) and :func:`nnls_gram` (the batched solver) are public
for reuse by other EPG-based models. :class:`MWFModel` is not registered yet (see its module).
"""

from bids_app.models.mwf._epg import epg_cpmg_decay
from bids_app.models.mwf._nnls import nnls_gram, nnls_objective
from bids_app.models.mwf._regularise import regularised_nnls
from bids_app.models.mwf.mwf import MWFModel

__all__ = ["MWFModel", "epg_cpmg_decay", "nnls_gram", "nnls_objective", "regularised_nnls"]
