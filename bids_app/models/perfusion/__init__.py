"""Perfusion MRI (DCE and DSC): pure, batched array cores."""
