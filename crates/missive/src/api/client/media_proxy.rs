//! The content scanner API (`/_matrix/media_proxy/unstable/`, the API of Element's Matrix
//! Content Scanner that Tchap's clients call at the homeserver's base URL): scan verdicts
//! and downloads of plain media, and of encrypted attachments whose key the client gives.
//! Answered only when an antivirus is configured; errors in the scanner's own shape.

use std::collections::HashMap;

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::HeaderMap,
    response::Response,
    routing::{get, post},
};
use serde_json::json;

use super::media::{serve, thumbnail_of};
use crate::{
    api::{
        AppState,
        ruma::{Authenticated, json},
    },
    error::{Error, Result, ScannerReason},
    media::StoredMedia,
};

const PREFIX: &str = "/_matrix/media_proxy/unstable";

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route(&format!("{PREFIX}/public_key"), get(public_key))
        .route(&format!("{PREFIX}/scan/{{server_name}}/{{media_id}}"), get(scan))
        .route(&format!("{PREFIX}/download/{{server_name}}/{{media_id}}"), get(download))
        .route(&format!("{PREFIX}/thumbnail/{{server_name}}/{{media_id}}"), get(thumbnail))
        .route(&format!("{PREFIX}/scan_encrypted"), post(scan_encrypted))
        .route(&format!("{PREFIX}/download_encrypted"), post(download_encrypted))
}

/// # GET /_matrix/media_proxy/unstable/public_key
async fn public_key(State(state): State<AppState>) -> Result<Response> {
    Ok(json(json!({ "public_key": state.media.content_scanner()?.public_key() })))
}

/// A verdict as the scan endpoints give it: "not clean" is an answer, not an error.
fn verdict(result: Result<StoredMedia>) -> Result<Response> {
    match result {
        Ok(_) => Ok(json(json!({ "clean": true, "info": "File is clean" }))),
        Err(Error::ContentScanner { reason: ScannerReason::NotClean, info }) => {
            Ok(json(json!({ "clean": false, "info": info })))
        }
        Err(e) => Err(e),
    }
}

/// # GET /_matrix/media_proxy/unstable/scan/{serverName}/{mediaId}
async fn scan(
    State(state): State<AppState>,
    Authenticated(_): Authenticated,
    Path((server_name, media_id)): Path<(String, String)>,
) -> Result<Response> {
    verdict(state.media.get_for_scanner(&server_name, &media_id).await)
}

/// # GET /_matrix/media_proxy/unstable/download/{serverName}/{mediaId}
async fn download(
    State(state): State<AppState>,
    Authenticated(_): Authenticated,
    Path((server_name, media_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    serve(state.media.get_for_scanner(&server_name, &media_id).await?, None, &headers).await
}

/// # GET /_matrix/media_proxy/unstable/thumbnail/{serverName}/{mediaId}
async fn thumbnail(
    State(state): State<AppState>,
    Authenticated(_): Authenticated,
    Path((server_name, media_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    state.media.get_for_scanner(&server_name, &media_id).await?;
    thumbnail_of(&state, &server_name, &media_id, &query, &headers).await
}

/// # POST /_matrix/media_proxy/unstable/scan_encrypted
async fn scan_encrypted(
    State(state): State<AppState>,
    Authenticated(_): Authenticated,
    body: Bytes,
) -> Result<Response> {
    let file = state.media.content_scanner()?.read_request(&body)?;
    verdict(state.media.scan_attachment(&file).await)
}

/// # POST /_matrix/media_proxy/unstable/download_encrypted
///
/// The ciphertext, once its plaintext was found clean.
async fn download_encrypted(
    State(state): State<AppState>,
    Authenticated(_): Authenticated,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let file = state.media.content_scanner()?.read_request(&body)?;
    serve(state.media.scan_attachment(&file).await?, None, &headers).await
}
