//! `/sync`, and simplified sliding sync (MSC4186).

use std::time::Duration;

use axum::{Router, response::Response};
use ruma::api::client::sync::sync_events;

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::Result,
    sync::{SyncRequest, presence},
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, sliding);
    route(router, sync)
}

/// # POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync
async fn sliding(state: AppState, req: Ruma<sync_events::v5::Request>) -> Result<Response> {
    let id = req.identity().clone();
    Ok(json(state.sync.sliding(&id, req.body).await?))
}

/// # GET /_matrix/client/v3/sync
async fn sync(state: AppState, req: Ruma<sync_events::v3::Request>) -> Result<Response> {
    let id = req.identity().clone();
    let body = req.body;
    let filter = match body.filter {
        Some(sync_events::v3::Filter::FilterDefinition(f)) => f,
        Some(sync_events::v3::Filter::FilterId(filter_id)) => state.user_data.filter(&id.user_id, &filter_id).await?,
        _ => Default::default(),
    };
    let request = SyncRequest {
        since: body.since,
        timeout: body.timeout.unwrap_or(Duration::ZERO),
        full_state: body.full_state,
        filter,
        use_state_after: body.use_state_after,
        set_presence: presence::State::parse(body.set_presence.as_str()),
    };
    Ok(json(state.sync.sync(&id, request).await?))
}
