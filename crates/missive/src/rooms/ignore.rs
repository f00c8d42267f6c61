//! Senders whose events are kept from some viewers: users a viewer ignores
//! (`m.ignored_user_list`), and erased users, whose messages only those who were in the
//! room when they were sent may still read.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use hashlink::LruCache;
use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use super::Rooms;
use crate::{error::Result, store::Store};

/// The account data type that lists the users a user ignores.
pub const IGNORED_USERS_TYPE: &str = "m.ignored_user_list";

/// Ignore lists kept in memory: every served event is checked against its viewer's list.
const IGNORE_LISTS_CACHED: usize = 4096;

/// Recently used ignore lists; `UserData` drops a user's entry when they change it.
pub struct IgnoredUsers(Mutex<LruCache<OwnedUserId, Arc<HashSet<String>>>>);

impl Default for IgnoredUsers {
    fn default() -> Self {
        Self(Mutex::new(LruCache::new(IGNORE_LISTS_CACHED)))
    }
}

impl IgnoredUsers {
    /// Drops a user's cached list.
    pub fn invalidate(&self, user_id: &UserId) {
        self.0.lock().expect("ignore cache poisoned").remove(user_id);
    }

    /// The users `user_id` ignores.
    pub async fn of(&self, store: &Store, user_id: &UserId) -> Result<Arc<HashSet<String>>> {
        if let Some(list) = self.0.lock().expect("ignore cache poisoned").get(user_id) {
            return Ok(list.clone());
        }
        let raw = store.account_data(user_id.as_str(), "", IGNORED_USERS_TYPE).await?;
        let content: Value = raw.and_then(|raw| serde_json::from_str(&raw).ok()).unwrap_or_default();
        let list: HashSet<String> = content
            .get("ignored_users")
            .and_then(Value::as_object)
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default();
        let list = Arc::new(list);
        self.0.lock().expect("ignore cache poisoned").insert(user_id.to_owned(), list.clone());
        Ok(list)
    }
}

impl Rooms {
    /// Loads the erased users (at start-up; they are few).
    pub async fn load_erased(&self) -> Result<()> {
        let erased = self.store.erased_users().await?;
        self.erased.lock().expect("erased lock poisoned").extend(erased);
        Ok(())
    }

    /// Marks a (deactivating) user's messages for erasure: from now on, users who were not
    /// in a room when one was sent see it redacted.
    pub async fn erase_user(&self, user_id: &UserId) -> Result<()> {
        self.store.set_erased(user_id.as_str()).await?;
        self.erased.lock().expect("erased lock poisoned").insert(user_id.to_string());
        tracing::info!(%user_id, "messages marked for erasure");
        Ok(())
    }

    /// Whether any user's messages are marked for erasure (most servers: none, and events
    /// need not be looked at).
    pub fn any_erased(&self) -> bool {
        !self.erased.lock().expect("erased lock poisoned").is_empty()
    }

    /// Whether a sender's messages are marked for erasure.
    pub fn is_erased(&self, sender: &str) -> bool {
        self.erased.lock().expect("erased lock poisoned").contains(sender)
    }

    /// Whether `user_id` ignores `sender`.
    pub async fn ignores(&self, user_id: &UserId, sender: &str) -> Result<bool> {
        Ok(self.ignored.of(&self.store, user_id).await?.contains(sender))
    }
}
