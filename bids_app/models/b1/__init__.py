"""B1+ (transmit field) maps: one relative B1 map from every BIDS B1 map type.

:mod:`bids_app.models.b1.maps` holds the model, :mod:`bids_app.models.b1._physics` the pure
array conversions (DAM, AFI, unit scaling, masked smoothing).
"""

from bids_app.models.b1.maps import (
    B1_RANGE,
    B1Model,
    afi_b1,
    b1_scale_from_values,
    dam_b1,
    scale_from_units,
    smooth_fill_b1,
)

__all__ = [
    "B1_RANGE",
    "B1Model",
    "afi_b1",
    "b1_scale_from_values",
    "dam_b1",
    "scale_from_units",
    "smooth_fill_b1",
]
