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

use std::{fmt::Write as _, str::FromStr, time::Instant};

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
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Broker, BrokerError, Topology, close_quietly,
    tls::{self, TlsSession, TlsSettings, Transport},
    topology,
};
use crate::config::{Config, redact_url};

/// Port of the management plugin when `--management-url` is not given: its plain HTTP listener for an
/// `amqp://` URL, its HTTPS listener (RabbitMQ's convention) for an `amqps://` one, so credentials meant
/// for a TLS broker never travel in clear text by default.
const MANAGEMENT_PORT: u16 = 15672;
const MANAGEMENT_TLS_PORT: u16 = 15671;
/// Queues per page of `/api/queues`.
const PAGE_SIZE: u64 = 500;
/// Pages read at most (100 000 postboxes); the report says when it stopped there.
const MAX_PAGES: u64 = 200;
/// Postboxes listed as the fullest.
const FULLEST: usize = 5;

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
    pub notes: Vec<String>,
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
    /// names (5 wins when both).
    pub fn exit_code(&self) -> i32 {
        if self.permission_problem().is_some() {
            5
        } else if self.mismatch_problem().is_some() {
            4
        } else {
            0
        }
    }

    /// One line per problem found, each naming what to do (empty when healthy).
    pub fn problems(&self) -> Vec<String> {
        self.permission_problem()
            .into_iter()
            .chain(self.mismatch_problem())
            .collect()
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
            notes: before.notes,
        };
        if transport.is_tls() && api.base.starts_with("http://") {
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

/// What the management API told before the AMQP connection (which declares the exchange).
struct Before {
    management: Management,
    overview: Option<Overview>,
    permissions: Option<Permissions>,
    exchange_present: Option<bool>,
    notes: Vec<String>,
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

// ---------------------------------------------------------------------------------------------------
// The management HTTP API
// ---------------------------------------------------------------------------------------------------

/// A client of the management API: base URL (without credentials), credentials, vhost, AMQP user.
struct Api {
    http: reqwest::Client,
    /// Without a trailing slash.
    base: String,
    user: String,
    password: String,
    /// The AMQP user, whose permissions matter.
    amqp_user: String,
    vhost: String,
    /// What an `https://` base's certificate is verified against.
    roots: String,
}

/// Why a management API request failed.
#[derive(Debug)]
enum ApiError {
    /// No HTTP answer (refused, timed out, not HTTP).
    Transport(String),
    /// The TLS handshake with an `https://` management API failed: rustls's reason, what to do.
    Tls(String, String),
    /// An HTTP answer other than 2xx.
    Status(u16, String),
    /// A 2xx answer that is not the expected JSON.
    Body(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Transport(m) => f.write_str(m),
            ApiError::Tls(m, _) => write!(f, "TLS handshake failed: {m}"),
            ApiError::Status(code, reason) if reason.is_empty() => write!(f, "HTTP {code}"),
            ApiError::Status(code, reason) => write!(f, "HTTP {code}: {reason}"),
            ApiError::Body(m) => write!(f, "unexpected answer: {m}"),
        }
    }
}

impl Api {
    fn new(
        config: &Config,
        uri: &AMQPUri,
        management_url: Option<&str>,
        tls: &TlsSettings,
    ) -> Result<Self, CheckFailure> {
        let (mut user, mut password) = (
            uri.authority.userinfo.username.clone(),
            uri.authority.userinfo.password.clone(),
        );
        let base = match management_url {
            None => {
                let host = &uri.authority.host;
                let (scheme, port) = match uri.scheme {
                    amq_protocol::uri::AMQPScheme::AMQP => ("http", MANAGEMENT_PORT),
                    amq_protocol::uri::AMQPScheme::AMQPS => ("https", MANAGEMENT_TLS_PORT),
                };
                if host.contains(':') && !host.starts_with('[') {
                    format!("{scheme}://[{host}]:{port}") // an IPv6 address
                } else {
                    format!("{scheme}://{host}:{port}")
                }
            }
            Some(given) => {
                let mut url = reqwest::Url::parse(given).map_err(|e| {
                    CheckFailure::Other(format!(
                        "--management-url {} is not a valid URL: {e}",
                        redact_url(given)
                    ))
                })?;
                if !url.username().is_empty() {
                    user = percent_decode(url.username());
                    password = url.password().map(percent_decode).unwrap_or_default();
                }
                // Credentials travel in the Authorization header, never in the URL (which is printed).
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.set_query(None);
                url.set_fragment(None);
                url.as_str().trim_end_matches('/').to_owned()
            }
        };
        let timeout = config.backend_timeout();
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy();
        if base.starts_with("https://") {
            // The same trust anchors and client certificate as AMQP, and rustls only.
            let mut tls_config = tls
                .client_config()
                .map_err(|e| CheckFailure::Tls(e.to_string()))?;
            tls_config.alpn_protocols = vec![b"http/1.1".to_vec()];
            http = http.use_preconfigured_tls(tls_config);
        }
        let http = http
            .build()
            .map_err(|e| CheckFailure::Other(format!("cannot build an HTTP client: {e}")))?;
        let vhost = if uri.vhost.is_empty() {
            "/".to_owned()
        } else {
            uri.vhost.clone()
        };
        Ok(Api {
            http,
            base,
            user,
            password,
            amqp_user: uri.authority.userinfo.username.clone(),
            vhost,
            roots: tls.roots(),
        })
    }

    /// GETs `/api/<segments...>` (each segment percent-encoded) and parses the JSON answer.
    /// `Ok(None)` on 404.
    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Option<T>, ApiError> {
        let mut url = format!("{}/api", self.base);
        for segment in segments {
            url.push('/');
            url.push_str(&percent_encode(segment));
        }
        let response = self
            .http
            .get(&url)
            .query(query)
            .basic_auth(&self.user, Some(&self.password))
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| match tls::rustls_failure_in(&e) {
                Some((reason, hint)) => ApiError::Tls(reason, hint),
                None => ApiError::Transport(transport_reason(&e)),
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let reason = body["reason"].as_str().unwrap_or_default().to_owned();
            return Err(ApiError::Status(status.as_u16(), reason));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::Transport(transport_reason(&e)))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ApiError::Body(e.to_string()))
    }

    fn management(&self) -> Management {
        Management {
            reachable: false,
            url: redact_url(&self.base),
            error: None,
            hint: None,
            user: None,
            tags: Vec::new(),
        }
    }

    /// Overview, user, permissions and exchange: what can be read before Postbox's own declarations.
    async fn before_connect(&self, topology: &Topology) -> Before {
        let mut before = Before {
            management: self.management(),
            overview: None,
            permissions: None,
            exchange_present: None,
            notes: Vec::new(),
        };
        let overview = match self.get::<OverviewJson>(&["overview"], &[]).await {
            Ok(Some(o)) => o,
            Ok(None) => {
                self.unreachable(&mut before.management, ApiError::Status(404, String::new()));
                return before;
            }
            Err(e) => {
                self.unreachable(&mut before.management, e);
                return before;
            }
        };
        before.management.reachable = true;
        before.overview = Some(overview.into());
        before.notes.push(
            "figures from the management API are refreshed every statistics interval \
             (collect_statistics_interval: 5 s by default, 30 s with rabbitmq/rabbitmq.conf)"
                .into(),
        );
        match self.get::<WhoamiJson>(&["whoami"], &[]).await {
            Ok(Some(w)) => {
                before.management.user = Some(w.name);
                before.management.tags = tags(&w.tags);
            }
            Ok(None) => {}
            Err(e) => before.notes.push(format!("/api/whoami failed ({e})")),
        }
        before.permissions = Some(self.permissions(&topology.prefix).await);
        match self
            .get::<Value>(&["exchanges", &self.vhost, &topology.exchange()], &[])
            .await
        {
            Ok(found) => before.exchange_present = Some(found.is_some()),
            Err(e) => before.notes.push(format!(
                "the management API could not show the exchange {} ({e})",
                topology.exchange()
            )),
        }
        before
    }

    fn unreachable(&self, management: &mut Management, e: ApiError) {
        management.hint = Some(match &e {
            ApiError::Status(401, _) => format!(
                "check the user and password (the management API takes the AMQP_URL credentials unless \
                 --management-url has its own) and give the user a management tag: \
                 `rabbitmqctl set_user_tags {} monitoring`",
                shell_quote(&self.user)
            ),
            ApiError::Status(..) | ApiError::Body(_) => {
                "check --management-url (POSTBOX_MANAGEMENT_URL): it must point at the RabbitMQ \
                 management plugin"
                    .into()
            }
            ApiError::Transport(_) => {
                "enable it with `rabbitmq-plugins enable rabbitmq_management`".into()
            }
            ApiError::Tls(_, hint) => format!(
                "{hint} (the management API's certificate is verified like the AMQP one, against {})",
                self.roots
            ),
        });
        management.error = Some(e.to_string());
    }

    /// The AMQP user's permissions on the vhost, judged against Postbox's names.
    async fn permissions(&self, prefix: &str) -> Permissions {
        let mut p = Permissions {
            user: self.amqp_user.clone(),
            vhost: self.vhost.clone(),
            configure: None,
            write: None,
            read: None,
            covers_postbox_names: None,
            uncovered: Vec::new(),
            detail: String::new(),
        };
        match self
            .get::<PermissionsJson>(&["permissions", &self.vhost, &self.amqp_user], &[])
            .await
        {
            Ok(Some(json)) => {
                judge_permissions(&mut p, &json, prefix);
            }
            Ok(None) => {
                p.covers_postbox_names = Some(false);
                p.detail = format!(
                    "user {} has no permissions on vhost {}",
                    self.amqp_user, self.vhost
                );
            }
            Err(ApiError::Status(401 | 403, _)) => {
                p.detail = format!(
                    "not readable: the management API shows permissions to administrators only \
                     ({} is not one)",
                    self.user
                );
            }
            Err(e) => p.detail = format!("not readable ({e})"),
        }
        p
    }

    /// Every postbox of this prefix, page by page.
    async fn postboxes(&self, topology: &Topology) -> Result<Listing, ApiError> {
        let pattern = format!(r"^{}\.(user|client)\.", regex_escape(&topology.prefix));
        // The API's name filter may ignore case; keep exactly this prefix's names.
        let (user_prefix, client_prefix) = (
            format!("{}.user.", topology.prefix),
            format!("{}.client.", topology.prefix),
        );
        let mut listing = Listing::default();
        let mut page = 1;
        loop {
            let query = [
                ("page", page.to_string()),
                ("page_size", PAGE_SIZE.to_string()),
                ("name", pattern.clone()),
                ("use_regex", "true".into()),
                (
                    "columns",
                    "name,messages_ready,messages_unacknowledged,consumers,arguments,\
                     effective_policy_definition"
                        .into(),
                ),
            ];
            let Some(answer) = self
                .get::<QueuePage>(&["queues", &self.vhost], &query)
                .await?
            else {
                return Err(ApiError::Status(
                    404,
                    format!("vhost {} not found", self.vhost),
                ));
            };
            listing.queues.extend(answer.items.into_iter().filter(|q| {
                q.name.starts_with(&user_prefix) || q.name.starts_with(&client_prefix)
            }));
            if page >= answer.page_count {
                break;
            }
            if page >= MAX_PAGES {
                listing.truncated = true;
                break;
            }
            page += 1;
        }
        Ok(listing)
    }
}

/// The postboxes the management API listed.
#[derive(Default)]
struct Listing {
    queues: Vec<QueueJson>,
    truncated: bool,
}

impl Listing {
    fn fill(self, report: &mut Report, topology: &Topology) {
        let expected = topology.expected_arguments();
        let mut loads = Vec::with_capacity(self.queues.len());
        for q in self.queues {
            let differences = argument_differences(&expected, &q.arguments);
            if !differences.is_empty() {
                report.mismatched_queues.push(q.name.clone());
                report.mismatches.push(Mismatch {
                    queue: q.name.clone(),
                    differences,
                });
            }
            loads.push(QueueLoad {
                queue: q.name,
                ready: q.messages_ready.unwrap_or(0),
                unacked: q.messages_unacknowledged.unwrap_or(0),
                consumers: q.consumers.unwrap_or(0),
            });
        }
        report.queues_source = "management_api";
        report.postbox_queues = Some(loads.len() as u64);
        report.ready_messages = Some(loads.iter().map(|l| l.ready).sum());
        report.unacked_messages = Some(loads.iter().map(|l| l.unacked).sum());
        loads.retain(|l| l.ready > 0);
        loads.sort_by(|a, b| {
            b.ready
                .cmp(&a.ready)
                .then(b.unacked.cmp(&a.unacked))
                .then(a.queue.cmp(&b.queue))
        });
        loads.truncate(FULLEST);
        report.fullest = Some(loads);
        if self.truncated {
            report.notes.push(format!(
                "only the first {} postboxes were read (the listing stops there)",
                PAGE_SIZE * MAX_PAGES
            ));
        }
    }
}

#[derive(Deserialize)]
struct OverviewJson {
    product_name: Option<String>,
    rabbitmq_version: Option<String>,
    erlang_version: Option<String>,
    management_version: Option<String>,
    cluster_name: Option<String>,
    #[serde(default)]
    object_totals: ObjectTotals,
    #[serde(default)]
    queue_totals: QueueTotals,
}

#[derive(Default, Deserialize)]
struct ObjectTotals {
    queues: Option<u64>,
    exchanges: Option<u64>,
    connections: Option<u64>,
    channels: Option<u64>,
    consumers: Option<u64>,
}

/// `queue_totals` is `[]` on a node without statistics; anything but an object reads as unknown.
#[derive(Default)]
struct QueueTotals {
    messages: Option<u64>,
    messages_ready: Option<u64>,
    messages_unacknowledged: Option<u64>,
}

impl<'de> Deserialize<'de> for QueueTotals {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(QueueTotals {
            messages: v["messages"].as_u64(),
            messages_ready: v["messages_ready"].as_u64(),
            messages_unacknowledged: v["messages_unacknowledged"].as_u64(),
        })
    }
}

impl From<OverviewJson> for Overview {
    fn from(o: OverviewJson) -> Self {
        Overview {
            product: o.product_name,
            rabbitmq_version: o.rabbitmq_version,
            erlang_version: o.erlang_version,
            management_version: o.management_version,
            cluster_name: o.cluster_name,
            queues: o.object_totals.queues,
            exchanges: o.object_totals.exchanges,
            connections: o.object_totals.connections,
            channels: o.object_totals.channels,
            consumers: o.object_totals.consumers,
            messages: o.queue_totals.messages,
            messages_ready: o.queue_totals.messages_ready,
            messages_unacknowledged: o.queue_totals.messages_unacknowledged,
        }
    }
}

#[derive(Deserialize)]
struct WhoamiJson {
    name: String,
    #[serde(default)]
    tags: Value,
}

/// Tags are a list since RabbitMQ 3.9 and a comma-separated string before.
fn tags(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[derive(Deserialize)]
struct PermissionsJson {
    configure: String,
    write: String,
    read: String,
}

#[derive(Deserialize)]
struct QueuePage {
    #[serde(default)]
    items: Vec<QueueJson>,
    #[serde(default)]
    page_count: u64,
}

#[derive(Deserialize)]
struct QueueJson {
    name: String,
    messages_ready: Option<u64>,
    messages_unacknowledged: Option<u64>,
    consumers: Option<u64>,
    /// An object, or `[]` on some versions when empty.
    #[serde(default)]
    arguments: Value,
}

/// Differences between a queue's `arguments` (as the management API shows them) and the expected ones.
/// Numbers and strings are compared by value (`100` equals `"100"`); an `x-queue-type` of `classic` is
/// what an omitted one means.
fn argument_differences(expected: &[(&'static str, String)], actual: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let actual = actual.as_object().unwrap_or(&empty);
    let mut differences = Vec::new();
    for (key, want) in expected {
        match actual.get(*key) {
            None => differences.push(format!("{key} is missing, expected {want}")),
            Some(v) if argument_text(v) != *want => {
                differences.push(format!("{key} is {}, expected {want}", argument_text(v)));
            }
            Some(_) => {}
        }
    }
    for (key, v) in actual {
        let known = expected.iter().any(|(k, _)| k == key);
        let implied = key == "x-queue-type" && v.as_str() == Some("classic");
        if !known && !implied {
            differences.push(format!("{key} is {}, not expected", argument_text(v)));
        }
    }
    differences
}

fn argument_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The names Postbox declares, binds, publishes to and consumes from. Every permission must cover each.
fn postbox_names(prefix: &str) -> Vec<String> {
    vec![
        format!("{prefix}.events"),
        format!("{prefix}.deadletter"),
        format!("{prefix}.deadletters"),
        format!("{prefix}.control"),
        format!("{prefix}.user.42"),
        format!("{prefix}.client.42.tab-1"),
    ]
}

fn judge_permissions(p: &mut Permissions, json: &PermissionsJson, prefix: &str) {
    let names = postbox_names(prefix);
    let mut undecided = Vec::new();
    for (kind, pattern) in [
        ("configure", &json.configure),
        ("write", &json.write),
        ("read", &json.read),
    ] {
        // RabbitMQ reads an empty pattern as `^$`: nothing.
        let effective = if pattern.is_empty() { "^$" } else { pattern };
        for name in &names {
            match pattern::matches(effective, name) {
                Some(true) => {}
                Some(false) => p.uncovered.push(format!("{kind}: {name}")),
                None => {
                    undecided.push(kind);
                    break;
                }
            }
        }
    }
    p.configure = Some(json.configure.clone());
    p.write = Some(json.write.clone());
    p.read = Some(json.read.clone());
    if !p.uncovered.is_empty() {
        p.covers_postbox_names = Some(false);
        p.detail = format!(
            "do not cover Postbox's {prefix}.* names (Postbox needs configure, write and read on them)"
        );
    } else if !undecided.is_empty() {
        p.detail = format!(
            "could not be judged ({} use(s) regular-expression syntax this check does not evaluate); \
             Postbox needs configure, write and read on {prefix}.* names",
            undecided.join(", ")
        );
    } else {
        p.covers_postbox_names = Some(true);
        p.detail = format!("cover Postbox's {prefix}.* names");
    }
}

fn permission_message(p: &Permissions, prefix: &str) -> String {
    let pattern = format!(r"^{}\..*", regex_escape(prefix));
    format!(
        "RabbitMQ user {user} cannot use Postbox's names on vhost {vhost} (configure {c:?}, write {w:?}, \
         read {r:?}; not covered: {uncovered}); grant them with `rabbitmqctl set_permissions -p {qv} {qu} \
         '{pattern}' '{pattern}' '{pattern}'`",
        user = p.user,
        vhost = p.vhost,
        c = p.configure.as_deref().unwrap_or(""),
        w = p.write.as_deref().unwrap_or(""),
        r = p.read.as_deref().unwrap_or(""),
        uncovered = p.uncovered.join(", "),
        qv = shell_quote(&p.vhost),
        qu = shell_quote(&p.user),
    )
}

/// Percent-encodes one URL path segment (everything but unreserved characters: `/` becomes `%2F`).
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes regular-expression metacharacters (for the prefix inside a pattern).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@:".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The innermost cause of a transport error ("Connection refused (os error 111)"), not reqwest's
/// "error sending request for url (...)".
fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time".into();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// Whether a RabbitMQ permission (a PCRE regular expression, matched unanchored as Erlang's `re:run`
/// does) matches a name.
///
/// A small backtracking matcher for the syntax permissions use: literals and escapes, `.`, `^`, `$`,
/// classes (`[a-z]`, `[^.]`, `\d`, `\w`, `\s`), groups (`(...)`, `(?:...)`), alternation and the
/// quantifiers `* + ? {n} {n,} {n,m}` (greedy or lazy). Anything else (look-arounds, back-references,
/// options, possessive quantifiers) gives `None`: undecided, never a guess.
mod pattern {
    use std::cell::Cell;

    /// `Some(matched)`, or `None` when the pattern uses syntax outside the supported set (or takes too
    /// many steps).
    pub fn matches(pattern: &str, subject: &str) -> Option<bool> {
        let mut parser = Parser {
            chars: pattern.chars().collect(),
            pos: 0,
        };
        let node = parser.alternation()?;
        if parser.pos != parser.chars.len() {
            return None; // an unbalanced `)`
        }
        let matcher = Matcher {
            subject: subject.chars().collect(),
            steps: Cell::new(0),
        };
        let found =
            (0..=matcher.subject.len()).any(|start| matcher.node(&node, start, &mut |_| true));
        (matcher.steps.get() <= MAX_STEPS).then_some(found)
    }

    const MAX_STEPS: u32 = 200_000;

    #[derive(Debug)]
    enum Node {
        Char(char),
        Any,
        Class {
            ranges: Vec<(char, char)>,
            negated: bool,
        },
        Start,
        End,
        Seq(Vec<Node>),
        Alt(Vec<Node>),
        Repeat {
            node: Box<Node>,
            min: u32,
            max: Option<u32>,
        },
    }

    struct Parser {
        chars: Vec<char>,
        pos: usize,
    }

    impl Parser {
        fn peek(&self) -> Option<char> {
            self.chars.get(self.pos).copied()
        }

        fn next(&mut self) -> Option<char> {
            let c = self.peek()?;
            self.pos += 1;
            Some(c)
        }

        fn alternation(&mut self) -> Option<Node> {
            let mut branches = vec![self.sequence()?];
            while self.peek() == Some('|') {
                self.pos += 1;
                branches.push(self.sequence()?);
            }
            Some(if branches.len() == 1 {
                branches.remove(0)
            } else {
                Node::Alt(branches)
            })
        }

        fn sequence(&mut self) -> Option<Node> {
            let mut items = Vec::new();
            while let Some(c) = self.peek() {
                if c == '|' || c == ')' {
                    break;
                }
                let atom = self.atom()?;
                items.push(self.quantified(atom)?);
            }
            Some(Node::Seq(items))
        }

        fn atom(&mut self) -> Option<Node> {
            match self.next()? {
                '^' => Some(Node::Start),
                '$' => Some(Node::End),
                '.' => Some(Node::Any),
                '(' => {
                    if self.peek() == Some('?') {
                        // Only the non-capturing group; look-arounds and options are not evaluated.
                        self.pos += 1;
                        if self.next()? != ':' {
                            return None;
                        }
                    }
                    let inner = self.alternation()?;
                    (self.next()? == ')').then_some(inner)
                }
                '[' => self.class(),
                '\\' => match self.escape()? {
                    Escaped::Char(c) => Some(Node::Char(c)),
                    Escaped::Class(ranges, negated) => Some(Node::Class { ranges, negated }),
                },
                '*' | '+' | '?' | '{' | ')' => None,
                c => Some(Node::Char(c)),
            }
        }

        fn quantified(&mut self, atom: Node) -> Option<Node> {
            let (min, max) = match self.peek() {
                Some('*') => (0, None),
                Some('+') => (1, None),
                Some('?') => (0, Some(1)),
                Some('{') => {
                    self.pos += 1;
                    let min = self.number()?;
                    match self.peek()? {
                        '}' => (min, Some(min)),
                        ',' if self.chars.get(self.pos + 1) == Some(&'}') => {
                            self.pos += 1;
                            (min, None)
                        }
                        ',' => {
                            self.pos += 1;
                            let max = self.number()?;
                            if self.peek()? != '}' || max < min {
                                return None;
                            }
                            (min, Some(max))
                        }
                        _ => return None,
                    }
                }
                _ => return Some(atom),
            };
            self.pos += 1; // the quantifier's last character
            match self.peek() {
                Some('?') => self.pos += 1,           // lazy: same yes/no answer
                Some('+' | '*' | '{') => return None, // possessive, or a quantified quantifier
                _ => {}
            }
            Some(Node::Repeat {
                node: Box::new(atom),
                min,
                max,
            })
        }

        fn number(&mut self) -> Option<u32> {
            let start = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            let digits: String = self.chars[start..self.pos].iter().collect();
            digits.parse().ok().filter(|n| *n <= 1000)
        }

        fn escape(&mut self) -> Option<Escaped> {
            let digit = vec![('0', '9')];
            let word = vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')];
            let space = vec![(' ', ' '), ('\t', '\r')];
            Some(match self.next()? {
                'd' => Escaped::Class(digit, false),
                'D' => Escaped::Class(digit, true),
                'w' => Escaped::Class(word, false),
                'W' => Escaped::Class(word, true),
                's' => Escaped::Class(space, false),
                'S' => Escaped::Class(space, true),
                'n' => Escaped::Char('\n'),
                't' => Escaped::Char('\t'),
                'r' => Escaped::Char('\r'),
                c if c.is_ascii_alphanumeric() => return None,
                c => Escaped::Char(c),
            })
        }

        fn class(&mut self) -> Option<Node> {
            let negated = self.peek() == Some('^');
            if negated {
                self.pos += 1;
            }
            let mut ranges = Vec::new();
            let mut first = true;
            loop {
                let c = self.next()?;
                if c == ']' && !first {
                    break;
                }
                first = false;
                let low = match c {
                    '[' if self.peek() == Some(':') => return None, // POSIX classes
                    '\\' => match self.escape()? {
                        Escaped::Char(c) => c,
                        Escaped::Class(more, false) => {
                            ranges.extend(more);
                            continue;
                        }
                        Escaped::Class(_, true) => return None,
                    },
                    c => c,
                };
                if self.peek() == Some('-') && self.chars.get(self.pos + 1) != Some(&']') {
                    self.pos += 1;
                    let high = match self.next()? {
                        '\\' => match self.escape()? {
                            Escaped::Char(c) => c,
                            Escaped::Class(..) => return None,
                        },
                        c => c,
                    };
                    if high < low {
                        return None;
                    }
                    ranges.push((low, high));
                } else {
                    ranges.push((low, low));
                }
            }
            Some(Node::Class { ranges, negated })
        }
    }

    enum Escaped {
        Char(char),
        Class(Vec<(char, char)>, bool),
    }

    struct Matcher {
        subject: Vec<char>,
        steps: Cell<u32>,
    }

    impl Matcher {
        /// Whether `node` matches at `pos` and the rest (`k`) matches after it.
        fn node(&self, node: &Node, pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
            self.steps.set(self.steps.get() + 1);
            if self.steps.get() > MAX_STEPS {
                return false;
            }
            let here = self.subject.get(pos).copied();
            match node {
                Node::Char(c) => here == Some(*c) && k(pos + 1),
                Node::Any => here.is_some_and(|c| c != '\n') && k(pos + 1),
                Node::Class { ranges, negated } => {
                    here.is_some_and(|c| {
                        ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
                    }) && k(pos + 1)
                }
                Node::Start => pos == 0 && k(pos),
                Node::End => pos == self.subject.len() && k(pos),
                Node::Seq(items) => self.sequence(items, pos, k),
                Node::Alt(branches) => branches.iter().any(|b| self.node(b, pos, k)),
                Node::Repeat { node, min, max } => self.repeat(node, *min, *max, 0, pos, k),
            }
        }

        fn sequence(&self, items: &[Node], pos: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
            match items.split_first() {
                None => k(pos),
                Some((first, rest)) => self.node(first, pos, &mut |p| self.sequence(rest, p, k)),
            }
        }

        fn repeat(
            &self,
            node: &Node,
            min: u32,
            max: Option<u32>,
            count: u32,
            pos: usize,
            k: &mut dyn FnMut(usize) -> bool,
        ) -> bool {
            if max.is_some_and(|m| count >= m) {
                return k(pos);
            }
            let more = self.node(node, pos, &mut |p| {
                // An iteration that matched nothing cannot help once the minimum is reached.
                !(p == pos && count >= min) && self.repeat(node, min, max, count + 1, p, k)
            });
            more || (count >= min && k(pos))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_patterns_are_matched_like_rabbitmq() {
        let m = pattern::matches;
        assert_eq!(m(".*", "postbox.events"), Some(true));
        assert_eq!(m(r"^postbox\..*", "postbox.user.42"), Some(true));
        assert_eq!(m(r"^postbox\..*", "postboxes.user.42"), Some(false));
        assert_eq!(m(r"^postbox\..*", "other.postbox.user"), Some(false));
        assert_eq!(m(r"postbox\.", "x.postbox.y"), Some(true), "unanchored");
        assert_eq!(m("^$", "postbox.events"), Some(false));
        assert_eq!(
            m(r"^(postbox|chat)\.(user|client)\.", "chat.client.1.a"),
            Some(true)
        );
        assert_eq!(
            m(r"^(postbox|chat)\.(user|client)\.", "chat.events"),
            Some(false)
        );
        assert_eq!(m(r"^postbox\.user\.\d+$", "postbox.user.42"), Some(true));
        assert_eq!(m(r"^postbox\.user\.\d+$", "postbox.user.42x"), Some(false));
        assert_eq!(m(r"^[a-z]+\.[^.]+$", "postbox.events"), Some(true));
        assert_eq!(m(r"^[a-z]+\.[^.]+$", "postbox.user.1"), Some(false));
        assert_eq!(m(r"^p.{6}\.", "postbox.x"), Some(true));
        assert_eq!(m(r"^p.{2,3}\.", "postbox.x"), Some(false));
        assert_eq!(
            m(r"^(?:amq\.gen.*|postbox\..*)$", "postbox.deadletters"),
            Some(true)
        );
        assert_eq!(
            m(r"^(a*)*$", "aaaaaaaaaaaaaaaaaaaaaaaaaaaab"),
            None,
            "too many steps"
        );
        assert_eq!(m(r"^(?=postbox)", "postbox.x"), None, "look-ahead");
        assert_eq!(m(r"^postbox\b", "postbox.x"), None, "word boundary");
        assert_eq!(m(r"(", "x"), None);
        assert_eq!(m(r"a)", "a"), None);
        assert_eq!(m(r"*a", "a"), None);
    }

    #[test]
    fn permissions_are_judged_on_postbox_names() {
        let judge = |c: &str, w: &str, r: &str| {
            let mut p = Permissions {
                user: "u".into(),
                vhost: "/".into(),
                configure: None,
                write: None,
                read: None,
                covers_postbox_names: None,
                uncovered: Vec::new(),
                detail: String::new(),
            };
            let json = PermissionsJson {
                configure: c.into(),
                write: w.into(),
                read: r.into(),
            };
            judge_permissions(&mut p, &json, "postbox");
            p
        };
        assert_eq!(judge(".*", ".*", ".*").covers_postbox_names, Some(true));
        let p = r"^postbox\..*";
        assert_eq!(judge(p, p, p).covers_postbox_names, Some(true));
        let partial = judge(p, p, r"^postbox\.user\.");
        assert_eq!(partial.covers_postbox_names, Some(false));
        assert!(
            partial
                .uncovered
                .contains(&"read: postbox.events".to_owned())
        );
        // An empty permission is `^$`: nothing.
        assert_eq!(judge("", p, p).covers_postbox_names, Some(false));
        assert_eq!(judge(r"^postbox\b", p, p).covers_postbox_names, None);
    }

    #[test]
    fn arguments_compare_by_value() {
        let expected = vec![
            ("x-dead-letter-exchange", "postbox.deadletter".to_owned()),
            ("x-max-length", "100".to_owned()),
        ];
        let same = serde_json::json!({"x-max-length": 100, "x-dead-letter-exchange": "postbox.deadletter",
                                      "x-queue-type": "classic"});
        assert!(argument_differences(&expected, &same).is_empty());
        let other = serde_json::json!({"x-max-length": 5, "x-foo": true});
        assert_eq!(
            argument_differences(&expected, &other),
            [
                "x-dead-letter-exchange is missing, expected postbox.deadletter",
                "x-max-length is 5, expected 100",
                "x-foo is true, not expected",
            ]
        );
        assert_eq!(
            argument_differences(&expected, &serde_json::json!([])).len(),
            2
        );
    }

    #[test]
    fn urls_and_names_are_encoded() {
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(percent_encode("a b/c.d"), "a%20b%2Fc.d");
        assert_eq!(percent_decode("p%40ss%2Fw"), "p@ss/w");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(regex_escape("a.b-c"), r"a\.b-c");
        assert_eq!(shell_quote("/"), "/");
        assert_eq!(shell_quote("my vhost"), "'my vhost'");
    }
}
