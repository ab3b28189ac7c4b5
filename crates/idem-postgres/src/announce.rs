//! This process's subscription to the finishes other instances announce (`LISTEN` on
//! [`FINISHED_CHANNEL`]), forwarded to the engine's waiters; see `idem_core::store::Watch`.

use std::time::Duration;

use idem_core::{RecordId, StoreError};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use crate::sql::FINISHED_CHANNEL;
use crate::store::bounded_statement;

/// How long the subscription pauses after failing to reconnect before it tries again.
/// Waiters meanwhile fall back to re-reading their records.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Listens on a connection of its own, opened with `pool`'s options but outside it (a
/// listener holds its connection for as long as the store lives: taken from the pool, it
/// would leave a pool of one with none), and forwards each announced id to `sender`. Answers
/// once the `LISTEN` is in place, so a record marked after this returns is announced to it.
pub(crate) async fn listen(
    pool: &PgPool,
    sender: broadcast::Sender<RecordId>,
) -> Result<AbortHandle, StoreError> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = bounded_statement("watch", async {
        let mut listener = PgListener::connect_with(&own).await?;
        listener.listen(FINISHED_CHANNEL).await?;
        Ok(listener)
    })
    .await?;
    let task = tokio::spawn(async move {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Some(id) = record_id_from_hex(notification.payload()) {
                        // No receiver only means nobody waits right now.
                        let _ = sender.send(id);
                    }
                }
                // The connection was lost; the next call reconnects and listens again.
                // Announcements sent meanwhile are lost: waiters re-read on their backoff.
                Ok(None) => tracing::debug!("finish announcements: connection lost"),
                Err(sqlx::Error::PoolClosed) => break,
                Err(error) => {
                    tracing::warn!(%error, "finish announcements: cannot reconnect");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
        }
    });
    Ok(task.abort_handle())
}

/// A record id from the 64 hex digits `COMPLETE` and `RELEASE` announce; `None` for any other
/// payload (another application's `NOTIFY` on the same channel name).
fn record_id_from_hex(payload: &str) -> Option<RecordId> {
    let mut bytes = [0_u8; 32];
    hex::decode_to_slice(payload, &mut bytes).ok()?;
    Some(RecordId::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_id_reads_back_and_other_payloads_are_ignored() {
        let id = RecordId::from_bytes([0xab; 32]);
        assert_eq!(record_id_from_hex(&id.to_hex()), Some(id));
        assert_eq!(record_id_from_hex("ab"), None);
        assert_eq!(record_id_from_hex(&"zz".repeat(32)), None);
        assert_eq!(
            record_id_from_hex(&"+1".repeat(32)),
            None,
            "signs are not digits"
        );
    }

    #[test]
    fn both_finishing_statements_announce_on_the_listened_channel() {
        assert!(crate::sql::COMPLETE.contains(FINISHED_CHANNEL));
        assert!(crate::sql::RELEASE.contains(FINISHED_CHANNEL));
    }
}
