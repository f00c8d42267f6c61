//! The audit trail of operator actions: a layer over every admin API route (and the IAM's
//! SCIM provisioning) that appends who acted, on what, from where, and the outcome, once
//! the answer is known. Refusals are recorded as well as successes; no request body is
//! kept (a registration's password, an IAM's attributes).

use axum::{
    extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State},
    middleware::Next,
    response::Response,
};

use super::{
    AppState,
    ruma::{ClientInfo, access_token},
};
use crate::store::AuditEntry;

/// Records the request in the audit trail once answered.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let route = parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let route = route.unwrap_or_else(|| parts.uri.path().to_owned());
    let target = match RawPathParams::from_request_parts(&mut parts, &state).await {
        Ok(params) => params
            .iter()
            .map(|(_, value)| percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/"),
        Err(_) => String::new(),
    };
    let ip = ClientInfo::of(&parts).ip;
    let actor = match access_token(&parts) {
        Some(token) => match state.accounts.authenticate(&token).await {
            Ok(identity) => identity.user_id.to_string(),
            Err(_) if route.starts_with("/_missive/scim") => "scim".to_owned(),
            Err(_) => "unknown token".to_owned(),
        },
        None if route.ends_with("/register") => "shared-secret".to_owned(),
        None => "anonymous".to_owned(),
    };
    let action = format!("{} {route}", parts.method);
    // The nonce of shared-secret registration changes nothing.
    let quiet = parts.method == http::Method::GET && route.ends_with("/register");
    let response = next.run(Request::from_parts(parts, body)).await;
    if !quiet {
        let entry = AuditEntry {
            id: 0,
            ts: crate::store::now_ms(),
            actor,
            action,
            target,
            ip,
            status: i64::from(response.status().as_u16()),
        };
        if let Err(e) = state.store.append_audit(&entry).await {
            tracing::error!(error = %e, action = entry.action, "cannot append to the audit trail");
        }
    }
    response
}
