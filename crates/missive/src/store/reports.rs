//! Content reports: what users reported to the operator.

use super::{Store, StoreResult, now_ms};

/// A report to record: of an event (room and event set), a room (room set) or a user.
#[derive(Debug, Clone, Default)]
pub struct NewReport<'a> {
    pub reporter: &'a str,
    pub room_id: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub target_user_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub score: Option<i64>,
}

impl Store {
    /// Records a report for the operator.
    pub async fn insert_report(&self, report: NewReport<'_>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO reports (reporter, room_id, event_id, target_user_id, reason, score, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(report.reporter)
        .bind(report.room_id)
        .bind(report.event_id)
        .bind(report.target_user_id)
        .bind(report.reason)
        .bind(report.score)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }
}
