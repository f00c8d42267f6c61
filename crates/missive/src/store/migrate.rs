//! Embedded schema migrations, applied in order at start-up, each in its own transaction.

use super::{Backend, Store, StoreError, StoreResult, now_ms};

/// (version, SQLite script, PostgreSQL script)
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_core.sql"), include_str!("../../migrations/postgres/0001_core.sql")),
    (2, include_str!("../../migrations/sqlite/0002_e2ee.sql"), include_str!("../../migrations/postgres/0002_e2ee.sql")),
    (
        3,
        include_str!("../../migrations/sqlite/0003_txn_index.sql"),
        include_str!("../../migrations/postgres/0003_txn_index.sql"),
    ),
    (
        4,
        include_str!("../../migrations/sqlite/0004_lean_writes.sql"),
        include_str!("../../migrations/postgres/0004_lean_writes.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_notification_counts.sql"),
        include_str!("../../migrations/postgres/0005_notification_counts.sql"),
    ),
    (
        6,
        include_str!("../../migrations/sqlite/0006_txn_index_per_room.sql"),
        include_str!("../../migrations/postgres/0006_txn_index_per_room.sql"),
    ),
    (
        7,
        include_str!("../../migrations/sqlite/0007_conformance.sql"),
        include_str!("../../migrations/postgres/0007_conformance.sql"),
    ),
    (
        8,
        include_str!("../../migrations/sqlite/0008_federation.sql"),
        include_str!("../../migrations/postgres/0008_federation.sql"),
    ),
    (
        9,
        include_str!("../../migrations/sqlite/0009_outliers.sql"),
        include_str!("../../migrations/postgres/0009_outliers.sql"),
    ),
    (
        10,
        include_str!("../../migrations/sqlite/0010_partial_state.sql"),
        include_str!("../../migrations/postgres/0010_partial_state.sql"),
    ),
    (
        11,
        include_str!("../../migrations/sqlite/0011_event_expiry.sql"),
        include_str!("../../migrations/postgres/0011_event_expiry.sql"),
    ),
    (
        12,
        include_str!("../../migrations/sqlite/0012_remote_device_lists.sql"),
        include_str!("../../migrations/postgres/0012_remote_device_lists.sql"),
    ),
    (
        13,
        include_str!("../../migrations/sqlite/0013_identity.sql"),
        include_str!("../../migrations/postgres/0013_identity.sql"),
    ),
    (
        14,
        include_str!("../../migrations/sqlite/0014_sso_sessions.sql"),
        include_str!("../../migrations/postgres/0014_sso_sessions.sql"),
    ),
    (
        15,
        include_str!("../../migrations/sqlite/0015_bump_events.sql"),
        include_str!("../../migrations/postgres/0015_bump_events.sql"),
    ),
    (
        16,
        include_str!("../../migrations/sqlite/0016_oauth_clients.sql"),
        include_str!("../../migrations/postgres/0016_oauth_clients.sql"),
    ),
    (
        17,
        include_str!("../../migrations/sqlite/0017_media.sql"),
        include_str!("../../migrations/postgres/0017_media.sql"),
    ),
    (
        18,
        include_str!("../../migrations/sqlite/0018_media_pending.sql"),
        include_str!("../../migrations/postgres/0018_media_pending.sql"),
    ),
    (
        19,
        include_str!("../../migrations/sqlite/0019_media_scans.sql"),
        include_str!("../../migrations/postgres/0019_media_scans.sql"),
    ),
    (
        20,
        include_str!("../../migrations/sqlite/0020_pushers.sql"),
        include_str!("../../migrations/postgres/0020_pushers.sql"),
    ),
    (
        21,
        include_str!("../../migrations/sqlite/0021_audit_log.sql"),
        include_str!("../../migrations/postgres/0021_audit_log.sql"),
    ),
    (
        22,
        include_str!("../../migrations/sqlite/0022_legal_holds.sql"),
        include_str!("../../migrations/postgres/0022_legal_holds.sql"),
    ),
    (
        23,
        include_str!("../../migrations/sqlite/0023_session_log.sql"),
        include_str!("../../migrations/postgres/0023_session_log.sql"),
    ),
    (
        24,
        include_str!("../../migrations/sqlite/0024_event_purge.sql"),
        include_str!("../../migrations/postgres/0024_event_purge.sql"),
    ),
    (
        25,
        include_str!("../../migrations/sqlite/0025_room_facts.sql"),
        include_str!("../../migrations/postgres/0025_room_facts.sql"),
    ),
];

pub(super) async fn run(store: &Store) -> StoreResult<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_ts BIGINT NOT NULL)",
    )
    .execute(&store.write)
    .await?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations").fetch_all(&store.write).await?;
    for &(version, sqlite, postgres) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        let script = match store.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        };
        let fail = |source| StoreError::Migration { version, source };
        let mut tx = store.write.begin().await.map_err(fail)?;
        sqlx::raw_sql(script).execute(&mut *tx).await.map_err(fail)?;
        sqlx::query("INSERT INTO schema_migrations (version, applied_ts) VALUES ($1, $2)")
            .bind(version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}
