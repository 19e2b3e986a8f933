-- Stream keys (encrypted, with an HMAC digest for lookup), default stream settings,
-- title search, list indexes, and category viewer totals maintained by trigger.

CREATE TABLE stream_keys (
    user_id    bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    key_id     text NOT NULL,          -- which configured encryption key sealed it
    ciphertext bytea NOT NULL,         -- AES-256-GCM, nonce first
    digest     bytea NOT NULL,         -- HMAC-SHA256 of the key, for lookup without decrypting
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX stream_keys_digest_key ON stream_keys (digest);

CREATE TABLE stream_settings (
    user_id     bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    title       text NOT NULL DEFAULT '' CHECK (length(title) <= 140),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    category_id bigint REFERENCES categories (id) ON DELETE SET NULL,
    is_private  boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX streams_title_trgm_idx ON streams USING gin (title gin_trgm_ops);
CREATE INDEX streams_live_viewers_idx ON streams (viewers_count DESC, id DESC) WHERE is_live;
CREATE INDEX streams_live_started_idx ON streams (started_at DESC, id DESC) WHERE is_live;
CREATE INDEX streams_created_idx ON streams (created_at DESC, id DESC);
CREATE INDEX streams_live_category_idx ON streams (category_id, viewers_count DESC, id DESC) WHERE is_live;

-- categories.viewers_count = sum of viewers of its live streams, kept in the same transaction
-- as the stream change that alters it.
CREATE FUNCTION refresh_category_viewers() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    affected bigint[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        affected := ARRAY[OLD.category_id];
    ELSIF TG_OP = 'INSERT' THEN
        affected := ARRAY[NEW.category_id];
    ELSE
        affected := ARRAY[OLD.category_id, NEW.category_id];
    END IF;
    UPDATE categories c
       SET viewers_count = COALESCE((SELECT sum(s.viewers_count) FROM streams s
                                     WHERE s.category_id = c.id AND s.is_live), 0)
     WHERE c.id = ANY (affected);
    RETURN NULL;
END $$;

CREATE TRIGGER streams_category_viewers
AFTER INSERT OR DELETE OR UPDATE OF is_live, viewers_count, category_id ON streams
FOR EACH ROW EXECUTE FUNCTION refresh_category_viewers();
