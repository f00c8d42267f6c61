//! Disappearing messages (MSC2228): a message whose content carries
//! `org.matrix.self_destruct_after` (a time in milliseconds since the epoch) loses its
//! content at that time, as a redaction would take it, here and on every server that
//! honours the field. No redaction event is sent: the sender asked for it when sending.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use serde_json::Value;

use super::{Rooms, pdu::Pdu, timeline::pruned_unless_redacted, version};
use crate::{error::Result, store::now_ms};

/// The content field naming the time a message disappears.
const FIELD: &str = "org.matrix.self_destruct_after";
/// Messages expired per store round trip.
const BATCH: i64 = 100;
/// Longest sleep of the job: a message recorded while it slept, due sooner than what it
/// was waiting for, is late by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Whether disappearing messages are honoured, and the job's wake-up.
pub(super) struct Expiry {
    enabled: bool,
    /// The soonest expiry recorded since the job last looked.
    soonest: AtomicI64,
    wake: tokio::sync::Notify,
}

impl Expiry {
    pub(super) fn new(enabled: bool) -> Self {
        Self { enabled, soonest: AtomicI64::new(i64::MAX), wake: tokio::sync::Notify::new() }
    }

    /// When the message disappears, if its sender asked and this server honours it; the
    /// job is woken when it is due before what it waits for. State events never disappear:
    /// the room's authorisation rests on them.
    pub(super) fn requested(&self, pdu: &Pdu, content: &Value) -> Option<i64> {
        if !self.enabled || pdu.state_key.is_some() {
            return None;
        }
        let at = content.get(FIELD)?.as_i64()?;
        if self.soonest.fetch_min(at, Ordering::AcqRel) > at {
            self.wake.notify_one();
        }
        Some(at)
    }
}

impl Rooms {
    /// Starts the job that deletes the content of messages whose time has come.
    pub fn spawn_expiry(self: &Arc<Self>) {
        if !self.expiry.enabled {
            return;
        }
        let rooms = self.clone();
        tokio::spawn(async move {
            loop {
                let now = now_ms();
                // Recorded before its write commits: a message due by now may not be
                // readable yet, and is looked for again shortly.
                let recorded = match rooms.expiry.soonest.swap(i64::MAX, Ordering::AcqRel) {
                    at if at <= now => now + 100,
                    at => at,
                };
                let next = match rooms.expire_due(now).await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot expire disappearing messages");
                        Some(now + MAX_SLEEP.as_millis() as i64)
                    }
                };
                let next = next.unwrap_or(i64::MAX).min(recorded).min(rooms.expiry.soonest.load(Ordering::Acquire));
                let wait = Duration::from_millis(next.saturating_sub(now_ms()).max(0) as u64).min(MAX_SLEEP);
                if !wait.is_zero() {
                    let _ = tokio::time::timeout(wait, rooms.expiry.wake.notified()).await;
                }
            }
        });
    }

    /// Deletes the content of every message due by `now`; answers when the next is due.
    async fn expire_due(&self, now: i64) -> Result<Option<i64>> {
        loop {
            let due = self.store.due_expiries(now, BATCH).await?;
            for (event_id, room_id) in &due {
                let row = self.store.event(event_id).await?;
                let pruned = match (row, self.store.room(room_id).await?) {
                    (Some(row), Some((room_version, _))) => {
                        let (_, rules) = version::rules_for(&room_version)?;
                        pruned_unless_redacted(&row, &rules)?
                    }
                    _ => None,
                };
                self.store.expire_event(event_id, pruned.as_deref()).await?;
                tracing::debug!(%room_id, %event_id, "disappearing message expired");
            }
            if (due.len() as i64) < BATCH {
                return Ok(self.store.next_expiry().await?);
            }
        }
    }
}
