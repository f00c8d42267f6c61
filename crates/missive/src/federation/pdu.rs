//! Checks of a PDU received from another server before it reaches a room: size, event ID,
//! the signatures of every server that must have signed it (keys valid when it was sent),
//! and the content hash, whose mismatch leaves only the redacted event.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomVersionId,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    signatures::{PublicKeyMap, Verified},
};
use serde_json::value::RawValue;

use super::{Federation, FederationError};

/// Largest PDU accepted, in bytes of its JSON (the spec's limit).
pub const MAX_PDU_SIZE: usize = 65_536;

/// A PDU whose signatures verified: its event ID and the JSON to store (redacted when its
/// content hash did not match).
pub struct CheckedPdu {
    pub event_id: OwnedEventId,
    pub object: CanonicalJsonObject,
}

impl CheckedPdu {
    /// The event IDs a reference field (`prev_events`, `auth_events`) names, in either
    /// format (IDs from room version 3 on, `[ID, hashes]` pairs before).
    pub fn references(&self, field: &str) -> Vec<String> {
        let Some(ruma::CanonicalJsonValue::Array(list)) = self.object.get(field) else { return Vec::new() };
        list.iter()
            .filter_map(|r| match r {
                ruma::CanonicalJsonValue::String(id) => Some(id.clone()),
                ruma::CanonicalJsonValue::Array(pair) => match pair.first() {
                    Some(ruma::CanonicalJsonValue::String(id)) => Some(id.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }
}

impl Federation {
    /// Verifies a received PDU of a room of `version`.
    pub async fn check_pdu(
        &self,
        version: &RoomVersionId,
        rules: &RoomVersionRules,
        raw: &RawValue,
    ) -> Result<CheckedPdu, FederationError> {
        let bad = |why: String| FederationError::BadSignature(why);
        if raw.get().len() > MAX_PDU_SIZE {
            return Err(bad("PDU larger than 65536 bytes".into()));
        }
        // Not canonical JSON (floats, integers out of range): malformed, whoever signed it.
        let mut object: CanonicalJsonObject =
            serde_json::from_str(raw.get()).map_err(|_| FederationError::NotCanonical)?;
        // What other servers add outside the signed content is not ours to keep.
        object.remove("unsigned");
        let event_id = match rules.event_id_format {
            EventIdFormatVersion::V1 => match object.get("event_id") {
                Some(CanonicalJsonValue::String(id)) => id.clone(),
                _ => return Err(bad("PDU without event_id".into())),
            },
            _ => {
                object.remove("event_id");
                format!("${}", ruma::signatures::reference_hash(&object, rules).map_err(|e| bad(e.to_string()))?)
            }
        };
        let event_id = OwnedEventId::try_from(event_id).map_err(|e| bad(e.to_string()))?;
        let servers = ruma::signatures::required_server_signatures_to_verify_event(&object, &rules.signatures)
            .map_err(|e| bad(e.to_string()))?;
        let sent_at = match object.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
            _ => return Err(bad("PDU without origin_server_ts".into())),
        };
        let unsigned = |why: String| FederationError::BadEventSignature(why);
        let mut keys = PublicKeyMap::new();
        for server in servers {
            let key_ids = signing_key_ids(&object, &server);
            if key_ids.is_empty() {
                return Err(unsigned(format!("{event_id} is not signed by {server}")));
            }
            let at = rules.enforce_key_validity.then_some(sent_at);
            let found = self.verify_keys(&server, &key_ids, at).await.map_err(|e| match e {
                FederationError::UnknownKey { .. } => unsigned(format!("{event_id}: {e}")),
                e => e,
            })?;
            keys.extend(found);
        }
        let object = match ruma::signatures::verify_event(&keys, &object, rules)
            .map_err(|e| unsigned(format!("{event_id}: {e}")))?
        {
            Verified::All => object,
            Verified::Signatures => {
                tracing::info!(%event_id, room_version = %version, "content hash mismatch: keeping the redacted event");
                ruma::canonical_json::redact(object, &rules.redaction, None).map_err(|e| bad(e.to_string()))?
            }
        };
        Ok(CheckedPdu { event_id, object })
    }
}

fn signing_key_ids(object: &CanonicalJsonObject, server: &OwnedServerName) -> Vec<String> {
    match object.get("signatures") {
        Some(CanonicalJsonValue::Object(all)) => match all.get(server.as_str()) {
            Some(CanonicalJsonValue::Object(keys)) => keys.keys().cloned().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}
