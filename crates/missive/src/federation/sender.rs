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
    api::federation::transactions::send_transaction_message,
};
use serde_json::value::RawValue;
use tokio::sync::Notify;

use super::Federation;

/// PDUs per transaction (the spec's limit).
const PDUS_PER_TRANSACTION: i64 = 50;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The destinations' workers.
pub struct Sender {
    federation: Arc<Federation>,
    workers: Mutex<HashMap<String, Arc<Notify>>>,
    /// The server's main runtime: wake-ups come from the rooms' committer runtime, which
    /// must not run the workers.
    runtime: tokio::runtime::Handle,
}

impl Sender {
    /// A sender, on the current runtime; [`Sender::resume`] starts the workers of what was queued before a restart.
    pub fn new(federation: Arc<Federation>) -> Arc<Self> {
        Arc::new(Self { federation, workers: Mutex::new(HashMap::new()), runtime: tokio::runtime::Handle::current() })
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
                        self.runtime.spawn(self.clone().work(destination, notify.clone()));
                        notify
                    }
                }
            };
            notify.notify_one();
        }
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
            if batch.is_empty() {
                notify.notified().await;
                continue;
            }
            let positions: Vec<i64> = batch.iter().map(|(pos, _)| *pos).collect();
            let pdus: Vec<Box<RawValue>> =
                batch.into_iter().filter_map(|(_, json)| RawValue::from_string(json).ok()).collect();
            let txn_id = OwnedTransactionId::from(format!("{}-{}", positions[0], positions.len()));
            let mut request = send_transaction_message::v1::Request::new(
                txn_id,
                self.federation.server_name.clone(),
                MilliSecondsSinceUnixEpoch::now(),
            );
            request.pdus = pdus;
            match self.federation.send(&server, request).await {
                Ok(response) => {
                    for (event_id, result) in &response.pdus {
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
                }
                Err(e) => {
                    tracing::warn!(%destination, error = %e, retry_in = ?backoff, queued = positions.len(), "transaction failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
