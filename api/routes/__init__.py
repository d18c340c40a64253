"""One router module per resource: ``bulk`` (operations), ``health``."""
