"""Prefect flows, one per file; the shared operation scaffold is ``flows/operation.py``."""
