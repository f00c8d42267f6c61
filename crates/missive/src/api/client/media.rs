//! Content repository: uploads (`POST /_matrix/media/v3/upload`, a raw body streamed to
//! disk), the authenticated downloads of `/_matrix/client/v1/media/`, the upload limit, and
//! the deprecated unauthenticated downloads behind a switch. Answers are files, not JSON.

use std::collections::HashMap;

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{
    api::{
        AppState,
        ruma::{Authenticated, json},
    },
    error::{Error, Result},
    media::{StoredMedia, ThumbnailMethod},
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let mut router = router
        .route("/_matrix/media/v1/create", post(create))
        .route("/_matrix/media/v3/upload/{server_name}/{media_id}", axum::routing::put(upload_reserved))
        .route("/_matrix/client/v1/media/config", get(config))
        .route("/_matrix/client/v1/media/download/{server_name}/{media_id}", get(download))
        .route("/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}", get(download_named))
        .route("/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}", get(thumbnail))
        .route("/_matrix/client/v1/media/preview_url", get(preview_url));
    for version in ["r0", "v3"] {
        router = router
            .route(&format!("/_matrix/media/{version}/upload"), post(upload))
            .route(&format!("/_matrix/media/{version}/config"), get(config))
            .route(&format!("/_matrix/media/{version}/download/{{server_name}}/{{media_id}}"), get(legacy_download))
            .route(
                &format!("/_matrix/media/{version}/download/{{server_name}}/{{media_id}}/{{file_name}}"),
                get(legacy_download_named),
            )
            .route(&format!("/_matrix/media/{version}/thumbnail/{{server_name}}/{{media_id}}"), get(legacy_thumbnail))
            .route(&format!("/_matrix/media/{version}/preview_url"), get(preview_url));
    }
    router
}

/// What RFC 5987 lets a `filename*` parameter carry unencoded (its `attr-char`).
const ATTR_CHAR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// Types a browser may show in place: what cannot run script in the server's origin.
const INLINE_TYPES: [&str; 16] = [
    "text/plain",
    "text/csv",
    "application/json",
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "audio/mp4",
    "audio/mpeg",
    "audio/ogg",
    "audio/webm",
    "audio/wav",
];

/// # POST /_matrix/media/v3/upload
async fn upload(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response> {
    if id.is_guest {
        return Err(Error::GuestAccessForbidden);
    }
    let (content_type, filename) = upload_metadata(&state, &headers, &query)?;
    let uri = state.media.upload(&id.user_id, content_type, filename, body.into_data_stream()).await?;
    Ok(json(json!({ "content_uri": uri })))
}

/// An upload's type and name; one declared larger than the limit is refused before its
/// body is read.
fn upload_metadata<'a>(
    state: &AppState,
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
) -> Result<(Option<&'a str>, Option<&'a str>)> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.media.config.max_upload_size) {
        return Err(Error::TooLarge);
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).filter(|t| !t.is_empty());
    let filename = query.get("filename").map(String::as_str).filter(|f| !f.is_empty());
    Ok((content_type, filename))
}

/// # POST /_matrix/media/v1/create
async fn create(State(state): State<AppState>, Authenticated(id): Authenticated) -> Result<Response> {
    if id.is_guest {
        return Err(Error::GuestAccessForbidden);
    }
    let (uri, expires) = state.media.create(&id.user_id).await?;
    Ok(json(json!({ "content_uri": uri, "unused_expires_at": expires })))
}

/// # PUT /_matrix/media/v3/upload/{serverName}/{mediaId}
async fn upload_reserved(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path((server_name, media_id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response> {
    let (content_type, filename) = upload_metadata(&state, &headers, &query)?;
    let stream = body.into_data_stream();
    state.media.upload_reserved(&id.user_id, &server_name, &media_id, content_type, filename, stream).await?;
    Ok(json(json!({})))
}

/// How long a download waits for a reserved media's upload (`timeout_ms`, 20 s by default,
/// at most a minute).
fn wait_of(query: &HashMap<String, String>) -> std::time::Duration {
    let ms = query.get("timeout_ms").and_then(|t| t.parse::<u64>().ok()).unwrap_or(20_000).min(60_000);
    std::time::Duration::from_millis(ms)
}

/// # GET /_matrix/client/v1/media/config
async fn config(State(state): State<AppState>, Authenticated(_): Authenticated) -> Result<Response> {
    Ok(json(json!({ "m.upload.size": state.media.config.max_upload_size })))
}

/// # GET /_matrix/client/v1/media/preview_url
///
/// Also at the deprecated `/_matrix/media/v3/preview_url`, which always took a token.
async fn preview_url(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    if id.is_guest {
        return Err(Error::GuestAccessForbidden);
    }
    let url = query.get("url").ok_or_else(|| Error::MissingParam("url is required".into()))?;
    Ok(json(state.media.preview_url(url).await?))
}

/// # GET /_matrix/client/v1/media/download/{serverName}/{mediaId}
async fn download(
    State(state): State<AppState>,
    Authenticated(_): Authenticated,
    Path((server_name, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    serve(state.media.get_waiting(&server_name, &media_id, wait_of(&query)).await?, None, &headers).await
}

/// # GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}
async fn download_named(
    State(state): State<AppState>,
    Authenticated(_): Authenticated,
    Path((server_name, media_id, file_name)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    let media = state.media.get_waiting(&server_name, &media_id, wait_of(&query)).await?;
    serve(media, Some(file_name), &headers).await
}

/// # GET /_matrix/media/v3/download/{serverName}/{mediaId}
///
/// Deprecated and unauthenticated: answered only when `[media] legacy_unauthenticated`.
async fn legacy_download(
    State(state): State<AppState>,
    Path((server_name, media_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    require_legacy(&state)?;
    serve(state.media.get(&server_name, &media_id).await?, None, &headers).await
}

/// # GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}
async fn legacy_download_named(
    State(state): State<AppState>,
    Path((server_name, media_id, file_name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    require_legacy(&state)?;
    serve(state.media.get(&server_name, &media_id).await?, Some(file_name), &headers).await
}

/// # GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}
async fn thumbnail(
    State(state): State<AppState>,
    Authenticated(_): Authenticated,
    Path((server_name, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    thumbnail_of(&state, &server_name, &media_id, &query, &headers).await
}

/// # GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}
///
/// Deprecated and unauthenticated: answered only when `[media] legacy_unauthenticated`.
async fn legacy_thumbnail(
    State(state): State<AppState>,
    Path((server_name, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    require_legacy(&state)?;
    thumbnail_of(&state, &server_name, &media_id, &query, &headers).await
}

pub(super) async fn thumbnail_of(
    state: &AppState,
    server_name: &str,
    media_id: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response> {
    let dimension = |name: &str| -> Result<u32> {
        let value = query.get(name).ok_or_else(|| Error::MissingParam(format!("{name} is required")))?;
        value
            .parse::<u32>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| Error::invalid_param(format!("{name} must be a positive integer")))
    };
    let (width, height) = (dimension("width")?, dimension("height")?);
    let method = match query.get("method").map(String::as_str) {
        None | Some("scale") => ThumbnailMethod::Scale,
        Some("crop") => ThumbnailMethod::Crop,
        Some(_) => return Err(Error::invalid_param("method must be crop or scale")),
    };
    let thumbnail = state.media.thumbnail(server_name, media_id, width, height, method).await?;
    serve(thumbnail, None, headers).await
}

fn require_legacy(state: &AppState) -> Result<()> {
    match state.media.config.legacy_unauthenticated {
        true => Ok(()),
        // The spec's answer for frozen unauthenticated media.
        false => Err(Error::not_found("unauthenticated media downloads are off: use /_matrix/client/v1/media")),
    }
}

/// A byte range of a file of `size` bytes asked by a `Range` header: `Ok(None)` for the
/// whole file, `Err` when it cannot be satisfied. One range only (clients seeking in a
/// video ask one).
fn range(headers: &HeaderMap, size: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let Some(spec) = value.strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        // Several ranges: served whole, which the spec of ranges allows.
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size.checked_sub(1).ok_or(())?)
        }
        (start, "") => (start.parse().map_err(|_| ())?, size.checked_sub(1).ok_or(())?),
        (start, end) => {
            let (start, end): (u64, u64) = (start.parse().map_err(|_| ())?, end.parse().map_err(|_| ())?);
            (start, end.min(size.saturating_sub(1)))
        }
    };
    if start > end || start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Streams a stored file with the headers that keep a browser from running it in the
/// server's origin, whole or the range asked.
pub(super) async fn serve(media: StoredMedia, file_name: Option<String>, headers: &HeaderMap) -> Result<Response> {
    let content_type = media.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let inline = INLINE_TYPES.contains(&essence.as_str());
    let mut disposition = (if inline { "inline" } else { "attachment" }).to_owned();
    if let Some(name) = file_name.or(media.filename) {
        disposition
            .push_str(&format!("; filename*=utf-8''{}", percent_encoding::utf8_percent_encode(&name, ATTR_CHAR)));
    }
    let size = media.size;
    let asked = range(headers, size);
    let mut file = tokio::fs::File::open(&media.path)
        .await
        .map_err(|e| Error::Internal(format!("media file {}: {e}", media.path.display())))?;
    let (status, start, length) = match asked {
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Err(()) => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await.map_err(|e| Error::Internal(e.to_string()))?;
    }
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(length)));
    let mut response = (status, body).into_response();
    let out = response.headers_mut();
    let mut set = |name: header::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            out.insert(name, value);
        }
    };
    set(header::CONTENT_TYPE, &content_type);
    set(header::CONTENT_LENGTH, &length.to_string());
    set(header::CONTENT_DISPOSITION, &disposition);
    set(header::ACCEPT_RANGES, "bytes");
    set(header::CACHE_CONTROL, "private, max-age=31536000, immutable");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::CONTENT_SECURITY_POLICY, "sandbox; default-src 'none'; script-src 'none'; object-src 'none'");
    set(header::HeaderName::from_static("cross-origin-resource-policy"), "cross-origin");
    if status == StatusCode::PARTIAL_CONTENT {
        set(header::CONTENT_RANGE, &format!("bytes {start}-{}/{size}", start + length - 1));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(value: &str, size: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        range(&headers, size)
    }

    #[test]
    fn ranges_are_read_as_http_says() {
        assert_eq!(asked("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(asked("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(asked("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(asked("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(asked("bytes=100-", 100), Err(()));
        assert_eq!(asked("bytes=9-3", 100), Err(()));
        assert_eq!(asked("bytes=x-3", 100), Err(()));
        assert_eq!(asked("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(asked("items=0-1", 100), Ok(None));
    }
}
