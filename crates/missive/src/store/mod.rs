//! Persistence: the only module with SQL.
//!
//! One `Store` serves both backends through sqlx's `Any` driver: every query is written once,
//! in the SQL that SQLite and PostgreSQL share (`$n` placeholders, `ON CONFLICT`, `RETURNING`,
//! recursive CTEs, integers for flags). The schemas differ only in type names and live in
//! `migrations/<backend>/`. On SQLite all writes go through a single connection (SQLite has
//! one writer anyway; this avoids `SQLITE_BUSY` on lock upgrades), reads use a pool.

mod accounts;
mod audit;
mod e2ee;
mod expiry;
mod federation;
mod identity;
mod media;
mod migrate;
mod notifications;
mod pushers;
mod recent;
mod remote_devices;
mod reports;
mod retention;
mod rooms;
mod script;
mod stats;
mod subject;
mod sync;
mod sync_memory;
mod user_data;

use std::{sync::Arc, time::Duration};

use sqlx::{
    AnyPool,
    any::{AnyConnectOptions, AnyPoolOptions},
};

use self::rooms::{EVENT_COLUMN_COUNT, EVENT_COLUMNS, EVENT_COLUMNS_E, event_row};
pub use self::{
    accounts::*,
    audit::AuditEntry,
    e2ee::*,
    identity::{AccountDetails, SsoSession, ThreepidRow},
    media::{MediaRow, ScanStats},
    notifications::{Level, Notifications, OffsetChange},
    pushers::{NotificationRow, PushCandidate, PusherRow},
    remote_devices::RemoteDeviceList,
    reports::NewReport,
    retention::{LegalHold, PurgeCandidate, PurgeRoom, PurgeStub, SessionLogRow},
    rooms::ProfileViewer,
    rooms::*,
    stats::OrganisationStats,
    subject::SentEvent,
    sync::*,
    user_data::*,
};
pub use federation::RemoteKey;

/// A storage failure; never shown to clients in detail.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("cannot create the database directory: {0}")]
    Directory(#[from] std::io::Error),
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Handle to the database: cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    read: AnyPool,
    write: AnyPool,
    backend: Backend,
    /// The latest timeline events as written (see `recent.rs`).
    recent: Arc<recent::RecentEvents>,
    /// What every sync of a device starts from (see `sync_memory.rs`).
    sync_memory: Arc<sync_memory::SyncMemory>,
}

impl Store {
    /// Connects, applies pending migrations and returns the store.
    pub async fn open(url: &str) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let url = match backend {
            Backend::Sqlite => sqlite_create_if_missing(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let options: AnyConnectOptions = url.parse()?;
        let store = match backend {
            Backend::Sqlite => {
                let pool = |max| {
                    AnyPoolOptions::new()
                        .max_connections(max)
                        .min_connections(1)
                        .test_before_acquire(false)
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                // WAL lets readers run beside the writer; FULL makes every
                                // acknowledged commit survive a crash of the process or host.
                                sqlx::raw_sql(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                                )
                                .execute(conn)
                                .await?;
                                Ok(())
                            })
                        })
                };
                let write = pool(1).connect_with(options.clone()).await?;
                let read = pool(8).connect_with(options).await?;
                Store { read, write, backend, recent: Default::default(), sync_memory: Default::default() }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(32)
                    .min_connections(2)
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await?;
                Store {
                    read: pool.clone(),
                    write: pool,
                    backend,
                    recent: Default::default(),
                    sync_memory: Default::default(),
                }
            }
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes all connections (used at shutdown).
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// An operator's SQLite URL, made to create the database file (and its directory) when it
/// does not exist yet, as the default URL does; an explicit `mode=` is left as given.
fn sqlite_create_if_missing(url: &str) -> StoreResult<String> {
    let (location, query) = url.split_once('?').unwrap_or((url, ""));
    if query.split('&').any(|pair| pair.starts_with("mode=")) {
        return Ok(url.to_owned());
    }
    let path = location.trim_start_matches("sqlite:");
    let path = path.strip_prefix("//").unwrap_or(path);
    if !path.is_empty()
        && path != ":memory:"
        && let Some(parent) = std::path::Path::new(path).parent().filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)?;
    }
    let separator = if query.is_empty() { "?" } else { "&" };
    Ok(format!("{url}{separator}mode=rwc"))
}

/// Marks a query text assembled from constants (column lists, placeholders, table names of
/// fixed lists) as safe: no caller-supplied value is ever formatted into SQL.
fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// Numbers a query's parameters in text order for the backend: `$1, $2, …` on PostgreSQL,
/// anonymous `?` on SQLite. sqlx finds each named SQLite parameter with a linear scan of
/// SQLite's parameter names, which makes binding a long `IN` list or multi-row insert
/// quadratic. A query built with `Params` takes all its parameters from it and binds each
/// once, in text order.
pub(crate) struct Params {
    backend: Backend,
    n: usize,
}

impl Params {
    /// Parameters for a query on `backend`.
    pub(crate) fn new(backend: Backend) -> Self {
        Self { backend, n: 0 }
    }

    /// The next parameter.
    pub(crate) fn next(&mut self) -> String {
        self.n += 1;
        match self.backend {
            Backend::Sqlite => "?".to_owned(),
            Backend::Postgres => format!("${}", self.n),
        }
    }

    /// `count` parameters, comma-separated (an `IN` list).
    pub(crate) fn list(&mut self, count: usize) -> String {
        (0..count).map(|_| self.next()).collect::<Vec<_>>().join(",")
    }

    /// `(…), (…)`: `rows` rows of `columns` parameters (a multi-row `VALUES`).
    pub(crate) fn rows(&mut self, rows: usize, columns: usize) -> String {
        (0..rows).map(|_| format!("({})", self.list(columns))).collect::<Vec<_>>().join(", ")
    }
}

/// Milliseconds since the Unix epoch, the unit of every timestamp column.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
