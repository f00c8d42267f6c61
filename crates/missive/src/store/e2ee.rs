//! End-to-end encryption data: device keys, one-time and fallback keys, cross-signing keys,
//! device list changes, to-device messages, key backups, dehydrated devices.

use sqlx::Row;

use super::{Params, Store, StoreResult, now_ms, sql, sync_memory::Part};

/// A queued to-device message.
#[derive(Debug, Clone)]
pub struct ToDeviceRow {
    pub stream_pos: i64,
    pub sender: String,
    pub event_type: String,
    pub content: String,
}

/// What every sync reports about a device.
#[derive(Debug, Clone, Default)]
pub struct DeviceSyncState {
    /// Unclaimed one-time keys per algorithm.
    pub one_time_keys: Vec<(String, i64)>,
    /// Algorithms with an unused fallback key, sorted.
    pub unused_fallbacks: Vec<String>,
    /// Whether to-device messages are queued (delivered or not).
    pub to_device_waiting: bool,
}

/// What every sync reports about a device, as the arms of a `UNION ALL` whose rows are
/// `(kind, text, NULL, NULL, count, 0)`: unclaimed one-time keys per algorithm (kind 3),
/// unused fallback keys (kind 4), and a row of kind 5 if to-device messages are queued.
/// `$1` is the user, `$2` the device.
pub(super) const DEVICE_STATE_ARMS: &str = "\
    SELECT CAST(3 AS BIGINT), algorithm, CAST(NULL AS TEXT), CAST(NULL AS TEXT), CAST(COUNT(*) AS BIGINT), \
    CAST(0 AS BIGINT) FROM one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm \
    UNION ALL SELECT CAST(4 AS BIGINT), algorithm, NULL, NULL, CAST(0 AS BIGINT), CAST(0 AS BIGINT) \
    FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND used = 0 \
    UNION ALL SELECT CAST(5 AS BIGINT), '', NULL, NULL, CAST(0 AS BIGINT), CAST(0 AS BIGINT) \
    WHERE EXISTS (SELECT 1 FROM to_device WHERE user_id = $1 AND device_id = $2)";

impl DeviceSyncState {
    /// Takes in a row of [`DEVICE_STATE_ARMS`]; rows of other kinds are ignored.
    pub(super) fn add_row(&mut self, r: &sqlx::any::AnyRow) {
        self.add(r.get(0), r.get(1), r.get(4));
    }

    /// Takes in a row of [`DEVICE_STATE_ARMS`] by its kind, name and count columns.
    pub(super) fn add(&mut self, kind: i64, name: String, count: i64) {
        match kind {
            3 => self.one_time_keys.push((name, count)),
            4 => self.unused_fallbacks.push(name),
            5 => self.to_device_waiting = true,
            _ => {}
        }
    }
}

/// A to-device message to queue.
#[derive(Debug, Clone)]
pub struct NewToDevice {
    pub stream_pos: i64,
    pub user_id: String,
    pub device_id: String,
    pub event_type: String,
    pub content: String,
}

/// A key backup version.
#[derive(Debug, Clone)]
pub struct BackupVersionRow {
    pub version: i64,
    pub algorithm: String,
    pub auth_data: String,
    pub etag: i64,
}

impl Store {
    /// Stores a device's signed device keys and records the device list change.
    pub async fn set_device_keys(&self, user_id: &str, device_id: &str, json: &str, pos: i64) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO device_keys (user_id, device_id, json, updated_ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET json = excluded.json, updated_ts = excluded.updated_ts",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(json)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        record_change(&mut tx, user_id, pos, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds one-time keys (`(algorithm, key ID, JSON)`); keys already present are kept.
    pub async fn add_one_time_keys(
        &self,
        user_id: &str,
        device_id: &str,
        keys: &[(String, String, String)],
    ) -> StoreResult<()> {
        let _forget = self.sync_memory.forget(Part::Devices, [user_id]);
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        // Clients upload keys by the dozen: one multi-row insert per chunk.
        for chunk in keys.chunks(200) {
            let text = format!(
                "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, json, created_ts) \
                 VALUES {} ON CONFLICT DO NOTHING",
                Params::new(self.backend).rows(chunk.len(), 6)
            );
            let mut query = sqlx::query(sql(text));
            for (algorithm, key_id, json) in chunk {
                query = query.bind(user_id).bind(device_id).bind(algorithm).bind(key_id).bind(json).bind(now);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Replaces a device's fallback key for each algorithm given.
    pub async fn set_fallback_keys(
        &self,
        user_id: &str,
        device_id: &str,
        keys: &[(String, String, String)],
    ) -> StoreResult<()> {
        let _forget = self.sync_memory.forget(Part::Devices, [user_id]);
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        for (algorithm, key_id, json) in keys {
            sqlx::query(
                "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, json, used, created_ts) \
                 VALUES ($1, $2, $3, $4, $5, 0, $6) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE \
                 SET key_id = excluded.key_id, json = excluded.json, used = 0, created_ts = excluded.created_ts",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .bind(key_id)
            .bind(json)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What every sync reports about a device, in one read: unclaimed one-time keys per
    /// algorithm, algorithms with an unused fallback key, and whether to-device messages wait.
    pub async fn device_sync_state(&self, user_id: &str, device_id: &str) -> StoreResult<DeviceSyncState> {
        let rows = sqlx::query(DEVICE_STATE_ARMS).bind(user_id).bind(device_id).fetch_all(&self.read).await?;
        let mut out = DeviceSyncState::default();
        for r in rows {
            out.add_row(&r);
        }
        out.unused_fallbacks.sort();
        Ok(out)
    }

    /// Claims one key of `algorithm` for a device: a one-time key (removed), else the fallback
    /// key (marked used, and handed out again until replaced). Returns `(key ID, JSON)`.
    pub async fn claim_key(
        &self,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> StoreResult<Option<(String, String)>> {
        let _forget = self.sync_memory.forget(Part::Devices, [user_id]);
        let mut tx = self.write.begin().await?;
        let claimed = sqlx::query(
            "DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = ( \
                 SELECT key_id FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                 ORDER BY key_id LIMIT 1) \
             RETURNING key_id, json",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .fetch_optional(&mut *tx)
        .await?;
        let claimed = match claimed {
            Some(row) => Some((row.get(0), row.get(1))),
            None => sqlx::query(
                "UPDATE fallback_keys SET used = 1 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                 RETURNING key_id, json",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| (row.get(0), row.get(1))),
        };
        tx.commit().await?;
        Ok(claimed)
    }

    /// Device keys of a user: all devices, or those listed.
    pub async fn device_keys(&self, user_id: &str) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT device_id, json FROM device_keys WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Cross-signing keys of a user: `(key type, JSON)`.
    pub async fn cross_signing_keys(&self, user_id: &str) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT key_type, json FROM cross_signing_keys WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(&self.read)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Sets cross-signing keys (`(key type, JSON)`) and records the device list change.
    pub async fn set_cross_signing_keys(&self, user_id: &str, keys: &[(String, String)], pos: i64) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        for (key_type, json) in keys {
            sqlx::query(
                "INSERT INTO cross_signing_keys (user_id, key_type, json, updated_ts) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id, key_type) DO UPDATE SET json = excluded.json, updated_ts = excluded.updated_ts",
            )
            .bind(user_id)
            .bind(key_type)
            .bind(json)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        // Only a new user-signing key leaves the others' view of this user unchanged.
        let self_only = keys.iter().all(|(key_type, _)| key_type == "user_signing");
        sqlx::query(
            "INSERT INTO device_list_changes (stream_pos, user_id, created_ts, self_only) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(pos)
        .bind(user_id)
        .bind(now)
        .bind(self_only as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that a user's device list changed (a device was added or removed).
    pub async fn record_device_list_change(&self, user_id: &str, pos: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        record_change(&mut tx, user_id, pos, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Queues to-device messages sent in one client transaction `(sender, device, txn_id)`,
    /// all or nothing, in one database transaction with the record of the client's: a retry
    /// of a transaction already queued queues nothing and returns `false`. The rows are
    /// inserted a chunk at a time (a message to every device of a room's members is hundreds).
    pub async fn queue_to_device(
        &self,
        (sender, sender_device, txn_id): (&str, &str, &str),
        messages: &[NewToDevice],
    ) -> StoreResult<bool> {
        let _forget = self.sync_memory.forget(Part::Devices, messages.iter().map(|m| m.user_id.as_str()));
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let recorded = sqlx::query(
            "INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(sender)
        .bind(sender_device)
        .bind(txn_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if recorded == 0 {
            return Ok(false);
        }
        for chunk in messages.chunks(200) {
            let text = format!(
                "INSERT INTO to_device (stream_pos, user_id, device_id, sender, event_type, content, created_ts) \
                 VALUES {}",
                Params::new(self.backend).rows(chunk.len(), 7)
            );
            let mut query = sqlx::query(sql(text));
            for m in chunk {
                query = query
                    .bind(m.stream_pos)
                    .bind(&m.user_id)
                    .bind(&m.device_id)
                    .bind(sender)
                    .bind(&m.event_type)
                    .bind(&m.content)
                    .bind(now);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes the messages a device acknowledged by syncing from `since`, then takes up to
    /// `limit` pending ones (up to `to`). Returns them and the point the answer carrying
    /// them reaches, which a later sync acknowledges them with: `to`, or the last one taken
    /// when more are left (a token that did not move would otherwise acknowledge a retry).
    pub async fn take_to_device(
        &self,
        user_id: &str,
        device_id: &str,
        since: Option<i64>,
        to: i64,
        limit: i64,
    ) -> StoreResult<(Vec<ToDeviceRow>, i64)> {
        let _forget = self.sync_memory.forget(Part::Devices, [user_id]);
        let mut tx = self.write.begin().await?;
        if let Some(since) = since {
            sqlx::query(
                "DELETE FROM to_device WHERE user_id = $1 AND device_id = $2 AND delivered_in IS NOT NULL AND delivered_in <= $3",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(since)
            .execute(&mut *tx)
            .await?;
        }
        let rows = sqlx::query(
            "SELECT stream_pos, sender, event_type, content FROM to_device \
             WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3 ORDER BY stream_pos LIMIT $4",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(to)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let out: Vec<ToDeviceRow> = rows
            .into_iter()
            .map(|r| ToDeviceRow { stream_pos: r.get(0), sender: r.get(1), event_type: r.get(2), content: r.get(3) })
            .collect();
        let reached = match out.last() {
            Some(last) if out.len() as i64 >= limit => last.stream_pos,
            _ => to,
        };
        if let Some(last) = out.last() {
            sqlx::query(
                "UPDATE to_device SET delivered_in = $4 WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(last.stream_pos)
            .bind(reached)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok((out, reached))
    }

    /// Creates a backup version; returns its number.
    pub async fn create_backup_version(&self, user_id: &str, algorithm: &str, auth_data: &str) -> StoreResult<i64> {
        let mut tx = self.write.begin().await?;
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM backup_versions WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
        let version = max.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO backup_versions (user_id, version, algorithm, auth_data, etag, deleted, created_ts) \
             VALUES ($1, $2, $3, $4, 0, 0, $5)",
        )
        .bind(user_id)
        .bind(version)
        .bind(algorithm)
        .bind(auth_data)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// A backup version (the latest live one when `version` is `None`).
    pub async fn backup_version(&self, user_id: &str, version: Option<i64>) -> StoreResult<Option<BackupVersionRow>> {
        let row = sqlx::query(
            "SELECT version, algorithm, auth_data, etag FROM backup_versions WHERE user_id = $1 AND deleted = 0 \
             AND ($2 < 0 OR version = $2) ORDER BY version DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(version.unwrap_or(-1))
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| BackupVersionRow {
            version: r.get(0),
            algorithm: r.get(1),
            auth_data: r.get(2),
            etag: r.get(3),
        }))
    }

    /// Updates a backup version's auth data.
    pub async fn update_backup_version(&self, user_id: &str, version: i64, auth_data: &str) -> StoreResult<bool> {
        let n = sqlx::query(
            "UPDATE backup_versions SET auth_data = $3 WHERE user_id = $1 AND version = $2 AND deleted = 0",
        )
        .bind(user_id)
        .bind(version)
        .bind(auth_data)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Deletes a backup version and its keys.
    pub async fn delete_backup_version(&self, user_id: &str, version: i64) -> StoreResult<bool> {
        let mut tx = self.write.begin().await?;
        let n =
            sqlx::query("UPDATE backup_versions SET deleted = 1 WHERE user_id = $1 AND version = $2 AND deleted = 0")
                .bind(user_id)
                .bind(version)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        sqlx::query("DELETE FROM backup_keys WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Backed-up session keys of a version, optionally of one room and session.
    pub async fn backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> StoreResult<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT room_id, session_id, json FROM backup_keys WHERE user_id = $1 AND version = $2 \
             AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)",
        )
        .bind(user_id)
        .bind(version)
        .bind(room_id.unwrap_or(""))
        .bind(session_id.unwrap_or(""))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Stores session keys (`(room, session, JSON)`) and bumps the version's etag.
    pub async fn put_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        keys: &[(String, String, String)],
    ) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        for (room_id, session_id, json) in keys {
            sqlx::query(
                "INSERT INTO backup_keys (user_id, version, room_id, session_id, json, updated_ts) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET json = excluded.json, updated_ts = excluded.updated_ts",
            )
            .bind(user_id)
            .bind(version)
            .bind(room_id)
            .bind(session_id)
            .bind(json)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        bump_etag(&mut tx, user_id, version).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes backed-up keys, optionally of one room or session, and bumps the etag.
    pub async fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "DELETE FROM backup_keys WHERE user_id = $1 AND version = $2 AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)",
        )
        .bind(user_id)
        .bind(version)
        .bind(room_id.unwrap_or(""))
        .bind(session_id.unwrap_or(""))
        .execute(&mut *tx)
        .await?;
        bump_etag(&mut tx, user_id, version).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Number of keys in a backup version.
    pub async fn backup_key_count(&self, user_id: &str, version: i64) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM backup_keys WHERE user_id = $1 AND version = $2")
            .bind(user_id)
            .bind(version)
            .fetch_one(&self.read)
            .await?)
    }

    /// Replaces a user's dehydrated device.
    pub async fn set_dehydrated_device(
        &self,
        user_id: &str,
        device_id: &str,
        data: &str,
    ) -> StoreResult<Option<String>> {
        let mut tx = self.write.begin().await?;
        let old: Option<String> =
            sqlx::query_scalar("DELETE FROM dehydrated_devices WHERE user_id = $1 RETURNING device_id")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO dehydrated_devices (user_id, device_id, device_data, created_ts) VALUES ($1, $2, $3, $4)",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(data)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(old)
    }

    /// A user's dehydrated device: `(device ID, device data)`.
    pub async fn dehydrated_device(&self, user_id: &str) -> StoreResult<Option<(String, String)>> {
        let row = sqlx::query("SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Removes a user's dehydrated device record; returns its device ID.
    pub async fn delete_dehydrated_device(&self, user_id: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("DELETE FROM dehydrated_devices WHERE user_id = $1 RETURNING device_id")
            .bind(user_id)
            .fetch_optional(&self.write)
            .await?)
    }
}

/// Every change to a backup's keys gives the version a new etag, which clients compare.
async fn bump_etag(tx: &mut sqlx::Transaction<'_, sqlx::Any>, user_id: &str, version: i64) -> StoreResult<()> {
    sqlx::query("UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(version)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn record_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user_id: &str,
    pos: i64,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO device_list_changes (stream_pos, user_id, created_ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(pos)
    .bind(user_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
