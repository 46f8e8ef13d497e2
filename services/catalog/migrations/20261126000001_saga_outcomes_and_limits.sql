-- The catalog's memory of each order's saga: the reply it gave to `order.placed`
-- (`stock.reserved` or `stock.rejected`, re-sent as is when the placement comes again: a
-- re-published or replayed event never reserves twice or changes its answer) and whether the
-- order was cancelled (a late placement then reserves nothing). Replaces `cancelled_orders`.
CREATE TABLE order_sagas (
    order_id      uuid        PRIMARY KEY,
    reply_type    text        CHECK (reply_type IN ('stock.reserved', 'stock.rejected')),
    reply         jsonb,
    cancelled_at  timestamptz,
    -- Why the cancellation could not release the stock (it waits in the dead-letter queue).
    cancel_reason text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((reply_type IS NULL) = (reply IS NULL))
);
INSERT INTO order_sagas (order_id, cancelled_at)
    SELECT order_id, cancelled_at FROM cancelled_orders;
DROP TABLE cancelled_orders;

-- The domain's bounds, enforced for every write from now on. NOT VALID: rows written before
-- the bounds existed stay readable; any change to them must bring them within bounds.
ALTER TABLE products
    ADD CONSTRAINT products_stock_max CHECK (stock <= 1000000000) NOT VALID,
    ADD CONSTRAINT products_price_max CHECK (price_minor <= 1000000000000) NOT VALID;
