//! What in Redis's own settings may make it forget records, for
//! [`RedisStore::durability_risks`](idem_core::Store::durability_risks): the commands that read
//! the settings, and the rules that judge them.
//!
//! | setting | risk | refuse |
//! |---|---|---|
//! | `maxmemory-policy` other than `noeviction` | Redis deletes live records on its own | yes |
//! | `appendonly no`, `save ""` | every record lost on restart | no |
//! | `appendonly no`, RDB snapshots | records since the last snapshot lost on a crash | no |
//! | `appendfsync everysec` or `no` | the last writes lost on a crash | no |
//! | a primary with replicas | the last writes lost on failover | no |
//! | settings that cannot be read (`CONFIG` renamed or denied) | unknown | no |
//!
//! Every `volatile-*` policy counts as evicting: each of idem's keys carries a TTL.

use std::collections::{BTreeMap, HashMap};

use idem_core::{DurabilityRisk, StoreError};
use redis::{Cmd, FromRedisValue, RedisResult, Value};

use crate::error::{refused, store_error};

/// The reading of `INFO replication` (its `role` and `connected_slaves`).
const REPLICATION: &str = "replication";

/// Each node's reply to one command: `None` for a single server, else the node's address.
pub(crate) type NodeReplies = Vec<(Option<String>, RedisResult<Value>)>;

/// The replies to each of [`commands`], named by what they read.
pub(crate) type Readings = Vec<(&'static str, NodeReplies)>;

/// What is read from each node, and the command that reads it.
pub(crate) fn commands() -> Vec<(&'static str, Cmd)> {
    let config_get = |name: &str| {
        let mut command = redis::cmd("CONFIG");
        command.arg("GET").arg(name);
        command
    };
    let mut info = redis::cmd("INFO");
    info.arg(REPLICATION);
    vec![
        ("maxmemory-policy", config_get("maxmemory-policy")),
        ("appendonly", config_get("appendonly")),
        ("appendfsync", config_get("appendfsync")),
        ("save", config_get("save")),
        (REPLICATION, info),
    ]
}

/// One node's settings, and what of them could not be read.
#[derive(Debug, Default)]
struct NodeSettings {
    settings: HashMap<&'static str, String>,
    unreadable: Vec<&'static str>,
    /// Why the first unreadable one could not be read.
    reason: Option<String>,
}

impl NodeSettings {
    fn unreadable(&mut self, what: &'static str, reason: String) {
        self.unreadable.push(what);
        self.reason.get_or_insert(reason);
    }

    /// Records the node's reply to the command that reads `what`.
    fn read(&mut self, what: &'static str, reply: Value) {
        if what == REPLICATION {
            self.read_replication(reply);
        } else {
            self.read_config(what, reply);
        }
    }

    /// The `role` and `connected_slaves` of an `INFO replication` reply.
    fn read_replication(&mut self, reply: Value) {
        let Ok(info) = String::from_redis_value(reply) else {
            return self.unreadable(REPLICATION, "INFO answered something else than text".into());
        };
        let fields: HashMap<&str, &str> = info
            .lines()
            .filter_map(|line| line.trim().split_once(':'))
            .collect();
        match (fields.get("role"), fields.get("connected_slaves")) {
            (Some(role), slaves) => {
                self.settings.insert("role", (*role).to_owned());
                if let Some(slaves) = slaves {
                    self.settings
                        .insert("connected_slaves", (*slaves).to_owned());
                }
            }
            (None, _) => self.unreadable(REPLICATION, "INFO did not report the role".into()),
        }
    }

    /// The value of `what` in a `CONFIG GET what` reply.
    fn read_config(&mut self, what: &'static str, reply: Value) {
        match HashMap::<String, String>::from_redis_value(reply) {
            Ok(mut values) => match values.remove(what) {
                Some(value) => {
                    self.settings.insert(what, value);
                }
                None => self.unreadable(what, format!("CONFIG GET did not report {what}")),
            },
            Err(error) => self.unreadable(what, format!("CONFIG GET {what}: {error}")),
        }
    }

    fn setting(&self, name: &str) -> Option<&str> {
        self.settings.get(name).map(String::as_str)
    }

    /// What this node's settings risk, most serious first.
    fn risks(&self) -> Vec<DurabilityRisk> {
        [
            self.eviction_risk(),
            self.persistence_risk(),
            self.fsync_risk(),
            self.replication_risk(),
            self.unreadable_risk(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Any eviction policy but `noeviction`: the one risk that refuses the start.
    fn eviction_risk(&self) -> Option<DurabilityRisk> {
        let policy = self
            .setting("maxmemory-policy")
            .filter(|policy| *policy != "noeviction")?;
        Some(risk(
            format!("maxmemory-policy={policy}"),
            "once maxmemory is reached Redis deletes keys on its own, live records included \
             (idem's keys carry a TTL, so volatile-* policies evict them too): an evicted \
             completion lets a retry execute the operation again, an evicted lease lets a \
             duplicate run at the same time. Set maxmemory-policy to noeviction, so that a \
             full Redis refuses writes instead",
            true,
        ))
    }

    /// No append-only file: records lost on restart, or since the last RDB snapshot.
    fn persistence_risk(&self) -> Option<DurabilityRisk> {
        match (self.setting("appendonly"), self.setting("save")) {
            (Some("no"), Some("")) => Some(risk(
                "appendonly=no, save=\"\"".to_owned(),
                "no persistence: every record is lost when Redis restarts, and a retry of an \
                 operation completed before then executes it again",
                false,
            )),
            (Some("no"), Some(save)) => Some(risk(
                format!("appendonly=no, save={save}"),
                "RDB snapshots only: the records written since the last snapshot are lost if \
                 Redis crashes, and retries of those operations execute them again",
                false,
            )),
            _ => None,
        }
    }

    /// An append-only file not fsynced on every write: the last writes lost on a crash.
    fn fsync_risk(&self) -> Option<DurabilityRisk> {
        if self.setting("appendonly") != Some("yes") {
            return None;
        }
        match self.setting("appendfsync") {
            Some("everysec") => Some(risk(
                "appendfsync=everysec".to_owned(),
                "Redis writes its append-only file to disk once a second: a crash or power \
                 loss may lose up to the last second of completions, whose retries then \
                 execute again",
                false,
            )),
            Some("no") => Some(risk(
                "appendfsync=no".to_owned(),
                "the operating system decides when the append-only file reaches the disk \
                 (typically within 30 seconds): a crash or power loss may lose the \
                 completions written since, whose retries then execute again",
                false,
            )),
            _ => None,
        }
    }

    /// A primary with replicas: the last writes lost on failover.
    fn replication_risk(&self) -> Option<DurabilityRisk> {
        let replicas = self
            .setting("connected_slaves")
            .and_then(|count| count.parse::<u64>().ok());
        let (Some("master"), Some(replicas @ 1..)) = (self.setting("role"), replicas) else {
            return None;
        };
        Some(risk(
            format!("role=master, connected_slaves={replicas}"),
            "replication is asynchronous: a replica promoted on failover may miss the \
             latest completions and leases, so a retry may execute again or a duplicate run \
             at the same time (min-replicas-to-write narrows the window)",
            false,
        ))
    }

    /// Settings that could not be read: the operator must check them.
    fn unreadable_risk(&self) -> Option<DurabilityRisk> {
        if self.unreadable.is_empty() {
            return None;
        }
        let reason = self.reason.as_deref().unwrap_or("no reason given");
        Some(risk(
            self.unreadable.join(", "),
            &format!(
                "could not read the settings ({reason}): check yourself that \
                 maxmemory-policy is noeviction, and what persistence and replication may \
                 lose"
            ),
            false,
        ))
    }
}

fn risk(setting: String, risk: &str, refuse: bool) -> DurabilityRisk {
    DurabilityRisk {
        setting,
        risk: risk.to_owned(),
        refuse,
    }
}

/// The risks of the replies to [`commands`], per command then per node (`None` for a single
/// server, else the node's address). A node that refused a command (`CONFIG` renamed or
/// denied) gets a risk saying what could not be read; any other error is the store's.
/// On a cluster, a risk shared by several primaries is reported once, naming them.
pub(crate) fn risks(readings: Readings) -> Result<Vec<DurabilityRisk>, StoreError> {
    let mut nodes: BTreeMap<Option<String>, NodeSettings> = BTreeMap::new();
    for (what, replies) in readings {
        for (address, reply) in replies {
            let node = nodes.entry(address).or_default();
            match reply {
                Ok(value) => node.read(what, value),
                Err(error) if refused(&error) => node.unreadable(what, error.to_string()),
                Err(error) => return Err(store_error(error)),
            }
        }
    }
    let mut merged: Vec<(DurabilityRisk, Vec<String>)> = Vec::new();
    for (address, node) in &nodes {
        for risk in node.risks() {
            let index = match merged.iter().position(|(seen, _)| *seen == risk) {
                Some(index) => index,
                None => {
                    merged.push((risk, Vec::new()));
                    merged.len() - 1
                }
            };
            merged[index].1.extend(address.clone());
        }
    }
    Ok(merged
        .into_iter()
        .map(|(mut risk, addresses)| {
            if !addresses.is_empty() {
                risk.risk = format!("{} (on {})", risk.risk, addresses.join(", "));
            }
            risk
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError};

    use super::*;

    fn text(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn config(name: &str, value: &str) -> RedisResult<Value> {
        Ok(Value::Array(vec![text(name), text(value)]))
    }

    fn info(role: &str, replicas: u32) -> RedisResult<Value> {
        Ok(text(&format!(
            "# Replication\r\nrole:{role}\r\nconnected_slaves:{replicas}\r\n"
        )))
    }

    /// One server's readings, in the order of [`commands`].
    fn server(
        policy: &str,
        appendonly: &str,
        appendfsync: &str,
        save: &str,
        replicas: u32,
    ) -> Readings {
        vec![
            (
                "maxmemory-policy",
                vec![(None, config("maxmemory-policy", policy))],
            ),
            ("appendonly", vec![(None, config("appendonly", appendonly))]),
            (
                "appendfsync",
                vec![(None, config("appendfsync", appendfsync))],
            ),
            ("save", vec![(None, config("save", save))]),
            (REPLICATION, vec![(None, info("master", replicas))]),
        ]
    }

    fn settings(risks: &[DurabilityRisk]) -> Vec<(&str, bool)> {
        risks
            .iter()
            .map(|risk| (risk.setting.as_str(), risk.refuse))
            .collect()
    }

    #[test]
    fn a_durable_server_risks_nothing() {
        let found = risks(server("noeviction", "yes", "always", "", 0)).unwrap();
        assert_eq!(found, vec![]);
    }

    #[test]
    fn every_eviction_policy_is_refused() {
        for policy in [
            "allkeys-lru",
            "volatile-ttl",
            "allkeys-random",
            "volatile-lfu",
        ] {
            let found = risks(server(policy, "yes", "always", "", 0)).unwrap();
            let expected = format!("maxmemory-policy={policy}");
            assert_eq!(settings(&found), vec![(expected.as_str(), true)]);
        }
    }

    #[test]
    fn lost_writes_are_reported_without_refusing() {
        let found = risks(server("noeviction", "no", "everysec", "", 2)).unwrap();
        assert_eq!(
            settings(&found),
            vec![
                ("appendonly=no, save=\"\"", false),
                ("role=master, connected_slaves=2", false),
            ]
        );
        let found = risks(server("noeviction", "no", "everysec", "3600 1", 0)).unwrap();
        assert_eq!(
            settings(&found),
            vec![("appendonly=no, save=3600 1", false)]
        );
        let found = risks(server("noeviction", "yes", "everysec", "3600 1", 0)).unwrap();
        assert_eq!(settings(&found), vec![("appendfsync=everysec", false)]);
        let found = risks(server("noeviction", "yes", "no", "", 0)).unwrap();
        assert_eq!(settings(&found), vec![("appendfsync=no", false)]);
    }

    #[test]
    fn a_refused_config_is_one_risk_and_a_dead_connection_an_error() {
        let unknown = || {
            Err(redis::make_extension_error(
                "ERR".to_owned(),
                Some("unknown command 'CONFIG'".to_owned()),
            ))
        };
        let mut readings = server("noeviction", "yes", "always", "", 0);
        for (what, replies) in &mut readings {
            if *what != REPLICATION {
                replies[0].1 = unknown();
            }
        }
        let found = risks(readings).unwrap();
        assert_eq!(
            settings(&found),
            vec![("maxmemory-policy, appendonly, appendfsync, save", false)]
        );
        assert!(
            found[0].risk.contains("could not read the settings"),
            "{}",
            found[0].risk
        );

        let mut readings = server("noeviction", "yes", "always", "", 0);
        readings[0].1[0].1 = Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(matches!(risks(readings), Err(StoreError::Unavailable(_))));

        let mut readings = server("noeviction", "yes", "always", "", 0);
        readings[0].1[0].1 = Err(RedisError::from((ErrorKind::Io, "gone")));
        match risks(readings) {
            Err(StoreError::Unavailable(error)) => {
                assert!(error.to_string().contains("gone"), "{error}");
            }
            other => panic!("a lost connection makes the store unavailable, got {other:?}"),
        }
    }

    #[test]
    fn cluster_risks_are_merged_and_name_their_primaries() {
        let node = |port: u16| Some(format!("127.0.0.1:{port}"));
        let readings = vec![
            (
                "maxmemory-policy",
                vec![
                    (node(7101), config("maxmemory-policy", "noeviction")),
                    (node(7102), config("maxmemory-policy", "allkeys-lru")),
                ],
            ),
            (
                "appendonly",
                vec![
                    (node(7101), config("appendonly", "no")),
                    (node(7102), config("appendonly", "no")),
                ],
            ),
            (
                "appendfsync",
                vec![
                    (node(7101), config("appendfsync", "everysec")),
                    (node(7102), config("appendfsync", "everysec")),
                ],
            ),
            (
                "save",
                vec![
                    (node(7101), config("save", "")),
                    (node(7102), config("save", "")),
                ],
            ),
            (
                REPLICATION,
                vec![
                    (node(7101), info("master", 0)),
                    (node(7102), info("master", 0)),
                ],
            ),
        ];
        let found = risks(readings).unwrap();
        assert_eq!(
            settings(&found),
            vec![
                ("appendonly=no, save=\"\"", false),
                ("maxmemory-policy=allkeys-lru", true),
            ]
        );
        assert!(
            found[0]
                .risk
                .ends_with("(on 127.0.0.1:7101, 127.0.0.1:7102)")
        );
        assert!(found[1].risk.ends_with("(on 127.0.0.1:7102)"));
    }
}
