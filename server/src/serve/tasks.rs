//! The daemon's background work: every long-lived task (DHCP, TFTP, the scheduler, a
//! deployment's watchers, ...) is spawned through [`Tasks`], inside a tracing span that names
//! it and with the server's cancellation token, so its log lines say whose they are, its
//! failure is logged rather than lost, and a shutdown stops every one of them.
//!
//! Short, bounded work (one TFTP transfer, one HTTPS handshake) runs inside its listener's task
//! and span.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The server's background tasks.
#[derive(Clone, Default)]
pub(crate) struct Tasks {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// Runs `work` in `span` until it ends or the server shuts down; an error is logged.
    pub(crate) fn spawn<F>(&self, span: tracing::Span, work: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(
            async move {
                tokio::select! {
                    _ = cancel.cancelled() => tracing::debug!("stopped: the server shuts down"),
                    r = work => if let Err(e) = r {
                        tracing::error!(error = %format!("{e:#}"), "stopped");
                    },
                }
            }
            .instrument(span),
        );
    }

    /// Resolves once the server shuts down (for loops that end on their own terms).
    pub(crate) fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.cancel.clone().cancelled_owned()
    }

    /// Stops every task and waits for them, `within` at most.
    pub(crate) async fn shutdown(&self, within: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_shutdown_stops_every_task_and_waits_for_them() {
        let tasks = Tasks::default();
        let ended = Arc::new(AtomicBool::new(false));
        let e = ended.clone();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        tasks.spawn(tracing::info_span!("forever"), async move {
            let _guard = SetOnDrop(e);
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
            Ok(())
        });
        tasks.spawn(tracing::info_span!("fails"), async {
            anyhow::bail!("broken")
        });
        started.await.unwrap();
        assert!(!ended.load(Ordering::SeqCst));
        assert!(tasks.shutdown(Duration::from_secs(5)).await);
        assert!(
            ended.load(Ordering::SeqCst),
            "the endless task was not stopped"
        );
    }

    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
