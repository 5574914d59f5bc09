//! Typed configuration: defaults, then environment variables, then command-line flags.
//!
//! Every field is a clap argument with an `env` fallback, so `postbox serve --help` is the reference and
//! the README table mirrors it. The config is validated once at start-up ([`Config::validate`]); secrets
//! (URLs with passwords) are never logged, only their redacted form ([`redact_url`]).

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use amq_protocol::uri::{AMQPScheme, AMQPUri};
use clap::Args;

/// Service configuration shared by every subcommand.
/// The environment variables of the TLS files, named in every message about them.
pub const CA_FILE_VAR: &str = "POSTBOX_AMQP_CA_FILE";
pub const CLIENT_CERT_VAR: &str = "POSTBOX_AMQP_CLIENT_CERT";
pub const CLIENT_KEY_VAR: &str = "POSTBOX_AMQP_CLIENT_KEY";

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP server listens on.
    #[arg(long = "bind", env = "POSTBOX_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// Seconds a connection may take to send a complete request head: from accepting it to its first
    /// request, and from the first byte of each later request. A connection that sends nothing, or
    /// trickles its head, is closed.
    #[arg(
        long = "header-timeout",
        env = "POSTBOX_HEADER_TIMEOUT",
        default_value_t = 5.0
    )]
    pub header_timeout_secs: f64,

    /// Seconds a kept-alive connection may stay open with no request in flight (long polls and event
    /// streams in progress are never cut). Keep it above the idle timeout of a proxy's upstream pool
    /// (nginx: 60 s), so the proxy, not Postbox, closes the connections it reuses.
    #[arg(
        long = "keepalive-timeout",
        env = "POSTBOX_KEEPALIVE_TIMEOUT",
        default_value_t = 75.0
    )]
    pub keepalive_timeout_secs: f64,

    /// Open HTTP connections at most; beyond it new connections wait in the kernel's listen backlog
    /// until one closes. Every waiting long poll holds one: keep it above the expected pollers and below
    /// the open-file limit (a warning at start says when it is not). The default holds the benchmarks'
    /// 10 000 idle long polls with room to spare under their 20 000-descriptor limit.
    #[arg(long, env = "POSTBOX_MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,

    /// Long polls and event streams one user may hold at once in this instance (429 with Retry-After
    /// beyond). The JavaScript client needs one per browser (its tabs share it); the default leaves room
    /// for many devices, unshared tabs and a stale poll or two.
    #[arg(long, env = "POSTBOX_MAX_POLLS_PER_USER", default_value_t = 20)]
    pub max_polls_per_user: usize,

    /// Database URL: `sqlite://FILE?mode=rwc` (embedded default) or `postgres://user@host/db`.
    // `hide_env_values`: the URL may carry a password, and `--help` would print it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://postbox.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,

    /// AMQP URL of the RabbitMQ broker.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,

    /// CA certificate(s), PEM, that RabbitMQ's TLS certificate must chain to (`amqps://` only). When
    /// set, only these are trusted; unset, the system trust store is. Read and checked at start-up.
    #[arg(long, env = "POSTBOX_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,

    /// Client certificate (PEM, the chain from the leaf) Postbox presents to RabbitMQ for mutual TLS
    /// (`amqps://` only); needs `--amqp-client-key`.
    #[arg(long, env = "POSTBOX_AMQP_CLIENT_CERT")]
    pub amqp_client_cert: Option<PathBuf>,

    /// Private key (PEM: unencrypted PKCS#8, PKCS#1 or SEC1) of `--amqp-client-cert`.
    #[arg(long, env = "POSTBOX_AMQP_CLIENT_KEY")]
    pub amqp_client_key: Option<PathBuf>,

    /// Prefix of every exchange and queue name (`<prefix>.events`, `<prefix>.user.<id>`).
    #[arg(long, env = "POSTBOX_BROKER_PREFIX", default_value = "postbox")]
    pub broker_prefix: String,

    /// Long-poll deadline in seconds: a poll with nothing to deliver answers `[]` after this long.
    #[arg(
        long = "poll-timeout",
        env = "POSTBOX_POLL_TIMEOUT",
        default_value_t = 5.5
    )]
    pub poll_timeout_secs: f64,

    /// Longest hold a client may ask for with `?timeout=` (seconds, at most 60); longer asks are cut to it.
    #[arg(long = "max-hold", env = "POSTBOX_MAX_HOLD", default_value_t = 60.0)]
    pub max_hold_secs: f64,

    /// Seconds between SSE heartbeats on an idle stream.
    #[arg(
        long = "sse-heartbeat",
        env = "POSTBOX_SSE_HEARTBEAT",
        default_value_t = 15.0
    )]
    pub sse_heartbeat_secs: f64,

    /// Seconds an SSE stream lasts before the server ends it (clients reconnect with Last-Event-ID).
    #[arg(
        long = "sse-max-duration",
        env = "POSTBOX_SSE_MAX_DURATION",
        default_value_t = 300.0
    )]
    pub sse_max_duration_secs: f64,

    /// Maximum number of events a postbox keeps; the oldest is dropped beyond it (`x-max-length`).
    #[arg(long, env = "POSTBOX_QUEUE_MAX_LENGTH", default_value_t = 100)]
    pub queue_max_length: u32,

    /// Maximum bytes of event bodies a postbox keeps; the oldest are dropped beyond it
    /// (`x-max-length-bytes`), so a flood of large events cannot fill the broker's memory.
    #[arg(long, env = "POSTBOX_QUEUE_MAX_BYTES", default_value_t = 1_048_576)]
    pub queue_max_bytes: u64,

    /// Seconds an event waits in a postbox before it expires (`x-message-ttl`).
    #[arg(
        long = "message-ttl",
        env = "POSTBOX_MESSAGE_TTL",
        default_value_t = 1800
    )]
    pub message_ttl_secs: u64,

    /// Seconds every stored event is kept under its user's sequence number for `GET poll/missed/`
    /// (never less than `POSTBOX_MESSAGE_TTL`: a client that lost events from its postbox can still
    /// fetch them).
    #[arg(
        long = "event-retention",
        env = "POSTBOX_EVENT_RETENTION",
        default_value_t = 86_400
    )]
    pub event_retention_secs: u64,

    /// Seconds a postbox may stay unused (no poll, no declare) before RabbitMQ deletes it (`x-expires`).
    /// Keep it at least twice the message TTL so a postbox never expires with live events in it.
    #[arg(
        long = "queue-expires",
        env = "POSTBOX_QUEUE_EXPIRES",
        default_value_t = 3600
    )]
    pub queue_expires_secs: u64,

    /// Seconds after the last poll during which a user counts as online.
    #[arg(
        long = "online-window",
        env = "POSTBOX_ONLINE_WINDOW",
        default_value_t = 300
    )]
    pub online_window_secs: u64,

    /// Seconds a postbox consumer stays attached after its last poll, so the next poll finds it ready.
    #[arg(
        long = "consumer-linger",
        env = "POSTBOX_CONSUMER_LINGER",
        default_value_t = 5
    )]
    pub consumer_linger_secs: u64,

    /// Seconds an authenticated token is remembered for long polls and streams, so they skip the token
    /// query. A revoked token or a changed user is forgotten at once in every instance (control
    /// message); a revocation whose message never arrived is found by a sweep of the database every
    /// 10 s. This bounds only how long a user change missed that way goes unseen. 0 turns the cache off.
    #[arg(long = "auth-cache", env = "POSTBOX_AUTH_CACHE", default_value_t = 300)]
    pub auth_cache_secs: u64,

    /// Registered clients (tabs, devices) one user may have, each with its own postbox; registering one
    /// more evicts the least recently seen.
    #[arg(long, env = "POSTBOX_MAX_CLIENTS_PER_USER", default_value_t = 10)]
    pub max_clients_per_user: usize,

    /// Seconds a typing event stays deliverable; a client polling later never sees it.
    #[arg(long = "typing-ttl", env = "POSTBOX_TYPING_TTL", default_value_t = 6.0)]
    pub typing_ttl_secs: f64,

    /// Messages one user may send per second (429 with Retry-After beyond).
    #[arg(long, env = "POSTBOX_SEND_RATE", default_value_t = 20)]
    pub send_rate: u32,

    /// Typing events one user may send per second (429 beyond).
    #[arg(long, env = "POSTBOX_TYPING_RATE", default_value_t = 5)]
    pub typing_rate: u32,

    /// Chat messages one sender may have waiting for one receiver, not yet handed to any client of
    /// the receiver (counted over the message TTL, as long as an event can wait in a postbox); 429
    /// beyond, until some are delivered. Keeps one sender from pushing everything else out of
    /// someone's postbox, which keeps `POSTBOX_QUEUE_MAX_LENGTH` events.
    #[arg(long, env = "POSTBOX_MAX_UNDELIVERED", default_value_t = 50)]
    pub max_undelivered: u32,

    /// Support messages a member may send in a row with no agent's answer in between (each one
    /// reaches every agent's postbox); 429 beyond, until an agent answers.
    #[arg(long, env = "POSTBOX_SUPPORT_MAX_UNANSWERED", default_value_t = 20)]
    pub support_max_unanswered: u32,

    /// Folder for files Postbox keeps on disk (attachments).
    #[arg(long, env = "POSTBOX_DATA_DIR", default_value = "data")]
    pub data_dir: std::path::PathBuf,

    /// Largest accepted attachment in bytes (413 beyond).
    #[arg(long, env = "POSTBOX_MAX_ATTACHMENT_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_attachment_bytes: usize,

    /// Bytes of attachments one user may have stored: the sizes of every attachment they sent, added
    /// up (413 beyond). Attachments stored before sizes were recorded count 0. 0: no quota.
    #[arg(long, env = "POSTBOX_ATTACHMENT_QUOTA_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub attachment_quota_bytes: u64,

    /// Sends with an attachment held in memory at once (each up to the attachment limit), so uploads
    /// cannot exhaust memory; one more waits up to the backend timeout for a turn, then is answered 503.
    #[arg(long, env = "POSTBOX_MAX_UPLOADS", default_value_t = 16)]
    pub max_uploads: usize,

    /// Seconds between sweeps of the attachments folder, which remove the files no message refers to
    /// (uploads whose message was never stored, `.part` files left by a crash). 0: no sweep.
    #[arg(
        long = "attachment-sweep",
        env = "POSTBOX_ATTACHMENT_SWEEP",
        default_value_t = 3600.0
    )]
    pub attachment_sweep_secs: f64,

    /// Seconds a file stays in the attachments folder before a sweep may remove it, so an upload whose
    /// message is being stored right now is never taken for a leftover (at least 60).
    #[arg(
        long = "attachment-grace",
        env = "POSTBOX_ATTACHMENT_GRACE",
        default_value_t = 3600
    )]
    pub attachment_grace_secs: u64,

    /// Largest accepted request body in bytes (413 beyond).
    #[arg(long, env = "POSTBOX_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Largest accepted chat message text in characters.
    #[arg(long, env = "POSTBOX_MAX_MESSAGE_CHARS", default_value_t = 10_000)]
    pub max_message_chars: usize,

    /// Largest `data` object of a published event or notification, in bytes of JSON (413 beyond).
    #[arg(long, env = "POSTBOX_MAX_EVENT_BYTES", default_value_t = 16 * 1024)]
    pub max_event_bytes: usize,

    /// Number of AMQP channels in the publishing pool.
    #[arg(long, env = "POSTBOX_PUBLISH_CHANNELS", default_value_t = 32)]
    pub publish_channels: usize,

    /// How broadcasts (college notifications, support messages to the agents; one copy per member, in
    /// the postboxes the member has) travel: `persistent`
    /// (on disk in every member's postbox, survives a broker restart) or `transient` (memory only: a
    /// fan-out to thousands of postboxes is several times faster, and a broker restart drops the ones
    /// not yet polled; the notification itself stays stored and listed).
    #[arg(
        long,
        env = "POSTBOX_BROADCAST_DELIVERY",
        value_enum,
        default_value_t = BroadcastDelivery::Persistent
    )]
    pub broadcast_delivery: BroadcastDelivery,

    /// Seconds to wait for the broker or the database before answering 503.
    #[arg(
        long = "backend-timeout",
        env = "POSTBOX_BACKEND_TIMEOUT",
        default_value_t = 5
    )]
    pub backend_timeout_secs: u64,

    /// Seconds between returns of freed heap memory to the operating system (glibc's `malloc_trim`;
    /// 0: never). After a burst (thousands of clients polling again at once) the allocator would
    /// otherwise keep the peak resident.
    #[arg(
        long = "memory-trim",
        env = "POSTBOX_MEMORY_TRIM",
        default_value_t = 10
    )]
    pub memory_trim_secs: u64,

    /// Print logs as JSON lines instead of human-readable text.
    #[arg(long, env = "POSTBOX_LOG_JSON", default_value_t = false)]
    pub log_json: bool,

    /// Serve the demo chat page at `/demo/` (and redirect `/` to it); off: those paths answer 404.
    #[arg(long, env = "POSTBOX_DEMO", default_value_t = false)]
    pub demo: bool,

    /// Origins whose pages may call the API from a browser (CORS), comma-separated, each
    /// `scheme://host[:port]` (`https://app.example.com,http://localhost:3000`), or `*` for any. Empty
    /// (the default): no CORS headers, so only pages served by Postbox's own origin can call it.
    #[arg(long, env = "POSTBOX_CORS_ORIGINS", default_value = "")]
    pub cors_origins: String,
}

/// Which browser origins may call the API (see `Config::cors_origins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS headers at all.
    None,
    /// Any origin (`*`).
    Any,
    /// These origins, exactly as browsers send them in `Origin`.
    List(Vec<String>),
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Checks the values once at start-up, so a bad setting stops the service with a clear message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError(msg.to_owned()));
        if !(self.header_timeout_secs >= 0.1 && self.header_timeout_secs <= 300.0) {
            return bad("POSTBOX_HEADER_TIMEOUT must be between 0.1 and 300 seconds");
        }
        if !(self.keepalive_timeout_secs >= 0.1 && self.keepalive_timeout_secs <= 3600.0) {
            return bad("POSTBOX_KEEPALIVE_TIMEOUT must be between 0.1 and 3600 seconds");
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return bad("POSTBOX_MAX_CONNECTIONS must be between 1 and 1000000");
        }
        if self.max_polls_per_user == 0 || self.max_polls_per_user > 10_000 {
            return bad("POSTBOX_MAX_POLLS_PER_USER must be between 1 and 10000");
        }
        self.validate_amqp()?;
        if !(self.poll_timeout_secs > 0.0 && self.poll_timeout_secs <= 300.0) {
            return bad("POSTBOX_POLL_TIMEOUT must be between 0 and 300 seconds");
        }
        if !(self.max_hold_secs >= 0.0 && self.max_hold_secs <= 60.0) {
            return bad("POSTBOX_MAX_HOLD must be between 0 and 60 seconds");
        }
        if !(self.sse_heartbeat_secs >= 0.1 && self.sse_heartbeat_secs <= 300.0) {
            return bad("POSTBOX_SSE_HEARTBEAT must be between 0.1 and 300 seconds");
        }
        if !(self.sse_max_duration_secs >= 1.0 && self.sse_max_duration_secs <= 86_400.0) {
            return bad("POSTBOX_SSE_MAX_DURATION must be between 1 and 86400 seconds");
        }
        if self.queue_max_length == 0 || self.queue_max_length > 100_000 {
            return bad("POSTBOX_QUEUE_MAX_LENGTH must be between 1 and 100000");
        }
        if self.queue_max_bytes < 1024 || self.queue_max_bytes > i64::MAX as u64 {
            return bad("POSTBOX_QUEUE_MAX_BYTES must be at least 1024");
        }
        if self.message_ttl_secs == 0 || self.message_ttl_secs > i32::MAX as u64 / 1000 {
            return bad("POSTBOX_MESSAGE_TTL must be a positive number of seconds");
        }
        if self.queue_expires_secs == 0 || self.queue_expires_secs > i32::MAX as u64 / 1000 {
            return bad("POSTBOX_QUEUE_EXPIRES must be a positive number of seconds");
        }
        if self.broker_prefix.is_empty()
            || !self
                .broker_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad(
                "POSTBOX_BROKER_PREFIX must be non-empty ASCII letters, digits, '-', '_' or '.'",
            );
        }
        if self.max_clients_per_user == 0 || self.max_clients_per_user > 1000 {
            return bad("POSTBOX_MAX_CLIENTS_PER_USER must be between 1 and 1000");
        }
        if !(self.typing_ttl_secs >= 0.1 && self.typing_ttl_secs <= 600.0) {
            return bad("POSTBOX_TYPING_TTL must be between 0.1 and 600 seconds");
        }
        if self.send_rate == 0 {
            return bad("POSTBOX_SEND_RATE must be at least 1");
        }
        if self.typing_rate == 0 {
            return bad("POSTBOX_TYPING_RATE must be at least 1");
        }
        if self.event_retention_secs < self.message_ttl_secs
            || self.event_retention_secs > 365 * 86_400
        {
            return bad(
                "POSTBOX_EVENT_RETENTION must be at least POSTBOX_MESSAGE_TTL and at most a year (in seconds)",
            );
        }
        if self.max_undelivered == 0 {
            return bad("POSTBOX_MAX_UNDELIVERED must be at least 1");
        }
        if self.support_max_unanswered == 0 {
            return bad("POSTBOX_SUPPORT_MAX_UNANSWERED must be at least 1");
        }
        if self.publish_channels == 0 {
            return bad("POSTBOX_PUBLISH_CHANNELS must be at least 1");
        }
        if self.max_uploads == 0 || self.max_uploads > 10_000 {
            return bad("POSTBOX_MAX_UPLOADS must be between 1 and 10000");
        }
        if !(self.attachment_sweep_secs >= 0.0 && self.attachment_sweep_secs <= 604_800.0) {
            return bad("POSTBOX_ATTACHMENT_SWEEP must be between 0 (off) and 604800 seconds");
        }
        if self.attachment_grace_secs < 60 || self.attachment_grace_secs > 30 * 86_400 {
            return bad("POSTBOX_ATTACHMENT_GRACE must be between 60 and 2592000 seconds");
        }
        if self.max_body_bytes < 1024 {
            return bad("POSTBOX_MAX_BODY_BYTES must be at least 1024");
        }
        if self.backend_timeout_secs == 0 {
            return bad("POSTBOX_BACKEND_TIMEOUT must be at least 1 second");
        }
        self.cors()?;
        Ok(())
    }

    /// The parsed `POSTBOX_CORS_ORIGINS`.
    pub fn cors(&self) -> Result<CorsOrigins, ConfigError> {
        let entries: Vec<&str> = self
            .cors_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        if entries.is_empty() {
            return Ok(CorsOrigins::None);
        }
        if entries == ["*"] {
            return Ok(CorsOrigins::Any);
        }
        let mut origins = Vec::with_capacity(entries.len());
        for entry in entries {
            origins.push(origin(entry).ok_or_else(|| {
                ConfigError(format!(
                    "POSTBOX_CORS_ORIGINS: {entry:?} is not an origin; give `scheme://host[:port]` without a path (for example `https://app.example.com`), or `*` alone"
                ))
            })?);
        }
        Ok(CorsOrigins::List(origins))
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_timeout_secs)
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.keepalive_timeout_secs)
    }

    /// The AMQP URL parses, and TLS files go with an `amqps://` URL only. (Whether the files can be read
    /// and used is the broker's check: `crate::broker::tls::TlsSettings::from_config`.)
    ///
    /// TLS settings with a plain `amqp://` URL are refused rather than ignored: whoever set them meant
    /// the connection to be encrypted, and a silent plain-text connection is the failure to avoid.
    fn validate_amqp(&self) -> Result<(), ConfigError> {
        let uri = AMQPUri::from_str(&self.amqp_url).map_err(|e| {
            ConfigError(format!(
                "AMQP_URL {} is not a valid AMQP URL: {e}",
                redact_url(&self.amqp_url)
            ))
        })?;
        if uri.scheme == AMQPScheme::AMQP && self.amqp_tls_configured() {
            let which = if self.amqp_ca_file.is_some() {
                CA_FILE_VAR
            } else {
                CLIENT_CERT_VAR
            };
            return Err(ConfigError(format!(
                "{which} is set but AMQP_URL {} is amqp:// (plain text, no TLS): use an amqps:// URL \
                 (RabbitMQ's TLS listener, usually port 5671), or unset the POSTBOX_AMQP_CA_FILE / \
                 POSTBOX_AMQP_CLIENT_* settings",
                redact_url(&self.amqp_url)
            )));
        }
        Ok(())
    }

    /// Whether any TLS file setting (CA, client certificate or key) is set.
    pub fn amqp_tls_configured(&self) -> bool {
        self.amqp_ca_file.is_some()
            || self.amqp_client_cert.is_some()
            || self.amqp_client_key.is_some()
    }

    pub fn poll_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.poll_timeout_secs)
    }

    pub fn sse_max_duration(&self) -> Duration {
        Duration::from_secs_f64(self.sse_max_duration_secs)
    }

    pub fn typing_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.typing_ttl_secs)
    }

    pub fn message_ttl(&self) -> Duration {
        Duration::from_secs(self.message_ttl_secs)
    }

    pub fn online_window(&self) -> Duration {
        Duration::from_secs(self.online_window_secs)
    }

    pub fn consumer_linger(&self) -> Duration {
        Duration::from_secs(self.consumer_linger_secs)
    }

    pub fn event_retention(&self) -> Duration {
        Duration::from_secs(self.event_retention_secs)
    }

    pub fn auth_cache(&self) -> Duration {
        Duration::from_secs(self.auth_cache_secs)
    }

    pub fn backend_timeout(&self) -> Duration {
        Duration::from_secs(self.backend_timeout_secs)
    }

    pub fn attachment_sweep(&self) -> Duration {
        Duration::from_secs_f64(self.attachment_sweep_secs)
    }

    pub fn attachment_grace(&self) -> Duration {
        Duration::from_secs(self.attachment_grace_secs)
    }

    pub fn memory_trim(&self) -> Duration {
        Duration::from_secs(self.memory_trim_secs)
    }
}

/// An origin as a browser sends it (`https://host[:port]`, lower case, no default port, no path), or
/// `None` when `text` is not one.
fn origin(text: &str) -> Option<String> {
    let url = url::Url::parse(text).ok()?;
    let bare = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && !text.trim_end_matches('/').ends_with(['?', '#']);
    bare.then(|| url.origin().ascii_serialization())
}

/// How broadcasts are published (see `Config::broadcast_delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BroadcastDelivery {
    Persistent,
    Transient,
}

/// Replaces the password of a URL with `***`, for logs and error messages.
///
/// The URL is parsed (WHATWG rules, as browsers and the `url` crate read it: the user information ends
/// at the **last** `@` of the authority), so a password that contains `@` or `:` is hidden whole. Text
/// that does not parse as a URL but looks like it carries user information (`scheme://…@…`) has
/// everything between `://` and its last `@` hidden, user name included: nothing of a secret is printed
/// when in doubt.
pub fn redact_url(text: &str) -> String {
    if let Ok(mut url) = url::Url::parse(text)
        && url.has_authority()
    {
        if url.password().is_some() && url.set_password(Some("***")).is_ok() {
            return url.to_string();
        }
        if url.password().is_none() {
            return text.to_owned();
        }
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("sqlite://postbox.db"), "sqlite://postbox.db");
        assert_eq!(redact_url("postgres://root@h/db"), "postgres://root@h/db");
    }

    #[test]
    fn cors_origins_are_parsed_as_browsers_send_them() {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let parse = |s: &str| {
            let mut c = <Wrapper as clap::Parser>::parse_from(["postbox"]).config;
            c.cors_origins = s.into();
            c.cors()
        };
        assert_eq!(parse("").unwrap(), CorsOrigins::None);
        assert_eq!(parse(" * ").unwrap(), CorsOrigins::Any);
        assert_eq!(
            parse("https://App.Example.com, http://localhost:3000/,https://a.example:443").unwrap(),
            CorsOrigins::List(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into(),
                "https://a.example".into(),
            ])
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "ftp://files.example",
            "https://user@app.example.com",
            "*,https://a.example",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn redacts_a_password_with_at_signs_and_colons_whole() {
        for (url, secret) in [
            ("amqp://guest:p@ss@word@127.0.0.1:5672/%2f", "ss@word"),
            ("postgres://app:a:b@c@db.internal:5432/postbox", "a:b@c"),
            ("amqps://u:%40%3Asecret@host/vhost", "secret"),
        ] {
            let redacted = redact_url(url);
            assert!(!redacted.contains(secret), "{url} -> {redacted}");
            assert!(redacted.contains("***"), "{url} -> {redacted}");
        }
        assert_eq!(
            redact_url("amqp://guest:p@ss@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        // Not a URL the parser takes (a space in the host), yet user information: all of it hidden.
        assert_eq!(
            redact_url("amqp://guest:p@ss@bad host/x"),
            "amqp://***@bad host/x"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
