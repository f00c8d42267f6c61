//! Transactions: the PDUs and EDUs other servers push to this one.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::{Router, response::Response};
use ruma::api::federation::transactions::send_transaction_message;
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
    federation::pdu::CheckedPdu,
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
/// event ID (an error when it could not be processed, nothing when it was admitted or
/// rejected by the authorisation rules). A PDU of a room this server is not in, or that
/// fails a check, changes nothing.
async fn send(state: AppState, req: Ruma<send_transaction_message::v1::Request>) -> Result<Response> {
    let b = &req.body;
    let origin = req.origin();
    if b.origin != origin {
        return Err(Error::forbidden("the transaction's origin is not the signing server"));
    }
    if b.pdus.len() > MAX_PDUS || b.edus.len() > MAX_EDUS {
        return Err(Error::bad_json("too many PDUs or EDUs in one transaction"));
    }
    let edus: Vec<Value> = b.edus.iter().filter_map(|edu| serde_json::from_str(edu.json().get()).ok()).collect();
    // Keys come before the messages they decrypt: a room key sent to-device and the
    // ciphertext it opens often travel in one transaction, and a client syncing between the
    // two would see the message undecryptable. Typing, receipts and device list updates
    // come after the PDUs, which may hold the join or the event they speak of (a device
    // list is kept only for a user who shares a room here).
    let (keys, the_rest): (Vec<&Value>, Vec<&Value>) =
        edus.iter().partition(|edu| edu["edu_type"].as_str() == Some("m.direct_to_device"));
    for edu in keys {
        receive_edu_logged(&state, origin, edu).await;
    }
    let mut results: BTreeMap<String, Value> = BTreeMap::new();
    // Checked one by one (and their gaps filled), then admitted per room in one write.
    let mut checked: Vec<(ruma::OwnedRoomId, CheckedPdu)> = Vec::new();
    // Per room: its version, and whether the room's ACL lets the origin in.
    type RoomCheck = Result<(ruma::RoomVersionId, ruma::room_version_rules::RoomVersionRules, Option<Error>)>;
    let mut rooms: HashMap<ruma::OwnedRoomId, RoomCheck> = HashMap::new();
    for raw in &b.pdus {
        let Some(room_id) = room_of(raw) else {
            tracing::debug!(%origin, "PDU without a room ID dropped");
            continue;
        };
        let room = match rooms.get(&room_id) {
            Some(room) => room,
            None => {
                let room = async {
                    let denied = state.federation.check_room_acl(&state.rooms, &room_id, origin).await.err();
                    let (version, rules) = state.rooms.version_of(&room_id).await?;
                    Ok((version, rules, denied))
                }
                .await;
                rooms.entry(room_id.clone()).or_insert(room)
            }
        };
        let (version, rules, denied) = match room {
            Ok(room) => room,
            Err(e) => {
                tracing::info!(%origin, %room_id, error = %e, "PDU refused before its ID was known");
                continue;
            }
        };
        match state.federation.check_pdu(version, rules, raw).await {
            // A server the room's ACL denies is told so, event by event.
            Ok(pdu) if denied.is_some() => {
                let error = denied.as_ref().map(ToString::to_string).unwrap_or_default();
                tracing::info!(%origin, %room_id, event_id = %pdu.event_id, %error, "PDU refused");
                results.insert(pdu.event_id.to_string(), json!({ "error": error }));
            }
            Ok(pdu) => {
                let in_txn: HashSet<&str> = checked.iter().map(|(_, p)| p.event_id.as_str()).collect();
                fill_gap(&state, origin, &room_id, &pdu, &in_txn).await;
                checked.push((room_id, pdu));
            }
            Err(e) => tracing::info!(%origin, %room_id, error = %e, "PDU refused before its ID was known"),
        }
    }
    fill_auth(&state, origin, &checked).await;
    let mut pending = checked.into_iter().peekable();
    while let Some((room_id, first)) = pending.next() {
        let mut group = vec![first];
        while let Some((_, pdu)) = pending.next_if(|(r, _)| *r == room_id) {
            group.push(pdu);
        }
        let admitted = match state.rooms.admit_remote_many(&room_id, group).await {
            Ok(admitted) => admitted,
            Err(e) => {
                tracing::warn!(%origin, %room_id, error = %e, "PDUs not admitted");
                continue;
            }
        };
        for (event_id, outcome) in admitted {
            let result = match outcome {
                Ok(_) => json!({}),
                // An event the authorisation rules reject is handled: rejected (as Synapse
                // answers, and SyTest expects); only what could not be processed is an error.
                Err(Error::Forbidden(reason)) => {
                    tracing::info!(%origin, %room_id, %event_id, %reason, "PDU rejected");
                    json!({})
                }
                Err(e) => {
                    tracing::info!(%origin, %room_id, %event_id, error = %e, "PDU refused");
                    json!({ "error": e.to_string() })
                }
            };
            results.insert(event_id.to_string(), result);
        }
    }
    for edu in the_rest {
        receive_edu_logged(&state, origin, edu).await;
    }
    Ok(json(json!({ "pdus": results })))
}

/// Applies one EDU; a refused EDU is only logged, as the spec has no way to report it.
async fn receive_edu_logged(state: &AppState, origin: &ruma::ServerName, edu: &Value) {
    if let Err(e) = receive_edu(state, origin, edu).await {
        tracing::debug!(%origin, edu_type = %edu["edu_type"], error = %e, "EDU dropped");
    }
}

/// At most this many events beyond a gap have their state asked of the origin per PDU.
const MAX_STATE_FETCHES: usize = 3;

/// Events can arrive out of order (a join relayed by a third server, a message sent
/// straight from its origin): when a PDU builds on events this server lacks, they are
/// asked of the origin (`get_missing_events`, back to this server's leaves) and admitted
/// first, oldest first. What cannot be fetched leaves the PDU to its own checks.
async fn fill_gap(
    state: &AppState,
    origin: &ruma::ServerName,
    room_id: &ruma::RoomId,
    checked: &CheckedPdu,
    in_txn: &HashSet<&str>,
) {
    let prev = checked.references("prev_events");
    if prev.is_empty() {
        return;
    }
    // Prev events earlier in the same transaction are admitted before this one.
    let prev: Vec<String> = prev.into_iter().filter(|p| !in_txn.contains(p.as_str())).collect();
    let Ok(known) = state.store.held_event_ids(&prev).await else { return };
    if known.len() == prev.len() {
        return;
    }
    let Ok(leaves) = state.store.extremities(room_id.as_str()).await else { return };
    let earliest = leaves.into_iter().filter_map(|(id, _)| ruma::OwnedEventId::try_from(id).ok()).collect();
    let mut request = ruma::api::federation::event::get_missing_events::v1::Request::new(
        room_id.to_owned(),
        earliest,
        vec![checked.event_id.clone()],
    );
    request.limit = ruma::UInt::from(20u32);
    let Ok(answer) = state.federation.send(origin, request).await else { return };
    let Ok((version, rules)) = state.rooms.version_of(room_id).await else { return };
    let mut missing = Vec::new();
    for raw in &answer.events {
        if let Ok(event) = state.federation.check_pdu(&version, &rules, raw).await {
            missing.push(event);
        }
    }
    // History past the room's lifetime was purged here: it is not taken back (what builds
    // on it is judged by the state before it, below, like any gap too wide).
    if let Ok(Some(cutoff)) = state.rooms.history_cutoff(room_id.as_str(), crate::store::now_ms()).await {
        missing.retain(|e| {
            let expired = matches!(e.object.get("origin_server_ts"),
                Some(ruma::CanonicalJsonValue::Integer(ts)) if i64::from(*ts) < cutoff);
            e.object.contains_key("state_key") || !expired
        });
    }
    missing.sort_by_key(|e| match e.object.get("depth") {
        Some(ruma::CanonicalJsonValue::Integer(depth)) => i64::from(*depth),
        _ => 0,
    });
    // A pulled event whose own prev events stay unknown (the gap was wider than what was
    // asked): the state before each is asked of the origin and stored with it, so that
    // the pulled event is judged by the state of its branch. A few at most per PDU.
    let pulled: HashSet<String> = missing.iter().map(|e| e.event_id.to_string()).collect();
    let beyond: Vec<String> = missing
        .iter()
        .flat_map(|e| e.references("prev_events"))
        .filter(|p| !pulled.contains(p))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if let Ok(held) = state.store.held_event_ids(&beyond).await {
        for prev in beyond.iter().filter(|p| !held.contains(*p)).take(MAX_STATE_FETCHES) {
            let Ok(prev_id) = ruma::OwnedEventId::try_from(prev.as_str()) else { continue };
            if let Err(e) = state.federation.fetch_state_at(&state.rooms, room_id, origin, &prev_id).await {
                tracing::info!(%origin, %room_id, event_id = %prev, error = %e, "state at an unknown event not had");
            }
        }
    }
    for event in missing {
        let event_id = event.event_id.clone();
        if let Err(e) = state.rooms.admit_remote(room_id, event, None).await {
            tracing::info!(%origin, %room_id, %event_id, error = %e, "missing event refused");
        }
    }
}

/// PDUs whose auth events this server lacks (a member's join that a partial-state join
/// left out, say) have them asked of the origin (`event_auth`) and stored, once checked,
/// outside the timeline, so that the PDUs can be judged. One presence check for the whole
/// transaction: the common case lacks nothing.
async fn fill_auth(state: &AppState, origin: &ruma::ServerName, checked: &[(ruma::OwnedRoomId, CheckedPdu)]) {
    let in_txn: HashSet<String> = checked.iter().map(|(_, p)| p.event_id.to_string()).collect();
    let wanted: Vec<String> = checked
        .iter()
        .flat_map(|(_, p)| p.references("auth_events"))
        .filter(|id| !in_txn.contains(id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let Ok(held) = state.store.held_event_ids(&wanted).await else { return };
    if held.len() == wanted.len() {
        return;
    }
    for (room_id, pdu) in checked {
        if pdu.references("auth_events").iter().all(|id| in_txn.contains(id) || held.contains(id)) {
            continue;
        }
        let auth = state.federation.missing_auth_events(&state.rooms, room_id, origin, std::slice::from_ref(pdu)).await;
        if auth.is_empty() {
            continue;
        }
        if let Err(e) = state.rooms.store_auth_events(room_id, auth).await {
            tracing::info!(%origin, %room_id, event_id = %pdu.event_id, error = %e, "auth events not stored");
        }
    }
}

/// Applies one EDU. What an EDU says of a user of another server than its origin, or of a
/// room the user is not in, is dropped.
async fn receive_edu(state: &AppState, origin: &ruma::ServerName, edu: &Value) -> Result<()> {
    let content = &edu["content"];
    let user_of_origin = |field: &Value| {
        field
            .as_str()
            .and_then(|u| ruma::UserId::parse(u).ok())
            .filter(|u| u.server_name() == origin)
            .ok_or_else(|| Error::forbidden("EDU about a user of another server"))
    };
    match edu["edu_type"].as_str() {
        Some("m.typing") => {
            let user_id = user_of_origin(&content["user_id"])?;
            let room_id = content["room_id"]
                .as_str()
                .and_then(|r| ruma::RoomId::parse(r).ok())
                .ok_or_else(|| Error::bad_json("typing without a room"))?;
            let member = state.store.membership(room_id.as_str(), user_id.as_str()).await?;
            if member.is_none_or(|m| m.membership != "join") {
                return Err(Error::forbidden("not in the room"));
            }
            let timeout = (content["typing"] == true).then(|| std::time::Duration::from_secs(30));
            state.sync.typing.set(&room_id, &user_id, timeout);
        }
        Some("m.receipt") => {
            for (room, types) in content.as_object().into_iter().flatten() {
                let Ok(room_id) = ruma::RoomId::parse(room) else { continue };
                for (user, receipt) in types["m.read"].as_object().into_iter().flatten() {
                    let Ok(user_id) = user_of_origin(&json!(user)) else { continue };
                    let thread = receipt["data"]["thread_id"].as_str().unwrap_or_default();
                    for event_id in receipt["event_ids"].as_array().into_iter().flatten() {
                        let Some(event_id) = event_id.as_str().and_then(|e| ruma::EventId::parse(e).ok()) else {
                            continue;
                        };
                        state.user_data.set_receipt(&user_id, &room_id, "m.read", &event_id, thread).await?;
                    }
                }
            }
        }
        Some("m.device_list_update") => {
            let user_id = user_of_origin(&content["user_id"])?;
            state.e2ee.receive_device_list_update(&user_id, content).await?;
        }
        Some("m.signing_key_update") => {
            let user_id = user_of_origin(&content["user_id"])?;
            state.e2ee.receive_signing_key_update(&user_id, content).await?;
        }
        Some("m.direct_to_device") => {
            let sender = user_of_origin(&content["sender"])?;
            let (Some(kind), Some(message_id), Some(messages)) =
                (content["type"].as_str(), content["message_id"].as_str(), content["messages"].as_object())
            else {
                return Err(Error::bad_json("malformed to-device EDU"));
            };
            state.e2ee.deliver_remote_to_device(&sender, kind, message_id, messages).await?;
        }
        _ => {}
    }
    Ok(())
}
