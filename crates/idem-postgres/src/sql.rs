//! The SQL of each state transition: one statement, one round trip each. They mirror
//! `idem_core::store::transition`, and the conformance suite checks that they agree.
//!
//! Every statement runs on its own (autocommit) under READ COMMITTED, PostgreSQL's default.
//! Parameters are numbered as listed above each statement. Times are milliseconds from the
//! caller's clock: the server's clock is never read, so all instances agree with the engine.

/// Begin. `$1` id, `$2` fingerprint, `$3` token, `$4` now, `$5` lease_until, `$6` expires_at,
/// `$7` a fresh random acquisition number. Returns exactly one row: the record as the
/// statement left it, and whether this statement acquired it.
///
/// A record may be acquired when it is expired (`expires_at <= now`), or in flight with a
/// lapsed lease (`lease_until <= now`) and the same fingerprint; or when there is none.
///
/// Why this is race-free under READ COMMITTED, with any number of concurrent clients:
///
/// - `snapshot` reads the row as of the statement's snapshot. If that row is live and may not
///   be acquired (completed, in flight with a live lease, or another fingerprint), the answer
///   (replay, in flight, mismatch) is the state at that instant, which lies within the call:
///   the `INSERT` selects no row, nothing is written and no lock is taken. Replays, the hot
///   path of retries, stay read-only.
/// - Otherwise (no row, or one that may be acquired) the `INSERT … ON CONFLICT` decides on the
///   latest committed version, not on the snapshot: the unique index makes concurrent inserts
///   of one id wait for each other, and on a conflict `DO UPDATE` locks the newest version of
///   the row (retrying if it was updated or deleted meanwhile) and evaluates its `SET` against
///   that version. So a row committed by another client after our snapshot is still seen:
///   racing begins take the row lock one after the other, each deciding on what the previous
///   one wrote, and once one has acquired the others find its live lease.
/// - `DO UPDATE` always fires, writing either the new in-flight record or the row unchanged,
///   because with `DO UPDATE … WHERE false` `RETURNING` yields nothing, and a plain `SELECT`
///   in the same statement cannot see a row committed after its snapshot. `RETURNING` thus
///   always reports the row as this statement left it. Rewriting an unchanged row costs a row
///   version, and only happens to begins that lose a race. Which of the two was written is
///   told by `acquisition = $7`: PostgreSQL before 18 cannot return the old row, and
///   comparing tokens would misread a begin that reuses the token it already holds.
pub(crate) const BEGIN: &str = "
WITH snapshot AS (
    SELECT state, fingerprint, token, lease_until, expires_at,
           response_status, response_headers, response_body,
           (expires_at <= $4 OR (state = 'in_flight' AND lease_until <= $4 AND fingerprint = $2))
               AS acquirable
    FROM idem_records
    WHERE id = $1
),
upsert AS (
    INSERT INTO idem_records AS r
        (id, fingerprint, state, token, lease_until, expires_at,
         response_status, response_headers, response_body, acquisition, created_at)
    SELECT $1, $2, 'in_flight', $3, $5, GREATEST($5, $6), NULL, NULL, NULL, $7, now()
    WHERE NOT EXISTS (SELECT FROM snapshot WHERE NOT acquirable)
    ON CONFLICT (id) DO UPDATE SET
        (fingerprint, state, token, lease_until, expires_at,
         response_status, response_headers, response_body, acquisition, created_at)
        = (SELECT EXCLUDED.fingerprint, EXCLUDED.state, EXCLUDED.token, EXCLUDED.lease_until,
                  EXCLUDED.expires_at, EXCLUDED.response_status, EXCLUDED.response_headers,
                  EXCLUDED.response_body, EXCLUDED.acquisition, EXCLUDED.created_at
           WHERE r.expires_at <= $4
              OR (r.state = 'in_flight' AND r.lease_until <= $4 AND r.fingerprint = $2)
           UNION ALL
           SELECT r.fingerprint, r.state, r.token, r.lease_until,
                  r.expires_at, r.response_status, r.response_headers,
                  r.response_body, r.acquisition, r.created_at
           WHERE NOT (r.expires_at <= $4
              OR (r.state = 'in_flight' AND r.lease_until <= $4 AND r.fingerprint = $2)))
    RETURNING state, fingerprint, token, lease_until, expires_at,
              response_status, response_headers, response_body, acquisition = $7 AS acquired
)
SELECT * FROM upsert
UNION ALL
SELECT state, fingerprint, token, lease_until, expires_at,
       response_status, response_headers, response_body, false
FROM snapshot
WHERE NOT EXISTS (SELECT FROM upsert)";

/// Complete. `$1` id, `$2` token, `$3` status, `$4` headers, `$5` body, `$6` expires_at,
/// `$7` now. One row affected: applied; none: stale lease.
///
/// `UPDATE` re-checks its `WHERE` on the newest version of a row that changed after its
/// snapshot, so a concurrent takeover (a new token) or release is never overwritten.
pub(crate) const COMPLETE: &str = "
UPDATE idem_records
SET state = 'completed', response_status = $3, response_headers = $4, response_body = $5,
    expires_at = $6
WHERE id = $1 AND state = 'in_flight' AND token = $2 AND expires_at > $7";

/// Release. `$1` id, `$2` token, `$3` now. One row affected: applied; none: stale lease.
pub(crate) const RELEASE: &str = "
DELETE FROM idem_records
WHERE id = $1 AND state = 'in_flight' AND token = $2 AND expires_at > $3";

/// Get. `$1` id, `$2` now. The live row, if any.
pub(crate) const GET: &str = "
SELECT state, fingerprint, token, lease_until, expires_at,
       response_status, response_headers, response_body
FROM idem_records
WHERE id = $1 AND expires_at > $2";

/// Sweep. `$1` now, `$2` batch size. Deletes up to `$2` rows expired at `$1`, earliest first.
///
/// `SKIP LOCKED` lets several instances sweep at once, each taking other rows, and never waits
/// for a row a request is writing. The locked row's expiry is checked again on its newest
/// version, so a record acquired afresh since the snapshot is not deleted.
pub(crate) const SWEEP: &str = "
DELETE FROM idem_records
WHERE id IN (
    SELECT id FROM idem_records
    WHERE expires_at <= $1
    ORDER BY expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) AND expires_at <= $1";
