//! The store's notion of "now", for the deadlines it computes itself
//! (reservation and lease TTLs, job leases, task leases, the snapshot time).
//!
//! Production stores read the wall clock ([`SystemClock`]); a store opened
//! with [`super::connect_with_clock`] and a [`ManualClock`] lets tests move
//! time forward to see leases and reservations expire without sleeping.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until told to move.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(start))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::zero());
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `clock`'s now at the microsecond precision every engine keeps.
pub(crate) fn micros(clock: &dyn Clock) -> DateTime<Utc> {
    let n = clock.now();
    DateTime::from_timestamp_micros(n.timestamp_micros()).unwrap_or(n)
}
