-- Orders. `lines` keeps each line's product, quantity and unit price (null until priced).
CREATE TABLE orders (
    id          uuid        PRIMARY KEY,            -- UUIDv7
    customer_id uuid        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled')),
    reason      text,                               -- why it was rejected
    lines       jsonb       NOT NULL,
    total_minor bigint      CHECK (total_minor >= 0),
    currency    text        CHECK (currency ~ '^[A-Z]{3}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_by_customer ON orders (customer_id, id);

-- One row per Idempotency-Key: the request it came with and the response it got, so a retry
-- gets the same answer and a reuse with another request is refused.
CREATE TABLE idempotency_keys (
    key         text        PRIMARY KEY,
    request     jsonb       NOT NULL,
    status      smallint,
    response    jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
