//! Token-bucket rate limits per action and per user or client address.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use crate::{
    config::{Limit, RateLimits},
    error::{Error, Result},
};

/// The actions that are rate limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Message,
    Login,
    Registration,
    RoomJoin,
    Invite,
}

/// Rate limiter state.
pub struct RateLimiter {
    config: RateLimits,
    buckets: Mutex<HashMap<(Action, String), (f64, Instant)>>,
}

impl RateLimiter {
    /// Creates the limiter.
    pub fn new(config: RateLimits) -> Self {
        Self { config, buckets: Mutex::new(HashMap::new()) }
    }

    fn limit(&self, action: Action) -> Limit {
        match action {
            Action::Message => self.config.message,
            Action::Login => self.config.login,
            Action::Registration => self.config.registration,
            Action::RoomJoin => self.config.room_join,
            Action::Invite => self.config.invite,
        }
    }

    /// Takes one token for `key` doing `action`, or fails with `M_LIMIT_EXCEEDED`.
    pub fn check(&self, action: Action, key: &str) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let limit = self.limit(action);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock poisoned");
        if buckets.len() > 100_000 {
            buckets.retain(|_, (_, last)| now.duration_since(*last).as_secs() < 3600);
        }
        let (tokens, last) = buckets.entry((action, key.to_owned())).or_insert((f64::from(limit.burst), now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * limit.per_second).min(f64::from(limit.burst));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - *tokens) / limit.per_second.max(f64::MIN_POSITIVE);
            Err(Error::LimitExceeded { retry_after_ms: (wait * 1000.0).ceil() as u64 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited() {
        let config = RateLimits { login: Limit { per_second: 0.001, burst: 2 }, ..RateLimits::default() };
        let limiter = RateLimiter::new(config);
        assert!(limiter.check(Action::Login, "a").is_ok());
        assert!(limiter.check(Action::Login, "a").is_ok());
        assert!(matches!(limiter.check(Action::Login, "a"), Err(Error::LimitExceeded { .. })));
        assert!(limiter.check(Action::Login, "b").is_ok(), "buckets are per key");
    }

    #[test]
    fn disabled_never_limits() {
        let limiter = RateLimiter::new(RateLimits { enabled: false, ..RateLimits::default() });
        for _ in 0..1000 {
            assert!(limiter.check(Action::Message, "a").is_ok());
        }
    }
}
