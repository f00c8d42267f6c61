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
        insert_media(&self.write, row).await
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
        let row = sqlx::query(
            "SELECT origin, media_id, sha256, size, content_type, filename, uploader, created_ts, quarantined \
             FROM media WHERE origin = $1 AND media_id = $2",
        )
        .bind(origin)
        .bind(media_id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| MediaRow {
            origin: r.get(0),
            media_id: r.get(1),
            sha256: r.get(2),
            size: r.get(3),
            content_type: r.get(4),
            filename: r.get(5),
            uploader: r.get(6),
            created_ts: r.get(7),
            quarantined: r.get::<i64, _>(8) != 0,
        }))
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
        insert_media(&mut *tx, row).await?;
        tx.commit().await?;
        Ok(true)
    }
}

async fn insert_media<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(executor: E, row: &MediaRow) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO media (origin, media_id, sha256, size, content_type, filename, uploader, created_ts, quarantined) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
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
