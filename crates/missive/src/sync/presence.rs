//! Presence: in memory only, with a serial that sync tokens carry, like typing.
//!
//! Off by default (`presence = false`, as in Tchap): the endpoints answer, but nobody's
//! status is recorded or shared. When on, a user's status is shared with the users they
//! share a room with; it is never written to the database, so nothing of it outlives the
//! process (connection habits are personal data).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use super::stream::Streams;

/// A user who has neither synced nor set their status for this long goes offline.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A presence state, as the spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Online,
    Unavailable,
    Offline,
}

impl State {
    /// Parses the spec's names; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "online" => Some(State::Online),
            "unavailable" => Some(State::Unavailable),
            "offline" => Some(State::Offline),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            State::Online => "online",
            State::Unavailable => "unavailable",
            State::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    state: State,
    status_msg: Option<String>,
    /// Last time the user did something (ms since the epoch).
    last_active_ms: u64,
    changed_at: u64,
}

/// Everyone's presence.
#[derive(Debug)]
pub struct Presence {
    enabled: bool,
    users: Mutex<(u64, HashMap<OwnedUserId, Record>)>,
    streams: Arc<Streams>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Presence {
    /// Creates the service; when enabled, a task sends idle users offline.
    pub fn new(enabled: bool, streams: Arc<Streams>) -> Arc<Self> {
        let this = Arc::new(Self { enabled, users: Mutex::new((0, HashMap::new())), streams });
        if enabled {
            let weak = Arc::downgrade(&this);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(30));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let Some(this) = weak.upgrade() else { return };
                    this.expire_idle();
                }
            });
        }
        this
    }

    /// Whether presence is recorded and shared.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The current serial.
    pub fn serial(&self) -> u64 {
        self.users.lock().expect("presence lock poisoned").0
    }

    /// Sets a user's status (`status_msg: None` keeps the current message). Returns nothing:
    /// with presence off it records nothing.
    pub fn set(&self, user_id: &UserId, state: State, status_msg: Option<Option<String>>) {
        if !self.enabled {
            return;
        }
        let changed = {
            let mut guard = self.users.lock().expect("presence lock poisoned");
            let serial = guard.0 + 1;
            let record = guard.1.entry(user_id.to_owned()).or_insert(Record {
                state: State::Offline,
                status_msg: None,
                last_active_ms: 0,
                changed_at: 0,
            });
            let msg = status_msg.unwrap_or_else(|| record.status_msg.clone());
            let changed = record.state != state || record.status_msg != msg || record.changed_at == 0;
            record.last_active_ms = now_ms();
            if changed {
                record.state = state;
                record.status_msg = msg;
                record.changed_at = serial;
                guard.0 = serial;
            }
            changed
        };
        if changed {
            self.streams.notify();
        }
    }

    /// A sync from the user: they are active with the state the client asked for
    /// (`set_presence`, `online` by default). A sync brings an offline user online but
    /// does not undo a status they chose (`unavailable` stays until they change it), and
    /// `offline` leaves the status as it is. Only a change of state wakes other syncs.
    pub fn touch(&self, user_id: &UserId, state: State) {
        if !self.enabled || state == State::Offline {
            return;
        }
        let current = {
            let mut guard = self.users.lock().expect("presence lock poisoned");
            guard.1.get_mut(user_id).map(|record| {
                record.last_active_ms = now_ms();
                record.state
            })
        };
        match (current, state) {
            (Some(State::Unavailable), State::Online) => {}
            _ => self.set(user_id, state, None),
        }
    }

    fn expire_idle(&self) {
        let cutoff = now_ms().saturating_sub(IDLE_TIMEOUT.as_millis() as u64);
        let changed = {
            let mut guard = self.users.lock().expect("presence lock poisoned");
            let mut serial = guard.0;
            for record in guard.1.values_mut() {
                if record.state != State::Offline && record.last_active_ms < cutoff {
                    serial += 1;
                    record.state = State::Offline;
                    record.changed_at = serial;
                }
            }
            let changed = serial != guard.0;
            guard.0 = serial;
            changed
        };
        if changed {
            self.streams.notify();
        }
    }

    /// The `m.presence` content of a user (`offline` for users never seen, and for everyone
    /// while presence is off).
    pub fn content(&self, user_id: &UserId) -> Value {
        let guard = self.users.lock().expect("presence lock poisoned");
        content_of(guard.1.get(user_id).filter(|_| self.enabled))
    }

    /// `m.presence` events of the given users whose presence changed after `since` (all
    /// known ones when `since` is `None`).
    pub fn events_since<'a>(&self, users: impl IntoIterator<Item = &'a str>, since: Option<u64>) -> Vec<Value> {
        if !self.enabled {
            return Vec::new();
        }
        let guard = self.users.lock().expect("presence lock poisoned");
        // A serial from before a restart (larger than ours) means: send everything.
        let since = since.filter(|s| *s <= guard.0).unwrap_or(0);
        let mut out = Vec::new();
        for user in users {
            let Ok(user_id) = UserId::parse(user) else { continue };
            if let Some(record) = guard.1.get(&user_id).filter(|r| r.changed_at > since) {
                out.push(json!({ "type": "m.presence", "sender": user, "content": content_of(Some(record)) }));
            }
        }
        out
    }
}

fn content_of(record: Option<&Record>) -> Value {
    let mut content = Map::new();
    let Some(record) = record else {
        content.insert("presence".into(), json!("offline"));
        return Value::Object(content);
    };
    content.insert("presence".into(), json!(record.state.name()));
    content.insert("last_active_ago".into(), json!(now_ms().saturating_sub(record.last_active_ms)));
    content.insert("currently_active".into(), json!(record.state == State::Online));
    if let Some(msg) = &record.status_msg {
        content.insert("status_msg".into(), json!(msg));
    }
    Value::Object(content)
}
