//! Reports of events, rooms and users, kept for the operator.
//!
//! A report names what it is about and why; it never copies the content reported (the
//! operator reads the event where it is stored, or cannot, when it is encrypted).

use std::sync::Arc;

use ruma::{EventId, RoomId, UserId};

use crate::{
    error::{Error, Result},
    rooms::{Rooms, timeline::Viewer},
    store::{NewReport, Store},
};

/// The reports service.
pub struct Reports {
    store: Store,
    rooms: Arc<Rooms>,
}

impl Reports {
    /// Creates the service.
    pub fn new(store: Store, rooms: Arc<Rooms>) -> Self {
        Self { store, rooms }
    }

    /// Reports an event the reporter can see in a room they are joined to.
    pub async fn report_event(
        &self,
        reporter: Viewer<'_>,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<&str>,
        score: Option<i64>,
    ) -> Result<()> {
        if score.is_some_and(|s| !(-100..=0).contains(&s)) {
            return Err(Error::invalid_param("score must be between -100 and 0"));
        }
        let joined = self.store.membership(room_id.as_str(), reporter.user_id.as_str()).await?;
        if joined.is_none_or(|m| m.membership != "join") {
            return Err(Error::not_found("event not found"));
        }
        self.rooms.event_for(reporter, room_id, event_id).await?;
        self.store
            .insert_report(NewReport {
                reporter: reporter.user_id.as_str(),
                room_id: Some(room_id.as_str()),
                event_id: Some(event_id.as_str()),
                reason,
                score,
                ..Default::default()
            })
            .await?;
        tracing::info!(%room_id, %event_id, reporter = %reporter.user_id, "event reported");
        Ok(())
    }

    /// Reports a room known to this server.
    pub async fn report_room(&self, reporter: &UserId, room_id: &RoomId, reason: &str) -> Result<()> {
        if self.store.room(room_id.as_str()).await?.is_none() {
            return Err(Error::not_found("room not found"));
        }
        self.store
            .insert_report(NewReport {
                reporter: reporter.as_str(),
                room_id: Some(room_id.as_str()),
                reason: Some(reason),
                ..Default::default()
            })
            .await?;
        tracing::info!(%room_id, %reporter, "room reported");
        Ok(())
    }

    /// Reports a user of this server.
    pub async fn report_user(&self, reporter: &UserId, user_id: &UserId, reason: &str) -> Result<()> {
        if !self.store.user_exists(user_id.as_str()).await? {
            return Err(Error::not_found("user not found"));
        }
        self.store
            .insert_report(NewReport {
                reporter: reporter.as_str(),
                target_user_id: Some(user_id.as_str()),
                reason: Some(reason),
                ..Default::default()
            })
            .await?;
        tracing::info!(%user_id, %reporter, "user reported");
        Ok(())
    }
}
