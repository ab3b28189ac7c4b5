//! A reference model of a store, written independently of [`crate::store::transition`], and
//! a property test that drives a real store and the model with the same random operations.

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, Fingerprint, LeaseToken, RecordId,
    RecordState, Store, StoredResponse, SystemClock, Timestamp, TransitionOutcome,
};

/// Random operation sequences per property run. Each runs against a real store, maybe over
/// a network, so the count stays modest; the operations per sequence make up for it.
const CASES: u32 = 48;

#[derive(Debug, Clone)]
enum Operation {
    Begin {
        key: u8,
        request: u8,
        lease_ms: u64,
        ttl_ms: u64,
    },
    Complete {
        key: u8,
        owner: u8,
        ttl_ms: u64,
    },
    Release {
        key: u8,
        owner: u8,
    },
    Get {
        key: u8,
    },
    Advance {
        ms: u64,
    },
}

fn operation() -> impl Strategy<Value = Operation> {
    // Few keys, requests and owners, so that operations collide often.
    prop_oneof![
        3 => (0..3u8, 0..2u8, 1..50u64, 1..200u64)
            .prop_map(|(key, request, lease_ms, ttl_ms)| Operation::Begin { key, request, lease_ms, ttl_ms }),
        2 => (0..3u8, 0..3u8, 1..200u64).prop_map(|(key, owner, ttl_ms)| Operation::Complete { key, owner, ttl_ms }),
        1 => (0..3u8, 0..3u8).prop_map(|(key, owner)| Operation::Release { key, owner }),
        1 => (0..3u8).prop_map(|key| Operation::Get { key }),
        2 => (1..80u64).prop_map(|ms| Operation::Advance { ms }),
    ]
}

/// What the model remembers of one key.
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
    fn live(&self, now: u64) -> bool {
        match self {
            Self::Running { expires_at, .. } | Self::Done { expires_at, .. } => now < *expires_at,
        }
    }
}

/// Runs [`CASES`] random operation sequences against `store` and the model; any difference
/// fails the test with the shrunk sequence.
pub fn check_against_reference_model<S: Store>(runtime: &tokio::runtime::Runtime, store: S) {
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    let result = runner.run(
        &proptest::collection::vec(operation(), 1..40),
        |operations| {
            runtime.block_on(run_sequence(&store, &operations));
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

fn response(key: u8, owner: u8, ttl_ms: u64) -> StoredResponse {
    StoredResponse {
        status: 200,
        headers: vec![("x-model".into(), Bytes::from(format!("{key}-{owner}")))],
        body: Some(Bytes::from(ttl_ms.to_string())),
    }
}

async fn run_sequence<S: Store>(store: &S, operations: &[Operation]) {
    // A fresh namespace per sequence, so sequences (and other tests) never share records.
    let salt: u64 = rand::random();
    let id = |key: u8| RecordId::from_bytes(crate::testkit::checks::salted_id(salt, key));
    let mut now = SystemClock.now().as_millis();
    let mut model: HashMap<u8, ModelRecord> = HashMap::new();
    // Every token ever handed out per key: "owner" n picks the n-th most recent, so stale
    // owners are exercised as often as current ones.
    let mut tokens: HashMap<u8, Vec<LeaseToken>> = HashMap::new();

    for operation in operations {
        match *operation {
            Operation::Advance { ms } => now += ms,
            Operation::Begin {
                key,
                request,
                lease_ms,
                ttl_ms,
            } => {
                let token = LeaseToken::random();
                let got = store
                    .begin(BeginRequest {
                        id: id(key),
                        fingerprint: fingerprint(request),
                        token,
                        now: Timestamp::from_millis(now),
                        lease_until: Timestamp::from_millis(now + lease_ms),
                        expires_at: Timestamp::from_millis(now + ttl_ms),
                    })
                    .await
                    .expect("store answers");
                let current = model.get(&key).filter(|record| record.live(now)).cloned();
                let expected = match current {
                    Some(
                        ModelRecord::Running { request: held, .. }
                        | ModelRecord::Done { request: held, .. },
                    ) if held != request => BeginOutcome::Mismatch,
                    Some(ModelRecord::Done { response, .. }) => BeginOutcome::Replay(response),
                    Some(ModelRecord::Running { lease_until, .. }) if lease_until > now => {
                        BeginOutcome::InFlight {
                            lease_until: Timestamp::from_millis(lease_until),
                        }
                    }
                    _ => {
                        model.insert(
                            key,
                            ModelRecord::Running {
                                request,
                                token,
                                lease_until: now + lease_ms,
                                expires_at: (now + ttl_ms).max(now + lease_ms),
                            },
                        );
                        tokens.entry(key).or_default().push(token);
                        BeginOutcome::Acquired
                    }
                };
                assert_eq!(got, expected, "begin {operation:?} at {now}");
            }
            Operation::Complete { key, owner, ttl_ms } => {
                let Some(token) = pick(&tokens, key, owner) else {
                    continue;
                };
                let stored = response(key, owner, ttl_ms);
                let got = store
                    .complete(CompleteRequest {
                        id: id(key),
                        token,
                        response: stored.clone(),
                        now: Timestamp::from_millis(now),
                        expires_at: Timestamp::from_millis(now + ttl_ms),
                    })
                    .await
                    .expect("store answers");
                let expected = match model.get(&key).filter(|record| record.live(now)).cloned() {
                    Some(ModelRecord::Running {
                        request,
                        token: held,
                        ..
                    }) if held == token => {
                        model.insert(
                            key,
                            ModelRecord::Done {
                                request,
                                response: stored,
                                expires_at: now + ttl_ms,
                            },
                        );
                        TransitionOutcome::Applied
                    }
                    _ => TransitionOutcome::StaleLease,
                };
                assert_eq!(got, expected, "complete {operation:?} at {now}");
            }
            Operation::Release { key, owner } => {
                let Some(token) = pick(&tokens, key, owner) else {
                    continue;
                };
                let got = store
                    .release(id(key), token, Timestamp::from_millis(now))
                    .await
                    .expect("store answers");
                let expected = match model.get(&key).filter(|record| record.live(now)) {
                    Some(ModelRecord::Running { token: held, .. }) if *held == token => {
                        model.remove(&key);
                        TransitionOutcome::Applied
                    }
                    _ => TransitionOutcome::StaleLease,
                };
                assert_eq!(got, expected, "release {operation:?} at {now}");
            }
            Operation::Get { key } => {
                let got = store
                    .get(id(key), Timestamp::from_millis(now))
                    .await
                    .expect("store answers");
                let expected = model
                    .get(&key)
                    .filter(|record| record.live(now))
                    .map(|record| match record {
                        ModelRecord::Running {
                            request,
                            token,
                            lease_until,
                            ..
                        } => RecordState::InFlight {
                            fingerprint: fingerprint(*request),
                            token: *token,
                            lease_until: Timestamp::from_millis(*lease_until),
                        },
                        ModelRecord::Done {
                            request, response, ..
                        } => RecordState::Completed {
                            fingerprint: fingerprint(*request),
                            response: response.clone(),
                        },
                    });
                assert_eq!(got, expected, "get {operation:?} at {now}");
            }
        }
    }
}

fn pick(tokens: &HashMap<u8, Vec<LeaseToken>>, key: u8, owner: u8) -> Option<LeaseToken> {
    let issued = tokens.get(&key)?;
    issued.iter().rev().nth(usize::from(owner)).copied()
}
