-- Ingest bookkeeping: which media node ingests a live stream, when nginx-rtmp last reported
-- it (on_update), and when its publisher went away (reconnect grace period).
ALTER TABLE streams
    ADD COLUMN media_node      text,
    ADD COLUMN last_seen_at    timestamptz,
    ADD COLUMN disconnected_at timestamptz;

CREATE INDEX streams_live_liveness_idx ON streams (last_seen_at) WHERE is_live;

-- Per-channel choice of an extra "source" rendition copied without transcoding.
ALTER TABLE stream_settings ADD COLUMN source_passthrough boolean NOT NULL DEFAULT false;
