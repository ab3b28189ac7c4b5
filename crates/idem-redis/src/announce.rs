//! This process's subscription to the finishes other instances announce (`SUBSCRIBE` to the
//! store's finish channel), forwarded to the engine's waiters; see `idem_core::store::Watch`.
//!
//! A cluster delivers a `PUBLISH` to the subscribers of every node, so one connection to any
//! node hears the finishes of all of them; a subscription that breaks moves on to the next
//! seed node.

use std::time::Duration;

use futures_util::StreamExt;
use idem_core::{RecordId, StoreError};
use redis::Client;
use redis::aio::PubSub;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use crate::codec::record_id_from_key;
use crate::error::store_error;
use crate::store::OPERATION_TIMEOUT;

/// How long the subscription pauses before reconnecting after its connection broke. Waiters
/// meanwhile fall back to re-reading their records.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The channel a store with `prefix` announces finishes on: stores with other prefixes (other
/// applications on the same Redis) neither hear nor wake each other.
pub(crate) fn finished_channel(prefix: &str) -> String {
    format!("{prefix}:finished")
}

/// Subscribes on a connection of its own to one of `nodes` (the server, or a cluster's seed
/// nodes, tried in turn) and forwards each announced record of `prefix` to `sender`. Answers
/// once subscribed, so a record marked after this returns is announced to it.
pub(crate) async fn listen(
    nodes: Vec<Client>,
    prefix: String,
    sender: broadcast::Sender<RecordId>,
) -> Result<AbortHandle, StoreError> {
    let channel = finished_channel(&prefix);
    let mut next = 0;
    let mut pubsub = subscribe_any(&nodes, &mut next, &channel).await?;
    let task = tokio::spawn(async move {
        loop {
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let key: Option<String> = message.get_payload().ok();
                if let Some(id) = key.and_then(|key| record_id_from_key(&prefix, &key)) {
                    // No receiver only means nobody waits right now.
                    let _ = sender.send(id);
                }
            }
            drop(messages);
            // The connection broke. Announcements sent until it is back are lost: waiters
            // re-read on their backoff.
            pubsub = loop {
                tokio::time::sleep(RECONNECT_PAUSE).await;
                match subscribe_any(&nodes, &mut next, &channel).await {
                    Ok(pubsub) => break pubsub,
                    Err(error) => {
                        tracing::warn!(%error, "finish announcements: cannot resubscribe");
                    }
                }
            };
        }
    });
    Ok(task.abort_handle())
}

/// Subscribes on the first of `nodes`, from the one at `next` on, that accepts; `next` is left
/// at the one after it, so the next attempt starts with another node.
async fn subscribe_any(
    nodes: &[Client],
    next: &mut usize,
    channel: &str,
) -> Result<PubSub, StoreError> {
    let mut last_error = StoreError::unavailable("no node to subscribe to");
    for _ in 0..nodes.len() {
        let node = &nodes[*next % nodes.len()];
        *next = (*next + 1) % nodes.len();
        match subscribe(node, channel).await {
            Ok(pubsub) => return Ok(pubsub),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

async fn subscribe(client: &Client, channel: &str) -> Result<PubSub, StoreError> {
    idem_core::bounded("watch", OPERATION_TIMEOUT, async {
        let mut pubsub = client.get_async_pubsub().await.map_err(store_error)?;
        pubsub.subscribe(channel).await.map_err(store_error)?;
        Ok(pubsub)
    })
    .await
}
