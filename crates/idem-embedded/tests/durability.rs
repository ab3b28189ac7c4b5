//! Durability of the embedded store: completed records survive `kill -9`, and concurrent
//! writes share fsyncs (group commit).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idem_core::{
    BeginOutcome, BeginRequest, Clock, CompleteRequest, Fingerprint, LeaseToken, ManualClock,
    OnLapse, RecordId, Store, StoredResponse, SystemClock,
};
use idem_embedded::{DATABASE_DIR, EmbeddedStore, OpenError};

/// The environment variable that turns the `crash_child` test into the process being killed.
const CHILD_DIR: &str = "IDEM_EMBEDDED_CRASH_CHILD_DIR";

fn id(n: u32) -> RecordId {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    RecordId::from_bytes(bytes)
}

fn fingerprint(n: u32) -> Fingerprint {
    Fingerprint::builder().part("n", &n.to_be_bytes()).finish()
}

fn begin_request(n: u32, token: LeaseToken) -> BeginRequest {
    BeginRequest {
        id: id(n),
        fingerprint: fingerprint(n),
        token,
        lease: Duration::from_secs(60),
        ttl: Duration::from_secs(3600),
        on_lapse: OnLapse::ReportUnknown,
    }
}

fn response(n: u32) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![],
        body: Some(Bytes::from(format!("result {n}"))),
    }
}

/// Not a test on its own: run by `completed_records_survive_kill_9` as the child process. It
/// completes records forever, printing each number once `complete` has returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child half of completed_records_survive_kill_9"]
async fn crash_child() {
    let Ok(directory) = std::env::var(CHILD_DIR) else {
        return;
    };
    let store = EmbeddedStore::open(directory).expect("store opens");
    let mut stdout = std::io::stdout().lock();
    for n in 0.. {
        let token = LeaseToken::random();
        assert_eq!(
            store.begin(begin_request(n, token)).await.expect("begin"),
            BeginOutcome::Acquired
        );
        let complete = CompleteRequest {
            id: id(n),
            token,
            response: response(n),
            ttl: Duration::from_secs(3600),
        };
        store.complete(complete).await.expect("complete");
        writeln!(stdout, "completed {n}").expect("stdout");
        stdout.flush().expect("stdout");
    }
}

#[tokio::test]
async fn completed_records_survive_kill_9() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, directory.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut completed = Vec::new();
    while completed.len() < 200 {
        let line = lines
            .next()
            .expect("child still running")
            .expect("readable line");
        if let Some(n) = line.strip_prefix("completed ") {
            completed.push(n.parse::<u32>().expect("a number"));
        }
    }
    // SIGKILL: no destructor, no flush, no clean close of the database.
    child.kill().expect("kill -9");
    child.wait().expect("child reaped");

    let store = EmbeddedStore::open(directory.path()).expect("store reopens after a crash");
    for n in completed {
        assert_eq!(
            store
                .begin(begin_request(n, LeaseToken::random()))
                .await
                .expect("begin"),
            BeginOutcome::Replay(response(n)),
            "record {n} was acknowledged as completed before the crash and must replay"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_commits() {
    const WRITES: u32 = 400;
    let directory = tempfile::tempdir().expect("temporary directory");
    let store = Arc::new(EmbeddedStore::open(directory.path()).expect("store opens"));
    let before = store.commit_stats();
    let tasks: Vec<_> = (0..WRITES)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .begin(begin_request(n, LeaseToken::random()))
                    .await
                    .expect("begin")
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), BeginOutcome::Acquired);
    }
    let after = store.commit_stats();
    let commits = after.commits - before.commits;
    assert_eq!(after.operations - before.operations, u64::from(WRITES));
    assert!(
        commits < u64::from(WRITES) / 2,
        "{WRITES} concurrent writes took {commits} commits: group commit is not batching"
    );
}

#[test]
fn a_store_in_use_cannot_be_opened_twice() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let _store = EmbeddedStore::open(directory.path()).expect("store opens");
    match EmbeddedStore::open(directory.path()) {
        Err(OpenError::Database { path, source }) => {
            assert!(
                matches!(*source, fjall::Error::Locked),
                "fjall locks the directory: {source:?}"
            );
            assert_eq!(path, directory.path().join(DATABASE_DIR));
        }
        other => panic!("expected the database to be locked, got {other:?}"),
    }
}

/// Leases and expiry follow the store's clock across a reopening: the expiry index is on disk
/// with the records, and a store reopened later (by its clock) sweeps what expired meanwhile
/// and keeps the rest.
#[tokio::test]
async fn expiry_follows_the_clock_across_a_reopening() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let clock = ManualClock::new(SystemClock.now());
    {
        let store = EmbeddedStore::builder(directory.path())
            .clock(clock.clone())
            .open()
            .expect("store opens");
        for n in 0..3 {
            let token = LeaseToken::random();
            store.begin(begin_request(n, token)).await.expect("begin");
            let ttl = Duration::from_secs(if n == 0 { 7200 } else { 60 });
            let complete = CompleteRequest {
                id: id(n),
                token,
                response: response(n),
                ttl,
            };
            store.complete(complete).await.expect("complete");
        }
        // In flight, its lease lapsing in a minute.
        store
            .begin(begin_request(3, LeaseToken::random()))
            .await
            .expect("begin");
    }
    // Dropping the store stops its writer; the directory is free once the thread exits.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let store = loop {
        match EmbeddedStore::builder(directory.path())
            .clock(clock.clone())
            .open()
        {
            Ok(store) => break store,
            Err(error) if std::time::Instant::now() > deadline => panic!("no reopening: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        store
            .begin(begin_request(3, LeaseToken::random()))
            .await
            .expect("begin"),
        BeginOutcome::OutcomeUnknown,
        "the lease lapsed by the store's clock"
    );
    clock.advance(Duration::from_secs(3600));
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 3);
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 0);
    assert_eq!(
        store
            .begin(begin_request(0, LeaseToken::random()))
            .await
            .expect("begin"),
        BeginOutcome::Replay(response(0))
    );
    for n in 1..4 {
        assert!(store.get(id(n)).await.expect("get").is_none());
    }
}

/// A renewal moves the record's entry in the expiry index along with its expiry: a sweep past
/// the expiry the record was begun with leaves it alone (a TTL past its renewed lease), and one
/// past its renewed expiry deletes it, leaving no stale index entry behind.
#[tokio::test]
async fn renewal_moves_the_expiry_index_entry() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let clock = ManualClock::new(SystemClock.now());
    let store = EmbeddedStore::builder(directory.path())
        .clock(clock.clone())
        .open()
        .expect("store opens");
    let token = LeaseToken::random();
    // Lease 60 s, TTL an hour: expires at 3660 s unless renewed.
    store.begin(begin_request(10, token)).await.expect("begin");
    // Renewed every 50 s, past the original expiry.
    for _ in 0..80 {
        clock.advance(Duration::from_secs(50));
        store
            .renew(id(10), token, Duration::from_secs(60))
            .await
            .expect("renew");
    }
    // Now at 4000 s, the lease until 4060 s, the record expiring at 7660 s.
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 0);
    let snapshot = store.get(id(10)).await.expect("get").expect("kept");
    assert_eq!(snapshot.expires_in(), Duration::from_secs(3660));
    // The owner stops: the lease lapses, the record is kept an hour more, then swept.
    clock.advance(Duration::from_secs(3660) - Duration::from_millis(1));
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 0);
    assert_eq!(
        store
            .begin(begin_request(10, LeaseToken::random()))
            .await
            .expect("begin"),
        BeginOutcome::OutcomeUnknown
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 1);
    assert_eq!(store.sweep_expired(100).await.expect("sweep"), 0);
    assert!(store.get(id(10)).await.expect("get").is_none());
}
