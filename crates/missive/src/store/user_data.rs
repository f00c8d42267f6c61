//! Per-user data: account data (push rules included), receipts, notification counts, filters.

use sqlx::Row;

use super::{Store, StoreResult, notifications, now_ms, sync_memory::Part};

/// An account data entry; `room_id` is empty for global data.
#[derive(Debug, Clone)]
pub struct AccountDataRow {
    pub room_id: String,
    pub data_type: String,
    pub content: String,
}

/// A receipt as stored.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    pub user_id: String,
    pub receipt_type: String,
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
}

impl Store {
    /// Sets an account data entry at a stream position.
    pub async fn set_account_data(
        &self,
        user_id: &str,
        room_id: &str,
        data_type: &str,
        content: &str,
        pos: i64,
    ) -> StoreResult<()> {
        let _forget = self.sync_memory.forget(Part::AccountData, [user_id]);
        sqlx::query(
            "INSERT INTO account_data (user_id, room_id, data_type, content, stream_pos, updated_ts) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET content = excluded.content, \
             stream_pos = excluded.stream_pos, updated_ts = excluded.updated_ts",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(data_type)
        .bind(content)
        .bind(pos)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// One account data entry.
    pub async fn account_data(&self, user_id: &str, room_id: &str, data_type: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(data_type)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Every account data entry of a user for one room, as `(type, content)`.
    pub async fn room_account_data(&self, user_id: &str, room_id: &str) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT data_type, content FROM account_data WHERE user_id = $1 AND room_id = $2")
            .bind(user_id)
            .bind(room_id)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Stores a receipt; a read receipt also clears the notifications it covers.
    /// Returns `false` if an existing receipt already points at a later event.
    #[allow(clippy::too_many_arguments)]
    pub async fn set_receipt(
        &self,
        room_id: &str,
        user_id: &str,
        receipt_type: &str,
        thread_id: &str,
        event_id: &str,
        event_pos: i64,
        pos: i64,
    ) -> StoreResult<bool> {
        let read = matches!(receipt_type, "m.read" | "m.read.private");
        let _forget = self.sync_memory.forget(Part::Offsets, read.then_some(user_id));
        let mut tx = self.write.begin().await?;
        // Read first, under the member's row lock: what their receipts covered before this one.
        let member = if read { notifications::lock_member(&mut tx, room_id, user_id).await? } else { None };
        let n = sqlx::query(
            "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, event_pos, ts, stream_pos) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE SET event_id = excluded.event_id, \
             event_pos = excluded.event_pos, ts = excluded.ts, stream_pos = excluded.stream_pos \
             WHERE receipts.event_pos < excluded.event_pos",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(receipt_type)
        .bind(thread_id)
        .bind(event_id)
        .bind(event_pos)
        .bind(now_ms())
        .bind(pos)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if let Some((since_pos, old)) = member.filter(|_| n > 0) {
            notifications::cover(&mut tx, room_id, user_id, thread_id, event_pos, &old, since_pos).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Stores a filter and returns its ID.
    pub async fn insert_filter(&self, user_id: &str, json: &str) -> StoreResult<i64> {
        let mut tx = self.write.begin().await?;
        let next: Option<i64> = sqlx::query_scalar("SELECT MAX(filter_id) FROM filters WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
        let id = next.unwrap_or(-1) + 1;
        sqlx::query("INSERT INTO filters (user_id, filter_id, json, created_ts) VALUES ($1, $2, $3, $4)")
            .bind(user_id)
            .bind(id)
            .bind(json)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// A stored filter.
    pub async fn filter(&self, user_id: &str, filter_id: i64) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT json FROM filters WHERE user_id = $1 AND filter_id = $2")
            .bind(user_id)
            .bind(filter_id)
            .fetch_optional(&self.read)
            .await?)
    }
}
