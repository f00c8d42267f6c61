//! Reading and writing the timeline: send, redact, state, events, `/messages`, `/context`,
//! relations, threads, history visibility and bundled aggregations.

use std::collections::HashMap;

use ruma::{EventId, OwnedEventId, RoomId, UserId};
use serde_json::{Map, Value, json};

use super::{Draft, Rooms, pdu};
use crate::{
    error::{Error, Result},
    store::{EventRow, RelationRow, StateEntry, now_ms},
};

/// A pagination token: the position between two events. Sync tokens (`s…`) are accepted too.
pub fn parse_token(token: &str) -> Result<i64> {
    let digits = token.trim_start_matches(['t', 's']);
    let digits = digits.split('_').next().unwrap_or_default();
    digits.parse().map_err(|_| Error::invalid_param(format!("invalid pagination token {token:?}")))
}

/// How far a history visibility setting opens the room's history (higher: to more people).
fn openness(visibility: &str) -> u8 {
    match visibility {
        "world_readable" => 3,
        "shared" => 2,
        "invited" => 1,
        _ => 0,
    }
}

/// Formats a pagination token.
pub fn make_token(pos: i64) -> String {
    format!("t{pos}")
}

/// Where a page of events starts and ends, and how many it may hold.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub backwards: bool,
    pub limit: usize,
}

/// Who is looking: their user and device, for transaction IDs and visibility.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    pub user_id: &'a UserId,
    pub device_id: &'a str,
}

impl Rooms {
    /// Sends a message-like or state event as a local user, idempotently per transaction.
    pub async fn send(
        &self,
        sender: &UserId,
        device_id: &str,
        room_id: &RoomId,
        draft: Draft,
        txn_id: Option<&str>,
    ) -> Result<OwnedEventId> {
        self.check_state_policy(room_id, &draft).await?;
        // Setting the state the sender already set is a no-op that answers the event in
        // place, as Synapse does: clients re-send state freely (room settings dialogs).
        if let Some(state_key) = &draft.state_key
            && let Some(current) = self.store.current_state_event(room_id.as_str(), &draft.kind, state_key).await?
            && let Ok(pdu) = pdu::Pdu::from_row(&current)
            && pdu.sender == sender
            && pdu.content_value() == draft.content
        {
            return Ok(pdu.event_id);
        }
        let txn = txn_id.map(|t| (device_id.to_owned(), t.to_owned()));
        let revokes_guests = draft.kind == "m.room.guest_access"
            && draft.state_key.as_deref() == Some("")
            && draft.content.get("guest_access").and_then(Value::as_str) != Some("can_join");
        // Transaction IDs are checked under the room lock, so two concurrent retries store one
        // event.
        let event_id = self.send_grouped(room_id, sender, draft, txn).await?;
        if revokes_guests {
            self.remove_guests(room_id).await?;
        }
        Ok(event_id)
    }

    /// Server policy on state changes beyond the auth rules: canonical aliases that point to
    /// the room, mandatory encryption.
    async fn check_state_policy(&self, room_id: &RoomId, draft: &Draft) -> Result<()> {
        if draft.kind == "m.room.power_levels" && draft.state_key.as_deref() == Some("") {
            self.check_external_power(&draft.content).await?;
        }
        if draft.state_key.as_deref() == Some("") && draft.kind == "m.room.canonical_alias" {
            self.check_canonical_alias(room_id, &draft.content).await?;
        }
        if !self.encryption_mandatory || draft.state_key.is_none() {
            return Ok(());
        }
        let join_rule = self
            .current_state_content(room_id, "m.room.join_rules", "")
            .await?
            .and_then(|c| c["join_rule"].as_str().map(str::to_owned));
        let encrypted = self.store.current_state_event(room_id.as_str(), "m.room.encryption", "").await?.is_some();
        match draft.kind.as_str() {
            "m.room.encryption" => self.check_encryption(join_rule.as_deref() == Some("public"), &draft.content),
            "m.room.join_rules"
                if encrypted && draft.content.get("join_rule").and_then(Value::as_str) == Some("public") =>
            {
                Err(Error::forbidden("an encrypted room cannot be made public on this server"))
            }
            _ => Ok(()),
        }
    }

    pub(super) async fn append_redaction(
        &self,
        batch: &mut super::Batch,
        sender: &UserId,
        draft: Draft,
        txn: Option<(String, String)>,
    ) -> Result<OwnedEventId> {
        let target_id = draft
            .content
            .get("redacts")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("redaction without redacts"))?
            .to_owned();
        let target =
            self.store.event(&target_id).await?.ok_or_else(|| Error::not_found("event to redact not found"))?;
        if target.room_id != batch.head.room_id.as_str() {
            return Err(Error::invalid_param("the event to redact is in another room"));
        }
        let target_pdu = pdu::Pdu::from_row(&target)?;
        let power_levels = Self::power_levels(&batch.head);
        if target_pdu.sender != sender && !power_levels.user_can_redact_event_of_other(sender) {
            return Err(Error::forbidden("you may not redact other users' events"));
        }
        // The pruned form is computed first so that nothing is appended if it fails.
        let pruned = pruned_unless_redacted(&target, &batch.head.rules)?;
        let event_id = self.append(batch, sender, draft, txn).await?;
        if let Some(json) = pruned {
            batch.write.redactions.push((target_id, json, event_id.to_string()));
        }
        Ok(event_id)
    }

    /// Fails unless the user may read the room's current state and timeline.
    pub async fn require_member(&self, user_id: &UserId, room_id: &RoomId) -> Result<String> {
        match self.store.membership(room_id.as_str(), user_id.as_str()).await? {
            Some(m) if m.membership == "join" => Ok(m.membership),
            // A user who left reads the room as it was when they left; a banned user is
            // out of it (as Synapse answers): nothing more of the room is served to them.
            Some(m) if m.membership == "leave" => Ok(m.membership),
            Some(m) if m.membership == "ban" => Err(Error::forbidden("you are banned from this room")),
            _ => {
                if self.store.room(room_id.as_str()).await?.is_none() {
                    return Err(Error::not_found("room not found"));
                }
                if self.history_visibility_now(room_id).await? == "world_readable" {
                    Ok("world_readable".into())
                } else {
                    Err(Error::forbidden("you are not a member of this room"))
                }
            }
        }
    }

    async fn history_visibility_now(&self, room_id: &RoomId) -> Result<String> {
        Ok(self
            .store
            .current_state_event(room_id.as_str(), "m.room.history_visibility", "")
            .await?
            .and_then(|row| pdu::Pdu::from_row(&row).ok())
            .and_then(|p| p.content_str("history_visibility"))
            .unwrap_or_else(|| "shared".into()))
    }

    /// Keeps the events the user may see under the room's history visibility rules.
    pub async fn filter_visible(&self, user_id: &UserId, rows: Vec<EventRow>) -> Result<Vec<EventRow>> {
        self.filter_visible_known(user_id, rows, &HashMap::new()).await
    }

    /// Like [`Self::filter_visible`], with the user's current join position per room where the
    /// caller already knows it (`None`: not joined). Every state a check needs is read in
    /// one batch, whatever the number of rooms.
    pub async fn filter_visible_known(
        &self,
        user_id: &UserId,
        rows: Vec<EventRow>,
        known: &HashMap<String, Option<i64>>,
    ) -> Result<Vec<EventRow>> {
        // Per room: whether the user is joined now, and since which stream position.
        let mut joined_now: HashMap<String, Option<i64>> = HashMap::new();
        for row in &rows {
            if !joined_now.contains_key(&row.room_id) {
                let joined = match known.get(&row.room_id) {
                    Some(joined) => *joined,
                    None => self
                        .store
                        .membership(&row.room_id, user_id.as_str())
                        .await?
                        .filter(|m| m.membership == "join")
                        .map(|m| m.stream_pos),
                };
                joined_now.insert(row.room_id.clone(), joined);
            }
        }
        // Everything after the user's current join happened while they were joined, which
        // every history visibility setting allows them to see.
        let after_join = |row: &EventRow| joined_now[&row.room_id].is_some_and(|since| row.stream_pos > since);
        let mut groups: Vec<i64> = rows.iter().filter(|r| !after_join(r)).map(|r| r.state_group_before).collect();
        groups.sort_unstable();
        groups.dedup();
        let states = self.store.state_groups(&groups).await?;
        let find = |state: &[StateEntry], t: &str, k: &str| {
            state.iter().find(|(et, sk, _)| et == t && sk == k).map(|(_, _, e)| e.clone())
        };
        let wanted: Vec<String> = states
            .values()
            .flat_map(|state| {
                [find(state, "m.room.history_visibility", ""), find(state, "m.room.member", user_id.as_str())]
            })
            .flatten()
            .collect();
        let contents: HashMap<String, pdu::Pdu> = self
            .store
            .events(&wanted)
            .await?
            .iter()
            .filter_map(|row| pdu::Pdu::from_row(row).ok().map(|p| (row.event_id.clone(), p)))
            .collect();
        let content_of = |id: Option<String>, field: &str| id.and_then(|id| contents.get(&id)?.content_str(field));
        let ignored = self.ignored.of(&self.store, user_id).await?;
        // Messages of ignored users are not shown; their state changes still are, as the
        // room's state must stay whole.
        let from_ignored = |row: &EventRow| {
            !ignored.is_empty()
                && pdu::Pdu::from_row(row).is_ok_and(|p| p.state_key.is_none() && ignored.contains(p.sender.as_str()))
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            if from_ignored(&row) {
                continue;
            }
            if after_join(&row) {
                out.push(row);
                continue;
            }
            let state = states.get(&row.state_group_before).map(Vec::as_slice).unwrap_or_default();
            let mut visibility = content_of(find(state, "m.room.history_visibility", ""), "history_visibility")
                .unwrap_or_else(|| "shared".into());
            // A change of history visibility is seen under the more open of its two settings,
            // so that whoever it opens the room to sees it happen.
            if row.json.contains("\"m.room.history_visibility\"")
                && let Ok(pdu) = pdu::Pdu::from_row(&row)
                && pdu.kind.to_string() == "m.room.history_visibility"
                && let Some(new) = pdu.content_str("history_visibility")
                && openness(&new) > openness(&visibility)
            {
                visibility = new;
            }
            let membership = content_of(find(state, "m.room.member", user_id.as_str()), "membership")
                .unwrap_or_else(|| "leave".into());
            let visible = match visibility.as_str() {
                "world_readable" => true,
                "shared" => joined_now[&row.room_id].is_some() || membership == "join",
                "invited" => membership == "join" || membership == "invite",
                _ => membership == "join",
            };
            // A user always sees their own membership changes.
            if visible || self.is_own_membership(user_id, &row) {
                let mut row = row;
                if membership != "join" {
                    self.prune_if_erased(&mut row).await?;
                }
                out.push(row);
            }
        }
        Ok(out)
    }

    /// Serves the message of an erased sender in its redacted form (for a viewer who was
    /// not in the room when it was sent, and for other servers).
    pub(super) async fn prune_if_erased(&self, row: &mut EventRow) -> Result<()> {
        if !self.any_erased() {
            return Ok(());
        }
        let Ok(pdu) = pdu::Pdu::from_row(row) else { return Ok(()) };
        if pdu.state_key.is_some() || !self.is_erased(pdu.sender.as_str()) {
            return Ok(());
        }
        let (version, _) = self.store.room(&row.room_id).await?.ok_or_else(|| Error::not_found("room not found"))?;
        let (_, rules) = super::version::rules_for(&version)?;
        row.json = pruned(&row.json, &rules)?;
        Ok(())
    }

    fn is_own_membership(&self, user_id: &UserId, row: &EventRow) -> bool {
        pdu::Pdu::from_row(row)
            .is_ok_and(|p| p.kind.to_string() == "m.room.member" && p.state_key.as_deref() == Some(user_id.as_str()))
    }

    /// Serves events in the client format, with redactions and bundled aggregations filled in.
    pub async fn serve(&self, viewer: Viewer<'_>, rows: &[EventRow]) -> Result<Vec<Value>> {
        self.serve_with(viewer, rows, true).await
    }

    /// Like [`Self::serve`] without bundled aggregations: for state events, which do not
    /// carry them, and for events known to have no relations.
    pub async fn serve_unbundled(&self, viewer: Viewer<'_>, rows: &[EventRow]) -> Result<Vec<Value>> {
        self.serve_with(viewer, rows, false).await
    }

    async fn serve_with(&self, viewer: Viewer<'_>, rows: &[EventRow], bundled: bool) -> Result<Vec<Value>> {
        let now = now_ms();
        let relations = if bundled {
            let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
            self.store.relations_of(&ids).await?
        } else {
            Vec::new()
        };
        // Redactions of the events, and the state events they replaced (`prev_content`), in
        // one read; a replaced event that was itself redacted gives its pruned content.
        let linked_ids: Vec<String> =
            rows.iter().flat_map(|r| r.redacted_by.iter().chain(r.replaces_state.iter()).cloned()).collect();
        let linked: HashMap<String, EventRow> =
            self.store.events(&linked_ids).await?.into_iter().map(|r| (r.event_id.clone(), r)).collect();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut event = pdu::client_event(row, Some((viewer.user_id.as_str(), viewer.device_id)), now);
            let unsigned = event["unsigned"].as_object_mut().expect("client_event always sets unsigned");
            if let Some(by) = row.redacted_by.as_ref().and_then(|id| linked.get(id)) {
                unsigned.insert("redacted_because".into(), pdu::client_event(by, None, now));
                // Synapse's name for the redaction's ID, which clients and tools read too.
                unsigned.insert("redacted_by".into(), Value::String(by.event_id.clone()));
            }
            if let Some(replaced) = &row.replaces_state {
                unsigned.insert("replaces_state".into(), Value::String(replaced.clone()));
                // A replaced event the purge emptied has no content left to show.
                if let Some(previous) =
                    linked.get(replaced).filter(|r| !r.purged).map(|r| pdu::client_event(r, None, now))
                {
                    unsigned.insert("prev_content".into(), previous["content"].clone());
                    unsigned.insert("prev_sender".into(), previous["sender"].clone());
                }
            }
            let bundled = bundle(row, viewer.user_id, &relations);
            if !bundled.is_empty() {
                unsigned.insert("m.relations".into(), Value::Object(bundled));
            }
            out.push(event);
        }
        Ok(out)
    }

    /// One event, if the user may see it.
    pub async fn event_for(&self, viewer: Viewer<'_>, room_id: &RoomId, event_id: &EventId) -> Result<Value> {
        let row = self
            .store
            .event(event_id.as_str())
            .await?
            .filter(|r| r.room_id == room_id.as_str() && !r.purged)
            .ok_or_else(|| Error::not_found("event not found"))?;
        let visible = self.filter_visible(viewer.user_id, vec![row]).await?;
        let row = visible.into_iter().next().ok_or_else(|| Error::not_found("event not found"))?;
        Ok(self.serve(viewer, &[row]).await?.remove(0))
    }

    /// One event found by its ID alone (the deprecated `/events/{eventId}`), if the user may
    /// see it.
    pub async fn event_by_id(&self, viewer: Viewer<'_>, event_id: &EventId) -> Result<Value> {
        let row = self.store.event(event_id.as_str()).await?.ok_or_else(|| Error::not_found("event not found"))?;
        let room_id = RoomId::parse(&row.room_id).map_err(|e| Error::Internal(e.to_string()))?;
        self.event_for(viewer, &room_id, event_id).await
    }

    /// A page of the timeline: `(events, next token)`, from `from` in the given direction.
    pub async fn paginate(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        page: PageRequest<'_>,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<(Vec<Value>, String, Option<String>)> {
        let PageRequest { from, to, backwards, limit } = page;
        self.require_member(viewer.user_id, room_id).await?;
        let current = self.streams.current();
        let start = match from {
            Some(t) => parse_token(t)?,
            None if backwards => current,
            None => 0,
        };
        let end = to.map(parse_token).transpose()?;
        let limit = limit.clamp(1, 1000);
        let mut collected = Vec::new();
        let mut cursor = start;
        // Pages are read in bounded batches until enough visible, filter-matching events
        // are found or the timeline is exhausted.
        let next = loop {
            let (lo, hi) = if backwards { (end.unwrap_or(i64::MIN), cursor) } else { (cursor, end.unwrap_or(current)) };
            let rows = self.store.room_events(room_id.as_str(), lo, hi, backwards, (limit * 2) as i64).await?;
            let exhausted = rows.len() < limit * 2;
            let Some(last) = rows.last() else { break (!collected.is_empty()).then(|| make_token(cursor)) };
            cursor = if backwards { last.stream_pos - 1 } else { last.stream_pos };
            let rows = self.filter_visible(viewer.user_id, rows).await?;
            let served = self.serve(viewer, &rows).await?;
            for (row, event) in rows.iter().zip(served) {
                if keep(&event) {
                    collected.push(event);
                    if collected.len() == limit {
                        cursor = if backwards { row.stream_pos - 1 } else { row.stream_pos };
                        break;
                    }
                }
            }
            if collected.len() == limit {
                break Some(make_token(cursor));
            }
            if exhausted {
                // As Synapse does, a page that found events names where it stopped, and only
                // an empty page says the timeline is exhausted (clients rely on `end`).
                break (!collected.is_empty()).then(|| make_token(cursor));
            }
        };
        Ok((collected, make_token(start), next))
    }

    /// The event of the room closest to `ts` in the given direction that the viewer may
    /// see (`timestamp_to_event`): its ID and timestamp.
    pub async fn event_near_ts(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        ts: i64,
        forward: bool,
    ) -> Result<Option<(String, i64)>> {
        self.require_member(viewer.user_id, room_id).await?;
        let rows = self.store.events_near_ts(room_id.as_str(), ts, forward, 50).await?;
        let visible = self.filter_visible(viewer.user_id, rows).await?;
        Ok(visible
            .into_iter()
            .next()
            .and_then(|row| Some((row.event_id.clone(), pdu::Pdu::from_row(&row).ok()?.origin_server_ts.get().into()))))
    }

    /// Events around one event: `(before, event, after, start, end)`.
    pub async fn context(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        event_id: &EventId,
        limit: usize,
    ) -> Result<(Vec<Value>, Value, Vec<Value>, String, String)> {
        // Outsiders of a room that is not world-readable learn nothing of its events.
        self.require_member(viewer.user_id, room_id).await?;
        let event = self.event_for(viewer, room_id, event_id).await?;
        let row = self.store.event(event_id.as_str()).await?.ok_or_else(|| Error::not_found("event not found"))?;
        let before_n = limit / 2;
        let after_n = limit - before_n;
        let (before, _, start) = if before_n > 0 {
            self.paginate(
                viewer,
                room_id,
                PageRequest { from: Some(&make_token(row.stream_pos - 1)), to: None, backwards: true, limit: before_n },
                |_| true,
            )
            .await?
        } else {
            (Vec::new(), String::new(), None)
        };
        let (after, _, end) = if after_n > 0 {
            self.paginate(
                viewer,
                room_id,
                PageRequest { from: Some(&make_token(row.stream_pos)), to: None, backwards: false, limit: after_n },
                |_| true,
            )
            .await?
        } else {
            (Vec::new(), String::new(), None)
        };
        let start = start.unwrap_or_else(|| make_token(0));
        let end = end.unwrap_or_else(|| make_token(self.streams.current()));
        Ok((before, event, after, start, end))
    }

    /// The room state at an event (or now), as client events.
    pub async fn state_events(&self, viewer: Viewer<'_>, room_id: &RoomId) -> Result<Vec<Value>> {
        let membership = self.require_member(viewer.user_id, room_id).await?;
        let ids: Vec<String> = if membership == "join" || membership == "world_readable" {
            self.store.current_state(room_id.as_str()).await?.into_iter().map(|(_, _, e)| e).collect()
        } else {
            // Former members see the state as it was when they left.
            let m = self.store.membership(room_id.as_str(), viewer.user_id.as_str()).await?;
            let left = match m {
                Some(m) => self.store.event(&m.event_id).await?,
                None => None,
            };
            match left {
                Some(row) => {
                    let group = self.store.state_group(row.state_group_before).await?;
                    let mut ids: Vec<String> = group
                        .into_iter()
                        .filter(|(t, k, _)| !(t == "m.room.member" && k == viewer.user_id.as_str()))
                        .map(|(_, _, e)| e)
                        .collect();
                    ids.push(row.event_id);
                    ids
                }
                None => Vec::new(),
            }
        };
        let mut rows = self.store.events(&ids).await?;
        rows.retain(|r| !r.purged);
        self.serve(viewer, &rows).await
    }

    /// The content of one current state event.
    pub async fn state_content(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Value> {
        let membership = self.require_member(viewer.user_id, room_id).await?;
        let row = if membership == "join" || membership == "world_readable" {
            self.store.current_state_event(room_id.as_str(), kind, state_key).await?
        } else {
            let states = self.state_events(viewer, room_id).await?;
            return states
                .into_iter()
                .find(|e| e["type"] == kind && e["state_key"] == state_key)
                .map(|e| e["content"].clone())
                .ok_or_else(|| Error::not_found("state event not found"));
        };
        let row = row.ok_or_else(|| Error::not_found("state event not found"))?;
        let content = pdu::Pdu::from_row(&row)?.content_value();
        if row.redacted_by.is_some() && content.as_object().is_some_and(Map::is_empty) {
            return Err(Error::not_found("state event was redacted"));
        }
        Ok(content)
    }

    /// Events relating to a parent event.
    #[allow(clippy::too_many_arguments)]
    pub async fn relations(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        parent: &EventId,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        page: PageRequest<'_>,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let PageRequest { from, backwards, limit, .. } = page;
        self.event_for(viewer, room_id, parent).await?;
        let current = self.streams.current();
        let start = match from {
            Some(t) => parse_token(t)?,
            None if backwards => current,
            None => 0,
        };
        let (lo, hi) = if backwards { (0, start) } else { (start, current) };
        let limit = limit.clamp(1, 1000);
        let rows = self.store.relations(parent.as_str(), rel_type, lo, hi, backwards, limit as i64 + 1).await?;
        let more = rows.len() > limit;
        let rows: Vec<EventRow> = rows.into_iter().take(limit).collect();
        let next = if more {
            rows.last().map(|r| make_token(if backwards { r.stream_pos - 1 } else { r.stream_pos }))
        } else {
            None
        };
        let rows = self.filter_visible(viewer.user_id, rows).await?;
        let served = self.serve(viewer, &rows).await?;
        let chunk = served.into_iter().filter(|e| event_type.is_none_or(|t| e["type"] == t)).collect();
        Ok((chunk, next))
    }

    /// Thread roots of a room, most recently active first.
    pub async fn threads(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        from: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<String>)> {
        self.require_member(viewer.user_id, room_id).await?;
        let to = match from {
            Some(t) => parse_token(t)?,
            None => self.streams.current(),
        };
        let limit = limit.clamp(1, 100);
        let roots = self.store.thread_roots(room_id.as_str(), to, limit as i64 + 1).await?;
        let more = roots.len() > limit;
        let roots: Vec<(String, i64)> = roots.into_iter().take(limit).collect();
        let next = if more { roots.last().map(|(_, pos)| make_token(pos - 1)) } else { None };
        let ids: Vec<String> = roots.iter().map(|(id, _)| id.clone()).collect();
        let mut rows = self.store.events(&ids).await?;
        rows.retain(|r| !r.purged);
        rows.sort_by_key(|r| ids.iter().position(|id| id == &r.event_id));
        let rows = self.filter_visible(viewer.user_id, rows).await?;
        Ok((self.serve(viewer, &rows).await?, next))
    }
}

/// The bundled aggregations of an event (`unsigned.m.relations`).
fn bundle(row: &EventRow, viewer: &UserId, relations: &[RelationRow]) -> Map<String, Value> {
    let mut out = Map::new();
    if !relations.iter().any(|r| r.relates_to == row.event_id) {
        return out;
    }
    let original_sender = serde_json::from_str::<Value>(&row.json)
        .ok()
        .and_then(|v| v.get("sender").and_then(Value::as_str).map(str::to_owned));
    let mut latest_edit: Option<(&String, Value)> = None;
    let mut thread_count = 0;
    let mut thread_latest: Option<(&String, Value)> = None;
    let mut participated = false;
    let mut references = Vec::new();
    for relation in relations.iter().filter(|r| r.relates_to == row.event_id) {
        let Ok(rel) = serde_json::from_str::<Value>(&relation.json) else {
            continue;
        };
        let sender = rel.get("sender").and_then(Value::as_str).map(str::to_owned);
        match relation.rel_type.as_str() {
            "m.replace" if sender == original_sender => latest_edit = Some((&relation.event_id, rel)),
            "m.thread" => {
                thread_count += 1;
                participated |= sender.as_deref() == Some(viewer.as_str());
                thread_latest = Some((&relation.event_id, rel));
            }
            "m.reference" => references.push(json!({ "event_id": relation.event_id })),
            _ => {}
        }
    }
    if let Some((id, edit)) = latest_edit {
        out.insert("m.replace".into(), related_event(id, &edit, &row.room_id));
    }
    if !references.is_empty() {
        out.insert("m.reference".into(), json!({ "chunk": references }));
    }
    if let Some((id, latest)) = thread_latest {
        out.insert(
            "m.thread".into(),
            json!({
                "latest_event": related_event(id, &latest, &row.room_id),
                "count": thread_count,
                "current_user_participated": participated || original_sender.as_deref() == Some(viewer.as_str()),
            }),
        );
    }
    out
}

/// A related PDU in client format, as bundled in its parent.
fn related_event(event_id: &str, pdu_json: &Value, room_id: &str) -> Value {
    let mut out = Map::new();
    out.insert("event_id".into(), json!(event_id));
    for key in ["content", "origin_server_ts", "sender", "type"] {
        if let Some(v) = pdu_json.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    out.insert("room_id".into(), json!(room_id));
    Value::Object(out)
}

/// The pruned JSON that replaces an event its redaction reaches, unless it already was.
pub(super) fn pruned_unless_redacted(
    target: &crate::store::EventRow,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Result<Option<String>> {
    if target.redacted_by.is_some() {
        return Ok(None);
    }
    pruned(&target.json, rules).map(Some)
}

/// An event's JSON pruned by the room version's redaction algorithm: what the graph and
/// the auth rules need, no content.
pub(super) fn pruned(json: &str, rules: &ruma::room_version_rules::RoomVersionRules) -> Result<String> {
    let object: ruma::CanonicalJsonObject = serde_json::from_str(json).map_err(|e| Error::Internal(e.to_string()))?;
    let redacted =
        ruma::canonical_json::redact(object, &rules.redaction, None).map_err(|e| Error::Internal(e.to_string()))?;
    serde_json::to_string(&redacted).map_err(|e| Error::Internal(e.to_string()))
}
