"""Synthetic multiple-sclerosis qMRI datasets with known ground truth (``msqmri-synth``).

The anatomy (GM/WM/CSF labels of the ICBM 2009a template, via the OSIPI ASL DRO) ships
with the package; lesions, tissue values, the B1+ field and every image are simulated
with forward models written independently of :mod:`bids_app.models`.

Examples
--------
>>> from bids_app.synth import make_plan
>>> make_plan(subjects=2, size="tiny").grid_shape
(39, 48, 41)
"""

from __future__ import annotations

from bids_app.synth.anatomy import SIZES, Anatomy, make_anatomy
from bids_app.synth.dataset import SynthPlan, make_plan, write_dataset

__all__ = ["SIZES", "Anatomy", "SynthPlan", "make_anatomy", "make_plan", "write_dataset"]
