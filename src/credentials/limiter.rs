//! The failure limits: failed authentications counted per key (a client id,
//! a source address) in fixed windows, in a table of bounded size.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::{LIMITER_CAPACITY, WINDOW};

/// Failures per key in fixed windows.
pub(super) struct Limiter {
    max: u32,
    entries: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Limiter {
    pub(super) fn new(max: u32) -> Self {
        Self {
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until `key` may try again, when it is over the limit.
    pub(super) fn blocked(&self, key: &str) -> Option<u64> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (start, n) = map.get(key)?;
        let elapsed = start.elapsed();
        (*n >= self.max && elapsed < WINDOW).then(|| (WINDOW - elapsed).as_secs().max(1))
    }

    pub(super) fn fail(&self, key: &str) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= LIMITER_CAPACITY && !map.contains_key(key) {
            map.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if map.len() >= LIMITER_CAPACITY {
                // Flooded with distinct keys: the per-source table still counts.
                return;
            }
        }
        let entry = map.entry(key.to_owned()).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_blocks_after_max_failures_and_only_that_key() {
        let l = Limiter::new(3);
        for _ in 0..2 {
            l.fail("a");
        }
        assert_eq!(l.blocked("a"), None);
        l.fail("a");
        let retry = l.blocked("a").expect("blocked after 3 failures");
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(l.blocked("b"), None);
    }

    #[test]
    fn the_limiter_stays_bounded() {
        let l = Limiter::new(1);
        for i in 0..(LIMITER_CAPACITY + 50) {
            l.fail(&format!("k{i}"));
        }
        assert!(l.entries.lock().unwrap().len() <= LIMITER_CAPACITY);
    }
}
