-- The saga's deadline: a pending order whose `due_at` has passed gets its `order.placed`
-- published again (`placements` counts the publications), or, after the last one, is
-- rejected with reason `timeout`. Orders pending before this migration are due at once.
-- `placed_event` is the id of its `order.placed`: published again with the same id, it is
-- ignored by a catalog that handled it already.
ALTER TABLE orders
    ADD COLUMN placements   smallint    NOT NULL DEFAULT 1 CHECK (placements >= 1),
    ADD COLUMN due_at       timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN placed_event uuid;
CREATE INDEX orders_pending_due ON orders (due_at) WHERE status = 'pending';
-- Admission control counts the orders pending for longer than a moment.
CREATE INDEX orders_pending_since ON orders (created_at) WHERE status = 'pending';
