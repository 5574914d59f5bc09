//! The HTTP server loop: accepts TCP connections, at most `POSTBOX_MAX_CONNECTIONS` open at once, serves
//! each with hyper's HTTP/1 connection and the application router, closes connections that do not send a
//! request in time, and shuts down gracefully. It owns connections, never requests: what a request may
//! do and for how long is the handlers' business (a long poll or an event stream in progress is never
//! cut here).
//!
//! Deadlines, kept by one watchdog per connection that has no timer while a request is in flight:
//! - accepted, no request yet: closed `POSTBOX_HEADER_TIMEOUT` after the accept (a client that sends
//!   nothing, or trickles its request head);
//! - between requests (kept alive), nothing received: closed `POSTBOX_KEEPALIVE_TIMEOUT` after the last
//!   response ended;
//! - between requests, part of the next head received: closed `POSTBOX_HEADER_TIMEOUT` after its first
//!   byte.
//!
//! hyper's own `http1::Builder::header_read_timeout` is not used: its timer starts whenever hyper waits
//! for a head, which includes the whole idle time after each response, so it would also close every
//! kept-alive connection after the header timeout, and the keep-alive timeout could never be longer.
//! (Behind hyper-util's `auto::Builder` it does not even start before the first bytes arrived: that
//! builder reads them to tell HTTP/1 from HTTP/2.)
//!
//! HTTP/1 only, as under `axum::serve` before (axum's `http2` feature was never enabled): TLS and
//! HTTP/2 end at the reverse proxy.
//!
//! At the cap the loop stops accepting: new connections wait in the kernel's listen backlog (and beyond
//! it the kernel drops their SYNs, which clients retry) until a connection closes. Nothing is spent on
//! them meanwhile, and a burst of legitimate clients (a launch, a restart) is served late rather than
//! refused into a retry storm; the deadlines above make every held slot come free.

use std::{
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{config::Config, telemetry::names};

/// How long open connections get to finish after shutdown (waiting polls are answered at once, event
/// streams end at their next record); then they are closed.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Descriptors kept for everything but client connections (database pool, broker connections, SQLite
/// files, attachments being written), for the start-up check of `POSTBOX_MAX_CONNECTIONS`.
const RESERVED_DESCRIPTORS: u64 = 512;

/// At most one warning this often while the connection cap holds connections back.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Values of the `reason` label of [`names::CONNECTIONS_CLOSED`].
const HEADER_TIMEOUT: &str = "header_timeout";
const IDLE_TIMEOUT: &str = "idle_timeout";

/// The connection limits of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        Limits {
            header_timeout: config.header_timeout(),
            keepalive_timeout: config.keepalive_timeout(),
            max_connections: config.max_connections,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops accepting, lets the open
/// connections finish (at most `DRAIN_DEADLINE`) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    warn_if_descriptors_fall_short(limits.max_connections);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Cancelled when the drain deadline passed: the connections still open are dropped.
    let cut = CancellationToken::new();
    let mut warned_at: Option<Instant> = None;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                metrics::counter!(names::CONNECTION_CAP_WAITS).increment(1);
                if warned_at.is_none_or(|at| at.elapsed() >= CAP_WARNING_EVERY) {
                    warned_at = Some(Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "POSTBOX_MAX_CONNECTIONS connections are open: new ones wait in the listen backlog until one closes"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the connection semaphore is never closed"),
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tokio::select! {
                        () = accept_failed(e) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            },
            () = shutdown.cancelled() => break,
        };
        // TCP_NODELAY: a poll answer with events is written as two chunks (the events, then the end of
        // the chunked body once they are acknowledged); with Nagle the second write waited for the
        // client's delayed ACK, adding ~40 ms to every delivery (measured with `postbox-loadtest`).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        // Each connection gets a clone of the one prepared router (an `Arc`). axum's own make-service
        // for a `Router` (what `axum::serve(listener, router)` uses) prepares a copy of every route per
        // connection (~30 KB each, measured with heaptrack), which 10 000 idle long polls pay in full.
        tokio::spawn(serve_connection(
            tcp,
            app.clone(),
            limits,
            slot,
            graceful.watcher(),
            cut.clone(),
        ));
    }
    // New connections are refused from here on.
    drop(listener);
    let open = |slots: &Semaphore| limits.max_connections - slots.available_permits();
    tracing::info!(open = open(&slots), "draining HTTP connections");
    if tokio::time::timeout(DRAIN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = open(&slots),
            "HTTP connections still open after the drain deadline; closing them"
        );
        cut.cancel();
        let everything = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(Duration::from_secs(1), slots.acquire_many(everything)).await;
    }
}

/// An accept that failed: a connection gone before it was accepted is nothing; anything else (out of
/// file descriptors, out of memory) waits a second for some to be released instead of spinning, as
/// hyper 0.14 and `axum::serve` do.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    ) {
        return;
    }
    tracing::error!(
        error = %e,
        "cannot accept a connection; retrying in 1 s (out of file descriptors: raise the limit or lower POSTBOX_MAX_CONNECTIONS)"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Warns when the open-file limit cannot hold `max_connections` sockets and the service's own files.
fn warn_if_descriptors_fall_short(max_connections: usize) {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, _)) if soft < max_connections as u64 + RESERVED_DESCRIPTORS => {
            tracing::warn!(
                max_connections,
                open_file_limit = soft,
                "POSTBOX_MAX_CONNECTIONS is above what the open-file limit allows (it keeps {RESERVED_DESCRIPTORS} \
                 for the database, the broker and files): accepts will fail before the cap; raise the limit \
                 (LimitNOFILE= in systemd, `ulimit -n`) or lower POSTBOX_MAX_CONNECTIONS"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read the open-file limit"),
    }
}

/// Serves one connection until it ends, a deadline closes it, or the drain deadline cuts it.
async fn serve_connection(
    tcp: TcpStream,
    app: Router,
    limits: Limits,
    slot: OwnedSemaphorePermit,
    watcher: hyper_util::server::graceful::Watcher,
    cut: CancellationToken,
) {
    let _open = OpenConnection::new(slot);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        tcp,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let request = RequestGuard::start(activity.clone());
            let response = app.clone().oneshot(req);
            async move {
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| TrackedBody {
                    body,
                    _request: request,
                }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog below keeps the deadlines (see the module documentation); no hyper timer.
    builder.header_read_timeout(None);
    let mut conn = pin!(watcher.watch(builder.serve_connection(io, service)));
    loop {
        let due = activity.deadline(&limits);
        let changed = activity.changed.notified();
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = changed => {}
            () = tokio::time::sleep_until(due.map_or_else(Instant::now, |(at, _)| at)), if due.is_some() => {
                if let Some((at, reason)) = activity.deadline(&limits)
                    && at <= Instant::now()
                {
                    metrics::counter!(names::CONNECTIONS_CLOSED, "reason" => reason).increment(1);
                    tracing::debug!(reason, "closing an HTTP connection");
                    return;
                }
            }
            () = cut.cancelled() => return,
        }
    }
}

/// An open connection: holds its slot under the cap and counts in the open-connections gauge.
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(names::CONNECTIONS_OPEN).increment(1.0);
        OpenConnection { _slot: slot }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(names::CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// Where a connection stands, for its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepted at `since`; no request yet.
    Fresh { since: Instant },
    /// Serving requests: from the end of the head until the response body ended or was dropped.
    Busy { requests: usize },
    /// Kept alive since `since`; `head_started` when the first byte of the next request arrived.
    Idle {
        since: Instant,
        head_started: Option<Instant>,
    },
}

impl Phase {
    /// When the connection is to be closed, and why; `None` while a request is in flight.
    fn deadline(self, limits: &Limits) -> Option<(Instant, &'static str)> {
        match self {
            Phase::Fresh { since } => Some((since + limits.header_timeout, HEADER_TIMEOUT)),
            Phase::Busy { .. } => None,
            Phase::Idle {
                head_started: Some(at),
                ..
            } => Some((at + limits.header_timeout, HEADER_TIMEOUT)),
            Phase::Idle {
                since,
                head_started: None,
            } => Some((since + limits.keepalive_timeout, IDLE_TIMEOUT)),
        }
    }

    fn request_started(self) -> Phase {
        match self {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            Phase::Fresh { .. } | Phase::Idle { .. } => Phase::Busy { requests: 1 },
        }
    }

    fn request_ended(self, now: Instant) -> Phase {
        match self {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: now,
                head_started: None,
            },
        }
    }

    fn bytes_received(self, now: Instant) -> Phase {
        match self {
            Phase::Idle {
                since,
                head_started: None,
            } => Phase::Idle {
                since,
                head_started: Some(now),
            },
            other => other,
        }
    }
}

/// A connection's phase, shared by its reads, its requests and its watchdog.
struct Activity {
    phase: Mutex<Phase>,
    /// Set while idle with no byte of a next request yet, so that reads take the lock only once.
    awaiting_head: AtomicBool,
    /// Wakes the watchdog when the phase changed.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Activity {
            phase: Mutex::new(Phase::Fresh {
                since: Instant::now(),
            }),
            awaiting_head: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        self.phase
            .lock()
            .expect("connection phase lock")
            .deadline(limits)
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().expect("connection phase lock");
        *phase = change(*phase);
        self.awaiting_head.store(
            matches!(
                *phase,
                Phase::Idle {
                    head_started: None,
                    ..
                }
            ),
            Ordering::Relaxed,
        );
        drop(phase);
        // One waiter (the watchdog); a change while it is not waiting is kept for its next wait.
        self.changed.notify_one();
    }

    fn bytes_received(&self) {
        if self.awaiting_head.load(Ordering::Relaxed) {
            self.update(|p| p.bytes_received(Instant::now()));
        }
    }
}

/// A request being served: the connection is busy from the end of the head until this is dropped,
/// with the response body (or with the handler's future, when the client went away first).
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn start(activity: Arc<Activity>) -> Self {
        activity.update(Phase::request_started);
        RequestGuard(activity)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.update(|p| p.request_ended(Instant::now()));
    }
}

/// A response body that keeps its request counted until hyper has taken it all (or dropped it).
struct TrackedBody {
    body: Body,
    _request: RequestGuard,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    // Forwarded as they are: a poll answer with events relies on having no exact size (chunked), so
    // that hyper polls its body to the end, where the events are acknowledged.
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The TCP stream of a connection, noting the first byte that arrives after a response.
struct Watched {
    tcp: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_received();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_timeout: Duration::from_secs(5),
        keepalive_timeout: Duration::from_secs(75),
        max_connections: 1,
    };

    #[test]
    fn deadlines_follow_the_phase_of_a_connection() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let fresh = Phase::Fresh { since: t0 };
        assert_eq!(fresh.deadline(&LIMITS), Some((t0 + s(5), HEADER_TIMEOUT)));
        // Bytes of the first head do not push its deadline back.
        assert_eq!(fresh.bytes_received(t0 + s(4)), fresh);

        let busy = fresh.request_started();
        assert_eq!(
            busy.deadline(&LIMITS),
            None,
            "a request in flight is never cut"
        );
        let pipelined = busy.request_started();
        assert_eq!(pipelined.request_ended(t0 + s(100)), busy);
        assert_eq!(busy.bytes_received(t0 + s(100)), busy);

        let idle = busy.request_ended(t0 + s(100));
        assert_eq!(idle.deadline(&LIMITS), Some((t0 + s(175), IDLE_TIMEOUT)));
        // The next head has the header timeout from its first byte, whatever comes after.
        let reading = idle.bytes_received(t0 + s(110));
        assert_eq!(
            reading.deadline(&LIMITS),
            Some((t0 + s(115), HEADER_TIMEOUT))
        );
        assert_eq!(reading.bytes_received(t0 + s(114)), reading);
        assert_eq!(reading.request_started().deadline(&LIMITS), None);
    }
}
