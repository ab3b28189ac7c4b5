//! A queue consumer whose effect runs at most once per message, although JetStream delivers
//! at least once: a message whose ack was lost (the consumer crashed after the effect, or
//! the ack timed out) comes back, and its second delivery must not send a second email.
//!
//! Each delivery goes through [`Engine::run`](idem_core::Engine::run), keyed by the
//! message's `signup_id`: the first delivery runs the effect and stores its receipt; every
//! redelivery, on this consumer or another one sharing the PostgreSQL store, gets the
//! receipt back and runs nothing. Only then is the message acked.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let nats = async_nats::connect("127.0.0.1:4222").await?;
//! let jetstream = async_nats::jetstream::new(nats);
//! let store = idem_postgres::PostgresStore::connect("postgres://postgres@127.0.0.1/test").await?;
//! let engine = idem_core::Engine::new(store);
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
//! example_nats_consumer::migrate(&pool).await?;
//! let consumer = example_nats_consumer::consumer(&jetstream, "SIGNUPS", "signups.>", "welcome").await?;
//! example_nats_consumer::consume(consumer, engine, pool, |_| false).await?;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures_util::StreamExt;
use idem_core::{Call, Engine, RunError, Store};
use serde::{Deserialize, Serialize};

/// A signup, as published on the stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Signup {
    /// The signup's own id: the idempotency key.
    pub signup_id: String,
    /// Where the welcome email goes.
    pub email: String,
}

/// What sending the welcome email answered: kept, and replayed to every redelivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The row of the email's effect.
    pub email_id: i64,
}

/// The effect's table: one row per email sent. No unique constraint on purpose: a second
/// run would show as a second row.
pub async fn migrate(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_welcome_emails (
            id BIGSERIAL PRIMARY KEY,
            signup_id TEXT NOT NULL,
            email TEXT NOT NULL
        )",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A stream `stream` on `subjects` and a durable pull consumer `name` on it that redelivers
/// a message not acked within a second.
pub async fn consumer(
    jetstream: &jetstream::Context,
    stream: &str,
    subjects: &str,
    name: &str,
) -> anyhow::Result<PullConsumer> {
    let stream = jetstream
        .get_or_create_stream(jetstream::stream::Config {
            name: stream.to_owned(),
            subjects: vec![subjects.to_owned()],
            ..Default::default()
        })
        .await
        .context("cannot create the stream")?;
    stream
        .get_or_create_consumer(
            name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                ack_wait: Duration::from_secs(1),
                max_deliver: 10,
                ..Default::default()
            },
        )
        .await
        .context("cannot create the consumer")
}

/// Consumes `consumer` until its messages stop coming for two seconds: each message's
/// effect at most once, then its ack. `lose_ack` says which deliveries to leave unacked,
/// as a consumer that crashed after the effect would (the tests use it to force
/// redeliveries).
pub async fn consume<S: Store>(
    consumer: PullConsumer,
    engine: Engine<S>,
    pool: sqlx::PgPool,
    lose_ack: impl Fn(&Signup) -> bool,
) -> anyhow::Result<usize> {
    let call = Call::new("send_welcome_email").key_from("/signup_id");
    let mut deliveries = 0;
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(10)
            .expires(Duration::from_secs(2))
            .messages()
            .await?;
        let mut got = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|error| anyhow::anyhow!("{error}"))?;
            got += 1;
            deliveries += 1;
            let signup: Signup = serde_json::from_slice(&message.payload)?;
            let outcome = engine
                .run(&call, &signup, || send_welcome_email(&pool, &signup))
                .await;
            match outcome {
                Ok(_receipt) => {}
                // Another consumer is sending it right now: let JetStream redeliver.
                Err(RunError::InFlight { .. }) => continue,
                // The effect failed, key released: JetStream redelivers and it runs again.
                // (`send_welcome_email` fails only before its row is committed; a lost
                // commit acknowledgement would be ambiguous, see the function.)
                Err(RunError::Failed(error)) => {
                    eprintln!("signup {}: {error}; redelivered later", signup.signup_id);
                    continue;
                }
                // No retry will ever run it (a reused id with another payload, an unknown
                // outcome for an operator, an unreadable payload): park the message rather
                // than stop the consumer.
                Err(error) => {
                    eprintln!("signup {}: {error}; terminated", signup.signup_id);
                    message
                        .ack_with(jetstream::AckKind::Term)
                        .await
                        .map_err(|error| anyhow::anyhow!("{error}"))?;
                    continue;
                }
            }
            if lose_ack(&signup) {
                continue;
            }
            message
                .ack()
                .await
                .map_err(|error| anyhow::anyhow!("{error}"))?;
        }
        if got == 0 {
            return Ok(deliveries);
        }
    }
}

/// The effect: one email, one row. An error means the row was not written, with one
/// exception no client can rule out: the connection breaking after PostgreSQL committed but
/// before it said so. A real system closes that gap by writing the idempotency record in
/// the same transaction as the effect, or by an effect that checks for itself.
async fn send_welcome_email(pool: &sqlx::PgPool, signup: &Signup) -> Result<Receipt, sqlx::Error> {
    let email_id = sqlx::query_scalar(
        "INSERT INTO example_welcome_emails (signup_id, email) VALUES ($1, $2) RETURNING id",
    )
    .bind(&signup.signup_id)
    .bind(&signup.email)
    .fetch_one(pool)
    .await?;
    Ok(Receipt { email_id })
}
