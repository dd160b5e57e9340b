//! Per-user and per-IP request rate limits (token buckets from `governor`),
//! answering 429 with `Retry-After`. Limits are per process; behind a load
//! balancer each node enforces its own share.
//!
//! IPv6 clients are counted per /64 ([`client_ip::limit_key`]), so rotating
//! addresses inside one allocation share one bucket. The bucket maps are
//! bounded by construction: [`RateLimits::spawn_sweeper`] drops every
//! bucket that is full again (indistinguishable from a new one) every few
//! seconds, so they only hold the clients seen in the last few seconds.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::DefaultKeyedStateStore,
    RateLimiter,
};

use super::{client_ip, error::AppError};

/// How often idle buckets are dropped. A bucket refills within
/// [`BURST_SECS`], so the maps hold at most the keys of the last
/// `BURST_SECS + SWEEP_EVERY` seconds.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// A client may burst this many seconds' worth of requests.
const BURST_SECS: u32 = 4;

type Keyed<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct RateLimits<C: Clock = DefaultClock> {
    users: Keyed<String, C>,
    ips: Keyed<IpAddr, C>,
    clock: C,
}

fn quota(per_sec: u32) -> governor::Quota {
    let rate = NonZeroU32::new(per_sec.max(1)).expect("non-zero");
    let burst = NonZeroU32::new(per_sec.max(1).saturating_mul(BURST_SECS)).expect("non-zero");
    governor::Quota::per_second(rate).allow_burst(burst)
}

impl RateLimits {
    pub fn new(user_per_sec: u32, ip_per_sec: u32) -> RateLimits {
        RateLimits::with_clock(user_per_sec, ip_per_sec, DefaultClock::default())
    }
}

impl<C> RateLimits<C>
where
    C: Clock + Clone,
{
    pub fn with_clock(user_per_sec: u32, ip_per_sec: u32, clock: C) -> RateLimits<C> {
        RateLimits {
            users: RateLimiter::dashmap_with_clock(quota(user_per_sec), clock.clone()),
            ips: RateLimiter::dashmap_with_clock(quota(ip_per_sec), clock.clone()),
            clock,
        }
    }

    fn retry_after(&self, not_until: governor::NotUntil<C::Instant>) -> AppError {
        let wait = not_until.wait_time_from(self.clock.now());
        AppError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    pub fn check_user(&self, user: &str) -> Result<(), AppError> {
        self.users
            .check_key(&user.to_string())
            .map_err(|n| self.retry_after(n))
    }

    /// Counts a request of the client at `ip` (its /64 for IPv6).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), AppError> {
        self.ips
            .check_key(&client_ip::limit_key(ip))
            .map_err(|n| self.retry_after(n))
    }

    /// Drops idle buckets so memory stays bounded under many clients.
    pub fn shrink(&self) {
        self.users.retain_recent();
        self.ips.retain_recent();
        self.users.shrink_to_fit();
        self.ips.shrink_to_fit();
    }

    /// Buckets held: (users, IP keys).
    pub fn len(&self) -> (usize, usize) {
        (self.users.len(), self.ips.len())
    }

    /// No bucket is held.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.ips.is_empty()
    }
}

impl<C> RateLimits<C>
where
    C: Clock + Clone + Send + Sync + 'static,
{
    /// Shrinks the maps every `every` until `stop` turns true.
    pub fn spawn_sweeper(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => self.shrink(),
                    r = stop.wait_for(|s| *s) => {
                        let _ = r;
                        return;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::net::Ipv6Addr;

    fn rotating_v6(i: u64) -> IpAddr {
        // A new interface id inside 2001:db8:0:7::/64 each time.
        IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8_0000_0007u128 << 64) | i as u128,
        ))
    }

    #[test]
    fn rotating_addresses_in_one_64_share_a_bucket() {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits::with_clock(10, 10, clock);
        let mut refused = 0;
        for i in 0..10_000 {
            if limits.check_ip(rotating_v6(i)).is_err() {
                refused += 1;
            }
        }
        // One bucket of burst 40: everything after the 40th is refused.
        assert_eq!(limits.len().1, 1);
        assert_eq!(refused, 10_000 - 40);
    }

    #[test]
    fn idle_buckets_are_dropped_once_full_again() {
        let clock = FakeRelativeClock::default();
        let limits = RateLimits::with_clock(10, 10, clock.clone());
        for i in 0..5_000u32 {
            let _ = limits.check_ip(IpAddr::V4(i.into()));
            let _ = limits.check_user(&format!("user{i}"));
        }
        assert_eq!(limits.len(), (5_000, 5_000));
        // Still refilling: kept.
        limits.shrink();
        assert_eq!(limits.len(), (5_000, 5_000));
        clock.advance(Duration::from_secs(BURST_SECS as u64 + 1));
        limits.shrink();
        assert!(limits.is_empty(), "{:?}", limits.len());
    }

    #[tokio::test]
    async fn the_sweeper_keeps_the_maps_small_without_a_scrape() {
        let clock = FakeRelativeClock::default();
        let limits = Arc::new(RateLimits::with_clock(10, 10, clock.clone()));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sweeper = limits
            .clone()
            .spawn_sweeper(Duration::from_millis(10), stop_rx);
        // Waves of new clients, each idle afterwards: the sweeper drops a
        // wave once its buckets are full again.
        for wave in 0..5u32 {
            for i in 0..1_000u32 {
                let _ = limits.check_ip(IpAddr::V4((wave * 1_000 + i).into()));
            }
            assert!(limits.len().1 >= 1_000);
            clock.advance(Duration::from_secs(BURST_SECS as u64 + 1));
            let mut swept = false;
            for _ in 0..500 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if limits.is_empty() {
                    swept = true;
                    break;
                }
            }
            assert!(swept, "wave {wave}: {:?}", limits.len());
        }
        stop_tx.send(true).unwrap();
        sweeper.await.unwrap();
    }
}
