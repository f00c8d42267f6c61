//! The transparency statistics an administration reports: accounts, active users (from
//! the devices' last use, which connection logs keep anyway), messages per day, storage.

use sqlx::Row;

use super::{Backend, StoreResult};

/// Accounts and activity of one organisation (`None`: accounts without one).
#[derive(Debug, Clone, serde::Serialize)]
pub struct OrganisationStats {
    pub organisation: Option<String>,
    pub accounts: i64,
    pub daily_active: i64,
    pub monthly_active: i64,
}

impl super::Store {
    /// Per organisation: active (not deactivated) accounts, and those with a device used
    /// since `day_ago` and `month_ago`.
    pub async fn organisation_stats(&self, day_ago: i64, month_ago: i64) -> StoreResult<Vec<OrganisationStats>> {
        let rows = sqlx::query(
            "SELECT u.organisation, CAST(COUNT(*) AS BIGINT), \
             CAST(SUM(CASE WHEN EXISTS (SELECT 1 FROM devices d WHERE d.user_id = u.user_id AND d.last_seen_ts >= $1) \
                 THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN EXISTS (SELECT 1 FROM devices d WHERE d.user_id = u.user_id AND d.last_seen_ts >= $2) \
                 THEN 1 ELSE 0 END) AS BIGINT) \
             FROM users u WHERE u.deactivated = 0 AND u.is_guest = 0 GROUP BY u.organisation ORDER BY u.organisation",
        )
        .bind(day_ago)
        .bind(month_ago)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| OrganisationStats {
                organisation: r.get(0),
                accounts: r.get(1),
                daily_active: r.get(2),
                monthly_active: r.get(3),
            })
            .collect())
    }

    /// Messages (clear or encrypted) sent by this server's users since `since`, per UTC day
    /// (`YYYY-MM-DD`).
    pub async fn messages_per_day(&self, server_suffix: &str, since: i64) -> StoreResult<Vec<(String, i64)>> {
        let day = match self.backend {
            Backend::Sqlite => "strftime('%Y-%m-%d', origin_server_ts / 1000, 'unixepoch')",
            Backend::Postgres => "to_char(to_timestamp(origin_server_ts / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        };
        let rows = sqlx::query(super::sql(format!(
            "SELECT {day} AS day, CAST(COUNT(*) AS BIGINT) FROM events \
             WHERE origin_server_ts >= $1 AND event_type IN ('m.room.message', 'm.room.encrypted') \
             AND sender LIKE $2 AND outlier = 0 GROUP BY day ORDER BY day"
        )))
        .bind(since)
        .bind(format!("%:{server_suffix}"))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Bytes of the database, and of the media files (each stored content once).
    pub async fn storage_bytes(&self) -> StoreResult<(i64, i64)> {
        let database: i64 = match self.backend {
            Backend::Sqlite => {
                sqlx::query_scalar(
                    "SELECT CAST(page_count * page_size AS BIGINT) FROM pragma_page_count(), pragma_page_size()",
                )
                .fetch_one(&self.read)
                .await?
            }
            Backend::Postgres => {
                sqlx::query_scalar("SELECT CAST(pg_database_size(current_database()) AS BIGINT)")
                    .fetch_one(&self.read)
                    .await?
            }
        };
        let media: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM ( \
                 SELECT sha256, MAX(size) AS size FROM media GROUP BY sha256 \
                 UNION SELECT sha256, MAX(size) AS size FROM media_thumbnails GROUP BY sha256) t",
        )
        .fetch_one(&self.read)
        .await?;
        Ok((database, media))
    }
}
