"""msqmri: quantitative MRI of multiple sclerosis as a BIDS-App."""

__version__ = "0.1.0"
