-- Stock reserved for orders, so a cancellation releases exactly what was taken.
CREATE TABLE reservations (
    order_id   uuid        NOT NULL,
    product_id uuid        NOT NULL,
    quantity   integer     NOT NULL CHECK (quantity > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, product_id)
);

-- Orders known to be cancelled: an `order.placed` arriving after its `order.cancelled`
-- (possible when several relays publish) must not reserve anything.
CREATE TABLE cancelled_orders (
    order_id     uuid        PRIMARY KEY,
    cancelled_at timestamptz NOT NULL DEFAULT now()
);
