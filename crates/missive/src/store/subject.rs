//! Reads for a data subject's export: what the user sent and what they set.

use sqlx::Row;

use super::StoreResult;

/// An event the user sent.
#[derive(Debug, Clone)]
pub struct SentEvent {
    pub event_id: String,
    pub room_id: String,
    pub event_type: String,
    pub json: String,
    pub ts: i64,
}

impl super::Store {
    /// Every timeline event the user sent, oldest first.
    pub async fn events_sent_by(&self, user_id: &str) -> StoreResult<Vec<SentEvent>> {
        let rows = sqlx::query(
            "SELECT event_id, room_id, event_type, json, origin_server_ts FROM events \
             WHERE sender = $1 AND outlier = 0 ORDER BY stream_pos",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| SentEvent {
                event_id: r.get(0),
                room_id: r.get(1),
                event_type: r.get(2),
                json: r.get(3),
                ts: r.get(4),
            })
            .collect())
    }

    /// The user's account data, global (`room_id` empty) and per room.
    pub async fn account_data_of(&self, user_id: &str) -> StoreResult<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT room_id, data_type, content FROM account_data WHERE user_id = $1 ORDER BY room_id, data_type",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }
}
