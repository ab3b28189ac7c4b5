//! Storing what the inner service answered: buffering the body up to the storage limit, and
//! finishing the key through its [`Execution`] guard, which completes it even when the
//! request is abandoned half-way.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use idem_core::{BoxError, Execution, Finish, Store, StoredResponse};

use crate::body::{Buffered, ResponseBody, buffer_body};
use crate::config::Config;
use crate::headers::stored_headers;
use crate::metrics::Disposition;

/// Buffers the inner response up to the storage limit, stores it, and returns what the
/// client receives.
///
/// From the moment the inner service answered, the operation has executed: the key must end
/// completed (or released, for a 5xx the layer is told not to store), never left to lapse.
/// So before the body is read the guard is told to complete the key without a body if this
/// future is dropped (the client hung up mid-body), and the lease keeps being renewed
/// however long the body takes.
pub(crate) async fn store_response<St, ResBody>(
    response: Response<ResBody>,
    mut execution: Execution<St>,
    config: &Arc<Config>,
) -> Response<ResponseBody>
where
    St: Store,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    let release = config.transient_statuses.contains(&parts.status)
        || (parts.status.is_server_error() && !config.store_server_errors);
    let mut stored = StoredResponse {
        status: parts.status.as_u16(),
        headers: stored_headers(&parts.headers, &config.replayed_headers),
        body: None,
    };
    if !release {
        execution.complete_if_dropped(stored.clone());
    }
    let deadline = tokio::time::Instant::now() + config.body_buffer_timeout;
    let buffered = buffer_body(body, config.max_stored_response, deadline).await;
    if let Buffered::Complete(bytes) = &buffered {
        stored.body = Some(bytes.clone());
    }
    // Too large, too slow or broken mid-way: the execution happened, so the key is
    // completed without a body: retries are told the response cannot be replayed, never
    // re-run.
    let finish = if release {
        execution.release().await
    } else {
        execution.complete(stored).await
    };
    match finish {
        Finish::Done => {}
        Finish::LeaseLost => tracing::error!(
            "the key was taken over or resolved while this request executed; its response was not stored"
        ),
        Finish::Retrying(error) => tracing::warn!(
            %error,
            "storing the response failed; retrying in the background while the lease is renewed"
        ),
        _ => {}
    }
    Disposition::Executed.record();
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
