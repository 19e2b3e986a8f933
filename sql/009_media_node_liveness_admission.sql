-- Issue 19. A stream whose media node died is "offline": not live, not ended, disconnected_at
-- set. Its encoder may resume it on any media node within the grace period; after that the
-- sweeper ends it. Few rows: the index serves the per-user resume lookup and the sweeper.
CREATE INDEX streams_offline_idx ON streams (user_id)
    WHERE NOT is_live AND ended_at IS NULL AND disconnected_at IS NOT NULL;

-- Transcoder admission: the address range (/24, /64) a go-live was published from, and
-- whether it got a transcoded ladder, for the per-range limits (go-lives per hour, ladders at
-- once) counted in PostgreSQL so that every media node sees the same numbers.
ALTER TABLE streams
    ADD COLUMN publish_range text,
    ADD COLUMN transcoded    boolean NOT NULL DEFAULT false;
CREATE INDEX streams_publish_range_idx ON streams (publish_range, started_at)
    WHERE publish_range IS NOT NULL;
