//! Calling a registered operation: POST the payload as JSON to its URL, once, and classify
//! what came back by whether a retry may execute it again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use idem_core::OnLapse;
use serde_json::value::RawValue;

use crate::config::Operation;

/// Connect timeout for operation URLs; see the proxy's `CONNECT_TIMEOUT` for why it is short.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of one call.
#[derive(Debug)]
pub enum OperationReply {
    /// 2xx with a JSON body.
    Succeeded(Box<RawValue>),
    /// Never delivered (connection refused): safe to run again.
    Unreachable(String),
    /// Delivered; answered "not processed, try later" (one of `--transient-status`, 429 and
    /// 503 by default): safe to run again.
    Busy {
        /// The operation's status.
        status: StatusCode,
        /// The operation's `Retry-After`, passed on to the caller.
        retry_after: Option<HeaderValue>,
    },
    /// Delivered; refused with a 4xx of its own: its deterministic answer (the body as
    /// JSON, or as a string when it is not JSON).
    Rejected {
        /// The operation's status.
        status: StatusCode,
        /// The operation's body.
        body: Box<RawValue>,
    },
    /// Delivered; answered a 5xx (or another status that is neither success nor a refusal).
    Failed { status: StatusCode },
    /// Delivered; answered a body that is not JSON.
    InvalidResponse,
    /// Delivered; answered a body over the size limit, which is not kept.
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Delivered, no complete answer in time (or the connection broke): may have executed.
    OutcomeUnknown(String),
}

/// The registered operations and the client that calls them.
#[derive(Clone)]
pub struct Operations {
    urls: BTreeMap<String, Uri>,
    take_over: BTreeSet<String>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_response: usize,
    /// Answers that mean "not processed, try later", never kept. Only for operations that
    /// answer them before any effect: a proxy in front of an operation that answers 503
    /// after its backend ran (Envoy's "reset before headers") would let a retry run it
    /// again; take 503 off the list (`--transient-status 429`) for such operations.
    transient: Vec<StatusCode>,
}

impl Operations {
    /// Checks every URL at start-up; `https://` ones are checked against the system's roots
    /// and `ca_file`'s.
    pub fn new(
        definitions: &BTreeMap<String, Operation>,
        timeout: Duration,
        max_response: usize,
        transient: Vec<StatusCode>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let mut urls = BTreeMap::new();
        let take_over = definitions
            .iter()
            .filter(|(_, operation)| operation.on_lapse == OnLapse::TakeOver)
            .map(|(name, _)| name.clone())
            .collect();
        for (name, Operation { url, .. }) in definitions {
            anyhow::ensure!(!name.is_empty(), "an operation has an empty name");
            let uri: Uri = url.parse().map_err(|error| {
                anyhow::anyhow!("operation {name}: invalid URL {url:?}: {error}")
            })?;
            anyhow::ensure!(
                matches!(uri.scheme_str(), Some("http" | "https")),
                "operation {name}: use an http:// or https:// URL ({url})"
            );
            urls.insert(name.clone(), uri);
        }
        let mut connector = HttpConnector::new();
        // Within the operation timeout, so an unreachable operation is a clean "unreachable"
        // (key released), never an unknown outcome.
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT.min(timeout / 2)));
        connector.enforce_http(false);
        let needs_tls = urls.values().any(|uri| uri.scheme_str() == Some("https"));
        let connector = crate::tls::connector(connector, ca_file, needs_tls)?;
        Ok(Self {
            urls,
            take_over,
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            max_response,
            transient,
        })
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.urls.contains_key(name)
    }

    /// What a retry of `name` does after the instance executing it died mid-way.
    pub fn on_lapse(&self, name: &str) -> OnLapse {
        if self.take_over.contains(name) {
            OnLapse::TakeOver
        } else {
            OnLapse::ReportUnknown
        }
    }

    /// The registered names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.urls.keys().map(String::as_str)
    }

    /// POSTs `payload`, as the client sent it, to the operation once.
    pub async fn call(&self, name: &str, payload: &RawValue, key: &str) -> OperationReply {
        let Some(uri) = self.urls.get(name) else {
            return OperationReply::Unreachable(format!("unknown operation {name}"));
        };
        let body = Bytes::copy_from_slice(payload.get().as_bytes());
        let request = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Full::new(body));
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                return OperationReply::Unreachable(format!("cannot build the request: {error}"));
            }
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            if self.transient.contains(&status) {
                // Not processed: its body says nothing that is kept, so none is read.
                let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
                return Ok(Err(OperationReply::Busy {
                    status,
                    retry_after,
                }));
            }
            // Read no more than the limit: an operation that answers gigabytes must not hold
            // the service's memory, and an answer that large is not kept anyway.
            let body = Limited::new(response.into_body(), self.max_response)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes);
            Ok::<_, hyper_util::client::legacy::Error>(Ok((status, body)))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                OperationReply::OutcomeUnknown(format!("no answer within {:?}", self.timeout))
            }
            Ok(Err(error)) if error.is_connect() => OperationReply::Unreachable(error.to_string()),
            Ok(Err(error)) => OperationReply::OutcomeUnknown(error.to_string()),
            Ok(Ok(Err(busy))) => busy,
            Ok(Ok(Ok((status, body)))) => self.classify(status, body),
        }
    }

    /// What a delivered answer that is not "not processed" means for its key.
    fn classify(
        &self,
        status: StatusCode,
        body: Result<Bytes, Box<dyn std::error::Error + Send + Sync>>,
    ) -> OperationReply {
        match (status, body) {
            (_, Err(error)) if error.is::<LengthLimitError>() => OperationReply::TooLarge {
                limit: self.max_response,
            },
            (_, Err(error)) => {
                OperationReply::OutcomeUnknown(format!("the answer broke off: {error}"))
            }
            (status, Ok(body)) if status.is_client_error() => OperationReply::Rejected {
                status,
                body: as_json(&body),
            },
            (status, Ok(_)) if !status.is_success() => OperationReply::Failed { status },
            (_, Ok(body)) if body.is_empty() => OperationReply::Succeeded(as_json(b"null")),
            // Kept as the operation wrote it: parsing into a `Value` would round numbers
            // through f64.
            (_, Ok(body)) => match serde_json::from_slice::<Box<RawValue>>(&body) {
                Ok(value) => OperationReply::Succeeded(value),
                Err(_) => OperationReply::InvalidResponse,
            },
        }
    }
}

/// `body` as JSON, kept as written; a body that is not JSON becomes a JSON string of its text.
fn as_json(body: &[u8]) -> Box<RawValue> {
    serde_json::from_slice::<Box<RawValue>>(body)
        .or_else(|_| serde_json::value::to_raw_value(&String::from_utf8_lossy(body)))
        .unwrap_or_else(|_| {
            // A string always serialises; keep the function total anyway.
            RawValue::from_string("null".to_owned()).unwrap_or_default()
        })
}
