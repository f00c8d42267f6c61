//! The transaction IDs a room's senders have used, per device, so that a new send (nearly
//! every send) need not ask the store whether it is a retry.
//!
//! A device's set is loaded from the store the first time it sends into the room, then kept
//! complete by the room's builder, which holds the room's lock and adds every send it
//! builds. Sets hold 64-bit hashes: a hash that is absent proves the transaction ID was
//! never used in the room; one that is present (a retry, or a collision) sends the builder
//! to the store, which decides. A send whose commit fails stays in the set, which only costs
//! a store read if it is retried.

use std::{
    collections::HashSet,
    hash::{DefaultHasher, Hash, Hasher},
};

use hashlink::LruCache;

/// Devices whose sets one room keeps.
const MAX_DEVICES: usize = 256;
/// A device with more transaction IDs in the room than this is always checked in the store.
pub const MAX_PER_DEVICE: usize = 10_000;
/// Hashes one room keeps in all; the least recently used devices go beyond it.
const MAX_ENTRIES: usize = 20_000;

/// What the room knows of one device's transaction IDs.
enum Known {
    Ids(HashSet<u64>),
    TooMany,
}

impl Known {
    fn len(&self) -> usize {
        match self {
            Known::Ids(ids) => ids.len(),
            Known::TooMany => 1,
        }
    }
}

/// A room's transaction IDs, per `(sender, device)`.
pub struct TxnIndex {
    devices: LruCache<(String, String), Known>,
    entries: usize,
}

impl Default for TxnIndex {
    fn default() -> Self {
        Self { devices: LruCache::new(MAX_DEVICES), entries: 0 }
    }
}

fn hash(txn: &str) -> u64 {
    // Fixed keys: the same ID always gives the same hash.
    let mut hasher = DefaultHasher::new();
    txn.hash(&mut hasher);
    hasher.finish()
}

impl TxnIndex {
    /// Whether the device's set is loaded.
    pub fn is_loaded(&mut self, sender: &str, device: &str) -> bool {
        self.devices.get(&(sender.to_owned(), device.to_owned())).is_some()
    }

    /// Keeps the device's transaction IDs as read from the store; `None` when there were too
    /// many to keep.
    pub fn load(&mut self, sender: &str, device: &str, ids: Option<Vec<String>>) {
        let known = match ids {
            Some(ids) if ids.len() <= MAX_PER_DEVICE => Known::Ids(ids.iter().map(|t| hash(t)).collect()),
            _ => Known::TooMany,
        };
        self.entries += known.len();
        if let Some(old) = self.devices.insert((sender.to_owned(), device.to_owned()), known) {
            self.entries -= old.len();
        }
        self.shrink();
    }

    /// `false` only if the transaction ID was certainly never used in the room.
    pub fn may_exist(&mut self, sender: &str, device: &str, txn: &str) -> bool {
        match self.devices.get(&(sender.to_owned(), device.to_owned())) {
            Some(Known::Ids(ids)) => ids.contains(&hash(txn)),
            Some(Known::TooMany) | None => true,
        }
    }

    /// Records a send built into the room.
    pub fn add(&mut self, sender: &str, device: &str, txn: &str) {
        let key = (sender.to_owned(), device.to_owned());
        let Some(known) = self.devices.get_mut(&key) else {
            return;
        };
        if let Known::Ids(ids) = known {
            if ids.len() >= MAX_PER_DEVICE {
                self.entries -= ids.len() - 1;
                *known = Known::TooMany;
            } else if ids.insert(hash(txn)) {
                self.entries += 1;
            }
        }
        self.shrink();
    }

    fn shrink(&mut self) {
        while self.entries > MAX_ENTRIES {
            let Some((_, known)) = self.devices.remove_lru() else {
                break;
            };
            self.entries -= known.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_devices_and_used_ids_go_to_the_store() {
        let mut index = TxnIndex::default();
        assert!(index.may_exist("@a:x", "D", "t1"), "nothing is known before loading");
        index.load("@a:x", "D", Some(vec!["t1".into()]));
        assert!(index.may_exist("@a:x", "D", "t1"));
        assert!(!index.may_exist("@a:x", "D", "t2"));
        index.add("@a:x", "D", "t2");
        assert!(index.may_exist("@a:x", "D", "t2"));
        assert!(index.may_exist("@a:x", "E", "t3"), "another device is not loaded");
        index.load("@a:x", "E", None);
        assert!(index.may_exist("@a:x", "E", "t3"), "too many to keep: always the store");
    }

    #[test]
    fn the_index_stays_bounded() {
        let mut index = TxnIndex::default();
        for d in 0..10 {
            let ids = (0..MAX_PER_DEVICE / 2).map(|i| format!("t{i}")).collect();
            index.load("@a:x", &format!("D{d}"), Some(ids));
        }
        assert!(index.entries <= MAX_ENTRIES);
        assert!(!index.is_loaded("@a:x", "D0"), "the least recently used device went first");
        assert!(index.is_loaded("@a:x", "D9"));
        assert!(index.may_exist("@a:x", "D0", "anything"), "an evicted device is unknown again");
    }
}
