"""BIDS layer: layouts, queries, metadata checks, validation and derivative writing."""
