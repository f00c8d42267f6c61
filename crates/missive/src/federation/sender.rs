//! The outbound queue: one worker per destination sends the PDUs the room writes queued in
//! `federation_outbox`, as transactions of at most 50, one in flight per destination,
//! backing off exponentially while the destination fails. The queue is in the database,
//! written with the events: nothing queued is lost when either side restarts.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId,
    api::federation::transactions::{edu::Edu, send_transaction_message},
    serde::Raw,
};
use serde_json::{Value, value::RawValue};
use tokio::sync::Notify;

use super::{Federation, FederationError};

/// PDUs and EDUs per transaction (the spec's limits).
const PDUS_PER_TRANSACTION: i64 = 50;
const EDUS_PER_TRANSACTION: usize = 100;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The destinations' workers.
pub struct Sender {
    federation: Arc<Federation>,
    workers: Mutex<HashMap<String, Arc<Notify>>>,
    /// EDUs waiting per destination. They live in memory: typing and receipts are
    /// ephemeral, and a to-device message lost in a restart is asked again by the
    /// clients' key requests.
    edus: Mutex<HashMap<String, Vec<Value>>>,
    /// The server's main runtime: wake-ups come from the rooms' committer runtime, which
    /// must not run the workers.
    runtime: tokio::runtime::Handle,
    /// Makes transaction IDs unique across restarts of a worker.
    counter: std::sync::atomic::AtomicU64,
    /// What operators see of each destination (the admin API).
    status: Mutex<HashMap<String, DestinationStatus>>,
    /// Wakes a destination's worker out of its backoff.
    resets: Mutex<HashMap<String, Arc<Notify>>>,
}

/// A destination's state, in the shape of Synapse's admin API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DestinationStatus {
    pub destination: String,
    /// When the current run of failures began (unset while the destination answers).
    pub failure_ts: Option<i64>,
    /// When the last attempt failed.
    pub retry_last_ts: i64,
    /// How long the worker waits before the next attempt, in milliseconds.
    pub retry_interval: i64,
    /// When a transaction last went through.
    pub last_success_ts: Option<i64>,
}

impl Sender {
    /// A sender, on the current runtime; [`Sender::resume`] starts the workers of what was queued before a restart.
    pub fn new(federation: Arc<Federation>) -> Arc<Self> {
        Arc::new(Self {
            federation,
            workers: Mutex::new(HashMap::new()),
            edus: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            counter: std::sync::atomic::AtomicU64::new(crate::store::now_ms() as u64),
            status: Mutex::new(HashMap::new()),
            resets: Mutex::new(HashMap::new()),
        })
    }

    /// Starts a worker for every destination with queued PDUs.
    pub async fn resume(self: &Arc<Self>) {
        match self.federation.store.outbox_destinations().await {
            Ok(destinations) => self.wake(destinations),
            Err(e) => tracing::error!(error = %e, "cannot read the federation queue"),
        }
    }

    /// Tells the destinations' workers that PDUs are queued (starting them if needed).
    pub fn wake(self: &Arc<Self>, destinations: impl IntoIterator<Item = String>) {
        for destination in destinations {
            let notify = {
                let mut workers = self.workers.lock().expect("sender workers poisoned");
                match workers.get(&destination) {
                    Some(notify) => notify.clone(),
                    None => {
                        let notify = Arc::new(Notify::new());
                        workers.insert(destination.clone(), notify.clone());
                        self.record(&destination, |_| {});
                        self.runtime.spawn(self.clone().work(destination, notify.clone()));
                        notify
                    }
                }
            };
            notify.notify_one();
        }
    }

    fn record(&self, destination: &str, change: impl FnOnce(&mut DestinationStatus)) {
        let mut all = self.status.lock().expect("destination status poisoned");
        let status = all
            .entry(destination.to_owned())
            .or_insert_with(|| DestinationStatus { destination: destination.to_owned(), ..Default::default() });
        change(status);
    }

    /// Every destination this server has sent to since it started, with its state.
    pub fn destinations(&self) -> Vec<DestinationStatus> {
        let mut all: Vec<DestinationStatus> =
            self.status.lock().expect("destination status poisoned").values().cloned().collect();
        all.sort_by(|a, b| a.destination.cmp(&b.destination));
        all
    }

    /// Ends a destination's backoff: its worker tries again now.
    pub fn reset(self: &Arc<Self>, destination: &str) -> bool {
        let known = self.workers.lock().expect("sender workers poisoned").contains_key(destination);
        if known {
            self.record(destination, |status| status.retry_interval = 0);
            if let Some(notify) = self.resets.lock().expect("resets poisoned").get(destination) {
                notify.notify_one();
            }
        }
        known
    }

    /// A destination was heard from (it signed a request to this server): it is up, so a
    /// backoff on it ends now rather than at its next retry, as Synapse does.
    pub fn heard_from(self: &Arc<Self>, destination: &str) {
        let backing_off = self
            .status
            .lock()
            .expect("destination status poisoned")
            .get(destination)
            .is_some_and(|status| status.retry_interval > 0);
        if backing_off {
            self.reset(destination);
        }
    }

    /// Queues an EDU for a destination.
    pub fn queue_edu(self: &Arc<Self>, destination: &str, edu: Value) {
        self.edus.lock().expect("edu queue poisoned").entry(destination.to_owned()).or_default().push(edu);
        self.wake([destination.to_owned()]);
    }

    fn take_edus(&self, destination: &str) -> Vec<Value> {
        let mut queues = self.edus.lock().expect("edu queue poisoned");
        let Some(queue) = queues.get_mut(destination) else { return Vec::new() };
        let take = queue.len().min(EDUS_PER_TRANSACTION);
        queue.drain(..take).collect()
    }

    fn put_back_edus(&self, destination: &str, edus: Vec<Value>) {
        let mut queues = self.edus.lock().expect("edu queue poisoned");
        let queue = queues.entry(destination.to_owned()).or_default();
        queue.splice(0..0, edus);
    }

    async fn work(self: Arc<Self>, destination: String, notify: Arc<Notify>) {
        let Ok(server) = OwnedServerName::try_from(destination.as_str()) else {
            tracing::error!(%destination, "queued PDUs for an invalid server name");
            return;
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            let batch = match self.federation.store.outbox_batch(&destination, PDUS_PER_TRANSACTION).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(%destination, error = %e, "cannot read the federation queue");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let edus = self.take_edus(&destination);
            if batch.is_empty() && edus.is_empty() {
                notify.notified().await;
                continue;
            }
            let positions: Vec<i64> = batch.iter().map(|(pos, _)| *pos).collect();
            let pdus: Vec<Box<RawValue>> =
                batch.into_iter().filter_map(|(_, json)| RawValue::from_string(json).ok()).collect();
            let raw_edus: Vec<Raw<Edu>> =
                edus.iter().filter_map(|edu| serde_json::value::to_raw_value(edu).ok().map(Raw::from_json)).collect();
            let txn_id = OwnedTransactionId::from(format!(
                "{}-{}-{}",
                positions.first().copied().unwrap_or_default(),
                positions.len(),
                self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let mut request = send_transaction_message::v1::Request::new(
                txn_id,
                self.federation.server_name.clone(),
                MilliSecondsSinceUnixEpoch::now(),
            );
            request.pdus = pdus;
            request.edus = raw_edus;
            let sent = match self.federation.send(&server, request).await {
                Ok(response) => Ok(Some(response)),
                // Taken (a success), though its answer lacks the per-PDU results.
                Err(FederationError::UnreadableAnswer(_, why)) => {
                    tracing::debug!(%destination, %why, "transaction taken with an unreadable answer");
                    Ok(None)
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(response) => {
                    for (event_id, result) in response.iter().flat_map(|r| &r.pdus) {
                        if let Err(e) = result {
                            tracing::info!(%destination, %event_id, error = %e, "destination refused a PDU");
                        }
                    }
                    if let Err(e) = self.federation.store.outbox_delivered(&destination, &positions).await {
                        tracing::error!(%destination, error = %e, "cannot dequeue delivered PDUs");
                    }
                    if backoff > FIRST_BACKOFF {
                        tracing::info!(%destination, "destination reachable again");
                    }
                    backoff = FIRST_BACKOFF;
                    self.record(&destination, |status| {
                        status.failure_ts = None;
                        status.retry_interval = 0;
                        status.last_success_ts = Some(crate::store::now_ms());
                    });
                }
                Err(e @ (FederationError::NotAllowed(_) | FederationError::Disabled)) => {
                    // Policy, not an outage: what waits for this server is dropped.
                    tracing::info!(%destination, error = %e, dropped = positions.len(), "destination not federated with");
                    if let Err(e) = self.federation.store.outbox_delivered(&destination, &positions).await {
                        tracing::error!(%destination, error = %e, "cannot drop queued PDUs");
                    }
                }
                Err(e) => {
                    self.put_back_edus(&destination, edus);
                    let now = crate::store::now_ms();
                    self.record(&destination, |status| {
                        status.failure_ts = status.failure_ts.or(Some(now));
                        status.retry_last_ts = now;
                        status.retry_interval = backoff.as_millis() as i64;
                    });
                    tracing::warn!(%destination, error = %e, retry_in = ?backoff, queued = positions.len(), "transaction failed; backing off");
                    let reset =
                        self.resets.lock().expect("resets poisoned").entry(destination.clone()).or_default().clone();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(MAX_BACKOFF),
                        _ = reset.notified() => backoff = FIRST_BACKOFF,
                    }
                }
            }
        }
    }
}
