//! Server keys: this server's key document, and the notary endpoints that pass on other
//! servers' documents countersigned.

use axum::{
    Router,
    extract::{Path, State},
    response::Response,
    routing::get,
};
use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::federation::discovery::{get_remote_server_keys, get_remote_server_keys_batch, get_server_keys},
};
use serde_json::json;

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, server_keys);
    let router = route(router, notary_query);
    let router = route(router, notary_batch);
    // The deprecated forms that name one key: the answer is the same documents.
    router
        .route(
            "/_matrix/key/v2/server/{key_id}",
            get(|State(state): State<AppState>| async move {
                Ok::<_, Error>(json(serde_json::to_value(state.federation.key_document()?).unwrap_or_default()))
            }),
        )
        .route(
            "/_matrix/key/v2/query/{server_name}/{key_id}",
            get(|State(state): State<AppState>, Path((server, key)): Path<(String, String)>| async move {
                let server = ruma::ServerName::parse(&server).map_err(|e| Error::invalid_param(e.to_string()))?;
                let documents = state.federation.notary_documents(&server, &[key], 0).await.unwrap_or_default();
                Ok::<_, Error>(json(json!({ "server_keys": documents })))
            }),
        )
}

/// # GET /_matrix/key/v2/server
async fn server_keys(state: AppState, _req: Ruma<get_server_keys::v2::Request>) -> Result<Response> {
    Ok(json(serde_json::to_value(state.federation.key_document()?).unwrap_or_default()))
}

/// # GET /_matrix/key/v2/query/{serverName}
async fn notary_query(state: AppState, req: Ruma<get_remote_server_keys::v2::Request>) -> Result<Response> {
    let minimum = i64::from(req.body.minimum_valid_until_ts.get());
    let documents = state.federation.notary_documents(&req.body.server_name, &[], minimum).await.unwrap_or_default();
    Ok(json(json!({ "server_keys": documents })))
}

/// # POST /_matrix/key/v2/query
async fn notary_batch(state: AppState, req: Ruma<get_remote_server_keys_batch::v2::Request>) -> Result<Response> {
    let mut documents = Vec::new();
    for (server, keys) in &req.body.server_keys {
        let minimum = keys
            .values()
            .filter_map(|criteria| criteria.minimum_valid_until_ts)
            .map(|ts| i64::from(ts.get()))
            .max()
            .unwrap_or_else(|| i64::from(MilliSecondsSinceUnixEpoch::now().get()));
        // A server that cannot be reached is left out, as the spec says.
        let wanted: Vec<String> = keys.keys().map(ToString::to_string).collect();
        documents.extend(state.federation.notary_documents(server, &wanted, minimum).await.unwrap_or_default());
    }
    Ok(json(json!({ "server_keys": documents })))
}
