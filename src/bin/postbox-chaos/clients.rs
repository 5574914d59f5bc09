//! The clients of the run, each doing what docs/delivery.md asks of a client, and remembering what it saw.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;

use crate::{Run, User};

const API: &str = "/api/v1/communication";

#[derive(Debug, Clone)]
pub enum Mode {
    /// The seeds' way: the user's default postbox, acknowledged when an answer is handed over.
    Seed,
    /// A registered client polling with `client_id` and `last_event_id`.
    Cursor(String),
    /// An SSE stream of a registered client, resuming with `Last-Event-ID`.
    Sse(String),
}

/// What one client saw.
#[derive(Default)]
pub struct Seen {
    /// Event id → times handed to this client.
    pub ids: HashMap<String, u32>,
    /// The acknowledged key an event carried (`m:`, `n:`, `h:`) → the event ids it came under.
    pub keys: HashMap<String, BTreeSet<String>>,
    /// When a `resync` that could not be filled reached the client.
    pub reloads: Vec<Instant>,
    /// Events that came from `poll/missed/`.
    pub filled: u64,
    /// Highest number up to which every one was seen, and those seen beyond it.
    pub last_seq: Option<i64>,
    pub ahead: BTreeSet<i64>,
    /// Every number seen (for the checker's explanations).
    pub seqs: std::collections::HashSet<i64>,
}

#[derive(Clone)]
pub struct Client {
    pub user: User,
    pub mode: Mode,
    pub seen: Arc<Mutex<Seen>>,
    cursor: Arc<Mutex<Option<String>>>,
    seed: u64,
    /// Whether the client acts on gaps: fills them from `poll/missed/`, reloads on a `resync` (off only
    /// to show that the checker finds what such a client misses).
    pub fill: bool,
}

/// The key an event carries, if it is one the run acknowledged.
fn key_of(event: &Value) -> Option<String> {
    let data = &event["data"];
    match event["event"].as_str()? {
        "message" => Some(format!("m:{}", data["id"].as_i64()?)),
        "notification" => Some(format!("n:{}", data["id"].as_i64()?)),
        "chaos_host" => Some(format!("h:{}", data["key"].as_str()?)),
        _ => None,
    }
}

impl Client {
    pub fn new(user: User, mode: Mode, seed: u64) -> Self {
        Client {
            user,
            mode,
            seen: Arc::default(),
            cursor: Arc::default(),
            seed,
            fill: true,
        }
    }

    pub fn name(&self) -> String {
        match &self.mode {
            Mode::Seed => format!("user {} seed poller", self.user.id),
            Mode::Cursor(c) => format!("user {} client {c}", self.user.id),
            Mode::Sse(c) => format!("user {} stream {c}", self.user.id),
        }
    }

    fn auth(&self) -> String {
        format!("Token {}", self.user.token)
    }

    /// Creates the client's postbox now, so every later event is kept for it.
    pub async fn register(&self, run: &Run) -> anyhow::Result<()> {
        let client_id = match &self.mode {
            Mode::Seed => {
                // The default postbox exists from the user's creation; one poll to be sure.
                let _ = run
                    .http
                    .get(format!("{}{API}/poll/events/?timeout=0", run.base))
                    .header("Authorization", self.auth())
                    .send()
                    .await?;
                return Ok(());
            }
            Mode::Cursor(c) | Mode::Sse(c) => c,
        };
        let resp = run
            .http
            .post(format!("{}{API}/poll/register/", run.base))
            .header("Authorization", self.auth())
            .json(&serde_json::json!({ "client_id": client_id }))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "register {}: {}",
            self.name(),
            resp.status()
        );
        Ok(())
    }

    /// Receives until the run stops.
    pub async fn run(self, run: Arc<Run>) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut backoff = 100u64;
        while !run.stop.load(Ordering::Relaxed) {
            if run.paused.lock().unwrap().contains(&self.user.id) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let result = match &self.mode {
                Mode::Sse(c) => self.stream(&run, c, &mut rng).await,
                _ => self.poll(&run, &mut rng).await,
            };
            match result {
                Ok(()) => backoff = 100,
                Err(()) => {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..backoff))).await;
                    backoff = (backoff * 2).min(2000);
                }
            }
        }
    }

    async fn poll(&self, run: &Run, rng: &mut StdRng) -> Result<(), ()> {
        let mut url = format!("{}{API}/poll/events/?timeout=2", run.base);
        if let Mode::Cursor(c) = &self.mode {
            url.push_str(&format!("&client_id={c}&last_event_id="));
            if let Some(last) = self.cursor.lock().unwrap().as_deref() {
                url.push_str(last);
            }
        }
        let request = run
            .http
            .get(&url)
            .header("Authorization", self.auth())
            .send();
        // A cut in the middle of an answer: the client goes away before it read the body. Only where
        // the contract makes that safe (a cursor confirms what the client has; the seeds' hand-over
        // cannot know what the client read).
        let cut = matches!(self.mode, Mode::Cursor(_)) && rng.random_bool(0.1);
        let resp = request.await.map_err(|_| ())?;
        if cut {
            run.counters.cuts.fetch_add(1, Ordering::Relaxed);
            drop(resp);
            return Ok(());
        }
        if !resp.status().is_success() {
            return Err(());
        }
        let body: Value = resp.json().await.map_err(|_| ())?;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            self.take(run, e, true).await;
        }
        Ok(())
    }

    async fn stream(&self, run: &Run, client_id: &str, rng: &mut StdRng) -> Result<(), ()> {
        let mut req = run
            .http
            .get(format!(
                "{}{API}/sse/events/?client_id={client_id}",
                run.base
            ))
            .header("Authorization", self.auth())
            .header("Accept", "text/event-stream")
            .timeout(Duration::from_secs(3600));
        if let Some(last) = self.cursor.lock().unwrap().clone() {
            req = req.header("Last-Event-ID", last);
        }
        let mut resp = req.send().await.map_err(|_| ())?;
        if !resp.status().is_success() {
            return Err(());
        }
        // Cut after a random number of records (the connection breaks mid-stream).
        let cut_after: u32 = rng.random_range(1..60);
        let (mut buf, mut records) = (String::new(), 0u32);
        let (mut id, mut kind, mut data) = (None::<String>, String::new(), String::new());
        loop {
            if run.stop.load(Ordering::Relaxed)
                || run.paused.lock().unwrap().contains(&self.user.id)
            {
                return Ok(());
            }
            let chunk = match tokio::time::timeout(Duration::from_millis(500), resp.chunk()).await {
                Err(_) => continue,
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(_)) => return Err(()),
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find('\n') {
                let line: String = buf.drain(..=end).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if !kind.is_empty()
                        && !matches!(
                            kind.as_str(),
                            "connected" | "heartbeat" | "reconnect" | "goodbye"
                        )
                    {
                        let parsed: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                        let event =
                            serde_json::json!({"id": id.clone(), "event": kind, "data": parsed});
                        self.take(run, &event, true).await;
                        records += 1;
                        if records >= cut_after {
                            run.counters.cuts.fetch_add(1, Ordering::Relaxed);
                            return Ok(());
                        }
                    }
                    if kind == "reconnect" {
                        return Ok(());
                    }
                    (id, kind, data) = (None, String::new(), String::new());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
        }
    }

    /// One event handed to this client: remembered, its number checked, a gap filled.
    async fn take(&self, run: &Run, event: &Value, from_postbox: bool) {
        let id = event["id"].as_str().map(str::to_owned);
        let mut fill_after = None;
        {
            let mut seen = self.seen.lock().unwrap();
            if let Some(id) = &id {
                *seen.ids.entry(id.clone()).or_default() += 1;
                if let Some(key) = key_of(event) {
                    seen.keys.entry(key).or_default().insert(id.clone());
                }
            }
            if !from_postbox {
                seen.filled += 1;
            }
            if let Some(seq) = event["seq"].as_i64() {
                seen.seqs.insert(seq);
                match seen.last_seq {
                    None => seen.last_seq = Some(seq),
                    Some(last) if seq > last => {
                        seen.ahead.insert(seq);
                        while let Some(next) = seen.last_seq.map(|l| l + 1)
                            && seen.ahead.remove(&next)
                        {
                            seen.last_seq = Some(next);
                        }
                    }
                    _ => {}
                }
                if from_postbox && !seen.ahead.is_empty() {
                    fill_after = seen.last_seq;
                }
            }
            // A client that ignores gaps (`--no-fill`) neither fills nor reloads.
            if event["event"] == "resync" && self.fill {
                let data = &event["data"];
                match data["seq_from"].as_i64() {
                    Some(from) if data["lost_unknown"] != true => fill_after = Some(from - 1),
                    _ => seen.reloads.push(Instant::now()),
                }
                // Lost events without a number cannot be fetched: a reload for those.
                if data["lost_unnumbered"].as_i64().unwrap_or(0) > 0 {
                    seen.reloads.push(Instant::now());
                }
            }
        }
        if from_postbox && let Some(id) = &id {
            *self.cursor.lock().unwrap() = Some(id.clone());
        }
        if let Some(after) = fill_after.filter(|_| self.fill) {
            self.fill(run, after).await;
        }
    }

    /// `GET poll/missed/?after=`: what the client lacks, or (not kept) a reload.
    async fn fill(&self, run: &Run, after: i64) {
        // Events of concurrent senders may arrive swapped: a moment's grace first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut after = after;
        for _ in 0..20 {
            let resp = run
                .http
                .get(format!("{}{API}/poll/missed/?after={after}", run.base))
                .header("Authorization", self.auth())
                .send()
                .await;
            let body: Value = match resp {
                Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
                _ => {
                    // Not reachable now: a reload, as the JS client does.
                    self.seen.lock().unwrap().reloads.push(Instant::now());
                    return;
                }
            };
            if body["kept"] == false {
                self.seen.lock().unwrap().reloads.push(Instant::now());
                return;
            }
            for e in body["events"].as_array().cloned().unwrap_or_default() {
                after = after.max(e["seq"].as_i64().unwrap_or(after));
                Box::pin(self.take(run, &e, false)).await;
            }
            if body["more"] != true {
                return;
            }
        }
    }

    /// A poll of this client's postbox opened and left hanging (a dead connection's poll), while the
    /// client goes on polling.
    pub async fn leave_stale_poll(&self, run: &Arc<Run>) {
        let Mode::Cursor(c) = &self.mode else { return };
        let mut url = format!(
            "{}{API}/poll/events/?timeout=30&client_id={c}&last_event_id=",
            run.base
        );
        if let Some(last) = self.cursor.lock().unwrap().as_deref() {
            url.push_str(last);
        }
        let request = run
            .http
            .get(url)
            .header("Authorization", self.auth())
            .send();
        tokio::spawn(async move {
            // Whatever it answers is never read.
            let _ = tokio::time::timeout(Duration::from_secs(10), request).await;
        });
    }
}
