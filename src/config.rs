//! Typed configuration: defaults, then environment variables, then command-line flags.
//!
//! Every field is a clap argument with an `env` fallback, so `postbox serve --help` is the reference and
//! the README table mirrors it. The config is validated once at start-up ([`Config::validate`]); secrets
//! (URLs with passwords) are never logged, only their redacted form ([`redact_url`]).

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use amq_protocol::uri::{AMQPScheme, AMQPUri};
use clap::Args;

use crate::broker::tls::{CA_FILE_VAR, CLIENT_CERT_VAR, TlsSettings};

/// Service configuration shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP server listens on.
    #[arg(long = "bind", env = "POSTBOX_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// Database URL: `sqlite://FILE?mode=rwc` (embedded default) or `postgres://user@host/db`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://postbox.db?mode=rwc"
    )]
    pub database_url: String,

    /// AMQP URL of the RabbitMQ broker.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
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

    /// Folder for files Postbox keeps on disk (attachments).
    #[arg(long, env = "POSTBOX_DATA_DIR", default_value = "data")]
    pub data_dir: std::path::PathBuf,

    /// Largest accepted attachment in bytes (413 beyond).
    #[arg(long, env = "POSTBOX_MAX_ATTACHMENT_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_attachment_bytes: usize,

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

    /// How broadcasts (college notifications, support messages to the agents) travel: `persistent`
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
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Checks the values once at start-up, so a bad setting stops the service with a clear message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError(msg.to_owned()));
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
        if self.publish_channels == 0 {
            return bad("POSTBOX_PUBLISH_CHANNELS must be at least 1");
        }
        if self.max_body_bytes < 1024 {
            return bad("POSTBOX_MAX_BODY_BYTES must be at least 1024");
        }
        if self.backend_timeout_secs == 0 {
            return bad("POSTBOX_BACKEND_TIMEOUT must be at least 1 second");
        }
        Ok(())
    }

    /// The AMQP URL parses, and TLS files go with an `amqps://` URL only and can be read and used.
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
        if uri.scheme == AMQPScheme::AMQP && TlsSettings::configured(self) {
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
        TlsSettings::from_config(self).map_err(|e| ConfigError(e.to_string()))?;
        Ok(())
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

    pub fn auth_cache(&self) -> Duration {
        Duration::from_secs(self.auth_cache_secs)
    }

    pub fn backend_timeout(&self) -> Duration {
        Duration::from_secs(self.backend_timeout_secs)
    }

    pub fn memory_trim(&self) -> Duration {
        Duration::from_secs(self.memory_trim_secs)
    }
}

/// How broadcasts are published (see `Config::broadcast_delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BroadcastDelivery {
    Persistent,
    Transient,
}

/// Replaces the password of a URL with `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
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
}
