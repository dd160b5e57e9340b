//! Progress lines on stderr for long operator commands (audit, backups):
//! shown when stderr is a terminal or when asked for, at most every couple
//! of seconds so that a large run does not flood a log.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

/// Rate-limited progress printer.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    label: &'static str,
    every: Duration,
    last: Option<Instant>,
}

impl Progress {
    /// Prints when `forced` or when stderr is a terminal.
    pub fn new(label: &'static str, forced: bool) -> Progress {
        Progress {
            enabled: forced || std::io::stderr().is_terminal(),
            label,
            every: Duration::from_secs(2),
            last: None,
        }
    }

    /// Never prints (library callers such as the scheduler).
    pub fn off() -> Progress {
        Progress {
            enabled: false,
            label: "",
            every: Duration::from_secs(2),
            last: None,
        }
    }

    /// Prints `msg()` if enough time has passed since the last line.
    pub fn tick(&mut self, msg: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            return;
        }
        self.last = Some(now);
        eprintln!("{}: {}", self.label, msg());
    }

    /// Prints `msg` now (phase changes, the final line).
    pub fn say(&mut self, msg: impl std::fmt::Display) {
        if self.enabled {
            eprintln!("{}: {}", self.label, msg);
        }
    }
}
