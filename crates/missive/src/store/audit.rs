//! The audit trail: appended to, read, never changed (only retention removes entries).

use sqlx::Row;

use super::StoreResult;

/// One operator action.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub ts: i64,
    /// The account that acted (`@admin:server`), or how the request was authenticated
    /// (`shared-secret`, `scim`, `anonymous`).
    pub actor: String,
    /// The method and the route (`POST /_synapse/admin/v1/media/quarantine/{server_name}/{media_id}`).
    pub action: String,
    /// The route's parameters (the user, the media, the server), `/`-joined.
    pub target: String,
    pub ip: Option<String>,
    /// The HTTP status of the answer: what was refused is recorded too.
    pub status: i64,
}

impl super::Store {
    /// Appends an entry to the audit trail.
    pub async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        sqlx::query("INSERT INTO audit_log (ts, actor, action, target, ip, status) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(entry.ts)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(&entry.ip)
            .bind(entry.status)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Entries newest first, below `before` (an entry ID), optionally of one actor or
    /// about one target.
    pub async fn audit_entries(
        &self,
        before: i64,
        limit: i64,
        actor: Option<&str>,
        target: Option<&str>,
    ) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, ts, actor, action, target, ip, CAST(status AS BIGINT) FROM audit_log \
             WHERE id < $1 AND ($2 IS NULL OR actor = $2) AND ($3 IS NULL OR target = $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(before)
        .bind(actor)
        .bind(target)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                ts: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                ip: r.get(5),
                status: r.get(6),
            })
            .collect())
    }
}
