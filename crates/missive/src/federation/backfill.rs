//! History older than what this server holds of a room (a late joiner's), fetched from the
//! room's other servers when a client paginates past it.

use ruma::{RoomId, UInt, api::federation::backfill::get_backfill};

use super::Federation;
use crate::{
    error::Result,
    rooms::{Rooms, federated::room_of},
};

/// At most this many events per request to a peer.
const MAX_BACKFILL: usize = 100;

impl Federation {
    /// Asks the room's other servers, in turn, for up to `limit` events before the room's
    /// earliest timeline event here, and stores those that pass the checks; returns how many
    /// entered the timeline (0 when the room's history here starts at its creation).
    pub async fn backfill(&self, rooms: &Rooms, room_id: &RoomId, limit: usize) -> Result<usize> {
        // One backfill at a time: two would fetch and store the same history.
        let _serial = self.backfilling.lock().await;
        let Some(earliest) = rooms.store.earliest_timeline_event(room_id.as_str()).await? else { return Ok(0) };
        if crate::rooms::pdu::Pdu::from_row(&earliest)?.kind == ruma::events::TimelineEventType::RoomCreate {
            return Ok(0);
        }
        let (version, rules) = rooms.version_of(room_id).await?;
        let create = match rooms.store.current_state_event(room_id.as_str(), "m.room.create", "").await? {
            Some(row) => Some(crate::rooms::pdu::Pdu::from_row(&row)?),
            None => None,
        };
        let create_id = create
            .as_ref()
            .filter(|_| rules.authorization.room_create_event_id_as_room_id)
            .map(|create| create.event_id.to_string());
        let from = ruma::OwnedEventId::try_from(earliest.event_id.as_str())
            .map_err(|e| crate::error::Error::Internal(e.to_string()))?;
        // The creator's server first: it holds the room's whole history, where a server
        // that joined later holds only what came after (and the state before) its join.
        let mut servers = rooms.resident_servers(room_id.as_str()).await?;
        if let Some(create) = &create
            && let Some(i) = servers.iter().position(|s| s == create.sender.server_name().as_str())
        {
            let origin = servers.remove(i);
            servers.insert(0, origin);
        }
        for server in servers {
            let Ok(server) = ruma::OwnedServerName::try_from(server) else { continue };
            if server == self.server_name || !self.is_allowed(&server) {
                continue;
            }
            let request = get_backfill::v1::Request::new(
                room_id.to_owned(),
                vec![from.clone()],
                UInt::try_from(limit.clamp(1, MAX_BACKFILL) as u64).unwrap_or(UInt::MIN),
            );
            let answer = match self.send(&server, request).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "backfill refused");
                    continue;
                }
            };
            let mut events = Vec::new();
            for raw in &answer.pdus {
                let named = room_of(raw);
                if named.as_ref().is_some_and(|id| id != room_id) {
                    continue;
                }
                match self.check_pdu(&version, &rules, raw).await {
                    // From room version 12 on the create event names no room: it is the
                    // room's own when its ID is the one this server holds.
                    Ok(checked) if named.is_none() && create_id.as_deref() != Some(checked.event_id.as_str()) => {}
                    Ok(checked) => events.push(checked),
                    Err(e) => tracing::info!(%room_id, %server, error = %e, "backfilled PDU refused"),
                }
            }
            let auth = self.missing_auth_events(rooms, room_id, &server, &events).await;
            let entered = rooms.store_backfilled(room_id, Some(&earliest), events, auth).await?;
            tracing::debug!(%room_id, %server, entered, "history backfilled");
            if entered > 0 {
                return Ok(entered);
            }
        }
        Ok(0)
    }

    /// The auth events of `events` that neither they nor this server hold, asked of
    /// `server` (`event_auth` of the events that lack them) and checked.
    pub(crate) async fn missing_auth_events(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        server: &ruma::ServerName,
        events: &[crate::federation::pdu::CheckedPdu],
    ) -> Vec<crate::federation::pdu::CheckedPdu> {
        let received: std::collections::HashSet<String> = events.iter().map(|e| e.event_id.to_string()).collect();
        let mut lacking = Vec::new();
        for event in events {
            let auth: Vec<String> =
                event.references("auth_events").into_iter().filter(|id| !received.contains(id)).collect();
            let Ok(held) = rooms.store.held_event_ids(&auth).await else { continue };
            if held.len() < auth.len() {
                lacking.push(event.event_id.clone());
            }
        }
        let Ok((version, rules)) = rooms.version_of(room_id).await else { return Vec::new() };
        let mut out = Vec::new();
        // A few requests at most: a history whose every event lacks its auth is not worth it.
        for event_id in lacking.into_iter().take(10) {
            let request = ruma::api::federation::authorization::get_event_authorization::v1::Request::new(
                room_id.to_owned(),
                event_id,
            );
            let Ok(answer) = self.send(server, request).await else { continue };
            for raw in &answer.auth_chain {
                if let Ok(checked) = self.check_pdu(&version, &rules, raw).await
                    && !out.iter().any(|e: &crate::federation::pdu::CheckedPdu| e.event_id == checked.event_id)
                {
                    out.push(checked);
                }
            }
        }
        out
    }
}
