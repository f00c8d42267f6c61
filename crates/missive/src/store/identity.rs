//! Identities at the IAM, third-party identifiers and single-use login tokens.

use sqlx::Row;

use super::{Store, StoreResult, now_ms};

/// A session at an identity provider (its issuer and `sid`), which signed devices in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoSession {
    pub provider: String,
    pub session_id: String,
}

/// What the admin API shows of an account.
#[derive(Debug, Clone)]
pub struct AccountDetails {
    pub creation_ts: i64,
    pub organisation: Option<String>,
    pub deactivated_ts: Option<i64>,
    /// The account's identities at the IAM: issuer and subject.
    pub external_ids: Vec<(String, String)>,
}

/// A third-party identifier of an account, as `GET /account/3pid` lists it.
#[derive(Debug, Clone)]
pub struct ThreepidRow {
    pub medium: String,
    pub address: String,
    pub validated_ts: i64,
    pub added_ts: i64,
}

impl Store {
    /// The account an identity of a provider signs in to.
    pub async fn external_user(&self, provider: &str, subject: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT user_id FROM user_external_ids WHERE auth_provider = $1 AND external_id = $2")
            .bind(provider)
            .bind(subject)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Whether a user ID was ever given: to an account (deleted ones keep their row) or to
    /// an identity of the IAM.
    pub async fn user_id_taken(&self, user_id: &str) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM users WHERE user_id = $1 UNION ALL SELECT 1 FROM user_external_ids WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.is_some())
    }

    /// Links an identity of a provider to an account; `false` when the identity is linked
    /// already (to whichever account).
    pub async fn link_external(&self, provider: &str, subject: &str, user_id: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO user_external_ids (auth_provider, external_id, user_id, created_ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(provider)
        .bind(subject)
        .bind(user_id)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a verified third-party identifier of an account, replacing the user's
    /// previous one of the same medium (the IAM says which address is current).
    pub async fn set_threepid(&self, user_id: &str, medium: &str, address: &str) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "DELETE FROM user_threepids WHERE (user_id = $1 AND medium = $2) OR (medium = $2 AND address = $3)",
        )
        .bind(user_id)
        .bind(medium)
        .bind(address)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO user_threepids (medium, address, user_id, validated_ts, added_ts) VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(medium)
        .bind(address)
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// An account's third-party identifiers.
    pub async fn threepids(&self, user_id: &str) -> StoreResult<Vec<ThreepidRow>> {
        let rows = sqlx::query(
            "SELECT medium, address, validated_ts, added_ts FROM user_threepids WHERE user_id = $1 ORDER BY medium",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ThreepidRow { medium: r.get(0), address: r.get(1), validated_ts: r.get(2), added_ts: r.get(3) })
            .collect())
    }

    /// Stores a login token by its hash.
    pub async fn insert_login_token(
        &self,
        token_hash: &str,
        user_id: &str,
        expires_ts: i64,
        session: Option<&SsoSession>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO login_tokens (token_hash, user_id, expires_ts, auth_provider, session_id) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(expires_ts)
        .bind(session.map(|s| s.provider.as_str()))
        .bind(session.map(|s| s.session_id.as_str()))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Consumes a login token: the user it names and the provider's session it came from,
    /// if it has not expired. A token is used once, whatever the outcome; expired ones are
    /// swept on the way.
    pub async fn take_login_token(&self, token_hash: &str) -> StoreResult<Option<(String, Option<SsoSession>)>> {
        let now = now_ms();
        let row = sqlx::query(
            "DELETE FROM login_tokens WHERE token_hash = $1 RETURNING user_id, expires_ts, auth_provider, session_id",
        )
        .bind(token_hash)
        .fetch_optional(&self.write)
        .await?;
        sqlx::query("DELETE FROM login_tokens WHERE expires_ts <= $1").bind(now).execute(&self.write).await?;
        Ok(row.filter(|r| r.get::<i64, _>(1) > now).map(|r| {
            let session = match (r.get::<Option<String>, _>(2), r.get::<Option<String>, _>(3)) {
                (Some(provider), Some(session_id)) => Some(SsoSession { provider, session_id }),
                _ => None,
            };
            (r.get(0), session)
        }))
    }

    /// Notes that a provider's session signed a device in.
    pub async fn add_sso_session(&self, session: &SsoSession, user_id: &str, device_id: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO sso_sessions (auth_provider, session_id, user_id, device_id, created_ts) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&session.provider)
        .bind(&session.session_id)
        .bind(user_id)
        .bind(device_id)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The devices of a user that a provider's session signed in.
    pub async fn sso_session_devices(&self, session: &SsoSession, user_id: &str) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT device_id FROM sso_sessions WHERE auth_provider = $1 AND session_id = $2 AND user_id = $3",
        )
        .bind(&session.provider)
        .bind(&session.session_id)
        .bind(user_id)
        .fetch_all(&self.read)
        .await?)
    }

    /// Stores a registered OAuth client's metadata.
    pub async fn insert_oauth_client(&self, client_id: &str, metadata: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO oauth_clients (client_id, metadata, created_ts) VALUES ($1, $2, $3)")
            .bind(client_id)
            .bind(metadata)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// A registered OAuth client's metadata.
    pub async fn oauth_client(&self, client_id: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT metadata FROM oauth_clients WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(&self.read)
            .await?)
    }

    /// The secret kept under `name`, stored first as `fresh` if there is none (the first of
    /// two concurrent starts wins).
    pub async fn server_secret(&self, name: &str, fresh: &str) -> StoreResult<String> {
        sqlx::query("INSERT INTO server_secrets (name, value, created_ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(fresh)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        let row =
            sqlx::query("SELECT value FROM server_secrets WHERE name = $1").bind(name).fetch_one(&self.write).await?;
        Ok(row.get(0))
    }

    /// Marks an account as external (a partner outside the administration) or not.
    pub async fn set_external(&self, user_id: &str, external: bool) -> StoreResult<()> {
        sqlx::query("UPDATE users SET external = $2, updated_ts = $3 WHERE user_id = $1")
            .bind(user_id)
            .bind(external as i64)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Records what the IAM says of an account: its organisation and whether it is external.
    pub async fn set_account_attributes(
        &self,
        user_id: &str,
        organisation: Option<&str>,
        external: bool,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE users SET organisation = $2, external = $3, updated_ts = $4 WHERE user_id = $1")
            .bind(user_id)
            .bind(organisation)
            .bind(external as i64)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Locks or unlocks an account.
    pub async fn set_locked(&self, user_id: &str, locked: bool) -> StoreResult<()> {
        sqlx::query("UPDATE users SET locked = $2, updated_ts = $3 WHERE user_id = $1")
            .bind(user_id)
            .bind(locked as i64)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Brings a deactivated account back (before its deletion): it may sign in again.
    pub async fn reactivate_user(&self, user_id: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET deactivated = 0, deactivated_ts = NULL, updated_ts = $2 WHERE user_id = $1")
            .bind(user_id)
            .bind(now_ms())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// The details of an account the admin API shows besides its flags.
    pub async fn account_details(&self, user_id: &str) -> StoreResult<Option<AccountDetails>> {
        let Some(row) = sqlx::query("SELECT created_ts, organisation, deactivated_ts FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let ids = sqlx::query(
            "SELECT auth_provider, external_id FROM user_external_ids WHERE user_id = $1 ORDER BY auth_provider",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        Ok(Some(AccountDetails {
            creation_ts: row.get(0),
            organisation: row.get(1),
            deactivated_ts: row.get(2),
            external_ids: ids.into_iter().map(|r| (r.get(0), r.get(1))).collect(),
        }))
    }

    /// Active accounts (not admins, guests or deactivated) created before `cutoff` whose
    /// devices were all last seen before it (or never).
    pub async fn inactive_accounts(&self, cutoff: i64) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT user_id FROM users u WHERE deactivated = 0 AND is_admin = 0 AND is_guest = 0 \
             AND created_ts < $1 AND NOT EXISTS \
             (SELECT 1 FROM devices d WHERE d.user_id = u.user_id AND d.last_seen_ts >= $1)",
        )
        .bind(cutoff)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Deactivated accounts not yet deleted whose deactivation is older than `cutoff`, but
    /// those under a legal hold (their data waits for the hold to be lifted).
    pub async fn accounts_to_delete(&self, cutoff: i64) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT user_id FROM users u WHERE deactivated = 1 AND deleted_ts IS NULL AND deactivated_ts < $1 \
             AND NOT EXISTS (SELECT 1 FROM legal_holds h WHERE h.lifted_ts IS NULL AND h.user_id = u.user_id)",
        )
        .bind(cutoff)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Deletes what a deactivated account still holds: profile, e-mail, the link to its
    /// identity at the IAM, account data, filters, keys and backups, pending tokens and
    /// uploads, read receipts, invites. The row stays, empty, so that the ID is never
    /// reissued; what it said in rooms follows the rooms' retention (or is erased at once
    /// when the user asked, see `privacy::Purge::erase_pending`).
    pub async fn delete_account(&self, user_id: &str) -> StoreResult<()> {
        let _forget = self.sync_memory.forget_all();
        let mut tx = self.write.begin().await?;
        for table in [
            "profiles",
            "account_data",
            "filters",
            "cross_signing_keys",
            "backup_keys",
            "backup_versions",
            "dehydrated_devices",
            "to_device_txns",
            "user_threepids",
            "login_tokens",
            "openid_tokens",
            "user_external_ids",
            "receipts",
            "invite_states",
        ] {
            sqlx::query(super::sql(format!("DELETE FROM {table} WHERE user_id = $1")))
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM media_pending WHERE uploader = $1").bind(user_id).execute(&mut *tx).await?;
        sqlx::query(
            "UPDATE users SET deleted_ts = $2, password_hash = NULL, organisation = NULL, locked = 0, updated_ts = $2 \
             WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Points an identity at a new account (its previous one was deleted).
    pub async fn relink_external(&self, provider: &str, subject: &str, user_id: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE user_external_ids SET user_id = $3, created_ts = $4 WHERE auth_provider = $1 AND external_id = $2",
        )
        .bind(provider)
        .bind(subject)
        .bind(user_id)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The account a third-party identifier belongs to.
    pub async fn threepid_user(&self, medium: &str, address: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT user_id FROM user_threepids WHERE medium = $1 AND address = $2")
            .bind(medium)
            .bind(address)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}
