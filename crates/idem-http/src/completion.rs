//! Storing what the inner service answered: buffering the body up to the storage limit, and
//! completing the key even when the request is abandoned half-way.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use idem_core::{
    BoxError, Engine, Lease, LeaseToken, RecordId, Store, StoredResponse, TransitionOutcome,
};

use crate::layer::Config;
use crate::response::{Buffered, ResponseBody, buffer_body, storable_headers};
use crate::service::Outcome;

/// What an [`Executed`] guard must still do with the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    /// Complete it (the default: the operation executed).
    Complete,
    /// Release it (a 5xx the layer is told not to store).
    Release,
}

/// A key whose handler has produced a response. From here on the operation has executed, so
/// the key must end completed (or released, for an unstored 5xx), never left to lapse and
/// re-run: if this future is dropped before the store confirmed (the client hung up while
/// the body was read, or during the store's round trip), the guard re-issues the transition
/// in the background, with the body if it had been read, without one if it never arrived. A transition
/// applied twice is harmless: the second finds the token gone and changes nothing.
struct Executed<St: Store> {
    engine: Engine<St>,
    id: RecordId,
    token: LeaseToken,
    ttl: std::time::Duration,
    status: u16,
    headers: Vec<(String, Bytes)>,
    intent: Intent,
    /// The body once it has been read in full: what the guard stores if it must finish.
    body: Option<Bytes>,
    confirmed: bool,
}

impl<St: Store> Executed<St> {
    fn new(
        lease: Lease<St>,
        engine: Engine<St>,
        status: u16,
        headers: Vec<(String, Bytes)>,
    ) -> Self {
        let ttl = lease.ttl();
        let (id, token) = lease.detach();
        Self {
            engine,
            id,
            token,
            ttl,
            status,
            headers,
            intent: Intent::Complete,
            body: None,
            confirmed: false,
        }
    }

    fn lease(&self) -> Lease<St> {
        self.engine.resume_lease(self.id, self.token, self.ttl)
    }

    async fn finish(mut self, body: Option<Bytes>) {
        // Kept on the guard first: if this future is dropped during the store call, the
        // guard stores the same body, not an empty one.
        self.body = body;
        let result = match self.intent {
            Intent::Release => self.lease().release().await,
            Intent::Complete => {
                let stored = StoredResponse {
                    status: self.status,
                    headers: self.headers.clone(),
                    body: self.body.clone(),
                };
                self.lease().complete(stored).await
            }
        };
        self.confirmed = true;
        match result {
            Ok(TransitionOutcome::Applied) => {}
            Ok(TransitionOutcome::StaleLease) => tracing::warn!(
                "the key was taken over while this request executed (its lease lapsed); its response was not stored"
            ),
            Err(error) => tracing::error!(
                %error,
                "storing the response failed; the key stays in flight until its lease lapses, then a retry executes again"
            ),
        }
    }
}

impl<St: Store> Drop for Executed<St> {
    fn drop(&mut self) {
        if self.confirmed {
            return;
        }
        let lease = self.lease();
        let intent = self.intent;
        let stored = StoredResponse {
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            body: self.body.take(),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let result = match intent {
                    Intent::Complete => lease.complete(stored).await,
                    Intent::Release => lease.release().await,
                };
                if let Err(error) = result {
                    tracing::error!(%error, "finishing the key of an abandoned request failed; it stays in flight until its lease lapses");
                }
            });
        }
    }
}

/// Buffers the inner response up to the storage limit, stores it, and returns what the
/// client receives.
pub(crate) async fn store_response<St, ResBody>(
    response: Response<ResBody>,
    lease: Lease<St>,
    engine: &Engine<St>,
    config: &Arc<Config>,
) -> Response<ResponseBody>
where
    St: Store,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    let mut executed = Executed::new(
        lease,
        engine.clone(),
        parts.status.as_u16(),
        storable_headers(&parts.headers),
    );
    if parts.status.is_server_error() && !config.store_server_errors {
        executed.intent = Intent::Release;
    }
    // Half the lease: the body must be stored well before a retry could take the key over.
    let deadline = tokio::time::Instant::now() + engine.lease_duration() / 2;
    let buffered = buffer_body(body, config.max_stored_response, deadline).await;
    let stored_body = match &buffered {
        Buffered::Complete(bytes) => Some(bytes.clone()),
        // Too large (or broken mid-way): the execution happened, so the key is completed,
        // without a body: retries are told the response cannot be replayed, never re-run.
        Buffered::Partial(_) => None,
    };
    executed.finish(stored_body).await;
    Outcome::Executed.record();
    parts.headers.insert(
        config.replayed_header.clone(),
        HeaderValue::from_static("false"),
    );
    let body = match buffered {
        Buffered::Complete(bytes) => Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
        Buffered::Partial(body) => body,
    };
    Response::from_parts(parts, body)
}
