-- Issue 23: Web Push. A browser's PushSubscription, one row per (account, endpoint); the
-- endpoint is the browser's capability URL at its vendor's push service, p256dh and auth the
-- keys its pushes are encrypted to (RFC 8291). A browser belongs to one account at a time:
-- subscribing an endpoint moves it from any other account (sf/db/push.py). Each account keeps
-- its newest few (PUSH_SUBSCRIPTIONS_PER_USER), the oldest leave when one more comes.
CREATE TABLE push_subscriptions (
    id              bigserial PRIMARY KEY,
    user_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    endpoint        text NOT NULL CHECK (length(endpoint) BETWEEN 1 AND 2048),
    p256dh          text NOT NULL CHECK (length(p256dh) BETWEEN 86 AND 90),
    auth            text NOT NULL CHECK (length(auth) BETWEEN 22 AND 24),
    expires_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_success_at timestamptz,
    UNIQUE (user_id, endpoint)
);
CREATE INDEX push_subscriptions_endpoint_idx ON push_subscriptions (endpoint);
