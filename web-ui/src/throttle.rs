//! Failed logins, counted by user name: after a few in a row each further attempt for that
//! name waits, twice as long each time (up to five minutes), so a password cannot be guessed
//! at the speed of the network. Unknown names are counted like known ones (the wait tells
//! nothing about which names exist); a successful login clears the count. Kept in memory:
//! a server restart forgets it, as it forgets nothing else that matters.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed in a row before attempts have to wait.
pub(crate) const FREE_FAILURES: u32 = 5;
/// The longest wait.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// A name with no failure for this long starts again from nothing.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Names kept at most (old ones are dropped first; beyond it, the map starts afresh).
const MAX_NAMES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// How long a name waits after `count` failures in a row.
pub(crate) fn wait_after(count: u32) -> Duration {
    if count < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_WAIT)
}

#[derive(Debug, Default)]
pub(crate) struct Throttle {
    names: Mutex<HashMap<String, Failures>>,
}

fn key(name: &str) -> String {
    name.trim().to_lowercase()
}

impl Throttle {
    /// How long `name` must still wait before its next attempt, if at all.
    pub(crate) fn wait(&self, name: &str, now: Instant) -> Option<Duration> {
        let names = self.names.lock().expect("throttle lock");
        let f = names.get(&key(name))?;
        let until = f.last + wait_after(f.count);
        (until > now).then(|| until - now)
    }

    /// Counts a failed attempt for `name`: the failures in a row, and how long the next
    /// attempt waits.
    pub(crate) fn failed(&self, name: &str, now: Instant) -> (u32, Duration) {
        let mut names = self.names.lock().expect("throttle lock");
        if names.len() >= MAX_NAMES {
            names.retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
            if names.len() >= MAX_NAMES {
                names.clear();
            }
        }
        let f = names.entry(key(name)).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(f.last) >= FORGET_AFTER {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        (f.count, wait_after(f.count))
    }

    /// `name` logged in: its failures are forgotten.
    pub(crate) fn succeeded(&self, name: &str) {
        self.names.lock().expect("throttle lock").remove(&key(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_after_the_free_failures_and_stop_at_five_minutes() {
        let waits: Vec<u64> = (0..16).map(|n| wait_after(n).as_secs()).collect();
        assert_eq!(
            waits,
            [0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
        );
        assert_eq!(wait_after(u32::MAX), MAX_WAIT);
    }

    #[test]
    fn a_name_waits_after_five_failures_and_not_after_a_success() {
        let t = Throttle::default();
        let t0 = Instant::now();
        for i in 1..=FREE_FAILURES {
            assert_eq!(t.wait("Alice", t0), None, "attempt {i}");
            let wait = if i < FREE_FAILURES { 0 } else { 1 };
            assert_eq!(t.failed("alice", t0), (i, Duration::from_secs(wait)));
        }
        assert_eq!(t.wait(" ALICE ", t0), Some(Duration::from_secs(1)));
        assert_eq!(t.wait("bob", t0), None, "other names are not held");
        assert_eq!(t.wait("alice", t0 + Duration::from_secs(1)), None);
        t.failed("alice", t0 + Duration::from_secs(1));
        assert_eq!(
            t.wait("alice", t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(2))
        );
        t.succeeded("alice");
        assert_eq!(t.wait("alice", t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn old_failures_are_forgotten() {
        let t = Throttle::default();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            t.failed("alice", t0);
        }
        let later = t0 + FORGET_AFTER;
        t.failed("alice", later);
        assert_eq!(t.wait("alice", later), None, "counting starts again");
    }
}
