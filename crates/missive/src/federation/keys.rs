//! Server keys: this server's signed key document, and other servers' verify keys,
//! fetched from the server itself (or from configured notaries when it cannot answer),
//! checked against their own signatures, cached in memory and stored with their validity.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, ServerName,
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet},
};
use serde_json::{Value, json};

use super::{Federation, FederationError};
use crate::store::{RemoteKey, now_ms};

/// How long peers may trust this server's key document.
const KEY_DOCUMENT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How often a server's keys are fetched again when a key is missing.
const REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// Other servers' keys, in front of the store.
#[derive(Default)]
pub struct KeyCache {
    servers: Mutex<HashMap<String, CachedServer>>,
    /// One fetch per server at a time: who asks meanwhile waits for its keys.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyCache {
    fn fetch_lock(&self, server: &ServerName) -> Arc<tokio::sync::Mutex<()>> {
        self.fetching.lock().expect("key fetch locks poisoned").entry(server.to_string()).or_default().clone()
    }
}

#[derive(Default, Clone)]
struct CachedServer {
    keys: Vec<RemoteKey>,
    loaded: bool,
    last_fetch: Option<Instant>,
}

/// Whether a key may verify a signature made at `at` (milliseconds): a current key until
/// its document's validity ends, an old one until it expired. Room versions before 5 do
/// not bound validity (`at` is `None`).
fn usable(key: &RemoteKey, at: Option<i64>) -> bool {
    match (at, key.expired_ts) {
        (None, _) => true,
        (Some(at), Some(expired)) => at < expired,
        (Some(at), None) => at <= key.valid_until_ts,
    }
}

impl Federation {
    /// This server's key document (`/_matrix/key/v2/server`), signed by its key.
    pub fn key_document(&self) -> Result<CanonicalJsonObject, FederationError> {
        let pair = &self.keys.key_pair;
        let document = json!({
            "server_name": self.server_name,
            "valid_until_ts": now_ms() + KEY_DOCUMENT_VALIDITY.as_millis() as i64,
            "verify_keys": { format!("ed25519:{}", pair.version()): { "key": STANDARD_NO_PAD.encode(pair.public_key()) } },
            "old_verify_keys": {},
        });
        let mut object: CanonicalJsonObject =
            serde_json::from_value(document).map_err(|e| FederationError::BadSignature(e.to_string()))?;
        ruma::signatures::sign_json(self.server_name.as_str(), pair, &mut object)
            .map_err(|e| FederationError::BadSignature(e.to_string()))?;
        Ok(object)
    }

    /// The public keys of `server` named in `key_ids` that may verify what was signed at
    /// `at`, fetching the server's keys when one is missing or out of date.
    pub async fn verify_keys(
        &self,
        server: &ServerName,
        key_ids: &[String],
        at: Option<i64>,
    ) -> Result<PublicKeyMap, FederationError> {
        if server == self.server_name {
            let pair = &self.keys.key_pair;
            let own = format!("ed25519:{}", pair.version());
            let mut set = PublicKeySet::new();
            set.insert(own, Base64::new(pair.public_key().to_vec()));
            return Ok(PublicKeyMap::from([(server.to_string(), set)]));
        }
        self.check_allowed(server)?;
        let wanted = |k: &&RemoteKey| key_ids.contains(&k.key_id) && usable(k, at);
        for attempt in 0..2 {
            let cached = self.cached_keys(server).await?;
            let found: PublicKeySet = cached
                .keys
                .iter()
                .filter(wanted)
                .filter_map(|k| Some((k.key_id.clone(), Base64::parse(&k.public_key).ok()?)))
                .collect();
            if !found.is_empty() {
                return Ok(PublicKeyMap::from([(server.to_string(), found)]));
            }
            if attempt == 1 {
                break;
            }
            let lock = self.remote_keys.fetch_lock(server);
            let _fetching = lock.lock().await;
            // A fetch that finished while this one waited may have brought the key.
            let cached = self.cached_keys(server).await?;
            let held = cached.keys.iter().any(|k| wanted(&k));
            let recently = cached.last_fetch.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL);
            if !held
                && !recently
                && let Err(e) = self.fetch_keys(server).await
            {
                tracing::warn!(%server, error = %e, "cannot fetch server keys");
            }
        }
        Err(FederationError::UnknownKey { server: server.to_string(), key_id: key_ids.join(",") })
    }

    async fn cached_keys(&self, server: &ServerName) -> Result<CachedServer, FederationError> {
        if let Some(entry) = self.remote_keys.servers.lock().expect("key cache poisoned").get(server.as_str())
            && entry.loaded
        {
            return Ok(entry.clone());
        }
        let keys = self.store.remote_keys(server.as_str()).await?;
        let mut servers = self.remote_keys.servers.lock().expect("key cache poisoned");
        let entry = servers.entry(server.to_string()).or_default();
        entry.keys = keys;
        entry.loaded = true;
        Ok(entry.clone())
    }

    /// Fetches `server`'s key document from the server, else from each notary in turn,
    /// and stores its keys.
    pub async fn fetch_keys(&self, server: &ServerName) -> Result<(), FederationError> {
        self.remote_keys
            .servers
            .lock()
            .expect("key cache poisoned")
            .entry(server.to_string())
            .or_default()
            .last_fetch = Some(Instant::now());
        let direct = async {
            let document = self.client.get_json(server, "/_matrix/key/v2/server").await?;
            check_key_document(server, document)
        }
        .await;
        let keys = match direct {
            Ok(keys) => keys,
            Err(e) if self.config.federation.trusted_key_servers.is_empty() => return Err(e),
            Err(e) => {
                tracing::info!(%server, error = %e, "asking notaries for server keys");
                self.fetch_keys_from_notaries(server).await.ok_or(e)?
            }
        };
        self.store.store_remote_keys(server.as_str(), &keys).await?;
        let mut servers = self.remote_keys.servers.lock().expect("key cache poisoned");
        let entry = servers.entry(server.to_string()).or_default();
        for key in keys {
            entry.keys.retain(|k| k.key_id != key.key_id);
            entry.keys.push(key);
        }
        entry.loaded = true;
        Ok(())
    }

    async fn fetch_keys_from_notaries(&self, server: &ServerName) -> Option<Vec<RemoteKey>> {
        for notary in &self.config.federation.trusted_key_servers {
            let Ok(notary) = ServerName::parse(notary) else { continue };
            let request = ruma::api::federation::discovery::get_remote_server_keys_batch::v2::Request::new(
                BTreeMap::from([(server.to_owned(), BTreeMap::new())]),
            );
            let response = match self.send(&notary, request).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::warn!(%notary, error = %e, "notary unreachable");
                    continue;
                }
            };
            for raw in response.server_keys {
                let Ok(document) = serde_json::from_str::<Value>(raw.json().get()) else { continue };
                // The notary vouches for the document with its own signature.
                let Ok(object) = serde_json::from_value::<CanonicalJsonObject>(document.clone()) else { continue };
                let signer_keys: Vec<String> = signature_key_ids(&object, notary.as_str());
                let Ok(notary_keys) = Box::pin(self.verify_keys(&notary, &signer_keys, Some(now_ms()))).await else {
                    continue;
                };
                if ruma::signatures::verify_json(&notary_keys, &object).is_err() {
                    tracing::warn!(%notary, %server, "notary signature does not verify");
                    continue;
                }
                if let Ok(keys) = check_key_document(server, document) {
                    return Some(keys);
                }
            }
        }
        None
    }

    /// The notary's answer for one server (`/_matrix/key/v2/query`): its key documents as
    /// fetched, each countersigned by this server; only those holding `wanted` keys when
    /// the request names some. Keys are fetched again when a wanted key is not stored, or
    /// none stored (of the wanted) is valid until `minimum_valid_until_ts`. A key stored
    /// stays: an origin that stopped publishing it cannot make the notary forget it.
    pub async fn notary_documents(
        &self,
        server: &ServerName,
        wanted: &[String],
        minimum_valid_until_ts: i64,
    ) -> Result<Vec<CanonicalJsonObject>, FederationError> {
        if server == self.server_name {
            return Ok(vec![self.key_document()?]);
        }
        self.check_allowed(server)?;
        let mut keys = self.cached_keys(server).await?.keys;
        let is_wanted = |k: &RemoteKey| wanted.is_empty() || wanted.contains(&k.key_id);
        let lacking = wanted.iter().any(|id| !keys.iter().any(|k| k.key_id == *id));
        let fresh_enough = keys
            .iter()
            .filter(|k| is_wanted(k))
            .any(|k| k.expired_ts.is_none() && k.valid_until_ts >= minimum_valid_until_ts);
        if (lacking || !fresh_enough) && self.fetch_keys(server).await.is_ok() {
            keys = self.cached_keys(server).await?.keys;
        }
        keys.retain(|k| is_wanted(k));
        let mut documents: Vec<String> = keys.into_iter().map(|k| k.document).collect();
        documents.sort();
        documents.dedup();
        let mut out = Vec::new();
        for document in documents {
            let Ok(mut object) = serde_json::from_str::<CanonicalJsonObject>(&document) else { continue };
            ruma::signatures::sign_json(self.server_name.as_str(), &self.keys.key_pair, &mut object)
                .map_err(|e| FederationError::BadSignature(e.to_string()))?;
            out.push(object);
        }
        Ok(out)
    }
}

/// The key IDs `signer` signed `object` with.
fn signature_key_ids(object: &CanonicalJsonObject, signer: &str) -> Vec<String> {
    match object.get("signatures") {
        Some(CanonicalJsonValue::Object(signatures)) => match signatures.get(signer) {
            Some(CanonicalJsonValue::Object(keys)) => keys.keys().cloned().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Checks a key document of `server` (it names the server, has a validity, and each of its
/// current keys signs it) and returns its keys.
pub fn check_key_document(server: &ServerName, document: Value) -> Result<Vec<RemoteKey>, FederationError> {
    let invalid = |why: &str| FederationError::InvalidResponse(server.to_string(), format!("key document: {why}"));
    if document.get("server_name").and_then(Value::as_str) != Some(server.as_str()) {
        return Err(invalid("names another server"));
    }
    let valid_until_ts =
        document.get("valid_until_ts").and_then(Value::as_i64).ok_or_else(|| invalid("no validity"))?;
    let verify_keys =
        document.get("verify_keys").and_then(Value::as_object).ok_or_else(|| invalid("no verify_keys"))?;
    let mut object: CanonicalJsonObject =
        serde_json::from_value(document.clone()).map_err(|e| invalid(&e.to_string()))?;
    // Signatures of other servers (a notary's) are not this document's own.
    if let Some(CanonicalJsonValue::Object(signatures)) = object.get_mut("signatures") {
        signatures.retain(|signer, _| signer == server.as_str());
    }
    let stored = serde_json::to_string(&document).map_err(|e| invalid(&e.to_string()))?;
    let mut keys = Vec::new();
    for (key_id, key) in verify_keys {
        let public = key.get("key").and_then(Value::as_str).ok_or_else(|| invalid("key without key"))?;
        let bytes = Base64::<ruma::serde::base64::Standard>::parse(public).map_err(|_| invalid("key is not base64"))?;
        if bytes.as_bytes().len() != 32 || !key_id.starts_with("ed25519:") {
            continue;
        }
        let mut set = PublicKeySet::new();
        set.insert(key_id.clone(), bytes);
        let map = PublicKeyMap::from([(server.to_string(), set)]);
        ruma::signatures::verify_json(&map, &object)
            .map_err(|e| FederationError::BadSignature(format!("{server} key document, {key_id}: {e}")))?;
        keys.push(RemoteKey {
            key_id: key_id.clone(),
            public_key: public.to_owned(),
            valid_until_ts,
            expired_ts: None,
            document: stored.clone(),
        });
    }
    if keys.is_empty() {
        return Err(invalid("no ed25519 verify key"));
    }
    if let Some(old) = document.get("old_verify_keys").and_then(Value::as_object) {
        for (key_id, key) in old {
            let (Some(public), Some(expired)) =
                (key.get("key").and_then(Value::as_str), key.get("expired_ts").and_then(Value::as_i64))
            else {
                continue;
            };
            if keys.iter().any(|k| &k.key_id == key_id) {
                continue;
            }
            keys.push(RemoteKey {
                key_id: key_id.clone(),
                public_key: public.to_owned(),
                valid_until_ts: expired,
                expired_ts: Some(expired),
                document: stored.clone(),
            });
        }
    }
    Ok(keys)
}
