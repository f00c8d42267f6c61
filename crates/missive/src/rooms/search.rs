//! `/search`: full-text search of the rooms a user is in.
//!
//! Only what the server can read is searched: message bodies, room names and topics of
//! unencrypted rooms (an encrypted room's messages are ciphertext to the server, and stay
//! unsearchable here; clients search them locally). Candidates are found by the store
//! with a case-insensitive match on every word, then checked against the searched fields
//! themselves, the history visibility and the request's filter.

use std::collections::{BTreeMap, HashMap};

use ruma::{RoomId, api::client::filter::RoomEventFilter};
use serde_json::{Map, Value, json};

use super::{
    Rooms,
    timeline::{PageRequest, Viewer, make_token},
};
use crate::{
    error::{Error, Result},
    filter,
};

/// Most candidate events read per batch while filling a page of results.
const CANDIDATE_BATCH: i64 = 200;

/// Most candidates examined for one page: a search is bounded work, whatever it matches.
const CANDIDATE_BUDGET: usize = 5000;

/// What a `room_events` search asks for.
pub struct SearchRequest<'a> {
    pub term: &'a str,
    /// Searched fields: `content.body`, `content.name`, `content.topic`.
    pub keys: Vec<String>,
    pub filter: &'a RoomEventFilter,
    /// Newest first (`recent`) rather than best match first (`rank`).
    pub recent: bool,
    /// `(before, after, include_profile)` when context is asked for.
    pub context: Option<(usize, usize, bool)>,
    pub include_state: bool,
    pub group_by_room: bool,
    pub group_by_sender: bool,
    pub next_batch: Option<&'a str>,
}

impl Rooms {
    /// Searches the rooms the user is joined to; answers the `room_events` category.
    pub async fn search(&self, viewer: Viewer<'_>, req: SearchRequest<'_>) -> Result<Value> {
        let words: Vec<String> = req.term.to_lowercase().split_whitespace().map(str::to_owned).collect();
        if words.is_empty() {
            return Err(Error::invalid_param("search_term is empty"));
        }
        let keys: Vec<&str> = if req.keys.is_empty() {
            vec!["content.body", "content.name", "content.topic"]
        } else {
            req.keys.iter().map(String::as_str).collect()
        };
        let mut before = match req.next_batch {
            Some(token) => token
                .strip_prefix('p')
                .and_then(|pos| pos.parse::<i64>().ok())
                .ok_or_else(|| Error::invalid_param("invalid next_batch"))?,
            None => i64::MAX,
        };
        let rooms: Vec<String> = self
            .store
            .memberships_of_user(viewer.user_id.as_str(), None)
            .await?
            .into_iter()
            .filter(|m| m.membership == "join")
            .map(|m| m.room_id)
            .filter(|room| {
                !req.filter.not_rooms.iter().any(|r| r == room)
                    && req.filter.rooms.as_ref().is_none_or(|rooms| rooms.iter().any(|r| r == room))
            })
            .collect();
        let limit = req.filter.limit.map_or(10, |l| u64::from(l) as usize).clamp(1, 100);

        let mut found: Vec<(i64, u32, String, Value)> = Vec::new();
        let mut examined = 0;
        let mut exhausted = false;
        while found.len() < limit && examined < CANDIDATE_BUDGET {
            let rows = self.store.search_candidates(&rooms, &words, before, CANDIDATE_BATCH).await?;
            examined += rows.len();
            let Some(last) = rows.last() else {
                exhausted = true;
                break;
            };
            before = last.stream_pos;
            let short = (rows.len() as i64) < CANDIDATE_BATCH;
            let rows = self.filter_visible(viewer.user_id, rows).await?;
            let served = self.serve(viewer, &rows).await?;
            for (row, event) in rows.iter().zip(served) {
                let Some(rank) = rank(&event, &keys, &words) else { continue };
                if !filter::event_matches(req.filter, &event) {
                    continue;
                }
                found.push((row.stream_pos, rank, row.room_id.clone(), event));
                if found.len() == limit {
                    before = row.stream_pos;
                    break;
                }
            }
            if short && found.len() < limit {
                exhausted = true;
                break;
            }
        }
        if !req.recent {
            found.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        }

        let mut results = Vec::with_capacity(found.len());
        let mut by_room: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut by_sender: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for (pos, rank, room_id, event) in &found {
            let mut result = json!({ "rank": rank, "result": event });
            if let Some((n_before, n_after, profile)) = req.context {
                result["context"] = self.search_context(viewer, room_id, *pos, n_before, n_after, profile).await?;
            }
            by_room.entry(room_id.clone()).or_default().push(event["event_id"].clone());
            if let Some(sender) = event["sender"].as_str() {
                by_sender.entry(sender.to_owned()).or_default().push(event["event_id"].clone());
            }
            results.push(result);
        }
        let next_batch = (!exhausted && !found.is_empty()).then(|| format!("p{before}"));
        let mut out = json!({
            "results": results,
            "count": found.len(),
            "highlights": words,
        });
        if let Some(next) = &next_batch {
            out["next_batch"] = json!(next);
        }
        let mut groups = Map::new();
        for (key, wanted, grouped) in
            [("room_id", req.group_by_room, by_room), ("sender", req.group_by_sender, by_sender)]
        {
            if !wanted {
                continue;
            }
            let mut group = Map::new();
            for (order, (name, ids)) in grouped.into_iter().enumerate() {
                let mut entry = json!({ "results": ids, "order": order });
                if let Some(next) = &next_batch {
                    entry["next_batch"] = json!(next);
                }
                group.insert(name, entry);
            }
            groups.insert(key.to_owned(), Value::Object(group));
        }
        if !groups.is_empty() {
            out["groups"] = Value::Object(groups);
        }
        if req.include_state {
            let mut state = Map::new();
            for room_id in found.iter().map(|f| &f.2).collect::<std::collections::BTreeSet<_>>() {
                let room = RoomId::parse(room_id).map_err(|e| Error::Internal(e.to_string()))?;
                state.insert(room_id.clone(), json!(self.state_events(viewer, &room).await?));
            }
            out["state"] = Value::Object(state);
        }
        Ok(out)
    }

    /// The events around a search result, with the senders' profiles if asked.
    async fn search_context(
        &self,
        viewer: Viewer<'_>,
        room_id: &str,
        pos: i64,
        n_before: usize,
        n_after: usize,
        include_profile: bool,
    ) -> Result<Value> {
        let room = RoomId::parse(room_id).map_err(|e| Error::Internal(e.to_string()))?;
        let back = make_token(pos - 1);
        let forward = make_token(pos);
        let (before, _, start) = if n_before > 0 {
            let page = PageRequest { from: Some(&back), to: None, backwards: true, limit: n_before };
            self.paginate(viewer, &room, page, |_| true).await?
        } else {
            (Vec::new(), back.clone(), None)
        };
        let (after, _, end) = if n_after > 0 {
            let page = PageRequest { from: Some(&forward), to: None, backwards: false, limit: n_after };
            self.paginate(viewer, &room, page, |_| true).await?
        } else {
            (Vec::new(), forward.clone(), None)
        };
        let mut context = json!({
            "events_before": before,
            "events_after": after,
            "start": start.unwrap_or(back),
            "end": end.unwrap_or(forward),
        });
        if include_profile {
            let mut profiles: HashMap<String, Value> = HashMap::new();
            for event in before.iter().chain(&after) {
                let Some(sender) = event["sender"].as_str() else { continue };
                if profiles.contains_key(sender) {
                    continue;
                }
                let (name, avatar) = self.store.profile(sender).await?.unwrap_or_default();
                profiles.insert(sender.to_owned(), json!({ "displayname": name, "avatar_url": avatar }));
            }
            context["profile_info"] = json!(profiles);
        }
        Ok(context)
    }
}

/// How well a served event matches: the number of times the words occur in the searched
/// fields, or `None` when one of the words is missing from all of them.
fn rank(event: &Value, keys: &[&str], words: &[String]) -> Option<u32> {
    let text: String = keys
        .iter()
        .filter_map(|key| {
            let field = key.strip_prefix("content.")?;
            event["content"].get(field)?.as_str().map(str::to_lowercase)
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut rank = 0;
    for word in words {
        let hits = text.matches(word.as_str()).count() as u32;
        if hits == 0 {
            return None;
        }
        rank += hits;
    }
    Some(rank)
}
