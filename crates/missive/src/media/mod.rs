//! The media repository: uploads streamed to disk (never held whole in memory), stored
//! once per content under their SHA-256 in the data directory, with per-media metadata in
//! the database; every file's type sniffed and, with an antivirus, scanned before it may
//! be served (verdicts kept per content hash; unscanned files are never served).

pub mod antivirus;
mod preview;
mod remote;
pub mod scanner;
mod thumbnail;

pub use thumbnail::ThumbnailMethod;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use ruma::{OwnedServerName, UserId};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use self::{
    antivirus::{Clamd, Finding, ScanError},
    scanner::{ContentScanner, EncryptedFile, Outcome},
};
use crate::{
    config::{Antivirus as AntivirusConfig, Media as MediaConfig},
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
    /// The virus scanner; unset: files are served unscanned.
    clamd: Option<Clamd>,
    antivirus: AntivirusConfig,
    /// The content scanner API of encrypted attachments (on with the antivirus).
    scanner: Option<ContentScanner>,
    /// Where media of other servers come from; unset in tools that run without it.
    federation: Option<Arc<crate::federation::Federation>>,
    /// URL previews, when the operator lists sites.
    previews: Option<preview::Previews>,
}

/// A stored media item and whether it may be served.
pub enum Checked {
    Clean(StoredMedia),
    /// Quarantined, with the antivirus's finding when it was one.
    Quarantined(Option<String>),
}

/// A scan verdict kept per content hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Infected => "infected",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "clean" => Some(Self::Clean),
            "infected" => Some(Self::Infected),
            _ => None,
        }
    }
}

/// A local media item ready to be served.
#[derive(Debug)]
pub struct StoredMedia {
    pub path: PathBuf,
    /// SHA-256 of the content, hex.
    pub sha256: String,
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
    pub async fn new(
        store: Store,
        server_name: OwnedServerName,
        data_dir: &Path,
        config: MediaConfig,
        antivirus: AntivirusConfig,
        federation: Option<Arc<crate::federation::Federation>>,
        trusted_ca_files: &[PathBuf],
    ) -> Result<Self> {
        let root = data_dir.join("media");
        let tmp = root.join("tmp");
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        tokio::fs::create_dir_all(&tmp).await.map_err(|e| io_error("create the media folder", &e))?;
        let clamd = Clamd::new(&antivirus);
        let scanner = match &clamd {
            Some(_) => {
                let key_file =
                    antivirus.scanner_key_file.clone().unwrap_or_else(|| data_dir.join("content_scanner.key"));
                Some(ContentScanner::load(&key_file).map_err(|e| io_error("load the content scanner's key", &e))?)
            }
            None => None,
        };
        let previews = preview::Previews::new(&config, trusted_ca_files);
        Ok(Self { store, server_name, root, config, clamd, antivirus, scanner, federation, previews })
    }

    /// Whether files are scanned by an antivirus.
    pub fn scanning(&self) -> bool {
        self.clamd.is_some()
    }

    /// Scans, every `rescan_interval_secs`, the files that could not be scanned when they
    /// came (clamd was down or slow): until then they are not served.
    pub fn spawn_rescans(self: &Arc<Self>) {
        if self.clamd.is_none() {
            return;
        }
        let media = self.clone();
        let interval = Duration::from_secs(self.antivirus.rescan_interval_secs.max(1));
        tokio::spawn(async move {
            loop {
                if let Err(e) = media.rescan().await {
                    tracing::warn!(error = %e, "media rescan failed");
                }
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// One sweep of unscanned files, in batches, until none is left or a scan fails.
    async fn rescan(&self) -> Result<()> {
        loop {
            let pending = self.store.unscanned_media(50).await?;
            if pending.is_empty() {
                return Ok(());
            }
            for sha256 in pending {
                match self.scan_content(&sha256).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(error = %e, "media waiting for the virus scanner");
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Scans the stored file of a content hash and records the verdict; an infected
    /// file's media are quarantined.
    async fn scan_content(&self, sha256: &str) -> std::result::Result<(Verdict, Option<String>), ScanError> {
        let Some(clamd) = &self.clamd else { return Ok((Verdict::Clean, None)) };
        let file = tokio::fs::File::open(self.content_path(sha256))
            .await
            .map_err(|e| ScanError::Failed(format!("cannot open the file: {e}")))?;
        let finding = clamd.scan_reader(file).await?;
        let (verdict, detail) = match finding {
            Finding::Clean => (Verdict::Clean, None),
            Finding::Infected(signature) => (Verdict::Infected, Some(signature)),
        };
        self.record_verdict(sha256, verdict, detail.as_deref())
            .await
            .map_err(|e| ScanError::Failed(format!("cannot record the verdict: {e}")))?;
        Ok((verdict, detail))
    }

    /// Keeps a verdict for a content hash; an infected file's media are quarantined.
    async fn record_verdict(&self, sha256: &str, verdict: Verdict, detail: Option<&str>) -> Result<()> {
        self.store.record_scan(sha256, verdict.as_str(), detail, now_ms()).await?;
        if verdict == Verdict::Infected {
            let quarantined = self.store.quarantine_content(sha256).await?;
            tracing::warn!(sha256, signature = detail.unwrap_or_default(), quarantined, "infected file quarantined");
        }
        Ok(())
    }

    /// The verdict on a stored file, scanning it now if it has none (`Err` with the
    /// finding when infected); a file that cannot be scanned yet is not served (fail
    /// closed).
    async fn require_clean(&self, sha256: &str) -> Result<std::result::Result<(), Option<String>>> {
        if self.clamd.is_none() {
            return Ok(Ok(()));
        }
        let (verdict, detail) = match self.store.scan_verdict(sha256).await? {
            Some((verdict, detail)) => (Verdict::parse(&verdict).unwrap_or(Verdict::Infected), detail),
            None => self.scan_content(sha256).await.map_err(|e| Error::NotScanned(e.to_string()))?,
        };
        Ok(match verdict {
            Verdict::Clean => Ok(()),
            Verdict::Infected => Err(detail),
        })
    }

    /// Scans a new upload before it is acknowledged: infected, it is quarantined and the
    /// uploader told; when the scanner is unavailable, the upload is kept and scanned later.
    async fn check_new(&self, sha256: &str) -> Result<()> {
        if self.clamd.is_none() {
            return Ok(());
        }
        if let Some((verdict, detail)) = self.store.scan_verdict(sha256).await? {
            if Verdict::parse(&verdict) == Some(Verdict::Infected) {
                self.store.quarantine_content(sha256).await?;
                return Err(infected(detail.as_deref()));
            }
            return Ok(());
        }
        match self.scan_content(sha256).await {
            Ok((Verdict::Clean, _)) => Ok(()),
            Ok((Verdict::Infected, detail)) => Err(infected(detail.as_deref())),
            Err(e) => {
                tracing::warn!(error = %e, sha256, "upload kept unscanned: it is served once the scanner has seen it");
                Ok(())
            }
        }
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
        tracing::debug!(user_id = %uploader, media_id, size = row.size, "media uploaded");
        self.check_new(&row.sha256).await?;
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
        tracing::debug!(user_id = %uploader, media_id, size = row.size, "reserved media uploaded");
        self.check_new(&row.sha256).await
    }

    /// Streams an upload to its content-addressed file and answers the row to record.
    async fn store_content<S, E>(
        &self,
        uploader: &UserId,
        media_id: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        body: S,
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
        let (sha256, size) = self.write_stream(body, remaining).await?;
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

    /// Streams a file to its content-addressed place (refused past `max_upload_size`, past
    /// `remaining` bytes, or when its sniffed type is refused; nothing is kept then) and
    /// answers its hash and size. The file is synced before this returns.
    async fn write_stream<S, E>(&self, mut body: S, remaining: u64) -> Result<(String, u64)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let tmp = self.temp_file();
        let path = tmp.0.clone().expect("just set");
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| io_error("create an upload file", &e))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut head = Vec::with_capacity(antivirus::SNIFF_LEN);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::bad_json(format!("the upload was interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > self.config.max_upload_size {
                return Err(Error::TooLarge);
            }
            if size > remaining {
                return Err(Error::forbidden("this upload would exceed your upload quota"));
            }
            if head.len() < antivirus::SNIFF_LEN {
                let take = (antivirus::SNIFF_LEN - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| io_error("write an upload", &e))?;
        }
        self.check_type(&head)?;
        file.sync_all().await.map_err(|e| io_error("sync an upload", &e))?;
        drop(file);
        let sha256 = hex::encode(hasher.finalize());
        self.place(tmp, &sha256).await?;
        Ok((sha256, size))
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

    /// A media item to serve; a quarantined item is never served (the spec's 404).
    pub async fn get(&self, server_name: &str, media_id: &str) -> Result<StoredMedia> {
        match self.get_checked(server_name, media_id).await? {
            Checked::Clean(media) => Ok(media),
            Checked::Quarantined(_) => Err(Error::not_found("this media is quarantined")),
        }
    }

    /// A media item and whether it may be served; one of another server is fetched from
    /// it the first time.
    pub async fn get_checked(&self, server_name: &str, media_id: &str) -> Result<Checked> {
        let row = match self.store.media(server_name, media_id).await? {
            Some(row) => row,
            None if server_name != self.server_name.as_str() => {
                self.fetch_remote(server_name, media_id).await?;
                self.store.media(server_name, media_id).await?.ok_or_else(|| Error::not_found("unknown media"))?
            }
            None => return Err(Error::not_found("unknown media")),
        };
        if row.quarantined {
            let detail = self.store.scan_verdict(&row.sha256).await?.and_then(|(_, detail)| detail);
            return Ok(Checked::Quarantined(detail));
        }
        if let Err(finding) = self.require_clean(&row.sha256).await? {
            return Ok(Checked::Quarantined(finding));
        }
        Ok(Checked::Clean(StoredMedia {
            path: self.content_path(&row.sha256),
            sha256: row.sha256,
            size: row.size as u64,
            content_type: row.content_type,
            filename: row.filename,
        }))
    }

    /// Quarantines or releases a media item (an operator's decision, logged). Releasing
    /// a file the antivirus found infected marks its content clean: a false positive.
    pub async fn set_quarantined(&self, origin: &str, media_id: &str, quarantined: bool, by: &UserId) -> Result<()> {
        let row = self.store.media(origin, media_id).await?.ok_or_else(|| Error::not_found("unknown media"))?;
        if !quarantined
            && let Some((verdict, detail)) = self.store.scan_verdict(&row.sha256).await?
            && Verdict::parse(&verdict) == Some(Verdict::Infected)
        {
            let note = format!("released by {by} (found {})", detail.unwrap_or_default());
            self.store.record_scan(&row.sha256, Verdict::Clean.as_str(), Some(&note), now_ms()).await?;
        }
        self.store.set_media_quarantined(origin, media_id, quarantined).await?;
        tracing::warn!(origin, media_id, quarantined, by = %by, "media quarantine changed by an operator");
        Ok(())
    }

    /// Deletes a media item, its thumbnails and the files nothing else uses.
    pub async fn delete(&self, origin: &str, media_id: &str, by: &UserId) -> Result<()> {
        let unused =
            self.store.delete_media(origin, media_id).await?.ok_or_else(|| Error::not_found("unknown media"))?;
        self.remove_contents(&unused).await?;
        tracing::warn!(origin, media_id, files = unused.len(), by = %by, "media deleted by an operator");
        Ok(())
    }

    /// The preview of a URL (`M_UNRECOGNIZED` when previews are off, as where the
    /// endpoint does not exist).
    pub async fn preview_url(&self, url: &str) -> Result<serde_json::Value> {
        let previews = self.previews.as_ref().ok_or(Error::Unrecognized { method_not_allowed: false })?;
        previews.preview(url).await
    }

    /// Deletes media uploaded before `cutoff` (but those of users under a legal hold), with
    /// their thumbnails and the files nothing else uses; answers how many items went.
    pub async fn purge_before(&self, cutoff: i64) -> Result<u64> {
        let (unused, items) = self.store.purge_old_media(cutoff, 500).await?;
        self.remove_contents(&unused).await?;
        Ok(items)
    }

    /// Deletes every upload of a user with its thumbnails and the files nothing else uses
    /// (an erased account's); answers how many.
    pub async fn delete_uploads_of(&self, uploader: &str) -> Result<u64> {
        let mut deleted = 0;
        loop {
            let (items, _) = self.store.user_media(uploader, 0, 500).await?;
            if items.is_empty() {
                return Ok(deleted);
            }
            for item in &items {
                if let Some(unused) = self.store.delete_media(&item.origin, &item.media_id).await? {
                    self.remove_contents(&unused).await?;
                    deleted += 1;
                }
            }
        }
    }

    /// Removes the files of contents no media row uses any more (one already gone is fine).
    async fn remove_contents(&self, hashes: &[String]) -> Result<()> {
        for sha256 in hashes {
            match tokio::fs::remove_file(self.content_path(sha256)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("delete a media file", &e)),
            }
        }
        Ok(())
    }

    /// A media item as the content scanner API hands it out: quarantined is "not clean",
    /// a file the antivirus could not see yet a failed request.
    pub async fn get_for_scanner(&self, server_name: &str, media_id: &str) -> Result<StoredMedia> {
        self.content_scanner()?;
        match self.get_checked(server_name, media_id).await {
            Ok(Checked::Clean(media)) => Ok(media),
            Ok(Checked::Quarantined(finding)) => Err(not_clean(finding)),
            Err(Error::NotScanned(info)) => {
                Err(Error::ContentScanner { reason: crate::error::ScannerReason::RequestFailed, info })
            }
            Err(e) => Err(e),
        }
    }

    /// The content scanner, when scanning is on.
    pub fn content_scanner(&self) -> Result<&ContentScanner> {
        self.scanner.as_ref().ok_or(Error::Unrecognized { method_not_allowed: false })
    }

    /// Checks an encrypted attachment: the stored ciphertext must be the one announced,
    /// and its plaintext (under the key given) of an allowed type and clean. Answers the
    /// ciphertext to serve; an infected attachment is quarantined for everyone.
    pub async fn scan_attachment(&self, file: &EncryptedFile) -> Result<StoredMedia> {
        let scanner = self.content_scanner()?;
        let clamd = self.clamd.as_ref().ok_or(Error::Unrecognized { method_not_allowed: false })?;
        let key = file.key()?;
        let (server_name, media_id) = file
            .url
            .strip_prefix("mxc://")
            .and_then(|rest| rest.split_once('/'))
            .filter(|(server, id)| !server.is_empty() && !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| Error::ContentScanner {
                reason: crate::error::ScannerReason::MalformedJson,
                info: "`file.url` must be an mxc:// URI".into(),
            })?;
        let media = self.get_for_scanner(server_name, media_id).await?;
        if !key.matches(&media.sha256) {
            return Err(Error::ContentScanner {
                reason: crate::error::ScannerReason::FailedToDecrypt,
                info: "the file's SHA-256 hash is not the one given".into(),
            });
        }
        if scanner.known_clean(&key) {
            return Ok(media);
        }
        match scanner::scan_decrypted(clamd, &self.config, &media.path, &key).await? {
            Outcome::Clean => {
                scanner.remember_clean(&key);
                Ok(media)
            }
            Outcome::Infected(signature) => {
                self.record_verdict(&media.sha256, Verdict::Infected, Some(&signature)).await?;
                Err(not_clean(Some(signature)))
            }
        }
    }
}

impl Media {
    /// Refuses a file whose sniffed type the operator's lists keep out.
    fn check_type(&self, head: &[u8]) -> Result<()> {
        let sniffed = antivirus::sniff(head);
        match antivirus::type_allowed(&self.config, &sniffed) {
            true => Ok(()),
            false => Err(Error::forbidden(format!("files of type {sniffed} are not accepted on this server"))),
        }
    }
}

/// The content scanner's answer for a file found unsafe.
fn not_clean(finding: Option<String>) -> Error {
    Error::ContentScanner {
        reason: crate::error::ScannerReason::NotClean,
        info: format!("the antivirus found {}", finding.as_deref().unwrap_or("this file unsafe")),
    }
}

/// The uploader's answer for an infected file.
fn infected(signature: Option<&str>) -> Error {
    Error::forbidden(format!(
        "this file was found infected ({}) and is quarantined: it will not be delivered",
        signature.unwrap_or("malware")
    ))
}

pub(crate) fn random_id() -> String {
    use rand::{Rng, distributions::Alphanumeric};
    rand::thread_rng().sample_iter(&Alphanumeric).take(MEDIA_ID_LEN).map(char::from).collect()
}

pub(crate) fn io_error(what: &str, e: &std::io::Error) -> Error {
    Error::Internal(format!("cannot {what}: {e}"))
}
