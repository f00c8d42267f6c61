//! End-to-end encryption, server side: device and cross-signing keys, one-time and fallback
//! keys, to-device messages, device list tracking, key backup and dehydrated devices.
//!
//! The server only stores and relays: every key and message here is opaque JSON signed or
//! encrypted by clients. Nothing in this module can read a room message.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{DeviceId, OwnedDeviceId, OwnedServerName, OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    federation::Federation,
    store::{DeviceSyncState, NewToDevice, Store},
    sync::stream::Streams,
};

mod remote_devices;

/// At most this many to-device messages go in one sync response.
pub const TO_DEVICE_LIMIT: i64 = 100;

/// The end-to-end encryption service.
pub struct E2ee {
    store: Store,
    streams: Arc<Streams>,
    federation: Arc<Federation>,
    /// Serialises the read-modify-writes of cached remote device lists.
    remote_lists: tokio::sync::Mutex<()>,
}

fn parse_object(raw: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Error::bad_json(format!("{what} must be a JSON object"))),
    }
}

/// Splits `"<algorithm>:<id>"`.
fn algorithm_of(key_id: &str) -> Result<String> {
    key_id
        .split_once(':')
        .map(|(alg, _)| alg.to_owned())
        .ok_or_else(|| Error::bad_json(format!("key ID {key_id:?} has no algorithm")))
}

/// Merges the `signatures` of `incoming` into `stored`.
fn merge_signatures(stored: &mut Map<String, Value>, incoming: &Map<String, Value>) {
    let Some(Value::Object(new)) = incoming.get("signatures") else { return };
    let sigs = stored.entry("signatures").or_insert_with(|| json!({}));
    for (signer, keys) in new {
        if let (Some(map), Value::Object(keys)) = (sigs.as_object_mut(), keys) {
            let entry = map.entry(signer.clone()).or_insert_with(|| json!({}));
            if let Some(entry) = entry.as_object_mut() {
                for (k, v) in keys {
                    entry.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

impl E2ee {
    /// Creates the service.
    pub fn new(store: Store, streams: Arc<Streams>, federation: Arc<Federation>) -> Self {
        Self { store, streams, federation, remote_lists: tokio::sync::Mutex::new(()) }
    }

    /// Splits a request per user into this server's users and the others, by server.
    fn split_by_server<T: Clone>(
        &self,
        wanted: &BTreeMap<String, T>,
    ) -> (BTreeMap<String, T>, BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>>) {
        let mut local = BTreeMap::new();
        let mut remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>> = BTreeMap::new();
        for (user, value) in wanted {
            match UserId::parse(user) {
                Ok(id) if id.server_name() != self.federation.server_name => {
                    remote.entry(id.server_name().to_owned()).or_default().insert(id, value.clone());
                }
                _ => {
                    local.insert(user.clone(), value.clone());
                }
            }
        }
        (local, remote)
    }

    /// `keys/query` of a local user: this server's users from the store, the others from
    /// the cache of remote device lists or asked of their servers, all at once (see
    /// `remote_devices.rs`). A server that cannot answer is listed in `failures`.
    pub async fn query_keys_everywhere(
        &self,
        requester: &UserId,
        wanted: &BTreeMap<String, Vec<String>>,
    ) -> Result<Value> {
        let (local, remote) = self.split_by_server(wanted);
        let mut out = self.query_keys(Some(requester), &local).await?;
        self.query_remote_users(remote.into_values().flatten(), &mut out).await;
        Ok(out)
    }

    /// `keys/claim` of a local user: this server's one-time keys from the store, the
    /// others claimed from their servers, all at once.
    pub async fn claim_keys_everywhere(&self, wanted: &BTreeMap<String, BTreeMap<String, String>>) -> Result<Value> {
        let (local, remote) = self.split_by_server(wanted);
        let mut out = self.claim_keys(&local).await?;
        let asks = remote.into_iter().map(|(server, users)| async move {
            let claims = users
                .into_iter()
                .map(|(user, devices)| {
                    let devices = devices
                        .iter()
                        .map(|(device, algorithm)| (OwnedDeviceId::from(device.as_str()), algorithm.as_str().into()))
                        .collect();
                    (user, devices)
                })
                .collect();
            let request = ruma::api::federation::keys::claim_keys::v1::Request::new(claims);
            let result = self.federation.send(&server, request).await;
            (server, result)
        });
        for (server, result) in futures_util::future::join_all(asks).await {
            match result {
                Ok(response) => {
                    for (user, devices) in response.one_time_keys.iter().filter(|(u, _)| u.server_name() == server) {
                        let value = serde_json::to_value(devices).unwrap_or_default();
                        out["one_time_keys"][user.as_str()] = value;
                    }
                }
                Err(e) => out["failures"][server.as_str()] = json!({ "status": 503, "message": e.to_string() }),
            }
        }
        Ok(out)
    }

    /// `user/devices` for another server: a local user's devices with their keys.
    pub async fn devices_for_federation(&self, user_id: &UserId) -> Result<Value> {
        let keys = self.query_keys(None, &BTreeMap::from([(user_id.to_string(), Vec::new())])).await?;
        let mut devices = Vec::new();
        for device in self.store.devices(user_id.as_str()).await? {
            let mut entry = json!({ "device_id": device.device_id });
            if let Some(name) = &device.display_name {
                entry["device_display_name"] = json!(name);
            }
            match keys["device_keys"][user_id.as_str()].get(&device.device_id) {
                Some(device_keys) => entry["keys"] = device_keys.clone(),
                // A device that has not uploaded keys has nothing to encrypt to.
                None => continue,
            }
            devices.push(entry);
        }
        let mut out = json!({ "user_id": user_id, "stream_id": self.streams.current(), "devices": devices });
        for (field, key) in [("master_keys", "master_key"), ("self_signing_keys", "self_signing_key")] {
            if let Some(value) = keys[field].get(user_id.as_str()) {
                out[key] = value.clone();
            }
        }
        Ok(out)
    }

    /// `keys/upload`: device keys, one-time keys, fallback keys; returns the key counts.
    pub async fn upload_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        device_keys: Option<&str>,
        one_time_keys: &[(String, String)],
        fallback_keys: &[(String, String)],
    ) -> Result<BTreeMap<String, i64>> {
        if let Some(raw) = device_keys {
            let keys = parse_object(raw, "device_keys")?;
            if keys.get("user_id").and_then(Value::as_str) != Some(user_id.as_str())
                || keys.get("device_id").and_then(Value::as_str) != Some(device_id.as_str())
            {
                return Err(Error::invalid_param("device_keys belong to another user or device"));
            }
            // The spec's required fields, of the right shapes: a device without them cannot
            // be verified or encrypted to, and clients would choke on it.
            let well_formed = keys
                .get("algorithms")
                .is_some_and(|a| a.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
                && keys.get("keys").is_some_and(|k| k.as_object().is_some_and(|k| k.values().all(Value::is_string)))
                && keys.get("signatures").is_some_and(Value::is_object);
            if !well_formed {
                return Err(Error::bad_json("device_keys need algorithms, keys and signatures"));
            }
            let unchanged = self.store.device_keys(user_id.as_str()).await?.into_iter().any(|(d, json)| {
                d == device_id.as_str()
                    && serde_json::from_str::<Value>(&json).ok() == Some(Value::Object(keys.clone()))
            });
            if !unchanged {
                let guard = self.streams.allocate();
                self.store.set_device_keys(user_id.as_str(), device_id.as_str(), raw, guard.pos()).await?;
            }
        }
        let otks = one_time_keys
            .iter()
            .map(|(id, json)| Ok((algorithm_of(id)?, id.clone(), json.clone())))
            .collect::<Result<Vec<_>>>()?;
        self.store.add_one_time_keys(user_id.as_str(), device_id.as_str(), &otks).await?;
        let fallbacks = fallback_keys
            .iter()
            .map(|(id, json)| Ok((algorithm_of(id)?, id.clone(), json.clone())))
            .collect::<Result<Vec<_>>>()?;
        self.store.set_fallback_keys(user_id.as_str(), device_id.as_str(), &fallbacks).await?;
        self.one_time_key_counts(user_id, device_id).await
    }

    /// Unclaimed one-time key counts of a device (`signed_curve25519` always present).
    pub async fn one_time_key_counts(&self, user_id: &UserId, device_id: &DeviceId) -> Result<BTreeMap<String, i64>> {
        Ok(self.device_sync_state(user_id, device_id).await?.0)
    }

    /// What a sync reports about a device: one-time key counts, algorithms with an unused
    /// fallback key, and whether to-device messages are queued; one read.
    pub async fn device_sync_state(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<(BTreeMap<String, i64>, Vec<String>, bool)> {
        Ok(Self::sync_view(self.store.device_sync_state(user_id.as_str(), device_id.as_str()).await?))
    }

    /// A device's state as sync reports it: one-time key counts (`signed_curve25519` always
    /// present), unused fallback key algorithms, and whether to-device messages wait.
    pub fn sync_view(state: DeviceSyncState) -> (BTreeMap<String, i64>, Vec<String>, bool) {
        let mut counts: BTreeMap<String, i64> = state.one_time_keys.into_iter().collect();
        counts.entry("signed_curve25519".into()).or_insert(0);
        (counts, state.unused_fallbacks, state.to_device_waiting)
    }

    /// `keys/query` for local users: device keys and cross-signing keys (the user-signing key
    /// only for the requester themself; no requester when another server asks).
    pub async fn query_keys(
        &self,
        requester: Option<&UserId>,
        wanted: &BTreeMap<String, Vec<String>>,
    ) -> Result<Value> {
        let requester = requester.map(|r| r.as_str()).unwrap_or_default();
        let mut device_keys = Map::new();
        let mut master = Map::new();
        let mut self_signing = Map::new();
        let mut user_signing = Map::new();
        for (user, devices) in wanted {
            let mut per_device = Map::new();
            for (device_id, json) in self.store.device_keys(user).await? {
                if !devices.is_empty() && !devices.contains(&device_id) {
                    continue;
                }
                let mut keys: Value = serde_json::from_str(&json).unwrap_or_else(|_| json!({}));
                keys["unsigned"] = json!({});
                if let Some(name) = self.store.device(user, &device_id).await?.and_then(|d| d.display_name) {
                    keys["unsigned"]["device_display_name"] = json!(name);
                }
                per_device.insert(device_id, keys);
            }
            device_keys.insert(user.clone(), Value::Object(per_device));
            for (key_type, json) in self.store.cross_signing_keys(user).await? {
                let mut value: Value = serde_json::from_str(&json).unwrap_or_else(|_| json!({}));
                // A signature by another user's user-signing key is that signer's
                // private verification: only they see it.
                if let Some(Value::Object(sigs)) = value.get_mut("signatures") {
                    sigs.retain(|signer, _| signer == user || signer == requester);
                }
                match key_type.as_str() {
                    "master" => {
                        master.insert(user.clone(), value);
                    }
                    "self_signing" => {
                        self_signing.insert(user.clone(), value);
                    }
                    "user_signing" if user == requester => {
                        user_signing.insert(user.clone(), value);
                    }
                    _ => {}
                }
            }
        }
        Ok(json!({
            "failures": {},
            "device_keys": device_keys,
            "master_keys": master,
            "self_signing_keys": self_signing,
            "user_signing_keys": user_signing,
        }))
    }

    /// `keys/claim`: one key per requested device (one-time key first, then fallback).
    pub async fn claim_keys(&self, wanted: &BTreeMap<String, BTreeMap<String, String>>) -> Result<Value> {
        let mut out = Map::new();
        for (user, devices) in wanted {
            let mut per_device = Map::new();
            for (device, algorithm) in devices {
                if let Some((key_id, json)) = self.store.claim_key(user, device, algorithm).await? {
                    let key: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
                    per_device.insert(device.clone(), json!({ key_id: key }));
                }
            }
            if !per_device.is_empty() {
                out.insert(user.clone(), Value::Object(per_device));
            }
        }
        Ok(json!({ "failures": {}, "one_time_keys": out }))
    }

    /// Stores cross-signing keys (`(type, JSON)`); the caller has done the UIA.
    pub async fn upload_cross_signing_keys(&self, user_id: &UserId, keys: Vec<(String, String)>) -> Result<()> {
        for (key_type, json) in &keys {
            let parsed = parse_object(json, key_type)?;
            if parsed.get("user_id").and_then(Value::as_str) != Some(user_id.as_str()) {
                return Err(Error::invalid_param(format!("{key_type} key belongs to another user")));
            }
            let usage = parsed.get("usage").and_then(Value::as_array);
            if !usage.is_some_and(|u| u.iter().any(|x| x.as_str() == Some(key_type.as_str()))) {
                return Err(Error::invalid_param(format!("{key_type} key must have usage {key_type}")));
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        // The other keys are signed by the master key: there must be one.
        if !keys.iter().any(|(key_type, _)| key_type == "master") && !self.has_master_key(user_id).await? {
            return Err(Error::invalid_param("upload a master key before the keys it signs"));
        }
        let guard = self.streams.allocate();
        self.store.set_cross_signing_keys(user_id.as_str(), &keys, guard.pos()).await?;
        Ok(())
    }

    /// Whether the user already has a master key (first upload needs no UIA).
    pub async fn has_master_key(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.store.cross_signing_keys(user_id.as_str()).await?.iter().any(|(t, _)| t == "master"))
    }

    /// The current cross-signing key of a type, if it matches `incoming` exactly.
    pub async fn cross_signing_key(&self, user_id: &UserId, key_type: &str) -> Result<Option<String>> {
        Ok(self
            .store
            .cross_signing_keys(user_id.as_str())
            .await?
            .into_iter()
            .find(|(t, _)| t == key_type)
            .map(|(_, j)| j))
    }

    /// `keys/signatures/upload`: merges signatures into the stored keys they sign.
    pub async fn upload_signatures(&self, signed: &BTreeMap<String, BTreeMap<String, String>>) -> Result<Value> {
        let mut failures = Map::new();
        for (user, keys) in signed {
            let devices = self.store.device_keys(user).await?;
            let cross = self.store.cross_signing_keys(user).await?;
            for (key_id, raw) in keys {
                let incoming = parse_object(raw, "signed key")?;
                let fail = |msg: &str| json!({ "errcode": "M_INVALID_SIGNATURE", "error": msg });
                if let Some((device_id, json)) = devices.iter().find(|(d, _)| d == key_id) {
                    let mut stored = parse_object(json, "device keys")?;
                    merge_signatures(&mut stored, &incoming);
                    let guard = self.streams.allocate();
                    self.store
                        .set_device_keys(user, device_id, &Value::Object(stored).to_string(), guard.pos())
                        .await?;
                    continue;
                }
                let matching = cross.iter().find(|(_, json)| {
                    parse_object(json, "key").ok().and_then(|k| k.get("keys").cloned()).is_some_and(|k| {
                        k.as_object()
                            .is_some_and(|m| m.keys().any(|id| id.split_once(':').is_some_and(|(_, pk)| pk == key_id)))
                    })
                });
                match matching {
                    Some((key_type, json)) => {
                        let mut stored = parse_object(json, "cross-signing key")?;
                        merge_signatures(&mut stored, &incoming);
                        let guard = self.streams.allocate();
                        self.store
                            .set_cross_signing_keys(
                                user,
                                &[(key_type.clone(), Value::Object(stored).to_string())],
                                guard.pos(),
                            )
                            .await?;
                    }
                    None => {
                        failures.entry(user.clone()).or_insert_with(|| json!({}))[key_id] = fail("unknown key");
                    }
                }
            }
        }
        Ok(json!({ "failures": failures }))
    }

    /// `sendToDevice`: queues messages (`*` expands to all the user's devices), once per
    /// transaction ID.
    pub async fn send_to_device(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        txn_id: &str,
        event_type: &str,
        messages: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<()> {
        let mut queued = Vec::new();
        let mut guards = Vec::new();
        let mut remote: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for (user, devices) in messages {
            let user_id = UserId::parse(user).map_err(|e| Error::invalid_param(e.to_string()))?;
            if user_id.server_name().as_str() != sender.server_name().as_str() {
                // Another server's users: their server delivers, one EDU per server.
                let mut per_device = Map::new();
                for (device, content) in devices {
                    per_device.insert(device.clone(), Value::Object(parse_object(content, "to-device content")?));
                }
                remote
                    .entry(user_id.server_name().to_string())
                    .or_default()
                    .insert(user.clone(), Value::Object(per_device));
                continue;
            }
            for (device, content) in devices {
                parse_object(content, "to-device content")?;
                self.address_to_device(user, device, event_type, content, &mut queued, &mut guards).await?;
            }
        }
        // The client's transaction is recorded with the messages: a retry after a failure
        // queues them, a retry after success queues nothing.
        let first_time = self.store.queue_to_device((sender.as_str(), sender_device.as_str(), txn_id), &queued).await?;
        drop(guards);
        if first_time {
            for (server, messages) in remote {
                let content = json!({
                    "sender": sender,
                    "type": event_type,
                    "message_id": format!("{sender_device}-{txn_id}"),
                    "messages": messages,
                });
                self.federation.queue_edu(&[server], "m.direct_to_device", content);
            }
        }
        Ok(())
    }

    /// One to-device message per target device of a local user (`*`: all their devices),
    /// each with its stream position, held until the messages are stored.
    async fn address_to_device(
        &self,
        user: &str,
        device: &str,
        event_type: &str,
        content: &str,
        queued: &mut Vec<NewToDevice>,
        guards: &mut Vec<crate::sync::stream::PositionGuard>,
    ) -> Result<()> {
        let targets = if device == "*" { self.store.device_ids(user).await? } else { vec![device.to_owned()] };
        for target in targets {
            // Only the addressee's syncs need to wake.
            let guard = self.streams.allocate_for(crate::sync::stream::Scope::user(user));
            queued.push(NewToDevice {
                stream_pos: guard.pos(),
                user_id: user.to_owned(),
                device_id: target,
                event_type: event_type.to_owned(),
                content: content.to_owned(),
            });
            guards.push(guard);
        }
        Ok(())
    }

    /// Delivers the to-device messages of another server's user to this server's devices,
    /// once per message ID.
    pub async fn deliver_remote_to_device(
        &self,
        sender: &UserId,
        event_type: &str,
        message_id: &str,
        messages: &Map<String, Value>,
    ) -> Result<()> {
        let mut queued = Vec::new();
        let mut guards = Vec::new();
        for (user, devices) in messages {
            let Ok(user_id) = UserId::parse(user) else { continue };
            if user_id.server_name() != self.federation.server_name {
                continue;
            }
            let Some(devices) = devices.as_object() else { continue };
            for (device, content) in devices {
                let content = content.to_string();
                self.address_to_device(user, device, event_type, &content, &mut queued, &mut guards).await?;
            }
        }
        // The sender's server and message ID stand for the client's device and transaction.
        let origin = format!("federation:{}", sender.server_name());
        self.store.queue_to_device((sender.as_str(), &origin, message_id), &queued).await?;
        drop(guards);
        Ok(())
    }

    /// To-device messages for a sync: acknowledges those delivered at or before `since`,
    /// and returns the next ones with the point the answer's token must name to
    /// acknowledge them (below `to` when more are left).
    pub async fn to_device_for_sync(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<i64>,
        to: i64,
    ) -> Result<(Vec<Value>, i64)> {
        let (rows, reached) =
            self.store.take_to_device(user_id.as_str(), device_id.as_str(), since, to, TO_DEVICE_LIMIT).await?;
        let events = rows
            .into_iter()
            .map(|r| {
                let content: Value = serde_json::from_str(&r.content).unwrap_or_else(|_| json!({}));
                json!({ "sender": r.sender, "type": r.event_type, "content": content })
            })
            .collect();
        Ok((events, reached))
    }

    /// Records that a user's device list changed (a device was created or deleted).
    pub async fn device_list_changed(&self, user_id: &UserId) -> Result<()> {
        let guard = self.streams.allocate();
        self.store.record_device_list_change(user_id.as_str(), guard.pos()).await?;
        Ok(())
    }
}
