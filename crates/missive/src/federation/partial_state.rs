//! Completing a partial-state join: a resident server may leave the members out of its
//! `send_join` answer (`omit_members`), so that joining a large room does not wait for
//! thousands of member events. The join returns at once; this task then fetches the full
//! state before the join (`/state`) from the resident servers, checks it, and completes the
//! room's state. Until then the room's events are judged by their auth events only, its
//! events go to the servers the resident named too, and reads of its member list wait.
//! Rooms left partial by a restart are completed after it.

use std::{sync::Arc, time::Duration};

use ruma::{OwnedRoomId, OwnedServerName, RoomId, api::federation::event::get_room_state};

use super::Federation;
use crate::{
    error::{Error, Result},
    rooms::Rooms,
};

/// The longest wait between two rounds of asking every server.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

impl Federation {
    /// Completes a partial-state room in the background, asking `first` before the others.
    pub fn spawn_state_completion(
        self: &Arc<Self>,
        rooms: Arc<Rooms>,
        room_id: OwnedRoomId,
        first: Option<OwnedServerName>,
    ) {
        let federation = self.clone();
        tokio::spawn(async move { federation.complete_state(&rooms, &room_id, first).await });
    }

    /// Resumes the completion of every room a restart left of partial state.
    pub async fn resume_state_completions(self: &Arc<Self>, rooms: &Arc<Rooms>) -> Result<()> {
        for (room_id, _) in self.store.partial_state_rooms().await? {
            if let Ok(room_id) = RoomId::parse(&room_id) {
                self.spawn_state_completion(rooms.clone(), room_id, None);
            }
        }
        Ok(())
    }

    /// Asks each of the room's servers in turn for the state before this server's join,
    /// round after round (backing off) until one answers with a state that checks.
    async fn complete_state(&self, rooms: &Rooms, room_id: &RoomId, first: Option<OwnedServerName>) {
        let mut delay = Duration::from_secs(1);
        loop {
            let partial = match self.store.partial_state(room_id.as_str()).await {
                Ok(Some(partial)) => partial,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(%room_id, error = %e, "cannot read the room's partial state");
                    return;
                }
            };
            let mut servers: Vec<OwnedServerName> = first.iter().cloned().collect();
            for server in partial.servers.iter().filter_map(|s| OwnedServerName::try_from(s.as_str()).ok()) {
                if server != self.server_name && !servers.contains(&server) {
                    servers.push(server);
                }
            }
            for server in &servers {
                let started = std::time::Instant::now();
                match self.fetch_full_state(rooms, room_id, &partial.join_event_id, server).await {
                    Ok(added) => {
                        tracing::info!(
                            %room_id, %server, added, ms = started.elapsed().as_millis() as u64,
                            "completed the state of a room joined partially"
                        );
                        return;
                    }
                    Err(e) => tracing::info!(%room_id, %server, error = %e, "cannot fetch the room's full state"),
                }
            }
            tracing::warn!(%room_id, retry_in_s = delay.as_secs(), "the room's state is still partial");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// Fetches the state before the join from `server`, checks it and completes the room
    /// with it, only if every event of it checks: a state with a hole (a member event whose
    /// server's key cannot be had now, say) would leave that member's events refused for
    /// good, where a room kept partial a while longer still works. How many state entries
    /// the room lacked.
    async fn fetch_full_state(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        join_event_id: &str,
        server: &OwnedServerName,
    ) -> Result<usize> {
        let (room_version, rules) = rooms.version_of(room_id).await?;
        let event_id = ruma::OwnedEventId::try_from(join_event_id).map_err(|e| Error::Internal(e.to_string()))?;
        let answer = self.send(server, get_room_state::v1::Request::new(event_id, room_id.to_owned())).await?;
        let (state, chain) =
            self.checked_state(room_id, &room_version, &rules, &answer.pdus, &answer.auth_chain).await?;
        if state.len() < answer.pdus.len() {
            let left_out = answer.pdus.len() - state.len();
            return Err(Error::Remote(format!("{left_out} events of the state do not check")));
        }
        rooms.complete_partial_state(room_id, chain, state).await
    }
}
