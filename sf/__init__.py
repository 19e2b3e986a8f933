"""SF: backend of a live streaming platform (RTMP ingest, HLS ladder, REST + WebSocket API)."""

__version__ = "0.1.0"
