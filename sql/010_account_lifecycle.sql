-- Issue 21, the tables its parts share (each part adds its own in a later file).

-- Erasure: requested at `deleted_at` (the account is gone from every public place at once),
-- personal data destroyed at or after `erase_after` (then `erased_at` is set; the row stays,
-- anonymised, so past streams keep their statistics and the username stays reserved).
ALTER TABLE users
    ADD COLUMN deleted_at  timestamptz,
    ADD COLUMN erase_after timestamptz,
    ADD COLUMN erased_at   timestamptz,
    ADD CHECK ((deleted_at IS NULL) = (erase_after IS NULL));
CREATE INDEX users_erase_due_idx ON users (erase_after)
    WHERE deleted_at IS NOT NULL AND erased_at IS NULL;

-- One row per sign-in of a session (register, login, restore): where from and with what.
-- Shown in the owner's export; `ip` is set to NULL after SF_IP_RETENTION_DAYS.
CREATE TABLE login_records (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('register', 'login', 'password_reset')),
    ip         inet,
    user_agent text NOT NULL DEFAULT '' CHECK (length(user_agent) <= 512),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_records_user_idx ON login_records (user_id, created_at DESC, id DESC);
CREATE INDEX login_records_ip_age_idx ON login_records (created_at) WHERE ip IS NOT NULL;

-- Personal data exports (ZIP files under <media>/exports, served through a signed URL until
-- `expires_at`, then deleted). One pending export per user at a time.
CREATE TABLE exports (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status     text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'ready', 'failed')),
    file       text,
    size_bytes bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    ready_at   timestamptz,
    expires_at timestamptz
);
CREATE UNIQUE INDEX exports_one_pending_per_user ON exports (user_id) WHERE status = 'pending';
CREATE INDEX exports_user_idx ON exports (user_id, created_at DESC, id DESC);
CREATE INDEX exports_expiry_idx ON exports (expires_at) WHERE expires_at IS NOT NULL;
