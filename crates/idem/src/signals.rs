//! Shutting down on SIGTERM or SIGINT: a flag every listener watches.

use tokio::sync::watch;

/// A flag that turns true on the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (trigger, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        let _ = trigger.send(true);
    });
    shutdown
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
