//! Why fjall: durable commits per second of the three embedded engines we considered, side by
//! side in one run on the same disk (the store was first built on redb; this comparison moved
//! it to fjall, see `docs/benchmarks.md`). Each commit writes one record-sized value (a 32-byte key,
//! a 300-byte value, the size of a small stored response) and is fsynced before the next
//! one starts; then the same with 64 records per commit, what group commit does under load.
//!
//! - redb: `Durability::Immediate` (its default), one write transaction per commit;
//! - fjall: an LSM tree; `Database::persist(PersistMode::SyncAll)` after the inserts;
//! - SQLite (bundled): WAL journal, `synchronous = FULL`, one transaction per commit.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use redb::TableDefinition;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");
const VALUE: [u8; 300] = [7; 300];

fn key(n: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&n.to_be_bytes());
    key
}

/// Runs `commit(first_record, records)` until `budget` has passed; answers records per second
/// and commits per second.
fn measure(budget: Duration, per_commit: u64, mut commit: impl FnMut(u64, u64)) -> (f64, f64) {
    let started = Instant::now();
    let mut commits = 0u64;
    while started.elapsed() < budget {
        commit(commits * per_commit, per_commit);
        commits += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    (
        (commits * per_commit) as f64 / seconds,
        commits as f64 / seconds,
    )
}

fn redb(directory: &std::path::Path, budget: Duration, per_commit: u64) -> (f64, f64) {
    let database = redb::Database::create(directory.join("bench.redb")).unwrap();
    measure(budget, per_commit, |first, count| {
        let transaction = database.begin_write().unwrap();
        {
            let mut table = transaction.open_table(TABLE).unwrap();
            for n in first..first + count {
                table.insert(key(n).as_slice(), VALUE.as_slice()).unwrap();
            }
        }
        transaction.commit().unwrap();
    })
}

fn fjall(directory: &std::path::Path, budget: Duration, per_commit: u64) -> (f64, f64) {
    let database = fjall::Database::builder(directory.join("fjall"))
        .open()
        .unwrap();
    let keyspace = database
        .keyspace("bench", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    measure(budget, per_commit, |first, count| {
        for n in first..first + count {
            keyspace.insert(key(n), VALUE).unwrap();
        }
        database.persist(fjall::PersistMode::SyncAll).unwrap();
    })
}

fn sqlite(directory: &std::path::Path, budget: Duration, per_commit: u64) -> (f64, f64) {
    let mut connection = rusqlite::Connection::open(directory.join("bench.sqlite")).unwrap();
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    connection
        .pragma_update(None, "synchronous", "FULL")
        .unwrap();
    connection
        .execute(
            "CREATE TABLE bench (k BLOB PRIMARY KEY, v BLOB NOT NULL)",
            [],
        )
        .unwrap();
    measure(budget, per_commit, |first, count| {
        let transaction = connection.transaction().unwrap();
        {
            let mut insert = transaction
                .prepare_cached("INSERT INTO bench (k, v) VALUES (?1, ?2)")
                .unwrap();
            for n in first..first + count {
                insert
                    .execute((key(n).as_slice(), VALUE.as_slice()))
                    .unwrap();
            }
        }
        transaction.commit().unwrap();
    })
}

fn main() {
    // `cargo test --benches` runs every bench once as a smoke test: keep that quick.
    let budget = if std::env::args().any(|arg| arg == "--bench") {
        Duration::from_secs(3)
    } else {
        Duration::from_millis(100)
    };
    println!("durable commits on this disk, {budget:?} per cell, one run");
    println!(
        "{:<8} {:>22} {:>28}",
        "engine", "1 record/commit", "64 records/commit"
    );
    type Engine = fn(&std::path::Path, Duration, u64) -> (f64, f64);
    let engines: [(&str, Engine); 3] = [("redb", redb), ("fjall", fjall), ("sqlite", sqlite)];
    for (name, engine) in engines {
        let single = engine(tempfile::tempdir().unwrap().path(), budget, 1);
        let batched = engine(tempfile::tempdir().unwrap().path(), budget, 64);
        println!(
            "{name:<8} {:>10.0} records/s {:>12.0} records/s ({:.0} commits/s)",
            single.0, batched.0, batched.1
        );
    }
}
