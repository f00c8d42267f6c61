//! Media for other servers (`/_matrix/federation/v1/media/`): this server's own files,
//! once checked, as `multipart/mixed` answers (metadata, then the file), to peers
//! authenticated by X-Matrix.

use axum::{
    Router,
    body::Body,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use ruma::api::federation::authenticated_media::{get_content, get_content_thumbnail};

use crate::{
    api::{
        AppState,
        ruma::{Ruma, route},
    },
    error::{Error, Result},
    media::{StoredMedia, ThumbnailMethod},
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, download);
    route(router, thumbnail)
}

/// # GET /_matrix/federation/v1/media/download/{mediaId}
async fn download(state: AppState, req: Ruma<get_content::v1::Request>) -> Result<Response> {
    let server_name = state.rooms.server_name.clone();
    let media = state.media.get(server_name.as_str(), &req.body.media_id).await?;
    multipart(&state, media).await
}

/// # GET /_matrix/federation/v1/media/thumbnail/{mediaId}
async fn thumbnail(state: AppState, req: Ruma<get_content_thumbnail::v1::Request>) -> Result<Response> {
    let b = &req.body;
    let size = |v: ruma::UInt| u32::try_from(u64::from(v)).ok().filter(|v| *v > 0);
    let (Some(width), Some(height)) = (size(b.width), size(b.height)) else {
        return Err(Error::invalid_param("width and height must be positive integers"));
    };
    let method = match b.method.as_ref().map(|m| m.as_str()) {
        Some("crop") => ThumbnailMethod::Crop,
        _ => ThumbnailMethod::Scale,
    };
    let server_name = state.rooms.server_name.clone();
    let media = state.media.thumbnail(server_name.as_str(), &b.media_id, width, height, method).await?;
    multipart(&state, media).await
}

async fn multipart(state: &AppState, media: StoredMedia) -> Result<Response> {
    let (content_type, body) = state.media.multipart(&media).await?;
    let mut response = Body::from_stream(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}
