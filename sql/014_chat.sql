-- Issue 22, live chat: messages, each channel's chat settings, moderators, bans and timeouts,
-- and the moderation log. A channel is its owner (users.id); a stream's chat belongs to the
-- channel of the stream's owner.

CREATE TABLE chat_messages (
    id         bigserial PRIMARY KEY,
    stream_id  bigint NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    channel_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_id    bigint REFERENCES users (id) ON DELETE SET NULL,  -- NULL: author erased
    text       text NOT NULL CHECK (length(text) BETWEEN 1 AND 500),
    sent_at    timestamptz NOT NULL DEFAULT now(),
    -- Hidden from history and sockets: 'deleted' by a moderator, or 'cleared' with every
    -- visible message of its author by a ban or timeout.
    hidden_at  timestamptz,
    hidden_why text CHECK (hidden_why IN ('deleted', 'cleared')),
    CHECK ((hidden_at IS NULL) = (hidden_why IS NULL))
);
CREATE INDEX chat_messages_history_idx ON chat_messages (stream_id, id DESC) WHERE hidden_at IS NULL;
CREATE INDEX chat_messages_author_idx ON chat_messages (channel_id, user_id, id DESC)
    WHERE hidden_at IS NULL;
CREATE INDEX chat_messages_user_idx ON chat_messages (user_id);
CREATE INDEX chat_messages_retention_idx ON chat_messages (sent_at);

-- One row per channel that changed its settings (no row: the defaults).
CREATE TABLE chat_settings (
    channel_id              bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    enabled                 boolean NOT NULL DEFAULT true,
    slow_mode_seconds       integer CHECK (slow_mode_seconds BETWEEN 1 AND 86400),
    followers_only_minutes  integer CHECK (followers_only_minutes BETWEEN 0 AND 525600),
    min_account_age_minutes integer NOT NULL DEFAULT 0
                            CHECK (min_account_age_minutes BETWEEN 0 AND 525600),
    blocked_terms           text[] NOT NULL DEFAULT '{}',
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chat_moderators (
    channel_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, user_id),
    CHECK (channel_id <> user_id)
);
CREATE INDEX chat_moderators_user_idx ON chat_moderators (user_id);

-- A ban (expires_at NULL) or a timeout (until expires_at) of a user in a channel.
CREATE TABLE chat_bans (
    channel_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz,
    reason     text NOT NULL DEFAULT '' CHECK (length(reason) <= 500),
    created_by bigint REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, user_id),
    CHECK (channel_id <> user_id)
);
CREATE INDEX chat_bans_user_idx ON chat_bans (user_id);

-- Every moderation action: who (actor), whom (target), what (action, details), when.
CREATE TABLE chat_moderation_log (
    id             bigserial PRIMARY KEY,
    channel_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    actor_id       bigint REFERENCES users (id) ON DELETE SET NULL,
    target_user_id bigint REFERENCES users (id) ON DELETE SET NULL,
    action         text NOT NULL,
    details        jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chat_moderation_log_channel_idx ON chat_moderation_log (channel_id, id DESC);
CREATE INDEX chat_moderation_log_retention_idx ON chat_moderation_log (created_at);
