//! A reference model of a store, written independently of [`crate::store::transition`], and
//! a property test that drives a real store and the model with the same random operations,
//! moving the store's [`ManualClock`] and the model's clock together.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, Fingerprint, LeaseToken, ManualClock,
    OnLapse, Record, RecordId, RecordSnapshot, RecordState, Store, StoredResponse, Timestamp,
    TransitionOutcome,
};

/// Random operation sequences per property run. Each runs against a real store, maybe over
/// a network, so the count stays modest; the operations per sequence make up for it.
const CASES: u32 = 48;

/// The time unit of the generated leases, TTLs and clock moves. Seconds rather than
/// milliseconds: the model's records then live long past any real time the run takes.
const UNIT_MS: u64 = 1000;

/// How far ahead of the real time the model's clock starts. A sweep run by another test
/// sharing the store reaches only records expiring at about the real now; the model's
/// records, a day ahead, are out of its reach.
const HEAD_START: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
enum Operation {
    Begin {
        key: u8,
        request: u8,
        lease: u64,
        ttl: u64,
        take_over: bool,
    },
    /// A begin run again with a token already handed out for the key (its first reply was
    /// lost and a driver re-ran it), for the request the token was issued to or the other.
    Rebegin {
        key: u8,
        owner: u8,
        same_request: bool,
        lease: u64,
        ttl: u64,
        take_over: bool,
    },
    Renew {
        key: u8,
        owner: u8,
        lease: u64,
    },
    Complete {
        key: u8,
        owner: u8,
        ttl: u64,
    },
    Release {
        key: u8,
        owner: u8,
    },
    Get {
        key: u8,
    },
    Advance {
        by: u64,
    },
}

fn operation() -> impl Strategy<Value = Operation> {
    // Few keys, requests and owners, so that operations collide often; leases, TTLs and
    // clock moves of the same magnitude, so that leases lapse and records expire often.
    prop_oneof![
        3 => (0..3u8, 0..2u8, 1..50u64, 1..200u64, any::<bool>()).prop_map(
            |(key, request, lease, ttl, take_over)| Operation::Begin { key, request, lease, ttl, take_over }
        ),
        1 => (0..3u8, 0..3u8, prop::bool::weighted(0.8), 1..50u64, 1..200u64, any::<bool>()).prop_map(
            |(key, owner, same_request, lease, ttl, take_over)| Operation::Rebegin { key, owner, same_request, lease, ttl, take_over }
        ),
        2 => (0..3u8, 0..3u8, 1..50u64).prop_map(|(key, owner, lease)| Operation::Renew { key, owner, lease }),
        2 => (0..3u8, 0..3u8, 1..200u64).prop_map(|(key, owner, ttl)| Operation::Complete { key, owner, ttl }),
        1 => (0..3u8, 0..3u8).prop_map(|(key, owner)| Operation::Release { key, owner }),
        2 => (0..3u8).prop_map(|key| Operation::Get { key }),
        2 => (1..80u64).prop_map(|by| Operation::Advance { by }),
    ]
}

/// What the model remembers of one key; times are milliseconds of the model's clock.
#[derive(Debug, Clone)]
enum ModelRecord {
    Running {
        request: u8,
        token: LeaseToken,
        lease_until: u64,
        expires_at: u64,
    },
    Done {
        request: u8,
        response: StoredResponse,
        expires_at: u64,
    },
}

impl ModelRecord {
    fn expires_at(&self) -> u64 {
        match self {
            Self::Running { expires_at, .. } | Self::Done { expires_at, .. } => *expires_at,
        }
    }

    fn request(&self) -> u8 {
        match self {
            Self::Running { request, .. } | Self::Done { request, .. } => *request,
        }
    }
}

/// The model: records by key, and the clock.
struct Model {
    now: u64,
    records: HashMap<u8, ModelRecord>,
}

impl Model {
    /// The record of `key` unless it expired.
    fn live(&self, key: u8) -> Option<&ModelRecord> {
        self.records
            .get(&key)
            .filter(|record| self.now < record.expires_at())
    }

    /// The key's request, lease and expiry, if it is in flight (lapsed or not) with `token`.
    fn owned(&self, key: u8, token: LeaseToken) -> Option<(u8, u64, u64)> {
        match self.live(key) {
            Some(ModelRecord::Running {
                request,
                token: held,
                lease_until,
                expires_at,
            }) if *held == token => Some((*request, *lease_until, *expires_at)),
            _ => None,
        }
    }

    fn begin(
        &mut self,
        key: u8,
        request: u8,
        token: LeaseToken,
        lease: u64,
        ttl: u64,
        take_over: bool,
    ) -> BeginOutcome {
        let now = self.now;
        match self.live(key) {
            Some(record) if record.request() != request => return BeginOutcome::Mismatch,
            Some(ModelRecord::Done { response, .. }) => {
                return BeginOutcome::Replay(response.clone());
            }
            // Its own token: this begin already acquired the key. A live lease stays as it
            // is; a lapsed one gets a whole lease from now, and the expiry keeps its distance.
            Some(&ModelRecord::Running {
                token: held,
                lease_until,
                expires_at,
                ..
            }) if held == token => {
                if lease_until <= now {
                    self.records.insert(
                        key,
                        ModelRecord::Running {
                            request,
                            token,
                            lease_until: now + lease,
                            expires_at: expires_at + (now + lease - lease_until),
                        },
                    );
                }
                return BeginOutcome::Acquired;
            }
            Some(ModelRecord::Running { lease_until, .. }) if *lease_until > now => {
                return BeginOutcome::InFlight {
                    lease_left: Duration::from_millis(lease_until - now),
                };
            }
            Some(ModelRecord::Running { .. }) if !take_over => {
                return BeginOutcome::OutcomeUnknown;
            }
            // Absent, expired, or lapsed and taken over.
            _ => {}
        }
        self.records.insert(
            key,
            ModelRecord::Running {
                request,
                token,
                lease_until: now + lease,
                // Kept a whole TTL after the lease lapses.
                expires_at: now + lease + ttl,
            },
        );
        BeginOutcome::Acquired
    }

    fn renew(&mut self, key: u8, token: LeaseToken, lease: u64) -> TransitionOutcome {
        let Some((request, old_lease_until, expires_at)) = self.owned(key, token) else {
            return TransitionOutcome::StaleLease;
        };
        let lease_until = self.now + lease;
        // The expiry moves forward with the lease (never back), keeping the TTL past it.
        let moved = lease_until.saturating_sub(old_lease_until);
        self.records.insert(
            key,
            ModelRecord::Running {
                request,
                token,
                lease_until,
                expires_at: expires_at + moved,
            },
        );
        TransitionOutcome::Applied
    }

    fn complete(
        &mut self,
        key: u8,
        token: LeaseToken,
        response: StoredResponse,
        ttl: u64,
    ) -> TransitionOutcome {
        let Some((request, ..)) = self.owned(key, token) else {
            return TransitionOutcome::StaleLease;
        };
        self.records.insert(
            key,
            ModelRecord::Done {
                request,
                response,
                expires_at: self.now + ttl,
            },
        );
        TransitionOutcome::Applied
    }

    fn release(&mut self, key: u8, token: LeaseToken) -> TransitionOutcome {
        if self.owned(key, token).is_none() {
            return TransitionOutcome::StaleLease;
        }
        self.records.remove(&key);
        TransitionOutcome::Applied
    }

    fn get(&self, key: u8) -> Option<RecordSnapshot> {
        let record = match self.live(key)? {
            ModelRecord::Running {
                request,
                token,
                lease_until,
                expires_at,
            } => Record {
                state: RecordState::InFlight {
                    fingerprint: fingerprint(*request),
                    token: *token,
                    lease_until: Timestamp::from_millis(*lease_until),
                },
                expires_at: Timestamp::from_millis(*expires_at),
            },
            ModelRecord::Done {
                request,
                response,
                expires_at,
            } => Record {
                state: RecordState::Completed {
                    fingerprint: fingerprint(*request),
                    response: response.clone(),
                },
                expires_at: Timestamp::from_millis(*expires_at),
            },
        };
        Some(RecordSnapshot {
            record,
            now: Timestamp::from_millis(self.now),
        })
    }
}

/// Runs a few dozen random operation sequences against `store`, which reads `clock`, and
/// against the model; any difference fails the test with the shrunk sequence.
///
/// # Panics
/// The store disagrees with the model, or does not answer.
pub fn check_against_reference_model<S: Store>(
    runtime: &tokio::runtime::Runtime,
    store: S,
    clock: &ManualClock,
) {
    clock.advance(HEAD_START);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    let result = runner.run(
        &proptest::collection::vec(operation(), 1..40),
        |operations| {
            runtime.block_on(run_sequence(&store, clock, &operations));
            Ok(())
        },
    );
    if let Err(failure) = result {
        panic!("store disagrees with the reference model: {failure}");
    }
}

fn fingerprint(request: u8) -> Fingerprint {
    Fingerprint::builder()
        .part("model-request", &[request])
        .finish()
}

fn response(key: u8, owner: u8, ttl: u64) -> StoredResponse {
    StoredResponse {
        status: 200,
        headers: vec![("x-model".into(), Bytes::from(format!("{key}-{owner}")))],
        body: Some(Bytes::from(ttl.to_string())),
    }
}

fn duration(units: u64) -> Duration {
    Duration::from_millis(units * UNIT_MS)
}

async fn run_sequence<S: Store>(store: &S, clock: &ManualClock, operations: &[Operation]) {
    let mut run = SequenceRun::new(store, clock);
    for operation in operations {
        run.apply(operation).await;
    }
}

/// One sequence under way: the store and the model driven side by side.
struct SequenceRun<'a, S> {
    store: &'a S,
    clock: &'a ManualClock,
    model: Model,
    /// This sequence's namespace of record ids.
    salt: u64,
    /// Every token ever handed out per key, with the request it was issued to: "owner" n
    /// picks the n-th most recent, so stale owners are exercised as often as current ones.
    tokens: HashMap<u8, Vec<(LeaseToken, u8)>>,
}

/// One begin, in the units of the generated operations.
struct Attempt {
    key: u8,
    request: u8,
    token: LeaseToken,
    lease: u64,
    ttl: u64,
    take_over: bool,
}

impl<'a, S: Store> SequenceRun<'a, S> {
    fn new(store: &'a S, clock: &'a ManualClock) -> Self {
        Self {
            store,
            clock,
            // The clock carries on from the previous sequence: it only ever moves forward.
            model: Model {
                now: clock.now().as_millis(),
                records: HashMap::new(),
            },
            // A fresh namespace per sequence, so sequences (and other tests) never share
            // records.
            salt: rand::random(),
            tokens: HashMap::new(),
        }
    }

    fn id(&self, key: u8) -> RecordId {
        RecordId::from_bytes(crate::testkit::checks::salted_id(self.salt, key))
    }

    /// The token "owner" `owner` of `key` holds, if that many were handed out.
    fn token(&self, key: u8, owner: u8) -> Option<LeaseToken> {
        pick(&self.tokens, key, owner).map(|(token, _)| token)
    }

    /// Applies `operation` to the store and the model, and asserts that they answer alike.
    async fn apply(&mut self, operation: &Operation) {
        let now = self.model.now;
        let context = format!("{operation:?} at {now}");
        match *operation {
            Operation::Advance { by } => {
                self.clock.advance(duration(by));
                self.model.now += by * UNIT_MS;
            }
            Operation::Begin {
                key,
                request,
                lease,
                ttl,
                take_over,
            } => {
                let attempt = Attempt {
                    key,
                    request,
                    token: LeaseToken::random(),
                    lease,
                    ttl,
                    take_over,
                };
                self.begin(&attempt, &context).await;
            }
            Operation::Rebegin {
                key,
                owner,
                same_request,
                lease,
                ttl,
                take_over,
            } => {
                if let Some((token, issued_to)) = pick(&self.tokens, key, owner) {
                    let attempt = Attempt {
                        key,
                        request: if same_request {
                            issued_to
                        } else {
                            1 - issued_to
                        },
                        token,
                        lease,
                        ttl,
                        take_over,
                    };
                    self.begin(&attempt, &context).await;
                }
            }
            Operation::Renew { key, owner, lease } => {
                if let Some(token) = self.token(key, owner) {
                    let got = self.store.renew(self.id(key), token, duration(lease)).await;
                    let expected = self.model.renew(key, token, lease * UNIT_MS);
                    assert_eq!(got.expect("store answers"), expected, "{context}");
                }
            }
            Operation::Complete { key, owner, ttl } => {
                if let Some(token) = self.token(key, owner) {
                    self.complete(key, owner, token, ttl, &context).await;
                }
            }
            Operation::Release { key, owner } => {
                if let Some(token) = self.token(key, owner) {
                    let got = self.store.release(self.id(key), token).await;
                    let expected = self.model.release(key, token);
                    assert_eq!(got.expect("store answers"), expected, "{context}");
                }
            }
            Operation::Get { key } => {
                let got = self.store.get(self.id(key)).await.expect("store answers");
                assert_eq!(got, self.model.get(key), "{context}");
            }
        }
    }

    async fn begin(&mut self, attempt: &Attempt, context: &str) {
        let &Attempt {
            key,
            request,
            token,
            lease,
            ttl,
            take_over,
        } = attempt;
        let got = self
            .store
            .begin(BeginRequest {
                id: self.id(key),
                fingerprint: fingerprint(request),
                token,
                lease: duration(lease),
                ttl: duration(ttl),
                on_lapse: if take_over {
                    OnLapse::TakeOver
                } else {
                    OnLapse::ReportUnknown
                },
            })
            .await
            .expect("store answers");
        let expected = self.model.begin(
            key,
            request,
            token,
            lease * UNIT_MS,
            ttl * UNIT_MS,
            take_over,
        );
        if expected == BeginOutcome::Acquired {
            self.tokens.entry(key).or_default().push((token, request));
        }
        assert_eq!(got, expected, "{context}");
    }

    async fn complete(&mut self, key: u8, owner: u8, token: LeaseToken, ttl: u64, context: &str) {
        let stored = response(key, owner, ttl);
        let got = self
            .store
            .complete(CompleteRequest {
                id: self.id(key),
                token,
                response: stored.clone(),
                ttl: duration(ttl),
            })
            .await
            .expect("store answers");
        let expected = self.model.complete(key, token, stored, ttl * UNIT_MS);
        assert_eq!(got, expected, "{context}");
    }
}

fn pick(
    tokens: &HashMap<u8, Vec<(LeaseToken, u8)>>,
    key: u8,
    owner: u8,
) -> Option<(LeaseToken, u8)> {
    let issued = tokens.get(&key)?;
    issued.iter().rev().nth(usize::from(owner)).copied()
}
