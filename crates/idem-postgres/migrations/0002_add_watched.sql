-- Whether a duplicate request on some instance waits for this record's execution: its
-- completion or release then announces the record's id on the `idem_records_finished`
-- channel (NOTIFY), so the waiter is woken at once. Executions nobody waits for notify
-- nothing: a NOTIFY serializes commits on the server, which every request would pay.
--
-- A constant default: adding the column rewrites nothing (PostgreSQL 11 and later).
ALTER TABLE idem_records ADD COLUMN IF NOT EXISTS watched boolean NOT NULL DEFAULT false;
