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
        .execute(&self.write)
        .await?;
        Ok(())
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
}
