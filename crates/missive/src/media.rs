//! The media repository: uploads streamed to disk (never held whole in memory), stored
//! once per content under their SHA-256 in the data directory, with per-media metadata in
//! the database; reads of local media.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use ruma::{OwnedServerName, UserId};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    config::Media as MediaConfig,
    error::{Error, Result},
    store::{MediaRow, Store, now_ms},
};

/// Length of a media ID: 24 characters of `[A-Za-z0-9]`, about 143 bits.
const MEDIA_ID_LEN: usize = 24;
/// How long a reserved media ID waits for its upload (a day, as Synapse gives).
const PENDING_LIFETIME_MS: i64 = 24 * 3600 * 1000;
/// Reserved media IDs a user may hold at once.
pub const PENDING_PER_USER: i64 = 10;

/// The media service.
pub struct Media {
    store: Store,
    server_name: OwnedServerName,
    /// `<data_dir>/media`: `sha256/<ab>/<cd>/<hash>` files and `tmp/` for uploads in progress.
    root: PathBuf,
    pub config: MediaConfig,
}

/// A local media item ready to be served.
#[derive(Debug)]
pub struct StoredMedia {
    pub path: PathBuf,
    pub size: u64,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

/// Removes a file when dropped, unless kept: an upload that fails half-way leaves nothing.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("a temporary file is kept once")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Media {
    /// The service, its folders created under `data_dir` (uploads interrupted by a crash
    /// are swept from `tmp/`).
    pub async fn new(store: Store, server_name: OwnedServerName, data_dir: &Path, config: MediaConfig) -> Result<Self> {
        let root = data_dir.join("media");
        let tmp = root.join("tmp");
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        tokio::fs::create_dir_all(&tmp).await.map_err(|e| io_error("create the media folder", &e))?;
        Ok(Self { store, server_name, root, config })
    }

    /// Where the file of a content hash lives.
    fn content_path(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(&sha256[..2]).join(&sha256[2..4]).join(sha256)
    }

    /// A new file under `tmp/`, removed unless placed.
    fn temp_file(&self) -> TempFile {
        TempFile(Some(self.root.join("tmp").join(random_id())))
    }

    /// Moves a written temporary file to the place of its content, unless those bytes
    /// are stored already (then the copy goes).
    async fn place(&self, tmp: TempFile, sha256: &str) -> Result<()> {
        let dest = self.content_path(sha256);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            return Ok(());
        }
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| io_error("create a media folder", &e))?;
        }
        tokio::fs::rename(tmp.keep(), &dest).await.map_err(|e| io_error("store a media file", &e))
    }

    /// Stores an upload read from `body`, refusing it past `max_upload_size` (nothing is
    /// kept then); answers its `mxc://` URI. The file is on disk, synced, before the
    /// answer, so that an acknowledged upload survives a crash.
    pub async fn upload<S, E>(
        &self,
        uploader: &UserId,
        content_type: Option<&str>,
        filename: Option<&str>,
        body: S,
    ) -> Result<String>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let media_id = random_id();
        let row = self.store_content(uploader, &media_id, content_type, filename, body).await?;
        self.store.insert_media(&row).await?;
        tracing::info!(user_id = %uploader, media_id, size = row.size, "media uploaded");
        Ok(format!("mxc://{}/{media_id}", self.server_name))
    }

    /// Reserves a media ID for an upload to come (`POST /_matrix/media/v1/create`): its
    /// URI and until when it may be uploaded. A user holds at most
    /// [`PENDING_PER_USER`] reservations at once.
    pub async fn create(&self, uploader: &UserId) -> Result<(String, i64)> {
        let media_id = random_id();
        let expires = now_ms() + PENDING_LIFETIME_MS;
        if !self.store.reserve_media(&media_id, uploader.as_str(), expires, PENDING_PER_USER).await? {
            return Err(Error::LimitExceeded { retry_after_ms: 60_000 });
        }
        Ok((format!("mxc://{}/{media_id}", self.server_name), expires))
    }

    /// Uploads the content of a reserved media ID, by the user who reserved it, once.
    pub async fn upload_reserved<S, E>(
        &self,
        uploader: &UserId,
        server_name: &str,
        media_id: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if server_name != self.server_name.as_str() {
            return Err(Error::forbidden("media of other servers are uploaded there"));
        }
        match self.store.pending_media(media_id).await? {
            Some((owner, _)) if owner != uploader.as_str() => {
                return Err(Error::forbidden("this media ID was created by someone else"));
            }
            Some((_, expires)) if expires <= now_ms() => return Err(Error::not_found("this media ID expired")),
            Some(_) => {}
            None if self.store.media(server_name, media_id).await?.is_some() => {
                return Err(Error::CannotOverwriteMedia);
            }
            None => return Err(Error::not_found("unknown media ID")),
        }
        let row = self.store_content(uploader, media_id, content_type, filename, body).await?;
        if !self.store.fulfil_media(&row).await? {
            return Err(Error::CannotOverwriteMedia);
        }
        tracing::info!(user_id = %uploader, media_id, size = row.size, "reserved media uploaded");
        Ok(())
    }

    /// Streams an upload to its content-addressed file and answers the row to record.
    async fn store_content<S, E>(
        &self,
        uploader: &UserId,
        media_id: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        mut body: S,
    ) -> Result<MediaRow>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // What the user's quota leaves them (the spec's 403 when it runs out).
        let remaining = match self.config.user_quota_bytes {
            Some(quota) => {
                let used = self.store.media_usage(uploader.as_str()).await?.max(0) as u64;
                if used >= quota {
                    return Err(Error::forbidden("your upload quota is used up"));
                }
                quota - used
            }
            None => u64::MAX,
        };
        let tmp = self.temp_file();
        let path = tmp.0.clone().expect("just set");
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| io_error("create an upload file", &e))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::bad_json(format!("the upload was interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > self.config.max_upload_size {
                return Err(Error::TooLarge);
            }
            if size > remaining {
                return Err(Error::forbidden("this upload would exceed your upload quota"));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| io_error("write an upload", &e))?;
        }
        file.sync_all().await.map_err(|e| io_error("sync an upload", &e))?;
        drop(file);
        let sha256 = hex::encode(hasher.finalize());
        self.place(tmp, &sha256).await?;
        Ok(MediaRow {
            origin: self.server_name.to_string(),
            media_id: media_id.to_owned(),
            sha256,
            size: size as i64,
            content_type: content_type.map(str::to_owned),
            filename: filename.map(str::to_owned),
            uploader: Some(uploader.to_string()),
            created_ts: now_ms(),
            quarantined: false,
        })
    }

    /// [`Media::get`], waiting up to `wait` for a reserved media ID's content to arrive
    /// (`M_NOT_YET_UPLOADED` when it does not).
    pub async fn get_waiting(&self, server_name: &str, media_id: &str, wait: Duration) -> Result<StoredMedia> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.get(server_name, media_id).await {
                Err(Error::NotFound(_)) if self.store.pending_media(media_id).await?.is_some() => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::NotYetUploaded);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => return other,
            }
        }
    }

    /// A media item to serve. Media of other servers are not fetched yet; a quarantined
    /// item is never served.
    pub async fn get(&self, server_name: &str, media_id: &str) -> Result<StoredMedia> {
        if server_name != self.server_name.as_str() {
            return Err(Error::not_found("media of other servers are not available here yet"));
        }
        let row = self.store.media(server_name, media_id).await?.ok_or_else(|| Error::not_found("unknown media"))?;
        if row.quarantined {
            return Err(Error::not_found("this media is quarantined"));
        }
        Ok(StoredMedia {
            path: self.content_path(&row.sha256),
            size: row.size as u64,
            content_type: row.content_type,
            filename: row.filename,
        })
    }
}

/// How a thumbnail fits the size asked: cut to fill it, or scaled to fit inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThumbnailMethod {
    Crop,
    Scale,
}

impl ThumbnailMethod {
    fn as_str(self) -> &'static str {
        match self {
            Self::Crop => "crop",
            Self::Scale => "scale",
        }
    }
}

/// The sizes thumbnails are made in (the spec's recommended set): a request gets the
/// smallest of its method at least as large as asked, else the largest, so that a few
/// files serve every client.
const THUMBNAIL_SIZES: [(u32, u32, ThumbnailMethod); 5] = [
    (32, 32, ThumbnailMethod::Crop),
    (96, 96, ThumbnailMethod::Crop),
    (320, 240, ThumbnailMethod::Scale),
    (640, 480, ThumbnailMethod::Scale),
    (800, 600, ThumbnailMethod::Scale),
];

/// Largest image decoded for a thumbnail: beyond, a small file could ask for gigabytes.
const THUMBNAIL_MAX_PIXELS_SIDE: u32 = 12_000;
const THUMBNAIL_MAX_ALLOC: u64 = 512 * 1024 * 1024;

impl Media {
    /// A thumbnail of a local image: made on first request in the nearest standard size,
    /// then kept (content-addressed like media). Media that is not an image a thumbnail
    /// can be made of is `M_UNKNOWN`.
    pub async fn thumbnail(
        &self,
        server_name: &str,
        media_id: &str,
        width: u32,
        height: u32,
        method: ThumbnailMethod,
    ) -> Result<StoredMedia> {
        let original = self.get(server_name, media_id).await?;
        let sizes: Vec<(u32, u32, ThumbnailMethod)> =
            THUMBNAIL_SIZES.iter().filter(|(_, _, m)| *m == method).copied().collect();
        let (w, h, _) = sizes
            .iter()
            .find(|(w, h, _)| *w >= width && *h >= height)
            .or(sizes.last())
            .copied()
            .expect("both methods have sizes");
        if let Some((sha256, content_type, size)) =
            self.store.thumbnail(server_name, media_id, (w, h), method.as_str()).await?
        {
            let path = self.content_path(&sha256);
            return Ok(StoredMedia { path, size: size as u64, content_type: Some(content_type), filename: None });
        }
        let source = original.path.clone();
        let (bytes, content_type) = tokio::task::spawn_blocking(move || make_thumbnail(&source, w, h, method))
            .await
            .map_err(|e| Error::Internal(format!("thumbnail task: {e}")))??;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let dest = self.content_path(&sha256);
        if !tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            let tmp = self.temp_file();
            let path = tmp.0.clone().expect("just set");
            tokio::fs::write(&path, &bytes).await.map_err(|e| io_error("write a thumbnail", &e))?;
            self.place(tmp, &sha256).await?;
        }
        let size = bytes.len() as i64;
        self.store
            .insert_thumbnail(server_name, media_id, (w, h), method.as_str(), &sha256, content_type, size)
            .await?;
        Ok(StoredMedia { path: dest, size: size as u64, content_type: Some(content_type.to_owned()), filename: None })
    }
}

/// Decodes an image (bounded in size and memory) and makes its thumbnail: never larger
/// than the original; PNG where the image has transparency, JPEG otherwise.
fn make_thumbnail(path: &Path, width: u32, height: u32, method: ThumbnailMethod) -> Result<(Vec<u8>, &'static str)> {
    let cannot = || Error::Unknown("this media is not an image a thumbnail can be made of".into());
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| io_error("read a media file", &e))?
        .with_guessed_format()
        .map_err(|e| io_error("read a media file", &e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(THUMBNAIL_MAX_PIXELS_SIDE);
    limits.max_image_height = Some(THUMBNAIL_MAX_PIXELS_SIDE);
    limits.max_alloc = Some(THUMBNAIL_MAX_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|_| cannot())?;
    let fits = image.width() <= width && image.height() <= height;
    let thumbnail = match method {
        _ if fits => image,
        ThumbnailMethod::Scale => image.resize(width, height, image::imageops::FilterType::Triangle),
        ThumbnailMethod::Crop => image.resize_to_fill(width, height, image::imageops::FilterType::Triangle),
    };
    let mut out = std::io::Cursor::new(Vec::new());
    if thumbnail.color().has_alpha() {
        thumbnail.write_to(&mut out, image::ImageFormat::Png).map_err(|_| cannot())?;
        Ok((out.into_inner(), "image/png"))
    } else {
        image::DynamicImage::ImageRgb8(thumbnail.to_rgb8())
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .map_err(|_| cannot())?;
        Ok((out.into_inner(), "image/jpeg"))
    }
}

fn random_id() -> String {
    use rand::{Rng, distributions::Alphanumeric};
    rand::thread_rng().sample_iter(&Alphanumeric).take(MEDIA_ID_LEN).map(char::from).collect()
}

fn io_error(what: &str, e: &std::io::Error) -> Error {
    Error::Internal(format!("cannot {what}: {e}"))
}
