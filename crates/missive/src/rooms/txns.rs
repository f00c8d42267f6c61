//! The transaction IDs that devices used in rooms, so that a new send (nearly every send)
//! need not ask the store whether it is a retry.
//!
//! A `(room, sender, device)` set is loaded from the store the first time the device sends
//! into the room, then kept complete by the room's builder, which holds the room's lock and
//! adds every send it builds. Sets hold 64-bit hashes: a hash that is absent proves the
//! transaction ID was never used there; one that is present (a retry, or a collision) sends
//! the builder to the store, which decides. A send whose commit fails stays in its set, which
//! only costs a store read if it is retried.
//!
//! Memory is bounded for the whole server: past `MAX_ENTRIES` hashes, the least recently
//! used sets are dropped to "always ask the store" (one entry each, never read again), so a
//! busy server never reloads a history it had to give up.

use std::{
    collections::HashSet,
    hash::{DefaultHasher, Hash, Hasher},
};

use hashlink::LruCache;

/// `(room, sender, device)` keys kept; beyond, the least recently used is forgotten.
const MAX_KEYS: usize = 65_536;
/// A device with more transaction IDs in a room than this is always checked in the store.
pub const MAX_PER_DEVICE: usize = 20_000;
/// Hashes kept in all (about 10 MiB).
const MAX_ENTRIES: usize = 500_000;

/// What is known of one device's transaction IDs in one room.
enum Known {
    Ids(HashSet<u64>),
    /// Too many to keep: every send asks the store.
    Store,
}

impl Known {
    fn len(&self) -> usize {
        match self {
            Known::Ids(ids) => ids.len(),
            Known::Store => 1,
        }
    }
}

type Key = (String, String, String);

/// The server's transaction ID sets, per `(room, sender, device)`.
pub struct TxnIndex {
    sets: LruCache<Key, Known>,
    entries: usize,
}

impl Default for TxnIndex {
    fn default() -> Self {
        Self { sets: LruCache::new(MAX_KEYS), entries: 0 }
    }
}

fn hash(txn: &str) -> u64 {
    // Fixed keys: the same ID always gives the same hash.
    let mut hasher = DefaultHasher::new();
    txn.hash(&mut hasher);
    hasher.finish()
}

fn key(room: &str, sender: &str, device: &str) -> Key {
    (room.to_owned(), sender.to_owned(), device.to_owned())
}

impl TxnIndex {
    /// Whether the device's set for the room is loaded.
    pub fn is_loaded(&mut self, room: &str, sender: &str, device: &str) -> bool {
        self.sets.get(&key(room, sender, device)).is_some()
    }

    /// Keeps the device's transaction IDs in the room as read from the store; `None` when
    /// there were too many to keep.
    pub fn load(&mut self, room: &str, sender: &str, device: &str, ids: Option<Vec<String>>) {
        let known = match ids {
            Some(ids) if ids.len() <= MAX_PER_DEVICE => Known::Ids(ids.iter().map(|t| hash(t)).collect()),
            _ => Known::Store,
        };
        self.entries += known.len();
        let evicted = self.sets.len() == MAX_KEYS;
        if let Some(old) = self.sets.insert(key(room, sender, device), known) {
            self.entries -= old.len();
        } else if evicted {
            // `insert` dropped the least recently used key; recount rather than track it.
            self.entries = self.sets.iter().map(|(_, k)| k.len()).sum();
        }
        self.shrink();
    }

    /// `false` only if the transaction ID was certainly never used in the room.
    pub fn may_exist(&mut self, room: &str, sender: &str, device: &str, txn: &str) -> bool {
        match self.sets.get(&key(room, sender, device)) {
            Some(Known::Ids(ids)) => ids.contains(&hash(txn)),
            Some(Known::Store) | None => true,
        }
    }

    /// Records a send built into the room.
    pub fn add(&mut self, room: &str, sender: &str, device: &str, txn: &str) {
        let Some(known) = self.sets.get_mut(&key(room, sender, device)) else {
            return;
        };
        if let Known::Ids(ids) = known {
            if ids.len() >= MAX_PER_DEVICE {
                self.entries -= ids.len() - 1;
                *known = Known::Store;
            } else if ids.insert(hash(txn)) {
                self.entries += 1;
            }
        }
        self.shrink();
    }

    /// Gives up the least recently used sets until the hashes fit.
    fn shrink(&mut self) {
        if self.entries <= MAX_ENTRIES {
            return;
        }
        for (_, known) in self.sets.iter_mut() {
            if self.entries <= MAX_ENTRIES {
                break;
            }
            if let Known::Ids(ids) = known {
                self.entries -= ids.len() - 1;
                *known = Known::Store;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_devices_and_used_ids_go_to_the_store() {
        let mut index = TxnIndex::default();
        assert!(index.may_exist("!r", "@a:x", "D", "t1"), "nothing is known before loading");
        index.load("!r", "@a:x", "D", Some(vec!["t1".into()]));
        assert!(index.may_exist("!r", "@a:x", "D", "t1"));
        assert!(!index.may_exist("!r", "@a:x", "D", "t2"));
        index.add("!r", "@a:x", "D", "t2");
        assert!(index.may_exist("!r", "@a:x", "D", "t2"));
        assert!(index.may_exist("!s", "@a:x", "D", "t3"), "another room is not loaded");
        index.load("!r", "@a:x", "E", None);
        assert!(index.may_exist("!r", "@a:x", "E", "t3"), "too many to keep: always the store");
        assert!(index.is_loaded("!r", "@a:x", "E"), "and it is not read again");
        for i in 0..MAX_PER_DEVICE {
            index.add("!r", "@a:x", "D", &format!("n{i}"));
        }
        assert!(index.may_exist("!r", "@a:x", "D", "never used"), "a set that outgrows its cap goes to the store");
    }

    #[test]
    fn the_index_stays_bounded_without_reloading() {
        let mut index = TxnIndex::default();
        let sets = MAX_ENTRIES / MAX_PER_DEVICE + 2;
        for d in 0..sets {
            let ids = (0..MAX_PER_DEVICE).map(|i| format!("t{i}")).collect();
            index.load("!r", "@a:x", &format!("D{d}"), Some(ids));
        }
        assert!(index.entries <= MAX_ENTRIES);
        assert!(index.is_loaded("!r", "@a:x", "D0"), "the oldest set is given up, not forgotten");
        assert!(index.may_exist("!r", "@a:x", "D0", "never used"));
        assert!(!index.may_exist("!r", "@a:x", &format!("D{}", sets - 1), "never used"));
    }
}
