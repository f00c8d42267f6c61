//! PDUs: the signed events of the room DAG, and their client-facing format.

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::TimelineEventType,
};
use serde::Deserialize;
use serde_json::{Map, Value, value::RawValue as RawJsonValue};

use crate::{
    error::{Error, Result},
    store::EventRow,
};

/// A PDU parsed from its stored JSON.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    /// Whether the PDU itself names its room (room version 12 create events do not).
    room_id_in_pdu: bool,
}

#[derive(Deserialize)]
struct PduFields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawJsonValue>,
    state_key: Option<String>,
    #[serde(default, deserialize_with = "event_references")]
    prev_events: Vec<OwnedEventId>,
    #[serde(default, deserialize_with = "event_references")]
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
    #[serde(default)]
    depth: u64,
}

/// Reads `prev_events`/`auth_events` as event IDs (room version 3 on) or as the
/// `[event_id, {hashes}]` pairs of room versions 1 and 2.
fn event_references<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<OwnedEventId>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Reference {
        Id(OwnedEventId),
        Pair(OwnedEventId, serde::de::IgnoredAny),
    }
    Ok(Vec::<Reference>::deserialize(d)?
        .into_iter()
        .map(|r| match r {
            Reference::Id(id) | Reference::Pair(id, _) => id,
        })
        .collect())
}

#[derive(Deserialize)]
struct RedactsInContent {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parses a PDU; `room_id` and `event_id` come from outside because room version 12
    /// create events and all event IDs are not part of the JSON.
    pub fn parse(event_id: &str, room_id: &str, json: &str) -> Result<Self> {
        let fields: PduFields =
            serde_json::from_str(json).map_err(|e| Error::Internal(format!("stored PDU does not parse: {e}")))?;
        // An event is only ever taken as one of the room it names: an auth event of another
        // room passed off as this one's would authorise what that room allows.
        if fields.room_id.as_ref().is_some_and(|named| named.as_str() != room_id) {
            return Err(Error::bad_json(format!("{event_id} is an event of another room")));
        }
        let redacts = fields.redacts.or_else(|| {
            if fields.kind == TimelineEventType::RoomRedaction {
                serde_json::from_str::<RedactsInContent>(fields.content.get()).ok().and_then(|c| c.redacts)
            } else {
                None
            }
        });
        Ok(Pdu {
            event_id: EventId::parse(event_id).map_err(|e| Error::Internal(e.to_string()))?,
            room_id: RoomId::parse(room_id).map_err(|e| Error::Internal(e.to_string()))?,
            sender: fields.sender,
            origin_server_ts: fields.origin_server_ts,
            kind: fields.kind,
            content: fields.content,
            state_key: fields.state_key,
            prev_events: fields.prev_events,
            auth_events: fields.auth_events,
            redacts,
            depth: fields.depth,
            room_id_in_pdu: fields.room_id.is_some(),
        })
    }

    /// Parses a stored row.
    pub fn from_row(row: &EventRow) -> Result<Self> {
        Self::parse(&row.event_id, &row.room_id, &row.json)
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Object(Map::new()))
    }

    /// Reads one string field of the content.
    pub fn content_str(&self, field: &str) -> Option<String> {
        self.content_value().get(field).and_then(Value::as_str).map(str::to_owned)
    }

    /// For a member event, the membership it sets.
    pub fn membership(&self) -> Option<String> {
        (self.kind == TimelineEventType::RoomMember).then(|| self.content_str("membership")).flatten()
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.room_id_in_pdu.then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawJsonValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        false
    }
}

/// The top-level PDU keys a client sees. Reading only these lets serde skip the federation
/// details (signatures, hashes, auth and prev events) without allocating them.
#[derive(serde::Deserialize)]
struct ClientKeys {
    content: Option<Value>,
    origin_server_ts: Option<Value>,
    sender: Option<Value>,
    state_key: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<Value>,
    redacts: Option<Value>,
}

/// Turns a stored event into the client-server format (`ClientEvent`), with `unsigned`
/// filled in for the viewing `(user, device)` (its own transaction ID).
pub fn client_event(row: &EventRow, viewer: Option<(&str, &str)>, now: i64) -> Value {
    let mut out = Map::new();
    let pdu: Option<ClientKeys> = serde_json::from_str(&row.json).ok();
    let sender_matches = viewer.is_some_and(|(sender, _)| {
        pdu.as_ref().and_then(|p| p.sender.as_ref()).and_then(Value::as_str) == Some(sender)
    });
    let ts = pdu.as_ref().and_then(|p| p.origin_server_ts.as_ref()).and_then(Value::as_i64);
    if let Some(pdu) = pdu {
        for (key, value) in [
            ("content", pdu.content),
            ("origin_server_ts", pdu.origin_server_ts),
            ("sender", pdu.sender),
            ("state_key", pdu.state_key),
            ("type", pdu.kind),
            ("redacts", pdu.redacts),
        ] {
            if let Some(value) = value {
                out.insert(key.to_owned(), value);
            }
        }
    }
    out.insert("event_id".into(), Value::String(row.event_id.clone()));
    out.insert("room_id".into(), Value::String(row.room_id.clone()));
    // Room version 11 moved `redacts` into the content; older clients still read the top level.
    if out.get("type").and_then(Value::as_str) == Some("m.room.redaction")
        && !out.contains_key("redacts")
        && let Some(r) = out.get("content").and_then(|c| c.get("redacts")).cloned()
    {
        out.insert("redacts".into(), r);
    }
    let mut unsigned = Map::new();
    if let Some(ts) = ts {
        unsigned.insert("age".into(), Value::from((now - ts).max(0)));
    }
    if let (Some((_, device)), Some(txn_device), Some(txn_id)) = (viewer, &row.txn_device_id, &row.txn_id)
        && device == txn_device
        && sender_matches
    {
        unsigned.insert("transaction_id".into(), Value::String(txn_id.clone()));
    }
    out.insert("unsigned".into(), Value::Object(unsigned));
    Value::Object(out)
}

/// Removes `room_id` from a client event (the sync format omits it).
pub fn sync_event(mut event: Value) -> Value {
    if let Some(obj) = event.as_object_mut() {
        obj.remove("room_id");
    }
    event
}

/// The stripped form of a state event (invites, knocks).
/// A room-describing event received from another server (a full PDU or already
/// stripped) as clients are shown it: type, state key, sender and content.
pub fn stripped_of_json(raw: &str) -> Option<Value> {
    let event: Value = serde_json::from_str(raw).ok()?;
    Some(serde_json::json!({
        "type": event.get("type")?, "state_key": event.get("state_key")?,
        "sender": event.get("sender")?, "content": event.get("content")?,
    }))
}

pub fn stripped_state(row: &EventRow) -> Value {
    let pdu: Map<String, Value> = serde_json::from_str(&row.json).unwrap_or_default();
    let mut out = Map::new();
    for key in ["content", "sender", "state_key", "type"] {
        if let Some(v) = pdu.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member_of(room_id: &str) -> String {
        serde_json::json!({
            "room_id": room_id, "sender": "@a:x", "type": "m.room.member", "state_key": "@a:x",
            "content": { "membership": "join" }, "origin_server_ts": 1, "depth": 2,
            "prev_events": [], "auth_events": [],
        })
        .to_string()
    }

    #[test]
    fn an_event_is_taken_only_as_one_of_the_room_it_names() {
        assert!(Pdu::parse("$e", "!a:x", &member_of("!a:x")).is_ok());
        assert!(matches!(Pdu::parse("$e", "!a:x", &member_of("!b:x")), Err(Error::BadJson(_))));
    }
}
