"""Media plumbing: nginx configuration, FFmpeg command building and supervision, HLS paths."""
