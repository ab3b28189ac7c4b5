//! Idempotent functions: work that is not an HTTP handler (a queue consumer, a webhook
//! processor, a scheduled job) executed at most once per key, its typed result replayed to
//! every retry. AWS Powertools' `idempotent_function`, on this engine.
//!
//! A [`Call`] names the function and says where its key comes from: given
//! ([`Call::key`]), a member of the input ([`Call::key_from`], e.g. a message id), or the
//! input itself ([`Call::key_from_input`], a hash of its canonical JSON). The input is
//! fingerprinted as canonical JSON (RFC 8785 order and whitespace, numbers by exact value),
//! so a retry with the same key and another input is a mismatch, never a replay. The
//! output is stored as JSON (`serde_json`) and decoded again on replay.
//!
//! The protocol is the layer's: the first call acquires the key and runs the function while
//! its lease is renewed; a retry meanwhile is told it is in flight (or waits, with
//! [`EngineBuilder::wait_for_in_flight`](crate::EngineBuilder::wait_for_in_flight)); a call
//! whose runner died mid-way leaves an unknown outcome, never a second run. A function that
//! returns `Err` releases the key, so a retry runs it again: return `Err` only when nothing
//! took effect, and an `Ok` value that says "declined" for outcomes to keep. A call dropped
//! mid-way (its future cancelled, its function panicking) may have taken effect: its key
//! lapses into an unknown outcome.
//!
//! ```
//! use idem_core::{Call, Engine, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #[derive(serde::Serialize)]
//! struct Signup { message_id: String, email: String }
//!
//! let engine = Engine::new(MemoryStore::new());
//! let call = Call::new("send_welcome_email").key_from("/message_id");
//! let signup = Signup { message_id: "m-1".into(), email: "ada@example.com".into() };
//! let mut sent = 0;
//! for _redelivery in 0..3 {
//!     let receipt: String = engine
//!         .run(&call, &signup, || async {
//!             sent += 1;
//!             Ok::<_, std::io::Error>(format!("sent to {}", signup.email))
//!         })
//!         .await?;
//!     assert_eq!(receipt, "sent to ada@example.com");
//! }
//! assert_eq!(sent, 1, "three deliveries, one email");
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::canonical_json::{Json, JsonError};
use crate::{
    Begin, Engine, Fingerprint, FingerprintPart, IdempotencyKey, KeyError, KeyPolicy, RecordId,
    Scope, Store, StoreError, StoredResponse,
};

/// The content type of a stored function result: what the HTTP layer and `idem serve` would
/// see if they read the record.
const JSON: &str = "application/json";

/// Where a [`Call`]'s idempotency key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    /// Given by the caller.
    Given(IdempotencyKey),
    /// The value at this JSON pointer in the input (a string or a number).
    Member(String),
    /// A hash of the input's canonical JSON: the same input is the same call.
    Input,
}

/// One idempotent function: its name, whose keys they are, and where the key comes from.
/// Calls of two functions with the same key never meet: the name scopes the key.
#[derive(Debug, Clone)]
pub struct Call {
    name: String,
    scope: Scope,
    key: KeySource,
    ttl: Option<Duration>,
}

impl Call {
    /// A call of the function `name`, keyed by its whole input until told otherwise.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            scope: Scope::anonymous(),
            key: KeySource::Input,
            ttl: None,
        }
    }

    /// The key, as the caller has it (a job id, a client's idempotency key).
    #[must_use]
    pub fn key(mut self, key: IdempotencyKey) -> Self {
        self.key = KeySource::Given(key);
        self
    }

    /// The key is the input's member at this JSON pointer (`/message_id`,
    /// `/detail/event_id`): a string, or a number written as JSON writes it.
    #[must_use]
    pub fn key_from(mut self, pointer: impl Into<String>) -> Self {
        self.key = KeySource::Member(pointer.into());
        self
    }

    /// The key is a hash of the whole input's canonical JSON (the default): the same input,
    /// in any member order, is the same call.
    #[must_use]
    pub fn key_from_input(mut self) -> Self {
        self.key = KeySource::Input;
        self
    }

    /// Whose keys these are (a tenant, an account): two scopes never share a record.
    #[must_use]
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// How long the result is replayed (default: the engine's TTL).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The function's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The record this function's call with `key` is kept under: for operators resolving a
    /// key of unknown outcome (`idem records … --function NAME --key KEY`).
    #[must_use]
    pub fn record_id(&self, key: &IdempotencyKey) -> RecordId {
        // The function's name scopes the key: length-prefixed, so no (name, scope) pair
        // spells another.
        let prefix = b"function:";
        let mut principal =
            Vec::with_capacity(prefix.len() + 8 + self.name.len() + self.scope.as_bytes().len());
        principal.extend_from_slice(prefix);
        principal.extend_from_slice(&(self.name.len() as u64).to_be_bytes());
        principal.extend_from_slice(self.name.as_bytes());
        principal.extend_from_slice(self.scope.as_bytes());
        RecordId::new(&Scope::new(principal), key)
    }

    /// The record a call with this input (as JSON text) is kept under, and what makes two
    /// calls the same: for callers that run the protocol themselves (other languages'
    /// bindings), so that their records are [`Engine::run`]'s.
    ///
    /// # Errors
    /// The input is not JSON, has no canonical form, or gives no usable key.
    pub fn identify_json(&self, input: &[u8]) -> Result<(RecordId, Fingerprint), String> {
        let (id, canonical) = self
            .identify_encoded(input.to_vec())
            .map_err(|refused| refused.to_string())?;
        Ok((id, self.fingerprint(&canonical)))
    }

    /// The record this call of `input` is kept under, and the input's canonical JSON.
    fn identify(&self, input: &impl Serialize) -> Result<(RecordId, Vec<u8>), Refused> {
        self.identify_encoded(serde_json::to_vec(input).map_err(Refused::Input)?)
    }

    fn identify_encoded(&self, encoded: Vec<u8>) -> Result<(RecordId, Vec<u8>), Refused> {
        let document = Json::parse(&encoded).map_err(Refused::Json)?;
        let canonical = document.canonical();
        let key = match &self.key {
            KeySource::Given(key) => key.clone(),
            KeySource::Member(pointer) => {
                let value: serde_json::Value =
                    serde_json::from_slice(&encoded).map_err(Refused::Input)?;
                let member = match value.pointer(pointer) {
                    Some(serde_json::Value::String(text)) => text.clone(),
                    Some(number @ serde_json::Value::Number(_)) => number.to_string(),
                    _ => return Err(Refused::NoKey(pointer.clone())),
                };
                IdempotencyKey::parse(member.as_bytes(), KeyPolicy::Any).map_err(Refused::Key)?
            }
            KeySource::Input => {
                let digest = hex::encode(Sha256::digest(&canonical));
                IdempotencyKey::parse(digest.as_bytes(), KeyPolicy::Any).map_err(Refused::Key)?
            }
        };
        Ok((self.record_id(&key), canonical))
    }

    /// What makes two calls the same: the function and its input.
    fn fingerprint(&self, canonical_input: &[u8]) -> Fingerprint {
        Fingerprint::builder()
            .operation(&self.name)
            .content_type(Some(JSON.as_bytes()))
            .part("json-body", canonical_input)
            .finish()
    }
}

/// Why a call was refused before anything ran.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the input does not serialize to JSON: {0}")]
    Input(#[source] serde_json::Error),
    #[error("the input's JSON has no canonical form: {0}")]
    Json(#[source] JsonError),
    #[error("the input has no string or number at {0}, where the key was to come from")]
    NoKey(String),
    #[error("not a usable idempotency key: {0}")]
    Key(#[source] KeyError),
}

/// Why [`Engine::run`] did not answer the function's result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError<E> {
    /// The function ran and returned this error; the key was released, so a retry runs it
    /// again.
    #[error("the function failed: {0}")]
    Failed(E),
    /// Another call with the same key and input is running; retry after this long.
    #[error("a call with this key is running; retry in {retry_after:?}")]
    InFlight {
        /// How long until the other call's lease lapses unless renewed.
        retry_after: Duration,
    },
    /// A call with this key began and its runner died without a result: the function may
    /// have taken effect. Nothing ran; check the effect, then resolve the key (`idem
    /// records`) or use another.
    #[error("a call with this key began and its outcome is unknown; nothing ran")]
    OutcomeUnknown,
    /// The key was used with another input: nothing ran.
    #[error("the key was used with another input ({differing:?} differ); nothing ran")]
    Mismatch {
        /// The parts that differ.
        differing: Vec<FingerprintPart>,
    },
    /// The input gave no usable key or fingerprint: nothing ran.
    #[error("the call was refused: {0}")]
    Refused(String),
    /// The store could not answer: nothing ran (the engine fails closed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The result ran and was kept, but could not be kept as JSON (on the first call) or
    /// does not decode as the type asked for (on a replay, after the type changed).
    #[error("the result does not round-trip as JSON: {0}")]
    Output(#[source] serde_json::Error),
}

impl<S: Store> Engine<S> {
    /// Runs `function` at most once for `call`'s key, and answers its result; a retry with
    /// the same key and input answers the first call's result, decoded as `T`, without
    /// running anything. See the [module documentation](crate::function).
    ///
    /// # Errors
    /// [`RunError`]: the function's own error (key released), a call in flight, an unknown
    /// outcome, a key reused with another input, an unusable input, or the store.
    pub async fn run<I, T, E, F, Fut>(
        &self,
        call: &Call,
        input: &I,
        function: F,
    ) -> Result<T, RunError<E>>
    where
        I: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let (id, canonical) = call
            .identify(&input)
            .map_err(|refused| RunError::Refused(refused.to_string()))?;
        let mut options = self.options();
        if let Some(ttl) = call.ttl {
            options.ttl = ttl;
        }
        let mut execution = match self
            .begin_with(id, call.fingerprint(&canonical), options)
            .await?
        {
            Begin::Acquired(execution) => execution,
            Begin::Replay(stored) => {
                let body = stored.body.unwrap_or_default();
                return serde_json::from_slice(&body).map_err(RunError::Output);
            }
            Begin::InFlight { retry_after } => return Err(RunError::InFlight { retry_after }),
            Begin::OutcomeUnknown => return Err(RunError::OutcomeUnknown),
            Begin::Mismatch { differing } => return Err(RunError::Mismatch { differing }),
        };
        // Cancelled or panicking mid-way, the function may have taken effect: its key then
        // lapses into an unknown outcome, never into a second run.
        execution.abandon_if_dropped();
        match function().await {
            Ok(output) => {
                let encoded = match serde_json::to_vec(&output) {
                    Ok(encoded) => encoded,
                    Err(error) => {
                        // It ran: keep that, with nothing to replay, rather than run again.
                        let _ = execution.complete(stored(None)).await;
                        return Err(RunError::Output(error));
                    }
                };
                // Completions retry through store faults in the background: the caller has
                // its result either way.
                let _ = execution.complete(stored(Some(encoded))).await;
                Ok(output)
            }
            Err(error) => {
                let _ = execution.release().await;
                Err(RunError::Failed(error))
            }
        }
    }
}

/// A function's result (JSON text, or `None` when it could not be kept) as a record keeps
/// it: what [`Engine::run`] stores, for bindings that run the protocol themselves.
#[must_use]
pub fn stored(body: Option<Vec<u8>>) -> StoredResponse {
    StoredResponse {
        status: 200,
        headers: vec![(
            "content-type".to_owned(),
            bytes::Bytes::from_static(JSON.as_bytes()),
        )],
        body: body.map(Into::into),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DEFAULT_TTL, MemoryStore};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Serialize)]
    struct Message {
        id: u64,
        amount: u32,
    }

    #[tokio::test]
    async fn a_redelivered_message_runs_once_and_replays_its_typed_result() {
        let engine = Engine::new(MemoryStore::new());
        let call = Call::new("charge").key_from("/id");
        let runs = AtomicUsize::new(0);
        for _ in 0..3 {
            let total: Vec<u32> = engine
                .run(&call, &Message { id: 7, amount: 5 }, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(vec![5, 10])
                })
                .await
                .unwrap();
            assert_eq!(total, [5, 10]);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // The same key with another input: refused, nothing runs.
        let other = engine
            .run(&call, &Message { id: 7, amount: 6 }, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<Vec<u32>, String>(vec![])
            })
            .await;
        assert!(matches!(other, Err(RunError::Mismatch { .. })), "{other:?}");
        // Another function with the same key is another record.
        let refund: u32 = engine
            .run(
                &Call::new("refund").key_from("/id"),
                &Message { id: 7, amount: 6 },
                || async { Ok::<_, String>(1) },
            )
            .await
            .unwrap();
        assert_eq!(refund, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Operators find the record by the function's name and the key.
        let key = IdempotencyKey::parse(b"7", KeyPolicy::Any).unwrap();
        let snapshot = engine.status(call.record_id(&key)).await.unwrap().unwrap();
        assert!(snapshot.lease_left().is_none(), "completed");
    }

    #[tokio::test]
    async fn a_failure_releases_the_key_and_a_retry_runs_again() {
        let engine = Engine::new(MemoryStore::new());
        let call = Call::new("job");
        let first = engine
            .run(&call, &"input", || async { Err::<u8, _>("not yet") })
            .await;
        assert!(matches!(first, Err(RunError::Failed("not yet"))));
        let second: u8 = engine
            .run(&call, &"input", || async { Ok::<_, &str>(2) })
            .await
            .unwrap();
        assert_eq!(second, 2);
    }

    #[tokio::test]
    async fn the_input_keys_the_call_in_any_member_order_and_a_missing_member_is_refused() {
        let engine = Engine::new(MemoryStore::new());
        let call = Call::new("hash");
        let runs = Arc::new(AtomicUsize::new(0));
        for input in [
            serde_json::json!({"a": 1, "b": 2}),
            serde_json::from_str::<serde_json::Value>(r#"{"b":2.0,"a":1}"#).unwrap(),
        ] {
            let runs = Arc::clone(&runs);
            let _: u8 = engine
                .run(&call, &input, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(1)
                })
                .await
                .unwrap();
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "one call, whatever the order"
        );
        let missing = engine
            .run(
                &Call::new("x").key_from("/id"),
                &serde_json::json!({}),
                || async { Ok::<u8, String>(1) },
            )
            .await;
        assert!(matches!(missing, Err(RunError::Refused(_))), "{missing:?}");
    }

    #[tokio::test]
    async fn a_call_in_flight_is_told_so_and_a_vanished_runner_leaves_an_unknown_outcome() {
        let engine = Engine::builder(MemoryStore::new())
            .lease(Duration::from_millis(50))
            .ttl(DEFAULT_TTL)
            .build();
        let call = Call::new("slow").key(IdempotencyKey::parse(b"k", KeyPolicy::Any).unwrap());
        let (started, wait) = tokio::sync::oneshot::channel::<()>();
        let running = {
            let (engine, call) = (engine.clone(), call.clone());
            tokio::spawn(async move {
                engine
                    .run(&call, &1, || async move {
                        let _ = started.send(());
                        std::future::pending::<Result<u8, String>>().await
                    })
                    .await
            })
        };
        wait.await.unwrap();
        let during = engine
            .run(&call, &1, || async { Ok::<u8, String>(1) })
            .await;
        assert!(
            matches!(during, Err(RunError::InFlight { .. })),
            "{during:?}"
        );
        // The runner vanishes (its task is gone): its lease lapses, and nothing runs again.
        running.abort();
        let _ = running.await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = engine
            .run(&call, &1, || async { Ok::<u8, String>(1) })
            .await;
        assert!(matches!(after, Err(RunError::OutcomeUnknown)), "{after:?}");
    }
}
