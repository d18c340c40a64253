"""Alembic migrations of the bulkops schema (run by ``bulkops init``)."""
