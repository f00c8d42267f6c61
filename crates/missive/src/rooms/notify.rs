//! Push rule evaluation when an event is stored: who gets a notification, who a highlight.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, Weak},
};

use hashlink::LruCache;

use ruma::{
    OwnedEventId, OwnedUserId, RoomId, UInt, UserId,
    push::{
        Action, FlattenedJson, HighlightTweakValue, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset, Tweak,
    },
    serde::Raw,
};
use serde_json::Value;

use super::{RoomHead, Rooms, pdu::Pdu};
use crate::{
    error::Result,
    store::{Level, NewEvent, Notifications, PushCandidate, Store},
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
pub struct PushRulesCache {
    rules: Mutex<LruCache<OwnedUserId, UserRules>>,
    changes: Mutex<RuleChanges>,
}

/// The users whose rules changed lately, numbered by a generation that counts every change,
/// for the [`Audience`]s built before them.
#[derive(Default)]
struct RuleChanges {
    generation: u64,
    recent: VecDeque<(u64, OwnedUserId)>,
}

/// Changes of rules remembered: an audience older than these reads all its members again.
const RULE_CHANGES_KEPT: usize = 1024;

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
        Self { rules: Mutex::new(LruCache::new(PUSH_RULES_CACHED)), changes: Default::default() }
    }
}

impl PushRulesCache {
    /// Drops a user's cached rules, and records the change for the audiences that hold
    /// whether they keep the default rules.
    pub fn invalidate(&self, user_id: &UserId) {
        self.rules.lock().expect("push rules cache poisoned").remove(user_id);
        let mut changes = self.changes.lock().expect("push rule changes poisoned");
        changes.generation += 1;
        let generation = changes.generation;
        changes.recent.push_back((generation, user_id.to_owned()));
        if changes.recent.len() > RULE_CHANGES_KEPT {
            changes.recent.pop_front();
        }
    }

    /// The number of changes of rules so far.
    fn generation(&self) -> u64 {
        self.changes.lock().expect("push rule changes poisoned").generation
    }

    /// The users whose rules changed after `generation`, or `None` when the changes
    /// remembered no longer reach back that far.
    fn changed_since(&self, generation: u64) -> Option<HashSet<OwnedUserId>> {
        let changes = self.changes.lock().expect("push rule changes poisoned");
        if changes.generation == generation {
            return Some(HashSet::new());
        }
        let oldest = changes.recent.front().map(|(g, _)| *g)?;
        (oldest <= generation + 1)
            .then(|| changes.recent.iter().filter(|(g, _)| *g > generation).map(|(_, u)| u.clone()).collect())
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
    if let Some(rules) = cache.rules.lock().expect("push rules cache poisoned").get(user_id) {
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
        cache.rules.lock().expect("push rules cache poisoned").insert(user_id.to_owned(), rules.clone());
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

/// A local member as the notification pass sees them, kept in the room's [`Audience`]
/// while their member event and rules stay the same.
#[derive(Debug)]
struct Listener {
    user_id: OwnedUserId,
    /// The member event of the state the listener was read from.
    member_event: Option<OwnedEventId>,
    display_name: String,
    /// The member's localpart and display name, lowercased as the push conditions compare
    /// them; `None` when an event could name them without containing these strings.
    names: Option<[String; 2]>,
    /// Whether they keep the server's default rules. Their rule set itself stays in the
    /// bounded [`PushRulesCache`]: held here, a big room's would weigh megabytes.
    default: bool,
}

impl Listener {
    /// Whether `event` (its JSON, lowercased) may mention the member: by user ID, localpart
    /// or display name, the only ways in which the default rules tell members apart.
    fn may_be_named(&self, lowered: &str) -> bool {
        self.names.as_ref().is_none_or(|names| names.iter().any(|n| lowered.contains(n.as_str())))
    }
}

/// The local members of a room (joined before or after the batch it was built for) as the
/// notification pass sees them. Kept in the room's head so that a message to a big room
/// visits no member's state, rules or names again; rebuilt when the state or someone's
/// rules change, reusing every member whose member event and rules did not.
#[derive(Debug)]
pub struct Audience {
    /// The state it was read from; weak, so that it keeps no old state alive, yet keeps
    /// the address from being reused by another.
    state: Weak<HashMap<(String, String), OwnedEventId>>,
    rules_generation: u64,
    listeners: HashMap<String, Arc<Listener>>,
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

/// What the evaluation of one event needs besides the member.
struct EventCtx<'a> {
    room_id: &'a RoomId,
    member_count: UInt,
    power_levels: &'a PushConditionPowerLevelsCtx,
    event: &'a FlattenedJson,
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
    /// `head` is the batch's (after its events), `joined_before` who was joined before the
    /// batch; its membership events move members in and out as they come.
    ///
    /// Members with the default rules whom an event does not name all get the same answer,
    /// so it is evaluated once per event for all of them; the others are evaluated alone
    /// and become exceptions where their answer differs.
    pub async fn compute_notifications(
        &self,
        head: &mut RoomHead,
        joined_before: &HashSet<String>,
        events: &mut [NewEvent],
        pushes: &mut Vec<PushCandidate>,
    ) -> Result<Notifications> {
        let audience = self.audience(head, joined_before, events).await?;
        head.audience = Some(audience.clone());
        let member_count = UInt::try_from(head.joined.len() as u64).unwrap_or_default();
        let power_levels = PushConditionPowerLevelsCtx::from(Self::power_levels(head));
        let mut out = Notifications::default();
        let mut moved: HashMap<String, bool> = HashMap::new();
        let is_local = |user: &str| UserId::parse(user).is_ok_and(|u| u.server_name() == self.server_name);
        // Events stored outside the timeline (soft-failed) notify no one.
        for event in events.iter_mut().filter(|e| e.stream_pos > 0) {
            let current: Vec<(&String, &Arc<Listener>)> = audience
                .listeners
                .iter()
                .filter(|(user, _)| {
                    **user != event.sender
                        && moved.get(user.as_str()).copied().unwrap_or_else(|| joined_before.contains(user.as_str()))
                })
                .collect();
            // The answers of the members evaluated alone; the others all get `shared`.
            let mut answers: Vec<(&String, Level)> = Vec::new();
            if !current.is_empty() {
                // Events are stored as this server serialised them: they parse.
                let raw = serde_json::from_str::<Raw<Value>>(&event.json).unwrap_or_else(|_| {
                    Raw::from_json(serde_json::value::RawValue::from_string("{}".into()).expect("valid JSON"))
                });
                let flat = FlattenedJson::from_raw(&raw);
                let ctx = EventCtx { room_id: &head.room_id, member_count, power_levels: &power_levels, event: &flat };
                let lowered = event.json.to_lowercase();
                let mut shared: Option<Level> = None;
                let mut pushed: Vec<&String> = Vec::new();
                for (user, listener) in current {
                    if self.has_pusher(user) {
                        pushed.push(user);
                    }
                    if listener.default && !listener.may_be_named(&lowered) {
                        if shared.is_none() {
                            shared = Some(self.evaluate(listener, &ctx).await?);
                        }
                    } else {
                        answers.push((user, self.evaluate(listener, &ctx).await?));
                    }
                }
                // Any member's answer would do as the event's; the shared one spares rows.
                event.notify = shared.or_else(|| answers.first().map(|(_, l)| *l)).unwrap_or(0);
                for user in pushed {
                    let level = answers.iter().find(|(u, _)| *u == user).map(|(_, l)| *l).or(shared).unwrap_or(0);
                    if level >= 1 {
                        pushes.push(PushCandidate {
                            user_id: user.clone(),
                            room_id: head.room_id.to_string(),
                            event_id: event.event_id.clone(),
                            highlight: level >= 2,
                            sender: event.sender.clone(),
                            event_type: event.event_type.clone(),
                        });
                    }
                }
            }
            // An invitee is no member yet: their rules (`.m.rule.invite_for_me`) decide
            // whether their phone rings; counts are not theirs to keep.
            if let (Some("invite"), Some(invitee)) = (event.membership.as_deref(), event.state_key.as_ref())
                && is_local(invitee)
                && invitee != &event.sender
                && self.has_pusher(invitee)
            {
                let level = self.invite_level(head, invitee, member_count, &power_levels, event).await?;
                if level >= 1 {
                    pushes.push(PushCandidate {
                        user_id: invitee.clone(),
                        room_id: head.room_id.to_string(),
                        event_id: event.event_id.clone(),
                        highlight: level >= 2,
                        sender: event.sender.clone(),
                        event_type: event.event_type.clone(),
                    });
                }
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

    /// What an invite's push rules give its (local) invitee.
    async fn invite_level(
        &self,
        head: &RoomHead,
        invitee: &str,
        member_count: UInt,
        power_levels: &PushConditionPowerLevelsCtx,
        event: &NewEvent,
    ) -> Result<Level> {
        let Ok(user_id) = UserId::parse(invitee) else { return Ok(0) };
        let raw = serde_json::from_str::<Raw<Value>>(&event.json)
            .map_err(|e| crate::error::Error::Internal(format!("stored event JSON: {e}")))?;
        let flat = FlattenedJson::from_raw(&raw);
        let ctx = EventCtx { room_id: &head.room_id, member_count, power_levels, event: &flat };
        let rules = load_rules(&self.store, &self.push_rules, &user_id, true).await?;
        let listener = Listener {
            display_name: user_id.localpart().to_owned(),
            member_event: None,
            names: None,
            default: rules.default,
            user_id,
        };
        self.evaluate(&listener, &ctx).await
    }

    /// The first matching rule of the member's set decides, as in `Ruleset::get_actions`.
    async fn evaluate(&self, listener: &Listener, ctx: &EventCtx<'_>) -> Result<Level> {
        let rules = load_rules(&self.store, &self.push_rules, &listener.user_id, true).await?;
        let room = PushConditionRoomCtx::new(
            ctx.room_id.to_owned(),
            ctx.member_count,
            listener.user_id.clone(),
            listener.display_name.clone(),
        )
        .with_power_levels(ctx.power_levels.clone());
        for rule in rules.rules.iter() {
            if rule.applies(ctx.event, &room).await {
                return Ok(level(rule.actions()));
            }
        }
        Ok(0)
    }

    /// The audience of a batch: the head's own when neither its state nor anyone's rules
    /// changed since it was built, else a new one reusing the members that did not change.
    async fn audience(
        &self,
        head: &RoomHead,
        joined_before: &HashSet<String>,
        events: &[NewEvent],
    ) -> Result<Arc<Audience>> {
        // Read first: a change of rules during the build shows as a newer generation.
        let generation = self.push_rules.generation();
        let old = head.audience.as_ref();
        if let Some(audience) = old
            && audience.rules_generation == generation
            && std::ptr::eq(audience.state.as_ptr(), Arc::as_ptr(&head.state))
        {
            return Ok(audience.clone());
        }
        // `None` when more rules changed than the cache remembers: every member is read again.
        let changed = old.and_then(|a| self.push_rules.changed_since(a.rules_generation));
        let joins =
            events.iter().filter(|e| e.membership.as_deref() == Some("join")).filter_map(|e| e.state_key.as_ref());
        let mut listeners: HashMap<String, Arc<Listener>> = HashMap::with_capacity(head.joined.len());
        let mut fresh: Vec<(OwnedUserId, Option<OwnedEventId>)> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::with_capacity(head.joined.len());
        for user in head.joined.iter().chain(joined_before.iter()).chain(joins) {
            if !seen.insert(user) {
                continue;
            }
            let Ok(user_id) = UserId::parse(user) else {
                continue;
            };
            if user_id.server_name() != self.server_name {
                continue;
            }
            let member_event = head.state_id("m.room.member", user).cloned();
            let kept = old
                .and_then(|a| a.listeners.get(user))
                .filter(|l| l.member_event == member_event && changed.as_ref().is_some_and(|c| !c.contains(&user_id)));
            match kept {
                Some(listener) => {
                    listeners.insert(user.clone(), listener.clone());
                }
                None => fresh.push((user_id, member_event)),
            }
        }
        // Display names from the member events: those the head has parsed, the others read
        // together (a head loaded after a restart has parsed none).
        let unparsed: Vec<String> = fresh
            .iter()
            .filter_map(|(_, e)| e.as_ref())
            .filter(|e| !head.pdus.contains_key(*e))
            .map(|e| e.to_string())
            .collect();
        let mut names: HashMap<String, Option<String>> = HashMap::new();
        if !unparsed.is_empty() {
            for row in self.store.events(&unparsed).await? {
                let pdu = Pdu::from_row(&row)?;
                names.insert(row.event_id, pdu.content_str("displayname"));
            }
        }
        for (user_id, member_event) in fresh {
            let display_name = member_event
                .as_ref()
                .and_then(|id| match head.pdus.get(id) {
                    Some(pdu) => pdu.content_str("displayname"),
                    None => names.get(id.as_str()).cloned().flatten(),
                })
                .unwrap_or_else(|| user_id.localpart().to_owned());
            let rules = load_rules(&self.store, &self.push_rules, &user_id, true).await?;
            let names = searchable(user_id.localpart()).zip(searchable(&display_name)).map(|(a, b)| [a, b]);
            let listener = Listener { member_event, display_name, names, default: rules.default, user_id };
            listeners.insert(listener.user_id.to_string(), Arc::new(listener));
        }
        Ok(Arc::new(Audience { state: Arc::downgrade(&head.state), rules_generation: generation, listeners }))
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
