//! Group commit: every change the VEEM acknowledges goes through here. Changes that arrive while
//! a transaction is being written are gathered into the next one, so many concurrent requests
//! share one fsync while each still waits until its own changes are durable.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use veem_store::{Change, Store};

use crate::error::CoreError;

type Reply = oneshot::Sender<Result<(), CoreError>>;

/// Changes are committed in the order they were enqueued, so a caller that enqueues under a lock
/// (as InitializeVEEs does with the ids it takes) gets that order in the store too; those
/// enqueued with [`Committer::enqueue_ahead`] go before them.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<(Vec<Change>, Reply)>,
    /// Changes committed ahead of what `tx` holds (see [`Committer::enqueue_ahead`]).
    ahead: mpsc::UnboundedSender<(Vec<Change>, Reply)>,
}

/// Callers' changes are gathered into one transaction until it holds this many rows (the last
/// caller gathered may take it past), so that one transaction stays short: what is enqueued
/// ahead waits for the one being written.
const MAX_BATCH: usize = 4096;

/// The rows a change writes, about: a change of many accounting records or outbox entries
/// costs as much as that many changes of one row.
fn rows(changes: &[Change]) -> usize {
    changes
        .iter()
        .map(|change| match change {
            Change::AppendAccounting(records) => records.len(),
            Change::QueueAccounting(entries) => entries.len(),
            Change::SettleAccounting(ids) => ids.len(),
            _ => 1,
        })
        .sum()
}

impl Committer {
    pub fn start(store: Arc<dyn Store>) -> Self {
        // Unbounded so that enqueueing never waits (it may happen under a lock); every caller
        // awaits its reply, so the queue is bounded by the requests in flight.
        let (tx, rx) = mpsc::unbounded_channel();
        let (ahead, ahead_rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx, ahead_rx));
        Self { tx, ahead }
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
        Self::send(&self.tx, changes)
    }

    /// As [`Committer::enqueue`], but committed before the changes waiting in the ordinary
    /// queue (after the transaction being written), in a transaction of their own. Only for
    /// changes whose outcome does not depend on what waits there: settling accounting outbox
    /// entries, which are durable already (they were pushed), so that a settlement, which the
    /// pusher waits for, does not wait behind a burst of accounting records.
    pub fn enqueue_ahead(
        &self,
        changes: Vec<Change>,
    ) -> impl std::future::Future<Output = Result<(), CoreError>> + Send + 'static {
        Self::send(&self.ahead, changes)
    }

    fn send(
        queue: &mpsc::UnboundedSender<(Vec<Change>, Reply)>,
        changes: Vec<Change>,
    ) -> impl std::future::Future<Output = Result<(), CoreError>> + Send + 'static {
        let stopped = || CoreError::broken("the committer has stopped");
        let (reply, done) = oneshot::channel();
        // None: nothing to commit; Some(false): the committer is gone.
        let queued = (!changes.is_empty()).then(|| queue.send((changes, reply)).is_ok());
        async move {
            match queued {
                None => Ok(()),
                Some(false) => Err(stopped()),
                Some(true) => done.await.unwrap_or_else(|_| Err(stopped())),
            }
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<(Vec<Change>, Reply)>,
    mut ahead: mpsc::UnboundedReceiver<(Vec<Change>, Reply)>,
) {
    loop {
        // What waits ahead goes first, and alone: gathered with the ordinary queue it would
        // wait for all of that queue's changes to be written.
        let (first, queue) = tokio::select! {
            biased;
            Some(first) = ahead.recv() => (first, &mut ahead),
            Some(first) = rx.recv() => (first, &mut rx),
            else => return,
        };
        let mut group = vec![first];
        let mut size = rows(&group[0].0);
        while size < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => {
                    size += rows(&next.0);
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let store = store.clone();
        let timer = crate::metrics::instruments::commit_timer();
        let outcome = tokio::task::spawn_blocking(move || commit_group(&*store, group)).await;
        drop(timer);
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

#[cfg(test)]
mod tests {
    use veem_store::conformance::plain_record;
    use veem_store::{SqliteStore, FIRST_VEE_SEQ};

    use super::*;

    #[tokio::test]
    async fn what_is_enqueued_ahead_is_committed_before_what_waits() {
        let store = Arc::new(SqliteStore::open_in_memory().expect("an in-memory store"));
        let committer = Committer::start(store);
        let vee = plain_record(FIRST_VEE_SEQ);
        let other = plain_record(FIRST_VEE_SEQ + 1);
        // Nothing runs before the first await (a single-threaded runtime): both wait when the
        // second insert of `vee` is enqueued ahead of them.
        let first = committer.enqueue(vec![Change::InsertVee(vee.clone())]);
        let then = committer.enqueue(vec![Change::InsertVee(other)]);
        let ahead = committer.enqueue_ahead(vec![Change::InsertVee(vee)]);
        assert!(ahead.await.is_ok(), "committed first");
        assert!(
            first.await.is_err(),
            "committed after it: the VEE exists already"
        );
        assert!(then.await.is_ok(), "the rest in order, unharmed");
    }
}
