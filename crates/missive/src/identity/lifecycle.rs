//! An account's life as the operator (through the admin API) or the IAM drives it:
//! suspension (the spec's account locking), deactivation, restoration.

use ruma::UserId;

use crate::{
    accounts::Accounts,
    error::{Error, Result},
    rooms::Rooms,
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
