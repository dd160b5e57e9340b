//! Per-user and per-IP request rate limits (token buckets from `governor`),
//! answering 429 with `Retry-After`. Limits are per process; behind a load
//! balancer each node enforces its own share.

use std::{net::IpAddr, num::NonZeroU32};

use governor::{clock::Clock, clock::DefaultClock, DefaultKeyedRateLimiter, Quota};

use super::error::AppError;

pub struct RateLimits {
    users: DefaultKeyedRateLimiter<String>,
    ips: DefaultKeyedRateLimiter<IpAddr>,
}

fn quota(per_sec: u32) -> Quota {
    let rate = NonZeroU32::new(per_sec.max(1)).expect("non-zero");
    let burst = NonZeroU32::new(per_sec.max(1).saturating_mul(4)).expect("non-zero");
    Quota::per_second(rate).allow_burst(burst)
}

fn retry_after(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> AppError {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    AppError::RateLimited {
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
}

impl RateLimits {
    pub fn new(user_per_sec: u32, ip_per_sec: u32) -> RateLimits {
        RateLimits {
            users: DefaultKeyedRateLimiter::keyed(quota(user_per_sec)),
            ips: DefaultKeyedRateLimiter::keyed(quota(ip_per_sec)),
        }
    }

    pub fn check_user(&self, user: &str) -> Result<(), AppError> {
        self.users.check_key(&user.to_string()).map_err(retry_after)
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), AppError> {
        self.ips.check_key(&ip).map_err(retry_after)
    }

    /// Drops idle buckets so memory stays bounded under many clients.
    pub fn shrink(&self) {
        self.users.retain_recent();
        self.ips.retain_recent();
        self.users.shrink_to_fit();
        self.ips.shrink_to_fit();
    }
}
