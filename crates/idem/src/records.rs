//! Looking up and resolving one record by its key, for operators: `idem records` on the
//! command line and `/records/{key}` on the admin listener (never the public one).
//!
//! Record ids are hashes of the caller's credential and the key, so the tool hashes the same
//! way: give the value of the header that scopes requests (`Authorization`, or
//! `--scope-header`'s), or nothing for requests that had none. A key whose execution's owner
//! died is resolved by releasing it (the next retry executes) or completing it with a given
//! answer (every retry replays it). Resolutions are refused while an owner may be alive (its
//! lease live, or lapsed less than a lease ago), fence the old owner off, and are logged.

use bytes::Bytes;
use idem_core::{
    Engine, IdempotencyKey, KeyPolicy, RecordId, RecordSnapshot, RecordState, Resolution, Resolved,
    Scope, StoredResponse,
};
use serde_json::{Value, json};

use idem_core::DynStore;

/// Which record: the credential that scoped the request (if any), or the idempotent
/// function it belongs to, and the key.
#[derive(Debug, Clone)]
pub struct RecordRef {
    /// The value of the scoping header, `None` for the anonymous scope.
    pub credential: Option<Vec<u8>>,
    /// The function (`Engine::run`'s `Call`, Python's `@idempotent_function`) whose key it
    /// is, instead of an HTTP request's.
    pub function: Option<String>,
    /// The idempotency key as the client sent it.
    pub key: String,
}

impl RecordRef {
    /// The record id the layer derives for these.
    pub fn id(&self) -> anyhow::Result<RecordId> {
        let key = IdempotencyKey::parse(self.key.as_bytes(), KeyPolicy::Any)
            .map_err(|error| anyhow::anyhow!("invalid key {:?}: {error}", self.key))?;
        if let Some(name) = &self.function {
            return Ok(idem_core::Call::new(name.clone()).record_id(&key));
        }
        let scope = self
            .credential
            .as_deref()
            .map_or_else(Scope::anonymous, Scope::from_secret);
        Ok(RecordId::new(&scope, &key))
    }
}

/// A record as JSON for people and scripts.
pub fn describe(id: RecordId, snapshot: Option<&RecordSnapshot>) -> Value {
    let Some(snapshot) = snapshot else {
        return json!({ "record_id": id.to_hex(), "state": "absent" });
    };
    let expires_in_ms = millis(snapshot.expires_in());
    match &snapshot.record.state {
        RecordState::InFlight { .. } => {
            let lease_left = snapshot.lease_left().unwrap_or_default();
            json!({
                "record_id": id.to_hex(),
                "state": if lease_left.is_zero() { "outcome_unknown" } else { "in_flight" },
                "lease_left_ms": millis(lease_left),
                "expires_in_ms": expires_in_ms,
            })
        }
        RecordState::Completed { response, .. } => json!({
            "record_id": id.to_hex(),
            "state": "completed",
            "expires_in_ms": expires_in_ms,
            "response": {
                "status": response.status,
                "headers": response.headers.iter()
                    .map(|(name, value)| json!([name, String::from_utf8_lossy(value)]))
                    .collect::<Vec<_>>(),
                "body": response.body.as_ref().map(|body| String::from_utf8_lossy(body).into_owned()),
            },
        }),
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Reads a record.
pub async fn show(engine: &Engine<DynStore>, record: &RecordRef) -> anyhow::Result<Value> {
    let id = record.id()?;
    let snapshot = engine.status(id).await?;
    Ok(describe(id, snapshot.as_ref()))
}

/// A response an operator completes a key with.
pub fn response(status: u16, headers: Vec<(String, String)>, body: String) -> StoredResponse {
    StoredResponse {
        status,
        headers: headers
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), Bytes::from(value)))
            .collect(),
        body: Some(Bytes::from(body)),
    }
}

/// Resolves a key whose execution's owner vanished; logs what was done.
///
/// # Errors
/// The key is invalid, the store did not answer, or the key is not resolvable (absent,
/// completed, or still owned by a live execution): the error says which.
pub async fn resolve(
    engine: &Engine<DynStore>,
    record: &RecordRef,
    resolution: Resolution,
    by: &str,
) -> anyhow::Result<Value> {
    let id = record.id()?;
    let action = match &resolution {
        Resolution::Release => "release".to_owned(),
        Resolution::Complete(response) => format!("complete with status {}", response.status),
        _ => "resolve".to_owned(),
    };
    match engine.resolve(id, resolution).await? {
        Resolved::Applied => {
            tracing::warn!(record = %id, action, by, "idempotency record resolved by an operator");
            let snapshot = engine.status(id).await?;
            Ok(describe(id, snapshot.as_ref()))
        }
        Resolved::StillRunning { lease_left } => anyhow::bail!(
            "record {id} may still be executing (its lease is live, or lapsed less than a lease ago and its owner may come back): resolving it could run the operation twice; nothing changed, try again in {} ms",
            lease_left.as_millis()
        ),
        Resolved::NotInFlight(None) => {
            anyhow::bail!("no record for this key and credential: nothing to resolve")
        }
        Resolved::NotInFlight(Some(_)) => anyhow::bail!(
            "record {id} is completed: its answer is final and is replayed; nothing changed"
        ),
        _ => anyhow::bail!("record {id}: unexpected answer; nothing changed"),
    }
}
