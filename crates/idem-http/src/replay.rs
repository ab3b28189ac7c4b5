//! Answering from the store: the stored status, headers and body, as they were first sent.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use idem_core::StoredResponse;

use crate::body::ResponseBody;
use crate::headers::ReplayedHeaders;

/// Rebuilds the response a replay returns. Headers the store returns that are no longer
/// valid HTTP (impossible unless the store was tampered with) are dropped, and so is every
/// header `replayed` would not store today: a record written by an earlier version, or before
/// the list was narrowed, never replays a `Set-Cookie` the current settings keep back.
pub(crate) fn replay_response(
    stored: &StoredResponse,
    body: Bytes,
    replayed: &ReplayedHeaders,
) -> Response<ResponseBody> {
    let mut response = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() =
        StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in &stored.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value.clone()),
        ) && replayed.stores(&name)
        {
            headers.append(name, value);
        }
    }
    response
}
