//! The RabbitMQ management HTTP API, as `check-rabbitmq` reads it: overview, whoami, permissions, the
//! exchange, and the postboxes page by page.

use amq_protocol::uri::AMQPUri;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use super::{
    CheckFailure, Management, Mismatch, Overview, Permissions, QueueLoad, Report,
    permissions::{PermissionsJson, judge_permissions, shell_quote},
};
use crate::broker::{
    Topology,
    tls::{self, TlsSettings},
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

/// What the management API told before the AMQP connection (which declares the exchange).
pub(super) struct Before {
    pub management: Management,
    pub overview: Option<Overview>,
    pub permissions: Option<Permissions>,
    pub exchange_present: Option<bool>,
    pub notes: Vec<String>,
}

/// A client of the management API: base URL (without credentials), credentials, vhost, AMQP user.
pub(super) struct Api {
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
pub(super) enum ApiError {
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
    /// Whether the API is read over plain HTTP (its credentials unencrypted).
    pub(super) fn is_plain_http(&self) -> bool {
        self.base.starts_with("http://")
    }

    pub(super) fn new(
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
    pub(super) async fn before_connect(&self, topology: &Topology) -> Before {
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
    pub(super) async fn postboxes(&self, topology: &Topology) -> Result<Listing, ApiError> {
        let pattern = format!(r"^{}\.(user|client)\.", regex::escape(&topology.prefix));
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
pub(super) struct Listing {
    queues: Vec<QueueJson>,
    truncated: bool,
}

impl Listing {
    pub(super) fn fill(self, report: &mut Report, topology: &Topology) {
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

/// What a URL path segment keeps unencoded: the unreserved characters (`/` becomes `%2F`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one URL path segment.
fn percent_encode(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

fn percent_decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
