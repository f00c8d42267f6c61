//! The deletions of the retention purge, in batches: each statement is short, so that
//! sends and syncs never wait long behind it, and a purge cut short resumes where it was
//! (a deleted row stays deleted; the next run takes the rest).

use super::StoreResult;

impl super::Store {
    /// Runs a statement taking `$1` (the cutoff) and `$2` (the batch size) until a run
    /// changes fewer rows than a batch; answers how many rows changed in all.
    async fn in_batches(&self, statement: &'static str, cutoff: i64, batch: i64) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let done = sqlx::query(statement).bind(cutoff).bind(batch).execute(&self.write).await?.rows_affected();
            total += done;
            if done < batch as u64 {
                return Ok(total);
            }
        }
    }

    /// Erases the IP address and user agent of devices last seen before `cutoff` (but
    /// those of users under a legal hold); answers how many devices.
    pub async fn erase_connection_data(&self, cutoff: i64, batch: i64) -> StoreResult<u64> {
        self.in_batches(
            "UPDATE devices SET last_seen_ip = NULL, last_seen_user_agent = NULL \
             WHERE (user_id, device_id) IN (SELECT user_id, device_id FROM devices \
                 WHERE last_seen_ts < $1 AND (last_seen_ip IS NOT NULL OR last_seen_user_agent IS NOT NULL) \
                 AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.lifted_ts IS NULL AND h.user_id = devices.user_id) \
                 LIMIT $2)",
            cutoff,
            batch,
        )
        .await
    }

    /// Deletes audit entries older than `cutoff`; answers how many.
    pub async fn delete_old_audit(&self, cutoff: i64, batch: i64) -> StoreResult<u64> {
        self.in_batches(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE ts < $1 ORDER BY id LIMIT $2)",
            cutoff,
            batch,
        )
        .await
    }
}

/// A legal hold.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LegalHold {
    pub id: i64,
    pub user_id: Option<String>,
    pub room_id: Option<String>,
    pub reason: String,
    pub reference: String,
    pub placed_by: String,
    pub placed_ts: i64,
    pub lifted_by: Option<String>,
    pub lifted_ts: Option<i64>,
}

impl super::Store {
    /// Places a hold on a user's or a room's data; answers its ID.
    pub async fn place_hold(
        &self,
        user_id: Option<&str>,
        room_id: Option<&str>,
        reason: &str,
        reference: &str,
        by: &str,
    ) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO legal_holds (user_id, room_id, reason, reference, placed_by, placed_ts) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(reason)
        .bind(reference)
        .bind(by)
        .bind(super::now_ms())
        .fetch_one(&self.write)
        .await?)
    }

    /// Lifts a hold (its record stays); answers whether an active hold was lifted.
    pub async fn lift_hold(&self, id: i64, by: &str) -> StoreResult<bool> {
        Ok(sqlx::query("UPDATE legal_holds SET lifted_by = $2, lifted_ts = $3 WHERE id = $1 AND lifted_ts IS NULL")
            .bind(id)
            .bind(by)
            .bind(super::now_ms())
            .execute(&self.write)
            .await?
            .rows_affected()
            > 0)
    }

    /// Every hold, active and lifted, newest first.
    pub async fn legal_holds(&self) -> StoreResult<Vec<LegalHold>> {
        let rows = sqlx::query(
            "SELECT id, user_id, room_id, reason, reference, placed_by, placed_ts, lifted_by, lifted_ts \
             FROM legal_holds ORDER BY id DESC",
        )
        .fetch_all(&self.read)
        .await?;
        use sqlx::Row;
        Ok(rows
            .into_iter()
            .map(|r| LegalHold {
                id: r.get(0),
                user_id: r.get(1),
                room_id: r.get(2),
                reason: r.get(3),
                reference: r.get(4),
                placed_by: r.get(5),
                placed_ts: r.get(6),
                lifted_by: r.get(7),
                lifted_ts: r.get(8),
            })
            .collect())
    }

    /// Media uploaded before `cutoff` by users under no active hold: deleted with their
    /// thumbnails, in batches; answers the content hashes no row uses any more (their
    /// files may go) and how many items went.
    pub async fn purge_old_media(&self, cutoff: i64, batch: i64) -> StoreResult<(Vec<String>, u64)> {
        let mut unused = Vec::new();
        let mut items = 0;
        loop {
            let ids: Vec<(String, String)> = sqlx::query_as(
                "SELECT origin, media_id FROM media m WHERE created_ts < $1 \
                 AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.lifted_ts IS NULL AND h.user_id = m.uploader) \
                 LIMIT $2",
            )
            .bind(cutoff)
            .bind(batch)
            .fetch_all(&self.read)
            .await?;
            for (origin, media_id) in &ids {
                if let Some(hashes) = self.delete_media(origin, media_id).await? {
                    unused.extend(hashes);
                    items += 1;
                }
            }
            if (ids.len() as i64) < batch {
                return Ok((unused, items));
            }
        }
    }
}

/// A login or a session's end.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionLogRow {
    pub device_id: String,
    /// `login` or `logout`.
    pub event: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub ts: i64,
}

impl super::Store {
    /// Records a login or a session's end.
    pub async fn log_session(
        &self,
        user_id: &str,
        device_id: &str,
        event: &str,
        ip: Option<&str>,
        user_agent: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO session_log (user_id, device_id, event, ip, user_agent, ts) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(event)
        .bind(ip)
        .bind(user_agent)
        .bind(super::now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// A user's logins and session ends, oldest first.
    pub async fn session_log_of(&self, user_id: &str) -> StoreResult<Vec<SessionLogRow>> {
        use sqlx::Row;
        let rows =
            sqlx::query("SELECT device_id, event, ip, user_agent, ts FROM session_log WHERE user_id = $1 ORDER BY id")
                .bind(user_id)
                .fetch_all(&self.read)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| SessionLogRow {
                device_id: r.get(0),
                event: r.get(1),
                ip: r.get(2),
                user_agent: r.get(3),
                ts: r.get(4),
            })
            .collect())
    }

    /// Deletes session log rows older than `cutoff` (but those of users under a hold).
    pub async fn delete_old_session_log(&self, cutoff: i64, batch: i64) -> StoreResult<u64> {
        self.in_batches(
            "DELETE FROM session_log WHERE id IN (SELECT id FROM session_log s WHERE ts < $1 \
             AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.lifted_ts IS NULL AND h.user_id = s.user_id) \
             ORDER BY id LIMIT $2)",
            cutoff,
            batch,
        )
        .await
    }
}
