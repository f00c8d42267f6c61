//! The state at an event this server lacks and could not pull: a prev event of one that
//! `get_missing_events` brought, beyond what it was asked (the spec's gap too wide to
//! fill). Its origin is asked the state before it (`/state_ids`, then `/state` when this
//! server lacks events of it) and the event itself (`/event`), so that the events building
//! on it are judged by the state of their branch.

use ruma::{
    EventId, RoomId, ServerName,
    api::federation::event::{get_event, get_room_state, get_room_state_ids},
};

use super::Federation;
use crate::{
    error::{Error, Result},
    rooms::{Rooms, federated::room_of},
};

impl Federation {
    /// Fetches the state before `event_id` and the event itself from `server`, checks them,
    /// and stores them outside the timeline (see `Rooms::take_state_at`).
    pub async fn fetch_state_at(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        server: &ServerName,
        event_id: &EventId,
    ) -> Result<()> {
        let (room_version, rules) = rooms.version_of(room_id).await?;
        let request = get_room_state_ids::v1::Request::new(event_id.to_owned(), room_id.to_owned());
        let ids = self.send(server, request).await?;
        let state_ids: Vec<String> = ids.pdu_ids.iter().map(ToString::to_string).collect();
        let wanted: Vec<String> =
            state_ids.iter().cloned().chain(ids.auth_chain_ids.iter().map(ToString::to_string)).collect();
        let held = rooms.store.held_event_ids(&wanted).await?;
        let (state, chain) = if wanted.iter().all(|id| held.contains(id)) {
            let rows = rooms.store.events(&state_ids).await?;
            let state = rows.into_iter().filter_map(|r| Some((ruma::OwnedEventId::try_from(r.event_id).ok()?, r.json)));
            (state.collect::<Vec<_>>(), Vec::new())
        } else {
            let request = get_room_state::v1::Request::new(event_id.to_owned(), room_id.to_owned());
            let answer = self.send(server, request).await?;
            let (state, chain) =
                self.checked_state(room_id, &room_version, &rules, &answer.pdus, &answer.auth_chain).await?;
            if state.len() < answer.pdus.len() {
                return Err(Error::Remote("events of the state at the event do not check".into()));
            }
            (state, chain)
        };
        if state.len() < state_ids.len() {
            return Err(Error::Remote("the state at the event lacks events it names".into()));
        }
        let answer = self.send(server, get_event::v1::Request::new(event_id.to_owned())).await?;
        if room_of(&answer.pdu).is_some_and(|named| named != room_id) {
            return Err(Error::Remote("the event is of another room".into()));
        }
        let event = self.check_pdu(&room_version, &rules, &answer.pdu).await?;
        if event.event_id != event_id {
            return Err(Error::Remote("another event was answered".into()));
        }
        rooms.take_state_at(room_id, event, chain, state).await
    }
}
