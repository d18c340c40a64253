"""bulkops configuration: one settings class, read from ``BULKOPS_*`` variables."""

from config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
