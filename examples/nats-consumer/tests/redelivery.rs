//! JetStream redelivers on purpose (a third of the first deliveries are never acked, as by
//! a consumer that crashed after the effect), two consumers share the work, and every
//! signup's email is sent exactly once: counted in the effect's table. Needs NATS with
//! JetStream (`IDEM_TEST_NATS_URL`, 127.0.0.1:4222 by default) and PostgreSQL
//! (`IDEM_TEST_POSTGRES_URL`); fails, saying which, when either is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use example_nats_consumer::{Signup, consume, consumer, migrate};
use idem_core::Engine;
use idem_postgres::PostgresStore;

fn postgres_url() -> String {
    std::env::var("IDEM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn nats_url() -> String {
    std::env::var("IDEM_TEST_NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_messages_send_one_email_each() {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let nats = async_nats::connect(nats_url()).await.expect(
        "NATS with JetStream on IDEM_TEST_NATS_URL (127.0.0.1:4222): start nats-server -js",
    );
    let jetstream = async_nats::jetstream::new(nats);
    let pool = sqlx::PgPool::connect(&postgres_url())
        .await
        .expect("PostgreSQL on IDEM_TEST_POSTGRES_URL");
    migrate(&pool).await.unwrap();
    let store = PostgresStore::connect(&postgres_url()).await.unwrap();
    let engine = Engine::new(store);

    let stream = format!("IDEM_SIGNUPS_{run}");
    let subjects = format!("signups.{run}.>");
    let consumer_a = consumer(&jetstream, &stream, &subjects, "welcome")
        .await
        .unwrap();
    let consumer_b = consumer(&jetstream, &stream, &subjects, "welcome")
        .await
        .unwrap();
    let signups: Vec<Signup> = (0..30)
        .map(|index| Signup {
            signup_id: format!("{run}-{index}"),
            email: format!("user{index}@example.com"),
        })
        .collect();
    for signup in &signups {
        jetstream
            .publish(
                format!("signups.{run}.new"),
                serde_json::to_vec(signup).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // Every third signup's first delivery is never acked, on whichever consumer gets it.
    let lost = Arc::new(Mutex::new(HashSet::new()));
    let lose_ack = |lost: Arc<Mutex<HashSet<String>>>| {
        move |signup: &Signup| {
            let index: usize = signup
                .signup_id
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            index.is_multiple_of(3) && lost.lock().unwrap().insert(signup.signup_id.clone())
        }
    };
    let (a, b) = tokio::join!(
        consume(
            consumer_a,
            engine.clone(),
            pool.clone(),
            lose_ack(Arc::clone(&lost))
        ),
        consume(
            consumer_b,
            engine.clone(),
            pool.clone(),
            lose_ack(Arc::clone(&lost))
        ),
    );
    let deliveries = a.unwrap() + b.unwrap();
    assert!(
        deliveries >= signups.len() + 10,
        "the lost acks were redelivered: {deliveries} deliveries"
    );

    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT signup_id, count(*) FROM example_welcome_emails WHERE signup_id LIKE $1 GROUP BY signup_id",
    )
    .bind(format!("{run}-%"))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), signups.len(), "every signup got its email");
    for (signup_id, emails) in rows {
        assert_eq!(emails, 1, "{signup_id} was sent {emails} emails");
    }
    jetstream.delete_stream(&stream).await.unwrap();
}
