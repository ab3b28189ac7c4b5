//! Errors: why a store could not be set up ([`ConnectError`]), and how driver errors become
//! the engine's [`StoreError`] (unavailable: retry later; corrupted: unreadable data).

use std::time::Duration;

use idem_core::StoreError;

use crate::row::RowError;

/// Why [`PostgresStore`](crate::PostgresStore) could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection URL is malformed or names an option the driver does not know.
    #[error("invalid PostgreSQL connection URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The server refused or did not answer the connection (down, wrong address, wrong
    /// credentials, no such database). Check the URL and that the server is up.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    /// Creating or upgrading the `idem_records` table failed. The database user needs the
    /// right to create tables in its schema (or run the migrations once as a user who has).
    #[error("cannot migrate the idem schema in PostgreSQL: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The schema named for the records is not a plain lowercase SQL identifier.
    #[error(
        "invalid PostgreSQL schema name {0:?}: use lowercase letters, digits and _, not starting with a digit (at most 63)"
    )]
    InvalidSchema(String),
    /// The schema named for the records could not be created.
    #[error("cannot create the PostgreSQL schema for idem's records: {0}")]
    CreateSchema(#[source] sqlx::Error),
    /// Connecting and migrating took longer than allowed.
    #[error("PostgreSQL did not finish connecting and migrating within {0:?}")]
    TimedOut(Duration),
}

/// Sorts a driver error: data this build cannot decode is [`StoreError::Corrupted`];
/// everything else (I/O, timeouts, an exhausted pool, a server refusing the statement) is
/// [`StoreError::Unavailable`], as retrying later may succeed.
pub(crate) fn store_error(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::RowNotFound => StoreError::Corrupted(Box::new(error)),
        other => StoreError::Unavailable(Box::new(other)),
    }
}

impl From<RowError> for StoreError {
    fn from(error: RowError) -> Self {
        match error {
            RowError::Driver(error) => store_error(error),
            other => StoreError::Corrupted(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_and_pool_errors_are_unavailable_decode_errors_corrupted() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            store_error(sqlx::Error::Io(refused)),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            store_error(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            store_error(sqlx::Error::ColumnNotFound("state".into())),
            StoreError::Corrupted(_)
        ));
    }
}
