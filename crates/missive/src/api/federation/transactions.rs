//! Transactions: the PDUs and EDUs other servers push to this one.

use std::collections::BTreeMap;

use axum::{Router, response::Response};
use ruma::api::federation::transactions::send_transaction_message;
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
    rooms::federated::room_of,
};

/// The most PDUs and EDUs a transaction may carry (the spec's limits).
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    route(router, send)
}

/// # PUT /_matrix/federation/v1/send/{txnId}
///
/// Each PDU is checked and admitted on its own, in order; its result is reported under its
/// event ID. A PDU of a room this server is not in, or that fails a check, changes nothing.
async fn send(state: AppState, req: Ruma<send_transaction_message::v1::Request>) -> Result<Response> {
    let b = &req.body;
    let origin = req.origin();
    if b.origin != origin {
        return Err(Error::forbidden("the transaction's origin is not the signing server"));
    }
    if b.pdus.len() > MAX_PDUS || b.edus.len() > MAX_EDUS {
        return Err(Error::bad_json("too many PDUs or EDUs in one transaction"));
    }
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    for raw in &b.pdus {
        let Some(room_id) = room_of(raw) else {
            tracing::debug!(%origin, "PDU without a room ID dropped");
            continue;
        };
        let outcome = async {
            state.federation.check_room_acl(&state.rooms, &room_id, origin).await?;
            let (version, rules) = state.rooms.version_of(&room_id).await?;
            let checked = state.federation.check_pdu(&version, &rules, raw).await?;
            let event_id = checked.event_id.to_string();
            let admitted = state.rooms.admit_remote(&room_id, checked, None).await;
            Ok::<_, Error>((event_id, admitted))
        }
        .await;
        match outcome {
            Ok((event_id, Ok(_))) => {
                results.insert(event_id, json!({}));
            }
            Ok((event_id, Err(e))) => {
                tracing::info!(%origin, %room_id, %event_id, error = %e, "PDU refused");
                results.insert(event_id, json!({ "error": e.to_string() }));
            }
            Err(e) => tracing::info!(%origin, %room_id, error = %e, "PDU refused before its ID was known"),
        }
    }
    Ok(json(json!({ "pdus": results })))
}
