//! The deletions of the retention purge, in batches: each statement is short, so that
//! sends and syncs never wait long behind it, and a purge cut short resumes where it was
//! (a deleted row stays deleted; the next run takes the rest).

use super::StoreResult;

impl super::Store {
    /// Erases the IP address and user agent of devices last seen before `cutoff`; answers
    /// how many devices.
    pub async fn erase_connection_data(&self, cutoff: i64, batch: i64) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "UPDATE devices SET last_seen_ip = NULL, last_seen_user_agent = NULL \
                 WHERE (user_id, device_id) IN (SELECT user_id, device_id FROM devices \
                     WHERE last_seen_ts < $1 AND (last_seen_ip IS NOT NULL OR last_seen_user_agent IS NOT NULL) \
                     LIMIT $2)",
            )
            .bind(cutoff)
            .bind(batch)
            .execute(&self.write)
            .await?
            .rows_affected();
            total += done;
            if done < batch as u64 {
                return Ok(total);
            }
        }
    }

    /// Deletes audit entries older than `cutoff`; answers how many.
    pub async fn delete_old_audit(&self, cutoff: i64, batch: i64) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE ts < $1 ORDER BY id LIMIT $2)",
            )
            .bind(cutoff)
            .bind(batch)
            .execute(&self.write)
            .await?
            .rows_affected();
            total += done;
            if done < batch as u64 {
                return Ok(total);
            }
        }
    }
}
