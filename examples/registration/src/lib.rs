//! Seed 000, section 4: `register()` takes an optional idempotency key, which must be a UUID
//! v4. This example uses the engine directly, without the HTTP layer, the way any Rust code
//! (a queue consumer, a gRPC handler) can:
//!
//! - a retried registration with the same key returns the same account, created once;
//! - the same key with a different e-mail is refused ([`RegisterError::KeyReused`], 422 over
//!   HTTP): a key names one attempt, never two different ones;
//! - a key that is not a UUID v4 is refused before anything happens (400).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use idem_core::{
    Begin, Engine, Fingerprint, IdempotencyKey, KeyError, KeyPolicy, RecordId, Scope, Store,
    StoreError, StoredResponse,
};
use serde::{Deserialize, Serialize};

/// The `RegisterRequest` of the seed, with its new optional key.
#[derive(Debug, Clone, Deserialize)]
pub struct RegisterRequest {
    /// The new account's e-mail.
    pub email: String,
    /// One registration attempt: a UUID v4, reused on every retry.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A registered account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Account {
    /// A new id per account created.
    pub account_id: String,
    /// As registered.
    pub email: String,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The key is not a UUID v4 (or not a key at all).
    #[error("invalid idempotency key: {0}")]
    InvalidKey(#[from] KeyError),
    /// The key was used for a registration with another e-mail.
    #[error("this idempotency key was used for another registration")]
    KeyReused,
    /// The same registration is in progress elsewhere; retry shortly.
    #[error("this registration is in progress; retry shortly")]
    InProgress,
    /// An earlier registration with this key began and its process died mid-way: the
    /// account may exist. Look it up, then use a new key.
    #[error(
        "an earlier registration with this key did not finish; check whether the account exists, then use a new key"
    )]
    OutcomeUnknown,
    /// The e-mail has an account already (without a key, or with another key).
    #[error("an account exists for this e-mail")]
    EmailTaken,
    /// The idempotency store did not answer; nothing was created.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored account could not be read back.
    #[error("stored registration unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// Registers accounts, at most once per idempotency key.
pub struct Registrar<S: Store> {
    engine: Engine<S>,
    accounts: Mutex<HashMap<String, Account>>,
}

impl<S: Store> Registrar<S> {
    /// A registrar over `engine`.
    pub fn new(engine: Engine<S>) -> Self {
        Self {
            engine,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// How many accounts exist.
    pub fn accounts(&self) -> usize {
        self.accounts.lock().map_or(0, |accounts| accounts.len())
    }

    fn create(&self, email: &str) -> Result<Account, RegisterError> {
        let mut accounts = self
            .accounts
            .lock()
            .map_err(|_| RegisterError::EmailTaken)?;
        if accounts.contains_key(email) {
            return Err(RegisterError::EmailTaken);
        }
        let account = Account {
            account_id: format!("acct_{}", accounts.len() + 1),
            email: email.to_owned(),
        };
        accounts.insert(email.to_owned(), account.clone());
        Ok(account)
    }

    /// Registers `request.email`; with a key, at most once per key.
    ///
    /// # Errors
    /// See [`RegisterError`].
    pub async fn register(&self, request: &RegisterRequest) -> Result<Account, RegisterError> {
        let Some(key) = &request.idempotency_key else {
            return self.create(&request.email);
        };
        let key = IdempotencyKey::parse(key.as_bytes(), KeyPolicy::UuidV4)?;
        let id = RecordId::new(&Scope::new("registration"), &key);
        let fingerprint = Fingerprint::builder()
            .part("email", request.email.as_bytes())
            .finish();
        match self.engine.begin(id, fingerprint).await? {
            Begin::Acquired(execution) => match self.create(&request.email) {
                Ok(account) => {
                    let body = serde_json::to_vec(&account)?;
                    let stored = StoredResponse {
                        status: 201,
                        headers: Vec::new(),
                        body: Some(body.into()),
                    };
                    // On a store fault the completion carries on in the background: the
                    // account exists, so the caller gets it either way.
                    let _ = execution.complete(stored).await;
                    Ok(account)
                }
                Err(error) => {
                    // Nothing was created: free the key so a corrected retry may use it.
                    let _ = execution.release().await;
                    Err(error)
                }
            },
            Begin::Replay(stored) => Ok(serde_json::from_slice(
                stored.body.as_deref().unwrap_or_default(),
            )?),
            Begin::InFlight { .. } => Err(RegisterError::InProgress),
            Begin::OutcomeUnknown => Err(RegisterError::OutcomeUnknown),
            Begin::Mismatch { .. } => Err(RegisterError::KeyReused),
            _ => Err(RegisterError::InProgress),
        }
    }
}

impl IntoResponse for RegisterError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::InvalidKey(_) => StatusCode::BAD_REQUEST,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InProgress | Self::EmailTaken | Self::OutcomeUnknown => StatusCode::CONFLICT,
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(serde_json::json!({"error": self.to_string()}))).into_response()
    }
}

/// `POST /register`: the key comes from the `Idempotency-Key` header or the body's
/// `idempotency_key`.
async fn register_route<S: Store>(
    State(registrar): State<std::sync::Arc<Registrar<S>>>,
    headers: HeaderMap,
    Json(mut request): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<Account>), RegisterError> {
    if let Some(key) = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
    {
        request.idempotency_key = Some(key.to_owned());
    }
    Ok((
        StatusCode::CREATED,
        Json(registrar.register(&request).await?),
    ))
}

/// The HTTP face of the registrar.
pub fn app<S: Store>(registrar: std::sync::Arc<Registrar<S>>) -> Router {
    Router::new()
        .route("/register", post(register_route::<S>))
        .with_state(registrar)
}
