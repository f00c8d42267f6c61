//! Push rule evaluation when an event is stored: who gets a notification, who a highlight.

use std::sync::{Arc, Mutex};

use hashlink::LruCache;

use ruma::{
    OwnedUserId, UInt, UserId,
    push::{
        Action, FlattenedJson, HighlightTweakValue, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset, Tweak,
    },
    serde::Raw,
};
use serde_json::Value;

use super::{RoomHead, Rooms};
use crate::{
    error::Result,
    store::{NewEvent, PushAction, Store},
};

/// The account data type under which a user's push rules are kept.
pub const PUSH_RULES_TYPE: &str = "m.push_rules";

/// Parsed push rule sets of the users most recently notified, shared by the writers of
/// rules and the evaluation on every event; `UserData::update_push_rules` invalidates a
/// user's entry when it stores new rules.
///
/// Bounded: a parsed rule set weighs about 6 KiB (even the default one names its user), so
/// an unbounded map would hold 60 MiB for 10,000 accounts. The bound covers the members of
/// a big room; beyond it, rule sets are read again.
pub struct PushRulesCache(Mutex<LruCache<OwnedUserId, Arc<Ruleset>>>);

/// Rule sets kept by [`PushRulesCache`].
const PUSH_RULES_CACHED: usize = 2048;

impl Default for PushRulesCache {
    fn default() -> Self {
        Self(Mutex::new(LruCache::new(PUSH_RULES_CACHED)))
    }
}

impl PushRulesCache {
    /// Drops a user's cached rules.
    pub fn invalidate(&self, user_id: &UserId) {
        self.0.lock().expect("push rules cache poisoned").remove(user_id);
    }
}

/// A user's push rules: their stored set, or the spec's defaults. `remember` keeps them in
/// the cache (evaluation does; a one-off read such as an initial sync does not).
pub async fn load_ruleset(
    store: &Store,
    cache: &PushRulesCache,
    user_id: &UserId,
    remember: bool,
) -> Result<Arc<Ruleset>> {
    if let Some(rules) = cache.0.lock().expect("push rules cache poisoned").get(user_id) {
        return Ok(rules.clone());
    }
    let stored = store.account_data(user_id.as_str(), "", PUSH_RULES_TYPE).await?;
    let rules = Arc::new(
        stored
            .and_then(|json| serde_json::from_str::<Value>(&json).ok())
            .and_then(|v| serde_json::from_value::<Ruleset>(v.get("global")?.clone()).ok())
            .unwrap_or_else(|| Ruleset::server_default(user_id)),
    );
    if remember {
        cache.0.lock().expect("push rules cache poisoned").insert(user_id.to_owned(), rules.clone());
    }
    Ok(rules)
}

impl Rooms {
    /// A user's push rules, kept in the cache for the next evaluations.
    pub async fn push_ruleset(&self, user_id: &UserId) -> Result<Arc<Ruleset>> {
        load_ruleset(&self.store, &self.push_rules, user_id, true).await
    }

    /// A user's push rules for a one-off read, without filling the cache.
    pub async fn push_ruleset_once(&self, user_id: &UserId) -> Result<Arc<Ruleset>> {
        load_ruleset(&self.store, &self.push_rules, user_id, false).await
    }

    /// Evaluates the push rules of the room's joined local members (but the sender) for the
    /// events of a batch and records the notifications they owe.
    pub async fn compute_push_actions(&self, head: &RoomHead, events: &[NewEvent]) -> Result<Vec<PushAction>> {
        let members = &head.joined;
        let member_count = UInt::try_from(members.len() as u64).unwrap_or_default();
        let power_levels = PushConditionPowerLevelsCtx::from(Self::power_levels(head));
        // Each event is flattened once for all members, not once per member.
        let flattened: Vec<(&NewEvent, FlattenedJson)> = events
            .iter()
            .filter_map(|e| {
                serde_json::from_str::<Raw<Value>>(&e.json).ok().map(|raw| (e, FlattenedJson::from_raw(&raw)))
            })
            .collect();
        let mut actions = Vec::new();
        for member in members.iter() {
            let Ok(user_id) = UserId::parse(member) else {
                continue;
            };
            if user_id.server_name() != self.server_name {
                continue;
            }
            if events.iter().all(|e| e.sender == *member) {
                continue;
            }
            let ruleset = self.push_ruleset(&user_id).await?;
            let display_name = head
                .state_pdu("m.room.member", user_id.as_str())
                .and_then(|p| p.content_str("displayname"))
                .unwrap_or_else(|| user_id.localpart().to_owned());
            let ctx = PushConditionRoomCtx::new(head.room_id.clone(), member_count, user_id.clone(), display_name)
                .with_power_levels(power_levels.clone());
            for (event, flat) in flattened.iter().filter(|(e, _)| e.sender != *member) {
                // The first matching rule decides, as in `Ruleset::get_actions`.
                let mut found: &[Action] = &[];
                for rule in ruleset.iter() {
                    if rule.applies(flat, &ctx).await {
                        found = rule.actions();
                        break;
                    }
                }
                if !found.iter().any(Action::should_notify) {
                    continue;
                }
                let highlight =
                    found.iter().any(|a| matches!(a, Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes))));
                actions.push(PushAction {
                    user_id: member.clone(),
                    event_pos: event.stream_pos,
                    thread_id: event.thread_root.clone().unwrap_or_default(),
                    highlight,
                });
            }
        }
        Ok(actions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ruleset_survives_a_json_round_trip() {
        let user = ruma::user_id!("@a:x");
        let rules = Ruleset::server_default(user);
        let json = serde_json::to_value(&rules).unwrap();
        let back = serde_json::from_value::<Ruleset>(json);
        assert!(back.is_ok(), "{back:?}");
    }
}
