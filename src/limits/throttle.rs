//! A per-key trailing-edge throttle for signals that only their latest value matters of (typing,
//! presence): at most one signal per key and period goes out; what is asked for meanwhile is held, and
//! the latest of it goes out once the period ends. Nothing is lost but intermediate states, and a
//! flood of signals from one sender costs the receiver's postbox one event per period.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

/// Keys remembered at most; beyond, those idle for a whole period are forgotten.
const MAX_KEYS: usize = 100_000;

/// See the module documentation. Cheap to clone.
pub struct Throttle<K, V> {
    period: Duration,
    keys: Arc<Mutex<HashMap<K, Entry<V>>>>,
}

impl<K, V> Clone for Throttle<K, V> {
    fn clone(&self) -> Self {
        Throttle {
            period: self.period,
            keys: self.keys.clone(),
        }
    }
}

struct Entry<V> {
    /// When the last signal went out.
    sent: Instant,
    /// The latest signal asked for since, waiting for the period's end (a task is scheduled).
    held: Option<V>,
}

/// What to do with a signal offered to [`Throttle::offer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<V> {
    /// Send it now.
    Now(V),
    /// Held: call [`Throttle::due`] after this long and send what it returns.
    Schedule(Duration),
    /// Held behind a signal already scheduled: nothing to do.
    Held,
}

impl<K: Eq + Hash + Clone, V> Throttle<K, V> {
    pub fn new(period: Duration) -> Self {
        Throttle {
            period,
            keys: Arc::default(),
        }
    }

    /// Offers a signal for `key` at `now`.
    pub fn offer(&self, key: K, value: V, now: Instant) -> Offer<V> {
        let mut keys = self.keys.lock().expect("throttle lock");
        if keys.len() >= MAX_KEYS {
            let period = self.period;
            keys.retain(|_, e| e.held.is_some() || now.duration_since(e.sent) < period);
        }
        match keys.get_mut(&key) {
            Some(e) if now.duration_since(e.sent) < self.period => {
                let first = e.held.is_none();
                e.held = Some(value);
                if first {
                    Offer::Schedule(self.period - now.duration_since(e.sent))
                } else {
                    Offer::Held
                }
            }
            _ => {
                keys.insert(
                    key,
                    Entry {
                        sent: now,
                        held: None,
                    },
                );
                Offer::Now(value)
            }
        }
    }

    /// The signal held for `key`, to send now that its period ended (`None` if there is none).
    pub fn due(&self, key: &K, now: Instant) -> Option<V> {
        let mut keys = self.keys.lock().expect("throttle lock");
        let e = keys.get_mut(key)?;
        let held = e.held.take()?;
        e.sent = now;
        Some(held)
    }
}

impl<K, V> Throttle<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Send + 'static,
{
    /// Offers a signal and sends it with `send` now or, when held, once its period ended (in a task;
    /// the latest signal held by then is the one sent).
    pub async fn send<F, Fut>(&self, key: K, value: V, send: F)
    where
        F: FnOnce(V) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self.offer(key.clone(), value, Instant::now()) {
            Offer::Now(v) => send(v).await,
            Offer::Schedule(after) => self.schedule(key, after, send),
            Offer::Held => {}
        }
    }

    /// After [`Offer::Schedule`]: sends what is held for `key` once `after` has passed, in a task.
    pub fn schedule<F, Fut>(&self, key: K, after: Duration, send: F)
    where
        F: FnOnce(V) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let throttle = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(v) = throttle.due(&key, Instant::now()) {
                send(v).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_signal_per_period_and_the_latest_held_one_at_its_end() {
        let period = Duration::from_secs(2);
        let t: Throttle<u8, &str> = Throttle::new(period);
        let start = Instant::now();
        assert_eq!(t.offer(1, "typing", start), Offer::Now("typing"));
        // Within the period: the first held signal schedules the period's end, later ones replace it.
        let soon = start + Duration::from_millis(500);
        assert_eq!(
            t.offer(1, "typing", soon),
            Offer::Schedule(Duration::from_millis(1500))
        );
        assert_eq!(t.offer(1, "stopped", soon), Offer::Held);
        // Another key is independent.
        assert_eq!(t.offer(2, "typing", soon), Offer::Now("typing"));
        // At the period's end the latest held signal goes out, and a new period starts.
        let end = start + period;
        assert_eq!(t.due(&1, end), Some("stopped"));
        assert_eq!(t.due(&1, end), None);
        assert_eq!(
            t.offer(1, "typing", end + Duration::from_millis(1)),
            Offer::Schedule(period - Duration::from_millis(1))
        );
        assert_eq!(
            t.offer(2, "typing", end + period),
            Offer::Now("typing"),
            "a quiet key sends at once again"
        );
    }

    #[tokio::test]
    async fn a_flood_sends_one_signal_now_and_the_last_one_later() {
        let t: Throttle<u8, u32> = Throttle::new(Duration::from_millis(200));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..50 {
            let tx = tx.clone();
            t.send(7, n, move |v| async move {
                let _ = tx.send(v);
            })
            .await;
        }
        assert_eq!(rx.recv().await, Some(0));
        let late = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(late, Ok(Some(49)));
        drop(tx);
        // Every sender is gone once the scheduled one ran: nothing else was sent.
        let rest = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(rest, Ok(None));
    }
}
