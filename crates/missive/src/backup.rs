//! Server-side key backup (`/room_keys`): opaque, client-encrypted session keys per version.

use serde_json::{Map, Value, json};

use crate::{
    error::{Error, Result},
    store::Store,
};

/// The key backup service.
pub struct Backups {
    store: Store,
}

fn parse_version(version: &str) -> Result<i64> {
    version.parse().map_err(|_| Error::not_found("unknown backup version"))
}

/// Whether a new session backup should replace the stored one (the spec's rules: verified
/// beats unverified, then the lower first message index, then the lower forwarded count).
fn better(new: &Value, old: &Value) -> bool {
    let key = |v: &Value| {
        (
            !v["is_verified"].as_bool().unwrap_or(false),
            v["first_message_index"].as_i64().unwrap_or(i64::MAX),
            v["forwarded_count"].as_i64().unwrap_or(i64::MAX),
        )
    };
    key(new) < key(old)
}

impl Backups {
    /// Creates the service.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Creates a new backup version from `{algorithm, auth_data}`.
    pub async fn create_version(&self, user_id: &str, body: &Value) -> Result<String> {
        let algorithm = body["algorithm"].as_str().ok_or_else(|| Error::bad_json("algorithm is required"))?;
        // Opaque to the server; older clients (and SyTest) send a string.
        if body["auth_data"].is_null() {
            return Err(Error::bad_json("auth_data is required"));
        }
        let version = self.store.create_backup_version(user_id, algorithm, &body["auth_data"].to_string()).await?;
        Ok(version.to_string())
    }

    /// A version's description (the latest when `version` is `None`).
    pub async fn version_info(&self, user_id: &str, version: Option<&str>) -> Result<Value> {
        let version = version.map(parse_version).transpose()?;
        let row =
            self.store.backup_version(user_id, version).await?.ok_or_else(|| Error::not_found("no backup found"))?;
        let count = self.store.backup_key_count(user_id, row.version).await?;
        Ok(json!({
            "algorithm": row.algorithm,
            "auth_data": serde_json::from_str::<Value>(&row.auth_data).unwrap_or_else(|_| json!({})),
            "count": count,
            "etag": row.etag.to_string(),
            "version": row.version.to_string(),
        }))
    }

    /// Updates a version's auth data; the algorithm may not change.
    pub async fn update_version(&self, user_id: &str, version: &str, body: &Value) -> Result<()> {
        let number = parse_version(version)?;
        let row = self
            .store
            .backup_version(user_id, Some(number))
            .await?
            .ok_or_else(|| Error::not_found("no backup found"))?;
        if body["algorithm"].as_str() != Some(row.algorithm.as_str()) {
            return Err(Error::invalid_param("the algorithm of a backup version cannot change"));
        }
        if let Some(v) = body.get("version").and_then(Value::as_str)
            && v != version
        {
            return Err(Error::invalid_param("version in body does not match the path"));
        }
        self.store.update_backup_version(user_id, number, &body["auth_data"].to_string()).await?;
        Ok(())
    }

    /// Deletes a version and its keys.
    pub async fn delete_version(&self, user_id: &str, version: &str) -> Result<()> {
        if !self.store.delete_backup_version(user_id, parse_version(version)?).await? {
            return Err(Error::not_found("no backup found"));
        }
        Ok(())
    }

    /// The number of a live backup version, or `M_NOT_FOUND`.
    async fn existing(&self, user_id: &str, version: &str) -> Result<i64> {
        let number = parse_version(version)?;
        self.store.backup_version(user_id, Some(number)).await?.ok_or_else(|| Error::not_found("no backup found"))?;
        Ok(number)
    }

    async fn current(&self, user_id: &str, version: &str) -> Result<i64> {
        let latest =
            self.store.backup_version(user_id, None).await?.ok_or_else(|| Error::not_found("no backup found"))?;
        let number = parse_version(version)?;
        if number != latest.version {
            return Err(Error::WrongRoomKeysVersion { current_version: latest.version.to_string() });
        }
        Ok(number)
    }

    /// Stores session keys `(room, session, data)` into the current version; returns count and etag.
    pub async fn put_keys(&self, user_id: &str, version: &str, keys: Vec<(String, String, Value)>) -> Result<Value> {
        let number = self.current(user_id, version).await?;
        let mut accepted = Vec::new();
        for (room_id, session_id, data) in keys {
            if !data.is_object() {
                return Err(Error::bad_json("session data must be an object"));
            }
            let existing = self.store.backup_keys(user_id, number, Some(&room_id), Some(&session_id)).await?;
            let keep_old = existing
                .first()
                .and_then(|(_, _, json)| serde_json::from_str::<Value>(json).ok())
                .is_some_and(|old| !better(&data, &old));
            if !keep_old {
                accepted.push((room_id, session_id, data.to_string()));
            }
        }
        self.store.put_backup_keys(user_id, number, &accepted).await?;
        self.count_and_etag(user_id, number).await
    }

    async fn count_and_etag(&self, user_id: &str, number: i64) -> Result<Value> {
        let row = self
            .store
            .backup_version(user_id, Some(number))
            .await?
            .ok_or_else(|| Error::not_found("no backup found"))?;
        let count = self.store.backup_key_count(user_id, number).await?;
        Ok(json!({ "count": count, "etag": row.etag.to_string() }))
    }

    /// Reads keys: all rooms, one room, or one session.
    pub async fn get_keys(
        &self,
        user_id: &str,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Value> {
        let number = self.existing(user_id, version).await?;
        let rows = self.store.backup_keys(user_id, number, room_id, session_id).await?;
        if let Some(session) = session_id {
            let (_, _, json) = rows
                .into_iter()
                .find(|(_, s, _)| s == session)
                .ok_or_else(|| Error::not_found("no key found for this session"))?;
            return serde_json::from_str(&json).map_err(|e| Error::Internal(e.to_string()));
        }
        let mut rooms: Map<String, Value> = Map::new();
        for (room, session, json) in rows {
            let data: Value = serde_json::from_str(&json).unwrap_or_else(|_| json!({}));
            rooms.entry(room).or_insert_with(|| json!({ "sessions": {} }))["sessions"][session] = data;
        }
        Ok(match room_id {
            Some(room) => rooms.remove(room).unwrap_or_else(|| json!({ "sessions": {} })),
            None => json!({ "rooms": rooms }),
        })
    }

    /// Deletes keys: all, one room's, or one session's.
    pub async fn delete_keys(
        &self,
        user_id: &str,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Value> {
        let number = self.existing(user_id, version).await?;
        self.store.delete_backup_keys(user_id, number, room_id, session_id).await?;
        self.count_and_etag(user_id, number).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_and_earlier_sessions_win() {
        let old = json!({ "is_verified": false, "first_message_index": 0, "forwarded_count": 0 });
        let verified = json!({ "is_verified": true, "first_message_index": 5, "forwarded_count": 1 });
        assert!(better(&verified, &old));
        let later = json!({ "is_verified": false, "first_message_index": 3, "forwarded_count": 0 });
        assert!(!better(&later, &old));
        let earlier = json!({ "is_verified": true, "first_message_index": 1, "forwarded_count": 0 });
        assert!(better(&earlier, &verified));
    }
}
