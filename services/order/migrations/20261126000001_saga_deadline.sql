-- The saga's deadline: a pending order whose `due_at` has passed gets its `order.placed`
-- published again (`placements` counts the publications), or, after the last one, is
-- rejected with reason `timeout`. Orders pending before this migration are due at once.
ALTER TABLE orders
    ADD COLUMN placements smallint    NOT NULL DEFAULT 1 CHECK (placements >= 1),
    ADD COLUMN due_at     timestamptz NOT NULL DEFAULT now();
CREATE INDEX orders_pending_due ON orders (due_at) WHERE status = 'pending';
