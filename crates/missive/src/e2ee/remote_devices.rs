//! Device lists of other servers' users. While a local user shares a room with a remote
//! user, their devices and cross-signing keys are cached: `keys/query` answers from the
//! cache (their server may be down), `m.device_list_update` EDUs that follow the cached
//! stream ID apply to it, and one that does not (an update went missing, or the sender
//! restarted) makes the server fetch the whole list again (`/user/devices`). The room
//! write that ends the last shared membership deletes the cache (see the store).

use ruma::{OwnedUserId, UserId, api::federation::device::get_devices};
use serde_json::{Map, Value, json};

use super::E2ee;
use crate::{
    error::{Error, Result},
    store::RemoteDeviceList,
};

/// A remote user's devices and cross-signing keys, as `keys/query` serves them.
pub(super) struct RemoteKeys {
    /// Device ID to device keys (with `unsigned.device_display_name`).
    pub device_keys: Map<String, Value>,
    pub master_key: Option<Value>,
    pub self_signing_key: Option<Value>,
}

impl RemoteKeys {
    fn of(list: &RemoteDeviceList) -> Self {
        let devices: Map<String, Value> = serde_json::from_str(&list.devices).unwrap_or_default();
        let device_keys = devices
            .into_iter()
            .filter_map(|(id, device)| {
                let mut keys = device.get("keys").filter(|k| k.is_object())?.clone();
                if let Some(name) = device.get("device_display_name").filter(|n| n.is_string()) {
                    keys["unsigned"]["device_display_name"] = name.clone();
                }
                Some((id, keys))
            })
            .collect();
        let parse = |key: &Option<String>| key.as_deref().and_then(|k| serde_json::from_str(k).ok());
        Self { device_keys, master_key: parse(&list.master_key), self_signing_key: parse(&list.self_signing_key) }
    }
}

impl E2ee {
    /// A remote user's keys: from the cache when it is current, else fetched from their
    /// server (and cached while a room is shared). A failed fetch falls back on a stale
    /// cache, and is an error only without one.
    pub(super) async fn remote_keys(&self, user_id: &UserId) -> Result<(RemoteKeys, Option<Error>)> {
        let cached = self.store.remote_device_list(user_id.as_str()).await?;
        if let Some(list) = cached.as_ref().filter(|l| !l.stale) {
            return Ok((RemoteKeys::of(list), None));
        }
        match self.resync_devices(user_id).await {
            Ok(list) => Ok((RemoteKeys::of(&list), None)),
            Err(e) => match cached {
                Some(list) => Ok((RemoteKeys::of(&list), Some(e))),
                None => Err(e),
            },
        }
    }

    /// Fetches a remote user's whole device list from their server and caches it (while a
    /// local user shares a room with them).
    async fn resync_devices(&self, user_id: &UserId) -> Result<RemoteDeviceList> {
        let request = get_devices::v1::Request::new(user_id.to_owned());
        let response = self
            .federation
            .send(user_id.server_name(), request)
            .await
            .map_err(|e| Error::Remote(format!("cannot fetch the devices of {user_id}: {e}")))?;
        if response.user_id != user_id {
            return Err(Error::Remote(format!("{} answered for another user", user_id.server_name())));
        }
        let devices: Map<String, Value> = response
            .devices
            .iter()
            .map(|device| {
                let keys: Value = serde_json::from_str(device.keys.json().get()).unwrap_or(Value::Null);
                let entry = json!({ "keys": keys, "device_display_name": device.device_display_name });
                (device.device_id.to_string(), entry)
            })
            .collect();
        let list = RemoteDeviceList {
            user_id: user_id.to_string(),
            stream_id: i64::try_from(u64::from(response.stream_id)).unwrap_or(i64::MAX),
            devices: Value::Object(devices).to_string(),
            master_key: response.master_key.map(|k| k.json().get().to_owned()),
            self_signing_key: response.self_signing_key.map(|k| k.json().get().to_owned()),
            stale: false,
        };
        let changed = {
            let _writing = self.remote_lists.lock().await;
            let held = self.store.remote_device_list(user_id.as_str()).await?;
            let newer = held.as_ref().is_none_or(|l| l.stale || l.stream_id <= list.stream_id);
            let differs = held.is_none_or(|l| {
                l.devices != list.devices
                    || l.master_key != list.master_key
                    || l.self_signing_key != list.self_signing_key
            });
            newer && self.store.put_remote_device_list(&list).await? && differs
        };
        // Clients that shared the cached list learn that it changed (as after an EDU).
        if changed {
            self.device_list_changed(user_id).await?;
        }
        Ok(list)
    }

    /// Takes an `m.device_list_update` EDU of a remote user (checked to be of the origin):
    /// applied to the cache when it follows it, else a resync; nothing is kept for a user no
    /// local user shares a room with. Local clients are told the list changed.
    pub async fn receive_device_list_update(&self, user_id: &UserId, content: &Value) -> Result<()> {
        // Nothing is kept of a user who shares no room here; their list is still marked
        // changed (a sync shows it only to those who share a room with them by then).
        if !self.store.shares_room_with_local(user_id.as_str()).await? {
            return self.device_list_changed(user_id).await;
        }
        let stream_id = content["stream_id"].as_i64().ok_or_else(|| Error::bad_json("stream_id missing"))?;
        let device_id = content["device_id"].as_str().ok_or_else(|| Error::bad_json("device_id missing"))?;
        let prev_ids: Vec<i64> =
            content["prev_id"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
        let applied = {
            let _writing = self.remote_lists.lock().await;
            match self.store.remote_device_list(user_id.as_str()).await? {
                // Updates of one change share its stream ID (one per device); older ones
                // are already in what the cache holds.
                Some(list) if !list.stale && stream_id < list.stream_id => return Ok(()),
                Some(mut list)
                    if !list.stale
                        && (stream_id == list.stream_id
                            || (!prev_ids.is_empty() && prev_ids.iter().all(|p| *p <= list.stream_id))) =>
                {
                    let mut devices: Map<String, Value> = serde_json::from_str(&list.devices).unwrap_or_default();
                    if content["deleted"].as_bool() == Some(true) {
                        devices.remove(device_id);
                    } else {
                        let entry = devices.entry(device_id.to_owned()).or_insert_with(|| json!({}));
                        if let Some(keys) = content.get("keys").filter(|k| k.is_object()) {
                            entry["keys"] = keys.clone();
                        }
                        if let Some(name) = content.get("device_display_name") {
                            entry["device_display_name"] = name.clone();
                        }
                    }
                    list.devices = Value::Object(devices).to_string();
                    list.stream_id = stream_id;
                    self.store.put_remote_device_list(&list).await?;
                    true
                }
                _ => false,
            }
        };
        if applied {
            return self.device_list_changed(user_id).await;
        }
        if let Err(e) = self.resync_devices(user_id).await {
            tracing::info!(%user_id, error = %e, "device list resync failed");
            self.store.set_remote_device_list_stale(user_id.as_str()).await?;
            self.device_list_changed(user_id).await?;
        }
        Ok(())
    }

    /// Takes an `m.signing_key_update` EDU of a remote user (checked to be of the origin):
    /// the cached master and self-signing keys are replaced. Local clients are told.
    pub async fn receive_signing_key_update(&self, user_id: &UserId, content: &Value) -> Result<()> {
        // A cache is held only while a room is shared (see the store): without one, there
        // is nothing to update.
        {
            let _writing = self.remote_lists.lock().await;
            if let Some(mut list) = self.store.remote_device_list(user_id.as_str()).await? {
                if let Some(key) = content.get("master_key").filter(|k| k.is_object()) {
                    list.master_key = Some(key.to_string());
                }
                if let Some(key) = content.get("self_signing_key").filter(|k| k.is_object()) {
                    list.self_signing_key = Some(key.to_string());
                }
                self.store.put_remote_device_list(&list).await?;
            }
        }
        self.device_list_changed(user_id).await
    }

    /// The users of `wanted` whose keys are asked of their server, keys and all.
    pub(super) async fn query_remote_users(
        &self,
        wanted: impl IntoIterator<Item = (OwnedUserId, Vec<String>)>,
        out: &mut Value,
    ) {
        let asks = wanted.into_iter().map(|(user, devices)| async move {
            let keys = self.remote_keys(&user).await;
            (user, devices, keys)
        });
        for (user, devices, keys) in futures_util::future::join_all(asks).await {
            let server = user.server_name().to_string();
            let (keys, failure) = match keys {
                Ok(found) => found,
                Err(e) => {
                    out["failures"][&server] = json!({ "status": 503, "message": e.to_string() });
                    continue;
                }
            };
            if let Some(e) = failure {
                out["failures"][&server] = json!({ "status": 503, "message": e.to_string() });
            }
            let device_keys: Map<String, Value> =
                keys.device_keys.into_iter().filter(|(id, _)| devices.is_empty() || devices.contains(id)).collect();
            out["device_keys"][user.as_str()] = Value::Object(device_keys);
            if let Some(key) = keys.master_key {
                out["master_keys"][user.as_str()] = key;
            }
            if let Some(key) = keys.self_signing_key {
                out["self_signing_keys"][user.as_str()] = key;
            }
        }
    }
}
