//! Event filters (`/user/{userId}/filter`, sync and `/messages` filters).

use ruma::api::client::filter::{Filter, FilterDefinition, LazyLoadOptions, RoomEventFilter};
use serde_json::Value;

/// Whether a type matches a filter pattern (`*` is a wildcard).
fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == kind,
        Some((prefix, suffix)) => {
            kind.len() >= prefix.len() + suffix.len() && kind.starts_with(prefix) && kind.ends_with(suffix)
        }
    }
}

/// Whether a client-format event passes a room event filter.
pub fn event_matches(filter: &RoomEventFilter, event: &Value) -> bool {
    let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
    let sender = event.get("sender").and_then(Value::as_str).unwrap_or_default();
    if filter.not_types.iter().any(|p| type_matches(p, kind)) {
        return false;
    }
    if let Some(types) = &filter.types
        && !types.iter().any(|p| type_matches(p, kind))
    {
        return false;
    }
    if filter.not_senders.iter().any(|s| s == sender) {
        return false;
    }
    if let Some(senders) = &filter.senders
        && !senders.iter().any(|s| s == sender)
    {
        return false;
    }
    if let Some(want_url) = filter.url_filter {
        let has_url = event.get("content").and_then(|c| c.get("url")).is_some();
        if has_url != matches!(want_url, ruma::api::client::filter::UrlFilter::EventsWithUrl) {
            return false;
        }
    }
    true
}

/// Whether a non-room event (presence, account data) passes an event filter.
pub fn event_allowed(filter: &Filter, event: &Value) -> bool {
    let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
    let sender = event.get("sender").and_then(Value::as_str).unwrap_or_default();
    if filter.not_types.iter().any(|p| type_matches(p, kind)) || filter.not_senders.iter().any(|s| s == sender) {
        return false;
    }
    if filter.types.as_ref().is_some_and(|types| !types.iter().any(|p| type_matches(p, kind))) {
        return false;
    }
    filter.senders.as_ref().is_none_or(|senders| senders.iter().any(|s| s == sender))
}

/// Whether a room event filter selects by type, sender or URL (beyond a mere limit).
pub fn is_selective(filter: &RoomEventFilter) -> bool {
    filter.types.is_some()
        || !filter.not_types.is_empty()
        || filter.senders.is_some()
        || !filter.not_senders.is_empty()
        || filter.url_filter.is_some()
}

/// Whether a room passes the room lists of a filter.
pub fn room_allowed(filter: &FilterDefinition, room_id: &str) -> bool {
    let room = &filter.room;
    if room.not_rooms.iter().any(|r| r == room_id) {
        return false;
    }
    room.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
}

/// Whether member events are lazy-loaded.
pub fn lazy_members(filter: &RoomEventFilter) -> bool {
    matches!(filter.lazy_load_options, LazyLoadOptions::Enabled { .. })
}

/// Whether lazy-loaded members are sent again even when the device has them.
pub fn redundant_members(filter: &RoomEventFilter) -> bool {
    matches!(filter.lazy_load_options, LazyLoadOptions::Enabled { include_redundant_members: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_prefixes() {
        assert!(type_matches("m.room.*", "m.room.message"));
        assert!(!type_matches("m.room.*", "m.reaction"));
        assert!(type_matches("*", "anything"));
        assert!(type_matches("m.room.message", "m.room.message"));
    }

    #[test]
    fn filter_excludes_types_and_senders() {
        let mut filter = RoomEventFilter::default();
        filter.not_types = vec!["m.reaction".into()];
        let reaction = serde_json::json!({ "type": "m.reaction", "sender": "@a:x" });
        let message = serde_json::json!({ "type": "m.room.message", "sender": "@a:x" });
        assert!(!event_matches(&filter, &reaction));
        assert!(event_matches(&filter, &message));
        filter.senders = Some(vec!["@b:x".try_into().unwrap()]);
        assert!(!event_matches(&filter, &message));
    }
}
