//! Reporting content: events, rooms and users reported to the operator.

use axum::{Router, response::Response};
use ruma::api::client::{
    reporting::report_user,
    room::{report_content, report_room},
};
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        client::rooms::viewer,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, report_event);
    let router = route(router, report_room);
    route(router, report_user)
}

/// # POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}
async fn report_event(state: AppState, req: Ruma<report_content::v3::Request>) -> Result<Response> {
    // `score` left ruma's type in spec v1.13; clients still send it.
    let body: Value = serde_json::from_slice(&req.json).unwrap_or_default();
    let score = match body.get("score") {
        None | Some(Value::Null) => None,
        Some(score) => Some(score.as_i64().ok_or_else(|| Error::invalid_param("score must be an integer"))?),
    };
    let reason = req.body.reason.as_deref();
    state.reports.report_event(viewer(&req), &req.body.room_id, &req.body.event_id, reason, score).await?;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/report
async fn report_room(state: AppState, req: Ruma<report_room::v3::Request>) -> Result<Response> {
    state.reports.report_room(&req.identity().user_id, &req.body.room_id, &req.body.reason).await?;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/users/{userId}/report
async fn report_user(state: AppState, req: Ruma<report_user::v3::Request>) -> Result<Response> {
    state.reports.report_user(&req.identity().user_id, &req.body.user_id, &req.body.reason).await?;
    Ok(json(json!({})))
}
