//! The coordination API's documents: the JSON contract, with OpenAPI schemas. Requests are
//! parsed by the extractors (`extract`); answers are built in one place (`respond`); errors
//! are `error::ApiError`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::formats::LeaseTokenFormat;

/// What to execute: `POST /v1/idempotency/execute` and `POST /v1/idempotency/records`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperationRequest {
    /// A registered operation, e.g. `payment.charge`.
    #[schema(min_length = 1, example = "payment.charge")]
    pub operation: String,
    /// The operation's input; with the operation, what makes two requests the same. Kept as
    /// sent: checked to be JSON once, hashed in canonical form, and forwarded as it came.
    #[schema(value_type = Value)]
    pub payload: Box<RawValue>,
}

/// Renew a lease while executing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The token from the begin answer.
    #[schema(value_type = LeaseTokenFormat)]
    pub lease_token: String,
}

/// Store the result of an execution the caller ran itself.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    /// The token from the begin answer.
    #[schema(value_type = LeaseTokenFormat)]
    pub lease_token: String,
    /// The result, replayed to every retry as sent (numbers keep every digit).
    #[schema(value_type = serde_json::Value)]
    pub result: Box<RawValue>,
}

/// `?lease_token=…` on a release.
#[derive(Debug, Deserialize)]
pub struct ReleaseQuery {
    /// The token from the begin answer.
    pub lease_token: String,
}

/// Every answer that is not an error; its `status` member says which it is.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StatusBody {
    /// The execution finished; `result` is what the operation returned (200). Returned to
    /// the first request and replayed, identical, to every retry.
    #[schema(title = "Completed")]
    Completed {
        /// The operation's JSON result, as it answered it (numbers keep every digit).
        #[schema(value_type = serde_json::Value)]
        result: Box<RawValue>,
    },
    /// Another request with this key is executing; retry after `Retry-After` (202).
    #[schema(title = "Processing")]
    Processing,
    /// The caller owns the key (201): execute, then complete or release with `lease_token`.
    #[schema(title = "Acquired")]
    Acquired {
        /// The fencing token to complete or release with (a decimal 64-bit integer, as a
        /// string so that JavaScript clients keep every digit).
        #[schema(value_type = LeaseTokenFormat)]
        lease_token: String,
        /// When the lease lapses unless renewed (Unix milliseconds, by this instance's clock:
        /// an estimate; `lease_ms` is exact). A lapsed lease makes the key's outcome unknown.
        lease_expires_at: u64,
        /// How long the lease lasts from now, in milliseconds: renew it
        /// (`POST /v1/idempotency/records/{key}/lease`) every third of this while executing.
        lease_ms: u64,
    },
    /// The lease was renewed (200).
    #[schema(title = "Renewed")]
    Renewed {
        /// How long the lease lasts from now, in milliseconds: renew again well before.
        lease_ms: u64,
    },
}
