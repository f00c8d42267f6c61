//! Operators and the media repository, on Synapse's admin paths and shapes: a user's
//! uploads, one item's details (with the antivirus's verdict), quarantine and release,
//! deletion with the file; and the antivirus's counts, which Synapse has no path for.

use std::collections::HashMap;

use axum::{
    Router,
    extract::{Path, Query, State},
    response::Response,
    routing::{get, post},
};
use serde_json::json;

use super::require_admin;
use crate::{
    api::{
        AppState,
        ruma::{Authenticated, json},
    },
    error::{Error, Result},
    store::MediaRow,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/_synapse/admin/v1/users/{user_id}/media", get(user_media))
        .route("/_synapse/admin/v1/media/{server_name}/{media_id}", get(media_info).delete(delete_media))
        .route("/_synapse/admin/v1/media/quarantine/{server_name}/{media_id}", post(quarantine))
        .route("/_synapse/admin/v1/media/unquarantine/{server_name}/{media_id}", post(unquarantine))
        .route("/_missive/admin/v1/media/scans", get(scan_stats))
}

/// A media item as Synapse's admin API shows it, with the antivirus's verdict.
fn media_json(row: &MediaRow, verdict: Option<(String, Option<String>)>) -> serde_json::Value {
    json!({
        "media_id": row.media_id,
        "media_origin": row.origin,
        "media_type": row.content_type,
        "media_length": row.size,
        "upload_name": row.filename,
        "user_id": row.uploader,
        "created_ts": row.created_ts,
        "last_access_ts": serde_json::Value::Null,
        "quarantined_by": if row.quarantined { json!("antivirus or operator") } else { serde_json::Value::Null },
        "safe_from_quarantine": false,
        "sha256": row.sha256,
        "scan": verdict.map(|(verdict, detail)| json!({ "verdict": verdict, "detail": detail })),
    })
}

/// # GET /_synapse/admin/v1/users/{userId}/media
async fn user_media(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path(user_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    require_admin(&id)?;
    let number = |name: &str, default: i64| -> Result<i64> {
        match query.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| Error::invalid_param(format!("{name} must be a non-negative integer"))),
        }
    };
    let (from, limit) = (number("from", 0)?, number("limit", 100)?.min(1000));
    let (rows, total) = state.store.user_media(&user_id, from, limit).await?;
    let mut media = Vec::with_capacity(rows.len());
    for row in &rows {
        media.push(media_json(row, state.store.scan_verdict(&row.sha256).await?));
    }
    let mut body = json!({ "media": media, "total": total });
    if from + (rows.len() as i64) < total {
        body["next_token"] = json!(from + rows.len() as i64);
    }
    Ok(json(body))
}

/// # GET /_synapse/admin/v1/media/{serverName}/{mediaId}
async fn media_info(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path((server_name, media_id)): Path<(String, String)>,
) -> Result<Response> {
    require_admin(&id)?;
    let row = state.store.media(&server_name, &media_id).await?.ok_or_else(|| Error::not_found("unknown media"))?;
    let verdict = state.store.scan_verdict(&row.sha256).await?;
    Ok(json(json!({ "media_info": media_json(&row, verdict) })))
}

/// # POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}
async fn quarantine(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path((server_name, media_id)): Path<(String, String)>,
) -> Result<Response> {
    require_admin(&id)?;
    state.media.set_quarantined(&server_name, &media_id, true, &id.user_id).await?;
    Ok(json(json!({})))
}

/// # POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}
///
/// Releases the item; a file the antivirus found infected counts as clean afterwards
/// (the operator judged it a false positive), which the log records.
async fn unquarantine(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path((server_name, media_id)): Path<(String, String)>,
) -> Result<Response> {
    require_admin(&id)?;
    state.media.set_quarantined(&server_name, &media_id, false, &id.user_id).await?;
    Ok(json(json!({})))
}

/// # DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}
///
/// The item, its thumbnails, and the files no other item uses.
async fn delete_media(
    State(state): State<AppState>,
    Authenticated(id): Authenticated,
    Path((server_name, media_id)): Path<(String, String)>,
) -> Result<Response> {
    require_admin(&id)?;
    state.media.delete(&server_name, &media_id, &id.user_id).await?;
    Ok(json(json!({ "deleted_media": [media_id], "total": 1 })))
}

/// # GET /_missive/admin/v1/media/scans
async fn scan_stats(State(state): State<AppState>, Authenticated(id): Authenticated) -> Result<Response> {
    require_admin(&id)?;
    let stats = state.store.scan_stats().await?;
    let mut body = serde_json::to_value(&stats).map_err(|e| Error::Internal(e.to_string()))?;
    body["scanning"] = json!(state.media.scanning());
    Ok(json(body))
}
