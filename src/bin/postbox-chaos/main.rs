//! postbox-chaos: proves "never lost without a word" against a real Postbox, a real RabbitMQ and a real
//! database, while it breaks them.
//!
//! It starts the `postbox` binary itself, creates users, and runs a mixed population: seed-style pollers
//! (the default postbox, no cursor), registered clients with cursors, SSE streams resuming with
//! `Last-Event-ID`, two tabs of one user; senders of chat messages, notifications and host publishes.
//! Meanwhile it SIGKILLs and restarts Postbox, stops and starts RabbitMQ (with `--broker-stop` and
//! `--broker-start`), cuts client connections in the middle of answers, leaves stale polls open, and
//! overflows postboxes. Every client does what docs/delivery.md asks of one: dedupe by id, fill a jump
//! in `seq` (or a `resync` range) from `GET poll/missed/`, and take a `resync` without a range as "reload".
//!
//! At the end a sentinel message to every user reveals losses at the tail, the clients drain, and the
//! checker proves from the database and from what each client saw: every acknowledged event (201/200)
//! reached every client of its user, or that client was told of a gap covering it; duplicates only with
//! the same id; no `message` or `notification` event for data that is not stored. It prints the counts
//! and exits 1 on any violation. `scripts/chaos.sh` runs it with a private RabbitMQ node.

mod check;
mod clients;
mod server;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::{
    clients::{Client, Mode},
    server::Server,
};

#[derive(Debug, Parser)]
#[command(
    name = "postbox-chaos",
    about = "A bounded chaos run against Postbox; exits 1 on any silent loss"
)]
struct Opts {
    /// The postbox binary to run.
    #[arg(long, default_value = "target/debug/postbox")]
    bin: String,
    /// RabbitMQ of the run (a private node: the run stops and starts it).
    #[arg(long, env = "CHAOS_AMQP_URL", hide_env_values = true)]
    amqp_url: String,
    /// The database; default a new SQLite file in a temporary folder.
    #[arg(long, env = "CHAOS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Seconds of load and faults (then a drain of `--drain` seconds).
    #[arg(long, env = "CHAOS_DURATION", default_value_t = 60)]
    duration: u64,
    #[arg(long, default_value_t = 15)]
    drain: u64,
    /// Faults to inject over the run (spread evenly), besides the clients' own cuts.
    #[arg(long, env = "CHAOS_FAULTS", default_value_t = 8)]
    faults: u32,
    /// Chat messages per second offered.
    #[arg(long, env = "CHAOS_RATE", default_value_t = 25.0)]
    rate: f64,
    /// Users (each has a seed poller, a cursor client and an SSE stream; the first has a second tab).
    #[arg(long, default_value_t = 6)]
    users: usize,
    /// Shell command that stops RabbitMQ, and one that starts it again.
    #[arg(long, env = "CHAOS_BROKER_STOP")]
    broker_stop: Option<String>,
    #[arg(long, env = "CHAOS_BROKER_START")]
    broker_start: Option<String>,
    #[arg(long, default_value_t = 18_431)]
    port: u16,
    #[arg(long, env = "CHAOS_SEED", default_value_t = 20_261_204)]
    seed: u64,
    /// Clients ignore gaps (no fill from `poll/missed/`, no reload on `resync`): shows that the checker
    /// finds what they then miss (the run is expected to fail).
    #[arg(long)]
    no_fill: bool,
    /// Only these faults (`kill`, `overflow`, `stale`, `broker`), in turn; default all of them.
    #[arg(long, env = "CHAOS_ONLY", value_delimiter = ',')]
    only: Vec<String>,
}

/// An event the server acknowledged: `m:<message id>`, `n:<notification id>`, `h:<uuid>` (host).
#[derive(Debug, Clone)]
pub struct Acked {
    pub key: String,
    pub user: i64,
    pub at: Instant,
}

/// What the run did, for the report.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub refused: AtomicU64,
    pub kills: AtomicU64,
    pub broker_restarts: AtomicU64,
    pub overflows: AtomicU64,
    pub stale_polls: AtomicU64,
    pub cuts: AtomicU64,
}

/// Shared by the tasks of the run.
pub struct Run {
    pub base: String,
    pub http: reqwest::Client,
    pub acked: Mutex<Vec<Acked>>,
    pub counters: Counters,
    /// The clients stop receiving (the end of the drain).
    pub stop: AtomicBool,
    /// The senders stop (the end of the load). Its own flag: the clients go on through the drain.
    pub load_stop: AtomicBool,
    /// Users whose clients pause (an overflow is being made).
    pub paused: Mutex<Vec<i64>>,
}

#[derive(Clone)]
pub struct User {
    pub id: i64,
    pub token: String,
}

#[tokio::main]
async fn main() {
    let opts = Opts::parse();
    match run(opts).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(opts: Opts) -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("postbox-chaos-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let result = chaos(opts, &dir).await;
    match result {
        // Kept for a look at what was lost (the database is in it).
        Ok(false) => println!("chaos: the run's files are kept in {}", dir.display()),
        _ => {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    result
}

async fn chaos(opts: Opts, dir: &std::path::Path) -> anyhow::Result<bool> {
    let database_url = opts
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", dir.join("chaos.db").display()));
    let mut server = Server::new(&opts.bin, opts.port, &database_url, &opts.amqp_url, dir);
    let admin = server.create_admin().await?;
    let service = server.create_service_token().await?;
    server.start().await?;
    let run = Arc::new(Run {
        base: format!("http://127.0.0.1:{}", opts.port),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()?,
        acked: Mutex::new(Vec::new()),
        counters: Counters::default(),
        stop: AtomicBool::new(false),
        load_stop: AtomicBool::new(false),
        paused: Mutex::new(Vec::new()),
    });
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut users = Vec::new();
    for i in 0..opts.users.max(2) {
        users.push(create_user(&run, &admin, &format!("chaos{tag}u{i}")).await?);
    }

    // Every client exists (its postbox declared) before the first send.
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let seed = opts.seed.wrapping_add(i as u64);
        clients.push(Client::new(user.clone(), Mode::Seed, seed));
        clients.push(Client::new(
            user.clone(),
            Mode::Cursor(format!("c{i}a")),
            seed + 100,
        ));
        clients.push(Client::new(
            user.clone(),
            Mode::Sse(format!("s{i}")),
            seed + 200,
        ));
        if i == 0 {
            clients.push(Client::new(
                user.clone(),
                Mode::Cursor(format!("c{i}b")),
                seed + 300,
            ));
        }
    }
    if opts.no_fill {
        for c in &mut clients {
            c.fill = false;
        }
    }
    for c in &clients {
        c.register(&run).await?;
    }
    let mut handles = Vec::new();
    for c in &clients {
        let (c, run) = (c.clone(), run.clone());
        handles.push(tokio::spawn(async move { c.run(run).await }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let load = {
        let (run, users, admin, service) =
            (run.clone(), users.clone(), admin.clone(), service.clone());
        let (rate, seed) = (opts.rate, opts.seed);
        tokio::spawn(async move { offer_load(run, users, admin, service, rate, seed).await })
    };
    // Faults fill the first 70 % of the run; the rest is load without faults, so what is checked is
    // that nothing is lost once the system had time to recover, not how fast it recovers.
    let every =
        Duration::from_secs_f64(0.7 * opts.duration as f64 / (opts.faults.max(1) + 1) as f64);
    let mut rng = StdRng::seed_from_u64(opts.seed ^ 0xfa17);
    println!(
        "chaos: {} users, {} clients, {} s, {} faults, {} msg/s offered",
        users.len(),
        clients.len(),
        opts.duration,
        opts.faults,
        opts.rate
    );
    let broker = opts.broker_stop.is_some() && opts.broker_start.is_some();
    for n in 0..opts.faults {
        // On a schedule: a fault that took long (a broker restart) shortens the wait for the next.
        tokio::time::sleep_until((started + every * (n + 1)).into()).await;
        // Every kind in turn (the broker's only when it can be restarted).
        let kinds: Vec<u32> = (0..if broker { 4 } else { 3 })
            .filter(|k| {
                opts.only.is_empty()
                    || opts
                        .only
                        .iter()
                        .any(|o| o == ["kill", "overflow", "stale", "broker"][*k as usize])
            })
            .collect();
        anyhow::ensure!(!kinds.is_empty(), "--only names no fault this run can make");
        let kind = kinds[n as usize % kinds.len()];
        match kind {
            0 => {
                println!("chaos: fault {n}: SIGKILL Postbox");
                server.kill().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
                server.start().await?;
                run.counters.kills.fetch_add(1, Ordering::Relaxed);
            }
            1 => {
                let victim = users[rng.random_range(0..users.len())].clone();
                let sender = users.iter().find(|u| u.id != victim.id).unwrap().clone();
                println!("chaos: fault {n}: overflow user {}'s postboxes", victim.id);
                overflow(&run, &sender, &victim).await;
                run.counters.overflows.fetch_add(1, Ordering::Relaxed);
            }
            2 => {
                let c = clients
                    .iter()
                    .filter(|c| matches!(c.mode, Mode::Cursor(_)))
                    .nth(rng.random_range(0..users.len()))
                    .unwrap()
                    .clone();
                println!("chaos: fault {n}: a stale poll left open for {}", c.name());
                c.leave_stale_poll(&run).await;
                run.counters.stale_polls.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                println!("chaos: fault {n}: stop and start RabbitMQ");
                sh(opts.broker_stop.as_deref().unwrap()).await?;
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
                sh(opts.broker_start.as_deref().unwrap()).await?;
                run.counters.broker_restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let rest = Duration::from_secs(opts.duration).saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    run.load_stop.store(true, Ordering::Relaxed);
    load.await??;

    // A sentinel to every user: any loss at the tail shows as a jump before it.
    server.ensure_up().await?;
    let sender = users[0].clone();
    for u in &users {
        let from = if u.id == sender.id {
            &users[1]
        } else {
            &sender
        };
        for attempt in 0..20 {
            if send_message(&run, from, u.id, "sentinel").await.is_some() {
                break;
            }
            if attempt == 19 {
                bail!("the sentinel to user {} was refused 20 times", u.id);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!("chaos: load done; draining for {} s", opts.drain);
    tokio::time::sleep(Duration::from_secs(opts.drain)).await;
    run.stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
    }
    let report = check::check(&run, &clients, &database_url).await?;
    server.kill().await;
    report.print(&run.counters);
    Ok(report.ok())
}

async fn sh(command: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .await?;
    if !status.success() {
        bail!("`{command}` failed: {status}");
    }
    Ok(())
}

async fn create_user(run: &Run, admin: &str, username: &str) -> anyhow::Result<User> {
    let resp = run
        .http
        .post(format!("{}/api/v1/admin/users/", run.base))
        .header("Authorization", format!("Token {admin}"))
        .json(&json!({"username": username}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await.context("the user answer")?;
    if !status.is_success() {
        bail!("creating {username}: {status} {body}");
    }
    Ok(User {
        id: body["id"].as_i64().context("user id")?,
        token: body["token"].as_str().context("user token")?.to_owned(),
    })
}

/// Sends a chat message; records and returns its id when the server answered 201.
pub async fn send_message(run: &Run, from: &User, to: i64, text: &str) -> Option<i64> {
    let resp = run
        .http
        .post(format!("{}/api/v1/communication/chats/", run.base))
        .header("Authorization", format!("Token {}", from.token))
        .json(&json!({"receiver": to, "message": text}))
        .send()
        .await
        .ok()?;
    if resp.status() != reqwest::StatusCode::CREATED {
        run.counters.refused.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let body: Value = resp.json().await.ok()?;
    let id = body["id"].as_i64()?;
    record(run, format!("m:{id}"), to);
    Some(id)
}

fn record(run: &Run, key: String, user: i64) {
    run.counters.sent.fetch_add(1, Ordering::Relaxed);
    run.acked.lock().unwrap().push(Acked {
        key,
        user,
        at: Instant::now(),
    });
}

/// Chat messages at `rate`, with a notification and a host publish now and then, until the run stops.
async fn offer_load(
    run: Arc<Run>,
    users: Vec<User>,
    admin: String,
    service: String,
    rate: f64,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let gap = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut n = 0u64;
    let mut inflight = tokio::task::JoinSet::new();
    while !run.load_stop.load(Ordering::Relaxed) {
        n += 1;
        let from = users[rng.random_range(0..users.len())].clone();
        let mut to = users[rng.random_range(0..users.len())].id;
        if to == from.id {
            to = users.iter().find(|u| u.id != from.id).unwrap().id;
        }
        let run2 = run.clone();
        match n % 10 {
            3 => {
                let admin = admin.clone();
                inflight.spawn(async move { notify(&run2, &admin, to).await });
            }
            7 => {
                let service = service.clone();
                inflight.spawn(async move { host_publish(&run2, &service, to).await });
            }
            _ => {
                inflight.spawn(async move {
                    send_message(&run2, &from, to, &format!("chaos {n}")).await;
                });
            }
        }
        while inflight.len() > 64 {
            inflight.join_next().await;
        }
        tokio::time::sleep(gap).await;
    }
    while inflight.join_next().await.is_some() {}
    Ok(())
}

async fn notify(run: &Run, admin: &str, to: i64) {
    let Ok(resp) = run
        .http
        .post(format!("{}/api/v1/communication/notifications/", run.base))
        .header("Authorization", format!("Token {admin}"))
        .json(&json!({"user_id": to, "title": "chaos", "message": "a notification"}))
        .send()
        .await
    else {
        return;
    };
    if resp.status() != reqwest::StatusCode::CREATED {
        run.counters.refused.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if let Ok(body) = resp.json::<Value>().await
        && let Some(id) = body["id"].as_i64()
    {
        record(run, format!("n:{id}"), to);
    }
}

async fn host_publish(run: &Run, service: &str, to: i64) {
    let key = uuid::Uuid::new_v4().to_string();
    let Ok(resp) = run
        .http
        .post(format!("{}/api/v1/publish/", run.base))
        .header("Authorization", format!("Bearer {service}"))
        .json(&json!({"event": "chaos_host", "data": {"key": key}, "users": [to]}))
        .send()
        .await
    else {
        return;
    };
    if resp.status() != reqwest::StatusCode::OK {
        run.counters.refused.fetch_add(1, Ordering::Relaxed);
        return;
    }
    record(run, format!("h:{key}"), to);
}

/// Pauses the victim's clients and sends more than a postbox holds (100 in the queue, and up to 100 more
/// that a lingering consumer took in), then lets them go on.
const OVERFLOW: u32 = 320;

async fn overflow(run: &Run, sender: &User, victim: &User) {
    run.paused.lock().unwrap().push(victim.id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Eight at a time: fast enough that the clients' pause stays short.
    futures_util::stream::iter(0..OVERFLOW)
        .for_each_concurrent(8, |i| async move {
            send_message(run, sender, victim.id, &format!("overflow {i}")).await;
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.paused.lock().unwrap().retain(|&u| u != victim.id);
}
