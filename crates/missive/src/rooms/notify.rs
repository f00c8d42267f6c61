//! Push rule evaluation when an event is stored: who gets a notification, who a highlight.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

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
    store::{Level, NewEvent, Notifications, Store},
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
pub struct PushRulesCache(Mutex<LruCache<OwnedUserId, UserRules>>);

/// A user's rule set, and whether it is the server's default one (nothing stored).
#[derive(Clone)]
struct UserRules {
    rules: Arc<Ruleset>,
    default: bool,
}

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
    Ok(load_rules(store, cache, user_id, remember).await?.rules)
}

async fn load_rules(store: &Store, cache: &PushRulesCache, user_id: &UserId, remember: bool) -> Result<UserRules> {
    if let Some(rules) = cache.0.lock().expect("push rules cache poisoned").get(user_id) {
        return Ok(rules.clone());
    }
    let stored = store
        .account_data(user_id.as_str(), "", PUSH_RULES_TYPE)
        .await?
        .and_then(|json| serde_json::from_str::<Value>(&json).ok())
        .and_then(|mut v| {
            let global = v.get_mut("global")?;
            hold_room_rule_ids(global);
            serde_json::from_value::<Ruleset>(global.take()).ok()
        });
    let rules = match stored {
        Some(rules) => UserRules { rules: Arc::new(rules), default: false },
        None => UserRules { rules: Arc::new(Ruleset::server_default(user_id)), default: true },
    };
    if remember {
        cache.0.lock().expect("push rules cache poisoned").insert(user_id.to_owned(), rules.clone());
    }
    Ok(rules)
}

/// ruma types the ID of a room rule as a room ID, where the spec's API takes any string
/// (Synapse keeps what it is given; clients and SyTest name such rules by alias). A room
/// rule whose ID is not a room ID can match no room; ruma's ruleset holds it under this
/// prefix, which no room ID carries (U+0001 is in no identifier's grammar).
const HELD_ROOM_RULE: &str = "!\u{1}";

/// The ID under which ruma's ruleset holds the room rule named `rule_id`.
pub fn held_room_rule_id(rule_id: &str) -> std::borrow::Cow<'_, str> {
    if rule_id.starts_with('!') { rule_id.into() } else { format!("{HELD_ROOM_RULE}{rule_id}").into() }
}

/// Renames the room rules of a ruleset's JSON to the IDs ruma's ruleset holds them under.
fn hold_room_rule_ids(ruleset: &mut Value) {
    for rule in ruleset.get_mut("room").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(id) = rule.get("rule_id").and_then(Value::as_str)
            && let std::borrow::Cow::Owned(held) = held_room_rule_id(id)
        {
            rule["rule_id"] = Value::String(held);
        }
    }
}

/// Gives the room rules of a rule's or ruleset's JSON back the IDs their owner chose.
pub fn show_room_rule_ids(json: &mut Value) {
    let show = |rule: &mut Value| {
        if let Some(id) = rule.get("rule_id").and_then(Value::as_str).and_then(|id| id.strip_prefix(HELD_ROOM_RULE)) {
            rule["rule_id"] = Value::String(id.to_owned());
        }
    };
    match json.get_mut("room").and_then(Value::as_array_mut) {
        Some(rules) => rules.iter_mut().for_each(show),
        None => show(json),
    }
}

/// A ruleset's JSON as clients are shown it.
pub fn ruleset_json(ruleset: &Ruleset) -> Value {
    // A ruleset of strings, booleans and lists always serialises.
    let mut json = serde_json::to_value(ruleset).unwrap_or_default();
    show_room_rule_ids(&mut json);
    json
}

/// What the evaluation of a batch needs of one local member.
struct Member {
    rules: UserRules,
    ctx: PushConditionRoomCtx,
    /// The member's localpart and display name, lowercased as the push conditions compare
    /// them; `None` when an event could name them without containing these strings.
    names: Option<[String; 2]>,
}

impl Member {
    /// Whether `event` (its JSON, lowercased) may mention the member: by user ID, localpart
    /// or display name, the only ways in which the default rules tell members apart.
    fn may_be_named(&self, lowered: &str) -> bool {
        self.names.as_ref().is_none_or(|names| names.iter().any(|n| lowered.contains(n.as_str())))
    }
}

/// A name as the conditions compare it (`str::to_lowercase`), or `None` when containment in
/// the event's lowercased JSON would not follow from a match: an empty name matches an empty
/// body, JSON escapes `"`, `\` and control characters, and a sigma lowercases by context.
fn searchable(name: &str) -> Option<String> {
    let hard = |c: char| matches!(c, '"' | '\\' | 'Σ' | 'σ' | 'ς') || c.is_control();
    (!name.is_empty() && !name.contains(hard)).then(|| name.to_lowercase())
}

/// The level an answer gives: 0 none, 1 notify, 2 notify and highlight.
fn level(actions: &[Action]) -> Level {
    if !actions.iter().any(Action::should_notify) {
        return 0;
    }
    let highlight = actions.iter().any(|a| matches!(a, Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes))));
    if highlight { 2 } else { 1 }
}

/// The first matching rule decides, as in `Ruleset::get_actions`.
async fn evaluate(member: &Member, event: &FlattenedJson) -> Level {
    for rule in member.rules.rules.iter() {
        if rule.applies(event, &member.ctx).await {
            return level(rule.actions());
        }
    }
    0
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
    /// events of a batch, sets each event's level and returns the changes to the counts.
    /// `joined_before` is who was joined before the batch; its membership events move
    /// members in and out as they come.
    ///
    /// Members with the default rules whom an event does not name all get the same answer,
    /// so it is evaluated once per event for all of them; the others are evaluated alone
    /// and become exceptions where their answer differs.
    pub async fn compute_notifications(
        &self,
        head: &RoomHead,
        joined_before: &HashSet<String>,
        events: &mut [NewEvent],
    ) -> Result<Notifications> {
        let member_count = UInt::try_from(head.joined.len() as u64).unwrap_or_default();
        let power_levels = PushConditionPowerLevelsCtx::from(Self::power_levels(head));
        let mut out = Notifications::default();
        let mut moved: HashMap<String, bool> = HashMap::new();
        let mut members: HashMap<String, Option<Member>> = HashMap::new();
        let is_local = |user: &str| UserId::parse(user).is_ok_and(|u| u.server_name() == self.server_name);
        // Events stored outside the timeline (soft-failed) notify no one.
        for event in events.iter_mut().filter(|e| e.stream_pos > 0) {
            let current: Vec<&String> = joined_before
                .iter()
                .filter(|u| moved.get(u.as_str()).copied().unwrap_or(true))
                .chain(moved.iter().filter(|(u, j)| **j && !joined_before.contains(u.as_str())).map(|(u, _)| u))
                .filter(|u| **u != event.sender)
                .collect();
            // The answers of the members evaluated alone; the others all get `shared`.
            let mut answers: Vec<(&String, Level)> = Vec::new();
            if !current.is_empty() {
                // Events are stored as this server serialised them: they parse.
                let raw = serde_json::from_str::<Raw<Value>>(&event.json).unwrap_or_else(|_| {
                    Raw::from_json(serde_json::value::RawValue::from_string("{}".into()).expect("valid JSON"))
                });
                let flat = FlattenedJson::from_raw(&raw);
                let lowered = event.json.to_lowercase();
                let mut shared: Option<Level> = None;
                for user in current {
                    if !members.contains_key(user.as_str()) {
                        let member = self.member(head, user, member_count, &power_levels).await?;
                        members.insert(user.clone(), member);
                    }
                    let Some(member) = members[user.as_str()].as_ref() else {
                        continue;
                    };
                    if member.rules.default && !member.may_be_named(&lowered) {
                        if shared.is_none() {
                            shared = Some(evaluate(member, &flat).await);
                        }
                    } else {
                        answers.push((user, evaluate(member, &flat).await));
                    }
                }
                // Any member's answer would do as the event's; the shared one spares rows.
                event.notify = shared.or_else(|| answers.first().map(|(_, l)| *l)).unwrap_or(0);
            }
            let generic = event.notify;
            out.add_event(generic);
            for (user, answer) in answers {
                if answer != generic {
                    out.differ(user, generic, answer);
                    out.exceptions.push((user.clone(), event.stream_pos, answer));
                }
            }
            let sender_joined =
                moved.get(&event.sender).copied().unwrap_or_else(|| joined_before.contains(&event.sender));
            if sender_joined && is_local(&event.sender) {
                out.differ(&event.sender, generic, 0);
            }
            if let (Some(membership), Some(user)) = (&event.membership, &event.state_key)
                && is_local(user)
            {
                let was = moved.get(user).copied().unwrap_or_else(|| joined_before.contains(user));
                let is = membership == "join";
                if is && !was {
                    out.joined(user, event.stream_pos);
                } else if was && !is {
                    out.left(user);
                }
                moved.insert(user.clone(), is);
            }
        }
        Ok(out)
    }

    /// A local member's rules and context for a batch; `None` for a remote user.
    async fn member(
        &self,
        head: &RoomHead,
        user: &str,
        member_count: UInt,
        power_levels: &PushConditionPowerLevelsCtx,
    ) -> Result<Option<Member>> {
        let Ok(user_id) = UserId::parse(user) else {
            return Ok(None);
        };
        if user_id.server_name() != self.server_name {
            return Ok(None);
        }
        let rules = load_rules(&self.store, &self.push_rules, &user_id, true).await?;
        let display_name = head
            .state_pdu("m.room.member", user_id.as_str())
            .and_then(|p| p.content_str("displayname"))
            .unwrap_or_else(|| user_id.localpart().to_owned());
        let names = searchable(user_id.localpart()).zip(searchable(&display_name)).map(|(a, b)| [a, b]);
        let ctx = PushConditionRoomCtx::new(head.room_id.clone(), member_count, user_id, display_name)
            .with_power_levels(power_levels.clone());
        Ok(Some(Member { rules, ctx, names }))
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
