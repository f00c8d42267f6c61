//! Typing notifications: in memory only, with a serial that sync tokens carry.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::stream::Streams;

/// Longest typing timeout a client may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    changed_at: u64,
}

/// Who is typing where.
#[derive(Debug)]
pub struct Typing {
    rooms: Mutex<(u64, HashMap<OwnedRoomId, RoomTyping>)>,
    streams: Arc<Streams>,
}

impl Typing {
    /// Creates the service.
    pub fn new(streams: Arc<Streams>) -> Arc<Self> {
        Arc::new(Self { rooms: Mutex::new((0, HashMap::new())), streams })
    }

    /// The current serial.
    pub fn serial(&self) -> u64 {
        self.rooms.lock().expect("typing lock poisoned").0
    }

    /// Starts or stops a user typing in a room.
    pub fn set(self: &Arc<Self>, room_id: &RoomId, user_id: &UserId, timeout: Option<Duration>) {
        {
            let mut guard = self.rooms.lock().expect("typing lock poisoned");
            guard.0 += 1;
            let serial = guard.0;
            let room = guard.1.entry(room_id.to_owned()).or_default();
            match timeout {
                Some(t) => {
                    room.users.insert(user_id.to_owned(), Instant::now() + t.min(MAX_TIMEOUT));
                }
                None => {
                    room.users.remove(user_id);
                }
            }
            room.changed_at = serial;
        }
        self.streams.notify_for(super::stream::Scope::room(room_id.as_str()));
        if let Some(t) = timeout {
            // Expiry is a change too: wake syncs so clients see the user stop typing.
            let this = self.clone();
            let room_id = room_id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(t.min(MAX_TIMEOUT) + Duration::from_millis(10)).await;
                this.expire(&room_id);
            });
        }
    }

    fn expire(&self, room_id: &RoomId) {
        let changed = {
            let mut guard = self.rooms.lock().expect("typing lock poisoned");
            let serial = guard.0 + 1;
            let Some(room) = guard.1.get_mut(room_id) else {
                return;
            };
            let before = room.users.len();
            let now = Instant::now();
            room.users.retain(|_, until| *until > now);
            let changed = room.users.len() != before;
            if changed {
                room.changed_at = serial;
                guard.0 = serial;
            }
            changed
        };
        if changed {
            self.streams.notify_for(super::stream::Scope::room(room_id.as_str()));
        }
    }

    /// Whether typing changed after `since` in any of `rooms` (or `since` is from before a
    /// restart).
    pub fn changed_in_any(&self, rooms: &std::collections::HashSet<String>, since: u64) -> bool {
        let guard = self.rooms.lock().expect("typing lock poisoned");
        since > guard.0 || guard.1.iter().any(|(room, r)| r.changed_at > since && rooms.contains(room.as_str()))
    }

    /// Users typing in a room if that changed after `since` (always when `since` is `None`).
    pub fn changed_since(&self, room_id: &RoomId, since: Option<u64>) -> Option<Vec<OwnedUserId>> {
        let guard = self.rooms.lock().expect("typing lock poisoned");
        let room = guard.1.get(room_id);
        let changed_at = room.map_or(0, |r| r.changed_at);
        // A serial from before a restart (larger than ours) means: send everything.
        let since = since.filter(|s| *s <= guard.0);
        if since.is_some_and(|s| changed_at <= s) {
            return None;
        }
        let now = Instant::now();
        let users = room
            .map(|r| r.users.iter().filter(|(_, until)| **until > now).map(|(u, _)| u.clone()).collect())
            .unwrap_or_default();
        if since.is_none() && room.is_none() {
            return None;
        }
        Some(users)
    }
}
