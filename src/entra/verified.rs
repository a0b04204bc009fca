//! Tokens already verified, so a caller that reuses its token (Data Factory
//! keeps a managed identity's token for hours) costs one RS256 check per token
//! rather than one per request. Keyed by the SHA-256 of the whole token; an
//! entry holds the caller and the token's lifetime, which is checked again at
//! every use. Only tokens that passed every check get in, the set is bounded,
//! and it is emptied whenever the signing keys are fetched again, so a key
//! Entra stops publishing stops its tokens as soon as the broker learns of it.
//!
//! Nothing about access is kept here: which connections an identity may reach
//! is decided on every request from the integrations file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::EntraCaller;

/// At most this many tokens are kept; when full, expired ones are dropped, and
/// if none were, the set starts again.
pub const MAX_ENTRIES: usize = 1024;

/// A token's fingerprint: its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

/// When a token may be used, in Unix seconds, skew included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The last second it is accepted (`exp` plus the skew).
    pub until: i64,
    /// The first second it is accepted (`nbf` minus the skew), if it has one.
    pub from: Option<i64>,
}

impl Window {
    pub fn holds(self, now: i64) -> bool {
        now <= self.until && self.from.is_none_or(|f| f <= now)
    }
}

struct Entry {
    caller: Arc<EntraCaller>,
    window: Window,
}

#[derive(Default)]
pub struct Verified {
    entries: Mutex<HashMap<Fingerprint, Entry>>,
}

/// What the set knows of a token.
pub enum Lookup {
    /// Verified earlier and inside its lifetime now.
    Valid(Arc<EntraCaller>),
    /// Verified earlier and outside its lifetime now: `exp` (`true`) or `nbf` failed.
    Outside { expired: bool },
    /// Not seen (or forgotten): verify it.
    Unknown,
}

impl Verified {
    pub fn lookup(&self, token: Fingerprint, now: i64) -> Lookup {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(&token) {
            None => Lookup::Unknown,
            Some(e) if e.window.holds(now) => Lookup::Valid(Arc::clone(&e.caller)),
            Some(e) => Lookup::Outside {
                expired: now > e.window.until,
            },
        }
    }

    /// Keeps a token that passed every check at `now`.
    pub fn insert(&self, token: Fingerprint, caller: Arc<EntraCaller>, window: Window, now: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&token) {
            entries.retain(|_, e| now <= e.window.until);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(token, Entry { caller, window });
    }

    /// Forgets every token (the signing keys were fetched again).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(oid: &str) -> Arc<EntraCaller> {
        Arc::new(EntraCaller {
            object_id: oid.into(),
            app_id: None,
            roles: vec![],
            version: Some("1.0".into()),
        })
    }

    #[test]
    fn a_kept_token_is_valid_only_inside_its_window() {
        let v = Verified::default();
        let t = Fingerprint::of("a.b.c");
        let window = Window {
            until: 1_000,
            from: Some(100),
        };
        v.insert(t, caller("x"), window, 500);
        assert!(matches!(v.lookup(t, 500), Lookup::Valid(c) if c.object_id == "x"));
        assert!(matches!(v.lookup(t, 1_000), Lookup::Valid(_)));
        assert!(matches!(
            v.lookup(t, 1_001),
            Lookup::Outside { expired: true }
        ));
        assert!(matches!(
            v.lookup(t, 99),
            Lookup::Outside { expired: false }
        ));
        assert!(matches!(
            v.lookup(Fingerprint::of("a.b.d"), 500),
            Lookup::Unknown
        ));
    }

    #[test]
    fn the_set_is_bounded_expired_tokens_go_first_and_clear_forgets_all() {
        let v = Verified::default();
        let live = Window {
            until: 10_000,
            from: None,
        };
        let dead = Window {
            until: 50,
            from: None,
        };
        for i in 0..MAX_ENTRIES {
            let w = if i % 2 == 0 { dead } else { live };
            v.insert(Fingerprint::of(&i.to_string()), caller("x"), w, 10);
        }
        assert_eq!(v.len(), MAX_ENTRIES);
        // Full at 100: the expired half goes, the live half stays.
        v.insert(Fingerprint::of("new"), caller("y"), live, 100);
        assert_eq!(v.len(), MAX_ENTRIES / 2 + 1);
        assert!(matches!(
            v.lookup(Fingerprint::of("1"), 100),
            Lookup::Valid(_)
        ));
        assert!(matches!(
            v.lookup(Fingerprint::of("0"), 100),
            Lookup::Unknown
        ));
        // Full of live tokens: it starts again rather than growing.
        for i in 0..MAX_ENTRIES {
            v.insert(Fingerprint::of(&format!("l{i}")), caller("x"), live, 100);
        }
        assert!(v.len() <= MAX_ENTRIES);
        v.clear();
        assert_eq!(v.len(), 0);
    }
}
