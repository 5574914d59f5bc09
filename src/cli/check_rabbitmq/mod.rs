//! `postbox check-rabbitmq`: what an operator needs to know about the broker, in one command.
//!
//! Reports the broker's product and version (read from the AMQP handshake), whether the connection is
//! TLS (with the protocol version and cipher suite rustls negotiated) and a publish-with-confirm and
//! get round trip through `<prefix>.events` with its latency. Then, from the RabbitMQ management HTTP API
//! when it answers: versions and totals (`/api/overview`), the user and whether its permissions cover
//! Postbox's names (`/api/whoami`, `/api/permissions`), whether the exchange exists, and every postbox
//! (`/api/queues`, paginated, filtered on the prefix): how many, their ready and unacknowledged messages,
//! the fullest ones, and those declared with other arguments than the configured ones. Without the API it
//! falls back to passive declares of the known users' postboxes (ids from the database) and says so.
//!
//! It only reads, except for what any Postbox start does (declaring the exchanges and the dead-letter
//! queue) and its own throwaway round-trip queue. Every failure is a one-line message naming what to do,
//! with a distinct exit code ([`CheckFailure::exit_code`], [`Report::exit_code`]). Passwords are never
//! printed.
//!
//! `management` reads the management API, `permissions` judges the user's permissions, [`print`] writes
//! the report for a terminal.

mod management;
mod permissions;
mod print;

pub use print::print_report;

use std::{str::FromStr, time::Instant};

use amq_protocol::{
    frame::{AMQPFrame, parse_frame},
    protocol::{AMQPClass, connection::AMQPMethod},
    types::AMQPValue,
    uri::AMQPUri,
};
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use lapin::{
    BasicProperties,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{FieldTable, ShortString},
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Broker, BrokerError, Topology, close_quietly,
    tls::{self, TlsSession, TlsSettings, Transport},
    topology,
};
use crate::config::{Config, redact_url};

use management::Api;
use permissions::permission_message;

/// The result of a check that reached the broker. [`Report::exit_code`] says whether it is healthy.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `AMQP_URL` with its password replaced by `***`.
    pub url: String,
    pub product: String,
    pub version: String,
    /// `tls` for an `amqps://` URL (the handshake completed and the certificate was verified), `plain`
    /// for `amqp://` (not encrypted).
    pub transport: &'static str,
    /// The TLS connection's parameters (`null` for plain TCP).
    pub tls: Option<TlsReport>,
    /// `POSTBOX_BROKER_PREFIX`.
    pub prefix: String,
    pub exchange: String,
    /// Whether the exchange existed before this check declared it (`null`: management API not read).
    pub exchange_present: Option<bool>,
    pub round_trip_ms: f64,
    pub management: Management,
    /// Versions and totals from `/api/overview` (`null` without the management API).
    pub overview: Option<Overview>,
    /// The AMQP user's permissions on the vhost (`null` without the management API).
    pub permissions: Option<Permissions>,
    /// Where the postbox figures come from: `management_api`, `amqp` (passive declares of the known
    /// users' postboxes) or `none`.
    pub queues_source: &'static str,
    /// `None` when the postboxes could not be listed.
    pub postbox_queues: Option<u64>,
    pub ready_messages: Option<u64>,
    /// `None` without the management API.
    pub unacked_messages: Option<u64>,
    /// The postboxes holding the most ready messages, fullest first (`None` without the management API).
    pub fullest: Option<Vec<QueueLoad>>,
    /// Postboxes declared with other arguments than the configured ones.
    pub mismatched_queues: Vec<String>,
    /// What differs, per mismatched postbox.
    pub mismatches: Vec<Mismatch>,
    /// Events the outbox relay gave up on (from the database; `None` when it could not be read).
    pub parked_events: Option<ParkedEvents>,
    pub notes: Vec<String>,
}

/// The outbox rows the relay parked after they kept failing.
#[derive(Debug, Serialize)]
pub struct ParkedEvents {
    pub count: u64,
    /// Why the oldest one last failed.
    pub oldest_error: Option<String>,
}

/// The TLS side of the AMQP connection.
#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    /// Always `rustls`.
    pub library: &'static str,
    /// `TLS 1.3` or `TLS 1.2`.
    pub protocol: String,
    /// The negotiated cipher suite (IANA name).
    pub cipher: String,
    /// What the broker's certificate was verified against: `POSTBOX_AMQP_CA_FILE <path>` or the
    /// system trust store.
    pub verified_with: String,
    /// Whether a client certificate was offered (`POSTBOX_AMQP_CLIENT_CERT`).
    pub client_certificate: bool,
}

/// Whether the management HTTP API could be read.
#[derive(Debug, Clone, Serialize)]
pub struct Management {
    pub reachable: bool,
    /// Base URL, without credentials.
    pub url: String,
    /// Why it could not be read.
    pub error: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
    /// The user the API knows the credentials as (`/api/whoami`), and its tags.
    pub user: Option<String>,
    pub tags: Vec<String>,
}

/// Versions and totals of the broker, from `/api/overview`.
#[derive(Debug, Default, Serialize)]
pub struct Overview {
    pub product: Option<String>,
    pub rabbitmq_version: Option<String>,
    pub erlang_version: Option<String>,
    pub management_version: Option<String>,
    pub cluster_name: Option<String>,
    pub queues: Option<u64>,
    pub exchanges: Option<u64>,
    pub connections: Option<u64>,
    pub channels: Option<u64>,
    pub consumers: Option<u64>,
    pub messages: Option<u64>,
    pub messages_ready: Option<u64>,
    pub messages_unacknowledged: Option<u64>,
}

/// The AMQP user's permissions on the vhost, and whether they cover every name Postbox uses.
#[derive(Debug, Serialize)]
pub struct Permissions {
    pub user: String,
    pub vhost: String,
    /// The regular expressions (`null` when they could not be read).
    pub configure: Option<String>,
    pub write: Option<String>,
    pub read: Option<String>,
    /// `true` when configure, write and read all match Postbox's names (`<prefix>.events`,
    /// `<prefix>.user.<id>`, ...), `false` when one does not, `null` when it could not be decided.
    pub covers_postbox_names: Option<bool>,
    /// What is not covered, as `"configure: postbox.user.42"`.
    pub uncovered: Vec<String>,
    /// One sentence for people.
    pub detail: String,
}

/// One postbox's load.
#[derive(Debug, Clone, Serialize)]
pub struct QueueLoad {
    pub queue: String,
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
}

/// A postbox whose arguments differ from the configured ones.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub queue: String,
    /// For example `"x-max-length is 5, expected 100"`.
    pub differences: Vec<String>,
}

impl Report {
    /// `0` healthy, `4` some postbox has other arguments, `5` the permissions do not cover Postbox's
    /// names, `7` the outbox holds parked events (the first that applies, in this order: 5, 4, 7).
    pub fn exit_code(&self) -> i32 {
        if self.permission_problem().is_some() {
            5
        } else if self.mismatch_problem().is_some() {
            4
        } else if self.parked_problem().is_some() {
            7
        } else {
            0
        }
    }

    /// One line per problem found, each naming what to do (empty when healthy).
    pub fn problems(&self) -> Vec<String> {
        self.permission_problem()
            .into_iter()
            .chain(self.mismatch_problem())
            .chain(self.parked_problem())
            .collect()
    }

    fn parked_problem(&self) -> Option<String> {
        let parked = self.parked_events.as_ref().filter(|p| p.count > 0)?;
        Some(format!(
            "{} event(s) parked in the outbox: the relay gave up on them (the oldest last failed with: {}); \
             fix the cause, then run `postbox outbox retry` (`postbox outbox list` shows them)",
            parked.count,
            parked.oldest_error.as_deref().unwrap_or("unknown")
        ))
    }

    fn permission_problem(&self) -> Option<String> {
        let p = self.permissions.as_ref()?;
        (p.covers_postbox_names == Some(false) && p.configure.is_some())
            .then(|| permission_message(p, &self.prefix))
    }

    fn mismatch_problem(&self) -> Option<String> {
        let first = self.mismatched_queues.first()?;
        Some(format!(
            "{} postbox queue(s) were declared with other arguments than configured (first: {first}); \
             delete them with `rabbitmqctl delete_queue NAME` or match POSTBOX_QUEUE_* to them",
            self.mismatched_queues.len()
        ))
    }
}

/// Why the check could not produce a report, with the exit code scripts can test.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    AccessRefused(String),
    /// The broker refused Postbox's names and the management API shows why.
    #[error("{0}")]
    Permissions(String),
    /// The TLS connection could not be set up (handshake failed, TLS files unusable).
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Other(String),
}

impl CheckFailure {
    pub fn exit_code(&self) -> i32 {
        match self {
            CheckFailure::Unreachable(_) => 2,
            CheckFailure::AccessRefused(_) => 3,
            CheckFailure::Permissions(_) => 5,
            CheckFailure::Tls(_) => 6,
            CheckFailure::Other(_) => 1,
        }
    }
}

fn failure(e: BrokerError) -> CheckFailure {
    match e {
        BrokerError::Unavailable(m) => CheckFailure::Unreachable(m),
        BrokerError::Timeout(d) => CheckFailure::Unreachable(format!(
            "RabbitMQ did not answer within {d:?}; check that it is running and AMQP_URL"
        )),
        BrokerError::AccessRefused(m) => CheckFailure::AccessRefused(m),
        BrokerError::Tls(m) => CheckFailure::Tls(m),
        other => CheckFailure::Other(other.to_string()),
    }
}

/// The outbox's parked rows, `None` when they cannot be read.
async fn parked_events(conn: &sea_orm::DatabaseConnection) -> Option<ParkedEvents> {
    let count = crate::db::outbox::parked_count(conn).await.ok()?;
    let oldest_error = match count {
        0 => None,
        _ => crate::db::outbox::parked(conn, 1)
            .await
            .ok()?
            .into_iter()
            .next()
            .and_then(|r| r.last_error),
    };
    Some(ParkedEvents {
        count,
        oldest_error,
    })
}

/// `postbox check-rabbitmq`: runs the check, prints the report (or the failure) and gives the exit code.
pub async fn command(
    json: bool,
    management_url: Option<&str>,
    config: &Config,
) -> anyhow::Result<i32> {
    config.validate()?;
    // Unusable TLS files are a configuration error (exit code 1), like any invalid setting.
    TlsSettings::from_config(config)?;
    // The users are only needed when the management API cannot list the postboxes.
    let (users, parked) =
        match crate::db::connect(&config.database_url, config.backend_timeout()).await {
            Ok(conn) => (
                crate::db::users::all_ids(&conn).await.ok(),
                parked_events(&conn).await,
            ),
            Err(_) => (None, None),
        };
    match run(config, management_url, users).await {
        Ok(mut report) => {
            report.parked_events = parked;
            print_report(&report, json)?;
            for problem in report.problems() {
                eprintln!("error: {problem}");
            }
            Ok(report.exit_code())
        }
        Err(failure) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "error": failure.to_string(), "exit_code": failure.exit_code()})
                );
            }
            eprintln!("error: {failure}");
            Ok(failure.exit_code())
        }
    }
}

/// Runs the whole check. `management_url` overrides the management API's address (default: the AMQP
/// host, port 15672, the AMQP credentials). `user_ids` lists the users whose postboxes to inspect when
/// the management API cannot be read (`None`: the database could not be read).
pub async fn run(
    config: &Config,
    management_url: Option<&str>,
    user_ids: Option<Vec<i64>>,
) -> Result<Report, CheckFailure> {
    let url = redact_url(&config.amqp_url);
    let uri = AMQPUri::from_str(&config.amqp_url)
        .map_err(|e| CheckFailure::Other(format!("AMQP_URL {url} is not a valid AMQP URL: {e}")))?;
    let settings =
        TlsSettings::from_config(config).map_err(|e| CheckFailure::Tls(e.to_string()))?;
    let transport =
        Transport::new(&uri, &settings).map_err(|e| CheckFailure::Tls(e.to_string()))?;
    let (product, version, session) = server_identity(config, &uri, &transport).await?;
    let tls = session.map(|session| TlsReport {
        library: "rustls",
        protocol: session.protocol,
        cipher: session.cipher,
        verified_with: settings.roots(),
        client_certificate: settings.client_certificate(),
    });
    let topology = Topology::from_config(config);
    let api = Api::new(config, &uri, management_url, &settings)?;
    let before = api.before_connect(&topology).await;
    // A refusal the permissions explain is reported as such (exit code 5), with what to run.
    let insufficient = before
        .permissions
        .as_ref()
        .filter(|p| p.covers_postbox_names == Some(false) && p.configure.is_some())
        .map(|p| permission_message(p, &topology.prefix));
    let refused = |e: BrokerError| match (&e, &insufficient) {
        (BrokerError::AccessRefused(_), Some(message)) => {
            CheckFailure::Permissions(message.clone())
        }
        _ => failure(e),
    };
    let broker = Broker::connect(config, CancellationToken::new())
        .await
        .map_err(refused)?;
    let result = async {
        let round_trip_ms = round_trip(&broker).await.map_err(refused)?;
        let mut report = Report {
            url,
            product,
            version,
            transport: if tls.is_some() { "tls" } else { "plain" },
            tls,
            prefix: topology.prefix.clone(),
            exchange: topology.exchange(),
            exchange_present: before.exchange_present,
            round_trip_ms,
            management: before.management,
            overview: before.overview,
            permissions: before.permissions,
            queues_source: "none",
            postbox_queues: None,
            ready_messages: None,
            unacked_messages: None,
            fullest: None,
            mismatched_queues: Vec::new(),
            mismatches: Vec::new(),
            parked_events: None,
            notes: before.notes,
        };
        if transport.is_tls() && api.is_plain_http() {
            report.notes.push(
                "the management API is read over plain HTTP: the AMQP credentials travel to it \
                 unencrypted; give an https:// --management-url (RabbitMQ's HTTPS listener, usually \
                 port 15671)"
                    .into(),
            );
        }
        let mut listed = false;
        if report.management.reachable {
            match api.postboxes(&topology).await {
                Ok(listing) => {
                    listing.fill(&mut report, &topology);
                    listed = true;
                }
                Err(e) => report.notes.push(format!(
                    "the management API could not list the postboxes ({e}); counted through AMQP instead"
                )),
            }
        }
        if !listed {
            count_through_amqp(&broker, &mut report, user_ids).await?;
        }
        Ok(report)
    }
    .await;
    broker.close().await;
    result
}

/// The fallback without the management API: a passive declare of each known user's postbox.
async fn count_through_amqp(
    broker: &Broker,
    report: &mut Report,
    user_ids: Option<Vec<i64>>,
) -> Result<(), CheckFailure> {
    let Some(ids) = user_ids else {
        report
            .notes
            .push("database not readable: postbox queues not counted (check DATABASE_URL)".into());
        return Ok(());
    };
    let (mut queues, mut ready) = (0u64, 0u64);
    for id in ids {
        let name = broker.topology().user_queue(id);
        let channel = broker.disposable_channel().await.map_err(failure)?;
        let found = broker
            .with_timeout(topology::passive_queue(&channel, &name))
            .await;
        close_quietly(channel).await;
        let Some((messages, _consumers)) = found.map_err(failure)? else {
            continue;
        };
        queues += 1;
        ready += u64::from(messages);
        match broker.declare_user_queue(id).await {
            Ok(()) => {}
            Err(BrokerError::QueueArguments { detail, .. }) => {
                report.mismatched_queues.push(name.clone());
                report.mismatches.push(Mismatch {
                    queue: name,
                    differences: vec![detail],
                });
            }
            Err(e) => return Err(failure(e)),
        }
    }
    report.queues_source = "amqp";
    report.postbox_queues = Some(queues);
    report.ready_messages = Some(ready);
    report.notes.push(
        "without the management API only the known users' default postboxes are counted \
         (not the per-client ones), and unacked messages and the fullest postboxes are unknown"
            .into(),
    );
    Ok(())
}

/// Publishes one persistent message with a confirm through `<prefix>.events` to a throwaway queue
/// (`<prefix>.check.<random>`, so permissions limited to `<prefix>.*` names suffice) and gets it back.
async fn round_trip(broker: &Broker) -> Result<f64, BrokerError> {
    let topology = broker.topology();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let queue = format!("{}.check.{token}", topology.prefix);
    let routing_key = format!("check.{token}");
    let channel = broker.disposable_channel().await?;
    let result = broker
        .with_timeout(async {
            let step = |what: &'static str| move |e| BrokerError::classify(e, what);
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(step("confirm.select"))?;
            channel
                .queue_declare(
                    ShortString::from(queue.clone()),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(step("queue.declare"))?;
            channel
                .queue_bind(
                    ShortString::from(queue.clone()),
                    ShortString::from(topology.exchange()),
                    ShortString::from(routing_key.clone()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(step("queue.bind"))?;
            let start = Instant::now();
            channel
                .basic_publish(
                    ShortString::from(topology.exchange()),
                    ShortString::from(routing_key.clone()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    b"postbox check-rabbitmq",
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .map_err(step("basic.publish"))?
                .await
                .map_err(step("publisher confirm"))?;
            let got = channel
                .basic_get(
                    ShortString::from(queue.clone()),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .map_err(step("basic.get"))?;
            let elapsed = start.elapsed().as_secs_f64() * 1000.0;
            match got {
                Some(m) if m.delivery.data == b"postbox check-rabbitmq" => Ok(elapsed),
                _ => Err(BrokerError::Protocol {
                    what: "round trip".into(),
                    detail: "the confirmed message was not in the queue".into(),
                }),
            }
        })
        .await;
    close_quietly(channel).await;
    result
}

/// Reads the broker's `product` and `version` from the `connection.start` frame of a bare handshake
/// (lapin does not expose the server properties), over the same transport as the service's connections:
/// for `amqps://` a verified TLS handshake first, whose parameters are returned too.
async fn server_identity(
    config: &Config,
    uri: &AMQPUri,
    transport: &Transport,
) -> Result<(String, String, Option<TlsSession>), CheckFailure> {
    let addr = format!("{}:{}", uri.authority.host, uri.authority.port);
    let unreachable = |why: String| {
        CheckFailure::Unreachable(format!(
            "RabbitMQ is not reachable at {addr} ({why}); start it (`rabbitmq-server -detached` or \
             `systemctl start rabbitmq-server`) or set AMQP_URL"
        ))
    };
    let handshake = async {
        let runtime = async_rs::Runtime::tokio_current();
        let connected = transport.connect(uri, &runtime).await;
        let mut stream = connected.map_err(|e| match tls::failure_in(&e) {
            Some(message) => CheckFailure::Tls(message),
            None => unreachable(e.to_string()),
        })?;
        let session = transport.last_session();
        let exchange = async {
            stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
            stream.flush().await?;
            let mut header = [0u8; 7];
            stream.read_exact(&mut header).await?;
            let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
            if header[0] != 1 || size > 1 << 20 {
                return Err(std::io::Error::other("not an AMQP 0-9-1 server"));
            }
            let mut frame = header.to_vec();
            frame.resize(7 + size + 1, 0);
            stream.read_exact(&mut frame[7..]).await?;
            Ok(frame)
        };
        let frame = exchange.await.map_err(|e| {
            // After a completed TLS handshake: an alert, or a drop that stands for one.
            let tls_refusal = tls::failure_in(&e).or_else(|| {
                transport
                    .is_tls()
                    .then(|| tls::dropped_after_handshake(&addr, &e))
                    .flatten()
            });
            match tls_refusal {
                Some(message) => CheckFailure::Tls(message),
                None => unreachable(e.to_string()),
            }
        })?;
        let _ = stream.close().await;
        Ok::<_, CheckFailure>((frame, session))
    };
    let (frame, session) = tokio::time::timeout(config.backend_timeout(), handshake)
        .await
        .map_err(|_| unreachable("no answer".into()))??;
    let props = match parse_frame(frame.as_slice()) {
        Ok((_, AMQPFrame::Method(_, AMQPClass::Connection(AMQPMethod::Start(start))))) => {
            start.server_properties
        }
        _ => return Err(unreachable("unexpected handshake frame".into())),
    };
    let text = |key: &str| match props.inner().get(key) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(other) => format!("{other:?}"),
        None => "unknown".into(),
    };
    Ok((text("product"), text("version"), session))
}
