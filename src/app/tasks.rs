//! The background tasks of a running service, supervised: each runs until shutdown; one that ends
//! before (it panicked, or returned when it should not have) is logged as an error, counted
//! (`postbox_background_task_restarts_total{task}`) and started again after a pause that grows with
//! its failures (1 s doubling to 30 s). Every task is written to start over cleanly (it reconnects,
//! re-reads what it needs), so a restart loses nothing; stopping the whole service for one failed
//! sweeper would turn a bug into an outage. At shutdown each task is awaited, with a deadline, and how it
//! ended is logged.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::telemetry::names;

/// Starts one run of a task.
type Start = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// How long the tasks may take to stop once shutdown is asked.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// The longest pause before a task that keeps failing is started again.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Background tasks and how to start each again.
pub struct Supervisor {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    starts: HashMap<&'static str, Start>,
    failures: HashMap<&'static str, u32>,
    /// The pause before a task's first restart (doubling with each failure, up to [`MAX_PAUSE`]).
    first_pause: Duration,
    shutdown: CancellationToken,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Self {
        Supervisor {
            set: JoinSet::new(),
            names: HashMap::new(),
            starts: HashMap::new(),
            failures: HashMap::new(),
            first_pause: Duration::from_secs(1),
            shutdown,
        }
    }

    /// Starts `name`, a task that runs until shutdown, and keeps `start` to start it again.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, start: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let start: Start = Arc::new(move || Box::pin(start()));
        self.starts.insert(name, start.clone());
        self.launch(name, start, Duration::ZERO);
    }

    fn launch(&mut self, name: &'static str, start: Start, after: Duration) {
        let shutdown = self.shutdown.clone();
        let handle = self.set.spawn(async move {
            if !after.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(after) => {}
                    () = shutdown.cancelled() => return,
                }
            }
            start().await;
        });
        self.names.insert(handle.id(), name);
    }

    /// Restarts tasks that end before shutdown; once shutdown is asked, waits for every task (up to a
    /// deadline) and logs how each ended.
    pub async fn run(mut self) {
        loop {
            let ended = tokio::select! {
                () = self.shutdown.cancelled() => break,
                ended = self.set.join_next_with_id() => ended,
            };
            let Some(ended) = ended else {
                // Nothing to supervise.
                self.shutdown.cancelled().await;
                break;
            };
            let (id, how) = match ended {
                Ok((id, ())) => (id, "returned".to_owned()),
                Err(e) => (
                    e.id(),
                    if e.is_panic() {
                        "panicked"
                    } else {
                        "was cancelled"
                    }
                    .to_owned(),
                ),
            };
            let name = self.names.remove(&id).unwrap_or("unknown");
            if self.shutdown.is_cancelled() {
                tracing::debug!(task = name, how, "background task stopped");
                break;
            }
            let failures = self.failures.entry(name).or_insert(0);
            *failures += 1;
            let pause = (self.first_pause * 2u32.saturating_pow(*failures - 1)).min(MAX_PAUSE);
            tracing::error!(
                task = name,
                how,
                failures = *failures,
                restart_in_secs = pause.as_secs(),
                "a background task ended before shutdown; starting it again"
            );
            metrics::counter!(names::TASK_RESTARTS, "task" => name).increment(1);
            if let Some(start) = self.starts.get(name).cloned() {
                self.launch(name, start, pause);
            }
        }
        let stop = async {
            while let Some(ended) = self.set.join_next_with_id().await {
                let (id, outcome) = match ended {
                    Ok((id, ())) => (id, "stopped"),
                    Err(e) if e.is_panic() => (e.id(), "panicked while stopping"),
                    Err(e) => (e.id(), "cancelled"),
                };
                let name = self.names.remove(&id).unwrap_or("unknown");
                if outcome == "stopped" {
                    tracing::debug!(task = name, "background task stopped");
                } else {
                    tracing::warn!(task = name, outcome, "background task ended abnormally");
                }
            }
        };
        if tokio::time::timeout(STOP_DEADLINE, stop).await.is_err() {
            let left: Vec<&str> = self.names.values().copied().collect();
            tracing::warn!(
                ?left,
                "background tasks did not stop in time; aborting them"
            );
            self.set.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_task_that_dies_is_started_again_and_all_stop_at_shutdown() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.first_pause = Duration::from_millis(10);
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let token = shutdown.clone();
        supervisor.spawn("flaky", move || {
            let (runs, shutdown) = (counted.clone(), token.clone());
            async move {
                // The first two runs die; the third runs until shutdown.
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("a bug");
                }
                shutdown.cancelled().await;
            }
        });
        let supervised = tokio::spawn(supervisor.run());
        // Restarted after 10 ms, then 20 ms.
        for _ in 0..500 {
            if runs.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "restarted after each death, then kept"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), supervised)
            .await
            .expect("the supervisor stops at shutdown")
            .unwrap();
    }
}
