-- Issue 21, erasure (the columns on users are migration 010's).

-- What each erasure step destroyed, and when: the account's internal id, the event and the
-- categories of data; never a name, an address or any other personal data. Rows are only
-- ever added (`sf restore` re-applies the ones newer than the backup it restores).
CREATE TABLE erasure_ledger (
    id         bigserial PRIMARY KEY,
    user_id    bigint NOT NULL,  -- no foreign key: the record outlives any row it names
    event      text NOT NULL CHECK (event IN ('requested', 'restored', 'erased', 'name_released')),
    categories text[] NOT NULL DEFAULT '{}',
    erase_after timestamptz,     -- of a request: when its grace period ends
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, event, created_at)
);
CREATE INDEX erasure_ledger_time_idx ON erasure_ledger (created_at, id);

-- An erased account whose reserved username was released is renamed `erased-<id>`: a name no
-- registration can take (it has a hyphen), so the old one is free and the row stays unique.
ALTER TABLE users DROP CONSTRAINT users_username_check;
ALTER TABLE users ADD CONSTRAINT users_username_check CHECK (
    username ~ '^[A-Za-z0-9_]{3,30}$'
    OR (erased_at IS NOT NULL AND username ~ '^erased-[0-9]+$'));
