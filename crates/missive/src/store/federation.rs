//! Federation: other servers' verify keys.

use sqlx::Row;

use super::{Store, StoreResult, now_ms, sync_memory::Part};

/// A verify key of another server, with the key document it came in.
#[derive(Debug, Clone)]
pub struct RemoteKey {
    pub key_id: String,
    pub public_key: String,
    pub valid_until_ts: i64,
    pub expired_ts: Option<i64>,
    pub document: String,
}

impl Store {
    /// Every stored verify key of a server.
    pub async fn remote_keys(&self, server_name: &str) -> StoreResult<Vec<RemoteKey>> {
        let rows = sqlx::query(
            "SELECT key_id, public_key, valid_until_ts, expired_ts, document FROM remote_server_keys \
             WHERE server_name = $1",
        )
        .bind(server_name)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RemoteKey {
                key_id: r.get(0),
                public_key: r.get(1),
                valid_until_ts: r.get(2),
                expired_ts: r.get(3),
                document: r.get(4),
            })
            .collect())
    }

    /// Stores the keys of one verified key document, replacing what was known of them. A
    /// key known as current is not downgraded by an older document.
    pub async fn store_remote_keys(&self, server_name: &str, keys: &[RemoteKey]) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        for key in keys {
            sqlx::query(
                "INSERT INTO remote_server_keys \
                 (server_name, key_id, public_key, valid_until_ts, expired_ts, document, fetched_ts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (server_name, key_id) DO UPDATE SET public_key = excluded.public_key, \
                 valid_until_ts = excluded.valid_until_ts, expired_ts = excluded.expired_ts, \
                 document = excluded.document, fetched_ts = excluded.fetched_ts \
                 WHERE remote_server_keys.valid_until_ts <= excluded.valid_until_ts",
            )
            .bind(server_name)
            .bind(&key.key_id)
            .bind(&key.public_key)
            .bind(key.valid_until_ts)
            .bind(key.expired_ts)
            .bind(&key.document)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The servers with PDUs waiting for them.
    pub async fn outbox_destinations(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT destination FROM federation_outbox").fetch_all(&self.read).await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The oldest PDUs waiting for a server: `(stream position, PDU JSON)`.
    pub async fn outbox_batch(&self, destination: &str, limit: i64) -> StoreResult<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT o.stream_pos, e.json FROM federation_outbox o JOIN events e ON e.stream_pos = o.stream_pos \
             WHERE o.destination = $1 ORDER BY o.stream_pos LIMIT $2",
        )
        .bind(destination)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Forgets PDUs a server acknowledged (exactly those: positions commit out of order, so
    /// a range could take one that arrived since).
    pub async fn outbox_delivered(&self, destination: &str, positions: &[i64]) -> StoreResult<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut p = super::Params::new(self.backend);
        let first = p.next();
        let list: Vec<String> = positions.iter().map(|_| p.next()).collect();
        let text = format!(
            "DELETE FROM federation_outbox WHERE destination = {first} AND stream_pos IN ({})",
            list.join(", ")
        );
        let mut query = sqlx::query(super::sql(text)).bind(destination);
        for pos in positions {
            query = query.bind(*pos);
        }
        query.execute(&self.write).await?;
        Ok(())
    }

    /// Keeps the stripped state of an invite to a room this server is not in.
    pub async fn set_invite_state(&self, room_id: &str, user_id: &str, state: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO invite_states (room_id, user_id, state) VALUES ($1, $2, $3) \
             ON CONFLICT (room_id, user_id) DO UPDATE SET state = excluded.state",
        )
        .bind(room_id)
        .bind(user_id)
        .bind(state)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The stripped state of an invite to a room this server is not in.
    pub async fn invite_state(&self, room_id: &str, user_id: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT state FROM invite_states WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .fetch_optional(&self.read)
            .await?)
    }

    /// Forgets an invite to a room this server is not in (joined, or rejected here).
    pub async fn drop_remote_invite(&self, room_id: &str, user_id: &str, membership_too: bool) -> StoreResult<()> {
        let _forget = self.sync_memory.forget(Part::Memberships, membership_too.then_some(user_id));
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM invite_states WHERE room_id = $1 AND user_id = $2")
            .bind(room_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if membership_too {
            sqlx::query("DELETE FROM memberships WHERE room_id = $1 AND user_id = $2 AND membership = 'invite'")
                .bind(room_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The users of this server whose device list others may see changed in `(from, to]`.
    pub async fn local_device_list_changes(&self, from: i64, to: i64, server: &str) -> StoreResult<Vec<(String, i64)>> {
        let suffix = format!("%:{server}");
        let rows = sqlx::query(
            "SELECT user_id, MAX(stream_pos) FROM device_list_changes WHERE stream_pos > $1 AND stream_pos <= $2 \
             AND self_only = 0 AND user_id LIKE $3 GROUP BY user_id",
        )
        .bind(from)
        .bind(to)
        .bind(suffix)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// How many PDUs wait for a server.
    pub async fn outbox_count(&self, destination: &str) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM federation_outbox WHERE destination = $1")
            .bind(destination)
            .fetch_one(&self.read)
            .await?)
    }
}
