//! Media of other servers: fetched from their origin over federation
//! (`/_matrix/federation/v1/media/download`, a `multipart/mixed` answer read as it
//! streams), stored and checked like an upload, then served from here; and the answers
//! this server gives to peers asking for its own media.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use ruma::ServerName;

use super::{Media, MediaRow, StoredMedia, io_error};
use crate::{
    api::ruma::percent_encode,
    error::{Error, Result},
    store::now_ms,
};

/// Largest metadata part read from a peer's answer.
const MAX_METADATA: usize = 64 * 1024;

impl Media {
    /// Fetches a media item of another server, stores it under its origin, and checks it
    /// (sniffed type, antivirus) as an upload is checked.
    pub(super) async fn fetch_remote(&self, server_name: &str, media_id: &str) -> Result<()> {
        let server = ServerName::parse(server_name).map_err(|_| Error::not_found("unknown media"))?;
        if media_id.is_empty() || !media_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(Error::not_found("unknown media"));
        }
        let Some(federation) = &self.federation else {
            return Err(Error::not_found("media of other servers are not fetched here"));
        };
        let path = format!("/_matrix/federation/v1/media/download/{}", percent_encode(media_id));
        let response = federation.get_streaming(&server, &path).await?;
        let bad = |why: &str| Error::Remote(format!("{server_name} answered a media request badly: {why}"));
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad("no content type"))?;
        let boundary = mixed_boundary(content_type).ok_or_else(|| bad("not multipart/mixed"))?;
        let mut parts = multer::Multipart::new(response.bytes_stream(), boundary);
        // The first part is the metadata (an empty object today); the second the file.
        let mut metadata_part =
            parts.next_field().await.map_err(|e| bad(&e.to_string()))?.ok_or_else(|| bad("no parts"))?;
        let mut metadata = Vec::new();
        while let Some(chunk) = metadata_part.chunk().await.map_err(|e| bad(&e.to_string()))? {
            metadata.extend_from_slice(&chunk);
            if metadata.len() > MAX_METADATA {
                return Err(bad("the metadata part is too large"));
            }
        }
        drop(metadata_part);
        if serde_json::from_slice::<serde_json::Value>(&metadata).is_err() {
            return Err(bad("the metadata part is not JSON"));
        }
        let file = parts.next_field().await.map_err(|e| bad(&e.to_string()))?.ok_or_else(|| bad("no file part"))?;
        if file.headers().contains_key(http::header::LOCATION) {
            // Redirects to other stores are not followed: the file would come from
            // somewhere the federation rules never vetted.
            return Err(bad("redirected to another location"));
        }
        let content_type = file.content_type().map(|m| m.to_string());
        let filename = file
            .headers()
            .get(http::header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .and_then(disposition_filename);
        let stream = Box::pin(file.map(|chunk| chunk.map_err(|e| e.to_string())));
        let (sha256, size) = self.write_stream(stream, u64::MAX).await?;
        let row = MediaRow {
            origin: server_name.to_owned(),
            media_id: media_id.to_owned(),
            sha256: sha256.clone(),
            size: size as i64,
            content_type,
            filename,
            uploader: None,
            created_ts: now_ms(),
            quarantined: false,
        };
        self.store.insert_remote_media(&row).await?;
        tracing::debug!(origin = server_name, media_id, size, "remote media fetched");
        // An infected remote file is quarantined here like an upload; the reader gets 404.
        match self.check_new(&sha256).await {
            Err(Error::Forbidden(_)) => Err(Error::not_found("this media is quarantined")),
            other => other,
        }
    }

    /// The body of a federation media answer: the metadata part, then the file, streamed.
    pub async fn multipart(
        &self,
        media: &StoredMedia,
    ) -> Result<(String, impl Stream<Item = std::io::Result<Bytes>> + use<>)> {
        let boundary = super::random_id();
        let file = tokio::fs::File::open(&media.path).await.map_err(|e| io_error("read a media file", &e))?;
        let content_type = media.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
        let mut head = format!(
            "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\nContent-Type: {content_type}\r\n"
        );
        if let Some(name) = &media.filename {
            head.push_str(&format!("Content-Disposition: attachment; filename*=utf-8''{}\r\n", percent_encode(name)));
        }
        head.push_str("\r\n");
        let tail = format!("\r\n--{boundary}--\r\n");
        let body = futures_util::stream::once(async move { Ok(Bytes::from(head)) })
            .chain(tokio_util::io::ReaderStream::new(file))
            .chain(futures_util::stream::once(async move { Ok(Bytes::from(tail)) }));
        Ok((format!("multipart/mixed; boundary={boundary}"), body))
    }
}

/// The boundary of a `multipart/mixed` content type.
fn mixed_boundary(content_type: &str) -> Option<String> {
    let mime: mime::Mime = content_type.parse().ok()?;
    (mime.type_() == mime::MULTIPART && mime.subtype() == "mixed")
        .then(|| mime.get_param(mime::BOUNDARY).map(|b| b.as_str().to_owned()))
        .flatten()
}

/// The file name of a `Content-Disposition` value (`filename*=utf-8''…` or `filename=`).
fn disposition_filename(value: &str) -> Option<String> {
    let mut plain = None;
    for param in value.split(';').map(str::trim) {
        if let Some(encoded) = param.strip_prefix("filename*=") {
            let encoded = encoded.split_once("''").map_or(encoded, |(_, rest)| rest);
            return percent_encoding::percent_decode_str(encoded).decode_utf8().ok().map(|s| s.into_owned());
        }
        if let Some(name) = param.strip_prefix("filename=") {
            plain = Some(name.trim_matches('"').to_owned());
        }
    }
    plain.filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{disposition_filename, mixed_boundary};

    #[test]
    fn boundaries_are_read_from_mixed_types() {
        assert_eq!(mixed_boundary("multipart/mixed; boundary=abc123").unwrap(), "abc123");
        assert_eq!(mixed_boundary("multipart/mixed; boundary=\"a b\"").unwrap(), "a b");
        assert_eq!(mixed_boundary("multipart/form-data; boundary=abc"), None);
        assert_eq!(mixed_boundary("application/json"), None);
    }

    #[test]
    fn file_names_are_read_from_dispositions() {
        assert_eq!(
            disposition_filename("attachment; filename*=utf-8''rapport%20%C3%A9t%C3%A9.pdf").unwrap(),
            "rapport été.pdf"
        );
        assert_eq!(disposition_filename("inline; filename=\"photo.png\"").unwrap(), "photo.png");
        assert_eq!(disposition_filename("inline"), None);
    }
}
