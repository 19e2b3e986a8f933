-- Issue 21: consents kept, and e-mail addresses encrypted at rest.

-- Every acceptance of a versioned document (the privacy policy), kept as given: the latest of
-- a purpose is what the user accepted; the older ones are the history an export shows.
CREATE TABLE consents (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     text NOT NULL CHECK (purpose IN ('privacy_policy')),
    version     text NOT NULL CHECK (length(version) BETWEEN 1 AND 64),
    accepted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consents_user_idx ON consents (user_id, purpose, accepted_at DESC, id DESC);

-- The address sealed with the stream keys' key ring (AES-GCM, nonce first, bound to the
-- account) and its keyed hash (HMAC of the lower-case address) for login and uniqueness.
-- The clear-text column is emptied by the data step that follows this file (sf/db/migrate.py:
-- SQL cannot encrypt) and dropped once no row holds an address in clear. The sealed columns
-- stay NULL-able: an erased account holds no address.
ALTER TABLE users
    ADD COLUMN email_key_id     text,
    ADD COLUMN email_ciphertext bytea,
    ADD COLUMN email_digest     bytea,
    ALTER COLUMN email DROP NOT NULL,
    ADD CONSTRAINT users_email_sealed_whole CHECK (
        (email_key_id IS NULL) = (email_ciphertext IS NULL)
        AND (email_ciphertext IS NULL) = (email_digest IS NULL));
CREATE UNIQUE INDEX users_email_digest_key ON users (email_digest);
