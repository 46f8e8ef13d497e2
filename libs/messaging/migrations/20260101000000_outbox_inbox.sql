-- Transactional outbox: events written in the same transaction as the change they describe,
-- published by the relay afterwards. Nothing is published that was not committed, and nothing
-- committed is lost while the broker is away.
CREATE TABLE IF NOT EXISTS outbox (
    id           uuid        PRIMARY KEY,          -- the event id (UUIDv7): publication order
    routing_key  text        NOT NULL,
    envelope     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Inbox: one row per (consumer, message) handled, written in the handler's transaction, so a
-- redelivered message has no second effect.
CREATE TABLE IF NOT EXISTS inbox (
    consumer     text        NOT NULL,
    message_id   uuid        NOT NULL,
    handled_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
