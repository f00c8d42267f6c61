//! State resolution where the room's DAG forks: servers cut from each other build branches,
//! and the state where branches meet is state resolution v2 (ruma's state-res) of the
//! states after each branch's latest event, for the room's version.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    OwnedEventId,
    events::StateEventType,
    state_res::{self, StateMap, utils::event_id_set::EventIdSet},
};

use super::{Batch, RoomHead, Rooms, pdu::Pdu};
use crate::{
    error::{Error, Result},
    store::{NewStateGroup, Resolution},
};

/// A room state: (event type, state key) to event ID, as the room head holds it.
pub type StateIds = HashMap<(String, String), OwnedEventId>;

impl Rooms {
    /// The state before an event whose prev events are not the room's leaves: the state
    /// after each prev event known here, resolved when there are several; `None` when none
    /// is known, or in room version 1 (whose state resolution is not implemented): the
    /// event is then checked against the current state alone.
    pub(super) async fn state_before(&self, head: &mut RoomHead, prevs: &[OwnedEventId]) -> Result<Option<StateIds>> {
        if head.rules.state_res.v2_rules().is_none() {
            return Ok(None);
        }
        let mut states = Vec::new();
        for prev in prevs {
            if let Some(state) = self.state_after(prev).await? {
                states.push(state);
            }
        }
        let state = match states.len() {
            0 => return Ok(None),
            1 => states.pop().unwrap_or_default(),
            _ => self.resolve_states(&head.rules, &head.pdus, &states).await?,
        };
        let ids: Vec<OwnedEventId> = state.values().cloned().collect();
        self.load_pdus(head, &ids).await?;
        Ok(Some(state))
    }

    /// Moves the batch's head onto a branch's state, to record an event of that branch;
    /// returns the current state it leaves.
    pub(super) fn build_on_branch(&self, batch: &mut Batch, before: &StateIds) -> Arc<StateIds> {
        let current = batch.head.state.clone();
        batch.head.group = self.snapshot_group(batch, before);
        batch.head.chain_len = 0;
        batch.head.state = Arc::new(before.clone());
        current
    }

    /// After an event of a branch was recorded: the room's state becomes the resolution of
    /// the states after each of its leaves (`extremities`, the event among them).
    /// `current_before` is the current state before the event.
    pub(super) async fn resolve_branches(
        &self,
        batch: &mut Batch,
        extremities: &[OwnedEventId],
        current_before: Arc<StateIds>,
    ) -> Result<()> {
        let Some(event) = batch.write.events.last() else { return Ok(()) };
        let event_id = event.event_id.clone();
        let mut states = vec![(*batch.head.state).clone()];
        for leaf in extremities.iter().filter(|id| id.as_str() != event_id) {
            if let Some(state) = self.state_after(leaf).await? {
                states.push(state);
            }
        }
        let resolved = if states.len() == 1 {
            states.pop().unwrap_or_default()
        } else {
            self.resolve_states(&batch.head.rules, &batch.head.pdus, &states).await?
        };
        self.set_current_state(batch, current_before, resolved).await?;
        tracing::info!(room_id = %batch.head.room_id, %event_id, "branches resolved");
        Ok(())
    }

    /// Makes `resolved` the room's current state after the batch's last event, whatever
    /// the events before it left (`current_before`, then that event).
    pub(super) async fn set_current_state(
        &self,
        batch: &mut Batch,
        current_before: Arc<StateIds>,
        resolved: StateIds,
    ) -> Result<()> {
        let Some(event) = batch.write.events.last() else { return Ok(()) };
        let (event_id, pos) = (event.event_id.clone(), event.stream_pos);
        let event_key = event.state_key.clone().map(|key| (event.event_type.clone(), key));
        let ids: Vec<OwnedEventId> = resolved.values().cloned().collect();
        self.load_pdus(&mut batch.head, &ids).await?;
        // What the write's events leave as the current state, which the resolution replaces.
        let mut left = (*current_before).clone();
        if let Some(key) = event_key {
            left.insert(key, OwnedEventId::try_from(event_id.as_str()).map_err(|e| Error::Internal(e.to_string()))?);
        }
        let membership = |id: &OwnedEventId| batch.head.pdus.get(id).and_then(|pdu| pdu.membership());
        let set = resolved
            .iter()
            .filter(|(key, id)| left.get(*key) != Some(*id))
            .map(|((kind, key), id)| (kind.clone(), key.clone(), id.to_string(), membership(id)))
            .collect();
        let removed = left.keys().filter(|key| !resolved.contains_key(*key)).cloned().collect();
        let joined = resolved
            .iter()
            .filter(|((kind, _), id)| kind == "m.room.member" && membership(id).as_deref() == Some("join"))
            .map(|((_, user), _)| user.clone())
            .collect();
        let group = self.snapshot_group(batch, &resolved);
        batch.write.resolutions.push(Resolution {
            after_event: batch.write.events.len() - 1,
            group,
            set,
            removed,
            stream_pos: pos,
        });
        batch.head.joined = Arc::new(joined);
        batch.head.state = Arc::new(resolved);
        batch.head.group = group;
        batch.head.chain_len = 0;
        Ok(())
    }

    /// A state group holding a whole state, added to the batch's write.
    pub(super) fn snapshot_group(&self, batch: &mut Batch, state: &StateIds) -> i64 {
        let id = self.next_group.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        batch.write.state_groups.push(NewStateGroup {
            id,
            prev_group: None,
            chain_len: 0,
            delta: state.iter().map(|((t, k), e)| (t.clone(), k.clone(), e.to_string())).collect(),
        });
        id
    }

    /// The state after an event stored here (the state before it, plus itself when it is a
    /// state event), or `None` when it is unknown here.
    pub(super) async fn state_after(&self, event_id: &OwnedEventId) -> Result<Option<StateIds>> {
        let Some(row) = self.store.event(event_id.as_str()).await? else { return Ok(None) };
        let pdu = Pdu::from_row(&row)?;
        let mut state: StateIds = HashMap::new();
        for (kind, key, id) in self.store.state_group(row.state_group_before).await? {
            let id = OwnedEventId::try_from(id).map_err(|e| Error::Internal(e.to_string()))?;
            state.insert((kind, key), id);
        }
        if let Some(key) = pdu.state_key {
            state.insert((pdu.kind.to_string(), key), pdu.event_id);
        }
        Ok(Some(state))
    }

    /// State resolution v2 of several states of a room. `known` holds PDUs already parsed
    /// (the room head's); the others, and every auth chain, are read from the store.
    pub(super) async fn resolve_states(
        &self,
        rules: &ruma::room_version_rules::RoomVersionRules,
        known: &HashMap<OwnedEventId, Arc<Pdu>>,
        states: &[StateIds],
    ) -> Result<StateIds> {
        let Some(v2) = rules.state_res.v2_rules() else {
            return Err(Error::Internal("state resolution v1 (room version 1) is not supported".into()));
        };
        // Branches that agree (concurrent messages) need no event read.
        if let Some((first, rest)) = states.split_first()
            && rest.iter().all(|s| s == first)
        {
            return Ok(first.clone());
        }
        // Every event of the states and of their auth chains, parsed once.
        let mut events: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        // Events neither cached nor stored stay out: state-res leaves out what it cannot see.
        let mut absent: HashSet<OwnedEventId> = HashSet::new();
        let mut wanted: Vec<OwnedEventId> = states.iter().flat_map(|s| s.values().cloned()).collect();
        while !wanted.is_empty() {
            let mut added = Vec::new();
            let mut to_read = Vec::new();
            for id in wanted.drain(..) {
                if events.contains_key(&id) || absent.contains(&id) {
                    continue;
                }
                match known.get(&id) {
                    Some(pdu) => {
                        events.insert(id.clone(), pdu.clone());
                        added.push(id);
                    }
                    None => to_read.push(id.to_string()),
                }
            }
            to_read.sort();
            to_read.dedup();
            for row in self.store.events(&to_read).await? {
                let pdu = Arc::new(Pdu::from_row(&row)?);
                added.push(pdu.event_id.clone());
                events.insert(pdu.event_id.clone(), pdu);
            }
            for id in to_read {
                if let Ok(id) = OwnedEventId::try_from(id)
                    && !events.contains_key(&id)
                {
                    absent.insert(id);
                }
            }
            wanted = added.iter().filter_map(|id| events.get(id)).flat_map(|p| p.auth_events.iter().cloned()).collect();
        }
        let chain_of = |start: &OwnedEventId, memo: &mut HashMap<OwnedEventId, Arc<HashSet<OwnedEventId>>>| {
            auth_chain(start, &events, memo)
        };
        let mut memo = HashMap::new();
        let auth_chains: Vec<EventIdSet<OwnedEventId>> = states
            .iter()
            .map(|state| {
                let mut chain = EventIdSet::new();
                for id in state.values() {
                    chain.extend(chain_of(id, &mut memo).iter().cloned());
                }
                chain
            })
            .collect();
        let maps: Vec<StateMap<OwnedEventId>> = states
            .iter()
            .map(|s| s.iter().map(|((t, k), id)| ((StateEventType::from(t.as_str()), k.clone()), id.clone())).collect())
            .collect();
        let subgraph = |conflicted: &StateMap<Vec<OwnedEventId>>| {
            Some(conflicted_subgraph(conflicted.values().flatten(), &events))
        };
        let resolved = state_res::resolve(
            &rules.authorization,
            v2,
            maps.iter(),
            auth_chains,
            |id| events.get(id).cloned(),
            subgraph,
        )
        .map_err(|e| Error::Internal(format!("state resolution failed: {e}")))?;
        Ok(resolved.into_iter().map(|((t, k), id)| ((t.to_string(), k), id)).collect())
    }
}

/// The full auth chain of an event (not the event itself), memoised.
fn auth_chain(
    start: &OwnedEventId,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
    memo: &mut HashMap<OwnedEventId, Arc<HashSet<OwnedEventId>>>,
) -> Arc<HashSet<OwnedEventId>> {
    if let Some(done) = memo.get(start) {
        return done.clone();
    }
    let mut chain = HashSet::new();
    let mut stack: Vec<&OwnedEventId> = events.get(start).map(|p| p.auth_events.iter().collect()).unwrap_or_default();
    while let Some(id) = stack.pop() {
        if chain.insert(id.clone())
            && let Some(pdu) = events.get(id)
        {
            stack.extend(pdu.auth_events.iter());
        }
    }
    let chain = Arc::new(chain);
    memo.insert(start.clone(), chain.clone());
    chain
}

/// The conflicted state subgraph (room version 12): the events that are both descendants
/// and ancestors, through auth events, of conflicted state events, these included.
fn conflicted_subgraph<'a>(
    conflicted: impl Iterator<Item = &'a OwnedEventId>,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> EventIdSet<OwnedEventId> {
    let conflicted: HashSet<&OwnedEventId> = conflicted.collect();
    // Whether an event reaches a conflicted event through its auth events.
    let mut reaches: HashMap<&OwnedEventId, bool> = HashMap::new();
    fn visit<'e>(
        id: &'e OwnedEventId,
        events: &'e HashMap<OwnedEventId, Arc<Pdu>>,
        conflicted: &HashSet<&OwnedEventId>,
        reaches: &mut HashMap<&'e OwnedEventId, bool>,
    ) -> bool {
        if let Some(known) = reaches.get(id) {
            return *known;
        }
        // Auth chains are acyclic; the provisional answer only guards against bad data.
        reaches.insert(id, false);
        let mut found = false;
        if let Some(pdu) = events.get(id) {
            for parent in &pdu.auth_events {
                let Some((key, _)) = events.get_key_value(parent) else { continue };
                if conflicted.contains(key) | visit(key, events, conflicted, reaches) {
                    found = true;
                }
            }
        }
        reaches.insert(id, found);
        found
    }
    let mut subgraph = EventIdSet::new();
    for id in &conflicted {
        subgraph.insert((*id).clone());
        let mut stack: Vec<&OwnedEventId> = vec![id];
        let mut seen: HashSet<&OwnedEventId> = HashSet::new();
        while let Some(current) = stack.pop() {
            let Some(pdu) = events.get(current) else { continue };
            for parent in &pdu.auth_events {
                let Some((key, _)) = events.get_key_value(parent) else { continue };
                if seen.insert(key) && (conflicted.contains(key) || visit(key, events, &conflicted, &mut reaches)) {
                    subgraph.insert(key.clone());
                    stack.push(key);
                }
            }
        }
    }
    subgraph
}
