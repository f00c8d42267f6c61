//! An account's life as the operator (through the admin API) or the IAM drives it:
//! suspension (the spec's account locking), deactivation, restoration; and the job that
//! deactivates idle accounts and deletes deactivated ones after their grace period.

use std::{sync::Arc, time::Duration};

use ruma::UserId;

use crate::{
    accounts::Accounts,
    config::Lifecycle,
    error::{Error, Result},
    rooms::Rooms,
    store::{Store, now_ms},
};

/// Deactivates an account: its sessions, devices and keys go, it leaves every room (after
/// the deactivation, so that it can join nothing meanwhile); `erase` also marks its
/// messages for erasure (hidden from those who join later).
pub async fn deactivate(accounts: &Accounts, rooms: &Rooms, user_id: &UserId, erase: bool) -> Result<()> {
    accounts.deactivate(user_id).await?;
    if erase {
        rooms.erase_user(user_id).await?;
    }
    rooms.leave_all(user_id).await
}

/// Suspends or reinstates an account. A suspended account keeps its rooms, devices and
/// keys, but every request of its sessions and every login is refused (`M_USER_LOCKED`)
/// until it is reinstated, when its sessions work again as they were.
pub async fn suspend(accounts: &Accounts, user_id: &UserId, suspended: bool) -> Result<()> {
    require_account(accounts, user_id).await?;
    accounts.set_locked(user_id, suspended).await
}

/// Brings a deactivated account back before its deletion: its owner may sign in again
/// (the rooms it left stay left).
pub async fn restore(accounts: &Accounts, user_id: &UserId) -> Result<()> {
    require_account(accounts, user_id).await?;
    accounts.reactivate(user_id).await
}

async fn require_account(accounts: &Accounts, user_id: &UserId) -> Result<()> {
    match accounts.account(user_id).await? {
        Some(_) => Ok(()),
        None => Err(Error::not_found("no such account")),
    }
}

/// Runs the lifecycle job every `check_interval_secs`, for as long as the server runs.
pub fn spawn_job(
    config: Lifecycle,
    store: Store,
    accounts: Arc<Accounts>,
    rooms: Arc<Rooms>,
    purge: Arc<crate::privacy::Purge>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(config.check_interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = run_job(&config, &store, &accounts, &rooms, &purge).await {
                tracing::warn!(error = %e, "the account lifecycle job failed; it runs again later");
            }
        }
    });
}

/// How long a deactivated account stays restorable when nothing else says: 6 weeks.
const DEFAULT_GRACE_SECS: u64 = 42 * 86_400;

/// One run: idle accounts deactivated, then deactivated accounts past their grace period
/// deleted, and what those that asked for erasure said and uploaded erased. Each account
/// is handled whole or not at all: a crash leaves the rest for the next run.
pub async fn run_job(
    config: &Lifecycle,
    store: &Store,
    accounts: &Accounts,
    rooms: &Rooms,
    purge: &crate::privacy::Purge,
) -> Result<()> {
    let now = now_ms();
    if let Some(after) = config.deactivate_inactive_after_secs {
        let cutoff = now - (after as i64).saturating_mul(1000);
        for user in store.inactive_accounts(cutoff).await? {
            let Ok(user_id) = UserId::parse(user) else { continue };
            deactivate(accounts, rooms, &user_id, false).await?;
            tracing::info!(%user_id, "idle account deactivated");
        }
    }
    let cutoff = now - (config.deletion_after_secs.unwrap_or(DEFAULT_GRACE_SECS) as i64).saturating_mul(1000);
    let deleted = store.accounts_to_delete(cutoff).await?;
    for user in &deleted {
        store.delete_account(user).await?;
        tracing::info!(user_id = %user, "deactivated account deleted after its grace period");
    }
    if !deleted.is_empty() {
        purge.erase_deleted().await?;
    }
    Ok(())
}
