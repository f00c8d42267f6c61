//! Pushers (the gateways clients register) and the reads push delivery needs: a user's
//! unread total, their list of notifications. Notifications themselves are never stored.

use sqlx::Row;

use super::{
    EventRow, StoreResult,
    rooms::{EVENT_COLUMN_COUNT, EVENT_COLUMNS_E, event_row},
    sql,
};

/// A pusher as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PusherRow {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub device_id: String,
    pub kind: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// The `data` object, JSON.
    pub data: String,
    pub pushkey_ts: i64,
}

const PUSHER_COLUMNS: &str = "user_id, app_id, pushkey, device_id, kind, app_display_name, device_display_name, \
                              profile_tag, lang, data, pushkey_ts";

fn pusher_row(r: &sqlx::any::AnyRow) -> PusherRow {
    PusherRow {
        user_id: r.get(0),
        app_id: r.get(1),
        pushkey: r.get(2),
        device_id: r.get(3),
        kind: r.get(4),
        app_display_name: r.get(5),
        device_display_name: r.get(6),
        profile_tag: r.get(7),
        lang: r.get(8),
        data: r.get(9),
        pushkey_ts: r.get(10),
    }
}

/// Someone a committed event notifies, who has a pusher: what the room write hands to
/// push delivery (never stored).
#[derive(Debug, Clone)]
pub struct PushCandidate {
    pub user_id: String,
    pub room_id: String,
    pub event_id: String,
    pub highlight: bool,
    pub sender: String,
    pub event_type: String,
}

/// A notification of `GET /notifications`.
#[derive(Debug)]
pub struct NotificationRow {
    pub event: EventRow,
    pub level: i64,
    pub read: bool,
    pub ts: i64,
}

impl super::Store {
    /// Adds or replaces a pusher; unless `append`, the same app and pushkey of other users
    /// go (the device changed hands).
    pub async fn set_pusher(&self, pusher: &PusherRow, append: bool) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        if !append {
            sqlx::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3")
                .bind(&pusher.app_id)
                .bind(&pusher.pushkey)
                .bind(&pusher.user_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
            .bind(&pusher.user_id)
            .bind(&pusher.app_id)
            .bind(&pusher.pushkey)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql(format!(
            "INSERT INTO pushers ({PUSHER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        )))
        .bind(&pusher.user_id)
        .bind(&pusher.app_id)
        .bind(&pusher.pushkey)
        .bind(&pusher.device_id)
        .bind(&pusher.kind)
        .bind(&pusher.app_display_name)
        .bind(&pusher.device_display_name)
        .bind(&pusher.profile_tag)
        .bind(&pusher.lang)
        .bind(&pusher.data)
        .bind(pusher.pushkey_ts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a user's pusher; answers whether there was one.
    pub async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> StoreResult<bool> {
        Ok(sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
            .bind(user_id)
            .bind(app_id)
            .bind(pushkey)
            .execute(&self.write)
            .await?
            .rows_affected()
            > 0)
    }

    /// A user's pushers.
    pub async fn pushers_of(&self, user_id: &str) -> StoreResult<Vec<PusherRow>> {
        let rows = sqlx::query(sql(format!(
            "SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id = $1 ORDER BY app_id, pushkey"
        )))
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(pusher_row).collect())
    }

    /// The users who have at least one pusher.
    pub async fn users_with_pushers(&self) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT DISTINCT user_id FROM pushers").fetch_all(&self.read).await?)
    }

    /// A user's unread notifications in all their rooms, as the badge shows them.
    pub async fn unread_total(&self, user_id: &str) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(CASE WHEN r.notify_seq > o.notify_off THEN r.notify_seq - o.notify_off ELSE 0 END), 0) AS BIGINT) \
             FROM notification_offsets o JOIN rooms r ON r.room_id = o.room_id WHERE o.user_id = $1",
        )
        .bind(user_id)
        .fetch_one(&self.read)
        .await?)
    }

    /// A user's notifications (events of their joined rooms that notified them), newest
    /// first, before stream position `before`, at least of `min_level`.
    pub async fn notifications_of(
        &self,
        user_id: &str,
        before: i64,
        min_level: i64,
        limit: i64,
    ) -> StoreResult<Vec<NotificationRow>> {
        let rows = sqlx::query(sql(format!(
            "SELECT {EVENT_COLUMNS_E}, COALESCE(x.level, e.notify), \
             CASE WHEN COALESCE(( \
                 SELECT MAX(c.event_pos) FROM receipts c WHERE c.room_id = e.room_id AND c.user_id = $1 \
                 AND c.receipt_type IN ('m.read', 'm.read.private')), -1) >= e.stream_pos THEN 1 ELSE 0 END, \
             e.origin_server_ts \
             FROM notification_offsets o \
             JOIN events e ON e.room_id = o.room_id AND e.stream_pos > o.since_pos \
             LEFT JOIN push_exceptions x ON x.user_id = o.user_id AND x.room_id = e.room_id AND x.event_pos = e.stream_pos \
             WHERE o.user_id = $1 AND e.sender <> $1 AND e.stream_pos < $2 AND COALESCE(x.level, e.notify) >= $3 \
             ORDER BY e.stream_pos DESC LIMIT $4"
        )))
        .bind(user_id)
        .bind(before)
        .bind(min_level)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let level: i64 = r.get(EVENT_COLUMN_COUNT);
                let read: i64 = r.get(EVENT_COLUMN_COUNT + 1);
                let ts: i64 = r.get(EVENT_COLUMN_COUNT + 2);
                NotificationRow { event: event_row(r), level, read: read != 0, ts }
            })
            .collect())
    }
}
