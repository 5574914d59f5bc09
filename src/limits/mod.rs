//! Per-key limits, in memory, per instance; an over-limit call is answered 429 with `Retry-After`:
//! rates (typing events and messages per sender, a fixed one-second window) and concurrency (long polls
//! and event streams held at once per user, [`PollSlots`]).

pub mod throttle;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::error::AppError;

#[derive(Clone)]
pub struct RateLimiter {
    per_second: u32,
    windows: Arc<Mutex<HashMap<i64, (Instant, u32)>>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        RateLimiter {
            per_second,
            windows: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts one call for `key`; refuses it when the key already made `per_second` calls this second.
    pub fn check(&self, key: i64, what: &str) -> Result<(), AppError> {
        let now = Instant::now();
        let mut windows = self.windows.lock().expect("rate limiter lock");
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(1));
        }
        let (start, count) = windows.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        if *count >= self.per_second {
            return Err(AppError::RateLimited {
                detail: format!("too many {what}: at most {} per second", self.per_second),
                retry_after_secs: 1,
            });
        }
        *count += 1;
        Ok(())
    }
}

/// Long polls and event streams each user holds now; refuses one beyond `max`. Each holds a
/// [`PollSlot`] from the moment it is admitted until its response ended or was dropped (the client went
/// away), so a poll that ends in any way gives its slot back.
#[derive(Clone)]
pub struct PollSlots {
    max: usize,
    retry_after_secs: u64,
    held: Arc<Mutex<HashMap<i64, usize>>>,
}

/// One admitted poll or stream of a user; dropping it frees the slot.
pub struct PollSlot {
    slots: PollSlots,
    user_id: i64,
}

impl PollSlots {
    /// At most `max` at once per user; a refused call is told to retry after `retry_after_secs` (by
    /// then an ordinary poll of that user has ended).
    pub fn new(max: usize, retry_after_secs: u64) -> Self {
        PollSlots {
            max,
            retry_after_secs,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Admits one more poll or stream of `user_id`, or refuses it when the user already holds `max`.
    pub fn acquire(&self, user_id: i64) -> Result<PollSlot, AppError> {
        let mut held = self.held.lock().expect("poll slots lock");
        let count = held.entry(user_id).or_insert(0);
        if *count >= self.max {
            return Err(AppError::RateLimited {
                detail: format!(
                    "too many long polls and event streams open for this user: at most {} at once; \
                     close one (one poll per client is enough) or retry later",
                    self.max
                ),
                retry_after_secs: self.retry_after_secs,
            });
        }
        *count += 1;
        Ok(PollSlot {
            slots: self.clone(),
            user_id,
        })
    }
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("poll slots lock");
        if let Some(count) = held.get_mut(&self.user_id) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_the_limit_per_key() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            limiter.check(1, "events").unwrap();
        }
        let err = limiter.check(1, "events").unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        limiter
            .check(2, "events")
            .expect("other keys are independent");
    }

    #[test]
    fn poll_slots_refuse_beyond_the_cap_per_user_and_come_back_when_dropped() {
        let slots = PollSlots::new(2, 6);
        let a = slots.acquire(1).unwrap();
        let b = slots.acquire(1).unwrap();
        let err = slots.acquire(1).err().expect("a third is refused");
        assert_eq!(err.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(matches!(
            err,
            AppError::RateLimited {
                retry_after_secs: 6,
                ..
            }
        ));
        let other = slots.acquire(2).expect("other users are independent");
        drop(a);
        let c = slots.acquire(1).expect("a freed slot is reused");
        drop((b, c, other));
        assert!(
            slots.held.lock().unwrap().is_empty(),
            "no entry left behind"
        );
    }
}
