//! Device lists across servers: when a local user's devices or keys change, the servers
//! that share a room with them are told (`m.device_list_update` per device, and
//! `m.signing_key_update` with the master and self-signing keys), so that their clients
//! query the keys again and encrypt to the new devices.

use std::{collections::BTreeSet, sync::Arc};

use serde_json::json;

use super::Federation;
use crate::sync::stream::Streams;

impl Federation {
    /// Watches the stream for device list changes of local users and tells the servers
    /// that share a room with them. Runs for the server's lifetime.
    pub fn spawn_device_list_updates(self: &Arc<Self>, streams: Arc<Streams>) {
        if !self.config.federation.enabled {
            return;
        }
        let federation = self.clone();
        tokio::spawn(async move {
            let mut wakes = streams.subscribe();
            let mut seen = streams.current();
            while wakes.changed().await.is_ok() {
                // Wake-ups come with every event: changes are looked for a few times a
                // second at most, not once per message.
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                let now = streams.current();
                if now <= seen {
                    continue;
                }
                let server = federation.server_name.to_string();
                match federation.store.local_device_list_changes(seen, now, &server).await {
                    Ok(users) => {
                        for (user, changed_at) in users {
                            federation.announce_devices(&user, changed_at, now).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read device list changes"),
                }
                seen = now;
            }
        });
    }

    /// One update per current device of `user` to every other server that shared a room
    /// with them when their devices last changed (`changed_at`): a server the user meets
    /// later asks for the devices itself, and would take a late update for a new change.
    async fn announce_devices(&self, user: &str, changed_at: i64, stream_id: i64) {
        let Ok(mates) = self.store.room_mates(user).await else { return };
        let own = self.server_name.as_str();
        let servers: BTreeSet<String> = mates
            .iter()
            .filter(|(_, membership, since, joined)| {
                membership == "join" && *since < changed_at && *joined < changed_at
            })
            .filter_map(|(mate, _, _, _)| mate.split_once(':').map(|(_, server)| server.to_owned()))
            .filter(|server| server != own)
            .collect();
        if servers.is_empty() {
            return;
        }
        let servers: Vec<String> = servers.into_iter().collect();
        // The cross-signing keys others verify the user with (never the user-signing key).
        let cross_signing = self.store.cross_signing_keys(user).await.unwrap_or_default();
        let mut signing_update = json!({ "user_id": user });
        for (kind, key) in &cross_signing {
            if matches!(kind.as_str(), "master" | "self_signing")
                && let Ok(key) = serde_json::from_str::<serde_json::Value>(key)
            {
                signing_update[format!("{kind}_key")] = key;
            }
        }
        if signing_update.as_object().is_some_and(|o| o.len() > 1) {
            self.queue_edu(&servers, "m.signing_key_update", signing_update);
        }
        let devices = self.store.devices(user).await.unwrap_or_default();
        let keys: std::collections::HashMap<String, serde_json::Value> = self
            .store
            .device_keys(user)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(device, json)| Some((device, serde_json::from_str(&json).ok()?)))
            .collect();
        let current: BTreeSet<String> = devices.iter().map(|d| d.device_id.clone()).collect();
        // Each update names the previous one sent for the user, so that a receiver that
        // missed one knows to resync (none known since start: empty, a resync); devices
        // announced before and gone now are announced deleted.
        let (prev_id, gone): (Vec<i64>, Vec<String>) = {
            let mut last = self.device_list_ids.lock().expect("device list ids poisoned");
            match last.insert(user.to_owned(), (stream_id, current.clone())) {
                Some((prev, before)) => (vec![prev], before.difference(&current).cloned().collect()),
                None => (Vec::new(), Vec::new()),
            }
        };
        for device_id in gone {
            let content = json!({
                "user_id": user,
                "device_id": device_id,
                "stream_id": stream_id,
                "prev_id": prev_id,
                "deleted": true,
            });
            self.queue_edu(&servers, "m.device_list_update", content);
        }
        for device in devices {
            // The device's keys travel with it: a receiver that applies the update as a
            // delta (Synapse) keeps what the update says.
            let mut content = json!({
                "user_id": user,
                "device_id": device.device_id,
                "device_display_name": device.display_name,
                "stream_id": stream_id,
                "prev_id": prev_id,
                "deleted": false,
            });
            if let Some(device_keys) = keys.get(&device.device_id) {
                content["keys"] = device_keys.clone();
            }
            self.queue_edu(&servers, "m.device_list_update", content);
        }
    }
}
