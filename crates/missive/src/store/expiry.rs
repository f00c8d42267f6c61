//! Messages that disappear at a time their sender chose (MSC2228).

use super::{Store, StoreResult};

impl Store {
    /// Messages whose time has come, soonest first: `(event ID, room ID)`.
    pub async fn due_expiries(&self, now: i64, limit: i64) -> StoreResult<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT event_id, room_id FROM event_expiry WHERE expires_ts <= $1 ORDER BY expires_ts LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.write)
        .await?)
    }

    /// When the next message is due to disappear.
    pub async fn next_expiry(&self) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT MIN(expires_ts) FROM event_expiry").fetch_one(&self.write).await?)
    }

    /// Deletes an expired message's content: its JSON becomes `pruned` (none when it was
    /// already redacted), its relations go, and so does its expiry, in one transaction.
    pub async fn expire_event(&self, event_id: &str, pruned: Option<&str>) -> StoreResult<()> {
        self.recent.forget_events(&[event_id].into());
        let mut tx = self.write.begin().await?;
        prune_in_place(&mut tx, event_id, pruned).await?;
        tx.commit().await?;
        self.recent.forget_members(None);
        Ok(())
    }
}

/// Replaces a stored event's JSON by its pruned form (none: it already is), drops its
/// relations and its expiry: its content is gone, its place in the room stays.
pub(super) async fn prune_in_place(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    event_id: &str,
    pruned: Option<&str>,
) -> StoreResult<()> {
    if let Some(json) = pruned {
        sqlx::query(
            "UPDATE events SET json = $1, rel_type = NULL, relates_to = NULL, thread_root = NULL WHERE event_id = $2",
        )
        .bind(json)
        .bind(event_id)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("DELETE FROM event_expiry WHERE event_id = $1").bind(event_id).execute(&mut **tx).await?;
    Ok(())
}
