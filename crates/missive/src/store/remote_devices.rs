//! Device lists of other servers' users, cached while a local user shares a room with them.

use sqlx::Row;

use super::{Store, StoreResult, now_ms};

/// A remote user's devices as last synced from their server.
#[derive(Debug, Clone)]
pub struct RemoteDeviceList {
    pub user_id: String,
    /// The stream ID of the last update applied (the server's own numbering).
    pub stream_id: i64,
    /// JSON object: device ID to `{"keys": …, "device_display_name": …}`.
    pub devices: String,
    pub master_key: Option<String>,
    pub self_signing_key: Option<String>,
    /// An update could not be applied and the resync that followed failed.
    pub stale: bool,
}

/// The rooms where a local user and the user named by the SQL expression `user` are both
/// joined (a `FROM` clause).
pub(super) fn rooms_shared_with(user: &str) -> String {
    format!(
        "memberships theirs \
         JOIN memberships ours ON ours.room_id = theirs.room_id AND ours.membership = 'join' \
         JOIN users local ON local.user_id = ours.user_id \
         WHERE theirs.user_id = {user} AND theirs.membership = 'join'"
    )
}

impl Store {
    /// A remote user's cached device list.
    pub async fn remote_device_list(&self, user_id: &str) -> StoreResult<Option<RemoteDeviceList>> {
        let row = sqlx::query(
            "SELECT user_id, stream_id, devices, master_key, self_signing_key, stale FROM remote_device_lists \
             WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.write)
        .await?;
        Ok(row.map(|r| RemoteDeviceList {
            user_id: r.get(0),
            stream_id: r.get(1),
            devices: r.get(2),
            master_key: r.get(3),
            self_signing_key: r.get(4),
            stale: r.get::<i64, _>(5) != 0,
        }))
    }

    /// Caches a remote user's device list, unless no local user shares a room with them
    /// any more (answers whether it was kept).
    pub async fn put_remote_device_list(&self, list: &RemoteDeviceList) -> StoreResult<bool> {
        let shared = rooms_shared_with("$1");
        let done = sqlx::query(super::sql(format!(
            "INSERT INTO remote_device_lists \
             (user_id, stream_id, devices, master_key, self_signing_key, stale, updated_ts) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM {shared}) \
             ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, devices = excluded.devices, \
             master_key = excluded.master_key, self_signing_key = excluded.self_signing_key, \
             stale = excluded.stale, updated_ts = excluded.updated_ts"
        )))
        .bind(&list.user_id)
        .bind(list.stream_id)
        .bind(&list.devices)
        .bind(&list.master_key)
        .bind(&list.self_signing_key)
        .bind(list.stale as i64)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks a cached device list as needing a resync.
    pub async fn set_remote_device_list_stale(&self, user_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE remote_device_lists SET stale = 1 WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Whether a local user shares a room with this (remote) user.
    pub async fn shares_room_with_local(&self, user_id: &str) -> StoreResult<bool> {
        let shared = rooms_shared_with("$1");
        let query = format!("SELECT COUNT(*) FROM (SELECT 1 FROM {shared} LIMIT 1) one");
        let count: i64 = sqlx::query_scalar(super::sql(query)).bind(user_id).fetch_one(&self.read).await?;
        Ok(count > 0)
    }
}
