-- Issue 23: go-live notifications (in-app list, settings per type and channel, mutes) and the
-- durable fan-out queue that announces a channel to its followers, one node at a time.

-- What one user was told. `data` is what was true when it happened (for `stream.online`:
-- stream_id, username, title, thumbnail); `channel_id` says whose event it was, so a channel's
-- notices leave every list when its account is deleted.
CREATE TABLE notifications (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type       text NOT NULL CHECK (length(type) BETWEEN 1 AND 60),
    channel_id bigint REFERENCES users (id) ON DELETE CASCADE,
    data       jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    read_at    timestamptz
);
CREATE INDEX notifications_user_idx ON notifications (user_id, id DESC);
CREATE INDEX notifications_unread_idx ON notifications (user_id) WHERE read_at IS NULL;
CREATE INDEX notifications_channel_idx ON notifications (channel_id);
-- Retention deletes by age: a BRIN index costs next to nothing on 100,000-row fan-outs.
CREATE INDEX notifications_created_brin ON notifications USING brin (created_at);

-- A user's channels per type; no row: the type's defaults (sf/services/notifications.py).
CREATE TABLE notification_settings (
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    type       text NOT NULL CHECK (length(type) BETWEEN 1 AND 60),
    in_app     boolean NOT NULL,
    email      boolean NOT NULL,
    push       boolean NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, type)
);

-- Channels a user hears nothing from (still following them).
CREATE TABLE notification_mutes (
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    channel_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, channel_id),
    CHECK (user_id <> channel_id)
);
CREATE INDEX notification_mutes_channel_idx ON notification_mutes (channel_id, user_id);

-- One announcement of a channel's event to its followers, worked through in follower-id
-- order by whichever node claims it (FOR UPDATE SKIP LOCKED under a lease): each batch of
-- notifications commits together with `after_user_id`, so a node that dies mid-way leaves the
-- rest to the next claimer and nobody is told twice. 'skipped': debounced (a new stream soon
-- after the last notice), kept so the decision shows.
CREATE TABLE notification_fanouts (
    id            bigserial PRIMARY KEY,
    channel_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    stream_id     bigint NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    type          text NOT NULL,
    data          jsonb NOT NULL,
    is_private    boolean NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'done', 'skipped')),
    after_user_id bigint NOT NULL DEFAULT 0,
    notified      integer NOT NULL DEFAULT 0,
    claimed_until timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    done_at       timestamptz,
    UNIQUE (stream_id, type)
);
CREATE INDEX notification_fanouts_pending_idx ON notification_fanouts (id) WHERE status = 'pending';
CREATE INDEX notification_fanouts_channel_idx ON notification_fanouts (channel_id, created_at DESC);

-- A fan-out walks a channel's followers in id order, a batch at a time.
CREATE INDEX follows_following_follower_idx ON follows (following_id, follower_id);
