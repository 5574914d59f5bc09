//! `postbox-loadtest`: a load generator for a running Postbox, and a raw RabbitMQ baseline.
//!
//! Modes: `send` (U long-poll loops and S senders at an aggregate rate R for D seconds), `idle` (U pollers,
//! no sends), `broadcast` (one notification to a college of U users) and `raw` (publish-with-confirm and
//! consume through lapin alone, no HTTP and no database; see [`raw`]). Users are provisioned through the
//! admin API; every message carries its send time (`lt:<run>:<seq>:<unix nanos>`), so delivery latency is
//! the receiving poll's clock minus that, loss is accepted sends never delivered after the drain, and
//! duplicates are repeated deliveries. Results are a [`report::Report`] (table and JSON).
//!
//! It talks to Postbox only through its public HTTP API (reusing the wire types of [`postbox::events`] and
//! the poll answer), never through its database or broker, and it must not be pointed at a production
//! service: it creates users that it does not delete.

pub mod raw;
pub mod report;

use std::{
    future::Future,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use clap::{Args, Parser, ValueEnum};
use futures_util::{StreamExt, stream};
use hdrhistogram::Histogram;
use reqwest::{StatusCode, header::HeaderValue};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use postbox::{
    accounts::CreatedUser,
    events::{Event, MessageView, UserView, kind},
};
use report::{
    Broadcast, BrokerStats, Latency, Machine, Params, ProcSample, Report, clock_ticks,
    micros_histogram,
};

/// Longest measured window a run may ask for.
pub const MAX_DURATION_SECS: f64 = 600.0;
/// Most users one run provisions (each poller holds one connection).
pub const MAX_USERS: u32 = 20_000;
/// Most messages one run tracks (two bytes of state each).
const MAX_MESSAGES: u64 = 20_000_000;
const POLL_PATH: &str = "/api/v1/communication/poll/events/";
const SEND_PATH: &str = "/api/v1/communication/chats/";
const USERS_PATH: &str = "/api/v1/admin/users/";
const NOTIFY_PATH: &str = "/api/v1/communication/notifications/";

/// What the run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// U pollers, S senders at R msg/s for D seconds.
    Send,
    /// U pollers and no sends: the cost of waiting clients.
    Idle,
    /// One notification to a college of U users: time until the last member has it.
    Broadcast,
    /// RabbitMQ alone: publish with confirm and consume the same message size, no HTTP, no database.
    Raw,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Send => "send",
            Mode::Idle => "idle",
            Mode::Broadcast => "broadcast",
            Mode::Raw => "raw",
        }
    }
}

/// `postbox-loadtest` flags.
#[derive(Debug, Clone, Args)]
pub struct LoadtestArgs {
    /// What to run.
    #[arg(long, value_enum, default_value_t = Mode::Send)]
    pub mode: Mode,

    /// Base URL of the Postbox under test.
    #[arg(long, env = "POSTBOX_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,

    /// An admin token of that Postbox (`postbox create-user --role admin` prints one), to create the
    /// test users through `POST /api/v1/admin/users/`. Not needed for `--mode raw`.
    #[arg(long, env = "POSTBOX_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Users to create; each gets one long-poll loop (one connection). At most 20000.
    #[arg(long, default_value_t = 100)]
    pub users: u32,

    /// Concurrent senders (HTTP requests in flight, or AMQP publishing channels for `raw`).
    #[arg(long, default_value_t = 32)]
    pub senders: u32,

    /// Aggregate send rate in messages per second, spread evenly over the users (each user sends R/U
    /// per second: keep it under the server's POSTBOX_SEND_RATE). 0 sends as fast as the senders go.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,

    /// Seconds of sending (or idling); at most 600.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds to wait after the window for the last deliveries before counting loss; at most 120.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,

    /// Characters per chat message (the send timestamp header, padded).
    #[arg(long, default_value_t = 64)]
    pub message_chars: usize,

    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Pid of the Postbox process, to report its CPU seconds and peak RSS (from /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Pid of the RabbitMQ node (`beam.smp`), to report the broker's CPU seconds and peak RSS too.
    #[arg(long)]
    pub broker_pid: Option<u32>,

    /// The college the broadcast mode's users join (default: a random one).
    #[arg(long)]
    pub college: Option<i64>,

    /// RabbitMQ for `--mode raw`.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,

    /// RabbitMQ management API, for the broker's counters (get_empty). Default: `http://<AMQP
    /// host>:15672` with the AMQP credentials. Unreachable is fine: the report says so.
    #[arg(long, env = "POSTBOX_MANAGEMENT_URL", hide_env_values = true)]
    pub management_url: Option<String>,
}

impl LoadtestArgs {
    /// Checks the bounds; every loop of the run is bounded by them.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.duration > 0.0 && self.duration <= MAX_DURATION_SECS,
            "--duration must be between 0 and {MAX_DURATION_SECS} seconds"
        );
        anyhow::ensure!(
            (0.0..=120.0).contains(&self.drain),
            "--drain must be between 0 and 120 seconds"
        );
        anyhow::ensure!(
            (1..=MAX_USERS).contains(&self.users),
            "--users must be between 1 and {MAX_USERS}"
        );
        anyhow::ensure!(
            (1..=4096).contains(&self.senders),
            "--senders must be between 1 and 4096"
        );
        anyhow::ensure!(
            self.rate >= 0.0 && self.rate <= 1_000_000.0,
            "--rate must be between 0 (unlimited) and 1000000 messages per second"
        );
        anyhow::ensure!(
            (24..=10_000).contains(&self.message_chars),
            "--message-chars must be between 24 and 10000"
        );
        if self.mode == Mode::Send {
            anyhow::ensure!(
                self.users >= 2,
                "--mode send needs at least 2 users (a sender and a receiver)"
            );
        }
        if self.mode != Mode::Raw {
            anyhow::ensure!(
                self.admin_token.is_some(),
                "--admin-token (or POSTBOX_ADMIN_TOKEN) is needed to create the test users; \
                 `postbox create-user --username loadtest-admin --role admin` prints one"
            );
        }
        Ok(())
    }

    /// How many messages the plan sends at most.
    fn planned_messages(&self) -> u64 {
        if self.rate > 0.0 {
            ((self.rate * self.duration).ceil() as u64).min(MAX_MESSAGES)
        } else {
            MAX_MESSAGES
        }
    }

    fn params(&self, message_size: usize) -> Params {
        Params {
            url: self.url.clone(),
            users: self.users,
            senders: self.senders,
            rate: self.rate,
            duration_secs: self.duration,
            drain_secs: self.drain,
            message_size,
        }
    }
}

/// Runs `postbox-loadtest`: prints the table, writes the JSON, returns the exit code (0 when the run
/// completed, whatever it measured; an unavailable mode is reported, not failed).
#[tokio::main]
async fn main() {
    // Every poller holds a socket: use as many descriptors as the hard limit allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
    let cli = Cli::parse();
    match start(*cli.args).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Load-test a running Postbox (or, with `--mode raw`, RabbitMQ alone) and report sent, delivered,
/// lost and duplicated messages, latency percentiles, rates, polls, and the server's CPU and peak
/// RSS. It creates its own users through the admin API; never point it at production.
/// See docs/BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "postbox-loadtest", version)]
struct Cli {
    #[command(flatten)]
    args: Box<LoadtestArgs>,
}

async fn start(args: LoadtestArgs) -> anyhow::Result<i32> {
    args.validate()?;
    let report = run(&args).await?;
    println!("{}", report.table());
    if let Some(path) = &args.json {
        report
            .write_json(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(0)
}

/// Runs one load test and returns its report.
pub async fn run(args: &LoadtestArgs) -> anyhow::Result<Report> {
    args.validate()?;
    match args.mode {
        Mode::Raw => raw::run(args).await,
        Mode::Send | Mode::Idle | Mode::Broadcast => http_run(args).await,
    }
}

// ---------------------------------------------------------------------------------------------------
// Shared bookkeeping
// ---------------------------------------------------------------------------------------------------

/// Nanoseconds since the Unix epoch (the clock embedded in messages).
pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A short random id that tags this run's users and messages, so stray events are ignored.
fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// The message text: `lt:<run>:<seq>:<unix nanos>:` padded with `x` to `chars`.
pub(crate) fn message_text(run: &str, seq: u64, sent_nanos: u64, chars: usize) -> String {
    let mut text = format!("lt:{run}:{seq}:{sent_nanos}:");
    while text.len() < chars {
        text.push('x');
    }
    text
}

/// `(seq, sent nanos)` from a message text of run `run`.
pub(crate) fn parse_text(run: &str, text: &str) -> Option<(u64, u64)> {
    let rest = text
        .strip_prefix("lt:")?
        .strip_prefix(run)?
        .strip_prefix(':')?;
    let mut parts = rest.splitn(3, ':');
    let seq = parts.next()?.parse().ok()?;
    let nanos = parts.next()?.parse().ok()?;
    Some((seq, nanos))
}

/// What one send ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    RateLimited,
    Failed,
}

/// Sent and seen state of every planned message, counters and histograms, shared by all tasks.
pub(crate) struct Tracker {
    pub run: String,
    /// 1 once the send of message `seq` was accepted.
    sent: Vec<AtomicU8>,
    /// How many times message `seq` was delivered (saturating).
    seen: Vec<AtomicU8>,
    pub attempted: AtomicU64,
    pub accepted: AtomicU64,
    pub rate_limited: AtomicU64,
    pub send_errors: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicated: AtomicU64,
    pub echoes: AtomicU64,
    pub polls: AtomicU64,
    pub empty_polls: AtomicU64,
    pub poll_errors: AtomicU64,
    send_hist: Mutex<Histogram<u64>>,
    delivery_hist: Mutex<Histogram<u64>>,
}

impl Tracker {
    pub fn new(run: String, capacity: u64) -> Self {
        let slots = || (0..capacity).map(|_| AtomicU8::new(0)).collect::<Vec<_>>();
        Tracker {
            run,
            sent: slots(),
            seen: slots(),
            attempted: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            echoes: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            empty_polls: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
            send_hist: Mutex::new(micros_histogram()),
            delivery_hist: Mutex::new(micros_histogram()),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.sent.len() as u64
    }

    pub fn record_send(&self, seq: u64, outcome: Outcome, took: Duration) {
        match outcome {
            Outcome::Accepted => {
                if let Some(s) = self.sent.get(seq as usize) {
                    s.store(1, Ordering::Relaxed);
                }
                self.accepted.fetch_add(1, Ordering::Relaxed);
                self.send_hist
                    .lock()
                    .expect("histogram lock")
                    .saturating_record(took.as_micros().max(1) as u64);
            }
            Outcome::RateLimited => {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed => {
                self.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a delivery of `seq`, sent at `sent_nanos`, received at `now_nanos`.
    pub fn record_delivery(&self, seq: u64, sent_nanos: u64, now_nanos: u64) {
        let Some(slot) = self.seen.get(seq as usize) else {
            return;
        };
        let before = slot
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            })
            .unwrap_or(u8::MAX);
        if before == 0 {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            let micros = now_nanos.saturating_sub(sent_nanos) / 1000;
            self.delivery_hist
                .lock()
                .expect("histogram lock")
                .saturating_record(micros.max(1));
        } else {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(lost, delivered without an accepted send)`.
    pub fn losses(&self) -> (u64, u64) {
        let (mut lost, mut unconfirmed) = (0, 0);
        for (sent, seen) in self.sent.iter().zip(&self.seen) {
            match (
                sent.load(Ordering::Relaxed) > 0,
                seen.load(Ordering::Relaxed) > 0,
            ) {
                (true, false) => lost += 1,
                (false, true) => unconfirmed += 1,
                _ => {}
            }
        }
        (lost, unconfirmed)
    }

    pub fn all_delivered(&self) -> bool {
        self.delivered.load(Ordering::Relaxed) >= self.accepted.load(Ordering::Relaxed)
    }

    pub fn send_latency(&self) -> Option<Latency> {
        Latency::from_micros(&self.send_hist.lock().expect("histogram lock"))
    }

    pub fn delivery_latency(&self) -> Option<Latency> {
        Latency::from_micros(&self.delivery_hist.lock().expect("histogram lock"))
    }

    /// Starts the poll counters afresh (warm-up polls are not part of the window).
    pub fn reset_polls(&self) {
        self.polls.store(0, Ordering::Relaxed);
        self.empty_polls.store(0, Ordering::Relaxed);
        self.poll_errors.store(0, Ordering::Relaxed);
    }

    /// Fills the send/delivery part of `report`.
    pub fn fill(&self, report: &mut Report, window: f64, drain: f64) {
        let (lost, unconfirmed) = self.losses();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        report.attempted = get(&self.attempted);
        report.sent = get(&self.accepted);
        report.rate_limited = get(&self.rate_limited);
        report.send_errors = get(&self.send_errors);
        report.delivered = get(&self.delivered);
        report.duplicated = get(&self.duplicated);
        report.sender_echoes = get(&self.echoes);
        report.lost = lost;
        report.delivered_unconfirmed = unconfirmed;
        report.polls = get(&self.polls);
        report.empty_polls = get(&self.empty_polls);
        report.poll_errors = get(&self.poll_errors);
        report.send_rate = if window > 0.0 {
            report.sent as f64 / window
        } else {
            0.0
        };
        report.delivery_rate = if window + drain > 0.0 {
            report.delivered as f64 / (window + drain)
        } else {
            0.0
        };
        report.send_latency_ms = self.send_latency();
        report.delivery_latency_ms = self.delivery_latency();
    }
}

/// Drives `senders` tasks that call `send(seq)` on the schedule of the run: message `seq` is due at
/// `start + seq / rate` (as fast as possible when the rate is 0), sender `s` handles `seq ≡ s (mod S)`,
/// and nothing is started after `start + duration`. A late sender catches up without waiting.
pub(crate) async fn drive<F, Fut>(
    tracker: Arc<Tracker>,
    senders: u32,
    rate: f64,
    duration: Duration,
    start: tokio::time::Instant,
    send: F,
) where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let end = start + duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..u64::from(senders) {
        let (tracker, send, next) = (tracker.clone(), send.clone(), next.clone());
        tasks.spawn(async move {
            let mut k = s;
            loop {
                let seq = if rate > 0.0 {
                    let due = start + Duration::from_secs_f64(k as f64 / rate);
                    k += u64::from(senders);
                    if due >= end {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                    k - u64::from(senders)
                } else {
                    next.fetch_add(1, Ordering::Relaxed)
                };
                if seq >= tracker.capacity() || tokio::time::Instant::now() >= end {
                    break;
                }
                tracker.attempted.fetch_add(1, Ordering::Relaxed);
                let began = Instant::now();
                let outcome = send(seq).await;
                tracker.record_send(seq, outcome, began.elapsed());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

// ---------------------------------------------------------------------------------------------------
// HTTP modes
// ---------------------------------------------------------------------------------------------------

/// A provisioned test user.
#[derive(Debug, Clone)]
struct TestUser {
    id: i64,
    auth: HeaderValue,
}

/// The JSON `POST /api/v1/admin/users/` answers.
#[derive(serde::Deserialize)]
struct Created {
    #[serde(flatten)]
    user: UserView,
    token: String,
}

// Keep the provisioning answer in step with the server's type.
const _: fn(CreatedUser) -> (UserView, String) = |c| (c.user, c.token);

fn auth_header(token: &str) -> anyhow::Result<HeaderValue> {
    HeaderValue::from_str(&format!("Token {token}")).context("the token is not a valid header")
}

/// Creates `count` users (`lt<run>u<i>`, in `college` when given) through the admin API, 16 at a time.
async fn provision(
    client: &reqwest::Client,
    args: &LoadtestArgs,
    run: &str,
    count: u32,
    college: Option<i64>,
    role: &str,
) -> anyhow::Result<Vec<TestUser>> {
    let admin = auth_header(args.admin_token.as_deref().unwrap_or_default())?;
    let url = format!("{}{USERS_PATH}", args.url);
    let results: Vec<anyhow::Result<TestUser>> = stream::iter(0..count)
        .map(|i| {
            let (client, admin, url) = (client.clone(), admin.clone(), url.clone());
            let body = json!({
                "username": format!("lt{run}{}{i}", &role[..1]),
                "college_id": college,
                "role": role,
            });
            async move {
                for attempt in 0..5u32 {
                    let resp = client
                        .post(&url)
                        .header(reqwest::header::AUTHORIZATION, admin.clone())
                        .json(&body)
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status() == StatusCode::CREATED => {
                            let c: Created = r.json().await.context("the admin API's answer")?;
                            return Ok(TestUser {
                                id: c.user.id,
                                auth: auth_header(&c.token)?,
                            });
                        }
                        // A busy database (503) is worth a retry; anything else is a setup mistake.
                        Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE && attempt < 4 => {}
                        Ok(r) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            anyhow::bail!(
                                "creating a user through {url} answered {status}: {text} \
                                 (is --admin-token an admin's token?)"
                            );
                        }
                        Err(e) if attempt < 4 => {
                            tracing::debug!(error = %e, "user creation failed; retrying");
                        }
                        Err(e) => {
                            return Err(e).with_context(|| format!("cannot reach {url}"));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                anyhow::bail!("creating a user kept failing")
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// What the pollers look for besides chat messages: the broadcast's title and when it was sent.
struct BroadcastWatch {
    title: String,
    /// Receipt time minus send time of each member, microseconds; `None` until sent.
    sent_nanos: AtomicU64,
    received: AtomicU64,
    last_nanos: AtomicU64,
    hist: Mutex<Histogram<u64>>,
}

/// One user's long-poll loop: a warm-up poll (`?timeout=0`, which creates the postbox and attaches its
/// consumer), then polls until cancelled.
async fn poll_loop(
    client: reqwest::Client,
    base: String,
    user: TestUser,
    tracker: Arc<Tracker>,
    ready: Arc<AtomicU64>,
    broadcast: Option<Arc<BroadcastWatch>>,
    stop: CancellationToken,
) {
    let url = format!("{base}{POLL_PATH}");
    let mut warm = true;
    let mut backoff = Duration::from_millis(50);
    while !stop.is_cancelled() {
        let mut req = client
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, user.auth.clone());
        if warm {
            req = req.query(&[("timeout", "0")]);
        }
        let answer = async {
            let resp = req.send().await?;
            let status = resp.status();
            Ok::<_, reqwest::Error>((status, resp.bytes().await?))
        };
        let answer = tokio::select! {
            () = stop.cancelled() => break,
            a = answer => a,
        };
        let now = unix_nanos();
        let body = match answer {
            Ok((StatusCode::OK, body)) => body,
            Ok((status, _)) => {
                tracing::debug!(%status, "poll failed");
                tracker.poll_errors.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "poll failed");
                tracker.poll_errors.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if warm {
            warm = false;
            ready.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(answer) = serde_json::from_slice::<postbox::http::poll::PollResponse>(&body) else {
            tracker.poll_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tracker.polls.fetch_add(1, Ordering::Relaxed);
        if answer.events.is_empty() {
            tracker.empty_polls.fetch_add(1, Ordering::Relaxed);
        }
        for event in answer.events {
            observe(&tracker, broadcast.as_deref(), user.id, event, now);
        }
    }
}

/// Counts one polled event.
fn observe(tracker: &Tracker, broadcast: Option<&BroadcastWatch>, me: i64, event: Event, now: u64) {
    if event.event == kind::MESSAGE {
        let Ok(msg) = serde_json::from_value::<MessageView>(event.data) else {
            return;
        };
        let Some((seq, sent)) = parse_text(&tracker.run, &msg.message) else {
            return;
        };
        if msg.receiver_id == me {
            tracker.record_delivery(seq, sent, now);
        } else if msg.sender_id == me {
            tracker.echoes.fetch_add(1, Ordering::Relaxed);
        }
    } else if event.event == kind::NOTIFICATION
        && let Some(watch) = broadcast
        && event.data.to_string().contains(&watch.title)
    {
        let sent = watch.sent_nanos.load(Ordering::Relaxed);
        watch.received.fetch_add(1, Ordering::Relaxed);
        watch.last_nanos.fetch_max(now, Ordering::Relaxed);
        if sent > 0 {
            watch
                .hist
                .lock()
                .expect("histogram lock")
                .saturating_record((now.saturating_sub(sent) / 1000).max(1));
        }
    }
}

/// Reads RabbitMQ's overview counters; `None` when the management API does not answer.
async fn broker_overview(
    client: &reqwest::Client,
    args: &LoadtestArgs,
) -> Option<serde_json::Value> {
    let (base, user, pass) = management_target(args);
    let resp = client
        .get(format!("{base}/api/overview"))
        .basic_auth(user, Some(pass))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// The management API's base URL and credentials (from `--management-url` or the AMQP URL).
fn management_target(args: &LoadtestArgs) -> (String, String, String) {
    let rest = args
        .amqp_url
        .split_once("://")
        .map_or(args.amqp_url.as_str(), |(_, r)| r);
    let (userinfo, hostport) = rest.split_once('@').unwrap_or(("guest:guest", rest));
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let host = hostport
        .split(['/', ':'])
        .next()
        .filter(|h| !h.is_empty())
        .unwrap_or("127.0.0.1");
    let base = args
        .management_url
        .clone()
        .unwrap_or_else(|| format!("http://{host}:15672"));
    (
        base.trim_end_matches('/').to_owned(),
        user.to_owned(),
        pass.to_owned(),
    )
}

fn overview_number(v: &Option<serde_json::Value>, path: &[&str]) -> Option<u64> {
    let mut cur = v.as_ref()?;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_u64()
}

/// `send`, `idle` and `broadcast`.
async fn http_run(args: &LoadtestArgs) -> anyhow::Result<Report> {
    let started_at = postbox::events::rfc3339(chrono::Utc::now());
    let setup_began = Instant::now();
    let run = run_id();
    let ticks = clock_ticks();
    let base = args.url.trim_end_matches('/').to_owned();
    let control = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(15))
        .build()?;
    // One connection per poller; a poll is held up to the server's deadline (60 s at most).
    let pollers_client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.users as usize)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(75))
        .build()?;
    let college = (args.mode == Mode::Broadcast).then(|| {
        args.college
            .unwrap_or_else(|| 900_000 + rand::random_range(0..99_999))
    });
    eprintln!("loadtest {run}: creating {} users at {base}", args.users);
    let users = provision(&control, args, &run, args.users, college, "member").await?;
    let staff = match college {
        Some(c) => provision(&control, args, &run, 1, Some(c), "staff")
            .await?
            .pop(),
        None => None,
    };
    let tracker = Arc::new(Tracker::new(
        run.clone(),
        if args.mode == Mode::Send {
            args.planned_messages()
        } else {
            0
        },
    ));
    let watch = college.map(|_| {
        Arc::new(BroadcastWatch {
            title: format!("lt:{run}:broadcast"),
            sent_nanos: AtomicU64::new(0),
            received: AtomicU64::new(0),
            last_nanos: AtomicU64::new(0),
            hist: Mutex::new(micros_histogram()),
        })
    });
    let stop = CancellationToken::new();
    let ready = Arc::new(AtomicU64::new(0));
    let mut pollers = tokio::task::JoinSet::new();
    for user in &users {
        pollers.spawn(poll_loop(
            pollers_client.clone(),
            base.clone(),
            user.clone(),
            tracker.clone(),
            ready.clone(),
            watch.clone(),
            stop.clone(),
        ));
    }
    eprintln!("loadtest {run}: attaching {} pollers", users.len());
    let attach_began = Instant::now();
    let warm_deadline =
        attach_began + Duration::from_secs(60) + Duration::from_millis(20 * u64::from(args.users));
    while ready.load(Ordering::Relaxed) < u64::from(args.users) {
        if Instant::now() > warm_deadline {
            stop.cancel();
            anyhow::bail!(
                "only {} of {} pollers got a first answer; is the server overloaded or out of file descriptors?",
                ready.load(Ordering::Relaxed),
                args.users
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let setup_secs = setup_began.elapsed().as_secs_f64();
    let first_poll_errors = tracker.poll_errors.load(Ordering::Relaxed);
    tracker.reset_polls();
    let mut report = empty_report(args, args.mode, started_at, args.message_chars);
    report.setup_secs = setup_secs;
    report.attach_secs = attach_began.elapsed().as_secs_f64();
    report.first_poll_errors = first_poll_errors;

    // The measured window.
    let overview_before = broker_overview(&control, args).await;
    let server_before = args.server_pid.and_then(|p| ProcSample::read(p, ticks));
    let watched = Watched::start(args, ticks);
    let window_began = Instant::now();
    let start = tokio::time::Instant::now();
    let duration = Duration::from_secs_f64(args.duration);
    eprintln!(
        "loadtest {run}: {} for {} s",
        args.mode.name(),
        args.duration
    );
    match args.mode {
        Mode::Send => {
            let senders_client = reqwest::Client::builder()
                .tcp_nodelay(true)
                .pool_max_idle_per_host(args.senders as usize)
                .timeout(Duration::from_secs(10))
                .build()?;
            let users = Arc::new(users.clone());
            let url = Arc::new(format!("{base}{SEND_PATH}"));
            let (run, chars) = (run.clone(), args.message_chars);
            let send = move |seq: u64| {
                let (client, users, url) = (senders_client.clone(), users.clone(), url.clone());
                let text = message_text(&run, seq, unix_nanos(), chars);
                async move {
                    // Round robin over senders keeps each user at R/U messages per second; the receiver
                    // shifts every round so each user hears from many others.
                    let n = users.len() as u64;
                    let from = (seq % n) as usize;
                    let shift = 1 + (seq / n) % (n - 1);
                    let to = ((seq % n + shift) % n) as usize;
                    let resp = client
                        .post(url.as_str())
                        .header(reqwest::header::AUTHORIZATION, users[from].auth.clone())
                        .json(&json!({"receiver": users[to].id, "message": text}))
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status() == StatusCode::CREATED => {
                            // Read the body so the connection goes back to the pool.
                            let _ = r.bytes().await;
                            Outcome::Accepted
                        }
                        Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                            Outcome::RateLimited
                        }
                        Ok(r) => {
                            tracing::debug!(status = %r.status(), "send failed");
                            Outcome::Failed
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "send failed");
                            Outcome::Failed
                        }
                    }
                }
            };
            drive(
                tracker.clone(),
                args.senders,
                args.rate,
                duration,
                start,
                send,
            )
            .await;
        }
        Mode::Idle => tokio::time::sleep_until(start + duration).await,
        Mode::Broadcast => {
            let (watch, staff) = (
                watch.clone().expect("broadcast watch"),
                staff.clone().expect("staff user"),
            );
            let college = college.expect("college");
            let began = Instant::now();
            watch.sent_nanos.store(unix_nanos(), Ordering::Relaxed);
            let resp = control
                .post(format!("{base}{NOTIFY_PATH}"))
                .header(reqwest::header::AUTHORIZATION, staff.auth.clone())
                .json(&json!({
                    "college_id": college,
                    "title": watch.title,
                    "message": "load test broadcast",
                }))
                .send()
                .await
                .context("the notification request")?;
            let request_ms = began.elapsed().as_secs_f64() * 1000.0;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
                report.available = false;
                report.notes.push(format!(
                    "broadcast mode unavailable: POST {NOTIFY_PATH} answered {status} (this Postbox has \
                     no broadcast endpoint yet): {}",
                    text.chars().take(200).collect::<String>()
                ));
            } else if !status.is_success() {
                report.notes.push(format!(
                    "the notification request answered {status}: {}",
                    text.chars().take(200).collect::<String>()
                ));
            } else {
                // Wait until every member has it, or the window plus the drain is over.
                let limit = start + duration + Duration::from_secs_f64(args.drain);
                while watch.received.load(Ordering::Relaxed) < u64::from(args.users)
                    && tokio::time::Instant::now() < limit
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let sent = watch.sent_nanos.load(Ordering::Relaxed);
            let received = watch.received.load(Ordering::Relaxed);
            report.broadcast = Some(Broadcast {
                college_id: college,
                members: u64::from(args.users),
                received,
                status: status.as_u16(),
                request_ms,
                latency_ms: Latency::from_micros(&watch.hist.lock().expect("histogram lock")),
                all_received_ms: (received >= u64::from(args.users)).then(|| {
                    watch
                        .last_nanos
                        .load(Ordering::Relaxed)
                        .saturating_sub(sent) as f64
                        / 1e6
                }),
            });
        }
        Mode::Raw => unreachable!("raw runs without HTTP"),
    }
    let window_secs = match args.mode {
        Mode::Broadcast => window_began.elapsed().as_secs_f64(),
        _ => args.duration.min(window_began.elapsed().as_secs_f64()),
    };
    let server_window = args.server_pid.and_then(|p| ProcSample::read(p, ticks));
    watched.finish(&mut report, window_secs);

    // Drain: wait for the last deliveries (send mode), then stop the pollers.
    let drain_began = Instant::now();
    if args.mode == Mode::Send {
        let limit = Instant::now() + Duration::from_secs_f64(args.drain);
        while !tracker.all_delivered() && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let drain_secs = drain_began.elapsed().as_secs_f64();
    stop.cancel();
    while pollers.join_next().await.is_some() {}
    tracker.fill(&mut report, window_secs, drain_secs);
    report.window_secs = window_secs;
    report.drain_secs = drain_secs;
    if let (Some(b), Some(e)) = (server_before, server_window) {
        let mut s = b.until(&e, window_secs);
        // Memory as of the end, after the drain.
        if let Some(end) = args.server_pid.and_then(|p| ProcSample::read(p, ticks)) {
            s.peak_rss_mb = end.hwm_kb as f64 / 1024.0;
            s.rss_mb = end.rss_kb as f64 / 1024.0;
        }
        report.server = Some(s);
    } else if let Some(pid) = args.server_pid {
        report.notes.push(format!(
            "could not read /proc/{pid}: is --server-pid right?"
        ));
    }
    if overview_before.is_some() && args.mode == Mode::Idle {
        // The management API refreshes its counters every 5 s: let get_empty catch up with the window.
        tokio::time::sleep(Duration::from_millis(5500)).await;
    }
    let overview_after = broker_overview(&control, args).await;
    report.broker = broker_stats(&overview_before, &overview_after);
    if report.broker.is_none() {
        report.notes.push(
            "the RabbitMQ management API did not answer: no broker counters (see --management-url)"
                .into(),
        );
    }
    if report.rate_limited > 0 {
        report.notes.push(
            "some sends were refused with 429: raise the server's POSTBOX_SEND_RATE or add --users"
                .into(),
        );
    }
    if args.mode == Mode::Send && args.rate > 0.0 && report.send_rate < 0.95 * args.rate {
        report.notes.push(format!(
            "achieved {:.0} of {} msg/s: the senders fell behind (raise --senders) or the server saturated",
            report.send_rate, args.rate
        ));
    }
    Ok(report)
}

/// The load generator's and the broker's processes, read at the start and the end of the window.
pub(crate) struct Watched {
    ticks: f64,
    loadgen: Option<ProcSample>,
    broker: Option<ProcSample>,
}

impl Watched {
    pub fn start(args: &LoadtestArgs, ticks: f64) -> Self {
        Watched {
            ticks,
            loadgen: ProcSample::read(std::process::id(), ticks),
            broker: args.broker_pid.and_then(|p| ProcSample::read(p, ticks)),
        }
    }

    pub fn finish(&self, report: &mut Report, window_secs: f64) {
        let end = |s: &Option<ProcSample>| {
            s.as_ref()
                .and_then(|b| ProcSample::read(b.pid, self.ticks).map(|e| b.until(&e, window_secs)))
        };
        report.loadgen = end(&self.loadgen);
        report.broker_process = end(&self.broker);
    }
}

fn broker_stats(
    before: &Option<serde_json::Value>,
    after: &Option<serde_json::Value>,
) -> Option<BrokerStats> {
    if before.is_none() && after.is_none() {
        return None;
    }
    let gets = |v: &Option<serde_json::Value>| {
        let g = overview_number(v, &["message_stats", "get"]);
        let n = overview_number(v, &["message_stats", "get_no_ack"]);
        match (g, n) {
            (None, None) => None,
            (g, n) => Some(g.unwrap_or(0) + n.unwrap_or(0)),
        }
    };
    Some(BrokerStats {
        // RabbitMQ omits a counter that never moved: absent means zero once the API answered.
        get_empty_before: before
            .as_ref()
            .map(|_| overview_number(before, &["message_stats", "get_empty"]).unwrap_or(0)),
        get_empty_after: after
            .as_ref()
            .map(|_| overview_number(after, &["message_stats", "get_empty"]).unwrap_or(0)),
        get_before: before.as_ref().map(|_| gets(before).unwrap_or(0)),
        get_after: after.as_ref().map(|_| gets(after).unwrap_or(0)),
        queues: overview_number(after, &["object_totals", "queues"]),
        consumers: overview_number(after, &["object_totals", "consumers"]),
        connections: overview_number(after, &["object_totals", "connections"]),
        channels: overview_number(after, &["object_totals", "channels"]),
    })
}

/// A report with the run's parameters and nothing measured yet.
pub(crate) fn empty_report(
    args: &LoadtestArgs,
    mode: Mode,
    started_at: String,
    message_size: usize,
) -> Report {
    Report {
        mode: mode.name().into(),
        available: true,
        notes: Vec::new(),
        started_at,
        params: args.params(message_size),
        machine: Machine::read(),
        setup_secs: 0.0,
        attach_secs: 0.0,
        first_poll_errors: 0,
        window_secs: 0.0,
        drain_secs: 0.0,
        attempted: 0,
        sent: 0,
        rate_limited: 0,
        send_errors: 0,
        delivered: 0,
        lost: 0,
        duplicated: 0,
        delivered_unconfirmed: 0,
        sender_echoes: 0,
        send_rate: 0.0,
        delivery_rate: 0.0,
        send_latency_ms: None,
        delivery_latency_ms: None,
        polls: 0,
        empty_polls: 0,
        poll_errors: 0,
        server: None,
        loadgen: None,
        broker_process: None,
        broker: None,
        broadcast: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_round_trips() {
        let t = message_text("ab12cd34", 42, 1_700_000_000_123_456_789, 64);
        assert_eq!(t.len(), 64);
        assert_eq!(
            parse_text("ab12cd34", &t),
            Some((42, 1_700_000_000_123_456_789))
        );
        assert_eq!(parse_text("other000", &t), None);
        assert_eq!(parse_text("ab12cd34", "hello"), None);
    }

    #[test]
    fn tracker_counts_loss_and_duplicates() {
        let t = Tracker::new("r".into(), 4);
        for seq in 0..3 {
            t.record_send(seq, Outcome::Accepted, Duration::from_millis(2));
        }
        t.record_send(3, Outcome::Failed, Duration::from_millis(2));
        t.record_delivery(0, 1_000_000, 3_000_000);
        t.record_delivery(0, 1_000_000, 4_000_000);
        t.record_delivery(1, 1_000_000, 2_000_000);
        t.record_delivery(3, 1_000_000, 2_000_000);
        assert_eq!(t.delivered.load(Ordering::Relaxed), 3);
        assert_eq!(t.duplicated.load(Ordering::Relaxed), 1);
        assert_eq!(t.losses(), (1, 1));
        assert_eq!(t.delivery_latency().unwrap().max, 2.0);
    }

    #[tokio::test]
    async fn drive_keeps_the_plan_and_the_bound() {
        let t = Arc::new(Tracker::new("r".into(), 1000));
        let start = tokio::time::Instant::now();
        drive(
            t.clone(),
            4,
            100.0,
            Duration::from_millis(500),
            start,
            |_| async { Outcome::Accepted },
        )
        .await;
        // 50 are planned; a slow machine may skip the last ones, never add any.
        let sent = t.accepted.load(Ordering::Relaxed);
        assert!((40..=50).contains(&sent), "{sent}");
        // With no rate, the capacity bounds the run.
        let t = Arc::new(Tracker::new("r".into(), 30));
        drive(
            t.clone(),
            4,
            0.0,
            Duration::from_secs(5),
            start,
            |_| async { Outcome::Accepted },
        )
        .await;
        assert_eq!(t.accepted.load(Ordering::Relaxed), 30);
    }

    #[test]
    fn management_target_follows_the_amqp_url() {
        use clap::Parser;
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            a: LoadtestArgs,
        }
        let mut a = W::parse_from(["x"]).a;
        a.amqp_url = "amqp://u:p@rabbit:5672/%2f".into();
        assert_eq!(
            management_target(&a),
            ("http://rabbit:15672".into(), "u".into(), "p".into())
        );
    }
}
