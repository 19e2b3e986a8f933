-- Private streams are visible to their owner and to the viewers the owner invited; invites
-- belong to the channel (all of the owner's private streams). Following grants nothing.
CREATE TABLE allowed_viewers (
    id         bigserial PRIMARY KEY,
    owner_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    viewer_id  bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT allowed_viewers_unique UNIQUE (owner_id, viewer_id),
    CONSTRAINT allowed_viewers_not_self CHECK (owner_id <> viewer_id)
);
CREATE INDEX allowed_viewers_owner_idx ON allowed_viewers (owner_id, created_at DESC, id DESC);
