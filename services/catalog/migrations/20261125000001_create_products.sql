-- Products, prices and stock. Invariants the domain checks are enforced here too, so no code
-- path (or manual fix) can store a negative stock or price.
CREATE TABLE products (
    id          uuid        PRIMARY KEY,           -- UUIDv7: ordered by creation, used as cursor
    sku         text        NOT NULL UNIQUE,
    name        text        NOT NULL CHECK (length(btrim(name)) > 0),
    description text        NOT NULL DEFAULT '',
    price_minor bigint      NOT NULL CHECK (price_minor >= 0),
    currency    text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    stock       integer     NOT NULL CHECK (stock >= 0),
    version     bigint      NOT NULL DEFAULT 1,    -- bumped by every change; the ETag
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
