"""Database: SQLAlchemy 2 models, engines and the statements the operations run."""

from videolib.db.engine import get_engine, session_scope
from videolib.db.models import VIDEO_STATUSES, Base, Video, VideoChunk

__all__ = ["Base", "Video", "VideoChunk", "VIDEO_STATUSES", "get_engine", "session_scope"]
