-- Issue 21, e-mail: the durable outbox, single-use mail tokens, and whether an address is verified.

-- Whether the account's address (users.email) was proven by a link mailed to it.
ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;

-- Mails waiting to be sent (and a record of those sent). A request INSERTs a row inside its
-- own transaction; the sender of any API node claims due rows with FOR UPDATE SKIP LOCKED,
-- marks them 'sending' until `claimed_until` (a lease: a sender that dies mid-send leaves the
-- row to be claimed again once it lapses), then 'sent', or back to 'pending' at a later
-- `next_attempt_at` (backoff), or 'failed' after the last attempt. Once a row is sent or
-- failed its recipient and message are blanked (the message holds a one-time link). A
-- 'skipped' row was never meant to go (a password reset asked for an unknown address writes
-- one, so that both cases cost the same).
CREATE TABLE mail_outbox (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL,
    key_id          text NOT NULL,   -- the e-mail cipher's key that sealed recipient and message
    recipient       bytea NOT NULL,  -- sealed (AES-GCM), like every stored address
    message         bytea NOT NULL,  -- sealed RFC 5322 message
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    CHECK ((status = 'sending') = (claimed_until IS NOT NULL))
);
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX mail_outbox_lease_idx ON mail_outbox (claimed_until) WHERE status = 'sending';

-- Single-use tokens mailed as links: only their SHA-256 is stored. One live token per account
-- and purpose (issuing a new one replaces the old, which stops working). `new_email_*` is the
-- address a 'verify_email' token confirms when it confirms a change (the pending address,
-- sealed like users' addresses: key id + AES-GCM ciphertext bound to the account; NULL: it
-- confirms the account's current address).
CREATE TABLE mail_tokens (
    token_hash bytea PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    text NOT NULL CHECK (purpose IN ('verify_email', 'password_reset')),
    new_email_key_id     text,
    new_email_ciphertext bytea,
    CHECK ((new_email_key_id IS NULL) = (new_email_ciphertext IS NULL)),
    CHECK (new_email_ciphertext IS NULL OR purpose = 'verify_email'),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX mail_tokens_one_per_purpose ON mail_tokens (user_id, purpose);
CREATE INDEX mail_tokens_expiry_idx ON mail_tokens (expires_at);
