//! The load test's result: one [`Report`] printed as a table and written as JSON, plus the readings it
//! is built from (latency histograms summarised as percentiles, process CPU and memory from `/proc`,
//! the machine). It does no network I/O.

use std::{fmt::Write as _, path::Path};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Everything one run measured. Absent sections (`None`) did not apply to the mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `send`, `idle`, `broadcast` or `raw`.
    pub mode: String,
    /// False when the mode could not run against this server (for example no broadcast endpoint).
    pub available: bool,
    /// Why the mode was unavailable, or remarks worth reading next to the numbers.
    pub notes: Vec<String>,
    /// RFC 3339 time the run started.
    pub started_at: String,
    pub params: Params,
    pub machine: Machine,
    /// Seconds spent creating users and attaching every poller before the measured window.
    pub setup_secs: f64,
    /// The part of the setup from starting the pollers until each one had a first answer (its
    /// postbox's consumer attached).
    #[serde(default)]
    pub attach_secs: f64,
    /// Polls that failed before every poller had its first answer (a 503 while thousands of first
    /// polls attach at once, for example); not counted in `poll_errors`.
    #[serde(default)]
    pub first_poll_errors: u64,
    /// Length of the measured window (sending, or idling), in seconds.
    pub window_secs: f64,
    /// Seconds waited after the window for the last deliveries.
    pub drain_secs: f64,
    /// Sends attempted in the window.
    pub attempted: u64,
    /// Sends the server accepted (201; for `raw`, publishes the broker confirmed).
    pub sent: u64,
    /// Sends refused with 429.
    pub rate_limited: u64,
    /// Other failed sends (transport errors, timeouts, other statuses).
    pub send_errors: u64,
    /// Distinct accepted messages that reached their receiver's poll.
    pub delivered: u64,
    /// Accepted messages never delivered before the drain ended.
    pub lost: u64,
    /// Deliveries beyond the first of a message.
    pub duplicated: u64,
    /// Messages delivered whose send did not get a 201 (the client gave up, the server stored it anyway).
    pub delivered_unconfirmed: u64,
    /// Copies of a sent message that reached the sender's own postbox (Postbox tells the sender's other
    /// devices); counted apart, not as deliveries.
    pub sender_echoes: u64,
    /// Accepted sends per second over the window.
    pub send_rate: f64,
    /// Distinct deliveries per second over the window and the drain.
    pub delivery_rate: f64,
    /// Request to 201 (for `raw`: publish to confirm), milliseconds.
    pub send_latency_ms: Option<Latency>,
    /// Send time (embedded in the message) to the moment the receiver's poll parsed it, milliseconds.
    pub delivery_latency_ms: Option<Latency>,
    /// Polls answered in the window and drain (warm-up polls excluded).
    pub polls: u64,
    /// Polls answered with no event.
    pub empty_polls: u64,
    /// Polls that failed (transport error or a status other than 200).
    pub poll_errors: u64,
    /// The Postbox process, when its pid is known (`--server-pid`).
    pub server: Option<ProcessStats>,
    /// The load generator itself (it shares the machine with the server).
    pub loadgen: Option<ProcessStats>,
    /// The RabbitMQ node, when its pid is known (`--broker-pid`).
    pub broker_process: Option<ProcessStats>,
    /// RabbitMQ counters from the management API, when it answered.
    pub broker: Option<BrokerStats>,
    /// The broadcast mode's result.
    pub broadcast: Option<Broadcast>,
}

/// The parameters of the run, as given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    pub url: String,
    pub users: u32,
    pub senders: u32,
    /// Aggregate target send rate (messages per second); 0 means as fast as the senders go.
    pub rate: f64,
    pub duration_secs: f64,
    pub drain_secs: f64,
    /// Characters of each chat message (for `raw`: bytes of each AMQP body, the size of the event
    /// Postbox would publish for such a message).
    pub message_size: usize,
}

/// Where the numbers were taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_mb: u64,
}

impl Machine {
    pub fn read() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let mem_total_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| status_kb(&s, "MemTotal:"))
            .map_or(0, |kb| kb / 1024);
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            mem_total_mb,
        }
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds; `None` when it is empty.
    pub fn from_micros(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        })
    }
}

/// A histogram of microseconds from 1 µs to one hour, three significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// CPU and memory of a process over the measured window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessStats {
    pub pid: u32,
    /// User + system CPU seconds spent during the window.
    pub cpu_secs: f64,
    /// `cpu_secs` divided by the window: the average number of cores kept busy.
    pub cpu_cores: f64,
    /// Peak resident set size of the process's whole life so far (`VmHWM`), MB.
    pub peak_rss_mb: f64,
    /// Resident set size at the end (`VmRSS`), MB.
    pub rss_mb: f64,
}

/// A reading of `/proc/<pid>`: CPU seconds so far and memory.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub pid: u32,
    pub cpu_secs: f64,
    pub hwm_kb: u64,
    pub rss_kb: u64,
}

impl ProcSample {
    /// Reads `/proc/<pid>/stat` (utime + stime) and `/proc/<pid>/status` (`VmHWM`, `VmRSS`).
    pub fn read(pid: u32, clock_ticks: f64) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields are counted after the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state is field 3 of proc(5), so utime (14) and stime (15) are at 11 and 12.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Some(ProcSample {
            pid,
            cpu_secs: (utime + stime) / clock_ticks,
            hwm_kb: status_kb(&status, "VmHWM:").unwrap_or(0),
            rss_kb: status_kb(&status, "VmRSS:").unwrap_or(0),
        })
    }

    /// The stats between `self` (start of the window) and `end`, over `window_secs`.
    pub fn until(&self, end: &ProcSample, window_secs: f64) -> ProcessStats {
        let cpu_secs = (end.cpu_secs - self.cpu_secs).max(0.0);
        ProcessStats {
            pid: self.pid,
            cpu_secs,
            cpu_cores: if window_secs > 0.0 {
                cpu_secs / window_secs
            } else {
                0.0
            },
            peak_rss_mb: end.hwm_kb as f64 / 1024.0,
            rss_mb: end.rss_kb as f64 / 1024.0,
        }
    }
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux in practice).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

fn status_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// RabbitMQ's own counters (management API `/api/overview`), before and after the window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerStats {
    /// `message_stats.get_empty`: `basic.get` calls that found nothing. Push consumers leave it flat.
    pub get_empty_before: Option<u64>,
    pub get_empty_after: Option<u64>,
    /// `message_stats.get` + `get_no_ack` before and after (polling with basic.get would raise them).
    pub get_before: Option<u64>,
    pub get_after: Option<u64>,
    pub queues: Option<u64>,
    pub consumers: Option<u64>,
    pub connections: Option<u64>,
    pub channels: Option<u64>,
}

/// One notification to a whole college: how long until each member's poll had it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Broadcast {
    pub college_id: i64,
    pub members: u64,
    pub received: u64,
    /// HTTP status of the notification request.
    pub status: u16,
    /// Request to response, milliseconds.
    pub request_ms: f64,
    /// From the request to each member's receipt.
    pub latency_ms: Option<Latency>,
    /// From the request until the last member had it (`None` when some never did).
    pub all_received_ms: Option<f64>,
}

impl Report {
    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let p = &self.params;
        let line = |out: &mut String, k: &str, v: String| {
            let _ = writeln!(out, "{k:<22} {v}");
        };
        line(
            &mut out,
            "mode",
            format!(
                "{}{}",
                self.mode,
                if self.available { "" } else { " (UNAVAILABLE)" }
            ),
        );
        line(
            &mut out,
            "machine",
            format!(
                "{} cores, {}, {} MB",
                self.machine.nproc, self.machine.cpu_model, self.machine.mem_total_mb
            ),
        );
        let sends = self.mode == "send" || self.mode == "raw";
        line(
            &mut out,
            "parameters",
            if !sends {
                format!("users {}, duration {} s", p.users, p.duration_secs)
            } else {
                format!(
                    "users {}, senders {}, rate {}, duration {} s, drain {} s, message size {}",
                    p.users,
                    p.senders,
                    if p.rate > 0.0 {
                        format!("{} msg/s", p.rate)
                    } else {
                        "max".into()
                    },
                    p.duration_secs,
                    p.drain_secs,
                    p.message_size
                )
            },
        );
        let attach = if self.mode == "raw" {
            String::new()
        } else {
            format!(
                " (attaching the pollers {:.1} s, {} failed polls meanwhile)",
                self.attach_secs, self.first_poll_errors
            )
        };
        line(
            &mut out,
            "setup",
            format!("{:.1} s{attach}", self.setup_secs),
        );
        line(
            &mut out,
            "window",
            format!(
                "{:.2} s (+ {:.2} s drain)",
                self.window_secs, self.drain_secs
            ),
        );
        if sends {
            line(
                &mut out,
                "sent",
                format!(
                    "{} of {} attempted ({} rate-limited, {} errors)",
                    self.sent, self.attempted, self.rate_limited, self.send_errors
                ),
            );
            line(
                &mut out,
                "delivered",
                format!(
                    "{} (lost {}, duplicated {}, delivered without 201: {}, sender echoes {})",
                    self.delivered,
                    self.lost,
                    self.duplicated,
                    self.delivered_unconfirmed,
                    self.sender_echoes
                ),
            );
            line(
                &mut out,
                "rates",
                format!(
                    "send {:.0} msg/s, delivery {:.0} msg/s",
                    self.send_rate, self.delivery_rate
                ),
            );
            line(
                &mut out,
                "send latency",
                latency_text(self.send_latency_ms.as_ref()),
            );
            line(
                &mut out,
                "delivery latency",
                latency_text(self.delivery_latency_ms.as_ref()),
            );
        }
        if self.mode != "raw" {
            line(
                &mut out,
                "polls",
                format!(
                    "{} ({} empty, {} errors)",
                    self.polls, self.empty_polls, self.poll_errors
                ),
            );
        }
        if let Some(b) = &self.broadcast {
            line(
                &mut out,
                "broadcast",
                format!(
                    "college {}: {} of {} members received (HTTP {}, request {:.1} ms)",
                    b.college_id, b.received, b.members, b.status, b.request_ms
                ),
            );
            line(
                &mut out,
                "broadcast latency",
                latency_text(b.latency_ms.as_ref()),
            );
            line(
                &mut out,
                "all members had it",
                b.all_received_ms
                    .map_or_else(|| "never".into(), |ms| format!("after {ms:.1} ms")),
            );
        }
        for (name, s) in [
            ("server", &self.server),
            ("broker", &self.broker_process),
            ("load generator", &self.loadgen),
        ] {
            match s {
                Some(s) => line(
                    &mut out,
                    name,
                    format!(
                        "pid {}: {:.2} CPU s = {:.2} cores, peak RSS {:.1} MB, RSS {:.1} MB",
                        s.pid, s.cpu_secs, s.cpu_cores, s.peak_rss_mb, s.rss_mb
                    ),
                ),
                None if name == "server" && self.mode != "raw" => {
                    line(&mut out, name, "not measured (pass --server-pid)".into())
                }
                None => {}
            }
        }
        if let Some(b) = &self.broker {
            let n = |v: Option<u64>| v.map_or_else(|| "?".into(), |v| v.to_string());
            line(
                &mut out,
                "broker get_empty",
                format!(
                    "{} -> {} (basic.get {} -> {}); {} queues, {} consumers, {} connections, {} channels",
                    n(b.get_empty_before),
                    n(b.get_empty_after),
                    n(b.get_before),
                    n(b.get_after),
                    n(b.queues),
                    n(b.consumers),
                    n(b.connections),
                    n(b.channels)
                ),
            );
        }
        for note in &self.notes {
            line(&mut out, "note", note.clone());
        }
        out
    }
}

fn latency_text(l: Option<&Latency>) -> String {
    match l {
        Some(l) => format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
            l.p50, l.p90, l.p99, l.max, l.count
        ),
        None => "no samples".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut h = micros_histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let l = Latency::from_micros(&h).unwrap();
        assert_eq!(l.count, 1000);
        assert!((l.p50 - 5.0).abs() < 0.01, "{l:?}");
        assert!((l.p99 - 9.9).abs() < 0.01, "{l:?}");
        assert!((l.max - 10.0).abs() < 0.01, "{l:?}");
        assert!(Latency::from_micros(&micros_histogram()).is_none());
    }

    #[test]
    fn reads_this_process() {
        let s = ProcSample::read(std::process::id(), clock_ticks()).unwrap();
        assert!(s.hwm_kb > 0 && s.rss_kb > 0);
        assert!(s.cpu_secs >= 0.0);
    }
}
