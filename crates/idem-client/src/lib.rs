//! A client for APIs behind idem (the `idem proxy` gateway or the tower layer) that makes
//! retries safe: each call is **one logical attempt** with one `Idempotency-Key`, generated
//! once (a UUID v4) and sent again on every retry, so the server executes it at most once
//! however many times the network fails.
//!
//! What is retried, with exponential backoff and full jitter:
//! - connection errors and timeouts (the request may or may not have arrived: the key makes
//!   the retry safe);
//! - `409` (the first attempt is still executing), honouring `Retry-After`, but not idem's
//!   409 `outcome_unknown` (the first attempt's process died mid-way: the key is never
//!   executed again on its own, so retrying only brings the same answer back);
//! - `5xx`, unless the answer is a replay (`X-Idempotent-Replayed: true`): a stored 5xx (a
//!   504 whose outcome is unknown, say) would only come back again.
//!
//! Any other answer is returned as it is: 4xx mean the request itself is wrong, and retrying
//! it cannot help.
//!
//! # Modules
//!
//! | module | what lives there |
//! |---|---|
//! | `lib.rs` | [`IdemClient`]: the base URL, the connection pool, and starting an attempt |
//! | `attempt` | [`Attempt`]: one logical attempt, its key and its retry loop; [`IdemResponse`], [`ClientError`] |
//! | `retry` | [`RetryPolicy`]: how many retries, and the backoff with full jitter between them |
//!
//! ```no_run
//! use idem_client::IdemClient;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = IdemClient::new("http://127.0.0.1:8080")?;
//! let response = client
//!     .post("/charges")
//!     .json(&serde_json::json!({"amount": 1000, "currency": "eur"}))?
//!     .send()
//!     .await?;
//! println!("{} (replayed: {}, key {})", response.status(), response.replayed(), response.key());
//! # Ok(())
//! # }
//! ```

mod attempt;
mod retry;

pub use attempt::{Attempt, ClientError, IdemResponse};
pub use retry::RetryPolicy;

use http::Method;
use reqwest::Url;

/// A client for one API base URL. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct IdemClient {
    http: reqwest::Client,
    base: Url,
    retry: RetryPolicy,
}

impl IdemClient {
    /// A client for `base_url` with the default [`RetryPolicy`].
    ///
    /// # Errors
    /// `base_url` is not an absolute URL.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::with_http_client(base_url, reqwest::Client::new())
    }

    /// A client over a `reqwest::Client` configured elsewhere (timeouts, proxies, TLS).
    ///
    /// # Errors
    /// `base_url` is not an absolute URL.
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> Result<Self, ClientError> {
        let base = Url::parse(base_url)
            .map_err(|error| ClientError::InvalidUrl(format!("{base_url}: {error}")))?;
        Ok(Self {
            http,
            base,
            retry: RetryPolicy::default(),
        })
    }

    /// Uses `policy` for every call.
    #[must_use]
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Starts one logical attempt of `method` on `path` (relative to the base URL).
    #[must_use]
    pub fn request(&self, method: Method, path: &str) -> Attempt {
        let url = self
            .base
            .join(path)
            .map_err(|error| format!("{path}: {error}"));
        Attempt::new(self.http.clone(), url, method, self.retry.clone())
    }

    /// `POST path` as one logical attempt.
    #[must_use]
    pub fn post(&self, path: &str) -> Attempt {
        self.request(Method::POST, path)
    }

    /// `PUT path` as one logical attempt.
    #[must_use]
    pub fn put(&self, path: &str) -> Attempt {
        self.request(Method::PUT, path)
    }

    /// `PATCH path` as one logical attempt.
    #[must_use]
    pub fn patch(&self, path: &str) -> Attempt {
        self.request(Method::PATCH, path)
    }

    /// `DELETE path` as one logical attempt.
    #[must_use]
    pub fn delete(&self, path: &str) -> Attempt {
        self.request(Method::DELETE, path)
    }
}
