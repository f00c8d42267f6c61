//! Spaces: the rooms under a space, across servers.

use std::collections::{HashMap, HashSet};

use axum::{Router, response::Response};
use ruma::api::client::space::get_hierarchy;
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
    rooms::hierarchy::{Asker, SpaceRoom},
};

/// Rooms walked at most per request, and how deep by default.
const MAX_ROOMS: usize = 500;
const DEFAULT_DEPTH: usize = 10;

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    route(router, hierarchy)
}

/// # GET /_matrix/client/v1/rooms/{roomId}/hierarchy
///
/// The space and the rooms under it, depth first, children in their `order`; rooms this
/// server does not hold are asked of the servers their parent names. A room the user may
/// not preview is left out with what is under it.
async fn hierarchy(state: AppState, req: Ruma<get_hierarchy::v1::Request>) -> Result<Response> {
    let b = &req.body;
    let user_id = &req.identity().user_id;
    let offset: usize = match &b.from {
        Some(token) => token
            .strip_prefix('h')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::invalid_param("invalid from token"))?,
        None => 0,
    };
    let limit = b.limit.map_or(50, |l| u64::from(l) as usize).clamp(1, 100);
    let max_depth = b.max_depth.map_or(DEFAULT_DEPTH, |d| u64::from(d) as usize);
    let root_via: Vec<String> = b.room_id.server_name().map(|s| vec![s.to_string()]).unwrap_or_default();
    let mut stack: Vec<(ruma::OwnedRoomId, usize, Vec<String>)> = vec![(b.room_id.clone(), 0, root_via)];
    let mut seen = HashSet::new();
    let mut known_summaries: HashMap<String, Value> = HashMap::new();
    let mut rooms = Vec::new();
    while let Some((room_id, depth, via)) = stack.pop() {
        if !seen.insert(room_id.clone()) {
            continue;
        }
        if rooms.len() > offset + limit || rooms.len() >= MAX_ROOMS {
            break;
        }
        let is_root = depth == 0;
        let room = match state.rooms.space_room(&room_id).await? {
            Some(room) => state.rooms.may_preview(&room, Asker::User(user_id)).await?.then_some(room),
            None => match known_summaries.remove(room_id.as_str()) {
                // A leaf described with its parent: no need to ask again.
                Some(summary) if summary["room_type"] != "m.space" || depth >= max_depth => {
                    Some(SpaceRoom { summary, children_state: Vec::new(), allowed_room_ids: Vec::new() })
                }
                _ => match state.federation.space_room(&room_id, &via, b.suggested_only).await {
                    Some((room, children)) => {
                        for child in children {
                            if let Some(id) = child["room_id"].as_str() {
                                known_summaries.insert(id.to_owned(), child);
                            }
                        }
                        Some(room)
                    }
                    None => None,
                },
            },
        };
        let Some(room) = room else {
            if is_root {
                return Err(Error::forbidden("you may not see this space"));
            }
            continue;
        };
        if depth < max_depth {
            // Pushed last first, so that the first child is walked next.
            for child in room.children(b.suggested_only).into_iter().rev() {
                stack.push((child.room_id, depth + 1, child.via));
            }
        }
        rooms.push(room.client_chunk());
    }
    let more = rooms.len() > offset + limit;
    let page: Vec<Value> = rooms.into_iter().skip(offset).take(limit).collect();
    let mut body = json!({ "rooms": page });
    if more {
        body["next_batch"] = json!(format!("h{}", offset + limit));
    }
    Ok(json(body))
}
