-- The four models of the requirements (User, Stream, Category, Follow) with their fields,
-- constraints and indexes. Refresh sessions live in Redis (with expiry), not here.

CREATE TABLE users (
    id              bigserial PRIMARY KEY,
    username        text NOT NULL CHECK (username ~ '^[A-Za-z0-9_]{3,30}$'),
    email           text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash   text NOT NULL,
    avatar          text,
    bio             text NOT NULL DEFAULT '' CHECK (length(bio) <= 1000),
    followers_count integer NOT NULL DEFAULT 0 CHECK (followers_count >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TABLE categories (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 80),
    description   text NOT NULL DEFAULT '',
    thumbnail     text,
    viewers_count integer NOT NULL DEFAULT 0 CHECK (viewers_count >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX categories_name_lower_key ON categories (lower(name));
CREATE INDEX categories_viewers_name_idx ON categories (viewers_count DESC, name);

CREATE TABLE streams (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title         text NOT NULL CHECK (length(title) BETWEEN 1 AND 140),
    description   text NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    thumbnail     text,
    stream_key    bytea,          -- AES-GCM ciphertext of the key that published it (never plain)
    category_id   bigint REFERENCES categories (id) ON DELETE SET NULL,
    is_live       boolean NOT NULL DEFAULT false,
    viewers_count integer NOT NULL DEFAULT 0 CHECK (viewers_count >= 0),
    is_private    boolean NOT NULL DEFAULT false,
    started_at    timestamptz,
    ended_at      timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT is_live OR started_at IS NOT NULL),
    CHECK (NOT (is_live AND ended_at IS NOT NULL))
);
-- One live stream per user at a time.
CREATE UNIQUE INDEX streams_one_live_per_user ON streams (user_id) WHERE is_live;
CREATE INDEX streams_user_created_idx ON streams (user_id, created_at DESC, id DESC);
CREATE INDEX streams_category_idx ON streams (category_id);

CREATE TABLE follows (
    id           bigserial PRIMARY KEY,
    follower_id  bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    following_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT follows_unique UNIQUE (follower_id, following_id),
    CONSTRAINT follows_not_self CHECK (follower_id <> following_id)
);
CREATE INDEX follows_following_idx ON follows (following_id, created_at DESC, id DESC);
CREATE INDEX follows_follower_idx ON follows (follower_id, created_at DESC, id DESC);
