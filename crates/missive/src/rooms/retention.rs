//! The retention purge of room history: messages older than their room's lifetime are
//! deleted, and superseded state older than the metadata retention is emptied.
//!
//! The room's graph stays valid for new events: an event the next one builds on (a leaf)
//! and a state event that auth chains and old states name are kept, pruned as a redaction
//! would (the auth rules and state resolution read only what pruning keeps), moved out of
//! the timeline and marked purged so that no client read serves them. The room's current
//! state is in force and never purged. Each batch is one short transaction, so sends and
//! syncs never wait long, and a purge cut short (a crash, a restart) resumes on its next
//! run: a deleted event stays deleted, an emptied one is never looked at again.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Rooms, timeline::pruned, version};
use ruma::RoomId;

use crate::{
    error::{Error, Result},
    privacy::DAY_MS,
    store::{PurgeRoom, PurgeStub},
};

/// Events examined per batch (one transaction each): small enough that a send waiting
/// behind a batch's transaction waits a few milliseconds at most.
const BATCH: i64 = 200;

/// How long room history is kept: the server's default, the bounds within which a room's
/// own `m.room.retention` is honoured, and the metadata retention for replaced state.
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryPolicy {
    /// Days messages are kept where the room says nothing (none: kept).
    pub content_days: Option<u64>,
    /// Days replaced state events are kept (none: kept).
    pub metadata_days: Option<u64>,
    /// The shortest `max_lifetime` a room may set, in days.
    pub min_days: Option<u64>,
    /// The longest `max_lifetime` a room may set, in days.
    pub max_days: Option<u64>,
}

impl HistoryPolicy {
    /// The lifetime of a room's messages in ms: its own `max_lifetime` (the JSON of its
    /// `m.room.retention` event) within the bounds, else the server's default.
    pub fn lifetime_ms(&self, retention_event: Option<&str>) -> Option<i64> {
        let own = retention_event
            .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
            .and_then(|event| event["content"]["max_lifetime"].as_i64())
            .filter(|ms| *ms > 0);
        let days = |d: u64| (d as i64).saturating_mul(DAY_MS);
        match own {
            Some(ms) => {
                let ms = self.min_days.map_or(ms, |min| ms.max(days(min)));
                Some(self.max_days.map_or(ms, |max| ms.min(days(max))))
            }
            None => self.content_days.map(days),
        }
    }
}

/// What a history purge did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HistoryPurged {
    /// Rooms whose history was looked at.
    pub rooms: u64,
    /// Events deleted.
    pub events_deleted: u64,
    /// Events emptied and kept for the room's graph.
    pub events_emptied: u64,
}

impl Rooms {
    /// Purges every room's history as of `now` (ms); rooms and users under a legal hold
    /// keep theirs.
    pub async fn purge_history(&self, now: i64) -> Result<HistoryPurged> {
        let policy = &self.history;
        let mut done = HistoryPurged::default();
        let metadata_cutoff = policy.metadata_days.map(|d| now - (d as i64).saturating_mul(DAY_MS));
        let held = self.store.held_users().await?;
        for room in self.store.rooms_for_purge(None).await? {
            let content_cutoff = policy.lifetime_ms(room.retention_event.as_deref()).map(|ms| now - ms);
            if content_cutoff.is_none() && metadata_cutoff.is_none() {
                continue;
            }
            done.rooms += 1;
            let (deleted, emptied) =
                self.purge_room(&room, content_cutoff, metadata_cutoff, &|sender| held.contains(sender)).await?;
            if deleted + emptied > 0 {
                tracing::info!(room_id = %room.room_id, deleted, emptied, "room history purged");
            }
            done.events_deleted += deleted;
            done.events_emptied += emptied;
        }
        Ok(done)
    }

    async fn purge_room(
        &self,
        room: &PurgeRoom,
        content_cutoff: Option<i64>,
        metadata_cutoff: Option<i64>,
        kept_sender: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(u64, u64)> {
        let (_, rules) = version::rules_for(&room.room_version)?;
        // Events are examined in stream order until a message younger than every cutoff:
        // what follows is younger still (but for a clock's slips, which the next run takes).
        let horizon = content_cutoff.into_iter().chain(metadata_cutoff).max().unwrap_or(i64::MIN);
        let (mut deleted_total, mut emptied_total) = (0, 0);
        let mut after = i64::MIN;
        loop {
            let batch = self.store.purge_candidates(&room.room_id, after, BATCH).await?;
            let Some(last) = batch.last() else { break };
            after = last.stream_pos;
            let mut deleted = Vec::new();
            let mut stubs = Vec::new();
            let mut reached_horizon = false;
            for event in &batch {
                if !event.is_state && event.stream_pos > 0 && event.ts >= horizon {
                    reached_horizon = true;
                    break;
                }
                if kept_sender(&event.sender) {
                    continue;
                }
                let expired = if event.is_state {
                    !event.current_state && metadata_cutoff.is_some_and(|cutoff| event.ts < cutoff)
                } else {
                    content_cutoff.is_some_and(|cutoff| event.ts < cutoff)
                };
                if !expired {
                    continue;
                }
                if event.is_state || event.extremity {
                    let json = if event.redacted { event.json.clone() } else { pruned(&event.json, &rules)? };
                    let new_pos = self.next_outlier.fetch_sub(1, Ordering::SeqCst);
                    stubs.push(PurgeStub { stream_pos: event.stream_pos, new_pos, json });
                } else {
                    deleted.push(event.stream_pos);
                }
            }
            let started = std::time::Instant::now();
            self.store.purge_room_events(&room.room_id, &deleted, &stubs).await?;
            // As long again for everyone else: the purge is background work, and on SQLite
            // its transactions and the rooms' commits take turns at the one writer.
            tokio::time::sleep(started.elapsed()).await;
            deleted_total += deleted.len() as u64;
            emptied_total += stubs.len() as u64;
            if reached_horizon || (batch.len() as i64) < BATCH {
                break;
            }
        }
        Ok((deleted_total, emptied_total))
    }

    /// An operator's purge of one room's messages older than `before` (ms), Synapse's
    /// `purge_history`: events of local users stay unless `delete_local`, those of users
    /// under a legal hold always; a room under a hold is refused.
    pub async fn purge_room_before(&self, room_id: &RoomId, before: i64, delete_local: bool) -> Result<HistoryPurged> {
        let room = self
            .store
            .rooms_for_purge(Some(room_id.as_str()))
            .await?
            .pop()
            .ok_or_else(|| Error::forbidden("the room is unknown or under a legal hold"))?;
        let held = self.store.held_users().await?;
        let server = self.server_name.as_str();
        let kept = |sender: &str| {
            held.contains(sender) || (!delete_local && sender.rsplit_once(':').is_some_and(|(_, s)| s == server))
        };
        let (events_deleted, events_emptied) = self.purge_room(&room, Some(before), None, &kept).await?;
        tracing::info!(%room_id, deleted = events_deleted, emptied = events_emptied, "room history purged by an operator");
        Ok(HistoryPurged { rooms: 1, events_deleted, events_emptied })
    }

    /// Erases the content of every message `user_id` sent, in every room (the events stay,
    /// pruned as a redaction would: the rooms' graph needs them); answers how many.
    /// Idempotent, so a run cut short is simply run again.
    pub async fn erase_content(&self, user_id: &str) -> Result<u64> {
        let mut after = i64::MIN;
        let mut erased = 0;
        loop {
            let batch = self.store.messages_to_erase(user_id, after, BATCH).await?;
            let Some((last, ..)) = batch.last() else { break };
            after = *last;
            let mut pruned_rows = Vec::with_capacity(batch.len());
            for (_, event_id, room_version, json) in &batch {
                let (_, rules) = version::rules_for(room_version)?;
                pruned_rows.push((event_id.clone(), pruned(json, &rules)?));
            }
            self.store.erase_events_content(&pruned_rows).await?;
            erased += pruned_rows.len() as u64;
            if (batch.len() as i64) < BATCH {
                break;
            }
        }
        Ok(erased)
    }

    /// Before when a room's messages are past their lifetime as of `now`, if they have one:
    /// history older than that is not taken again from other servers.
    pub async fn history_cutoff(&self, room_id: &str, now: i64) -> Result<Option<i64>> {
        let retention_event = self.store.current_state_event(room_id, "m.room.retention", "").await?;
        Ok(self.history.lifetime_ms(retention_event.as_ref().map(|row| row.json.as_str())).map(|ms| now - ms))
    }
}
