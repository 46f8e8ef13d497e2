-- Events handed to their own process's relay at commit are leased to it: other relays (and
-- this one's claims) leave a row alone until `relay_after`, and claim it after that if it is
-- still there (the process died, or the broker was away). Rows written for any relay to claim
-- at once keep the default.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS relay_after timestamptz NOT NULL DEFAULT now();
-- A published event now leaves the outbox (the relay deletes it once the broker confirmed it),
-- so the table holds only what waits. `published_at` is no longer written; it stays for the
-- instances of the previous release that still run during a rolling update (their relays mark
-- rows instead), and goes in a later release. What they marked goes now.
DELETE FROM outbox WHERE published_at IS NOT NULL;
