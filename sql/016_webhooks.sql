-- Issue 23, webhooks: a user's endpoints for their own channel's events, and the durable queue
-- of deliveries to them (claimed like the mail outbox: FOR UPDATE SKIP LOCKED under a lease).

-- One endpoint. The signing secret is stored sealed with the e-mail cipher (key id + AES-GCM,
-- bound to the owner and purpose) and shown to the owner once, when the webhook is made.
-- `failing_since`: when the current run of consecutive failed attempts began (NULL after a
-- success); with `consecutive_failures` it decides when a dead endpoint is disabled.
CREATE TABLE webhooks (
    id                   bigserial PRIMARY KEY,
    user_id              bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    url                  text NOT NULL CHECK (length(url) BETWEEN 1 AND 2000),
    events               text[] NOT NULL CHECK (cardinality(events) >= 1),
    secret_key_id        text NOT NULL,
    secret               bytea NOT NULL,
    enabled              boolean NOT NULL DEFAULT true,
    disabled_reason      text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    disabled_at          timestamptz
);
CREATE INDEX webhooks_user_idx ON webhooks (user_id, id);

-- One event for one webhook. `event_id` is the event's id, the same on every retry and
-- redelivery (receivers deduplicate on it); an event whose source can fire twice (an encoder
-- reconnect tells "live" again) has an id derived from what it is, so it is queued once.
-- `body` is the exact JSON sent (and signed). `dedup_key`: events that must not repeat within
-- a window (a follow after an unfollow) name what they are about. Given up ('failed') after
-- `give_up_at` (24 h after the event, or after a redelivery).
CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    webhook_id      bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        uuid NOT NULL,
    type            text NOT NULL,
    body            text NOT NULL,
    dedup_key       text,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    response_code   integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    delivered_at    timestamptz,
    give_up_at      timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    UNIQUE (webhook_id, event_id),
    CHECK ((status = 'sending') = (claimed_until IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_lease_idx ON webhook_deliveries (claimed_until)
    WHERE status = 'sending';
CREATE INDEX webhook_deliveries_list_idx ON webhook_deliveries (webhook_id, id DESC);
CREATE INDEX webhook_deliveries_dedup_idx ON webhook_deliveries (webhook_id, dedup_key, created_at)
    WHERE dedup_key IS NOT NULL;
-- Retention deletes by age.
CREATE INDEX webhook_deliveries_created_brin ON webhook_deliveries USING brin (created_at);
