//! End-to-end encryption endpoints: keys, cross-signing, to-device, dehydrated devices.

use std::collections::BTreeMap;

use axum::{Router, response::Response};
use ruma::api::client::{
    dehydrated_device::{delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device},
    keys::{claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys},
    to_device::send_event_to_device,
};
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        ruma::{Ruma, json, route},
    },
    error::{Error, Result},
    rooms::timeline::parse_token,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, upload);
    let router = route(router, query);
    let router = route(router, claim);
    let router = route(router, changes);
    let router = route(router, upload_signing);
    let router = route(router, signatures);
    let router = route(router, to_device);
    let router = route(router, put_dehydrated);
    let router = route(router, get_dehydrated);
    let router = route(router, delete_dehydrated);
    route(router, dehydrated_events)
}

fn raw_map<K: ToString, V>(map: &BTreeMap<K, ruma::serde::Raw<V>>) -> Vec<(String, String)> {
    map.iter().map(|(k, v)| (k.to_string(), v.json().get().to_owned())).collect()
}

/// # POST /_matrix/client/v3/keys/upload
async fn upload(state: AppState, req: Ruma<upload_keys::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let b = &req.body;
    let counts = state
        .e2ee
        .upload_keys(
            &id.user_id,
            &id.device_id,
            b.device_keys.as_ref().map(|k| k.json().get()),
            &raw_map(&b.one_time_keys),
            &raw_map(&b.fallback_keys),
        )
        .await?;
    Ok(json(json!({ "one_time_key_counts": counts })))
}

/// # POST /_matrix/client/v3/keys/query
async fn query(state: AppState, req: Ruma<get_keys::v3::Request>) -> Result<Response> {
    let wanted: BTreeMap<String, Vec<String>> = req
        .body
        .device_keys
        .iter()
        .map(|(u, d)| (u.to_string(), d.iter().map(ToString::to_string).collect()))
        .collect();
    Ok(json(state.e2ee.query_keys_everywhere(&req.identity().user_id, &wanted).await?))
}

/// # POST /_matrix/client/v3/keys/claim
async fn claim(state: AppState, req: Ruma<claim_keys::v3::Request>) -> Result<Response> {
    let wanted: BTreeMap<String, BTreeMap<String, String>> = req
        .body
        .one_time_keys
        .iter()
        .map(|(u, d)| (u.to_string(), d.iter().map(|(dev, alg)| (dev.to_string(), alg.to_string())).collect()))
        .collect();
    Ok(json(state.e2ee.claim_keys_everywhere(&wanted).await?))
}

/// # GET /_matrix/client/v3/keys/changes
async fn changes(state: AppState, req: Ruma<get_key_changes::v3::Request>) -> Result<Response> {
    let from = parse_token(&req.body.from)?;
    let to = parse_token(&req.body.to)?;
    let (changed, left) = state.sync.device_list_updates(&req.identity().user_id, from, to, None).await?;
    Ok(json(json!({ "changed": changed, "left": left })))
}

/// # POST /_matrix/client/v3/keys/device_signing/upload
async fn upload_signing(state: AppState, req: Ruma<upload_signing_keys::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let b = &req.body;
    let mut keys = Vec::new();
    for (kind, key) in
        [("master", &b.master_key), ("self_signing", &b.self_signing_key), ("user_signing", &b.user_signing_key)]
    {
        if let Some(key) = key {
            keys.push((kind.to_owned(), key.json().get().to_owned()));
        }
    }
    // The spec exempts the first upload from user-interactive auth, and re-uploads of the
    // very same keys (a client retrying).
    let mut unchanged = true;
    for (kind, json) in &keys {
        let current = state.e2ee.cross_signing_key(&id.user_id, kind).await?;
        let same =
            current.and_then(|c| serde_json::from_str::<Value>(&c).ok()) == serde_json::from_str::<Value>(json).ok();
        unchanged &= same;
    }
    if state.e2ee.has_master_key(&id.user_id).await? && !unchanged {
        state.accounts.confirm_identity(&id.user_id, b.auth.as_ref(), &req.uia_request()).await?;
    }
    state.e2ee.upload_cross_signing_keys(&id.user_id, keys).await?;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/keys/signatures/upload
async fn signatures(state: AppState, req: Ruma<upload_signatures::v3::Request>) -> Result<Response> {
    let mut signed: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (user, keys) in &req.body.signed_keys {
        let entry = signed.entry(user.to_string()).or_default();
        for (key_id, raw) in keys.iter() {
            entry.insert(key_id.to_string(), raw.get().to_owned());
        }
    }
    Ok(json(state.e2ee.upload_signatures(&signed).await?))
}

/// # PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}
async fn to_device(state: AppState, req: Ruma<send_event_to_device::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let b = &req.body;
    let messages: BTreeMap<String, BTreeMap<String, String>> = b
        .messages
        .iter()
        .map(|(u, d)| (u.to_string(), d.iter().map(|(dev, c)| (dev.to_string(), c.json().get().to_owned())).collect()))
        .collect();
    state
        .e2ee
        .send_to_device(&id.user_id, &id.device_id, b.txn_id.as_str(), &b.event_type.to_string(), &messages)
        .await?;
    Ok(json(json!({})))
}

/// # PUT /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device
async fn put_dehydrated(state: AppState, req: Ruma<put_dehydrated_device::unstable::Request>) -> Result<Response> {
    let id = req.identity().clone();
    let b = req.body;
    let device_id = b.device_id.clone();
    if let Some(old) =
        state.store.set_dehydrated_device(id.user_id.as_str(), device_id.as_str(), b.device_data.json().get()).await?
        && old != device_id.as_str()
    {
        state.accounts.delete_devices(&id.user_id, &[old]).await?;
    }
    state.accounts.register_device(&id.user_id, device_id.as_str(), b.initial_device_display_name.as_deref()).await?;
    state
        .e2ee
        .upload_keys(
            &id.user_id,
            &device_id,
            Some(b.device_keys.json().get()),
            &raw_map(&b.one_time_keys),
            &raw_map(&b.fallback_keys),
        )
        .await?;
    Ok(json(json!({ "device_id": device_id })))
}

/// # GET /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device
async fn get_dehydrated(state: AppState, req: Ruma<get_dehydrated_device::unstable::Request>) -> Result<Response> {
    let (device_id, data) = state
        .store
        .dehydrated_device(req.identity().user_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("no dehydrated device"))?;
    let data: Value = serde_json::from_str(&data).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(json(json!({ "device_id": device_id, "device_data": data })))
}

/// # DELETE /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device
async fn delete_dehydrated(
    state: AppState,
    req: Ruma<delete_dehydrated_device::unstable::Request>,
) -> Result<Response> {
    let id = req.identity();
    let device_id = state
        .store
        .delete_dehydrated_device(id.user_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("no dehydrated device"))?;
    state.accounts.delete_devices(&id.user_id, std::slice::from_ref(&device_id)).await?;
    Ok(json(json!({ "device_id": device_id })))
}

/// # POST /_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{deviceId}/events
async fn dehydrated_events(state: AppState, req: Ruma<get_events::unstable::Request>) -> Result<Response> {
    let id = req.identity();
    let (device_id, _) = state
        .store
        .dehydrated_device(id.user_id.as_str())
        .await?
        .filter(|(d, _)| d == req.body.device_id.as_str())
        .ok_or_else(|| Error::forbidden("not your dehydrated device"))?;
    let since = req.body.next_batch.as_deref().map(parse_token).transpose()?;
    let to = state.rooms.streams.current();
    let device: &ruma::DeviceId = device_id.as_str().into();
    let (events, reached) = state.e2ee.to_device_for_sync(&id.user_id, device, since, to).await?;
    Ok(json(json!({ "events": events, "next_batch": crate::rooms::timeline::make_token(reached) })))
}
