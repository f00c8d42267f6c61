//! Rooms of a space hierarchy that this server does not hold, asked of the servers its
//! parent names (`federation/v1/hierarchy`).

use ruma::{RoomId, api::federation::space::get_hierarchy};
use serde_json::Value;

use super::Federation;
use crate::rooms::hierarchy::SpaceRoom;

impl Federation {
    /// The room as the first of `via` that answers describes it, with the summaries of its
    /// children that server holds; `None` when none answers.
    pub async fn space_room(
        &self,
        room_id: &RoomId,
        via: &[String],
        suggested_only: bool,
    ) -> Option<(SpaceRoom, Vec<Value>)> {
        for server in via {
            let Ok(server) = ruma::OwnedServerName::try_from(server.as_str()) else { continue };
            if server == self.server_name || !self.is_allowed(&server) {
                continue;
            }
            let mut request = get_hierarchy::v1::Request::new(room_id.to_owned());
            request.suggested_only = suggested_only;
            let answer = match self.send(&server, request).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "hierarchy refused");
                    continue;
                }
            };
            let Ok(mut summary) = serde_json::to_value(&answer.room) else { continue };
            if summary["room_id"] != room_id.as_str() {
                continue;
            }
            let children_state = match summary.as_object_mut().and_then(|o| o.remove("children_state")) {
                Some(Value::Array(events)) => events,
                _ => Vec::new(),
            };
            let allowed_room_ids = match summary.as_object_mut().and_then(|o| o.remove("allowed_room_ids")) {
                Some(Value::Array(ids)) => ids.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                _ => Vec::new(),
            };
            let children =
                answer.children.iter().filter_map(|c| serde_json::to_value(c).ok()).map(with_join_rule).collect();
            let summary = with_join_rule(summary);
            return Some((SpaceRoom { summary, children_state, allowed_room_ids }, children));
        }
        None
    }
}

/// A summary as ruma writes it leaves out the default join rule (public); clients get it
/// spelt out, as this server's own summaries have it.
fn with_join_rule(mut summary: Value) -> Value {
    if summary.get("join_rule").is_none() {
        summary["join_rule"] = Value::from("public");
    }
    summary
}
