//! [`RedisStore`]: the [`Store`] implementation, one Lua script per transition, over one
//! Redis (a reconnecting [`ConnectionManager`]) or a Redis Cluster.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use idem_core::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, DurabilityRisk, FinishListener, LeaseToken,
    OnLapse, RecordId, RecordSnapshot, Store, StoreError, TransitionOutcome, Watch,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{
    Client, Cmd, FromRedisValue, RedisError, RedisResult, Script, ScriptInvocation, Value,
};

use crate::announce::{self, finished_channel};
use crate::codec::{begin_outcome, record_key, snapshot};
use crate::durability::{self, NodeReplies};
use crate::error::{ConnectError, store_error};

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

/// How long after its logical expiry Redis deletes a record (`PEXPIRE`, set by the script
/// from the same now it judged the record with). Logical expiry (`expires_at` against the
/// script's now) decides every answer; the physical deletion must never come first, or a live
/// record would vanish and its request could execute again.
///
/// Both are on Redis's clock, so the instances' clocks, skewed or not, play no part (and a
/// replica promoted on failover judges both with its own clock, which moves them together).
/// What the grace still covers: the script rounding `TIME` down to milliseconds and Redis
/// applying `PEXPIRE` a moment after the script read `TIME`; and, in tests only, a clock given
/// with [`RedisStoreBuilder::clock`], which may lag Redis's: a record written at that clock's
/// now is still counted down by Redis in real time, so it must outlive the real time a test
/// spends between writing it and reading it. It costs memory only: a few seconds more of keys
/// whose answers are already "absent".
pub const EXPIRY_GRACE: Duration = Duration::from_secs(5);

/// Past this, a record gets no physical expiry at all: Redis refuses expiry times that
/// overflow its clock arithmetic, and a century is "never" for an idempotency record.
const MAX_PHYSICAL_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A script: the constants and helpers every script shares, then its own body.
fn script(body: &str) -> Script {
    Script::new(&format!(
        "local GRACE_MS = {}\nlocal MAX_PHYSICAL_TTL_MS = {}\n{}{}",
        EXPIRY_GRACE.as_millis(),
        MAX_PHYSICAL_TTL.as_millis(),
        include_str!("lua/prelude.lua"),
        body
    ))
}

static BEGIN: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/begin.lua")));
static RENEW: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/renew.lua")));
static COMPLETE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/complete.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/release.lua")));
static GET: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/get.lua")));
static WATCH: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/watch.lua")));

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

    /// Sends a keyless command to the server, or to every primary of a cluster, and answers
    /// each node's reply or error (`None` for the single server, else the node's address). On
    /// a cluster, a node that did not answer at all fails the whole call.
    async fn on_each_primary(&self, command: Cmd) -> RedisResult<NodeReplies> {
        match self.clone() {
            Self::Single(mut connection) => {
                Ok(vec![(None, command.query_async(&mut connection).await)])
            }
            Self::Cluster(mut connection) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                // Without a response policy the driver answers a map of node to reply, a
                // node's error reply included as a value.
                let reply = connection.route_command(command, routing).await?;
                let Value::Map(replies) = reply else {
                    return Err(RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "a command sent to every primary did not answer a map",
                    )));
                };
                replies
                    .into_iter()
                    .map(|(node, reply)| {
                        let node = String::from_redis_value(node)?;
                        let reply = match reply {
                            Value::ServerError(error) => Err(RedisError::from(error)),
                            value => Ok(value),
                        };
                        Ok((Some(node), reply))
                    })
                    .collect()
            }
        }
    }

    /// Loads every script, so the first requests need no NOSCRIPT round trip, and so that
    /// a server refusing scripts is found at start rather than on the first request.
    async fn load_scripts(&self) -> RedisResult<()> {
        for script in [&*BEGIN, &*RENEW, &*COMPLETE, &*RELEASE, &*GET, &*WATCH] {
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
///
/// Every lease and expiry is decided on Redis's clock, read by each script (`TIME`), so
/// instances whose clocks disagree still agree on every lease.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    key_prefix: String,
    /// What finish announcements are published on: `finished_channel(key_prefix)`.
    channel: String,
    /// The nodes to subscribe to announcements on (any node of a cluster hears them all), and
    /// this process's subscription, started by the first watch.
    announcements: Vec<Client>,
    listener: Arc<FinishListener>,
    clock: Option<Arc<dyn Clock>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.connection {
            Connection::Single(_) => "single",
            Connection::Cluster(_) => "cluster",
        };
        let clock = match self.clock {
            None => "redis",
            Some(_) => "test clock",
        };
        f.debug_struct("RedisStore")
            .field("mode", &mode)
            .field("key_prefix", &self.key_prefix)
            .field("clock", &clock)
            .finish_non_exhaustive()
    }
}

/// Options for a [`RedisStore`], from [`RedisStore::builder`].
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    key_prefix: String,
    root_cert: Option<Vec<u8>>,
    clock: Option<Arc<dyn Clock>>,
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

    /// The CA certificate (PEM) that a `rediss://` server's certificate is checked against,
    /// in place of the system's roots (a managed Redis with its own CA, or a private one).
    /// Without it, `rediss://` checks against the system's roots.
    #[must_use]
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_cert = Some(pem.into());
        self
    }

    /// A client for `url`, over TLS with [`tls_root_cert`](Self::tls_root_cert) when given.
    fn client(&self, url: &str) -> RedisResult<Client> {
        match &self.root_cert {
            None => Client::open(url),
            Some(pem) => Client::build_with_tls(url, self.certificates(pem)),
        }
    }

    fn certificates(&self, pem: &[u8]) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        }
    }

    /// **For tests only**: judge leases and expiry by `clock` (an
    /// [`idem_core::ManualClock`], say) instead of Redis's clock, so that a test can move time
    /// by hand rather than sleep. The store then sends the clock's now with every script,
    /// which uses it in place of `TIME`.
    ///
    /// Production leaves this unset: Redis's clock then decides every lease and expiry, which
    /// is what lets instances with skewed clocks share one store. Instances that each passed
    /// their own clock would be back to comparing their clocks.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The prefix, checked, and the clock.
    fn parts(self) -> Result<(String, Option<Arc<dyn Clock>>), ConnectError> {
        if self.key_prefix.contains(['{', '}']) {
            return Err(ConnectError::InvalidKeyPrefix(self.key_prefix));
        }
        Ok((self.key_prefix, self.clock))
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
        let client = self.client(url).map_err(ConnectError::InvalidUrl)?;
        let (key_prefix, clock) = self.parts()?;
        let manager_client = client.clone();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES);
        let manager = ConnectionManager::new_lazy_with_config(manager_client, config)
            .map_err(ConnectError::InvalidUrl)?;
        Ok(RedisStore::new(
            Connection::Single(manager),
            key_prefix,
            vec![client],
            clock,
        ))
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
        // Announcements reach the subscribers of every node: any one will do.
        let announcements = urls
            .iter()
            .map(|url| self.client(url.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConnectError::InvalidUrl)?;
        let mut client = ClusterClient::builder(urls.iter().map(AsRef::as_ref))
            .connection_timeout(CONNECTION_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(CLUSTER_RETRIES);
        if let Some(pem) = &self.root_cert {
            client = client.certs(self.certificates(pem));
        }
        let client = client.build().map_err(ConnectError::InvalidUrl)?;
        let (key_prefix, clock) = self.parts()?;
        let connection = bounded_connect(async {
            let connection = Connection::Cluster(client.get_async_connection().await?);
            connection.load_scripts().await?;
            Ok(connection)
        })
        .await?;
        Ok(RedisStore::new(
            connection,
            key_prefix,
            announcements,
            clock,
        ))
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
    fn new(
        connection: Connection,
        key_prefix: String,
        announcements: Vec<Client>,
        clock: Option<Arc<dyn Clock>>,
    ) -> Self {
        Self {
            connection,
            channel: finished_channel(&key_prefix),
            key_prefix,
            announcements,
            listener: Arc::default(),
            clock,
        }
    }

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
            root_cert: None,
            clock: None,
        }
    }

    /// The Redis key of a record: `{prefix}:{<hex id>}`, braces included.
    #[must_use]
    pub fn key(&self, id: RecordId) -> String {
        record_key(&self.key_prefix, id)
    }

    /// The now a script must judge by: the test clock's, or `""`, which tells the script to
    /// read Redis's own clock.
    fn now_arg(&self) -> String {
        self.clock
            .as_ref()
            .map(|clock| clock.now().as_millis().to_string())
            .unwrap_or_default()
    }

    /// Runs one script under [`OPERATION_TIMEOUT`].
    async fn run_script<T: FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        idem_core::bounded(operation, OPERATION_TIMEOUT, async {
            self.connection
                .invoke(invocation)
                .await
                .map_err(store_error)
        })
        .await
    }
}

/// A duration in whole milliseconds, as the scripts take it (saturating: a TTL of
/// `Duration::MAX` means "never expires").
fn millis(duration: Duration) -> String {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .to_string()
}

/// A fenced script's outcome from its reply: 1 if it changed the record, 0 if the token was
/// stale.
fn fenced_outcome(reply: i64) -> TransitionOutcome {
    if reply == 1 {
        TransitionOutcome::Applied
    } else {
        TransitionOutcome::StaleLease
    }
}

impl Store for RedisStore {
    async fn begin(&self, request: BeginRequest) -> Result<BeginOutcome, StoreError> {
        let take_over = match request.on_lapse {
            OnLapse::TakeOver => "1",
            _ => "0",
        };
        let mut invocation = BEGIN.prepare_invoke();
        invocation
            .key(self.key(request.id))
            .arg(request.fingerprint.as_bytes().as_slice())
            .arg(request.token.as_u64().to_string())
            .arg(millis(request.lease))
            .arg(millis(request.ttl))
            .arg(take_over)
            .arg(self.now_arg());
        let reply: Value = self.run_script("begin", &invocation).await?;
        Ok(begin_outcome(reply)?)
    }

    async fn renew(
        &self,
        id: RecordId,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<TransitionOutcome, StoreError> {
        let mut invocation = RENEW.prepare_invoke();
        invocation
            .key(self.key(id))
            .arg(token.as_u64().to_string())
            .arg(millis(lease))
            .arg(self.now_arg());
        Ok(fenced_outcome(self.run_script("renew", &invocation).await?))
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
            .arg(millis(request.ttl))
            .arg(request.response.status.to_string())
            .arg(headers)
            .arg(has_body)
            .arg(body)
            .arg(self.now_arg())
            .arg(&self.channel);
        Ok(fenced_outcome(
            self.run_script("complete", &invocation).await?,
        ))
    }

    async fn release(
        &self,
        id: RecordId,
        token: LeaseToken,
    ) -> Result<TransitionOutcome, StoreError> {
        let mut invocation = RELEASE.prepare_invoke();
        invocation
            .key(self.key(id))
            .arg(token.as_u64().to_string())
            .arg(self.now_arg())
            .arg(&self.channel);
        Ok(fenced_outcome(
            self.run_script("release", &invocation).await?,
        ))
    }

    async fn watch(&self, id: RecordId) -> Result<Watch, StoreError> {
        // Subscribed before marking: a completion right after the mark is heard.
        let feed = self
            .listener
            .subscribe(|sender| {
                announce::listen(self.announcements.clone(), self.key_prefix.clone(), sender)
            })
            .await?;
        let mut invocation = WATCH.prepare_invoke();
        invocation.key(self.key(id)).arg(self.now_arg());
        let in_flight: i64 = self.run_script("watch", &invocation).await?;
        Ok(if in_flight == 1 {
            Watch::Announced(feed)
        } else {
            Watch::NotInFlight
        })
    }

    /// A script rather than `HGETALL` and `TIME`: the clock must be the one of the node that
    /// holds the key, read in the same atomic step.
    async fn get(&self, id: RecordId) -> Result<Option<RecordSnapshot>, StoreError> {
        let mut invocation = GET.prepare_invoke();
        invocation.key(self.key(id)).arg(self.now_arg());
        let reply: Value = self.run_script("get", &invocation).await?;
        Ok(snapshot(reply)?)
    }

    /// Deletes nothing and answers 0: every write sets the key's expiry, and Redis deletes
    /// expired keys itself, [`EXPIRY_GRACE`] after their logical expiry.
    async fn sweep_expired(&self, _limit: usize) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Reads `maxmemory-policy`, `appendonly`, `appendfsync`, `save` (`CONFIG GET`) and the
    /// replication role (`INFO replication`) of the server, or of every primary of a cluster
    /// (the driver routes the commands to each primary it knows; a risk shared by several is
    /// reported once, naming them), and reports what they risk:
    ///
    /// - any eviction policy but `noeviction` (`volatile-*` included: every record carries a
    ///   TTL): Redis may delete live records, so `refuse` is set;
    /// - no AOF: records lost on restart (no RDB snapshots) or since the last snapshot;
    /// - `appendfsync everysec` or `no`: the last writes lost on a crash;
    /// - a primary with replicas: the last writes lost on failover.
    ///
    /// A server that refuses `CONFIG` (renamed or denied on managed Redis) gets one risk
    /// saying the settings could not be read, not an error; an unreachable one is
    /// [`StoreError::Unavailable`].
    async fn durability_risks(&self) -> Result<Vec<DurabilityRisk>, StoreError> {
        idem_core::bounded("durability_risks", OPERATION_TIMEOUT, async {
            let mut readings = Vec::new();
            for (setting, command) in durability::commands() {
                let replies = self
                    .connection
                    .on_each_primary(command)
                    .await
                    .map_err(store_error)?;
                readings.push((setting, replies));
            }
            durability::risks(readings)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_travel_as_saturated_milliseconds() {
        assert_eq!(millis(Duration::from_millis(1_500)), "1500");
        assert_eq!(millis(Duration::from_micros(1_999)), "1");
        assert_eq!(millis(Duration::MAX), u64::MAX.to_string());
    }

    #[test]
    fn every_script_is_distinct() {
        let scripts = [&*BEGIN, &*RENEW, &*COMPLETE, &*RELEASE, &*GET, &*WATCH];
        let hashes: std::collections::HashSet<_> =
            scripts.iter().map(|script| script.get_hash()).collect();
        assert_eq!(hashes.len(), scripts.len());
    }
}
