"""The ``bulkops`` command line."""
