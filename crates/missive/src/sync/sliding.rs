//! Simplified sliding sync (MSC4186), what Element X syncs with: lists of the user's rooms
//! sorted by their latest bump event and cut to the ranges the client shows, room
//! subscriptions, the state each room's client asks for, and extensions (to-device, E2EE,
//! account data, receipts, typing). A connection (`conn_id`) remembers what it was sent at
//! each `pos`, so that a resumed connection gets only what changed; an unknown `pos` gets
//! `M_UNKNOWN_POS`, and the client starts over.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    RoomId, UserId,
    api::client::{
        filter::FilterDefinition,
        sync::sync_events::v5::{self, request::ExtensionRoomConfig},
    },
};
use serde_json::{Map, Value, json};

use super::{Sync, SyncRequest};
use crate::{
    accounts::Identity,
    error::{Error, Result},
    rooms::{pdu, timeline::Viewer},
    store::{Changes, EventRow, MembershipRow, RoomFacts},
};

/// Connections remembered, across all devices; the least recently used is forgotten (its
/// client gets `M_UNKNOWN_POS` and starts over).
const CONNECTIONS: usize = 4096;

/// Positions of a connection kept, so that a client retrying a request it got no answer
/// to is answered again.
const POSITIONS_KEPT: usize = 3;

/// Most events in one room's timeline, whatever the client asks.
const MAX_TIMELINE: usize = 100;

/// The connections: what each was sent, by position.
#[derive(Default)]
pub struct Connections(Mutex<Option<hashlink::LruCache<ConnKey, Connection>>>);

type ConnKey = (String, String, String);

#[derive(Default)]
struct Connection {
    next: u64,
    positions: VecDeque<(u64, Arc<Snapshot>)>,
}

/// What a connection had been sent when it was given a position.
#[derive(Default)]
struct Snapshot {
    stream: i64,
    typing: u64,
    /// Rooms sent, with the configuration they were sent with.
    rooms: HashMap<String, RoomConfig>,
    /// Each list's count.
    counts: BTreeMap<String, usize>,
    /// What the lists sort and filter the user's rooms by.
    facts: Arc<HashMap<String, RoomFacts>>,
    /// The user's memberships.
    memberships: Arc<Vec<MembershipRow>>,
    /// The rooms the user's `m.direct` names.
    direct: Arc<HashSet<String>>,
    /// The request answered, but for its position and to-device token ([`fingerprint`]).
    request: String,
    /// The to-device token after which nothing waited for the device, if any, and whether
    /// the answer carried messages (a request acknowledging them deletes them).
    to_device_settled: Option<(Option<i64>, bool)>,
}

/// What a client asks of a room: the state to send and the timeline's length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RoomConfig {
    required_state: Vec<(String, String)>,
    timeline_limit: usize,
}

impl RoomConfig {
    fn new(required_state: &[(ruma::events::StateEventType, String)], limit: ruma::UInt) -> Self {
        let mut required_state: Vec<(String, String)> =
            required_state.iter().map(|(kind, key)| (kind.to_string(), key.clone())).collect();
        required_state.sort();
        required_state.dedup();
        Self { required_state, timeline_limit: (u64::from(limit) as usize).min(MAX_TIMELINE) }
    }

    /// Both configurations' state and the longer timeline (a room in two lists).
    fn merge(&mut self, other: RoomConfig) {
        self.required_state.extend(other.required_state);
        self.required_state.sort();
        self.required_state.dedup();
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
    }

    /// Whether a state event's type and key are asked for; `$ME` is the user, `$LAZY`
    /// members are the timeline's senders (given as `lazy`).
    fn wants(&self, kind: &str, key: &str, me: &str, lazy: &HashSet<&str>) -> bool {
        self.required_state.iter().any(|(k, s)| {
            (k == "*" || k == kind)
                && (s == "*" || s == key || (s == "$ME" && key == me) || (s == "$LAZY" && lazy.contains(key)))
        })
    }

    /// Whether a configuration asks more than this one sent: the room is then sent whole
    /// again.
    fn widened_by(&self, next: &RoomConfig) -> bool {
        next.timeline_limit > self.timeline_limit
            || next.required_state.iter().any(|pair| !self.required_state.contains(pair))
    }
}

impl Connections {
    fn with<T>(&self, f: impl FnOnce(&mut hashlink::LruCache<ConnKey, Connection>) -> T) -> T {
        let mut guard = self.0.lock().expect("sliding sync connections poisoned");
        f(guard.get_or_insert_with(|| hashlink::LruCache::new(CONNECTIONS)))
    }

    /// The snapshot a position names on a connection.
    fn get(&self, key: &ConnKey, pos: &str) -> Option<Arc<Snapshot>> {
        let pos: u64 = pos.parse().ok()?;
        self.with(|conns| {
            let conn = conns.get_mut(key)?;
            conn.positions.iter().find(|(p, _)| *p == pos).map(|(_, s)| s.clone())
        })
    }

    /// Records a new snapshot and answers its position.
    fn push(&self, key: ConnKey, fresh: bool, snapshot: Snapshot) -> u64 {
        self.with(|conns| {
            if fresh || conns.get(&key).is_none() {
                // A new connection starts positions where any older one left off, so that
                // a stale position of the old one is never taken for one of the new.
                let next = conns.get(&key).map_or(1, |c| c.next);
                conns.insert(key.clone(), Connection { next, positions: VecDeque::new() });
            }
            let conn = conns.get_mut(&key).expect("connection was just ensured");
            let pos = conn.next;
            conn.next += 1;
            conn.positions.push_back((pos, Arc::new(snapshot)));
            while conn.positions.len() > POSITIONS_KEPT {
                conn.positions.pop_front();
            }
            pos
        })
    }
}

/// A room's timeline to read: room, from and to stream positions.
type TimelineRange = (String, i64, i64);

/// One room of the user, as the lists see it.
struct Candidate<'a> {
    row: &'a MembershipRow,
    bump: i64,
    is_dm: bool,
    facts: &'a RoomFacts,
}

/// The span an answer covers and what the stream told of it.
#[derive(Clone, Copy)]
struct Update<'a> {
    /// The connection's position; `None` when it starts.
    since: Option<i64>,
    now: i64,
    /// What changed since `since` in the user's rooms.
    changes: Option<&'a Changes>,
    /// The rooms whose changes the stream follows for the user.
    watched: &'a HashSet<String>,
}

/// The facts of a room this server does not hold (an invite from another server).
static NO_FACTS: RoomFacts = RoomFacts { bump_pos: None, encrypted: false, room_type: None };

impl Sync {
    /// Answers a sliding sync request, long-polling up to its timeout when a resumed
    /// connection has nothing new.
    pub async fn sliding(&self, identity: &Identity, req: v5::Request) -> Result<Value> {
        let key =
            (identity.user_id.to_string(), identity.device_id.to_string(), req.conn_id.clone().unwrap_or_default());
        let previous = match &req.pos {
            None => None,
            Some(pos) => Some(self.connections.get(&key, pos).ok_or(Error::UnknownPos)?),
        };
        let timeout = req.timeout.unwrap_or(Duration::ZERO).min(Duration::from_secs(300));
        let deadline = tokio::time::Instant::now() + timeout;
        // Registered, as `/sync`'s, under the user and their rooms, so that only a change
        // concerning them computes again.
        let mut poll = super::stream::LongPoll::default();
        let fingerprint = fingerprint(&req);
        let user_id = identity.user_id.as_str();
        let mut first = true;
        loop {
            let serial = self.streams.serial();
            let rooms = self.watched_rooms(user_id).await?;
            // A client asking again right after an answer usually finds nothing new: when
            // nothing since concerns it, it waits without computing (as `/sync` does).
            let skip = first
                && tokio::time::Instant::now() < deadline
                && previous.as_deref().is_some_and(|p| self.sliding_quiet(identity, &req, p, &fingerprint, &rooms));
            first = false;
            let mut answer = None;
            if !skip {
                let (response, snapshot, news) = self.sliding_once(identity, &req, previous.as_deref(), &rooms).await?;
                if news || previous.is_none() || tokio::time::Instant::now() >= deadline {
                    answer = Some((response, snapshot));
                }
            }
            if answer.is_none() && !poll.wait(&self.streams, serial, user_id, rooms.iter(), deadline).await {
                // Timed out: answer with what there is (nothing new, a fresh position).
                let (response, snapshot, _) = self.sliding_once(identity, &req, previous.as_deref(), &rooms).await?;
                answer = Some((response, snapshot));
            }
            if let Some((mut response, mut snapshot)) = answer {
                snapshot.request = fingerprint;
                let pos = self.connections.push(key, previous.is_none(), snapshot);
                response.insert("pos".into(), Value::String(pos.to_string()));
                if let Some(txn_id) = &req.txn_id {
                    response.insert("txn_id".into(), Value::String(txn_id.clone()));
                }
                return Ok(Value::Object(response));
            }
        }
    }

    /// Whether a resumed connection asking what it asked before can find nothing new: no
    /// change since its position concerns the user or their `rooms`, typing is as it was
    /// (when asked for), and no to-device message waits for the token it sends.
    fn sliding_quiet(
        &self,
        identity: &Identity,
        req: &v5::Request,
        previous: &Snapshot,
        fingerprint: &str,
        rooms: &HashSet<String>,
    ) -> bool {
        let ext = &req.extensions;
        previous.request == fingerprint
            && (ext.to_device.enabled != Some(true)
                || previous.to_device_settled.is_some_and(|(token, _)| token == to_device_since(req)))
            && (ext.typing.enabled != Some(true) || !self.typing.changed_in_any(rooms, previous.typing))
            && self.streams.quiet_since(previous.stream, identity.user_id.as_str(), rooms)
    }

    async fn sliding_once(
        &self,
        identity: &Identity,
        req: &v5::Request,
        previous: Option<&Snapshot>,
        rooms: &HashSet<String>,
    ) -> Result<(Map<String, Value>, Snapshot, bool)> {
        let now = self.streams.current();
        let typing_serial = self.typing.serial();
        let user_id: &UserId = &identity.user_id;
        let viewer = Viewer { user_id, device_id: identity.device_id.as_str() };
        let since = previous.map(|p| p.stream);
        // What only a change naming the user can change (their account data, their
        // to-device messages) is not read again when none came since the position.
        let untouched = previous.filter(|p| self.streams.quiet_since(p.stream, user_id.as_str(), &HashSet::new()));
        let (direct_rooms, changes) = tokio::try_join!(
            async {
                Ok::<_, Error>(match untouched {
                    Some(p) => p.direct.clone(),
                    None => Arc::new(direct_rooms(
                        self.store.account_data(user_id.as_str(), "", "m.direct").await?.as_deref(),
                    )),
                })
            },
            self.changes(
                user_id.as_str(),
                since,
                now,
                since.and_then(|s| self.streams.changes_since(s, now, user_id.as_str(), rooms)),
            ),
        )?;
        // The user's memberships, with the facts the lists sort and filter their rooms by,
        // are read when the connection starts or a membership changed; an update reuses
        // them, and reads facts again only for the rooms with new events or state. Counts
        // are read for the rooms sent only.
        let device_id = identity.device_id.as_str();
        let kept = previous.filter(|_| changes.as_ref().is_some_and(|c| !c.memberships));
        let (state, (memberships, facts)) = tokio::try_join!(
            async { Ok(self.store.user_sync_state_of(user_id.as_str(), device_id, since, false).await?) },
            self.listed_rooms(user_id, kept, changes.as_ref()),
        )?;
        let candidates: Vec<Candidate> = memberships
            .iter()
            .filter(|m| m.stream_pos <= now)
            .map(|m| {
                let room_facts = facts.get(&m.room_id).unwrap_or(&NO_FACTS);
                let bump = match m.membership.as_str() {
                    "join" => room_facts.bump_pos.unwrap_or(m.stream_pos).max(0),
                    _ => m.stream_pos,
                };
                Candidate { is_dm: direct_rooms.contains(m.room_id.as_str()), bump, facts: room_facts, row: m }
            })
            .collect();

        // Lists: the rooms they hold, sorted by recency, cut to the ranges asked.
        let mut wanted: HashMap<String, RoomConfig> = HashMap::new();
        let mut in_list: HashMap<String, Vec<String>> = HashMap::new();
        let mut counts = BTreeMap::new();
        for (name, list) in &req.lists {
            let mut held: Vec<&Candidate> = candidates.iter().filter(|c| list_holds(list, c, since)).collect();
            held.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.row.room_id.cmp(&b.row.room_id)));
            counts.insert(name.clone(), held.len());
            let config = RoomConfig::new(&list.room_details.required_state, list.room_details.timeline_limit);
            for (start, end) in &list.ranges {
                let (start, end) = (u64::from(*start) as usize, u64::from(*end) as usize);
                for c in held.iter().skip(start).take(end.saturating_sub(start) + 1) {
                    wanted.entry(c.row.room_id.clone()).or_default().merge(config.clone());
                    in_list.entry(c.row.room_id.clone()).or_default().push(name.clone());
                }
            }
        }
        let mut subscribed = HashSet::new();
        for (room_id, sub) in &req.room_subscriptions {
            if candidates.iter().any(|c| c.row.room_id == room_id.as_str()) {
                wanted
                    .entry(room_id.to_string())
                    .or_default()
                    .merge(RoomConfig::new(&sub.required_state, sub.timeline_limit));
                subscribed.insert(room_id.to_string());
            }
        }

        // Which rooms to send, and whether whole or what changed.
        let changed_rooms = changes.as_ref().map(|c| &c.rooms);
        let mut whole: Vec<&Candidate> = Vec::new();
        let mut partial: Vec<&Candidate> = Vec::new();
        for c in &candidates {
            let Some(config) = wanted.get(&c.row.room_id) else { continue };
            let sent = previous.and_then(|p| p.rooms.get(&c.row.room_id));
            match sent {
                Some(before) if !before.widened_by(config) => {
                    let membership_changed = since.is_some_and(|s| c.row.stream_pos > s);
                    if membership_changed || changed_rooms.is_some_and(|rooms| rooms.contains_key(&c.row.room_id)) {
                        partial.push(c);
                    }
                }
                _ => whole.push(c),
            }
        }

        let mut out_rooms = Map::new();
        let mut sent_rooms: HashMap<String, RoomConfig> = previous.map(|p| p.rooms.clone()).unwrap_or_default();
        let known: HashMap<String, Option<i64>> = whole
            .iter()
            .chain(&partial)
            .map(|c| (c.row.room_id.clone(), (c.row.membership == "join").then_some(c.row.stream_pos)))
            .collect();
        // Invites and knocks: their stripped state, no timeline.
        let (joined_whole, others_whole): (Vec<&Candidate>, Vec<&Candidate>) =
            whole.iter().partition(|c| matches!(c.row.membership.as_str(), "join" | "leave" | "ban"));
        for c in others_whole
            .iter()
            .chain(partial.iter().filter(|c| !matches!(c.row.membership.as_str(), "join" | "leave" | "ban")))
        {
            let m = &c.row;
            if c.row.membership == "invite" && self.invited_by_ignored(user_id, m).await? {
                continue;
            }
            let mut room = Map::new();
            room.insert("bump_stamp".into(), json!(c.bump));
            room.insert("initial".into(), json!(true));
            if c.is_dm {
                room.insert("is_dm".into(), json!(true));
            }
            let stripped = self.stripped_state(m).await?;
            if let Some(name) =
                stripped.iter().find(|e| e["type"] == "m.room.name").and_then(|e| e["content"]["name"].as_str())
            {
                room.insert("name".into(), json!(name));
            }
            room.insert(
                (if c.row.membership == "knock" { "knock_state" } else { "invite_state" }).into(),
                json!(stripped),
            );
            out_rooms.insert(c.row.room_id.clone(), Value::Object(room));
            sent_rooms.insert(c.row.room_id.clone(), wanted[&c.row.room_id].clone());
        }
        let joined_partial: Vec<&Candidate> =
            partial.iter().copied().filter(|c| matches!(c.row.membership.as_str(), "join" | "leave" | "ban")).collect();
        let update = Update { since, now, changes: changes.as_ref(), watched: rooms };
        let built = self.sliding_rooms_json(viewer, &joined_whole, &joined_partial, &wanted, update, &known).await?;
        for (room_id, room) in built {
            out_rooms.insert(room_id.clone(), room);
            sent_rooms.insert(room_id.clone(), wanted[&room_id].clone());
        }

        // Extensions.
        let window: Vec<String> = wanted.keys().cloned().collect();
        let ext = &req.extensions;
        let mut extensions = Map::new();
        let mut to_device_settled = None;
        if ext.to_device.enabled == Some(true) {
            let from = to_device_since(req);
            let (events, reached) = match untouched {
                Some(p) if p.to_device_settled == Some((from, false)) => (Vec::new(), now),
                _ => self.e2ee.to_device_for_sync(user_id, &identity.device_id, from, now).await?,
            };
            // Once the client acknowledges what it was sent (or was sent nothing), nothing
            // waits for it until a new message names the user.
            if reached == now {
                to_device_settled = Some(if events.is_empty() { (from, false) } else { (Some(now), true) });
            }
            if !events.is_empty() || from.is_none() || since.is_none() {
                extensions.insert("to_device".into(), json!({ "next_batch": reached.to_string(), "events": events }));
            }
        }
        if ext.e2ee.enabled == Some(true) {
            let (otk_counts, fallback_types, _) = super::E2ee::sync_view(state.device.clone());
            let (changed, left) = match since {
                Some(s) => self.device_list_updates(user_id, s, now, changes.as_ref()).await?,
                None => (Vec::new(), Vec::new()),
            };
            let news = !changed.is_empty() || !left.is_empty();
            if news || since.is_none() {
                extensions.insert(
                    "e2ee".into(),
                    json!({
                        "device_lists": { "changed": changed, "left": left },
                        "device_one_time_keys_count": otk_counts,
                        "device_unused_fallback_key_types": fallback_types,
                    }),
                );
            } else {
                // Counts alone are no news, but the client needs them with any answer.
                extensions.insert(
                    "e2ee".into(),
                    json!({ "device_one_time_keys_count": otk_counts, "device_unused_fallback_key_types": fallback_types }),
                );
            }
        }
        if ext.account_data.enabled == Some(true) {
            let rooms_of = applies_to(&ext.account_data.lists, &ext.account_data.rooms, &window, &in_list, &subscribed);
            let mut global = Vec::new();
            let mut per_room: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for row in &state.account_data {
                let content: Value = serde_json::from_str(&row.content).unwrap_or_else(|_| json!({}));
                let event = json!({ "type": row.data_type, "content": content });
                if row.room_id.is_empty() {
                    global.push(event);
                } else if rooms_of.contains(row.room_id.as_str()) {
                    per_room.entry(row.room_id.clone()).or_default().push(event);
                }
            }
            if since.is_none() && !state.account_data.iter().any(|r| r.data_type == super::PUSH_RULES_TYPE) {
                let ruleset = self.rooms.push_ruleset_once(user_id).await?;
                global.push(json!({ "type": super::PUSH_RULES_TYPE, "content": { "global": crate::rooms::notify::ruleset_json(&ruleset) } }));
            }
            if !global.is_empty() || !per_room.is_empty() {
                extensions.insert("account_data".into(), json!({ "global": global, "rooms": per_room }));
            }
        }
        if ext.receipts.enabled == Some(true) {
            let rooms_of = applies_to(&ext.receipts.lists, &ext.receipts.rooms, &window, &in_list, &subscribed);
            // A room sent whole gets all its receipts; the others those since.
            let mut per_room = Map::new();
            let (fresh, old): (Vec<String>, Vec<String>) =
                rooms_of.iter().map(|r| r.to_string()).partition(|r| previous.is_none_or(|p| !p.rooms.contains_key(r)));
            for (rooms, from) in [(fresh, None), (old, since)] {
                let rooms: Vec<String> = match (from, changed_rooms) {
                    (Some(_), Some(changed)) => {
                        rooms.into_iter().filter(|r| changed.get(r).is_some_and(|c| c.receipts)).collect()
                    }
                    _ => rooms,
                };
                if rooms.is_empty() {
                    continue;
                }
                for (room_id, receipts) in self.store.receipts_for_rooms(&rooms, from, now, user_id.as_str()).await? {
                    if !receipts.is_empty() {
                        per_room.insert(
                            room_id,
                            json!({ "type": "m.receipt", "content": super::receipt_content(receipts) }),
                        );
                    }
                }
            }
            if !per_room.is_empty() {
                extensions.insert("receipts".into(), json!({ "rooms": per_room }));
            }
        }
        if ext.typing.enabled == Some(true) {
            let rooms_of = applies_to(&ext.typing.lists, &ext.typing.rooms, &window, &in_list, &subscribed);
            let mut per_room = Map::new();
            for room in rooms_of {
                let Ok(room_id) = RoomId::parse(room) else { continue };
                let from = previous.filter(|p| p.rooms.contains_key(room)).map(|p| p.typing);
                if let Some(users) = self.typing.changed_since(&room_id, from) {
                    if from.is_none() && users.is_empty() {
                        continue;
                    }
                    per_room.insert(room.to_owned(), json!({ "type": "m.typing", "content": { "user_ids": users } }));
                }
            }
            if !per_room.is_empty() {
                extensions.insert("typing".into(), json!({ "rooms": per_room }));
            }
        }

        let lists_changed = previous.is_none_or(|p| p.counts != counts);
        // Key counts and an empty to-device batch are no news: a client that never sends a
        // to-device `since` must still wait for something to happen.
        let extension_news = extensions.iter().any(|(name, value)| match name.as_str() {
            "e2ee" => value.get("device_lists").is_some(),
            "to_device" => value["events"].as_array().is_some_and(|e| !e.is_empty()),
            _ => true,
        });
        let news = !out_rooms.is_empty() || lists_changed || extension_news;
        let mut response = Map::new();
        response.insert(
            "lists".into(),
            Value::Object(counts.iter().map(|(name, count)| (name.clone(), json!({ "count": count }))).collect()),
        );
        response.insert("rooms".into(), Value::Object(out_rooms));
        response.insert("extensions".into(), Value::Object(extensions));
        let snapshot = Snapshot {
            stream: now,
            typing: typing_serial,
            rooms: sent_rooms,
            counts,
            facts,
            memberships,
            direct: direct_rooms,
            request: String::new(),
            to_device_settled,
        };
        Ok((response, snapshot, news))
    }

    /// The user's memberships and their rooms' facts: read afresh, or those `kept` by the
    /// connection with the facts of rooms that changed since read again.
    async fn listed_rooms(
        &self,
        user_id: &UserId,
        kept: Option<&Snapshot>,
        changes: Option<&Changes>,
    ) -> Result<(Arc<Vec<MembershipRow>>, Arc<HashMap<String, RoomFacts>>)> {
        let Some(kept) = kept else {
            let rows = self.store.sliding_memberships(user_id.as_str()).await?;
            let mut memberships = Vec::with_capacity(rows.len());
            let mut facts = HashMap::with_capacity(rows.len());
            for (membership, room) in rows {
                facts.insert(membership.room_id.clone(), room);
                memberships.push(membership);
            }
            return Ok((Arc::new(memberships), Arc::new(facts)));
        };
        let stale: Vec<String> = changes
            .iter()
            .flat_map(|c| c.rooms.iter())
            .filter(|(room, r)| (r.events || r.state) && kept.facts.contains_key(*room))
            .map(|(room, _)| room.clone())
            .collect();
        if stale.is_empty() {
            return Ok((kept.memberships.clone(), kept.facts.clone()));
        }
        // Copied only when some room changed: most updates share the connection's facts.
        let mut facts = (*kept.facts).clone();
        facts.extend(self.store.sliding_room_facts(&stale).await?);
        Ok((kept.memberships.clone(), Arc::new(facts)))
    }

    /// The joined (or just left) rooms to send: `whole` ones as if new to the client,
    /// `partial` ones with what changed since the update's `since`.
    async fn sliding_rooms_json(
        &self,
        viewer: Viewer<'_>,
        whole: &[&Candidate<'_>],
        partial: &[&Candidate<'_>],
        wanted: &HashMap<String, RoomConfig>,
        update: Update<'_>,
        known: &HashMap<String, Option<i64>>,
    ) -> Result<Vec<(String, Value)>> {
        let Update { since, now, changes, watched } = update;
        let me = viewer.user_id.as_str();
        // The new events of the rooms sent in part are usually still kept by the store, as
        // for a woken `/sync`: when the stream named their positions (all of them, as every
        // such room is one whose changes it follows) and none was dropped since.
        let kept = match changes.and_then(|c| c.event_positions.as_deref()) {
            Some(positions) if !partial.is_empty() && partial.iter().all(|c| watched.contains(&c.row.room_id)) => {
                self.store.recent_events(positions)
            }
            _ => None,
        };
        // New events relate only to older ones: unless a relation came since, the events of
        // rooms sent in part have none to bundle (as for `/sync`).
        let relations_since = changes.is_none_or(|c| c.relations);
        // Timelines, grouped by length (one read per length asked).
        let mut by_limit: BTreeMap<(usize, bool), Vec<TimelineRange>> = BTreeMap::new();
        for c in whole {
            let limit = wanted[&c.row.room_id].timeline_limit;
            by_limit.entry((limit, false)).or_default().push((c.row.room_id.clone(), 0, timeline_end(c, now)));
        }
        for c in partial {
            let limit = wanted[&c.row.room_id].timeline_limit;
            let from = since.unwrap_or(0);
            by_limit.entry((limit, true)).or_default().push((c.row.room_id.clone(), from, timeline_end(c, now)));
        }
        let timelines = async {
            let mut timelines: HashMap<String, super::Timeline> = HashMap::new();
            for ((limit, incremental), ranges) in by_limit {
                if limit == 0 {
                    continue;
                }
                let mut filter = FilterDefinition::default();
                filter.room.timeline.limit = Some(ruma::UInt::from(limit as u32));
                let req =
                    SyncRequest { since: incremental.then(|| "sliding".to_owned()), filter, ..Default::default() };
                let read = match (&kept, since) {
                    (Some(rows), Some(s)) if incremental => {
                        let range: HashMap<&str, (i64, i64)> =
                            ranges.iter().map(|(room, from, to)| (room.as_str(), (*from, *to))).collect();
                        let rows = rows
                            .iter()
                            .filter(|r| {
                                range
                                    .get(r.room_id.as_str())
                                    .is_some_and(|(from, to)| r.stream_pos > *from && r.stream_pos <= *to)
                            })
                            .cloned()
                            .collect();
                        Some((rows, s))
                    }
                    _ => None,
                };
                let bundled = !incremental || relations_since;
                timelines.extend(self.timelines(viewer, &req, &ranges, known, bundled, read).await?);
            }
            Ok::<_, Error>(timelines)
        };

        // State: what each room's client asks for, of the current state (all of it for a
        // room sent whole, what changed since for the others).
        let all: Vec<&Candidate> = whole.iter().chain(partial.iter()).copied().collect();
        let whole_ids: Vec<String> = whole.iter().map(|c| c.row.room_id.clone()).collect();
        // Of the rooms sent in part, only those whose state changed have changed state to
        // read, and members to count again.
        let partial_ids: Vec<String> = partial
            .iter()
            .filter(|c| {
                since.is_some_and(|s| c.row.stream_pos > s)
                    || changes.is_none_or(|ch| ch.rooms.get(&c.row.room_id).is_some_and(|r| r.state))
            })
            .map(|c| c.row.room_id.clone())
            .collect();
        let mut types: HashSet<String> = HashSet::new();
        let mut everything = false;
        for c in &all {
            for (kind, _) in &wanted[&c.row.room_id].required_state {
                if kind == "*" {
                    everything = true;
                }
                types.insert(kind.clone());
            }
        }
        // Always read: what names a room and what sliding sync's fields come from.
        for kind in ["m.room.name", "m.room.avatar", "m.room.create"] {
            types.insert(kind.to_owned());
        }
        // Members are read one by one unless all are asked for.
        let all_members = all.iter().any(|c| {
            wanted[&c.row.room_id].required_state.iter().any(|(k, s)| (k == "m.room.member" || k == "*") && s == "*")
        });
        if !all_members {
            types.remove("m.room.member");
        }
        let types: Vec<String> = types.into_iter().filter(|t| t != "*").collect();
        let state_rows = async {
            let mut rows: Vec<EventRow> = if everything {
                self.store.current_state_of_rooms(&whole_ids, None).await?
            } else {
                self.store.current_state_of_types(&whole_ids, &types).await?
            };
            if let Some(s) = since.filter(|_| !partial_ids.is_empty()) {
                rows.extend(self.store.current_state_of_rooms(&partial_ids, Some(s)).await?);
            }
            Ok::<_, Error>(rows)
        };
        // The reads that do not depend on one another run side by side.
        let all_ids: Vec<String> = all.iter().map(|c| c.row.room_id.clone()).collect();
        let summary_ids: Vec<String> = whole_ids.iter().chain(&partial_ids).cloned().collect();
        let (mut timelines, mut rows, summaries, counts) = tokio::try_join!(
            timelines,
            state_rows,
            async {
                Ok(if summary_ids.is_empty() { HashMap::new() } else { self.store.summaries(&summary_ids, me).await? })
            },
            async { Ok(self.store.notification_counts_of(me, &all_ids).await?) },
        )?;
        // Rooms sent in part whose members changed: a member event among their changed state.
        let changed_state = rows.len();
        // Members asked by key: `$ME`, the timeline's senders (`$LAZY`), named users, and
        // the heroes of rooms without a name.
        let mut pairs: Vec<(String, String)> = Vec::new();
        for c in &all {
            let room = &c.row.room_id;
            let config = &wanted[room];
            let senders = timelines
                .get(room)
                .map(|t| t.events.iter().filter_map(|e| e["sender"].as_str().map(str::to_owned)).collect::<Vec<_>>())
                .unwrap_or_default();
            for (kind, key) in &config.required_state {
                if kind != "m.room.member" && kind != "*" {
                    continue;
                }
                match key.as_str() {
                    "$ME" => pairs.push((room.clone(), me.to_owned())),
                    "$LAZY" => pairs.extend(senders.iter().map(|s| (room.clone(), s.clone()))),
                    "*" => {}
                    user => pairs.push((room.clone(), user.to_owned())),
                }
            }
            // Heroes are sent for rooms sent whole only (see below).
            if let Some((_, heroes)) = summaries.get(room).filter(|_| whole_ids.contains(room)) {
                pairs.extend(heroes.iter().map(|h| (room.clone(), h.clone())));
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        let seen: HashSet<String> = rows.iter().map(|r| r.event_id.clone()).collect();
        if !pairs.is_empty() {
            rows.extend(self.store.current_members(&pairs).await?.into_iter().filter(|r| !seen.contains(&r.event_id)));
        }
        let served = self.rooms.serve_unbundled(viewer, &rows).await?;
        let mut state: HashMap<String, Vec<Value>> = HashMap::new();
        let mut members_moved: HashSet<String> = HashSet::new();
        for (i, (row, event)) in rows.iter().zip(served).enumerate() {
            if i < changed_state && event["type"] == "m.room.member" {
                members_moved.insert(row.room_id.clone());
            }
            state.entry(row.room_id.clone()).or_default().push(event);
        }

        let mut out = Vec::new();
        for c in &all {
            let room_id = &c.row.room_id;
            let config = &wanted[room_id];
            let is_whole = whole.iter().any(|w| w.row.room_id == *room_id);
            let timeline = timelines.remove(room_id).unwrap_or_default();
            let events = state.remove(room_id).unwrap_or_default();
            let lazy: HashSet<&str> = timeline.events.iter().filter_map(|e| e["sender"].as_str()).collect();
            let find = |kind: &str| events.iter().find(|e| e["type"] == kind && e["state_key"] == "");
            let mut room = Map::new();
            if let Some(name) =
                find("m.room.name").and_then(|e| e["content"]["name"].as_str()).filter(|n| !n.is_empty())
            {
                room.insert("name".into(), json!(name));
            }
            if let Some(avatar) = find("m.room.avatar").map(|e| e["content"]["url"].clone()) {
                room.insert("avatar".into(), avatar);
            }
            let ((joined, invited), heroes) = summaries.get(room_id).cloned().unwrap_or_default();
            let members_changed = is_whole || members_moved.contains(room_id);
            if members_changed {
                room.insert("joined_count".into(), json!(joined));
                room.insert("invited_count".into(), json!(invited));
                // Heroes name a room without a name; only a room sent whole is known to
                // have none (a room sent in part carries its name only when it changed).
                if is_whole && room.get("name").is_none() && !heroes.is_empty() {
                    let heroes: Vec<Value> = heroes
                        .iter()
                        .map(|h| {
                            let member =
                                events.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == h.as_str());
                            let mut hero = json!({ "user_id": h });
                            if let Some(name) = member.and_then(|m| m["content"]["displayname"].as_str()) {
                                hero["displayname"] = json!(name);
                            }
                            if let Some(url) = member.and_then(|m| m["content"]["avatar_url"].as_str()) {
                                hero["avatar_url"] = json!(url);
                            }
                            hero
                        })
                        .collect();
                    room.insert("heroes".into(), json!(heroes));
                }
            }
            let timeline_ids: HashSet<&str> = timeline.events.iter().filter_map(|e| e["event_id"].as_str()).collect();
            let required: Vec<Value> = events
                .iter()
                .filter(|e| {
                    let (kind, key) =
                        (e["type"].as_str().unwrap_or_default(), e["state_key"].as_str().unwrap_or_default());
                    config.wants(kind, key, me, &lazy)
                        && (is_whole || !timeline_ids.contains(e["event_id"].as_str().unwrap_or_default()))
                })
                .cloned()
                .map(pdu::sync_event)
                .collect();
            if is_whole {
                room.insert("initial".into(), json!(true));
            }
            if c.is_dm {
                room.insert("is_dm".into(), json!(true));
            }
            room.insert("required_state".into(), Value::Array(required));
            let num_live = if is_whole { 0 } else { timeline.events.len() };
            room.insert("limited".into(), json!(timeline.limited));
            room.insert("prev_batch".into(), json!(timeline.prev_batch));
            room.insert("num_live".into(), json!(num_live));
            room.insert("timeline".into(), Value::Array(timeline.events.into_iter().map(pdu::sync_event).collect()));
            room.insert("bump_stamp".into(), json!(c.bump));
            let (notifications, highlights) = counts.get(room_id).copied().unwrap_or_default();
            room.insert("notification_count".into(), json!(notifications));
            room.insert("highlight_count".into(), json!(highlights));
            out.push((room_id.clone(), Value::Object(room)));
        }
        Ok(out)
    }
}

/// The to-device token a request acknowledges.
fn to_device_since(req: &v5::Request) -> Option<i64> {
    req.extensions.to_device.since.as_deref().and_then(|s| s.parse::<i64>().ok())
}

/// What a request asks, but for its position, timeout and to-device token: two requests
/// with the same fingerprint on the same position get the same answer.
fn fingerprint(req: &v5::Request) -> String {
    let mut extensions = req.extensions.clone();
    extensions.to_device.since = None;
    serde_json::to_string(&(&req.lists, &req.room_subscriptions, &extensions)).unwrap_or_default()
}

/// Where a room's timeline ends for the user: now, or when they left it.
fn timeline_end(c: &Candidate, now: i64) -> i64 {
    match c.row.membership.as_str() {
        "leave" | "ban" => c.row.stream_pos.min(now),
        _ => now,
    }
}

/// The rooms an `m.direct` account data event names.
fn direct_rooms(content: Option<&str>) -> HashSet<String> {
    let Some(content) = content.and_then(|c| serde_json::from_str::<Value>(c).ok()) else { return HashSet::new() };
    content
        .as_object()
        .into_iter()
        .flat_map(|users| users.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

/// Whether a list holds a room: the user's rooms (joined, invited, knocked; and one left
/// since the connection's last answer, so that the client learns of it) that pass the
/// list's filters.
fn list_holds(list: &v5::request::List, c: &Candidate, since: Option<i64>) -> bool {
    let membership = c.row.membership.as_str();
    let current = matches!(membership, "join" | "invite" | "knock");
    let just_left = matches!(membership, "leave" | "ban") && since.is_some_and(|s| c.row.stream_pos > s);
    if !current && !just_left {
        return false;
    }
    let Some(filters) = &list.filters else { return true };
    if filters.is_dm.is_some_and(|dm| dm != c.is_dm) {
        return false;
    }
    if filters.is_encrypted.is_some_and(|e| e != c.facts.encrypted) {
        return false;
    }
    if filters.is_invite.is_some_and(|i| i != (membership == "invite")) {
        return false;
    }
    let kind = c.facts.room_type.as_deref();
    if !filters.room_types.is_empty() && !filters.room_types.iter().any(|t| t.as_str() == kind) {
        return false;
    }
    if filters.not_room_types.iter().any(|t| t.as_str() == kind) {
        return false;
    }
    true
}

/// The rooms an extension applies to: those of the lists it names (all by default, `*`
/// too) and the subscriptions it names (`*`: all of them).
fn applies_to<'a>(
    lists: &Option<Vec<String>>,
    rooms: &Option<Vec<ExtensionRoomConfig>>,
    window: &'a [String],
    in_list: &HashMap<String, Vec<String>>,
    subscribed: &HashSet<String>,
) -> HashSet<&'a str> {
    window
        .iter()
        .filter(|room| {
            let by_list = in_list.get(*room).is_some_and(|names| match lists {
                None => true,
                Some(wanted) => wanted.iter().any(|w| w == "*" || names.contains(w)),
            });
            let by_subscription = subscribed.contains(*room)
                && match rooms {
                    None => true,
                    Some(wanted) => wanted.iter().any(|w| match w {
                        ExtensionRoomConfig::AllSubscribed => true,
                        ExtensionRoomConfig::Room(id) => id.as_str() == room.as_str(),
                        _ => false,
                    }),
                };
            by_list || by_subscription
        })
        .map(String::as_str)
        .collect()
}
