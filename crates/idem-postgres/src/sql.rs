//! The SQL of each state transition: one statement, one round trip each. They mirror
//! `idem_core::store::transition`, and the conformance suite checks that they agree.
//!
//! Every statement runs on its own (autocommit) under READ COMMITTED, PostgreSQL's default.
//! Parameters are numbered as listed above each statement.
//!
//! **The database's clock decides.** Times are `bigint` milliseconds since the Unix epoch, and
//! every lease and expiry decision compares them with the server's `clock_timestamp()`, never
//! with an instance's clock: instances whose clocks disagree by minutes still agree on every
//! lease, because they all ask the same server. Requests carry durations (a lease, a TTL),
//! which the statement adds to that instant. (The comment in the first migration, which says
//! the caller's clock, predates this; applied migrations are never edited.)
//!
//! Each statement reads the clock once, in its `clock` CTE (a CTE holding a volatile function
//! is evaluated once and materialised), so all of its comparisons and the times it writes use
//! one instant, which lies within the call. `$1` of every statement overrides that instant:
//! NULL in production, or the now of the clock given to
//! [`PostgresStoreBuilder::clock`](crate::PostgresStoreBuilder::clock) so that tests can move
//! time by hand instead of sleeping.
//!
//! Sums of an instant and a duration saturate at `i64::MAX` ("never"), like
//! `Timestamp::plus`, instead of overflowing `bigint`.

/// The `clock` CTE: one instant per statement, in milliseconds; `$1` overrides it.
macro_rules! clock {
    () => {
        "clock AS (
    SELECT COALESCE($1::bigint, floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)
               AS now
)"
    };
}

/// The channel the finish of a watched record is announced on; the payload is its id in hex.
pub(crate) const FINISHED_CHANNEL: &str = "idem_records_finished";

/// The tail of `COMPLETE` and `RELEASE`: one row per record the `finished` CTE changed (so
/// the statement's row count says whether it applied), announcing it only if a waiter
/// watches it. A `NOTIFY` makes the commit take a server-wide lock, so executions nobody
/// waits for must not send one. The announcement is delivered when the statement commits.
macro_rules! announce_finish {
    () => {
        "
SELECT CASE WHEN watched THEN pg_notify('idem_records_finished', encode(id, 'hex')) END
FROM finished"
    };
}

/// `clock.now + <duration in ms>`, saturating at `i64::MAX`.
macro_rules! later {
    ($duration:literal) => {
        concat!(
            "LEAST(clock.now::numeric + ",
            $duration,
            "::numeric, 9223372036854775807)::bigint"
        )
    };
}

/// Begin. `$1` now override, `$2` id, `$3` fingerprint, `$4` token, `$5` lease (ms), `$6` TTL
/// (ms), `$7` whether a lapsed lease may be taken over (`OnLapse::TakeOver`), `$8` a fresh
/// random acquisition number. Returns exactly one row: the record as the statement left it,
/// whether this statement acquired it, and the statement's `now`.
///
/// A record may be acquired when it is expired (`expires_at <= now`), or, with `$7`, in flight
/// with a lapsed lease (`lease_until <= now`) and the same fingerprint; or when there is none.
/// Acquiring writes a lease until `now + $5` and an expiry a TTL after it, `now + $5 + $6`:
/// a record whose owner died is kept a whole TTL after its lease lapsed. A lapsed lease without
/// `$7` is not acquirable: the statement writes nothing and the row it returns tells the caller
/// the outcome is unknown.
///
/// A record in flight with the request's own token `$4` (and fingerprint) was acquired by
/// this very begin, run before (its answer lost): it is acquired again. With its lease lapsed
/// the statement renews it as `RENEW` would (a lease until `now + $5`, the expiry moved
/// forward as much) and marks it with `$8`; with its lease live it writes nothing, and the
/// caller reads the returned row as acquired (`transition::begin` answers `Acquired` and
/// writes nothing).
///
/// Why this is race-free under READ COMMITTED, with any number of concurrent clients:
///
/// - `snapshot` reads the row as of the statement's snapshot. If that row is live and may not
///   be acquired (completed, in flight with a live lease, in flight with a lapsed lease held
///   by another token and no takeover asked, or another fingerprint), the answer (replay, in
///   flight or, for the request's own token, acquired; outcome unknown, mismatch) is the state
///   at that instant, which lies within the call: the `INSERT` selects no row, nothing is
///   written and no lock is taken. Replays, the hot path of retries, stay read-only, and so
///   does an outcome-unknown answer.
/// - Otherwise (no row, or one that may be acquired) the `INSERT … ON CONFLICT` decides on the
///   latest committed version, not on the snapshot: the unique index makes concurrent inserts
///   of one id wait for each other, and on a conflict `DO UPDATE` locks the newest version of
///   the row (retrying if it was updated or deleted meanwhile) and evaluates its `SET` against
///   that version: a fresh acquisition, the renewal of the request's own lapsed lease, or the
///   row unchanged, exactly one of the three by the same predicates as `snapshot`. So a row
///   committed by another client after our snapshot is still seen: racing begins take the row
///   lock one after the other, each deciding on what the previous one wrote, and once one has
///   acquired the others find its live lease (or, if they carry its token, their own).
/// - The clock was read before any lock wait, so a begin that waited decides with an instant
///   slightly in the past. That errs on the safe side: being expired or lapsed only becomes
///   true as time passes, so a version acquirable at that instant is acquirable when the lock
///   is granted (the lock keeps it from changing), and a version not yet lapsed then is
///   reported in flight, with a lease left a little longer than it is. A racing begin that
///   read a later instant wrote a lease ending after ours started, so we find it live.
/// - `DO UPDATE` always fires, writing either the new in-flight record, the renewed one or the
///   row unchanged, because with `DO UPDATE … WHERE false` `RETURNING` yields nothing, and a
///   plain `SELECT` in the same statement cannot see a row committed after its snapshot.
///   `RETURNING` thus always reports the row as this statement left it. Rewriting an
///   unchanged row costs a row version, and only happens to begins that lose a race. Which
///   was written is told by `acquisition = $8`: PostgreSQL before 18 cannot return the old
///   row, and comparing tokens would misread a begin that reuses the token it already holds.
///
/// The caller answers a row it did not acquire with `transition::begin` at the returned `now`:
/// the same predicate on the same instant, so the two cannot disagree; the reference may only
/// answer it with a transition that writes nothing.
pub(crate) const BEGIN: &str = concat!(
    "
WITH ",
    clock!(),
    ",
fresh AS (
    SELECT ",
    later!("$5"),
    " AS lease_until,
           LEAST(clock.now::numeric + $5::numeric + $6::numeric,
                 9223372036854775807)::bigint AS expires_at
    FROM clock
),
snapshot AS (
    SELECT state, fingerprint, token, lease_until, expires_at,
           response_status, response_headers, response_body,
           (expires_at <= clock.now
            OR (state = 'in_flight' AND lease_until <= clock.now AND fingerprint = $3
                AND ($7 OR token = $4)))
               AS acquirable
    FROM idem_records, clock
    WHERE id = $2
),
upsert AS (
    INSERT INTO idem_records AS r
        (id, fingerprint, state, token, lease_until, expires_at,
         response_status, response_headers, response_body, acquisition, created_at)
    SELECT $2, $3, 'in_flight', $4, fresh.lease_until, fresh.expires_at,
           NULL, NULL, NULL, $8, now()
    FROM fresh
    WHERE NOT EXISTS (SELECT FROM snapshot WHERE NOT acquirable)
    ON CONFLICT (id) DO UPDATE SET
        (fingerprint, state, token, lease_until, expires_at,
         response_status, response_headers, response_body, acquisition, created_at, watched)
        = (SELECT EXCLUDED.fingerprint, EXCLUDED.state, EXCLUDED.token, EXCLUDED.lease_until,
                  EXCLUDED.expires_at, EXCLUDED.response_status, EXCLUDED.response_headers,
                  EXCLUDED.response_body, EXCLUDED.acquisition, EXCLUDED.created_at,
                  -- A fresh acquisition starts unwatched (the column's default).
                  EXCLUDED.watched
           FROM clock
           WHERE r.expires_at <= clock.now
              OR ($7 AND r.state = 'in_flight' AND r.lease_until <= clock.now
                  AND r.fingerprint = $3 AND r.token <> $4)
           UNION ALL
           -- The request's own token with a lapsed lease: renewed, the expiry moved forward
           -- as much as the lease.
           SELECT r.fingerprint, r.state, r.token, EXCLUDED.lease_until,
                  LEAST(r.expires_at::numeric
                        + GREATEST(EXCLUDED.lease_until::numeric - r.lease_until::numeric, 0),
                        9223372036854775807)::bigint,
                  r.response_status, r.response_headers, r.response_body,
                  EXCLUDED.acquisition, r.created_at, r.watched
           FROM clock
           WHERE r.expires_at > clock.now
             AND r.state = 'in_flight' AND r.lease_until <= clock.now
             AND r.fingerprint = $3 AND r.token = $4
           UNION ALL
           SELECT r.fingerprint, r.state, r.token, r.lease_until,
                  r.expires_at, r.response_status, r.response_headers,
                  r.response_body, r.acquisition, r.created_at, r.watched
           FROM clock
           WHERE r.expires_at > clock.now
             AND NOT (r.state = 'in_flight' AND r.lease_until <= clock.now
                      AND r.fingerprint = $3 AND ($7 OR r.token = $4)))
    RETURNING state, fingerprint, token, lease_until, expires_at,
              response_status, response_headers, response_body, acquisition = $8 AS acquired
)
SELECT upsert.*, clock.now FROM upsert, clock
UNION ALL
SELECT state, fingerprint, token, lease_until, expires_at,
       response_status, response_headers, response_body, false, clock.now
FROM snapshot, clock
WHERE NOT EXISTS (SELECT FROM upsert)"
);

/// Renew. `$1` now override, `$2` id, `$3` token, `$4` lease (ms). One row affected: applied;
/// none: stale lease.
///
/// The lease moves to `now + $4`, and the expiry forward by as much as the lease moved forward
/// (never back), so the record is still kept a TTL past its lease without the renewal carrying
/// the TTL. A lapsed lease that was not taken over still carries its owner's token and is
/// renewed; one taken over carries another token. `UPDATE` re-checks its `WHERE` on the newest
/// version of a row that changed after its snapshot, so a concurrent takeover, completion or
/// release is never overwritten.
pub(crate) const RENEW: &str = concat!(
    "
WITH ",
    clock!(),
    "
UPDATE idem_records
SET lease_until = ",
    later!("$4"),
    ",
    expires_at = LEAST(expires_at::numeric
                       + GREATEST(",
    later!("$4"),
    "::numeric - lease_until::numeric, 0),
                       9223372036854775807)::bigint
FROM clock
WHERE id = $2 AND state = 'in_flight' AND token = $3 AND expires_at > clock.now"
);

/// Complete. `$1` now override, `$2` id, `$3` token, `$4` status, `$5` headers, `$6` body,
/// `$7` TTL (ms). One row affected: applied; none: stale lease.
///
/// `UPDATE` re-checks its `WHERE` on the newest version of a row that changed after its
/// snapshot, so a concurrent takeover (a new token) or release is never overwritten. A lapsed
/// lease not taken over still carries the owner's token, so its completion is accepted.
///
/// A record a waiter marked (`WATCH`) is announced on [`FINISHED_CHANNEL`]: see
/// [`announce_finish!`].
pub(crate) const COMPLETE: &str = concat!(
    "
WITH ",
    clock!(),
    ",
finished AS (
    UPDATE idem_records
    SET state = 'completed', response_status = $4, response_headers = $5, response_body = $6,
        expires_at = ",
    later!("$7"),
    "
    FROM clock
    WHERE id = $2 AND state = 'in_flight' AND token = $3 AND expires_at > clock.now
    RETURNING id, watched
)",
    announce_finish!()
);

/// Release. `$1` now override, `$2` id, `$3` token. One row: applied; none: stale lease.
/// A watched record is announced as for `COMPLETE`.
pub(crate) const RELEASE: &str = concat!(
    "
WITH ",
    clock!(),
    ",
finished AS (
    DELETE FROM idem_records
    USING clock
    WHERE id = $2 AND state = 'in_flight' AND token = $3 AND expires_at > clock.now
    RETURNING id, watched
)",
    announce_finish!()
);

/// Watch. `$1` now override, `$2` id. Returns one row, `in_flight`: true when the record is
/// in flight and marked, so that its completion or release will be announced; false when it
/// is not in flight.
///
/// A record already marked (by another waiter, committed) is not written again: a herd of
/// waiters would otherwise queue a row version and a commit each on the row's lock, ahead of
/// the completion. Otherwise the mark is a row update like a renewal's, so it waits for (and
/// is re-checked after) a concurrent completion: either the completion sees the mark and
/// announces, or the mark finds the record completed and the waiter reads it at once. (A
/// mark committed by another waiter after this statement's snapshot makes both parts say
/// no: the waiter decides again and watches anew.)
pub(crate) const WATCH: &str = concat!(
    "
WITH ",
    clock!(),
    ",
live AS (
    SELECT watched FROM idem_records, clock
    WHERE id = $2 AND state = 'in_flight' AND expires_at > clock.now
),
marked AS (
    UPDATE idem_records
    SET watched = true
    FROM clock
    WHERE id = $2 AND state = 'in_flight' AND expires_at > clock.now AND NOT watched
    RETURNING 1
)
SELECT EXISTS (SELECT FROM marked) OR EXISTS (SELECT FROM live WHERE watched) AS in_flight"
);

/// Get. `$1` now override, `$2` id. The live row, if any, with the statement's `now`.
pub(crate) const GET: &str = concat!(
    "
WITH ",
    clock!(),
    "
SELECT state, fingerprint, token, lease_until, expires_at,
       response_status, response_headers, response_body, clock.now
FROM idem_records, clock
WHERE id = $2 AND expires_at > clock.now"
);

/// Sweep. `$1` now override, `$2` batch size. Deletes up to `$2` rows expired at the
/// statement's now, earliest first.
///
/// `SKIP LOCKED` lets several instances sweep at once, each taking other rows, and never waits
/// for a row a request is writing. The locked row's expiry is checked again on its newest
/// version, so a record acquired afresh since the snapshot is not deleted.
pub(crate) const SWEEP: &str = concat!(
    "
WITH ",
    clock!(),
    "
DELETE FROM idem_records
WHERE id IN (
    SELECT id FROM idem_records
    WHERE expires_at <= (SELECT now FROM clock)
    ORDER BY expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) AND expires_at <= (SELECT now FROM clock)"
);

/// The server settings that decide whether an acknowledged commit survives, for
/// `durability_risks`: what this session's commits use (`synchronous_commit` may be set per
/// role or database), whether the server flushes at all, whether commits wait for a standby,
/// and how many standbys stream from this server (a failover to an asynchronous one may lose
/// the last commits). `pg_stat_replication` shows its rows to every user.
pub(crate) const DURABILITY_SETTINGS: &str = "
SELECT current_setting('synchronous_commit') AS synchronous_commit,
       current_setting('fsync') AS fsync,
       current_setting('synchronous_standby_names') AS synchronous_standby_names,
       (SELECT count(*) FROM pg_stat_replication) AS standbys";
