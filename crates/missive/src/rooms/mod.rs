//! Rooms: building, authorising and persisting events; room state; membership; timelines.
//!
//! Every write to a room takes the room's lock, whose guarded value is the room's head
//! (current state, forward extremities, depth), builds and signs each event, runs the spec's
//! authorization rules (ruma's state-res), and queues the batch for the room's committer,
//! which commits in build order, in one transaction per round. [`Rooms::write`] publishes
//! its head after the commit; client sends ([`Rooms::send_grouped`]) publish theirs at once,
//! so the next batch builds during the commit, and a failed commit fails every write built
//! on it and makes the next one reload the head from the store. Either way, a failed
//! request changes nothing and nothing is acknowledged before it is committed.

mod aliases;
pub mod create;
mod directory;
mod expiry;
pub mod federated;
pub mod hierarchy;
pub mod ignore;
pub mod membership;
pub mod notify;
pub mod pdu;
mod resolve;
pub mod retention;
pub use resolve::StateIds;
pub mod search;
pub mod timeline;
mod txns;
mod upgrade;
pub mod version;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
    RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::{EventIdFormatVersion, EventsReferenceFormatVersion, RoomVersionRules},
    state_res,
};
use serde_json::{Value, value::to_raw_value};

use self::pdu::Pdu;
use crate::{
    error::{Error, Result},
    server_keys::ServerKeys,
    store::{NewEvent, NewRoom, NewStateGroup, RoomWrite, Store, now_ms},
    sync::stream::{PositionGuard, Streams},
};

/// The state events that describe a room to someone outside it (an invitee, a knocker).
pub const DESCRIBING_STATE: [&str; 8] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
    // Whether the room admits external users, which their server checks before joining.
    membership::ACCESS_RULES_TYPE,
];

/// State groups are stored as deltas; after this many a full snapshot keeps lookups short.
const MAX_STATE_CHAIN: i64 = 50;

/// An event to be built by the server for a local sender.
#[derive(Debug, Clone)]
pub struct Draft {
    pub kind: String,
    pub state_key: Option<String>,
    pub content: Value,
}

impl Draft {
    /// A state event draft.
    pub fn state(kind: impl Into<String>, state_key: impl Into<String>, content: Value) -> Self {
        Self { kind: kind.into(), state_key: Some(state_key.into()), content }
    }

    /// A message-like event draft.
    pub fn message(kind: impl Into<String>, content: Value) -> Self {
        Self { kind: kind.into(), state_key: None, content }
    }
}

/// What the room's lock guards: everything needed to append the next event.
#[derive(Debug, Clone)]
pub struct RoomHead {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    pub rules: RoomVersionRules,
    /// Shared with the batches built on it: a batch copies it only when it changes state.
    pub state: Arc<HashMap<(String, String), OwnedEventId>>,
    pub extremities: Vec<OwnedEventId>,
    pub depth: u64,
    pub group: i64,
    pub chain_len: i64,
    /// Parsed state events used by the authorization rules, loaded on demand.
    pub pdus: Arc<HashMap<OwnedEventId, Arc<Pdu>>>,
    /// Users whose membership is `join`, for notifications without a read per message.
    pub joined: Arc<HashSet<String>>,
    /// While the room's state lacks the members a resident server left out of its join
    /// answer: the servers it named as in the room (see `federated::complete_partial_state`).
    pub partial_servers: Option<Arc<[String]>>,
    /// The local members as the last batch's notification pass saw them.
    audience: Option<Arc<notify::Audience>>,
    /// The room slot's epoch this head was loaded in (see `RoomSlot`).
    epoch: u64,
}

impl RoomHead {
    /// The head of a room this server is about to store its first events of.
    fn empty(room_id: OwnedRoomId, version: RoomVersionId, rules: RoomVersionRules) -> Self {
        Self {
            room_id,
            version,
            rules,
            state: Default::default(),
            extremities: Vec::new(),
            depth: 0,
            group: 0,
            chain_len: 0,
            pdus: Default::default(),
            joined: Default::default(),
            partial_servers: None,
            audience: None,
            epoch: 0,
        }
    }

    /// The current state event ID of a type and key.
    pub fn state_id(&self, kind: &str, state_key: &str) -> Option<&OwnedEventId> {
        self.state.get(&(kind.to_owned(), state_key.to_owned()))
    }

    /// The parsed current state event of a type and key, if loaded.
    pub fn state_pdu(&self, kind: &str, state_key: &str) -> Option<&Arc<Pdu>> {
        self.state_id(kind, state_key).and_then(|id| self.pdus.get(id))
    }
}

/// The rooms service.
pub struct Rooms {
    pub store: Store,
    pub streams: Arc<Streams>,
    keys: Arc<ServerKeys>,
    pub server_name: OwnedServerName,
    pub default_version: String,
    /// See `Config::encryption_mandatory`.
    pub encryption_mandatory: bool,
    /// Parsed push rules of local users.
    pub push_rules: Arc<notify::PushRulesCache>,
    /// Users' ignore lists, shared with `UserData`, which invalidates them.
    pub ignored: Arc<ignore::IgnoredUsers>,
    /// Users whose messages are marked for erasure (see `ignore.rs`).
    erased: Mutex<HashSet<String>>,
    heads: Mutex<HashMap<OwnedRoomId, Arc<RoomSlot>>>,
    /// Transaction IDs used per room and device; a room's entries change only under its lock.
    txns: Mutex<txns::TxnIndex>,
    next_group: AtomicI64,
    /// Timestamp of the last create event: kept strictly increasing, because in room version
    /// 12 the room ID is the create event's hash, and two identical createRoom requests in
    /// the same millisecond would otherwise name the same room.
    last_create_ts: AtomicI64,
    /// Told the destinations of every committed write that queued events for other servers.
    outbox_wake: OnceLock<OutboxWake>,
    /// Push delivery, told what committed writes notify.
    push: OnceLock<Arc<crate::push::Push>>,
    /// Countersigns invites of other servers' users (set when federation is on).
    invite_signer: OnceLock<InviteSigner>,
    /// The next position of an outlier (an event stored without a place in the timeline),
    /// counting down from below the lowest used.
    next_outlier: AtomicI64,
    /// Counts rooms whose partial state was completed, for those waiting on one.
    states_completed: tokio::sync::watch::Sender<u64>,
    /// Disappearing messages: whether they are honoured, and the job's wake-up.
    expiry: expiry::Expiry,
    /// How long room history is kept.
    history: retention::HistoryPolicy,
}

/// Wakes the federation sender's workers of the given destinations.
pub type OutboxWake = Arc<dyn Fn(Vec<String>) + Send + Sync>;

/// Has the invitee's server countersign an invite; answers the signed event's JSON.
pub type InviteSigner = Arc<
    dyn Fn(RemoteInvite) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String>> + Send>> + Send + Sync,
>;

/// An invite of a user of another server, to be countersigned by that server.
pub struct RemoteInvite {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub version: RoomVersionId,
    pub event: String,
    /// The PDUs of the state that describes the room to the invitee.
    pub stripped_state: Vec<String>,
}

/// A client send waiting for the room's writer (see [`Rooms::send_grouped`]).
pub(crate) struct PendingSend {
    pub sender: OwnedUserId,
    pub draft: Draft,
    pub txn: Option<(String, String)>,
    reply: tokio::sync::oneshot::Sender<Result<OwnedEventId>>,
}

/// Per room: the head behind its lock, the sends queued for the next batch, and the writes
/// built and waiting to commit.
///
/// A batch is built under the head lock, queued for commit, and its head published before
/// the lock is released: the next batch builds while this one commits. One committer task
/// per room commits the queue in build order, everything that accumulated during the
/// previous commit in one transaction. A failed commit bumps the epoch: every write built on
/// it (an older epoch) fails without being written, and the next head is loaded from the
/// store.
#[derive(Default)]
struct RoomSlot {
    head: tokio::sync::Mutex<Option<RoomHead>>,
    queue: Mutex<Vec<PendingSend>>,
    commits: Mutex<Commits>,
    epoch: AtomicU64,
}

/// The writes of a room waiting to commit, in build order.
#[derive(Default)]
struct Commits {
    queue: Vec<CommitJob>,
    /// Whether a committer task is running for the room.
    running: bool,
    /// Transaction IDs of the queued sends, to their epoch and event ID, so that a retry
    /// finds its event before it is stored.
    in_flight: HashMap<(String, String, String), (u64, String)>,
}

/// One built write and the channel for its outcome.
struct CommitJob {
    epoch: u64,
    write: RoomWrite,
    done: tokio::sync::oneshot::Sender<Result<()>>,
}

/// A single-threaded runtime, on its own thread, that runs the room committers. A commit
/// waits on the database; on the request runtime, each of its wake-ups would wait behind the
/// HTTP work of every other connection, and commits are the one serial step of a room.
fn writer_runtime() -> &'static tokio::runtime::Handle {
    static HANDLE: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("writer runtime");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("missive-writer".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("writer thread");
        handle
    })
}

/// One write in progress: the events appended so far and what they change.
pub struct Batch {
    pub head: RoomHead,
    pub write: RoomWrite,
    guards: Vec<PositionGuard>,
    /// The joined members before the batch (the head's set is copied on write).
    joined_before: Arc<HashSet<String>>,
    /// Events of the batch received from other servers: `None` for those their origin
    /// sends to the room itself, `Some(origin)` for a join admitted through `send_join`,
    /// which this server sends to the room's other servers.
    pub(crate) received: HashMap<String, Option<String>>,
}

impl Batch {
    fn new(head: RoomHead) -> Self {
        let joined_before = head.joined.clone();
        Self { head, write: RoomWrite::default(), guards: Vec::new(), joined_before, received: HashMap::new() }
    }
}

/// An authorised event about to be recorded in a batch, with what its row needs.
struct Recorded {
    pdu: Pdu,
    json: String,
    depth: i64,
    ts: i64,
    prev_events: Vec<String>,
    txn: Option<(String, String)>,
}

/// The configuration the rooms service needs.
#[derive(Debug, Clone)]
pub struct RoomSettings {
    pub server_name: OwnedServerName,
    pub default_version: String,
    pub encryption_mandatory: bool,
    /// See `Config::ephemeral_messages`.
    pub ephemeral_messages: bool,
    /// How long room history is kept (see `retention.rs`).
    pub history: retention::HistoryPolicy,
}

impl Rooms {
    /// Creates the service; `max_group` seeds the state group allocator.
    pub fn new(
        store: Store,
        streams: Arc<Streams>,
        keys: Arc<ServerKeys>,
        push_rules: Arc<notify::PushRulesCache>,
        settings: RoomSettings,
        max_group: i64,
    ) -> Self {
        Self {
            store,
            streams,
            keys,
            server_name: settings.server_name,
            default_version: settings.default_version,
            encryption_mandatory: settings.encryption_mandatory,
            expiry: expiry::Expiry::new(settings.ephemeral_messages),
            history: settings.history,
            push_rules,
            ignored: Default::default(),
            erased: Default::default(),
            txns: Default::default(),
            heads: Mutex::new(HashMap::new()),
            next_group: AtomicI64::new(max_group + 1),
            last_create_ts: AtomicI64::new(0),
            outbox_wake: OnceLock::new(),
            push: OnceLock::new(),
            invite_signer: OnceLock::new(),
            next_outlier: AtomicI64::new(-1),
            states_completed: tokio::sync::watch::Sender::new(0),
        }
    }

    fn slot(&self, room_id: &RoomId) -> Arc<RoomSlot> {
        self.heads.lock().expect("heads lock poisoned").entry(room_id.to_owned()).or_default().clone()
    }

    /// Appends a client's event with group commit: the send is queued, and whichever task
    /// holds the room's lock next builds every queued send into one batch and commits them in
    /// one transaction (one fsync for many events). Each send still gets its own result, and
    /// its acknowledgement only after the commit.
    pub(crate) async fn send_grouped(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        draft: Draft,
        txn: Option<(String, String)>,
    ) -> Result<OwnedEventId> {
        let slot = self.slot(room_id);
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let pending = PendingSend { sender: sender.to_owned(), draft, txn, reply };
        slot.queue.lock().expect("queue lock poisoned").push(pending);
        // Either another task's batch carries this send and answers it, or this task gets the
        // lock and carries the batch itself. Waiting for the lock alone would make an answered
        // sender queue behind the next batch.
        let guard = tokio::select! {
            biased;
            answered = &mut answer => return answered.map_err(|_| Error::Internal("room writer went away".into()))?,
            guard = slot.head.lock() => guard,
        };
        let pending = std::mem::take(&mut *slot.queue.lock().expect("queue lock poisoned"));
        if pending.is_empty() {
            drop(guard);
        } else {
            self.carry_batch(room_id, &slot, guard, pending).await;
        }
        answer.await.map_err(|_| Error::Internal("room writer went away".into()))?
    }

    /// Builds, commits and answers one batch of queued sends, holding the head lock until the
    /// batch is queued for commit and its head published.
    async fn carry_batch(
        &self,
        room_id: &RoomId,
        slot: &Arc<RoomSlot>,
        mut guard: tokio::sync::MutexGuard<'_, Option<RoomHead>>,
        pending: Vec<PendingSend>,
    ) {
        // The batch is built on the head as it stands, which may include batches still
        // waiting to commit: building overlaps their commit.
        let (mut batch, results) = match self.build_sends(room_id, slot, &mut guard, &pending).await {
            Ok(built) => built,
            Err(e) => {
                drop(guard);
                let message = e.to_string();
                let not_found = matches!(e, Error::NotFound(_));
                for p in pending {
                    let _ = p.reply.send(Err(if not_found {
                        Error::not_found(message.clone())
                    } else {
                        Error::Internal(message.clone())
                    }));
                }
                return;
            }
        };
        let outcome = self.enqueue_commit(room_id, slot, batch.head.epoch, std::mem::take(&mut batch.write));
        *guard = Some(batch.head);
        drop(guard);
        let committed = commit_outcome(outcome).await;
        drop(batch.guards);
        for (p, result) in pending.into_iter().zip(results) {
            let result = match (&committed, result) {
                (Ok(()), r) => r,
                (Err(e), Ok(_)) => Err(Error::Internal(format!("commit failed: {e}"))),
                (Err(_), Err(e)) => Err(e),
            };
            let _ = p.reply.send(result);
        }
    }

    /// Builds queued sends into one batch on the room's head, with their notifications:
    /// each send gets its own result (a failed send appends nothing).
    async fn build_sends(
        &self,
        room_id: &RoomId,
        slot: &RoomSlot,
        guard: &mut Option<RoomHead>,
        pending: &[PendingSend],
    ) -> Result<(Batch, Vec<Result<OwnedEventId>>)> {
        let head = self.ensure_head(room_id, slot, guard).await?.clone();
        let mut batch = Batch::new(head);
        // Retries of sends already stored, or still waiting to commit, are found for the
        // whole batch at once. The queued ones are read first: a write leaves that list only
        // once its rows are visible in the store. Queued sends of an older epoch will never
        // be stored.
        let epoch = batch.head.epoch;
        let mut known: HashMap<(String, String, String), String> = {
            let commits = slot.commits.lock().expect("commits lock poisoned");
            commits
                .in_flight
                .iter()
                .filter(|(_, (e, _))| *e == epoch)
                .map(|(key, (_, event_id))| (key.clone(), event_id.clone()))
                .collect()
        };
        let txns: Vec<(String, String, String)> = pending
            .iter()
            .filter_map(|p| p.txn.as_ref().map(|(d, t)| (p.sender.to_string(), d.clone(), t.clone())))
            .filter(|key| !known.contains_key(key))
            .collect();
        let txns = self.possible_retries(room_id, slot, txns).await?;
        if !txns.is_empty() {
            known.extend(self.store.txn_events(room_id.as_str(), &txns).await?);
        }
        let mut results = Vec::with_capacity(pending.len());
        for p in pending {
            let result = self.append_send(&mut batch, p, &known).await;
            if let (Ok(_), Some((device, txn))) = (&result, &p.txn) {
                self.txns.lock().expect("txn index poisoned").add(room_id.as_str(), p.sender.as_str(), device, txn);
            }
            results.push(result);
        }
        self.prepare(&mut batch).await?;
        Ok((batch, results))
    }

    /// The transaction IDs among `txns` that may already be stored in the room; the others
    /// are certainly new. Called under the room's head lock.
    async fn possible_retries(
        &self,
        room_id: &RoomId,
        slot: &RoomSlot,
        txns: Vec<(String, String, String)>,
    ) -> Result<Vec<(String, String, String)>> {
        for (sender, device, _) in &txns {
            let room = room_id.as_str();
            if self.txns.lock().expect("txn index poisoned").is_loaded(room, sender, device) {
                continue;
            }
            // Sends still committing are not in the store yet, and leave the queue only once
            // they are: taking the queue first, then the store, misses none.
            let queued: Vec<String> = {
                let commits = slot.commits.lock().expect("commits lock poisoned");
                commits.in_flight.keys().filter(|(s, d, _)| s == sender && d == device).map(|k| k.2.clone()).collect()
            };
            let limit = txns::MAX_PER_DEVICE as i64 + 1;
            let mut ids = self.store.txn_ids(room, sender, device, limit).await?;
            ids.extend(queued);
            let ids = (ids.len() <= txns::MAX_PER_DEVICE).then_some(ids);
            self.txns.lock().expect("txn index poisoned").load(room, sender, device, ids);
        }
        let mut index = self.txns.lock().expect("txn index poisoned");
        Ok(txns
            .into_iter()
            .filter(|(sender, device, txn)| index.may_exist(room_id.as_str(), sender, device, txn))
            .collect())
    }

    /// Queues a built write to commit after every write built before it. Called under the
    /// head lock, which fixes that order.
    fn enqueue_commit(
        &self,
        room_id: &RoomId,
        slot: &Arc<RoomSlot>,
        epoch: u64,
        write: RoomWrite,
    ) -> tokio::sync::oneshot::Receiver<Result<()>> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let start = {
            let mut commits = slot.commits.lock().expect("commits lock poisoned");
            for (key, event_id) in txn_keys(&write) {
                commits.in_flight.insert(key, (epoch, event_id));
            }
            commits.queue.push(CommitJob { epoch, write, done });
            !std::mem::replace(&mut commits.running, true)
        };
        if start {
            let wake = self.outbox_wake.get().cloned();
            let push = self.push.get().cloned();
            writer_runtime().spawn(run_commits(self.store.clone(), room_id.to_string(), slot.clone(), wake, push));
        }
        outcome
    }

    async fn append_send(
        &self,
        batch: &mut Batch,
        p: &PendingSend,
        stored: &HashMap<(String, String, String), String>,
    ) -> Result<OwnedEventId> {
        if let Some((device, txn)) = &p.txn {
            // A retry of a send already in this batch, or already stored, returns its event.
            let in_batch = batch.write.events.iter().find(|e| {
                e.sender == p.sender.as_str() && e.txn.as_ref().is_some_and(|(d, t)| d == device && t == txn)
            });
            if let Some(event) = in_batch {
                return OwnedEventId::try_from(event.event_id.clone()).map_err(|e| Error::Internal(e.to_string()));
            }
            if let Some(existing) = stored.get(&(p.sender.to_string(), device.clone(), txn.clone())) {
                return OwnedEventId::try_from(existing.clone()).map_err(|e| Error::Internal(e.to_string()));
            }
        }
        if p.draft.kind == "m.room.redaction" {
            return self.append_redaction(batch, &p.sender, p.draft.clone(), p.txn.clone()).await;
        }
        self.append(batch, &p.sender, p.draft.clone(), p.txn.clone()).await
    }

    /// Computes the notifications a batch owes and the other servers its events go to.
    async fn prepare(&self, batch: &mut Batch) -> Result<()> {
        if !batch.write.events.is_empty() {
            batch.write.notifications = self
                .compute_notifications(
                    &mut batch.head,
                    &batch.joined_before,
                    &mut batch.write.events,
                    &mut batch.write.pushes,
                )
                .await?;
            batch.write.outbox = self.outbox(batch);
        }
        Ok(())
    }

    /// The other servers each event of a batch goes to: every server with a member in the
    /// room before or after it. An event received from another server is its origin's to
    /// send, except a join admitted through `send_join`, which goes to the others.
    fn outbox(&self, batch: &Batch) -> Vec<(String, i64)> {
        let own = self.server_name.as_str();
        let mut servers: BTreeSet<&str> = BTreeSet::new();
        let mut sets = vec![&batch.head.joined];
        if !Arc::ptr_eq(&batch.joined_before, &batch.head.joined) {
            sets.push(&batch.joined_before);
        }
        for user in sets.into_iter().flat_map(|set| set.iter()) {
            if let Some((_, server)) = user.split_once(':')
                && server != own
            {
                servers.insert(server);
            }
        }
        // Until its state is complete, the room's servers are also those its resident named.
        for server in batch.head.partial_servers.iter().flat_map(|s| s.iter()) {
            if server != own {
                servers.insert(server);
            }
        }
        // A server the room's ACL denies gets nothing of the room.
        if let Some(acl) = batch.head.state_pdu("m.room.server_acl", "")
            && let Ok(acl) =
                serde_json::from_str::<ruma::events::room::server_acl::RoomServerAclEventContent>(acl.content.get())
        {
            servers.retain(|server| ruma::ServerName::parse(server).is_ok_and(|name| acl.is_allowed(&name)));
        }
        if servers.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        // Events stored outside the timeline (a rejoin's state, soft-failed) are not sent.
        for event in batch.write.events.iter().filter(|e| e.stream_pos > 0) {
            let except = match batch.received.get(&event.event_id) {
                Some(None) => continue,
                Some(Some(origin)) => Some(origin.as_str()),
                None => None,
            };
            out.extend(servers.iter().filter(|s| Some(**s) != except).map(|s| (s.to_string(), event.stream_pos)));
        }
        out
    }

    /// The head behind a held room lock, loaded from the store on first use. A room that
    /// cannot be loaded loses its slot, so made-up room IDs do not accumulate lock entries.
    async fn ensure_head<'a>(
        &self,
        room_id: &RoomId,
        slot: &RoomSlot,
        guard: &'a mut Option<RoomHead>,
    ) -> Result<&'a mut RoomHead> {
        // A head of an older epoch includes events whose commit failed. The store is stable
        // for it: the writes still queued with that epoch fail without writing.
        let epoch = slot.epoch.load(Ordering::SeqCst);
        if guard.as_ref().is_some_and(|head| head.epoch != epoch) {
            *guard = None;
        }
        if guard.is_none() {
            match self.load_head(room_id, epoch).await {
                Ok(head) => *guard = Some(head),
                Err(e) => {
                    self.heads.lock().expect("heads lock poisoned").remove(room_id);
                    return Err(e);
                }
            }
        }
        Ok(guard.as_mut().expect("head was just loaded"))
    }

    async fn load_head(&self, room_id: &RoomId, epoch: u64) -> Result<RoomHead> {
        let (version, group) =
            self.store.room(room_id.as_str()).await?.ok_or_else(|| Error::not_found("room not found"))?;
        let (version, rules) = version::rules_for(&version)?;
        let state = self
            .store
            .current_state(room_id.as_str())
            .await?
            .into_iter()
            .filter_map(|(t, k, e)| Some(((t, k), OwnedEventId::try_from(e).ok()?)))
            .collect();
        let extremities = self.store.extremities(room_id.as_str()).await?;
        let depth = extremities.iter().map(|(_, d)| *d).max().unwrap_or(0) as u64;
        let chain_len = self.store.state_group_chain_len(group).await?;
        let joined = self.store.room_members(room_id.as_str(), Some("join")).await?.into_iter().map(|m| m.user_id);
        let partial_servers = self.store.partial_state(room_id.as_str()).await?.map(|p| p.servers.into());
        Ok(RoomHead {
            room_id: room_id.to_owned(),
            version,
            rules,
            state: Arc::new(state),
            extremities: extremities.into_iter().filter_map(|(e, _)| OwnedEventId::try_from(e).ok()).collect(),
            depth,
            group,
            chain_len,
            pdus: Default::default(),
            joined: Arc::new(joined.collect()),
            partial_servers,
            audience: None,
            epoch,
        })
    }

    /// Runs `f` with the room's head locked; `f` appends events to the batch, which is then
    /// committed as one transaction. Returns what `f` returned.
    pub async fn write<T>(&self, room_id: &RoomId, f: impl AsyncFnOnce(&Self, &mut Batch) -> Result<T>) -> Result<T> {
        let slot = self.slot(room_id);
        let mut guard = slot.head.lock().await;
        let head = self.ensure_head(room_id, &slot, &mut guard).await?.clone();
        let mut batch = Batch::new(head);
        let out = f(self, &mut batch).await?;
        self.prepare(&mut batch).await?;
        let outcome = self.enqueue_commit(room_id, &slot, batch.head.epoch, std::mem::take(&mut batch.write));
        commit_outcome(outcome).await?;
        *guard = Some(batch.head);
        drop(guard);
        drop(batch.guards);
        Ok(out)
    }

    /// [`Self::write`] for a write whose last part must follow every event it holds: it is
    /// committed alone, under the room's lock, never merged with other writes.
    async fn write_alone<T>(&self, room_id: &RoomId, f: impl AsyncFnOnce(&Self, &mut Batch) -> Result<T>) -> Result<T> {
        let slot = self.slot(room_id);
        let mut guard = slot.head.lock().await;
        let head = self.ensure_head(room_id, &slot, &mut guard).await?.clone();
        let mut batch = Batch::new(head);
        let out = f(self, &mut batch).await?;
        self.store.write_room(room_id.as_str(), &batch.write).await?;
        *guard = Some(batch.head);
        drop(guard);
        drop(batch.guards);
        Ok(out)
    }

    /// Waits, for at most `FULL_STATE_WAIT`, until the room's state is complete: what lists
    /// its members must not answer with the few a partial-state join brought (a client
    /// would share its room keys with them only).
    pub async fn wait_full_state(&self, room_id: &RoomId) -> Result<()> {
        const FULL_STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
        let mut completed = self.states_completed.subscribe();
        let deadline = tokio::time::Instant::now() + FULL_STATE_WAIT;
        while self.store.partial_state(room_id.as_str()).await?.is_some() {
            if tokio::time::timeout_at(deadline, completed.changed()).await.is_err() {
                tracing::warn!(%room_id, "the room's state is still partial: answering with what is held");
                break;
            }
        }
        Ok(())
    }

    /// Creates a new room from its create event draft and the drafts that follow, atomically.
    pub async fn create(
        &self,
        version: &str,
        sender: &UserId,
        create_content: Value,
        rest: Vec<Draft>,
        alias: Option<String>,
        publish: bool,
    ) -> Result<OwnedRoomId> {
        self.create_as(None, version, sender, create_content, rest, alias, publish).await
    }

    /// [`Self::create`] with a room ID chosen beforehand (room versions before 12, whose IDs
    /// are not derived from the create event).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create_as(
        &self,
        room_id: Option<OwnedRoomId>,
        version: &str,
        sender: &UserId,
        create_content: Value,
        rest: Vec<Draft>,
        alias: Option<String>,
        publish: bool,
    ) -> Result<OwnedRoomId> {
        let (version, rules) = version::rules_for(version)?;
        let provisional_id = if rules.authorization.room_create_event_id_as_room_id {
            // Replaced by the create event's reference hash once it is built.
            RoomId::parse(format!("!placeholder:{}", self.server_name)).map_err(|e| Error::Internal(e.to_string()))?
        } else {
            room_id.unwrap_or_else(|| RoomId::new_v1(&self.server_name))
        };
        let mut batch = Batch::new(RoomHead::empty(provisional_id, version.clone(), rules));
        self.append(&mut batch, sender, Draft::state("m.room.create", "", create_content), None).await?;
        let room_id = batch.head.room_id.clone();
        batch.write.new_room = Some(NewRoom {
            room_id: room_id.to_string(),
            room_version: version.to_string(),
            creator: sender.to_string(),
        });
        for draft in rest {
            self.append(&mut batch, sender, draft, None).await?;
        }
        batch.write.aliases = alias.into_iter().map(|a| (a, sender.to_string())).collect();
        batch.write.publish = publish.then_some(true);
        self.prepare(&mut batch).await?;
        self.commit_new_room(batch).await?;
        Ok(room_id)
    }

    /// Commits the batch that creates a room and makes its head the room's.
    async fn commit_new_room(&self, mut batch: Batch) -> Result<()> {
        let room_id = batch.head.room_id.clone();
        let slot = self.slot(&room_id);
        let mut guard = slot.head.lock().await;
        self.store.write_room(room_id.as_str(), &batch.write).await?;
        batch.head.epoch = slot.epoch.load(Ordering::SeqCst);
        *guard = Some(batch.head);
        drop(guard);
        drop(batch.guards);
        Ok(())
    }

    /// Ensures the parsed PDUs of the given state entries are in the head.
    async fn load_pdus(&self, head: &mut RoomHead, ids: &[OwnedEventId]) -> Result<()> {
        let missing: Vec<String> =
            ids.iter().filter(|id| !head.pdus.contains_key(*id)).map(|id| id.to_string()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        for row in self.store.events(&missing).await? {
            let pdu = Pdu::from_row(&row)?;
            Arc::make_mut(&mut head.pdus).insert(pdu.event_id.clone(), Arc::new(pdu));
        }
        Ok(())
    }

    /// Builds, signs and authorises one event on top of the batch and adds it to the write.
    pub async fn append(
        &self,
        batch: &mut Batch,
        sender: &UserId,
        draft: Draft,
        txn: Option<(String, String)>,
    ) -> Result<OwnedEventId> {
        let kind = TimelineEventType::from(draft.kind.as_str());
        let raw_content = to_raw_value(&draft.content).map_err(|e| Error::bad_json(e.to_string()))?;
        let rules = batch.head.rules.clone();
        let auth_types = state_res::auth_types_for_event(
            &kind,
            sender,
            draft.state_key.as_deref(),
            &raw_content,
            &rules.authorization,
        )
        .map_err(Error::BadJson)?;
        let mut auth_events: Vec<OwnedEventId> =
            auth_types.iter().filter_map(|(t, k)| batch.head.state_id(&t.to_string(), k).cloned()).collect();
        auth_events.sort();
        auth_events.dedup();
        let mut needed = auth_events.clone();
        if let Some(create) = batch.head.state_id("m.room.create", "") {
            needed.push(create.clone());
        }
        self.load_pdus(&mut batch.head, &needed).await?;

        let is_v12_create =
            kind == TimelineEventType::RoomCreate && rules.authorization.room_create_event_id_as_room_id;
        let mut object = CanonicalJsonObject::new();
        let to_canonical = |v: Value| {
            CanonicalJsonValue::try_from(v).map_err(|e| Error::bad_json(format!("content is not canonical JSON: {e}")))
        };
        // Room versions 1 and 2 reference events as `[event_id, {hashes}]` pairs; the hashes
        // are informative only (no server checks them), so none are claimed.
        let pairs = rules.events_reference_format == EventsReferenceFormatVersion::V1;
        let ids = |list: &[OwnedEventId]| {
            CanonicalJsonValue::Array(
                list.iter()
                    .map(|id| {
                        let id = CanonicalJsonValue::String(id.to_string());
                        if pairs {
                            CanonicalJsonValue::Array(vec![id, CanonicalJsonValue::Object(Default::default())])
                        } else {
                            id
                        }
                    })
                    .collect(),
            )
        };
        object.insert("auth_events".into(), ids(&auth_events));
        if kind == TimelineEventType::RoomRedaction
            && !rules.redaction.keep_room_redaction_redacts
            && let Some(redacts) = draft.content.get("redacts")
        {
            // Before room version 11, `redacts` is a top-level key.
            object.insert("redacts".into(), to_canonical(redacts.clone())?);
        }
        object.insert("content".into(), to_canonical(draft.content.clone())?);
        let depth = batch.head.depth + 1;
        object.insert("depth".into(), CanonicalJsonValue::Integer(ruma::Int::from(depth as u32)));
        let mut ts = now_ms();
        if kind == TimelineEventType::RoomCreate {
            let previous = self.last_create_ts.fetch_max(ts, Ordering::SeqCst);
            if previous >= ts {
                ts = self.last_create_ts.fetch_add(1, Ordering::SeqCst) + 1;
            }
        }
        object.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(ruma::Int::new_saturating(ts)));
        object.insert("prev_events".into(), ids(&batch.head.extremities));
        if !is_v12_create {
            object.insert("room_id".into(), CanonicalJsonValue::String(batch.head.room_id.to_string()));
        }
        object.insert("sender".into(), CanonicalJsonValue::String(sender.to_string()));
        if let Some(state_key) = &draft.state_key {
            object.insert("state_key".into(), CanonicalJsonValue::String(state_key.clone()));
        }
        object.insert("type".into(), CanonicalJsonValue::String(draft.kind.clone()));
        // Room versions 1 and 2 name events `$opaque:origin` inside the event, hashed and
        // signed with it; later versions derive the ID from the event's reference hash.
        let opaque_id = (rules.event_id_format == EventIdFormatVersion::V1).then(|| {
            let id = format!("${}:{}", crate::accounts::random_string(18), self.server_name);
            object.insert("event_id".into(), CanonicalJsonValue::String(id.clone()));
            id
        });
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            &self.keys.key_pair,
            &mut object,
            &rules.redaction,
        )
        .map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => Error::TooLarge,
            e => Error::bad_json(format!("event cannot be signed: {e}")),
        })?;
        let hash = ruma::signatures::reference_hash(&object, &rules).map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => Error::TooLarge,
            e => Error::bad_json(e.to_string()),
        })?;
        let event_id = OwnedEventId::try_from(opaque_id.unwrap_or_else(|| format!("${hash}")))
            .map_err(|e| Error::Internal(e.to_string()))?;
        if is_v12_create {
            batch.head.room_id =
                OwnedRoomId::try_from(format!("!{hash}")).map_err(|e| Error::Internal(e.to_string()))?;
        }
        let json = serde_json::to_string(&object).map_err(|e| Error::Internal(e.to_string()))?;
        let pdu = Pdu::parse(event_id.as_str(), batch.head.room_id.as_str(), &json)?;

        let head = &batch.head;
        state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |id| {
            head.pdus.get(id).map(|p| p.as_ref())
        })
        .map_err(|e| Error::forbidden(format!("event not authorised: {e}")))?;
        state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |t: &StateEventType, k: &str| {
            head.state_pdu(&t.to_string(), k).map(|p| p.as_ref())
        })
        .map_err(|e| Error::forbidden(format!("event not authorised: {e}")))?;

        let prev_events = batch.head.extremities.iter().map(ToString::to_string).collect();
        let recorded = Recorded { pdu, json, depth: depth as i64, ts, prev_events, txn };
        self.record(batch, recorded, &draft.content);
        batch.head.extremities = vec![event_id.clone()];
        tracing::debug!(room_id = %batch.head.room_id, %event_id, "event appended");
        Ok(event_id)
    }

    /// Adds an authorised event to the batch: its stream position, the state it changes
    /// (a new state group), the head's members and pdus, and the row to write. The caller
    /// sets the extremities.
    fn record(&self, batch: &mut Batch, recorded: Recorded, content: &Value) {
        let Recorded { pdu, json, depth, ts, prev_events, txn } = recorded;
        let event_id = pdu.event_id.clone();
        let kind = pdu.kind.to_string();
        let relates = content.get("m.relates_to");
        let relates_to = relates.and_then(|r| r.get("event_id")).and_then(Value::as_str).map(str::to_owned);
        // The room's members, and whoever this event changes the membership of.
        let scope = crate::sync::stream::Scope::event(
            batch.head.room_id.as_str(),
            &kind,
            pdu.state_key.as_deref(),
            relates_to.is_some(),
        );
        let guard = self.streams.allocate_for(scope);
        let pos = guard.pos();
        batch.guards.push(guard);
        let group_before = batch.head.group;
        let mut group_after = group_before;
        let replaces_state = pdu
            .state_key
            .as_ref()
            .and_then(|key| batch.head.state.get(&(kind.clone(), key.clone())))
            .map(ToString::to_string);
        if let Some(state_key) = &pdu.state_key {
            Arc::make_mut(&mut batch.head.state).insert((kind.clone(), state_key.clone()), event_id.clone());
            group_after = self.next_group.fetch_add(1, Ordering::SeqCst);
            let group = if batch.head.chain_len >= MAX_STATE_CHAIN || group_before == 0 {
                batch.head.chain_len = 0;
                NewStateGroup {
                    id: group_after,
                    prev_group: None,
                    chain_len: 0,
                    delta: batch.head.state.iter().map(|((t, k), e)| (t.clone(), k.clone(), e.to_string())).collect(),
                }
            } else {
                batch.head.chain_len += 1;
                NewStateGroup {
                    id: group_after,
                    prev_group: Some(group_before),
                    chain_len: batch.head.chain_len,
                    delta: vec![(kind.clone(), state_key.clone(), event_id.to_string())],
                }
            };
            batch.write.state_groups.push(group);
            batch.head.group = group_after;
            Arc::make_mut(&mut batch.head.pdus).insert(event_id.clone(), Arc::new(pdu.clone()));
        }
        let rel_type = relates.and_then(|r| r.get("rel_type")).and_then(Value::as_str).map(str::to_owned);
        let thread_root = if rel_type.as_deref() == Some("m.thread") { relates_to.clone() } else { None };
        let membership = (kind == "m.room.member")
            .then(|| content.get("membership").and_then(Value::as_str).map(str::to_owned))
            .flatten();
        if let (Some(membership), Some(user)) = (&membership, &pdu.state_key) {
            let joined = Arc::make_mut(&mut batch.head.joined);
            if membership == "join" {
                joined.insert(user.clone());
            } else if joined.remove(user) {
                let unshared = unshared_by_leave(joined, user, self.server_name.as_str());
                batch.write.unshared.extend(unshared);
            }
        }

        batch.write.events.push(NewEvent {
            stream_pos: pos,
            event_id: event_id.to_string(),
            sender: pdu.sender.to_string(),
            event_type: kind,
            state_key: pdu.state_key.clone(),
            membership,
            depth,
            origin_server_ts: ts,
            json,
            prev_events,
            state_group_before: group_before,
            state_group_after: group_after,
            rel_type,
            relates_to,
            thread_root,
            txn,
            notify: 0,
            outlier: false,
            replaces_state,
            expires_ts: self.expiry.requested(&pdu, content),
        });
        batch.head.depth = batch.head.depth.max(depth as u64);
    }

    /// The content of a current state event of a room, if it has one.
    pub(crate) async fn current_state_content(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<Value>> {
        let row = self.store.current_state_event(room_id.as_str(), kind, state_key).await?;
        Ok(row.and_then(|row| Pdu::from_row(&row).ok()).map(|pdu| pdu.content_value()))
    }

    /// The room's current describing state events ([`DESCRIBING_STATE`]).
    pub async fn describing_state(&self, room_id: &RoomId) -> Result<Vec<crate::store::EventRow>> {
        let mut rows = Vec::new();
        for kind in DESCRIBING_STATE {
            if let Some(row) = self.store.current_state_event(room_id.as_str(), kind, "").await? {
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// Continues outlier positions below those stored.
    pub async fn load_outlier_floor(&self) -> Result<()> {
        let lowest = self.store.min_stream_pos().await?;
        self.next_outlier.store(lowest.min(0) - 1, Ordering::SeqCst);
        Ok(())
    }

    /// Sets who countersigns invites of other servers' users.
    pub fn on_remote_invite(&self, signer: InviteSigner) {
        let _ = self.invite_signer.set(signer);
    }

    /// Sets push delivery, told what each committed write notifies.
    pub fn on_push(&self, push: Arc<crate::push::Push>) {
        let _ = self.push.set(push);
    }

    /// Whether a user has a pusher (the notification pass names only those).
    pub(crate) fn has_pusher(&self, user_id: &str) -> bool {
        self.push.get().is_some_and(|push| push.has_pusher(user_id))
    }

    /// Sets who is told when committed writes queue events for other servers.
    pub fn on_outbox(&self, wake: OutboxWake) {
        let _ = self.outbox_wake.set(wake);
    }

    /// The servers with joined members in a room (with, while its state is partial, those
    /// its resident server named), this server first if it has any.
    pub async fn resident_servers(&self, room_id: &str) -> Result<Vec<String>> {
        // From the room's head: a large room's memberships are costly to read.
        let Ok(room_id) = RoomId::parse(room_id) else { return Ok(Vec::new()) };
        let head = match self.head(&room_id).await {
            Ok(head) => head,
            Err(Error::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut servers: Vec<String> =
            head.joined.iter().filter_map(|user| user.split_once(':').map(|(_, server)| server.to_owned())).collect();
        servers.extend(head.partial_servers.iter().flat_map(|s| s.iter()).cloned());
        servers.sort();
        servers.dedup();
        if let Some(own) = servers.iter().position(|s| *s == self.server_name.as_str()) {
            let own = servers.remove(own);
            servers.insert(0, own);
        }
        Ok(servers)
    }

    /// The servers to try to join a room of a local alias through: this one first, as it
    /// holds the alias, then the room's other resident servers.
    pub async fn alias_servers(&self, room_id: &str) -> Result<Vec<String>> {
        let mut servers = self.resident_servers(room_id).await?;
        if servers.first().map(String::as_str) != Some(self.server_name.as_str()) {
            servers.insert(0, self.server_name.to_string());
        }
        Ok(servers)
    }

    /// Parsed power levels of a room head (defaults when there is no event yet).
    pub fn power_levels(head: &RoomHead) -> ruma::events::room::power_levels::RoomPowerLevels {
        use ruma::events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource};
        let creators = Self::creators(head);
        let content = head
            .state_pdu("m.room.power_levels", "")
            .and_then(|p| serde_json::from_str::<RoomPowerLevelsEventContent>(p.content.get()).ok());
        RoomPowerLevels::new(RoomPowerLevelsSource::from(content), &head.rules.authorization, creators)
    }

    /// The room's creators (the create event's sender, plus additional creators in v12).
    pub fn creators(head: &RoomHead) -> Vec<OwnedUserId> {
        let Some(create) = head.state_pdu("m.room.create", "") else {
            return Vec::new();
        };
        let mut creators = vec![create.sender.clone()];
        if head.rules.authorization.additional_room_creators
            && let Some(extra) = create.content_value().get("additional_creators").and_then(Value::as_array)
        {
            creators.extend(extra.iter().filter_map(|u| u.as_str()).filter_map(|u| UserId::parse(u).ok()));
        }
        creators
    }

    /// A read-only snapshot of a room's head.
    pub async fn head(&self, room_id: &RoomId) -> Result<RoomHead> {
        let slot = self.slot(room_id);
        let mut guard = slot.head.lock().await;
        let head = self.ensure_head(room_id, &slot, &mut guard).await?;
        let needed: Vec<OwnedEventId> = ["m.room.create", "m.room.power_levels", "m.room.join_rules"]
            .iter()
            .filter_map(|t| head.state_id(t, "").cloned())
            .collect();
        self.load_pdus(head, &needed).await?;
        Ok(head.clone())
    }
}

/// Waits for a queued write's commit.
/// The remote users who stop sharing a room with a local user when `left` leaves it:
/// `left` if remote and local users remain, every remote member if `left` was the last
/// local one.
fn unshared_by_leave(joined: &HashSet<String>, left: &str, server_name: &str) -> Vec<String> {
    let is_local = |user: &str| user.split_once(':').is_some_and(|(_, server)| server == server_name);
    let local_remains = joined.iter().any(|u| is_local(u));
    match (is_local(left), local_remains) {
        (false, _) => vec![left.to_owned()],
        (true, false) => joined.iter().filter(|u| !is_local(u)).cloned().collect(),
        (true, true) => Vec::new(),
    }
}

async fn commit_outcome(outcome: tokio::sync::oneshot::Receiver<Result<()>>) -> Result<()> {
    outcome.await.map_err(|_| Error::Internal("room writer went away".into()))?
}

/// The `(sender, device, transaction ID)` of a write's client sends, with their event IDs.
fn txn_keys(write: &RoomWrite) -> impl Iterator<Item = ((String, String, String), String)> + '_ {
    write.events.iter().filter_map(|e| {
        let (device, txn) = e.txn.as_ref()?;
        Some(((e.sender.clone(), device.clone(), txn.clone()), e.event_id.clone()))
    })
}

/// A room's committer: commits the queued writes in build order, everything that
/// accumulated during the previous commit in one transaction, until the queue is empty.
async fn run_commits(
    store: Store,
    room_id: String,
    slot: Arc<RoomSlot>,
    wake: Option<OutboxWake>,
    push: Option<Arc<crate::push::Push>>,
) {
    loop {
        let jobs = {
            let mut commits = slot.commits.lock().expect("commits lock poisoned");
            if commits.queue.is_empty() {
                commits.running = false;
                return;
            }
            std::mem::take(&mut commits.queue)
        };
        let mut keys = Vec::new();
        for job in &jobs {
            keys.extend(txn_keys(&job.write).map(|(key, event_id)| (key, job.epoch, event_id)));
        }
        let epoch = slot.epoch.load(Ordering::SeqCst);
        let (current, stale): (Vec<CommitJob>, Vec<CommitJob>) = jobs.into_iter().partition(|j| j.epoch == epoch);
        let mut merged = RoomWrite::default();
        let mut replies = Vec::with_capacity(current.len());
        for job in current {
            merged.append(job.write);
            replies.push(job.done);
        }
        let result = if merged.is_empty() { Ok(()) } else { store.write_room(&room_id, &merged).await };
        if let Err(e) = &result {
            tracing::error!(room_id, error = %e, "room commit failed");
            slot.epoch.fetch_add(1, Ordering::SeqCst);
        } else {
            if let Some(wake) = wake.as_ref().filter(|_| !merged.outbox.is_empty()) {
                let destinations: BTreeSet<String> = merged.outbox.iter().map(|(d, _)| d.clone()).collect();
                wake(destinations.into_iter().collect());
            }
            if let Some(push) = push.as_ref().filter(|_| !merged.pushes.is_empty()) {
                push.notify(std::mem::take(&mut merged.pushes));
            }
        }
        {
            // The rows are visible now, or never will be: retries look in the store.
            let mut commits = slot.commits.lock().expect("commits lock poisoned");
            for (key, job_epoch, event_id) in keys {
                if commits.in_flight.get(&key).is_some_and(|(e, id)| *e == job_epoch && *id == event_id) {
                    commits.in_flight.remove(&key);
                }
            }
        }
        for done in replies {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| Error::Internal(e.to_string())));
        }
        for job in stale {
            let _ = job.done.send(Err(Error::Internal("built on a commit that failed".into())));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::unshared_by_leave;

    #[test]
    fn a_leave_unshares_the_leaver_or_every_remote_member_with_the_last_local_one() {
        let joined = |users: &[&str]| users.iter().map(|u| u.to_string()).collect::<HashSet<_>>();
        let here = "gov.test:8448";
        // A remote member leaves: they alone stop sharing the room.
        let after = joined(&["@bob:gov.test:8448", "@carol:edu.test"]);
        assert_eq!(unshared_by_leave(&after, "@alice:police.test", here), ["@alice:police.test"]);
        // A local member leaves while another stays: nothing changes.
        assert!(unshared_by_leave(&after, "@dan:gov.test:8448", here).is_empty());
        // The last local member leaves: every remote member stops sharing it.
        let after = joined(&["@carol:edu.test"]);
        assert_eq!(unshared_by_leave(&after, "@bob:gov.test:8448", here), ["@carol:edu.test"]);
    }
}
