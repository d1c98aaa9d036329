"""Diffusion MRI models."""
