//! Users, profiles, devices, access tokens and the server's signing key.

use sqlx::Row;

use super::{Store, StoreResult, now_ms, sql, sync_memory::Part};

/// A user account row.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub is_guest: bool,
    pub deactivated: bool,
    /// An external user (a partner outside the administration), restricted.
    pub external: bool,
    /// Suspended by an operator: refused everywhere until unlocked.
    pub locked: bool,
    /// Deleted after its deactivation's grace period: the row only reserves the ID.
    pub deleted: bool,
}

/// A device row.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<i64>,
    pub last_seen_ip: Option<String>,
    pub last_seen_user_agent: Option<String>,
}

/// What an access token resolves to.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub user_id: String,
    pub device_id: String,
    pub expires_ts: Option<i64>,
}

/// A new account with its first device and token, written in one transaction.
#[derive(Debug)]
pub struct NewAccount<'a> {
    pub user_id: &'a str,
    pub password_hash: Option<&'a str>,
    pub is_admin: bool,
    pub is_guest: bool,
    pub displayname: Option<&'a str>,
    pub session: Option<NewSession<'a>>,
}

/// A device login: the device (created if new) and its token pair.
#[derive(Debug, Clone, Copy)]
pub struct NewSession<'a> {
    pub device_id: &'a str,
    pub device_display_name: Option<&'a str>,
    pub token_hash: &'a str,
    pub refresh_token_hash: Option<&'a str>,
    pub expires_ts: Option<i64>,
}

impl Store {
    /// Creates an account; returns `false` if the user ID was ever taken.
    pub async fn create_account(&self, account: NewAccount<'_>) -> StoreResult<bool> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (user_id, password_hash, is_admin, is_guest, created_ts, updated_ts) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(account.user_id)
        .bind(account.password_hash)
        .bind(account.is_admin as i64)
        .bind(account.is_guest as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO profiles (user_id, displayname, updated_ts) VALUES ($1, $2, $3)")
            .bind(account.user_id)
            .bind(account.displayname)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if let Some(session) = account.session {
            insert_session(&mut tx, account.user_id, session, now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Adds a login session (device + tokens) for an existing user.
    pub async fn create_session(&self, user_id: &str, session: NewSession<'_>) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        insert_session(&mut tx, user_id, session, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Creates a device without a session (a dehydrated device), or renames it.
    pub async fn create_device(&self, user_id: &str, device_id: &str, display_name: Option<&str>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO devices (user_id, device_id, display_name, created_ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = excluded.display_name",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(display_name)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Looks a user up by ID.
    pub async fn user(&self, user_id: &str) -> StoreResult<Option<UserRow>> {
        let row = sqlx::query(
            "SELECT user_id, password_hash, is_admin, is_guest, deactivated, external, locked, deleted_ts FROM users \
                 WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| UserRow {
            user_id: r.get(0),
            password_hash: r.get(1),
            is_admin: r.get::<i64, _>(2) != 0,
            is_guest: r.get::<i64, _>(3) != 0,
            deactivated: r.get::<i64, _>(4) != 0,
            external: r.get::<i64, _>(5) != 0,
            locked: r.get::<i64, _>(6) != 0,
            deleted: r.get::<Option<i64>, _>(7).is_some(),
        }))
    }

    /// Whether a user ID has ever been registered.
    pub async fn user_exists(&self, user_id: &str) -> StoreResult<bool> {
        Ok(sqlx::query("SELECT 1 FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.read)
            .await?
            .is_some())
    }

    /// Replaces a user's password hash; optionally logs out all devices but one.
    pub async fn set_password(
        &self,
        user_id: &str,
        hash: &str,
        keep_device: Option<&str>,
        logout_devices: bool,
    ) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE users SET password_hash = $2, updated_ts = $3 WHERE user_id = $1")
            .bind(user_id)
            .bind(hash)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        if logout_devices {
            sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id <> $2")
                .bind(user_id)
                .bind(keep_device.unwrap_or(""))
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id <> $2")
                .bind(user_id)
                .bind(keep_device.unwrap_or(""))
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND device_id <> $2")
                .bind(user_id)
                .bind(keep_device.unwrap_or(""))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks an account deactivated and removes its sessions; the ID stays reserved.
    pub async fn deactivate_user(&self, user_id: &str) -> StoreResult<()> {
        let _forget = self.sync_memory.forget_all();
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "UPDATE users SET deactivated = 1, deactivated_ts = $2, password_hash = NULL, updated_ts = $2 \
             WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        // Which events notified the account is theirs alone, and of no use once it is closed.
        for table in
            DEVICE_TABLES.iter().chain(&["access_tokens", "openid_tokens", "push_exceptions", "notification_offsets"])
        {
            sqlx::query(sql(format!("DELETE FROM {table} WHERE user_id = $1"))).bind(user_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Makes a guest account a full account with a password.
    pub async fn upgrade_guest(&self, user_id: &str, password_hash: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE users SET is_guest = 0, password_hash = $2, updated_ts = $3 WHERE user_id = $1 AND is_guest = 1",
        )
        .bind(user_id)
        .bind(password_hash)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Marks a user's messages for erasure.
    pub async fn set_erased(&self, user_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET erased = 1, updated_ts = $2 WHERE user_id = $1")
            .bind(user_id)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Every user whose messages are marked for erasure (`erased` 1: their content is
    /// still to erase, 2: erased).
    pub async fn erased_users(&self) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT user_id FROM users WHERE erased <> 0").fetch_all(&self.read).await?)
    }

    /// Deleted accounts whose messages and uploads are still to erase, but those under a
    /// legal hold.
    pub async fn erasures_pending(&self) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT user_id FROM users u WHERE erased = 1 AND deleted_ts IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.lifted_ts IS NULL AND h.user_id = u.user_id)",
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// Records that a user's messages and uploads are erased.
    pub async fn erasure_done(&self, user_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET erased = 2, updated_ts = $2 WHERE user_id = $1 AND erased = 1")
            .bind(user_id)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Resolves an access token digest.
    pub async fn token(&self, token_hash: &str) -> StoreResult<Option<TokenRow>> {
        let row = sqlx::query("SELECT user_id, device_id, expires_ts FROM access_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| TokenRow { user_id: r.get(0), device_id: r.get(1), expires_ts: r.get(2) }))
    }

    /// The user and device an access or refresh token digest belongs to.
    pub async fn token_owner(&self, token_hash: &str) -> StoreResult<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT user_id, device_id FROM access_tokens WHERE token_hash = $1 \
             UNION ALL SELECT user_id, device_id FROM access_tokens WHERE refresh_token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Swaps a refresh token for a new token pair; `None` if the refresh token is unknown.
    pub async fn refresh_session(
        &self,
        refresh_hash: &str,
        new_token_hash: &str,
        new_refresh_hash: &str,
        expires_ts: Option<i64>,
    ) -> StoreResult<Option<TokenRow>> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query("DELETE FROM access_tokens WHERE refresh_token_hash = $1 RETURNING user_id, device_id")
            .bind(refresh_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (user_id, device_id): (String, String) = (row.get(0), row.get(1));
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, refresh_token_hash, user_id, device_id, expires_ts, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new_token_hash)
        .bind(new_refresh_hash)
        .bind(&user_id)
        .bind(&device_id)
        .bind(expires_ts)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(TokenRow { user_id, device_id, expires_ts }))
    }

    /// Deletes devices and their tokens; returns the token digests that were removed.
    pub async fn delete_devices(&self, user_id: &str, device_ids: &[String]) -> StoreResult<Vec<String>> {
        let _forget = self.sync_memory.forget(Part::Devices, [user_id]);
        let mut tx = self.write.begin().await?;
        let mut removed = Vec::new();
        for device_id in device_ids {
            let rows =
                sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2 RETURNING token_hash")
                    .bind(user_id)
                    .bind(device_id)
                    .fetch_all(&mut *tx)
                    .await?;
            removed.extend(rows.into_iter().map(|r| r.get::<String, _>(0)));
            // A deleted device's keys and undelivered messages go with it.
            for table in DEVICE_TABLES {
                sqlx::query(sql(format!("DELETE FROM {table} WHERE user_id = $1 AND device_id = $2")))
                    .bind(user_id)
                    .bind(device_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// All device IDs of a user.
    pub async fn device_ids(&self, user_id: &str) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT device_id FROM devices WHERE user_id = $1 ORDER BY device_id")
            .bind(user_id)
            .fetch_all(&self.read)
            .await?)
    }

    /// All devices of a user.
    pub async fn devices(&self, user_id: &str) -> StoreResult<Vec<DeviceRow>> {
        let rows = sqlx::query(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent FROM devices \
             WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(device_row).collect())
    }

    /// One device of a user.
    pub async fn device(&self, user_id: &str, device_id: &str) -> StoreResult<Option<DeviceRow>> {
        let row = sqlx::query(
            "SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent FROM devices \
             WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(device_row))
    }

    /// Renames a device; returns `false` if it does not exist.
    pub async fn rename_device(&self, user_id: &str, device_id: &str, name: Option<&str>) -> StoreResult<bool> {
        let n = sqlx::query("UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Records when and from where a device was last used (connection log data class).
    pub async fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        ip: Option<&str>,
        user_agent: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE devices SET last_seen_ts = $3, last_seen_ip = $4, last_seen_user_agent = $5 \
             WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(now_ms())
        .bind(ip)
        .bind(user_agent)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// A user's display name and avatar.
    pub async fn profile(&self, user_id: &str) -> StoreResult<Option<(Option<String>, Option<String>)>> {
        let row = sqlx::query("SELECT displayname, avatar_url FROM profiles WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Sets the display name (`field = displayname`) or avatar (`avatar_url`).
    pub async fn set_profile_field(&self, user_id: &str, field: ProfileField, value: Option<&str>) -> StoreResult<()> {
        let column = match field {
            ProfileField::DisplayName => "displayname",
            ProfileField::AvatarUrl => "avatar_url",
        };
        sqlx::query(sql(format!(
            "INSERT INTO profiles (user_id, {column}, updated_ts) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET {column} = excluded.{column}, updated_ts = excluded.updated_ts"
        )))
        .bind(user_id)
        .bind(value)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Records an OpenID token digest for `user_id`, and drops the user's expired ones.
    pub async fn insert_openid_token(&self, token_hash: &str, user_id: &str, expires_ts: i64) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM openid_tokens WHERE user_id = $1 AND expires_ts <= $2")
            .bind(user_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO openid_tokens (token_hash, user_id, expires_ts, created_ts) VALUES ($1, $2, $3, $4)")
            .bind(token_hash)
            .bind(user_id)
            .bind(expires_ts)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user an unexpired OpenID token digest belongs to.
    pub async fn openid_token_user(&self, token_hash: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT user_id FROM openid_tokens WHERE token_hash = $1 AND expires_ts > $2")
            .bind(token_hash)
            .bind(now_ms())
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The current signing key (key ID, base64 PKCS#8), if one was generated.
    pub async fn signing_key(&self) -> StoreResult<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT key_id, pkcs8 FROM server_signing_keys WHERE expired_ts IS NULL ORDER BY created_ts DESC LIMIT 1",
        )
        .fetch_optional(&self.write)
        .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Persists a newly generated signing key.
    pub async fn insert_signing_key(&self, key_id: &str, pkcs8_b64: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO server_signing_keys (key_id, pkcs8, created_ts) VALUES ($1, $2, $3)")
            .bind(key_id)
            .bind(pkcs8_b64)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        Ok(())
    }
}

/// Tables whose rows belong to one device of a user.
const DEVICE_TABLES: [&str; 7] =
    ["devices", "device_keys", "one_time_keys", "fallback_keys", "to_device", "sso_sessions", "pushers"];

/// Which profile field to set.
#[derive(Debug, Clone, Copy)]
pub enum ProfileField {
    DisplayName,
    AvatarUrl,
}

fn device_row(r: sqlx::any::AnyRow) -> DeviceRow {
    DeviceRow {
        device_id: r.get(0),
        display_name: r.get(1),
        last_seen_ts: r.get(2),
        last_seen_ip: r.get(3),
        last_seen_user_agent: r.get(4),
    }
}

async fn insert_session(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user_id: &str,
    session: NewSession<'_>,
    now: i64,
) -> StoreResult<()> {
    // A login with an existing device ID replaces that device's tokens (spec: "logging in
    // with a device ID that already exists invalidates its previous access token").
    sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
        .bind(user_id)
        .bind(session.device_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts) VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = COALESCE(excluded.display_name, devices.display_name)",
    )
    .bind(user_id)
    .bind(session.device_id)
    .bind(session.device_display_name)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO access_tokens (token_hash, refresh_token_hash, user_id, device_id, expires_ts, created_ts) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(session.token_hash)
    .bind(session.refresh_token_hash)
    .bind(user_id)
    .bind(session.device_id)
    .bind(session.expires_ts)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
