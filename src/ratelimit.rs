//! Per-key rate limits (typing events per sender): a fixed one-second window, in memory, per instance.
//! An over-limit call is answered 429 with `Retry-After`.

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
}
