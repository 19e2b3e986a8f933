-- Issue 23, after the outside attack: a sender claims a delivery only while its webhook has
-- fewer than a few in flight, so one slow receiver's backlog never holds the others' turn
-- (sf/services/webhooks.py). The deliveries in flight of a webhook, counted at each claim:
CREATE INDEX webhook_deliveries_sending_idx ON webhook_deliveries (webhook_id)
    WHERE status = 'sending';
