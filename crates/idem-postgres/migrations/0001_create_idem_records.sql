-- idem's records: one row per idempotency record.
--
-- `id` is the 32-byte SHA-256 RecordId. It already folds in the scope (whose key it is) and
-- the key itself, so there is no scope column, and keys are never stored in clear.
-- Timestamps are milliseconds since the Unix epoch from the caller's clock (the engine's
-- Clock), never the server's, so every instance and every store agree on what `now` means.
CREATE TABLE IF NOT EXISTS idem_records (
    id               bytea       PRIMARY KEY CHECK (octet_length(id) = 32),
    fingerprint      bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    state            text        NOT NULL CHECK (state IN ('in_flight', 'completed')),
    -- The owner's LeaseToken: a u64 bit-cast to bigint, so half of all tokens are negative.
    token            bigint      NOT NULL,
    lease_until      bigint      NOT NULL,
    expires_at       bigint      NOT NULL,
    -- The stored response, set when the record completes.
    response_status  integer     CHECK (response_status BETWEEN 0 AND 65535),
    -- The header list in order, repeated names kept: a format byte, then postcard.
    response_headers bytea,
    -- NULL: the body was too large to store, which is not the same as an empty body.
    response_body    bytea,
    -- A random number drawn by the begin that last acquired the row: a begin recognises its
    -- own acquisition in the row its statement returns (PostgreSQL before 18 cannot return
    -- the row's old values from an upsert).
    acquisition      bigint      NOT NULL,
    -- When the current owner acquired the record; for operators, never read by idem.
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (state = 'in_flight' OR (response_status IS NOT NULL AND response_headers IS NOT NULL))
);

-- The sweeper deletes the earliest-expired rows first without scanning the table.
CREATE INDEX IF NOT EXISTS idem_records_expires_at ON idem_records (expires_at);
