//! Per-key limits, in memory, per instance: rates (typing events and messages per sender: governor's
//! GCRA, a burst of the per-second rate refilled evenly), concurrency (long polls and event streams held
//! at once per user, [`PollSlots`]) and throttles of signals ([`throttle`]). A refusal is a
//! [`RateLimited`], answered 429 with `Retry-After`.

pub mod throttle;

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
};

use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock};

/// A call refused by a limit: what to tell the caller, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct RateLimited {
    pub detail: String,
    pub retry_after_secs: u64,
}

/// Calls per second per key (a user id). Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    per_second: u32,
    limiter: Arc<DefaultKeyedRateLimiter<i64>>,
}

/// Keys remembered before idle ones are forgotten (a key whose bucket is full again holds no state
/// worth keeping).
const MAX_KEYS: usize = 100_000;

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        RateLimiter {
            per_second,
            limiter: Arc::new(governor::RateLimiter::keyed(Quota::per_second(rate))),
        }
    }

    /// Counts one call for `key`; refuses it when the key is beyond its rate. `what` names the calls
    /// for the message ("messages", "typing events").
    pub fn check(&self, key: i64, what: &str) -> Result<(), RateLimited> {
        if self.limiter.len() > MAX_KEYS {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            RateLimited {
                detail: format!("too many {what}: at most {} per second", self.per_second),
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
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
    pub fn acquire(&self, user_id: i64) -> Result<PollSlot, RateLimited> {
        let mut held = self.held.lock().expect("poll slots lock");
        let count = held.entry(user_id).or_insert(0);
        if *count >= self.max {
            return Err(RateLimited {
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
        assert!(err.detail.contains("at most 3 per second"), "{err}");
        assert!(err.retry_after_secs >= 1);
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
        assert_eq!(err.retry_after_secs, 6);
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
