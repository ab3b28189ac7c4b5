//! Errors: why a store could not be set up ([`ConnectError`]), and how driver errors become
//! the engine's [`StoreError`] (unavailable: retry later; corrupted: unreadable data).

use std::time::Duration;

use idem_core::StoreError;
use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::codec::DecodeError;

/// Why [`RedisStore`](crate::RedisStore) could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// A URL is malformed (`redis://[user:password@]host[:port][/db]`, or `rediss://` with
    /// TLS), or no cluster node was given.
    #[error("invalid Redis connection URL: {0}")]
    InvalidUrl(#[source] RedisError),
    /// The key prefix contains `{` or `}`, which would break the hash tag that keeps a
    /// record's keys in one cluster slot.
    #[error("invalid Redis key prefix {0:?}: it must not contain '{{' or '}}'")]
    InvalidKeyPrefix(String),
    /// The server refused or did not answer the connection, or refused to load the scripts
    /// (an ACL without `SCRIPT`/`EVALSHA`). Check the URL and that the server is up.
    #[error("cannot connect to Redis: {0}")]
    Connect(#[source] RedisError),
    /// Connecting took longer than allowed.
    #[error("Redis did not finish connecting within {0:?}")]
    TimedOut(Duration),
}

/// Whether the server answered a command with a refusal (an unknown or renamed command, a
/// missing ACL permission) rather than failing to answer: asking again will not help.
pub(crate) fn refused(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::NoPerm)
            | ErrorKind::Extension
    )
}

/// Sorts a driver error: a reply or a key this build cannot read (a parse error, an
/// unexpected type, a key of another type at a record's name) is [`StoreError::Corrupted`];
/// everything else (I/O, refused connections, timeouts, a cluster that is down or
/// resharding, a read-only replica) is [`StoreError::Unavailable`], as retrying later may
/// succeed.
pub(crate) fn store_error(error: RedisError) -> StoreError {
    let unreadable = matches!(
        error.kind(),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType
    ) || error.code() == Some("WRONGTYPE");
    if unreadable {
        StoreError::Corrupted(Box::new(error))
    } else {
        StoreError::Unavailable(Box::new(error))
    }
}

impl From<DecodeError> for StoreError {
    fn from(error: DecodeError) -> Self {
        StoreError::Corrupted(Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_unavailable_and_type_errors_corrupted() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            store_error(RedisError::from(refused)),
            StoreError::Unavailable(_)
        ));
        let mismatch = RedisError::from((ErrorKind::UnexpectedReturnType, "not a hash"));
        assert!(matches!(store_error(mismatch), StoreError::Corrupted(_)));
    }
}
