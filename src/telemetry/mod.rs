//! Logging: `tracing` with an `EnvFilter` (`RUST_LOG`, default `postbox=info,tower_http=warn`), as text or
//! JSON lines. Initialised once per process; later calls are no-ops (tests call it per app). Metrics:
//! the Prometheus recorder and every metric's name ([`names`]), and the process metrics
//! ([`process`]).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub mod process;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("postbox=info,tower_http=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    // Logs go to stderr: stdout stays free for command output (`create-user`, `check-rabbitmq --json`).
    let _ = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_target(false)
                    // Colour escapes only for a terminal: a journal, a file or a pipe gets plain text.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
}

/// Prometheus metrics, recorded through the `metrics` facade and rendered at `/metrics`. Names:
pub mod names {
    /// Counter: HTTP requests, by `method`, `route` (the matched route template) and `status`.
    pub const HTTP_REQUESTS: &str = "postbox_http_requests_total";
    /// Histogram: HTTP request duration in seconds, by `method` and `route`.
    pub const HTTP_DURATION: &str = "postbox_http_request_duration_seconds";
    /// Counter: events RabbitMQ confirmed.
    pub const EVENTS_PUBLISHED: &str = "postbox_events_published_total";
    /// Counter: publishes that failed, by `reason`.
    pub const PUBLISH_FAILURES: &str = "postbox_publish_failures_total";
    /// Counter: outbox rows the relay parked after failing too often (`postbox outbox list`).
    pub const OUTBOX_PARKED: &str = "postbox_outbox_parked_total";
    /// Gauge: long polls waiting or answering now.
    pub const POLLS_IN_FLIGHT: &str = "postbox_polls_in_flight";
    /// Counter: finished polls by `outcome`: `events`, `timeout`, `attaching` (no events: the postbox's
    /// consumer was still attaching, RabbitMQ busy), `disconnected`, `error`, `revoked`, `expired`
    /// (the token expired while the poll waited), `superseded` (a newer poll or stream of the same
    /// client took its postbox over).
    pub const POLL_OUTCOMES: &str = "postbox_poll_outcomes_total";
    /// Counter: background tasks started again after they ended before shutdown, by `task`.
    pub const TASK_RESTARTS: &str = "postbox_background_task_restarts_total";
    /// Histogram: seconds from an event's creation to its hand-over to a client.
    pub const DELIVERY_LATENCY: &str = "postbox_delivery_latency_seconds";
    /// Counter: publishing-path postbox checks, by `result`: `hit` (cached, no declare) or `miss`.
    pub const DECLARE_CACHE: &str = "postbox_queue_declare_cache_total";
    /// Gauge: HTTP connections open now (at most `POSTBOX_MAX_CONNECTIONS`).
    pub const CONNECTIONS_OPEN: &str = "postbox_connections_open";
    /// Counter: HTTP connections the server closed, by `reason`: `header_timeout` (no complete request
    /// head within `POSTBOX_HEADER_TIMEOUT`: nothing sent, or a head trickled) or `idle_timeout` (kept
    /// alive with no request for `POSTBOX_KEEPALIVE_TIMEOUT`).
    pub const CONNECTIONS_CLOSED: &str = "postbox_connections_closed_total";
    /// Counter: times a connection could not be accepted at once because `POSTBOX_MAX_CONNECTIONS` were
    /// open (it waited in the kernel's listen backlog until one closed; none is refused).
    pub const CONNECTION_CAP_WAITS: &str = "postbox_connection_cap_waits_total";
    /// Counter: stored events RabbitMQ dropped from a postbox, by `reason` (`maxlen`: it overflowed;
    /// `expired`: older than `POSTBOX_MESSAGE_TTL`); each is announced to the client as a gap.
    pub const EVENTS_DROPPED: &str = "postbox_events_dropped_total";
    /// Gauge: database pool connections by `state` (`open`, `idle`), read at each scrape.
    pub const DB_POOL_CONNECTIONS: &str = "postbox_db_pool_connections";
    /// Gauge: 1 when RabbitMQ answered this instance's last operation, 0 when it was unreachable.
    pub const BROKER_UP: &str = "postbox_broker_up";
    /// Gauge: pooled AMQP connections by `state` (`open`, `idle`), read at each scrape.
    pub const BROKER_CONNECTIONS: &str = "postbox_broker_connections";
    /// Gauge: Server-Sent Events streams open now.
    pub const SSE_STREAMS_OPEN: &str = "postbox_sse_streams_open";
    /// Gauge: outbox rows waiting to be published (not parked), as the relay last counted them.
    pub const OUTBOX_BACKLOG: &str = "postbox_outbox_backlog";
    /// Gauge: age in seconds of the oldest outbox row waiting (0 when none), as the relay last saw it.
    pub const OUTBOX_OLDEST_AGE: &str = "postbox_outbox_oldest_age_seconds";
    /// Gauge: outbox rows parked now.
    pub const OUTBOX_PARKED_NOW: &str = "postbox_outbox_parked";
    /// Gauge: always 1, labelled with the running `version`.
    pub const BUILD_INFO: &str = "postbox_build_info";
}

static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// The process's Prometheus recorder (installed on first use, which [`crate::run`] makes its start; one
/// per process, shared by every app a test process starts).
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    METRICS.get_or_init(|| {
        use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
        let latency = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .expect("bucket list is not empty");
        match builder.install_recorder() {
            Ok(handle) => {
                describe();
                handle
            }
            // Another recorder is installed: render an empty registry rather than fail.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// The `# HELP` line of every metric, and `postbox_build_info{version}` (always 1), for dashboards.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests, by method, route (the matched template) and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration, by method and route"
    );
    describe_counter!(EVENTS_PUBLISHED, "Events RabbitMQ confirmed");
    describe_counter!(PUBLISH_FAILURES, "Publishes that failed, by reason");
    describe_counter!(
        OUTBOX_PARKED,
        "Outbox rows the relay parked after they kept failing (postbox outbox list)"
    );
    describe_gauge!(POLLS_IN_FLIGHT, "Long polls waiting or answering now");
    describe_counter!(POLL_OUTCOMES, "Finished long polls, by outcome");
    describe_counter!(
        TASK_RESTARTS,
        "Background tasks that ended before shutdown and were started again, by task"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "From an event's creation to its hand-over to a client"
    );
    describe_counter!(
        DECLARE_CACHE,
        "Postbox declares skipped (hit) or made (miss) by the per-process cache"
    );
    describe_gauge!(CONNECTIONS_OPEN, "HTTP connections open now");
    describe_counter!(CONNECTIONS_CLOSED, "HTTP connections closed, by reason");
    describe_counter!(
        CONNECTION_CAP_WAITS,
        "Times a connection waited in the listen backlog because POSTBOX_MAX_CONNECTIONS were open"
    );
    describe_counter!(
        EVENTS_DROPPED,
        "Stored events RabbitMQ dropped from a postbox (overflow or TTL), by reason; announced as gaps"
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database pool connections by state (open, idle), read at each scrape"
    );
    describe_gauge!(
        BROKER_UP,
        "1 when RabbitMQ answered this instance's last operation, 0 when it was unreachable"
    );
    describe_gauge!(
        BROKER_CONNECTIONS,
        "Pooled AMQP connections by state (open, idle), read at each scrape"
    );
    describe_gauge!(SSE_STREAMS_OPEN, "Server-Sent Events streams open now");
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Outbox rows waiting to be published (not parked), as the relay last counted them"
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest outbox row waiting to be published (0 when none)"
    );
    describe_gauge!(OUTBOX_PARKED_NOW, "Outbox rows parked now");
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label is the running build's"
    );
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}
