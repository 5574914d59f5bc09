//! Giving freed heap back to the operating system.
//!
//! glibc's allocator keeps what a burst freed (thousands of clients polling again at once after a
//! restart, a large history page) in its arenas for reuse, so the process stays resident at its peak
//! long after. Measured with 10 000 idle long polls (docs/BENCHMARKS.md, (c)): 520 MB resident, of
//! which one `malloc_trim` gave back 155 MB while every poll stayed held. [`run_trimmer`] asks for it
//! every interval, on a blocking thread: the trim locks each arena in turn while it walks the free
//! chunks, so it stays off the async workers. With another allocator or C library it does nothing.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Trims the heap every `every` (zero: never) until `shutdown`.
pub async fn run_trimmer(every: Duration, shutdown: CancellationToken) {
    if every.is_zero() || !SUPPORTED {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: nothing to give back yet
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let started = Instant::now();
        let before = resident_bytes();
        match tokio::task::spawn_blocking(trim).await {
            Ok(released) => tracing::debug!(
                released,
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                rss_before = before,
                rss_after = resident_bytes(),
                "heap trimmed"
            ),
            Err(e) => tracing::warn!(error = %e, "heap trim failed"),
        }
    }
}

/// Whether this build can trim (glibc on Linux).
const SUPPORTED: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Returns free heap pages to the kernel; whether anything was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "malloc_trim is a C function; the project's only unsafe code"
)]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and has no preconditions (glibc documents it MT-safe);
    // it only releases memory the allocator holds free, never a live allocation.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

/// This process's resident memory in bytes (Linux, counting 4 KiB pages), for the log line.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn a_trim_gives_freed_heap_back() {
        // 96 MB in 1 KB blocks, every 64th kept: what is freed lies between live blocks, where free()
        // alone never returns it.
        let mut blocks: Vec<Vec<u8>> = (0..96 * 1024).map(|i| vec![i as u8; 1024]).collect();
        let mut i = 0;
        blocks.retain(|_| {
            i += 1;
            i % 64 == 0
        });
        let before = resident_bytes().expect("RSS readable on Linux");
        assert!(trim(), "the trim released nothing");
        let after = resident_bytes().expect("RSS readable on Linux");
        assert!(
            before.saturating_sub(after) > 48 << 20,
            "RSS {before} -> {after}: less than 48 MB given back"
        );
        assert_eq!(blocks.len(), 96 * 1024 / 64);
    }
}
