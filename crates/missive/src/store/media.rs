//! The media repository's metadata: what each media ID names.

use sqlx::Row;

use super::{Store, StoreResult};

/// A stored media item.
#[derive(Debug, Clone)]
pub struct MediaRow {
    pub origin: String,
    pub media_id: String,
    pub sha256: String,
    pub size: i64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub uploader: Option<String>,
    pub created_ts: i64,
    pub quarantined: bool,
}

impl Store {
    /// Records a media item.
    pub async fn insert_media(&self, row: &MediaRow) -> StoreResult<()> {
        insert_media(&self.write, row, false).await
    }

    /// Records a media item fetched from another server (a concurrent fetch of the same
    /// item keeps the first).
    pub async fn insert_remote_media(&self, row: &MediaRow) -> StoreResult<()> {
        insert_media(&self.write, row, true).await
    }

    /// Bytes a user has uploaded (every media item counts, even when its content is
    /// stored once for several).
    pub async fn media_usage(&self, uploader: &str) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM media WHERE uploader = $1")
            .bind(uploader)
            .fetch_one(&self.read)
            .await?)
    }

    /// A media item by its mxc URI's parts.
    pub async fn media(&self, origin: &str, media_id: &str) -> StoreResult<Option<MediaRow>> {
        let row =
            sqlx::query(super::sql(format!("SELECT {MEDIA_COLUMNS} FROM media WHERE origin = $1 AND media_id = $2")))
                .bind(origin)
                .bind(media_id)
                .fetch_optional(&self.read)
                .await?;
        Ok(row.as_ref().map(media_row))
    }

    /// A kept thumbnail of a media item: its hash, type and size.
    pub async fn thumbnail(
        &self,
        origin: &str,
        media_id: &str,
        size: (u32, u32),
        method: &str,
    ) -> StoreResult<Option<(String, String, i64)>> {
        let row = sqlx::query(
            "SELECT sha256, content_type, size FROM media_thumbnails \
             WHERE origin = $1 AND media_id = $2 AND width = $3 AND height = $4 AND method = $5",
        )
        .bind(origin)
        .bind(media_id)
        .bind(i64::from(size.0))
        .bind(i64::from(size.1))
        .bind(method)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// Keeps a thumbnail of a media item (a concurrent twin keeps the first).
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_thumbnail(
        &self,
        origin: &str,
        media_id: &str,
        size: (u32, u32),
        method: &str,
        sha256: &str,
        content_type: &str,
        bytes: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO media_thumbnails (origin, media_id, width, height, method, sha256, content_type, size) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(origin)
        .bind(media_id)
        .bind(i64::from(size.0))
        .bind(i64::from(size.1))
        .bind(method)
        .bind(sha256)
        .bind(content_type)
        .bind(bytes)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Reserves a media ID for a later upload by `uploader`, unless they hold `max`
    /// unexpired reservations already; answers whether it was reserved.
    pub async fn reserve_media(&self, media_id: &str, uploader: &str, expires_ts: i64, max: i64) -> StoreResult<bool> {
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM media_pending WHERE expires_ts <= $1").bind(super::now_ms()).execute(&mut *tx).await?;
        let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM media_pending WHERE uploader = $1")
            .bind(uploader)
            .fetch_one(&mut *tx)
            .await?;
        if held >= max {
            return Ok(false);
        }
        sqlx::query("INSERT INTO media_pending (media_id, uploader, expires_ts) VALUES ($1, $2, $3)")
            .bind(media_id)
            .bind(uploader)
            .bind(expires_ts)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A reserved media ID's uploader and expiry.
    pub async fn pending_media(&self, media_id: &str) -> StoreResult<Option<(String, i64)>> {
        let row = sqlx::query("SELECT uploader, expires_ts FROM media_pending WHERE media_id = $1")
            .bind(media_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Records an uploaded media item whose ID was reserved, ending the reservation; answers
    /// false when the reservation was gone (taken by a concurrent upload).
    pub async fn fulfil_media(&self, row: &MediaRow) -> StoreResult<bool> {
        let mut tx = self.write.begin().await?;
        let taken = sqlx::query("DELETE FROM media_pending WHERE media_id = $1")
            .bind(&row.media_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if taken == 0 {
            return Ok(false);
        }
        insert_media(&mut *tx, row, false).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Counts of the antivirus's work, for operators.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScanStats {
    /// Stored contents (distinct files) with a clean verdict.
    pub clean: i64,
    /// Stored contents found infected.
    pub infected: i64,
    /// Stored contents waiting for a scan (not served meanwhile).
    pub unscanned: i64,
    /// Media items quarantined (by the antivirus or an operator).
    pub quarantined_media: i64,
}

const MEDIA_COLUMNS: &str = "origin, media_id, sha256, size, content_type, filename, uploader, created_ts, quarantined";

fn media_row(r: &sqlx::any::AnyRow) -> MediaRow {
    MediaRow {
        origin: r.get(0),
        media_id: r.get(1),
        sha256: r.get(2),
        size: r.get(3),
        content_type: r.get(4),
        filename: r.get(5),
        uploader: r.get(6),
        created_ts: r.get(7),
        quarantined: r.get::<i64, _>(8) != 0,
    }
}

impl Store {
    /// The antivirus's verdict on a content hash, with its detail.
    pub async fn scan_verdict(&self, sha256: &str) -> StoreResult<Option<(String, Option<String>)>> {
        let row = sqlx::query("SELECT verdict, detail FROM media_scans WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Keeps (or replaces) the verdict on a content hash.
    pub async fn record_scan(&self, sha256: &str, verdict: &str, detail: Option<&str>, ts: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO media_scans (sha256, verdict, detail, scanned_ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (sha256) DO UPDATE SET verdict = excluded.verdict, detail = excluded.detail, \
             scanned_ts = excluded.scanned_ts",
        )
        .bind(sha256)
        .bind(verdict)
        .bind(detail)
        .bind(ts)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Quarantines every media item of a content; answers how many.
    pub async fn quarantine_content(&self, sha256: &str) -> StoreResult<u64> {
        Ok(sqlx::query("UPDATE media SET quarantined = 1 WHERE sha256 = $1 AND quarantined = 0")
            .bind(sha256)
            .execute(&self.write)
            .await?
            .rows_affected())
    }

    /// Content hashes of unquarantined media without a verdict, at most `limit`.
    pub async fn unscanned_media(&self, limit: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT m.sha256 FROM media m LEFT JOIN media_scans s ON s.sha256 = m.sha256 \
             WHERE s.sha256 IS NULL AND m.quarantined = 0 LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.read)
        .await?)
    }

    /// Sets or lifts the quarantine of one media item; answers whether it exists.
    pub async fn set_media_quarantined(&self, origin: &str, media_id: &str, quarantined: bool) -> StoreResult<bool> {
        Ok(sqlx::query("UPDATE media SET quarantined = $3 WHERE origin = $1 AND media_id = $2")
            .bind(origin)
            .bind(media_id)
            .bind(quarantined as i64)
            .execute(&self.write)
            .await?
            .rows_affected()
            > 0)
    }

    /// A user's uploads, newest first, `limit` from `from`, and their total.
    pub async fn user_media(&self, uploader: &str, from: i64, limit: i64) -> StoreResult<(Vec<MediaRow>, i64)> {
        let rows = sqlx::query(super::sql(format!(
            "SELECT {MEDIA_COLUMNS} FROM media WHERE uploader = $1 \
             ORDER BY created_ts DESC, media_id LIMIT $2 OFFSET $3"
        )))
        .bind(uploader)
        .bind(limit)
        .bind(from)
        .fetch_all(&self.read)
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM media WHERE uploader = $1")
            .bind(uploader)
            .fetch_one(&self.read)
            .await?;
        Ok((rows.iter().map(media_row).collect(), total))
    }

    /// Deletes a media item and its thumbnails; answers the content hashes that no media
    /// or thumbnail uses any more (their files may go).
    pub async fn delete_media(&self, origin: &str, media_id: &str) -> StoreResult<Option<Vec<String>>> {
        let mut tx = self.write.begin().await?;
        let Some(sha256) =
            sqlx::query_scalar::<_, String>("DELETE FROM media WHERE origin = $1 AND media_id = $2 RETURNING sha256")
                .bind(origin)
                .bind(media_id)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(None);
        };
        let mut hashes: Vec<String> =
            sqlx::query_scalar("DELETE FROM media_thumbnails WHERE origin = $1 AND media_id = $2 RETURNING sha256")
                .bind(origin)
                .bind(media_id)
                .fetch_all(&mut *tx)
                .await?;
        hashes.push(sha256);
        hashes.sort();
        hashes.dedup();
        let mut unused = Vec::new();
        for hash in hashes {
            let used: i64 = sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM media WHERE sha256 = $1) \
                 + (SELECT COUNT(*) FROM media_thumbnails WHERE sha256 = $1)",
            )
            .bind(&hash)
            .fetch_one(&mut *tx)
            .await?;
            if used == 0 {
                sqlx::query("DELETE FROM media_scans WHERE sha256 = $1").bind(&hash).execute(&mut *tx).await?;
                unused.push(hash);
            }
        }
        tx.commit().await?;
        Ok(Some(unused))
    }

    /// The antivirus's counts.
    pub async fn scan_stats(&self) -> StoreResult<ScanStats> {
        let row = sqlx::query(
            "SELECT \
             (SELECT COUNT(DISTINCT m.sha256) FROM media m JOIN media_scans s ON s.sha256 = m.sha256 \
              WHERE s.verdict = 'clean'), \
             (SELECT COUNT(DISTINCT m.sha256) FROM media m JOIN media_scans s ON s.sha256 = m.sha256 \
              WHERE s.verdict = 'infected'), \
             (SELECT COUNT(DISTINCT m.sha256) FROM media m LEFT JOIN media_scans s ON s.sha256 = m.sha256 \
              WHERE s.sha256 IS NULL AND m.quarantined = 0), \
             (SELECT COUNT(*) FROM media WHERE quarantined <> 0)",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(ScanStats { clean: row.get(0), infected: row.get(1), unscanned: row.get(2), quarantined_media: row.get(3) })
    }
}

async fn insert_media<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    executor: E,
    row: &MediaRow,
    ignore_conflict: bool,
) -> StoreResult<()> {
    let on_conflict = if ignore_conflict { " ON CONFLICT DO NOTHING" } else { "" };
    sqlx::query(super::sql(format!(
        "INSERT INTO media ({MEDIA_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9){on_conflict}"
    )))
    .bind(&row.origin)
    .bind(&row.media_id)
    .bind(&row.sha256)
    .bind(row.size)
    .bind(&row.content_type)
    .bind(&row.filename)
    .bind(&row.uploader)
    .bind(row.created_ts)
    .bind(row.quarantined as i64)
    .execute(executor)
    .await?;
    Ok(())
}
