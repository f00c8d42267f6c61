//! Rooms shared with other servers: the join template a remote user signs (`make_join`),
//! and PDUs received from other servers, admitted through the same authorisation and
//! commit path as the events built here.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::EventsReferenceFormatVersion,
    state_res,
};
use serde_json::{Value, json, value::to_raw_value};

use super::{Batch, Recorded, Rooms, pdu::Pdu};
use crate::{
    error::{Error, Result},
    federation::pdu::CheckedPdu,
    store::{EventRow, now_ms},
};

/// What became of a received PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Stored,
    AlreadyKnown,
}

impl Rooms {
    /// A join event for `user_id` of another server to sign (`make_join`), with the room
    /// version, if that server supports it.
    pub async fn make_join(&self, room_id: &RoomId, user_id: &UserId, supported: &[RoomVersionId]) -> Result<Value> {
        let head = self.resident_head(room_id, supported).await?;
        // Who may not join gets no template (the join itself is checked again on send_join).
        let join_rule = head
            .state_pdu("m.room.join_rules", "")
            .and_then(|p| p.content_str("join_rule"))
            .unwrap_or_else(|| "invite".into());
        // Memberships are read from the store: the head parses state events on demand only.
        let membership = self.store.membership(room_id.as_str(), user_id.as_str()).await?.map(|m| m.membership);
        if membership.as_deref() == Some("ban") {
            return Err(Error::forbidden("user is banned from the room"));
        }
        if join_rule != "public" && !matches!(membership.as_deref(), Some("invite" | "join")) {
            return Err(Error::forbidden("the room is not open to this user"));
        }
        self.membership_template(&head, room_id, user_id, "join")
    }

    /// The head of a room this server may make membership templates for: one of its users
    /// is in it (a server whose users all left cannot vouch for it), and the asking server
    /// supports its version.
    async fn resident_head(&self, room_id: &RoomId, supported: &[RoomVersionId]) -> Result<super::RoomHead> {
        let head = self.head(room_id).await?;
        let own = format!(":{}", self.server_name);
        if !head.joined.iter().any(|user| user.ends_with(&own)) {
            return Err(Error::not_found("no user of this server is in the room"));
        }
        if !supported.contains(&head.version) {
            return Err(Error::IncompatibleRoomVersion(head.version.to_string()));
        }
        Ok(head)
    }

    /// A knock event for `user_id` of another server to sign (`make_knock`), in a room
    /// whose version knows knocking and whose join rule lets one knock.
    pub async fn make_knock(&self, room_id: &RoomId, user_id: &UserId, supported: &[RoomVersionId]) -> Result<Value> {
        let head = self.resident_head(room_id, supported).await?;
        if !head.rules.authorization.knocking {
            return Err(Error::IncompatibleRoomVersion(head.version.to_string()));
        }
        let join_rule = head.state_pdu("m.room.join_rules", "").and_then(|p| p.content_str("join_rule"));
        let knockable = match join_rule.as_deref() {
            Some("knock") => true,
            Some("knock_restricted") => head.rules.authorization.knock_restricted_join_rule,
            _ => false,
        };
        if !knockable {
            return Err(Error::forbidden("the room does not take knocks"));
        }
        let membership = self.store.membership(room_id.as_str(), user_id.as_str()).await?.map(|m| m.membership);
        match membership.as_deref() {
            Some("ban") => return Err(Error::forbidden("user is banned from the room")),
            Some("join") => return Err(Error::forbidden("user is already in the room")),
            _ => {}
        }
        self.membership_template(&head, room_id, user_id, "knock")
    }

    /// A leave event for `user_id` of another server to sign (`make_leave`): how a server
    /// that is not in the room turns down an invite.
    pub async fn make_leave(&self, room_id: &RoomId, user_id: &UserId) -> Result<Value> {
        let head = self.head(room_id).await?;
        let membership = self.store.membership(room_id.as_str(), user_id.as_str()).await?.map(|m| m.membership);
        if !matches!(membership.as_deref(), Some("invite" | "join" | "knock")) {
            return Err(Error::forbidden("the user is not in the room"));
        }
        self.membership_template(&head, room_id, user_id, "leave")
    }

    /// A membership event template on the room's current head.
    fn membership_template(
        &self,
        head: &super::RoomHead,
        room_id: &RoomId,
        user_id: &UserId,
        membership: &str,
    ) -> Result<Value> {
        let content = json!({ "membership": membership });
        let raw = to_raw_value(&content).map_err(|e| Error::Internal(e.to_string()))?;
        let auth_types = state_res::auth_types_for_event(
            &TimelineEventType::RoomMember,
            user_id,
            Some(user_id.as_str()),
            &raw,
            &head.rules.authorization,
        )
        .map_err(Error::BadJson)?;
        let mut auth_events: Vec<String> =
            auth_types.iter().filter_map(|(t, k)| head.state_id(&t.to_string(), k)).map(ToString::to_string).collect();
        auth_events.sort();
        auth_events.dedup();
        let pairs = head.rules.events_reference_format == EventsReferenceFormatVersion::V1;
        let refs = |ids: Vec<String>| -> Value {
            Value::Array(ids.into_iter().map(|id| if pairs { json!([id, {}]) } else { json!(id) }).collect())
        };
        let event = json!({
            "room_id": room_id,
            "sender": user_id,
            "state_key": user_id,
            "type": "m.room.member",
            "content": content,
            "origin": user_id.server_name(),
            "origin_server_ts": now_ms(),
            "depth": head.depth + 1,
            "prev_events": refs(head.extremities.iter().map(ToString::to_string).collect()),
            "auth_events": refs(auth_events),
        });
        Ok(json!({ "room_version": head.version, "event": event }))
    }

    /// Admits a PDU received from another server, its signatures already checked: it must
    /// pass the authorisation rules against its own auth events and against the room's
    /// current state. `relay_from` names the origin of a join admitted through
    /// `send_join`, which this server then sends to the room's other servers.
    pub async fn admit_remote(
        &self,
        room_id: &RoomId,
        checked: CheckedPdu,
        relay_from: Option<String>,
    ) -> Result<Admitted> {
        Ok(self.admit_remote_with_state(room_id, checked, relay_from).await?.0)
    }

    /// [`Self::admit_remote`], with the room's state before the event when it was stored
    /// building on the room's leaves (the state a joining server is answered with, at
    /// hand instead of read back).
    pub async fn admit_remote_with_state(
        &self,
        room_id: &RoomId,
        checked: CheckedPdu,
        relay_from: Option<String>,
    ) -> Result<(Admitted, Option<Arc<super::resolve::StateIds>>)> {
        if self.store.event(checked.event_id.as_str()).await?.is_some() {
            return Ok((Admitted::AlreadyKnown, None));
        }
        match checked.object.get("room_id") {
            Some(CanonicalJsonValue::String(id)) if id == room_id.as_str() => {}
            _ => return Err(Error::bad_json("PDU of another room")),
        }
        let prev_events: Vec<OwnedEventId> =
            checked.references("prev_events").into_iter().filter_map(|id| OwnedEventId::try_from(id).ok()).collect();
        let before = self
            .write(room_id, async |rooms: &Self, batch: &mut Batch| {
                let before = same_set(&prev_events, &batch.head.extremities).then(|| batch.head.state.clone());
                rooms.admit(batch, checked, relay_from).await?;
                Ok(before)
            })
            .await?;
        Ok((Admitted::Stored, before))
    }

    /// Admits PDUs of one room received together (a transaction), in order, in one write
    /// (one commit for them all): each gets its own result, and one refused changes
    /// nothing of the others.
    pub async fn admit_remote_many(
        &self,
        room_id: &RoomId,
        pdus: Vec<CheckedPdu>,
    ) -> Result<Vec<(OwnedEventId, Result<Admitted>)>> {
        let ids: Vec<String> = pdus.iter().map(|p| p.event_id.to_string()).collect();
        let known = self.store.held_event_ids(&ids).await?;
        let mut results = Vec::with_capacity(pdus.len());
        let mut fresh = Vec::new();
        for checked in pdus {
            if known.contains(checked.event_id.as_str()) {
                results.push((checked.event_id, Ok(Admitted::AlreadyKnown)));
            } else if !matches!(checked.object.get("room_id"), Some(CanonicalJsonValue::String(id)) if id == room_id.as_str())
            {
                results.push((checked.event_id, Err(Error::bad_json("PDU of another room"))));
            } else {
                fresh.push(checked);
            }
        }
        if fresh.is_empty() {
            return Ok(results);
        }
        let admitted = self
            .write(room_id, async |rooms: &Self, batch: &mut Batch| {
                let mut out = Vec::with_capacity(fresh.len());
                for checked in fresh {
                    let event_id = checked.event_id.clone();
                    match rooms.admit(batch, checked, None).await {
                        Ok(()) => out.push((event_id, Ok(Admitted::Stored))),
                        // Refused before anything was recorded: the others go on.
                        Err(e @ (Error::Forbidden(_) | Error::BadJson(_))) => out.push((event_id, Err(e))),
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            })
            .await?;
        results.extend(admitted);
        Ok(results)
    }

    async fn admit(&self, batch: &mut Batch, checked: CheckedPdu, relay_from: Option<String>) -> Result<()> {
        let CheckedPdu { event_id, object } = checked;
        if batch.write.events.iter().any(|e| e.event_id == event_id.as_str()) {
            return Ok(());
        }
        let json = serde_json::to_string(&object).map_err(|e| Error::Internal(e.to_string()))?;
        let pdu = Pdu::parse(event_id.as_str(), batch.head.room_id.as_str(), &json)
            .map_err(|e| Error::bad_json(format!("malformed PDU: {e}")))?;
        if pdu.kind == TimelineEventType::RoomCreate {
            return Err(Error::forbidden("a room has one create event"));
        }
        let mut needed = pdu.auth_events.clone();
        // From room version 12 on, the create event is the room ID, not an auth event.
        if let Some(create) = batch.head.state_id("m.room.create", "") {
            needed.push(create.clone());
        }
        self.load_pdus(&mut batch.head, &needed).await?;
        let missing: Vec<&OwnedEventId> =
            pdu.auth_events.iter().filter(|id| !batch.head.pdus.contains_key(*id)).collect();
        if !missing.is_empty() {
            return Err(Error::forbidden(format!("auth events unknown here: {missing:?}")));
        }
        let rules = batch.head.rules.clone();
        let head = &batch.head;
        let create = head.state_pdu("m.room.create", "").map(|p| p.as_ref());
        check_against_auth_events(&rules.authorization, &pdu, create, |id| head.pdus.get(id).map(|p| p.as_ref()))?;
        // The state before it: the room's current state when it builds on this server's
        // leaves, else the resolution of the states after its prev events (a branch).
        // While the room's state lacks its members, neither that state nor the current one
        // can judge an event: its auth events alone do, as for a room's history.
        let partial = batch.head.partial_servers.is_some();
        let before = if partial || same_set(&pdu.prev_events, &batch.head.extremities) {
            None
        } else {
            // A branch whose state is the room's (concurrent messages) needs no resolution.
            self.state_before(&mut batch.head, &pdu.prev_events).await?.filter(|b| *b != *batch.head.state)
        };
        if let Some(before) = &before {
            let head = &batch.head;
            state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |t: &StateEventType, k: &str| {
                before.get(&(t.to_string(), k.to_owned())).and_then(|id| head.pdus.get(id)).map(|p| p.as_ref())
            })
            .map_err(|e| Error::forbidden(format!("event not authorised by the state before it: {e}")))?;
        }
        // ...and against the room's current state: an event of a branch that fails there is
        // soft-failed (kept, for the events that build on it, but never served nor a leaf).
        let head = &batch.head;
        let now_allowed = if partial {
            Ok(())
        } else {
            state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |t: &StateEventType, k: &str| {
                head.state_pdu(&t.to_string(), k).map(|p| p.as_ref())
            })
        };
        let before = match (now_allowed, before) {
            (Ok(()), before) => before,
            (Err(e), None) => return Err(Error::forbidden(format!("event not authorised by the room's state: {e}"))),
            (Err(e), Some(before)) => {
                tracing::info!(room_id = %batch.head.room_id, %event_id, error = %e, "event soft-failed");
                self.soft_fail(batch, &pdu, json, before);
                return Ok(());
            }
        };

        let prev: HashSet<&OwnedEventId> = pdu.prev_events.iter().collect();
        let mut extremities: Vec<OwnedEventId> =
            batch.head.extremities.iter().filter(|id| !prev.contains(id)).cloned().collect();
        extremities.push(event_id.clone());
        let prev_events = pdu.prev_events.iter().map(ToString::to_string).collect();
        let content = pdu.content_value();
        let (depth, ts) = (pdu.depth as i64, i64::from(pdu.origin_server_ts.get()));
        // A redaction from another server really deletes here too, when it may: its sender
        // is of the target's server, or has the power to redact others' events.
        let mut pruned = None;
        let target = match (&pdu.kind, &pdu.redacts) {
            (TimelineEventType::RoomRedaction, Some(target_id)) => self.store.event(target_id.as_str()).await?,
            _ => None,
        };
        // A redaction names an event of its own room: one aimed at another room's event is
        // refused, not kept as a redaction of nothing (as Synapse does).
        if target.as_ref().is_some_and(|t| t.room_id != batch.head.room_id.as_str()) {
            return Err(Error::forbidden("the redaction names an event of another room"));
        }
        if let Some(target_id) = &pdu.redacts
            && let Some(target) = target
        {
            let target_sender = Pdu::from_row(&target)?.sender;
            let same_server = target_sender.server_name() == pdu.sender.server_name();
            if same_server || Self::power_levels(&batch.head).user_can_redact_event_of_other(&pdu.sender) {
                pruned = super::timeline::pruned_unless_redacted(&target, &batch.head.rules)?
                    .map(|json| (target_id.to_string(), json));
            }
        }
        batch.received.insert(event_id.to_string(), relay_from);
        let current_before = before.as_ref().map(|before| self.build_on_branch(batch, before));
        self.record(batch, Recorded { pdu, json, depth, ts, prev_events, txn: None }, &content);
        if let Some((target_id, json)) = pruned {
            batch.write.redactions.push((target_id, json, event_id.to_string()));
        }
        if let Some(current_before) = current_before {
            self.resolve_branches(batch, &extremities, current_before).await?;
        }
        batch.head.extremities = extremities;
        tracing::debug!(room_id = %batch.head.room_id, %event_id, "remote event admitted");
        Ok(())
    }

    /// Stores an event that passes the rules against the state before it but not against
    /// the room's current state (soft-failed, per the spec): below stream position zero,
    /// so never served to clients nor a leaf, with the state groups of its branch so that
    /// events building on it resolve their state.
    fn soft_fail(&self, batch: &mut Batch, pdu: &Pdu, json: String, before: super::resolve::StateIds) {
        let group_before = self.snapshot_group(batch, &before);
        let mut group_after = group_before;
        if let Some(key) = &pdu.state_key {
            group_after = self.next_group.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            batch.write.state_groups.push(crate::store::NewStateGroup {
                id: group_after,
                prev_group: Some(group_before),
                chain_len: 1,
                delta: vec![(pdu.kind.to_string(), key.clone(), pdu.event_id.to_string())],
            });
        }
        let pos = self.next_outlier.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let mut row = row_of_received(pdu, json, pos, Vec::new(), group_before);
        row.state_group_after = group_after;
        // Its origin's to send; this server relays nothing of it.
        batch.received.insert(pdu.event_id.to_string(), None);
        batch.write.events.push(row);
    }

    /// Creates a room this server learns of by joining it through another server. The state
    /// and auth chain the resident server sent are stored as outliers (below stream position
    /// zero: never in a timeline), the state as the room's state before the join, and the
    /// join, checked against it, as the room's first event here. With `partial_servers`
    /// (the resident left the members out), the room is of partial state until
    /// [`Self::complete_partial_state`].
    pub async fn persist_remote_join(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        chain: Vec<(OwnedEventId, String)>,
        state: Vec<(OwnedEventId, String)>,
        join: (OwnedEventId, String),
        partial_servers: Option<Vec<String>>,
    ) -> Result<()> {
        if self.store.room(room_id.as_str()).await?.is_some() {
            return self.rejoin_remote(room_id, chain, state, join).await;
        }
        let (version, rules) = super::version::rules_for(version.as_str())?;
        let mut batch = Batch::new(super::RoomHead::empty(room_id.to_owned(), version.clone(), rules.clone()));
        let in_state: HashSet<OwnedEventId> = state.iter().map(|(id, _)| id.clone()).collect();
        // Events already here (the invite that brought the user) are not stored twice.
        let known = self.held_of(&chain, &state).await?;
        let group = self.next_group.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut creator = None;
        // The auth chain's superseded events first: the state written after them is current.
        let ordered = chain.into_iter().filter(|(id, _)| !in_state.contains(id)).map(|e| (e, false));
        for ((event_id, json), current) in ordered.chain(state.into_iter().map(|e| (e, true))) {
            if batch.write.events.iter().any(|e| e.event_id == event_id.as_str()) {
                continue;
            }
            let pdu = Pdu::parse(event_id.as_str(), room_id.as_str(), &json)?;
            let stored = known.contains(event_id.as_str());
            let membership = pdu.membership();
            if pdu.kind == TimelineEventType::RoomCreate {
                creator = Some(pdu.sender.to_string());
            }
            if current && let Some(key) = &pdu.state_key {
                Arc::make_mut(&mut batch.head.state).insert((pdu.kind.to_string(), key.clone()), event_id.clone());
                if membership.as_deref() == Some("join") {
                    Arc::make_mut(&mut batch.head.joined).insert(key.clone());
                }
                Arc::make_mut(&mut batch.head.pdus).insert(event_id.clone(), Arc::new(pdu.clone()));
            }
            batch.head.depth = batch.head.depth.max(pdu.depth);
            if stored {
                continue;
            }
            let pos = self.next_outlier.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            batch.write.events.push(row_of_received(&pdu, json, pos, Vec::new(), group));
        }
        let creator = creator.ok_or_else(|| Error::bad_json("the room's state has no create event"))?;
        batch.write.state_groups.push(crate::store::NewStateGroup {
            id: group,
            prev_group: None,
            chain_len: 0,
            delta: batch.head.state.iter().map(|((t, k), e)| (t.clone(), k.clone(), e.to_string())).collect(),
        });
        batch.head.group = group;
        batch.write.new_room =
            Some(crate::store::NewRoom { room_id: room_id.to_string(), room_version: version.to_string(), creator });

        self.record_join(&mut batch, &join)?;
        if let Some(servers) = partial_servers {
            batch.write.partial_state = Some(crate::store::PartialStateChange::Begin {
                join_event_id: join.0.to_string(),
                servers: servers.clone(),
            });
            batch.head.partial_servers = Some(servers.into());
        }
        batch.head.extremities = vec![join.0];
        let joiner = batch.write.events.last().and_then(|e| e.state_key.clone()).unwrap_or_default();
        self.commit_new_room(batch).await?;
        self.store.drop_remote_invite(room_id.as_str(), &joiner, false).await?;
        Ok(())
    }

    /// Records a local user's join made through a resident server, checked against the
    /// state the batch's head holds; the resident server sends it to the room's others.
    fn record_join(&self, batch: &mut Batch, (event_id, json): &(OwnedEventId, String)) -> Result<()> {
        let pdu = Pdu::parse(event_id.as_str(), batch.head.room_id.as_str(), json)?;
        let head = &batch.head;
        state_res::check_state_dependent_auth_rules(&head.rules.authorization, &pdu, |t: &StateEventType, k: &str| {
            head.state_pdu(&t.to_string(), k).map(|p| p.as_ref())
        })
        .map_err(|e| Error::forbidden(format!("the join does not pass the room's rules: {e}")))?;
        let prev_events = pdu.prev_events.iter().map(ToString::to_string).collect();
        let content = pdu.content_value();
        let (depth, ts) = (pdu.depth as i64, i64::from(pdu.origin_server_ts.get()));
        batch.received.insert(event_id.to_string(), None);
        self.record(batch, Recorded { pdu, json: json.clone(), depth, ts, prev_events, txn: None }, &content);
        Ok(())
    }

    /// A room this server knows but had left, joined again through another server: what
    /// it missed meanwhile is the resident server's answer. Unknown events are stored as
    /// outliers, the room's state becomes the answered state (a `Resolution` after the
    /// join, which is checked against it), and the join is the room's only leaf here.
    async fn rejoin_remote(
        &self,
        room_id: &RoomId,
        chain: Vec<(OwnedEventId, String)>,
        state: Vec<(OwnedEventId, String)>,
        join: (OwnedEventId, String),
    ) -> Result<()> {
        let held = self.held_of(&chain, &state).await?;
        self.write(room_id, async |rooms: &Self, batch: &mut Batch| {
            let new_state = rooms.take_remote_state(batch, &chain, &state, &held)?;
            if !new_state.contains_key(&("m.room.create".to_owned(), String::new())) {
                return Err(Error::bad_json("the room's state has no create event"));
            }
            let ids: Vec<OwnedEventId> = new_state.values().cloned().collect();
            rooms.load_pdus(&mut batch.head, &ids).await?;
            let current_before = rooms.build_on_branch(batch, &new_state);
            rooms.record_join(batch, &join)?;
            let rejoined = (*batch.head.state).clone();
            rooms.set_current_state(batch, current_before, rejoined).await?;
            batch.head.extremities = vec![join.0.clone()];
            batch.write.reset_extremities = true;
            Ok(())
        })
        .await?;
        let joiner = ruma::UserId::parse(
            serde_json::from_str::<Value>(&join.1)
                .ok()
                .and_then(|v| v["state_key"].as_str().map(str::to_owned))
                .unwrap_or_default(),
        );
        if let Ok(joiner) = joiner {
            self.store.drop_remote_invite(room_id.as_str(), joiner.as_str(), false).await?;
        }
        Ok(())
    }

    /// Completes a room of partial state with the full state before the join, fetched from
    /// a resident server (`state`, with its auth chain): each entry the room's state lacks
    /// is added (those it has came with the join or changed since), and the events not held
    /// are stored as outliers. Memberships so learnt take stream position zero: they were
    /// in the room before this server. Returns how many entries were added (none when the
    /// room was no longer partial).
    pub async fn complete_partial_state(
        &self,
        room_id: &RoomId,
        chain: Vec<(OwnedEventId, String)>,
        state: Vec<(OwnedEventId, String)>,
    ) -> Result<usize> {
        let held = self.held_of(&chain, &state).await?;
        let completed = self
            .write_alone(room_id, async |rooms: &Self, batch: &mut Batch| {
                if batch.head.partial_servers.is_none() {
                    return Ok(0);
                }
                let fetched = rooms.take_remote_state(batch, &chain, &state, &held)?;
                let added: super::resolve::StateIds = fetched
                    .iter()
                    .filter(|(key, _)| !batch.head.state.contains_key(*key))
                    .map(|(key, id)| (key.clone(), id.clone()))
                    .collect();
                // The states of the events received meanwhile lack the same entries: the
                // snapshots they build on get them too (those stored as deltas follow).
                let completed_groups = rooms.complete_snapshots(room_id, &fetched).await?;
                let ids: Vec<OwnedEventId> = added.values().cloned().collect();
                let count = ids.len();
                rooms.load_pdus(&mut batch.head, &ids).await?;
                let mut full = (*batch.head.state).clone();
                let mut joined = (*batch.head.joined).clone();
                let mut set = Vec::with_capacity(added.len());
                for ((kind, key), id) in added {
                    let membership = batch.head.pdus.get(&id).and_then(|pdu| pdu.membership());
                    if membership.as_deref() == Some("join") {
                        joined.insert(key.clone());
                    }
                    set.push((kind.clone(), key.clone(), id.to_string(), membership));
                    full.insert((kind, key), id);
                }
                let group = rooms.snapshot_group(batch, &full);
                batch.write.resolutions.push(crate::store::Resolution {
                    // After every event of the write: they are outliers, and the write
                    // is committed alone.
                    after_event: batch.write.events.len(),
                    group,
                    set,
                    removed: Vec::new(),
                    stream_pos: 0,
                });
                batch.write.partial_state = Some(crate::store::PartialStateChange::End { completed_groups });
                batch.head.state = Arc::new(full);
                batch.head.joined = Arc::new(joined);
                batch.head.group = group;
                batch.head.chain_len = 0;
                batch.head.partial_servers = None;
                Ok(count)
            })
            .await?;
        self.states_completed.send_modify(|n| *n += 1);
        Ok(completed)
    }

    /// Stores an event this server could not pull in order (a prev event of one it pulled)
    /// outside the timeline, with the state before it as another server answered it
    /// (`state` and its auth chain, whose events not held here go outside the timeline
    /// too): the events that build on it are then judged by the state of their branch. The
    /// event must pass the rules against its auth events.
    pub async fn take_state_at(
        &self,
        room_id: &RoomId,
        event: CheckedPdu,
        chain: Vec<(OwnedEventId, String)>,
        state: Vec<(OwnedEventId, String)>,
    ) -> Result<()> {
        let json = serde_json::to_string(&event.object).map_err(|e| Error::Internal(e.to_string()))?;
        let pdu = Pdu::parse(event.event_id.as_str(), room_id.as_str(), &json)?;
        if !self.store.held_event_ids(&[pdu.event_id.to_string()]).await?.is_empty() {
            return Ok(());
        }
        let held = self.held_of(&chain, &state).await?;
        self.write_alone(room_id, async |rooms: &Self, batch: &mut Batch| {
            let before = rooms.take_remote_state(batch, &chain, &state, &held)?;
            rooms.load_pdus(&mut batch.head, &pdu.auth_events).await?;
            let rules = batch.head.rules.clone();
            let head = &batch.head;
            let create = head.state_pdu("m.room.create", "").map(|p| p.as_ref());
            check_against_auth_events(&rules.authorization, &pdu, create, |id| head.pdus.get(id).map(|p| p.as_ref()))?;
            let group = rooms.snapshot_group(batch, &before);
            let pos = rooms.next_outlier.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            let prev_events = pdu.prev_events.iter().map(ToString::to_string).collect();
            batch.write.events.push(row_of_received(&pdu, json.clone(), pos, prev_events, group));
            Ok(())
        })
        .await?;
        tracing::debug!(%room_id, event_id = %pdu.event_id, "event beyond a gap stored with its state");
        Ok(())
    }

    /// Timeline events as other servers receive them (`/event`, `/backfill`,
    /// `get_missing_events`): the messages of users erased here go out pruned, their
    /// content is not to leave the server any more (still signed: a pruned event checks).
    pub async fn history_pdus(&self, mut rows: Vec<EventRow>) -> Result<Vec<Value>> {
        for row in &mut rows {
            self.prune_if_erased(row).await?;
        }
        Ok(pdus(rows))
    }

    /// Which events of a state answered by another server (and its auth chain) are held.
    async fn held_of(
        &self,
        chain: &[(OwnedEventId, String)],
        state: &[(OwnedEventId, String)],
    ) -> Result<HashSet<String>> {
        let ids: Vec<String> = chain.iter().chain(state).map(|(id, _)| id.to_string()).collect();
        Ok(self.store.held_event_ids(&ids).await?)
    }

    /// Takes a state answered by another server (`state`, with its auth chain) into a
    /// write: the events not `held` here as outliers, all of them into the head's parsed
    /// events; returns the state they make.
    fn take_remote_state(
        &self,
        batch: &mut Batch,
        chain: &[(OwnedEventId, String)],
        state: &[(OwnedEventId, String)],
        held: &HashSet<String>,
    ) -> Result<super::resolve::StateIds> {
        let room_id = batch.head.room_id.clone();
        let in_state: HashSet<&OwnedEventId> = state.iter().map(|(id, _)| id).collect();
        let mut taken = super::resolve::StateIds::new();
        let mut stored = HashSet::new();
        for (event_id, json) in chain.iter().chain(state) {
            let pdu = Pdu::parse(event_id.as_str(), room_id.as_str(), json)?;
            if in_state.contains(event_id)
                && let Some(key) = &pdu.state_key
            {
                taken.insert((pdu.kind.to_string(), key.clone()), event_id.clone());
            }
            batch.head.depth = batch.head.depth.max(pdu.depth);
            if held.contains(event_id.as_str()) || !stored.insert(event_id.clone()) {
                continue;
            }
            let pos = self.next_outlier.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            batch.write.events.push(row_of_received(&pdu, json.clone(), pos, Vec::new(), 0));
            Arc::make_mut(&mut batch.head.pdus).insert(event_id.clone(), Arc::new(pdu));
        }
        Ok(taken)
    }

    /// The snapshot state groups of a room of partial state made since its join, each
    /// with the entries of `full` (the state before the join) it lacks.
    async fn complete_snapshots(
        &self,
        room_id: &RoomId,
        full: &super::resolve::StateIds,
    ) -> Result<Vec<(i64, Vec<crate::store::StateEntry>)>> {
        let Some(partial) = self.store.partial_state(room_id.as_str()).await? else { return Ok(Vec::new()) };
        let Some(join) = self.store.event(&partial.join_event_id).await? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for (group, mut entries) in self.store.snapshot_groups_since(room_id.as_str(), join.state_group_before).await? {
            let held: HashSet<(String, String)> = entries.iter().map(|(t, k, _)| (t.clone(), k.clone())).collect();
            let before = entries.len();
            entries.extend(
                full.iter()
                    .filter(|(key, _)| !held.contains(*key))
                    .map(|((kind, key), id)| (kind.clone(), key.clone(), id.to_string())),
            );
            if entries.len() > before {
                out.push((group, entries));
            }
        }
        Ok(out)
    }

    /// Stores the membership event (an invite, or the leave that declined one) of a room
    /// of another server this server is not in, with a stream position so that the user's
    /// sync shows it.
    async fn store_out_of_room_membership(&self, room_id: &RoomId, checked: CheckedPdu) -> Result<()> {
        let CheckedPdu { event_id, object } = checked;
        if self.store.event(event_id.as_str()).await?.is_some() {
            return Ok(());
        }
        let json = serde_json::to_string(&object).map_err(|e| Error::Internal(e.to_string()))?;
        let pdu = Pdu::parse(event_id.as_str(), room_id.as_str(), &json)?;
        if pdu.state_key.is_none() {
            return Err(Error::bad_json("a membership event has a target"));
        }
        let prev_events = pdu.prev_events.iter().map(ToString::to_string).collect();
        let guard = self.streams.allocate_for(crate::sync::stream::Scope::event(
            room_id.as_str(),
            "m.room.member",
            pdu.state_key.as_deref(),
            false,
        ));
        let write = crate::store::RoomWrite {
            events: vec![row_of_received(&pdu, json, guard.pos(), prev_events, 0)],
            ..Default::default()
        };
        self.store.write_room(room_id.as_str(), &write).await?;
        drop(guard);
        Ok(())
    }

    /// Records that a local user declined an invite to a room of another server, with the
    /// leave the inviting server accepted.
    pub async fn record_declined_invite(&self, room_id: &RoomId, user_id: &UserId, leave: CheckedPdu) -> Result<()> {
        self.store.drop_remote_invite(room_id.as_str(), user_id.as_str(), false).await?;
        self.store_out_of_room_membership(room_id, leave).await
    }

    /// Declines an invite to a room of another server when that server cannot be told: a
    /// leave of this server's own making, on top of the invite, kept here only, so that the
    /// user's sync shows the room left.
    pub async fn decline_invite_here(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let Some(m) =
            self.store.membership(room_id.as_str(), user_id.as_str()).await?.filter(|m| m.membership == "invite")
        else {
            return Err(Error::forbidden("no invite to decline"));
        };
        let invite = self.store.event(&m.event_id).await?.ok_or_else(|| Error::not_found("the invite is gone"))?;
        let invite_pdu = Pdu::from_row(&invite)?;
        // The invite's event ID tells its room version's family: `$id:server` before 3.
        let opaque = m.event_id.contains(':');
        let version = if opaque { RoomVersionId::V1 } else { RoomVersionId::V10 };
        let (_, rules) = super::version::rules_for(version.as_str())?;
        let refs = |id: &str| if opaque { json!([[id, {}]]) } else { json!([id]) };
        let mut event = json!({
            "room_id": room_id, "sender": user_id, "state_key": user_id, "type": "m.room.member",
            "content": { "membership": "leave" }, "origin": self.server_name, "origin_server_ts": now_ms(),
            "depth": invite_pdu.depth + 1, "prev_events": refs(&m.event_id), "auth_events": refs(&m.event_id),
        });
        let opaque_id = opaque.then(|| format!("${}:{}", crate::accounts::random_string(18), self.server_name));
        if let Some(id) = &opaque_id {
            event["event_id"] = json!(id);
        }
        let mut object: ruma::CanonicalJsonObject =
            serde_json::from_value(event).map_err(|e| Error::Internal(e.to_string()))?;
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            &self.keys.key_pair,
            &mut object,
            &rules.redaction,
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        let event_id = match opaque_id {
            Some(id) => id,
            None => format!(
                "${}",
                ruma::signatures::reference_hash(&object, &rules).map_err(|e| Error::Internal(e.to_string()))?
            ),
        };
        let event_id = OwnedEventId::try_from(event_id).map_err(|e| Error::Internal(e.to_string()))?;
        self.record_declined_invite(room_id, user_id, CheckedPdu { event_id, object }).await
    }

    /// Stores an invite of another server for one of this server's users, already signed
    /// by both servers. In a room this server is in, it is admitted like any PDU; for a
    /// room it is not in, it is kept with the room's description for the invitee's sync.
    pub async fn receive_invite(
        &self,
        room_id: &RoomId,
        checked: CheckedPdu,
        stripped_state: Vec<Value>,
    ) -> Result<()> {
        if self.store.room(room_id.as_str()).await?.is_some() {
            self.admit_remote(room_id, checked, None).await?;
            return Ok(());
        }
        self.keep_described_membership(room_id, checked, stripped_state).await
    }

    /// Keeps a local user's knock on a room of another server this server is not in, with
    /// the room's description as the resident server gave it (for the knock's sync).
    pub async fn record_remote_knock(&self, room_id: &RoomId, knock: CheckedPdu, described: Vec<Value>) -> Result<()> {
        self.keep_described_membership(room_id, knock, described).await
    }

    /// Keeps a membership (invite, knock) of a local user in a room this server is not in,
    /// with the room's description for the user's sync.
    async fn keep_described_membership(
        &self,
        room_id: &RoomId,
        checked: CheckedPdu,
        described: Vec<Value>,
    ) -> Result<()> {
        let target = match checked.object.get("state_key") {
            Some(ruma::CanonicalJsonValue::String(s)) => s.clone(),
            _ => return Err(Error::bad_json("a membership event has a target")),
        };
        let state = serde_json::to_string(&described).map_err(|e| Error::Internal(e.to_string()))?;
        self.store.set_invite_state(room_id.as_str(), &target, &state).await?;
        self.store_out_of_room_membership(room_id, checked).await
    }

    /// The server to reach about a room of another server `user_id` has a pending invite
    /// to (the inviter's) or knock on (the room creator's, as the room's description says,
    /// else the room ID's).
    pub async fn pending_membership_server(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<ruma::OwnedServerName>> {
        let Some(m) = self.store.membership(room_id.as_str(), user_id.as_str()).await? else { return Ok(None) };
        match m.membership.as_str() {
            "invite" => {
                let Some(row) = self.store.event(&m.event_id).await? else { return Ok(None) };
                Ok(Some(Pdu::from_row(&row)?.sender.server_name().to_owned()))
            }
            "knock" => {
                let described: Vec<Value> = match self.store.invite_state(room_id.as_str(), user_id.as_str()).await? {
                    Some(state) => serde_json::from_str(&state).unwrap_or_default(),
                    None => Vec::new(),
                };
                let creator = described
                    .iter()
                    .find(|e| e["type"] == "m.room.create")
                    .and_then(|e| e["sender"].as_str())
                    .and_then(|s| ruma::UserId::parse(s).ok())
                    .map(|u| u.server_name().to_owned());
                Ok(creator.or_else(|| room_id.server_name().map(ToOwned::to_owned)))
            }
            _ => Ok(None),
        }
    }

    /// The room's state before an event and the auth chain of that state, as PDUs (the
    /// answer to `send_join`, `/state`).
    pub async fn state_and_auth_chain(&self, event_id: &str) -> Result<(Vec<Value>, Vec<Value>)> {
        let (state, chain) = self.state_rows_and_auth_chain(event_id).await?;
        Ok((pdus(state), pdus(chain)))
    }

    /// [`Self::state_and_auth_chain`] for a joining server that takes the members later
    /// (`omit_members`): the state before the join without its memberships, but for the
    /// joiner's own and, when the room has neither name nor canonical alias, those of the
    /// members its clients name it after (the heroes of `/sync`); the auth chain of the join
    /// and of that state, without the events of the state.
    /// `before` is the state before the join when at hand.
    pub async fn state_and_auth_chain_without_members(
        &self,
        event_id: &str,
        before: Option<&super::resolve::StateIds>,
    ) -> Result<(Vec<Value>, Vec<Value>)> {
        let event = self.store.event(event_id).await?.ok_or_else(|| Error::not_found("unknown event"))?;
        let entries = match before {
            Some(before) => before.iter().map(|((t, k), id)| (t.clone(), k.clone(), id.to_string())).collect(),
            None => self.store.state_group(event.state_group_before).await?,
        };
        let joiner = Pdu::from_row(&event)?.state_key.unwrap_or_default();
        let mut ids: HashSet<String> = entries
            .iter()
            .filter(|(kind, key, _)| kind != "m.room.member" || *key == joiner)
            .map(|(_, _, id)| id.clone())
            .collect();
        let named = entries.iter().any(|(kind, _, _)| kind == "m.room.name" || kind == "m.room.canonical_alias");
        if !named {
            let heroes = self.store.heroes(&event.room_id, &joiner).await?;
            ids.extend(
                entries
                    .iter()
                    .filter(|(kind, key, _)| kind == "m.room.member" && heroes.contains(key))
                    .map(|(_, _, id)| id.clone()),
            );
        }
        let ids: Vec<String> = ids.into_iter().collect();
        let state = self.store.events(&ids).await?;
        let mut with_join = state.clone();
        with_join.push(event);
        let in_state: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let chain: Vec<EventRow> = self
            .auth_chain(&with_join)
            .await?
            .into_iter()
            .filter(|row| !in_state.contains(row.event_id.as_str()))
            .collect();
        Ok((pdus(state), pdus(chain)))
    }

    /// Refuses what needs the room's whole state (a join template for another server) while
    /// this server holds only part of it.
    pub async fn require_full_state(&self, room_id: &RoomId) -> Result<()> {
        match self.store.partial_state(room_id.as_str()).await? {
            Some(_) => Err(Error::not_found("this server is not fully joined to the room yet")),
            None => Ok(()),
        }
    }

    /// [`Self::state_and_auth_chain`] as rows.
    pub async fn state_rows_and_auth_chain(&self, event_id: &str) -> Result<(Vec<EventRow>, Vec<EventRow>)> {
        let event = self.store.event(event_id).await?.ok_or_else(|| Error::not_found("unknown event"))?;
        let state_ids: Vec<String> =
            self.store.state_group(event.state_group_before).await?.into_iter().map(|(_, _, id)| id).collect();
        let state = self.store.events(&state_ids).await?;
        let chain = self.auth_chain(&state).await?;
        Ok((state, chain))
    }

    /// The auth chain of one event.
    pub async fn event_auth_chain(&self, event_id: &str) -> Result<Vec<Value>> {
        let event = self.store.event(event_id).await?.ok_or_else(|| Error::not_found("unknown event"))?;
        Ok(pdus(self.auth_chain(&[event]).await?))
    }

    /// Whether users of `server` ever were in the room (their server may read its events),
    /// or the room is world-readable.
    pub async fn server_may_read(&self, room_id: &RoomId, server: &ruma::ServerName) -> Result<bool> {
        let suffix = format!(":{server}");
        let members = self.store.room_members(room_id.as_str(), None).await?;
        if members.iter().any(|m| m.user_id.ends_with(&suffix)) {
            return Ok(true);
        }
        let visibility = self.current_state_content(room_id, "m.room.history_visibility", "").await?;
        Ok(visibility.is_some_and(|v| v["history_visibility"] == "world_readable"))
    }

    /// An event of the room, as the PDU this server holds.
    pub async fn pdu_of_room(&self, room_id: &RoomId, event_id: &str) -> Result<Value> {
        let row = self
            .store
            .event(event_id)
            .await?
            .filter(|row| row.room_id == room_id.as_str())
            .ok_or_else(|| Error::not_found("unknown event"))?;
        serde_json::from_str(&row.json).map_err(|e| Error::Internal(e.to_string()))
    }

    /// The events before `latest` back to (not including) `earliest`, following
    /// `prev_events`, at most `limit`, none below `min_depth` (`get_missing_events`).
    pub async fn missing_events(
        &self,
        room_id: &RoomId,
        earliest: &[String],
        latest: &[String],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<Value>> {
        let stop: HashSet<&String> = earliest.iter().collect();
        let mut seen: HashSet<String> = latest.iter().cloned().collect();
        let mut frontier: Vec<String> = Vec::new();
        for row in self.store.events(latest).await?.iter().filter(|r| r.room_id == room_id.as_str()) {
            frontier.extend(Pdu::from_row(row)?.prev_events.iter().map(ToString::to_string));
        }
        let mut out = Vec::new();
        while !frontier.is_empty() && out.len() < limit {
            frontier.retain(|id| !stop.contains(id) && seen.insert(id.clone()));
            let rows = self.store.events(&frontier).await?;
            frontier = Vec::new();
            for row in rows.into_iter().filter(|r| r.room_id == room_id.as_str()) {
                let pdu = Pdu::from_row(&row)?;
                if pdu.depth < min_depth || out.len() >= limit {
                    continue;
                }
                frontier.extend(pdu.prev_events.iter().map(ToString::to_string));
                // Emptied by the retention purge: kept for the graph, not given as history.
                if !row.purged {
                    out.push(row);
                }
            }
        }
        out.sort_by_key(|r| r.stream_pos);
        self.history_pdus(out).await
    }

    /// The events from `from` backwards through `prev_events`, at most `limit` (`backfill`).
    pub async fn backfill(&self, room_id: &RoomId, from: &[String], limit: usize) -> Result<Vec<Value>> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut frontier: Vec<String> = from.to_vec();
        let mut out = Vec::new();
        while !frontier.is_empty() && out.len() < limit {
            frontier.retain(|id| seen.insert(id.clone()));
            let rows = self.store.events(&frontier).await?;
            frontier = Vec::new();
            for row in rows.into_iter().filter(|r| r.room_id == room_id.as_str()) {
                if out.len() >= limit {
                    break;
                }
                frontier.extend(Pdu::from_row(&row)?.prev_events.iter().map(ToString::to_string));
                if !row.purged {
                    out.push(row);
                }
            }
        }
        // Newest first, by depth: positions say nothing of history backfilled here.
        out.sort_by_key(|r| std::cmp::Reverse(Pdu::from_row(r).map(|p| p.depth).unwrap_or_default()));
        self.history_pdus(out).await
    }

    /// Stores the auth events of received events that this server lacked, fetched from
    /// another server: those that pass the rules against their own auth events, outside
    /// the timeline.
    pub async fn store_auth_events(&self, room_id: &RoomId, auth: Vec<CheckedPdu>) -> Result<()> {
        self.store_backfilled(room_id, None, Vec::new(), auth).await.map(|_| ())
    }

    /// Stores history of the room received from another server (`backfill`), older than
    /// its earliest timeline event here (`earliest`): each event that passes the rules
    /// against its auth events (found among `events`, `auth`, or here) goes into the
    /// timeline below everything the room holds, newest first; `auth` events go outside it.
    /// Events this server holds outside the timeline (a join's state) move into it. Returns
    /// how many events entered the timeline.
    pub async fn store_backfilled(
        &self,
        room_id: &RoomId,
        earliest: Option<&EventRow>,
        events: Vec<CheckedPdu>,
        auth: Vec<CheckedPdu>,
    ) -> Result<usize> {
        let (_, rules) = self.version_of(room_id).await?;
        // History past the room's lifetime was purged here: it is not taken back.
        let cutoff = self.history_cutoff(room_id.as_str(), crate::store::now_ms()).await?;
        let mut parsed: HashMap<OwnedEventId, (Arc<Pdu>, String, bool)> = HashMap::new();
        for (checked, in_timeline) in events.into_iter().map(|e| (e, true)).chain(auth.into_iter().map(|e| (e, false)))
        {
            let json = serde_json::to_string(&checked.object).map_err(|e| Error::Internal(e.to_string()))?;
            let Ok(pdu) = Pdu::parse(checked.event_id.as_str(), room_id.as_str(), &json) else { continue };
            parsed.entry(checked.event_id).or_insert((Arc::new(pdu), json, in_timeline));
        }
        let ids: Vec<String> = parsed.keys().map(ToString::to_string).collect();
        let held: HashMap<String, EventRow> =
            self.store.events(&ids).await?.into_iter().map(|r| (r.event_id.clone(), r)).collect();
        // Auth events: those received, then those held here.
        let mut pdus: HashMap<OwnedEventId, Arc<Pdu>> =
            parsed.iter().map(|(id, (p, _, _))| (id.clone(), p.clone())).collect();
        let wanted: Vec<String> = parsed
            .values()
            .flat_map(|(p, _, _)| p.auth_events.iter())
            .filter(|id| !pdus.contains_key(*id))
            .map(ToString::to_string)
            .collect();
        for row in self.store.events(&wanted).await? {
            let pdu = Pdu::from_row(&row)?;
            pdus.insert(pdu.event_id.clone(), Arc::new(pdu));
        }
        let create = match rules.authorization.room_create_event_id_as_room_id {
            true => {
                self.store.current_state(room_id.as_str()).await?.into_iter().find(|(t, _, _)| t == "m.room.create")
            }
            false => None,
        };
        if let Some((_, _, id)) = &create
            && let Ok(id) = OwnedEventId::try_from(id.as_str())
            && !pdus.contains_key(&id)
            && let Some(row) = self.store.event(id.as_str()).await?
        {
            pdus.insert(id, Arc::new(Pdu::from_row(&row)?));
        }
        // Oldest first, so that an event's auth events were judged before it.
        let mut order: Vec<&OwnedEventId> = parsed.keys().collect();
        order.sort_by_key(|id| parsed[*id].0.depth);
        let mut refused: HashSet<OwnedEventId> = HashSet::new();
        for id in &order {
            let pdu = &parsed[*id].0;
            let verdict = if pdu.auth_events.iter().any(|a| refused.contains(a) || !pdus.contains_key(a)) {
                Err(Error::forbidden("auth events unknown or refused"))
            } else {
                let create = create.as_ref().and_then(|(_, _, id)| pdus.get(id.as_str())).map(|p| p.as_ref());
                check_against_auth_events(&rules.authorization, pdu, create, |a| pdus.get(a).map(|p| p.as_ref()))
            };
            if let Err(e) = verdict {
                tracing::info!(%room_id, event_id = %id, error = %e, "backfilled event refused");
                refused.insert((*id).clone());
            }
        }
        // Newest first: each gets a position below the previous one, all below the room's
        // earliest event here.
        order.reverse();
        let mut rows = Vec::new();
        let mut promoted = Vec::new();
        let mut entered = 0;
        for id in order.into_iter().filter(|id| !refused.contains(*id)) {
            let (pdu, json, in_timeline) = &parsed[id];
            match held.get(id.as_str()) {
                Some(row) => {
                    if *in_timeline && !row.purged && self.store.is_outlier(id.as_str()).await? {
                        let pos = self.next_outlier.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        promoted.push((id.to_string(), pos));
                        entered += 1;
                    }
                }
                None => {
                    let expired = pdu.state_key.is_none()
                        && cutoff.is_some_and(|cutoff| i64::from(pdu.origin_server_ts.get()) < cutoff);
                    if *in_timeline && expired {
                        continue;
                    }
                    let pos = self.next_outlier.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    let group = earliest.map_or(0, |e| e.state_group_before);
                    let mut row = row_of_received(pdu, json.clone(), pos, Vec::new(), group);
                    row.outlier = !in_timeline;
                    entered += usize::from(*in_timeline);
                    rows.push(row);
                }
            }
        }
        self.store.store_backfill(room_id.as_str(), &rows, &promoted).await?;
        Ok(entered)
    }

    /// Every event the given events' authorisation rests on, transitively.
    async fn auth_chain(&self, events: &[EventRow]) -> Result<Vec<EventRow>> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        let mut frontier: Vec<String> = Vec::new();
        for row in events {
            frontier.extend(Pdu::from_row(row)?.auth_events.iter().map(ToString::to_string));
        }
        while !frontier.is_empty() {
            frontier.retain(|id| seen.insert(id.clone()));
            if frontier.is_empty() {
                break;
            }
            let rows = self.store.events(&frontier).await?;
            frontier = Vec::new();
            for row in rows {
                frontier.extend(Pdu::from_row(&row)?.auth_events.iter().map(ToString::to_string));
                out.push(row);
            }
        }
        Ok(out)
    }

    /// The room version of a room this server knows.
    pub async fn version_of(
        &self,
        room_id: &RoomId,
    ) -> Result<(RoomVersionId, ruma::room_version_rules::RoomVersionRules)> {
        let (version, _) =
            self.store.room(room_id.as_str()).await?.ok_or_else(|| Error::not_found("room not known here"))?;
        super::version::rules_for(&version)
    }
}

/// Checks a received event against the authorisation rules that need no room state, then
/// against the state its own auth events give (found by `events`), with the room's create
/// event, which from room version 12 on the event does not list.
fn check_against_auth_events<'e>(
    rules: &ruma::room_version_rules::AuthorizationRules,
    pdu: &Pdu,
    create: Option<&'e Pdu>,
    events: impl Fn(&ruma::EventId) -> Option<&'e Pdu>,
) -> Result<()> {
    state_res::check_state_independent_auth_rules(rules, pdu, &events)
        .map_err(|e| Error::forbidden(format!("event not authorised: {e}")))?;
    let mut by_key: HashMap<(String, String), &Pdu> = pdu
        .auth_events
        .iter()
        .filter_map(|id| events(id))
        .filter_map(|p| Some(((p.kind.to_string(), p.state_key.clone()?), p)))
        .collect();
    if rules.room_create_event_id_as_room_id
        && let Some(create) = create
    {
        by_key.insert(("m.room.create".into(), String::new()), create);
    }
    state_res::check_state_dependent_auth_rules(rules, pdu, |t: &StateEventType, k: &str| {
        by_key.get(&(t.to_string(), k.to_owned())).copied()
    })
    .map_err(|e| Error::forbidden(format!("event not authorised by its auth events: {e}")))
}

/// The row of an event received from another server that is stored outside the room
/// write path (outliers of a join, memberships of rooms this server is not in): no
/// relation, transaction or notification.
fn row_of_received(
    pdu: &Pdu,
    json: String,
    stream_pos: i64,
    prev_events: Vec<String>,
    state_group: i64,
) -> crate::store::NewEvent {
    crate::store::NewEvent {
        stream_pos,
        event_id: pdu.event_id.to_string(),
        sender: pdu.sender.to_string(),
        event_type: pdu.kind.to_string(),
        state_key: pdu.state_key.clone(),
        membership: pdu.membership(),
        depth: pdu.depth as i64,
        origin_server_ts: i64::from(pdu.origin_server_ts.get()),
        json,
        prev_events,
        state_group_before: state_group,
        state_group_after: state_group,
        rel_type: None,
        relates_to: None,
        thread_root: None,
        txn: None,
        replaces_state: None,
        notify: 0,
        outlier: stream_pos < 0,
        expires_ts: None,
    }
}

/// Stored rows as the PDUs other servers receive.
fn pdus(rows: Vec<EventRow>) -> Vec<Value> {
    rows.into_iter().filter_map(|row| serde_json::from_str(&row.json).ok()).collect()
}

/// A PDU's room ID, before anything else is read from it.
pub fn room_of(raw: &serde_json::value::RawValue) -> Option<ruma::OwnedRoomId> {
    #[derive(serde::Deserialize)]
    struct RoomOnly {
        room_id: Option<ruma::OwnedRoomId>,
    }
    serde_json::from_str::<RoomOnly>(raw.get()).ok()?.room_id
}

/// Whether two lists of event IDs hold the same events.
fn same_set(a: &[OwnedEventId], b: &[OwnedEventId]) -> bool {
    a.iter().collect::<HashSet<_>>() == b.iter().collect::<HashSet<_>>()
}
