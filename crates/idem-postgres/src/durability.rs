//! What in PostgreSQL's own settings may make it forget completed records, for
//! [`Store::durability_risks`](idem_core::Store::durability_risks): the settings read from
//! the server (by `sql::DURABILITY_SETTINGS`) and the rules that judge them.
//!
//! | setting | risk |
//! |---|---|
//! | `fsync = off` | writes never flushed: a crash loses or corrupts records |
//! | `synchronous_commit = off` | commits acknowledged before they are on disk |
//! | standbys, no `synchronous_standby_names` | a failover loses the last commits |
//! | `synchronous_commit = local` with synchronous standbys | commits do not wait for them |
//!
//! None refuses the start: none deletes live records on its own.

use idem_core::DurabilityRisk;
use sqlx::Row;
use sqlx::postgres::PgRow;

/// The server settings that decide whether an acknowledged commit survives.
#[derive(Debug)]
pub(crate) struct DurabilitySettings {
    synchronous_commit: String,
    fsync: String,
    synchronous_standby_names: String,
    /// Standbys streaming from this server.
    standbys: i64,
}

impl DurabilitySettings {
    /// The settings in the row of `sql::DURABILITY_SETTINGS`.
    pub(crate) fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            synchronous_commit: row.try_get("synchronous_commit")?,
            fsync: row.try_get("fsync")?,
            synchronous_standby_names: row.try_get("synchronous_standby_names")?,
            standbys: row.try_get("standbys")?,
        })
    }

    /// What in these settings may make the server forget records. None of them deletes live
    /// records on its own, so none refuses the start: they only lose the last commits in a
    /// crash or a failover, which an operator may accept knowingly.
    pub(crate) fn risks(&self) -> Vec<DurabilityRisk> {
        let mut risks = Vec::new();
        if self.fsync.eq_ignore_ascii_case("off") {
            risks.push(loses_commits(
                "fsync=off",
                "PostgreSQL does not flush its writes to disk, so a crash of the server or its \
                 machine can lose or corrupt completed records, and a retry then executes the \
                 operation again.",
            ));
        }
        let synchronous_commit = self.synchronous_commit.to_ascii_lowercase();
        if synchronous_commit == "off" {
            risks.push(loses_commits(
                "synchronous_commit=off",
                "PostgreSQL acknowledges commits before they are on disk, so a crash of the \
                 server can lose the last completed records, and a retry of those requests \
                 then executes them again.",
            ));
        }
        let standby_names = self.synchronous_standby_names.trim();
        if self.standbys > 0 && standby_names.is_empty() {
            risks.push(loses_commits(
                "synchronous_standby_names=''",
                &format!(
                    "{} standby(s) replicate from this server asynchronously, so a failover to \
                     one of them can lose the last completed records, and a retry of those \
                     requests then executes them again.",
                    self.standbys
                ),
            ));
        } else if !standby_names.is_empty() && synchronous_commit == "local" {
            risks.push(loses_commits(
                "synchronous_commit=local",
                "Commits do not wait for the synchronous standbys, so a failover to a standby \
                 can lose the last completed records, and a retry of those requests then \
                 executes them again.",
            ));
        }
        risks
    }
}

/// A setting that may lose the last commits: reported, never refused.
fn loses_commits(setting: &str, risk: &str) -> DurabilityRisk {
    DurabilityRisk {
        setting: setting.to_owned(),
        risk: risk.to_owned(),
        refuse: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(
        synchronous_commit: &str,
        fsync: &str,
        names: &str,
        standbys: i64,
    ) -> DurabilitySettings {
        DurabilitySettings {
            synchronous_commit: synchronous_commit.to_owned(),
            fsync: fsync.to_owned(),
            synchronous_standby_names: names.to_owned(),
            standbys,
        }
    }

    fn risky_settings(settings: &DurabilitySettings) -> Vec<String> {
        settings
            .risks()
            .into_iter()
            .inspect(|risk| assert!(!risk.refuse, "{risk:?}"))
            .map(|risk| risk.setting)
            .collect()
    }

    #[test]
    fn defaults_on_a_single_server_are_no_risk() {
        assert!(risky_settings(&settings("on", "on", "", 0)).is_empty());
        // Without synchronous standbys, `local` flushes like `on`.
        assert!(risky_settings(&settings("local", "on", "", 0)).is_empty());
        assert!(risky_settings(&settings("on", "on", "FIRST 1 (s1)", 1)).is_empty());
    }

    #[test]
    fn each_setting_that_loses_commits_is_a_risk_that_does_not_refuse() {
        assert_eq!(risky_settings(&settings("on", "off", "", 0)), ["fsync=off"]);
        assert_eq!(
            risky_settings(&settings("off", "on", "", 0)),
            ["synchronous_commit=off"]
        );
        assert_eq!(
            risky_settings(&settings("on", "on", "", 2)),
            ["synchronous_standby_names=''"]
        );
        assert_eq!(
            risky_settings(&settings("local", "on", "s1", 1)),
            ["synchronous_commit=local"]
        );
        assert_eq!(risky_settings(&settings("off", "off", "", 1)).len(), 3);
    }
}
