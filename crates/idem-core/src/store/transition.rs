//! The shared semantics of the transitions, as pure functions over the record a store holds
//! and the store's clock.
//!
//! Stores that can run Rust inside their atomic section (the memory store under a lock, the
//! embedded store inside a write transaction) call these; stores that run the transition in
//! the database (SQL, Lua) mirror them, and the conformance suite checks that they agree.

use std::time::Duration;

use super::{BeginOutcome, BeginRequest, CompleteRequest, OnLapse, TransitionOutcome};
use crate::{Fingerprint, LeaseToken, Record, RecordState, Timestamp};

/// What a store must write after a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Leave the record as it is.
    Nothing,
    /// Replace (or create) the record.
    Put(Record),
    /// Delete the record.
    Delete,
}

/// [`Store::begin`](super::Store::begin) applied to the current record at `now`.
///
/// An acquisition stores a lease of `request.lease` from now and keeps the record a whole
/// `request.ttl` past that lease: if the owner dies, its lease lapses and the record is still
/// there for a TTL, so retries are told the outcome is unknown instead of executing again.
///
/// A begin that finds the request's own token in flight (its earlier run acquired the record,
/// and the reply was lost; a driver may run a script again after an I/O error) is
/// [`BeginOutcome::Acquired`] again and changes nothing, except that a lapsed lease is
/// renewed, as [`renew`] would, to a whole lease from now.
#[must_use]
pub fn begin(
    current: Option<&Record>,
    request: &BeginRequest,
    now: Timestamp,
) -> (BeginOutcome, Write) {
    let acquire = || {
        let lease_until = now.plus(request.lease);
        let record = Record {
            state: RecordState::InFlight {
                fingerprint: request.fingerprint,
                token: request.token,
                lease_until,
            },
            expires_at: lease_until.plus(request.ttl),
        };
        (BeginOutcome::Acquired, Write::Put(record))
    };
    let Some(record) = live(current, now) else {
        return acquire();
    };
    match &record.state {
        RecordState::InFlight { fingerprint, .. } | RecordState::Completed { fingerprint, .. }
            if *fingerprint != request.fingerprint =>
        {
            (BeginOutcome::Mismatch, Write::Nothing)
        }
        RecordState::Completed { response, .. } => {
            (BeginOutcome::Replay(response.clone()), Write::Nothing)
        }
        RecordState::InFlight {
            token, lease_until, ..
        } if *token == request.token => {
            if *lease_until > now {
                (BeginOutcome::Acquired, Write::Nothing)
            } else {
                let renewed =
                    with_lease(record, request.fingerprint, *token, now.plus(request.lease));
                (BeginOutcome::Acquired, Write::Put(renewed))
            }
        }
        RecordState::InFlight { lease_until, .. } if *lease_until > now => (
            BeginOutcome::InFlight {
                lease_left: now.until(*lease_until),
            },
            Write::Nothing,
        ),
        RecordState::InFlight { .. } => match request.on_lapse {
            OnLapse::TakeOver => acquire(),
            OnLapse::ReportUnknown => (BeginOutcome::OutcomeUnknown, Write::Nothing),
        },
    }
}

/// [`Store::renew`](super::Store::renew) applied to the current record at `now`.
///
/// The lease becomes a whole `lease` from now (longer or shorter than it was), and the
/// record's expiry moves forward by as much as the lease did (never back), so the TTL the
/// record was begun with is still kept past the renewed lease without the renewal carrying it.
#[must_use]
pub fn renew(
    current: Option<&Record>,
    token: LeaseToken,
    lease: Duration,
    now: Timestamp,
) -> (TransitionOutcome, Write) {
    match (owned_in_flight(current, token, now), current) {
        (Some(fingerprint), Some(record)) => {
            let renewed = with_lease(record, fingerprint, token, now.plus(lease));
            (TransitionOutcome::Applied, Write::Put(renewed))
        }
        _ => (TransitionOutcome::StaleLease, Write::Nothing),
    }
}

/// The in-flight `record` with its lease moved to `lease_until`, and its expiry moved forward
/// by as much as the lease moved forward: `expires_at + max(0, lease_until - old lease_until)`,
/// saturating.
fn with_lease(
    record: &Record,
    fingerprint: Fingerprint,
    token: LeaseToken,
    lease_until: Timestamp,
) -> Record {
    let moved = record
        .lease_until()
        .map_or(Duration::ZERO, |old| old.until(lease_until));
    Record {
        state: RecordState::InFlight {
            fingerprint,
            token,
            lease_until,
        },
        expires_at: record.expires_at.plus(moved),
    }
}

/// [`Store::complete`](super::Store::complete) applied to the current record at `now`.
#[must_use]
pub fn complete(
    current: Option<&Record>,
    request: &CompleteRequest,
    now: Timestamp,
) -> (TransitionOutcome, Write) {
    match owned_in_flight(current, request.token, now) {
        Some(fingerprint) => {
            let record = Record {
                state: RecordState::Completed {
                    fingerprint,
                    response: request.response.clone(),
                },
                expires_at: now.plus(request.ttl),
            };
            (TransitionOutcome::Applied, Write::Put(record))
        }
        None => (TransitionOutcome::StaleLease, Write::Nothing),
    }
}

/// [`Store::release`](super::Store::release) applied to the current record at `now`.
#[must_use]
pub fn release(
    current: Option<&Record>,
    token: LeaseToken,
    now: Timestamp,
) -> (TransitionOutcome, Write) {
    match owned_in_flight(current, token, now) {
        Some(_) => (TransitionOutcome::Applied, Write::Delete),
        None => (TransitionOutcome::StaleLease, Write::Nothing),
    }
}

/// The record a reader sees at `now`: none once expired.
#[must_use]
pub fn live(current: Option<&Record>, now: Timestamp) -> Option<&Record> {
    current.filter(|record| !record.is_expired(now))
}

fn owned_in_flight(
    current: Option<&Record>,
    token: LeaseToken,
    now: Timestamp,
) -> Option<Fingerprint> {
    match live(current, now).map(|record| &record.state) {
        Some(RecordState::InFlight {
            fingerprint,
            token: held,
            ..
        }) if *held == token => Some(*fingerprint),
        _ => None,
    }
}
