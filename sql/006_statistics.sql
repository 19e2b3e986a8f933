-- Stream statistics: the viewer total of every live stream sampled about every
-- SF_STATS_SAMPLE_SECONDS (the owner's timeline), and per-stream aggregates updated in the
-- same statement as each batch of samples. Live totals themselves stay in Redis; the streams'
-- viewers_count (and through the trigger of 002, categories.viewers_count) follows them.

CREATE TABLE stream_viewer_samples (
    stream_id bigint NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    ts        timestamptz NOT NULL,
    viewers   integer NOT NULL CHECK (viewers >= 0),
    PRIMARY KEY (stream_id, ts)   -- also the timeline's index (one stream, by time)
);

CREATE TABLE stream_statistics (
    stream_id          bigint PRIMARY KEY REFERENCES streams (id) ON DELETE CASCADE,
    peak_viewers       integer NOT NULL DEFAULT 0 CHECK (peak_viewers >= 0),
    viewers_sum        bigint NOT NULL DEFAULT 0 CHECK (viewers_sum >= 0),     -- over samples
    samples_count      integer NOT NULL DEFAULT 0 CHECK (samples_count >= 0),  -- average = sum / count
    watch_time_seconds double precision NOT NULL DEFAULT 0 CHECK (watch_time_seconds >= 0),
    unique_viewers     integer NOT NULL DEFAULT 0 CHECK (unique_viewers >= 0), -- HyperLogLog estimate
    followers_gained   integer NOT NULL DEFAULT 0 CHECK (followers_gained >= 0),
    last_sample_at     timestamptz,
    last_viewers       integer NOT NULL DEFAULT 0 CHECK (last_viewers >= 0),
    -- Set once the stream has ended and its last interval and unique count were taken in.
    closed             boolean NOT NULL DEFAULT false
);
-- The sampler's closing pass looks only at rows not closed yet (live or just ended streams).
CREATE INDEX stream_statistics_open_idx ON stream_statistics (stream_id) WHERE NOT closed;
