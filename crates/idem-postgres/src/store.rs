//! [`PostgresStore`]: the [`Store`] implementation over a connection pool, how it connects,
//! and its embedded schema migrations.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use idem_core::store::transition::{self, Write};
use idem_core::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, DurabilityRisk, FinishListener, LeaseToken,
    OnLapse, RecordId, RecordSnapshot, Store, StoreError, TransitionOutcome, Watch,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};

use crate::announce;
use crate::durability::DurabilitySettings;
use crate::error::{ConnectError, store_error};
use crate::row::{duration_to_sql, now_from_row, record_from_row, timestamp_to_sql, token_to_sql};
use crate::sql;

/// Connections per pool unless [`PostgresStoreBuilder::max_connections`] says otherwise.
/// Each operation holds a connection for one round trip, so a few connections carry
/// thousands of requests per second; ten instances with ten each stay within PostgreSQL's
/// default `max_connections` of 100.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// How long an operation waits for a pooled connection, opening one if needed, before it
/// answers [`StoreError::Unavailable`]. A healthy pool hands one out in microseconds; this
/// only fires when the server is down or the pool is exhausted, and it is short so that the
/// HTTP layer answers 503 well before a client's own timeout.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one operation may take in all, connection included, before it answers
/// [`StoreError::Unavailable`]. Longer than [`ACQUIRE_TIMEOUT`] so that a down server is
/// reported by the pool with its cause; this bound catches a server that accepted the
/// statement and went silent (a network partition without a reset), which would otherwise
/// hang the request.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`PostgresStore::connect`] may take: the first connection, then the migrations,
/// which may wait for another instance that is migrating at the same moment.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The table that records which migrations ran: idem's own, so that it never mixes with the
/// application's sqlx migrations in the same database (same version numbers, or versions it
/// does not know).
pub const MIGRATIONS_TABLE: &str = "_idem_migrations";

/// `sweep_expired` batches larger than this are cut down: one `DELETE` holds its row locks
/// until it commits, and the sweeper loops anyway.
const MAX_SWEEP_BATCH: i64 = 10_000;

/// A [`Store`] in a PostgreSQL table, `idem_records`, shared by every instance pointed at the
/// same database. Cloning it shares the pool.
///
/// Every lease and expiry is decided by the database server's clock (`clock_timestamp()`),
/// never by this instance's, so instances with skewed clocks never disturb each other.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// This process's subscription to announced finishes, started by the first watch.
    listener: Arc<FinishListener>,
    /// A clock that replaces the server's, for tests only; see
    /// [`PostgresStoreBuilder::clock`].
    clock: Option<Arc<dyn Clock>>,
}

/// Options for a [`PostgresStore`], from [`PostgresStore::builder`].
#[derive(Clone, Debug)]
pub struct PostgresStoreBuilder {
    url: String,
    max_connections: u32,
    schema: Option<String>,
    ssl_root_cert: Option<std::path::PathBuf>,
    migrate: bool,
    clock: Option<Arc<dyn Clock>>,
}

impl PostgresStoreBuilder {
    /// The most connections the pool opens, at least one (default
    /// [`DEFAULT_MAX_CONNECTIONS`]).
    #[must_use]
    pub fn max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections.max(1);
        self
    }

    /// Keeps the records in this schema (created if missing) instead of the database's
    /// default (`public`), so that several deployments share one database without sharing
    /// keys. A lowercase SQL identifier: letters, digits and `_`, not starting with a digit.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// The CA certificate (PEM file) that the server's certificate is checked against under
    /// `sslmode=verify-ca` or `verify-full` (as the URL's `sslrootcert`, which wins).
    #[must_use]
    pub fn ssl_root_cert(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ssl_root_cert = Some(path.into());
        self
    }

    /// Whether [`connect`](Self::connect) creates or upgrades the schema (default true).
    /// Off when the database user may not change the schema: run
    /// [`PostgresStore::migrate`] once as a user who may. `connect` then only checks that
    /// the server answers.
    #[must_use]
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// **For tests only.** Decides leases and expiry by `clock` (an
    /// [`idem_core::ManualClock`]) instead of the database server's clock, so that a test can
    /// move time by hand instead of sleeping: each statement is given `clock`'s now and uses it
    /// where it would read `clock_timestamp()`.
    ///
    /// Production leaves this unset, and the database's clock is in charge: every instance
    /// then agrees on every lease however far their own clocks drift, which a clock per
    /// instance would not give.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Connects, creates or upgrades the schema (see [`PostgresStore::migrate`]), and answers
    /// a ready store; all within [`CONNECT_TIMEOUT`].
    ///
    /// # Errors
    /// The URL is invalid, the server cannot be reached, or the migrations fail.
    pub async fn connect(self) -> Result<PostgresStore, ConnectError> {
        let options = self.connect_options()?;
        let store = self.pool(options.clone());
        let setup = async {
            // One direct connection first: unlike the pool, it reports why it failed
            // (refused, bad password, no such database) instead of a bare timeout.
            let mut connection = PgConnection::connect_with(&options)
                .await
                .map_err(ConnectError::Connect)?;
            if let Some(schema) = &self.schema {
                check_schema(schema)?;
                if self.migrate {
                    // The name was checked to be a plain identifier: nothing to escape.
                    let statement = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
                    let created = sqlx::query(sqlx::AssertSqlSafe(statement))
                        .execute(&mut connection)
                        .await;
                    // Instances starting together race on the catalog: the loser of two
                    // concurrent `IF NOT EXISTS` gets a unique violation, and the schema is
                    // there all the same.
                    if let Err(error) = created
                        && !already_exists(&error)
                    {
                        return Err(ConnectError::CreateSchema(error));
                    }
                }
            }
            // Closing politely only saves the server a log line.
            let _ = connection.close().await;
            if self.migrate {
                store.migrate().await?;
            }
            Ok(())
        };
        tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .map_err(|_| ConnectError::TimedOut(CONNECT_TIMEOUT))??;
        Ok(store)
    }

    /// A store that connects on first use and runs no migrations (call
    /// [`PostgresStore::migrate`], or run them once from another instance). It starts even
    /// when the server is down; each operation then answers [`StoreError::Unavailable`]
    /// until the server is back.
    ///
    /// # Errors
    /// The URL is invalid.
    pub fn connect_lazy(self) -> Result<PostgresStore, ConnectError> {
        let options = self.connect_options()?;
        Ok(self.pool(options))
    }

    fn connect_options(&self) -> Result<PgConnectOptions, ConnectError> {
        let mut options =
            PgConnectOptions::from_str(&self.url).map_err(ConnectError::InvalidUrl)?;
        if let Some(schema) = &self.schema {
            check_schema(schema)?;
            // Every unqualified name (the table, the migrations' table) resolves there.
            options = options.options([("search_path", schema.as_str())]);
        }
        if let Some(path) = &self.ssl_root_cert
            && !self.url.contains("sslrootcert=")
        {
            options = options.ssl_root_cert(path);
        }
        // The statements rely on READ COMMITTED (see `sql::BEGIN`); under a stricter default
        // concurrent begins would fail with serialization errors instead of answering.
        let options = options.options([("default_transaction_isolation", "read committed")]);
        Ok(if options.get_application_name().is_none() {
            // Names idem's connections in pg_stat_activity.
            options.application_name("idem")
        } else {
            options
        })
    }

    fn pool(&self, options: PgConnectOptions) -> PostgresStore {
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // No ping before each use: it would double every operation's round trips. A
            // connection that broke while idle fails its next operation (Unavailable, the
            // engine answers 503 and executes nothing) and the pool replaces it.
            .test_before_acquire(false)
            .connect_lazy_with(options);
        PostgresStore {
            pool,
            listener: Arc::default(),
            clock: self.clock.clone(),
        }
    }
}

/// Whether `error` says the object being created exists already (a unique violation on
/// the catalog, or a duplicate schema).
fn already_exists(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .is_some_and(|code| code == "23505" || code == "42P06")
}

/// A schema name idem may write into SQL as it is: a lowercase identifier.
fn check_schema(schema: &str) -> Result<(), ConnectError> {
    let mut bytes = schema.bytes();
    let valid = schema.len() <= 63
        && bytes
            .next()
            .is_some_and(|first| first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    if valid {
        Ok(())
    } else {
        Err(ConnectError::InvalidSchema(schema.to_owned()))
    }
}

/// The embedded migrations (`migrations/` in this crate), recorded in [`MIGRATIONS_TABLE`].
fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    // Not "dangerous" here: idem's migrations were never recorded anywhere else.
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    // An instance of the previous release restarting during a rolling upgrade finds a newer
    // migration applied: it must start, not refuse. Migrations only ever add what older
    // statements do not read (a column with a default), so its statements still work.
    migrator.set_ignore_missing(true);
    migrator
}

impl PostgresStore {
    /// Connects with default options, creating or upgrading the schema; see
    /// [`PostgresStoreBuilder::connect`].
    ///
    /// # Errors
    /// The URL is invalid, the server cannot be reached, or the migrations fail.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::builder(url).connect().await
    }

    /// Options for a store at `url` (`postgres://user:password@host:port/database?...`).
    #[must_use]
    pub fn builder(url: &str) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.to_owned(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            schema: None,
            ssl_root_cert: None,
            migrate: true,
            clock: None,
        }
    }

    /// A store over a pool the application configured itself. Runs no migrations: call
    /// [`migrate`](Self::migrate). The statements need READ COMMITTED, PostgreSQL's default
    /// isolation level. Operations are still bounded by [`OPERATION_TIMEOUT`], and by the
    /// pool's own acquire timeout.
    #[must_use]
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            listener: Arc::default(),
            clock: None,
        }
    }

    /// The pool, to share it with the application or to close it.
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the `idem_records` table, or upgrades it, with the migrations embedded in this
    /// crate; does nothing if they already ran.
    ///
    /// Several instances may start at once: the migrations run under a PostgreSQL advisory
    /// lock, so one applies them while the others wait, then find them applied.
    ///
    /// # Errors
    /// The server cannot be reached, or a migration fails.
    pub async fn migrate(&self) -> Result<(), ConnectError> {
        migrator()
            .run(&self.pool)
            .await
            .map_err(ConnectError::Migrate)
    }

    /// The `$1` of every statement: NULL, so that the server reads its own clock, unless a
    /// test gave the builder a clock.
    fn now_override(&self) -> Option<i64> {
        self.clock
            .as_ref()
            .map(|clock| timestamp_to_sql(clock.now()))
    }
}

/// Runs one statement within [`OPERATION_TIMEOUT`] (see [`idem_core::bounded`]), sorting
/// its driver errors.
///
/// The statement's future is boxed: it holds the pool's connect future (a connection may be
/// opened on the way, TLS handshake included), which is large enough that, nested inside a
/// layer's request future, it overflowed a 2 MiB thread stack in debug builds. One
/// allocation per statement is nothing beside its round trip.
pub(crate) async fn bounded_statement<T>(
    operation: &'static str,
    future: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    let future = Box::pin(future);
    idem_core::bounded(operation, OPERATION_TIMEOUT, async {
        future.await.map_err(store_error)
    })
    .await
}

impl Store for PostgresStore {
    async fn begin(&self, request: BeginRequest) -> Result<BeginOutcome, StoreError> {
        // Names this statement's acquisition; see `sql::BEGIN`.
        let acquisition: i64 = rand::random();
        let row = bounded_statement(
            "begin",
            sqlx::query(sql::BEGIN)
                .bind(self.now_override())
                .bind(request.id.as_bytes().as_slice())
                .bind(request.fingerprint.as_bytes().as_slice())
                .bind(token_to_sql(request.token))
                .bind(duration_to_sql(request.lease))
                .bind(duration_to_sql(request.ttl))
                .bind(request.on_lapse == OnLapse::TakeOver)
                .bind(acquisition)
                .fetch_one(&self.pool),
        )
        .await?;
        let acquired: bool = row.try_get("acquired").map_err(store_error)?;
        if acquired {
            return Ok(BeginOutcome::Acquired);
        }
        // The row this statement left untouched: answer from it with the reference semantics
        // at the statement's own instant, which must agree that there was nothing to write
        // (the answer may still be `Acquired`: the request's own token with a live lease).
        let record = record_from_row(&row)?;
        let now = now_from_row(&row)?;
        match transition::begin(Some(&record), &request, now) {
            (outcome, Write::Nothing) => Ok(outcome),
            _ => Err(StoreError::Corrupted(
                "idem_records row is acquirable by the reference semantics but the begin \
                 statement did not acquire it"
                    .into(),
            )),
        }
    }

    async fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<TransitionOutcome, StoreError> {
        let result = bounded_statement(
            "renew",
            sqlx::query(sql::RENEW)
                .bind(self.now_override())
                .bind(id.as_bytes().as_slice())
                .bind(token_to_sql(token))
                .bind(duration_to_sql(lease))
                .execute(&self.pool),
        )
        .await?;
        Ok(fenced_outcome(result.rows_affected()))
    }

    async fn complete(&self, request: CompleteRequest) -> Result<TransitionOutcome, StoreError> {
        let headers = idem_core::encode_headers(&request.response.headers);
        let status = i32::from(request.response.status);
        let body = request.response.body.as_deref();
        let result = bounded_statement(
            "complete",
            sqlx::query(sql::COMPLETE)
                .bind(self.now_override())
                .bind(request.id.as_bytes().as_slice())
                .bind(token_to_sql(request.token))
                .bind(status)
                .bind(headers)
                .bind(body)
                .bind(duration_to_sql(request.ttl))
                .execute(&self.pool),
        )
        .await?;
        Ok(fenced_outcome(result.rows_affected()))
    }

    async fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> Result<TransitionOutcome, StoreError> {
        let result = bounded_statement(
            "release",
            sqlx::query(sql::RELEASE)
                .bind(self.now_override())
                .bind(id.as_bytes().as_slice())
                .bind(token_to_sql(token))
                .execute(&self.pool),
        )
        .await?;
        Ok(fenced_outcome(result.rows_affected()))
    }

    async fn get(&self, id: RecordId) -> Result<Option<RecordSnapshot>, StoreError> {
        let row = bounded_statement(
            "get",
            sqlx::query(sql::GET)
                .bind(self.now_override())
                .bind(id.as_bytes().as_slice())
                .fetch_optional(&self.pool),
        )
        .await?;
        match row {
            Some(row) => Ok(Some(RecordSnapshot {
                record: record_from_row(&row)?,
                now: now_from_row(&row)?,
            })),
            None => Ok(None),
        }
    }

    async fn sweep_expired(&self, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).map_or(MAX_SWEEP_BATCH, |l| l.min(MAX_SWEEP_BATCH));
        let result = bounded_statement(
            "sweep_expired",
            sqlx::query(sql::SWEEP)
                .bind(self.now_override())
                .bind(limit)
                .execute(&self.pool),
        )
        .await?;
        // At most `limit` rows, which came from a usize.
        Ok(usize::try_from(result.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn watch(&self, id: RecordId) -> Result<Watch, StoreError> {
        // Listening before marking: a completion right after the mark is heard.
        let feed = self
            .listener
            .subscribe(|sender| announce::listen(&self.pool, sender))
            .await?;
        let row = bounded_statement(
            "watch",
            sqlx::query(sql::WATCH)
                .bind(self.now_override())
                .bind(id.as_bytes().as_slice())
                .fetch_one(&self.pool),
        )
        .await?;
        let in_flight: bool = row.try_get("in_flight").map_err(store_error)?;
        Ok(if in_flight {
            Watch::Announced(feed)
        } else {
            Watch::NotInFlight
        })
    }

    async fn durability_risks(&self) -> Result<Vec<DurabilityRisk>, StoreError> {
        let row = bounded_statement(
            "durability_risks",
            sqlx::query(sql::DURABILITY_SETTINGS).fetch_one(&self.pool),
        )
        .await?;
        let settings = DurabilitySettings::from_row(&row).map_err(store_error)?;
        Ok(settings.risks())
    }
}

/// A fenced statement's outcome from the rows it changed (the id is the primary key: 0 or 1).
fn fenced_outcome(rows_affected: u64) -> TransitionOutcome {
    if rows_affected == 1 {
        TransitionOutcome::Applied
    } else {
        TransitionOutcome::StaleLease
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The previous release restarting on a database a newer one migrated (a rolling upgrade,
    /// or a rollback) starts: its migrator, which knows fewer migrations, accepts the newer
    /// ones applied.
    #[tokio::test]
    async fn an_older_release_starts_on_a_database_a_newer_one_migrated() {
        let url = std::env::var("IDEM_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let store = PostgresStore::connect(&url)
            .await
            .unwrap_or_else(|error| panic!("PostgreSQL at {url} must be reachable: {error}"));
        let mut older = migrator();
        assert!(
            older.migrations.len() > 1,
            "there is a newer migration to miss"
        );
        older.migrations = older.migrations[..1].to_vec().into();
        older
            .run(store.pool())
            .await
            .expect("an older release accepts newer migrations applied");
    }
}
