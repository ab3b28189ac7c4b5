//! [`RedisStore`]: the [`Store`] implementation, one Lua script per transition, over one
//! Redis (a reconnecting [`ConnectionManager`]) or a Redis Cluster.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use idem_core::{
    BeginOutcome, BeginRequest, CompleteRequest, LeaseToken, RecordId, RecordState, Store,
    StoreError, Timestamp, TransitionOutcome,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, FromRedisValue, RedisResult, Script, ScriptInvocation, Value};

use crate::codec::{begin_outcome, record_key, visible_state};
use crate::error::{ConnectError, OperationTimedOut, store_error};

/// The prefix of every key unless [`RedisStoreBuilder::key_prefix`] says otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "idem";

/// How long one connection attempt may take. Connecting to a Redis nearby takes a
/// millisecond; two seconds tolerate a loaded server without holding requests long when
/// it is down.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a command may wait for its reply. The scripts touch one key and answer in
/// microseconds; three seconds leave room for `appendfsync always` on a slow disk.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one operation may take in all, reconnection and cluster redirections included,
/// before it answers [`StoreError::Unavailable`]: the bound that keeps a request from
/// hanging whatever the driver retries.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnection attempts (with backoff) a single-server connection makes before an
/// operation fails. Few, so a request fails over to a 503 quickly; the next operation
/// starts reconnecting again.
const RECONNECT_RETRIES: usize = 1;

/// Retries of a cluster request (redirections, a node being replaced), as for
/// [`RECONNECT_RETRIES`].
const CLUSTER_RETRIES: u32 = 2;

/// How long after its logical expiry Redis deletes a record (`PEXPIRE`). Logical expiry
/// compares `expires_at` with the caller's clock and decides every answer; Redis expires keys
/// on its own clock. The physical deletion must never come first, or a live record would
/// vanish and its request could execute again: the grace period covers clock skew between
/// the instances sharing the store (one instance's `now` behind the writer's), and callers
/// whose logical clock runs ahead of real time. It only costs memory: a minute more of keys
/// whose answers are already "absent".
pub const EXPIRY_GRACE: Duration = Duration::from_secs(60);

/// Past this, a record gets no physical expiry at all: Redis refuses expiry times that
/// overflow its clock arithmetic, and a century is "never" for an idempotency record.
const MAX_PHYSICAL_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Prepends the helpers every script shares.
macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!(concat!("lua/", $file))
            ))
        })
    };
}

static BEGIN: LazyLock<Script> = script!("begin.lua");
static COMPLETE: LazyLock<Script> = script!("complete.lua");
static RELEASE: LazyLock<Script> = script!("release.lua");

/// A connection to one Redis or to a cluster; both are cheap to clone and multiplex.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn invoke<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> RedisResult<T> {
        // `invoke_async` sends EVALSHA, and on NOSCRIPT (a restarted server, a new node)
        // loads the script and sends it again.
        match self.clone() {
            Self::Single(mut connection) => invocation.invoke_async(&mut connection).await,
            Self::Cluster(mut connection) => invocation.invoke_async(&mut connection).await,
        }
    }

    async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> RedisResult<T> {
        match self.clone() {
            Self::Single(mut connection) => command.query_async(&mut connection).await,
            Self::Cluster(mut connection) => command.query_async(&mut connection).await,
        }
    }

    /// Loads every script, so the first requests need no NOSCRIPT round trip, and so that
    /// a server refusing scripts is found at start rather than on the first request.
    async fn load_scripts(&self) -> RedisResult<()> {
        for script in [&*BEGIN, &*COMPLETE, &*RELEASE] {
            match self.clone() {
                Self::Single(mut connection) => script.load_async(&mut connection).await?,
                Self::Cluster(mut connection) => script.load_async(&mut connection).await?,
            };
        }
        Ok(())
    }
}

/// A [`Store`] in Redis, shared by every instance pointed at the same server or cluster
/// (and the same key prefix). Cloning it shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    key_prefix: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.connection {
            Connection::Single(_) => "single",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("mode", &mode)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// Options for a [`RedisStore`], from [`RedisStore::builder`].
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    key_prefix: String,
}

impl RedisStoreBuilder {
    /// The prefix of every key (default [`DEFAULT_KEY_PREFIX`]), so that several
    /// applications can share one Redis: stores with different prefixes never see each
    /// other's records. It must not contain `{` or `}`.
    #[must_use]
    pub fn key_prefix(mut self, key_prefix: impl Into<String>) -> Self {
        self.key_prefix = key_prefix.into();
        self
    }

    fn checked_prefix(self) -> Result<String, ConnectError> {
        if self.key_prefix.contains(['{', '}']) {
            return Err(ConnectError::InvalidKeyPrefix(self.key_prefix));
        }
        Ok(self.key_prefix)
    }

    /// Connects to one Redis at `url` and loads the scripts. The connection reconnects by
    /// itself if it breaks; operations answer [`StoreError::Unavailable`] meanwhile.
    ///
    /// # Errors
    /// The URL or the prefix is invalid, or the server cannot be reached.
    pub async fn connect(self, url: &str) -> Result<RedisStore, ConnectError> {
        let store = self.connect_lazy(url)?;
        bounded_connect(store.connection.load_scripts()).await?;
        Ok(store)
    }

    /// A store for one Redis at `url` that connects on first use. It starts even when the
    /// server is down; each operation then answers [`StoreError::Unavailable`] until the
    /// server is back.
    ///
    /// # Errors
    /// The URL or the prefix is invalid.
    pub fn connect_lazy(self, url: &str) -> Result<RedisStore, ConnectError> {
        let key_prefix = self.checked_prefix()?;
        let client = Client::open(url).map_err(ConnectError::InvalidUrl)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES);
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(ConnectError::InvalidUrl)?;
        Ok(RedisStore {
            connection: Connection::Single(manager),
            key_prefix,
        })
    }

    /// Connects to a Redis Cluster through any of its nodes (`urls`; the others are
    /// discovered) and loads the scripts on every primary. Each record is one key, so each
    /// transition runs on the one node that owns the record's slot.
    ///
    /// # Errors
    /// A URL or the prefix is invalid, or no node can be reached.
    pub async fn connect_cluster(
        self,
        urls: &[impl AsRef<str>],
    ) -> Result<RedisStore, ConnectError> {
        let key_prefix = self.checked_prefix()?;
        let client = ClusterClient::builder(urls.iter().map(AsRef::as_ref))
            .connection_timeout(CONNECTION_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(CLUSTER_RETRIES)
            .build()
            .map_err(ConnectError::InvalidUrl)?;
        let connection = bounded_connect(async {
            let connection = Connection::Cluster(client.get_async_connection().await?);
            connection.load_scripts().await?;
            Ok(connection)
        })
        .await?;
        Ok(RedisStore {
            connection,
            key_prefix,
        })
    }
}

async fn bounded_connect<T>(
    future: impl Future<Output = RedisResult<T>>,
) -> Result<T, ConnectError> {
    // Attempts, backoff and the script loads: a few connection timeouts at most.
    let limit = OPERATION_TIMEOUT;
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| ConnectError::TimedOut(limit))?
        .map_err(ConnectError::Connect)
}

impl RedisStore {
    /// Connects to one Redis with default options; see [`RedisStoreBuilder::connect`].
    ///
    /// # Errors
    /// The URL is invalid, or the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::builder().connect(url).await
    }

    /// Connects to a Redis Cluster with default options; see
    /// [`RedisStoreBuilder::connect_cluster`].
    ///
    /// # Errors
    /// A URL is invalid, or no node can be reached.
    pub async fn connect_cluster(urls: &[impl AsRef<str>]) -> Result<Self, ConnectError> {
        Self::builder().connect_cluster(urls).await
    }

    /// Options for a store.
    #[must_use]
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder {
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
        }
    }

    /// The Redis key of a record: `{prefix}:{<hex id>}`, braces included.
    #[must_use]
    pub fn key(&self, id: RecordId) -> String {
        record_key(&self.key_prefix, id)
    }

    async fn bounded<T>(future: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(OPERATION_TIMEOUT, future).await {
            Ok(result) => result.map_err(store_error),
            Err(_) => Err(StoreError::unavailable(OperationTimedOut(
                OPERATION_TIMEOUT,
            ))),
        }
    }
}

/// The `PEXPIRE` argument of a record expiring at `expires_at`: its logical time to live plus
/// [`EXPIRY_GRACE`], or `""` (no physical expiry) past [`MAX_PHYSICAL_TTL`].
fn physical_ttl(now: Timestamp, expires_at: Timestamp) -> String {
    let ttl = now.until(expires_at).saturating_add(EXPIRY_GRACE);
    if ttl > MAX_PHYSICAL_TTL {
        String::new()
    } else {
        ttl.as_millis().to_string()
    }
}

fn applied(reply: i64) -> TransitionOutcome {
    if reply == 1 {
        TransitionOutcome::Applied
    } else {
        TransitionOutcome::StaleLease
    }
}

impl Store for RedisStore {
    async fn begin(&self, request: BeginRequest) -> Result<BeginOutcome, StoreError> {
        // The script stores max(expires_at, lease_until), as the reference does.
        let record_expires_at = request.expires_at.max(request.lease_until);
        let mut invocation = BEGIN.prepare_invoke();
        invocation
            .key(self.key(request.id))
            .arg(request.fingerprint.as_bytes().as_slice())
            .arg(request.token.as_u64().to_string())
            .arg(request.now.as_millis().to_string())
            .arg(request.lease_until.as_millis().to_string())
            .arg(request.expires_at.as_millis().to_string())
            .arg(physical_ttl(request.now, record_expires_at));
        let reply: Value = Self::bounded(self.connection.invoke(&invocation)).await?;
        Ok(begin_outcome(reply)?)
    }

    async fn complete(&self, request: CompleteRequest) -> Result<TransitionOutcome, StoreError> {
        let headers = idem_core::encode_headers(&request.response.headers);
        let (has_body, body) = match &request.response.body {
            Some(body) => ("1", body.as_ref()),
            None => ("0", &[][..]),
        };
        let mut invocation = COMPLETE.prepare_invoke();
        invocation
            .key(self.key(request.id))
            .arg(request.token.as_u64().to_string())
            .arg(request.now.as_millis().to_string())
            .arg(request.expires_at.as_millis().to_string())
            .arg(request.response.status.to_string())
            .arg(headers)
            .arg(has_body)
            .arg(body)
            .arg(physical_ttl(request.now, request.expires_at));
        let reply: i64 = Self::bounded(self.connection.invoke(&invocation)).await?;
        Ok(applied(reply))
    }

    async fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
        now: Timestamp,
    ) -> Result<TransitionOutcome, StoreError> {
        let mut invocation = RELEASE.prepare_invoke();
        invocation
            .key(self.key(id))
            .arg(token.as_u64().to_string())
            .arg(now.as_millis().to_string());
        let reply: i64 = Self::bounded(self.connection.invoke(&invocation)).await?;
        Ok(applied(reply))
    }

    async fn get(&self, id: RecordId, now: Timestamp) -> Result<Option<RecordState>, StoreError> {
        // One read of one key needs no script: HGETALL is atomic.
        let fields: HashMap<String, Vec<u8>> = Self::bounded(
            self.connection
                .query(redis::cmd("HGETALL").arg(self.key(id))),
        )
        .await?;
        Ok(visible_state(fields, now)?)
    }

    /// Deletes nothing and answers 0: every write sets the key's expiry, and Redis deletes
    /// expired keys itself, [`EXPIRY_GRACE`] after their logical expiry.
    async fn sweep_expired(&self, _now: Timestamp, _limit: usize) -> Result<usize, StoreError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_expiry_comes_a_grace_period_after_logical_expiry() {
        let now = Timestamp::from_millis(1_000);
        assert_eq!(physical_ttl(now, Timestamp::from_millis(3_000)), "62000");
        // Already expired: still kept for the grace period, never a negative TTL.
        assert_eq!(physical_ttl(now, Timestamp::from_millis(10)), "60000");
        assert_eq!(physical_ttl(now, Timestamp::from_millis(u64::MAX)), "");
    }
}
