"""qMRI models: declared inputs and outputs, pure array fits, and the registry.

Importing this package imports every model module, which registers its models.
"""

from bids_app.models import b1, mt, qsm, relaxometry  # noqa: F401  (registration side effect)
from bids_app.models.base import REGISTRY, get_model, model_names
from bids_app.models.diffusion import kurtosis, noddi, tensor  # noqa: F401
from bids_app.models.mwf import mwf  # noqa: F401
from bids_app.models.perfusion import asl, dce, dsc  # noqa: F401

__all__ = ["REGISTRY", "get_model", "model_names"]
