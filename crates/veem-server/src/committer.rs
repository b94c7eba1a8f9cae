//! Group commit: every change the VEEM acknowledges goes through here. Changes that arrive while
//! a transaction is being written are gathered into the next one, so many concurrent requests
//! share one fsync while each still waits until its own changes are durable.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use veem_store::{Change, Store};

use crate::error::CoreError;

type Reply = oneshot::Sender<Result<(), CoreError>>;

/// Changes are committed in the order they were enqueued, so a caller that enqueues under a lock
/// (as InitializeVEEs does with the ids it takes) gets that order in the store too.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<(Vec<Change>, Reply)>,
}

/// At most this many changes go into one transaction, so one transaction stays short.
const MAX_BATCH: usize = 4096;

impl Committer {
    pub fn start(store: Arc<dyn Store>) -> Self {
        // Unbounded so that enqueueing never waits (it may happen under a lock); every caller
        // awaits its reply, so the queue is bounded by the requests in flight.
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        Self { tx }
    }

    /// Returns once `changes` are durable, or with the reason they are not (then none are).
    pub async fn commit(&self, changes: Vec<Change>) -> Result<(), CoreError> {
        self.enqueue(changes).await
    }

    /// Queues `changes` at once, without waiting; the returned future resolves when they are
    /// durable (or with the reason they are not).
    pub fn enqueue(
        &self,
        changes: Vec<Change>,
    ) -> impl std::future::Future<Output = Result<(), CoreError>> + Send + 'static {
        let stopped = || CoreError::broken("the committer has stopped");
        let (reply, done) = oneshot::channel();
        // None: nothing to commit; Some(false): the committer is gone.
        let queued = (!changes.is_empty()).then(|| self.tx.send((changes, reply)).is_ok());
        async move {
            match queued {
                None => Ok(()),
                Some(false) => Err(stopped()),
                Some(true) => done.await.unwrap_or_else(|_| Err(stopped())),
            }
        }
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<(Vec<Change>, Reply)>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let mut size = group[0].0.len();
        while size < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => {
                    size += next.0.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let store = store.clone();
        let outcome = tokio::task::spawn_blocking(move || commit_group(&*store, group)).await;
        if let Err(e) = outcome {
            tracing::error!(error = %e, "the commit task panicked");
        }
    }
}

/// Commits a group in one transaction; if that fails, each member alone, so that one member's
/// conflict does not fail the others.
fn commit_group(store: &dyn Store, group: Vec<(Vec<Change>, Reply)>) {
    if group.len() > 1 {
        let all: Vec<Change> = group.iter().flat_map(|(c, _)| c.iter().cloned()).collect();
        if store.commit(&all).is_ok() {
            for (_, reply) in group {
                let _ = reply.send(Ok(()));
            }
            return;
        }
    }
    for (changes, reply) in group {
        let _ = reply.send(store.commit(&changes).map_err(CoreError::from));
    }
}
