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
            expires_at: now.plus(request.ttl).max(lease_until),
        };
        (BeginOutcome::Acquired, Write::Put(record))
    };
    match live(current, now).map(|record| &record.state) {
        None => acquire(),
        Some(
            RecordState::InFlight { fingerprint, .. } | RecordState::Completed { fingerprint, .. },
        ) if *fingerprint != request.fingerprint => (BeginOutcome::Mismatch, Write::Nothing),
        Some(RecordState::Completed { response, .. }) => {
            (BeginOutcome::Replay(response.clone()), Write::Nothing)
        }
        Some(RecordState::InFlight { lease_until, .. }) if *lease_until > now => (
            BeginOutcome::InFlight {
                lease_left: now.until(*lease_until),
            },
            Write::Nothing,
        ),
        Some(RecordState::InFlight { .. }) => match request.on_lapse {
            OnLapse::TakeOver => acquire(),
            OnLapse::ReportUnknown => (BeginOutcome::OutcomeUnknown, Write::Nothing),
        },
    }
}

/// [`Store::renew`](super::Store::renew) applied to the current record at `now`.
#[must_use]
pub fn renew(
    current: Option<&Record>,
    token: LeaseToken,
    lease: Duration,
    now: Timestamp,
) -> (TransitionOutcome, Write) {
    match (owned_in_flight(current, token, now), current) {
        (Some(fingerprint), Some(record)) => {
            let lease_until = now.plus(lease);
            let renewed = Record {
                state: RecordState::InFlight {
                    fingerprint,
                    token,
                    lease_until,
                },
                expires_at: record.expires_at.max(lease_until),
            };
            (TransitionOutcome::Applied, Write::Put(renewed))
        }
        _ => (TransitionOutcome::StaleLease, Write::Nothing),
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
