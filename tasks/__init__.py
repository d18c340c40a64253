"""Prefect tasks: thin wrappers over ``videolib`` functions (retries, logging, stop checks)."""
