//! Group writes: the small writes many requests make at once done together (presence refreshes and
//! delivery marks as one statement, chat messages as one transaction), and group lookups ([`Lookups`]:
//! tokens, gaps) as one query.
//!
//! A [`Batcher`] owns one task that takes every item queued since its last write and writes them
//! together. While one write runs the next batch gathers, so a busy server writes fewer, larger batches
//! (one statement crossing to the database instead of one per request). Items nobody waits for
//! ([`Batcher::queue`]) may also wait up to the batcher's `gather` time for company; an item whose caller
//! waits ([`Batcher::submit`]) is written at once.

use std::{collections::HashMap, future::Future, hash::Hash, time::Duration};

use tokio::sync::{mpsc, oneshot};

use super::DbError;

/// Items written per batch at most; twice that may wait before [`Batcher::submit`] waits for room.
const MAX_BATCH: usize = 500;

/// An item and, when its caller waits, how to tell it the batch was written.
type Queued<T> = (T, Option<oneshot::Sender<()>>);

/// Queues items for a writer task that handles them in batches. Cheap to clone.
pub struct Batcher<T> {
    tx: mpsc::Sender<Queued<T>>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

/// The writer task is gone (the service is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the batch writer has stopped")]
pub struct Stopped;

impl From<Stopped> for super::DbError {
    fn from(_: Stopped) -> Self {
        super::DbError::Unavailable("the service is shutting down".into())
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the writer task: `write` gets each batch (in arrival order, never empty) and handles its
    /// own errors. A batch of queued items only waits up to `gather` for more. The task ends when every
    /// clone of the batcher is dropped.
    pub fn spawn<F, Fut>(gather: Duration, write: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::spawn_with(MAX_BATCH, gather, write)
    }

    fn spawn_with<F, Fut>(max_batch: usize, gather: Duration, mut write: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Queued<T>>(max_batch * 2);
        tokio::spawn(async move {
            let mut queued = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut queued, max_batch).await > 0 {
                if !gather.is_zero() && queued.iter().all(|(_, waiter)| waiter.is_none()) {
                    let until = tokio::time::Instant::now() + gather;
                    while queued.len() < max_batch {
                        let room = max_batch - queued.len();
                        tokio::select! {
                            n = rx.recv_many(&mut queued, room) => if n == 0 { break },
                            () = tokio::time::sleep_until(until) => break,
                        }
                        if queued.iter().any(|(_, waiter)| waiter.is_some()) {
                            break;
                        }
                    }
                }
                let (items, waiters): (Vec<T>, Vec<_>) = queued.drain(..).unzip();
                write(items).await;
                for w in waiters.into_iter().flatten() {
                    let _ = w.send(());
                }
            }
        });
        Batcher { tx }
    }

    /// Queues an item and waits until the batch holding it was written (or its write failed: the
    /// writer reports that itself).
    pub async fn submit(&self, item: T) -> Result<(), Stopped> {
        let (done, written) = oneshot::channel();
        self.tx
            .send((item, Some(done)))
            .await
            .map_err(|_| Stopped)?;
        written.await.map_err(|_| Stopped)
    }

    /// Queues an item that carries its own reply channel (`item` builds it around the sender) and
    /// waits for what the writer answers on it.
    pub async fn ask<R>(&self, item: impl FnOnce(oneshot::Sender<R>) -> T) -> Result<R, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.submit(item(reply)).await?;
        answer.await.map_err(|_| Stopped)
    }

    /// Queues an item without waiting for its write (when the queue is full, a task waits for room).
    pub fn queue(&self, item: T) {
        if let Err(mpsc::error::TrySendError::Full(item)) = self.tx.try_send((item, None)) {
            let tx = self.tx.clone();
            tokio::spawn(async move { tx.send(item).await });
        }
    }
}

/// Lookups by key of many requests answered by one query: every key asked while one query runs goes
/// into the next. Each request still reads the database after it arrived, but a burst costs one
/// statement instead of one each, and a herd of thousands of requests waits as small queued items
/// instead of thousands of database futures. Cheap to clone.
pub struct Lookups<K, V> {
    queries: Batcher<(K, LookupReply<V>)>,
}

/// Where a lookup is answered.
type LookupReply<V> = oneshot::Sender<Result<Option<V>, DbError>>;

impl<K, V> Clone for Lookups<K, V> {
    fn clone(&self) -> Self {
        Lookups {
            queries: self.queries.clone(),
        }
    }
}

impl<K, V> Lookups<K, V>
where
    K: Eq + Hash + Ord + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
{
    /// Starts the task that runs the queries: `fetch` gets the distinct keys asked (sorted) and returns
    /// what it found by key; a key it did not return is answered `None`. Needs a Tokio runtime.
    pub fn spawn<F, Fut>(what: &'static str, fetch: F) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<HashMap<K, V>, DbError>> + Send + 'static,
    {
        let queries = Batcher::spawn(Duration::ZERO, move |asked: Vec<(K, LookupReply<V>)>| {
            let (wanted, replies): (Vec<K>, Vec<LookupReply<V>>) = asked.into_iter().unzip();
            let mut keys = wanted.clone();
            keys.sort_unstable();
            keys.dedup();
            let found = fetch(keys);
            async move {
                match found.await {
                    Ok(found) => {
                        for (key, reply) in wanted.iter().zip(replies) {
                            let _ = reply.send(Ok(found.get(key).cloned()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, lookups = replies.len(), "{what} lookup failed");
                        for reply in replies {
                            let _ = reply.send(Err(e.shared()));
                        }
                    }
                }
            }
        });
        Lookups { queries }
    }

    /// What the database holds under `key` now.
    pub async fn find(&self, key: K) -> Result<Option<V>, DbError> {
        self.queries.ask(|reply| (key, reply)).await?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn items_queued_during_a_write_are_written_together_next() {
        let batches: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let seen = batches.clone();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let open = gate.clone();
        let batcher = Batcher::spawn_with(100, Duration::ZERO, move |items: Vec<u32>| {
            let seen = seen.clone();
            let gate = gate.clone();
            async move {
                // The first write blocks until the test lets it go, so the others queue meanwhile.
                if items == [0] {
                    gate.acquire().await.expect("gate").forget();
                }
                seen.lock().unwrap().push(items);
            }
        });
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(0).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rest: Vec<_> = (1..=5)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(i).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        open.add_permits(1);
        first.await.unwrap().unwrap();
        for r in rest {
            r.await.unwrap().unwrap();
        }
        let mut got = batches.lock().unwrap().clone();
        got[1].sort_unstable();
        assert_eq!(got, vec![vec![0], vec![1, 2, 3, 4, 5]]);
    }

    #[tokio::test]
    async fn lookups_asked_during_a_query_share_the_next_and_each_get_their_own_answer() {
        let queries: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let seen = queries.clone();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let open = gate.clone();
        // Even keys exist (with ten times their value); odd ones do not.
        let lookups = Lookups::spawn("test", move |keys: Vec<u32>| {
            let seen = seen.clone();
            let gate = gate.clone();
            async move {
                if keys == [0] {
                    gate.acquire().await.expect("gate").forget();
                }
                seen.lock().unwrap().push(keys.clone());
                Ok(keys
                    .into_iter()
                    .filter(|k| k % 2 == 0)
                    .map(|k| (k, k * 10))
                    .collect())
            }
        });
        let first = tokio::spawn({
            let l = lookups.clone();
            async move { l.find(0).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let asked = [3, 1, 2, 3, 4];
        let rest: Vec<_> = asked
            .iter()
            .map(|&k| {
                let l = lookups.clone();
                tokio::spawn(async move { l.find(k).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        open.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), Some(0));
        let mut answers = Vec::new();
        for r in rest {
            answers.push(r.await.unwrap().unwrap());
        }
        assert_eq!(answers, [None, None, Some(20), None, Some(40)]);
        // One query for the first key, one for every key asked meanwhile (distinct, sorted).
        assert_eq!(*queries.lock().unwrap(), vec![vec![0], vec![1, 2, 3, 4]]);
    }

    #[tokio::test]
    async fn queued_items_gather_and_a_waiting_caller_cuts_the_gathering_short() {
        let batches: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let seen = batches.clone();
        let batcher = Batcher::spawn_with(100, Duration::from_secs(30), move |items: Vec<u32>| {
            let seen = seen.clone();
            async move { seen.lock().unwrap().push(items) }
        });
        batcher.queue(1);
        tokio::time::sleep(Duration::from_millis(30)).await;
        batcher.queue(2);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(batches.lock().unwrap().is_empty(), "still gathering");
        // A caller that waits is written at once, with what gathered before it.
        tokio::time::timeout(Duration::from_secs(5), batcher.submit(3))
            .await
            .expect("written without the 30 s gather")
            .unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2, 3]]);
    }

    #[tokio::test]
    async fn batches_never_exceed_the_maximum() {
        let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
        let seen = sizes.clone();
        let batcher = Batcher::spawn_with(3, Duration::ZERO, move |items: Vec<u32>| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                seen.lock().unwrap().push(items.len());
            }
        });
        let all: Vec<_> = (0..10)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(i).await })
            })
            .collect();
        for r in all {
            r.await.unwrap().unwrap();
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(sizes.iter().all(|&n| (1..=3).contains(&n)), "{sizes:?}");
    }
}
