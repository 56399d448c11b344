"""Reproducible experiments built on the workbench (run as ``python -m experiments.<name>``)."""
