//! Per-user data: account data, receipts, read markers, filters.

use std::sync::Arc;

use ruma::{
    EventId, RoomId, UserId,
    api::client::filter::FilterDefinition,
    push::{Action, AnyPushRule, Ruleset},
};
use serde_json::{Value, json};

use crate::{
    error::{Error, Result},
    rooms::{
        ignore::{IGNORED_USERS_TYPE, IgnoredUsers},
        notify::{PUSH_RULES_TYPE, PushRulesCache, load_ruleset, ruleset_json, show_room_rule_ids},
    },
    store::Store,
    sync::stream::Streams,
};

/// The user data service.
pub struct UserData {
    store: Store,
    streams: Arc<Streams>,
    push_rules: Arc<PushRulesCache>,
    ignored: Arc<IgnoredUsers>,
    tag_edits: tokio::sync::Mutex<()>,
}

/// The room account data type that holds a user's tags for the room.
const TAG_TYPE: &str = "m.tag";

impl UserData {
    /// Creates the service.
    pub fn new(
        store: Store,
        streams: Arc<Streams>,
        push_rules: Arc<PushRulesCache>,
        ignored: Arc<IgnoredUsers>,
    ) -> Self {
        Self { store, streams, push_rules, ignored, tag_edits: Default::default() }
    }

    /// Sets global (`room_id = None`) or room account data.
    pub async fn set_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
        content: &Value,
    ) -> Result<()> {
        if !content.is_object() {
            return Err(Error::bad_json("account data content must be a JSON object"));
        }
        if data_type == "m.fully_read" || data_type == "m.push_rules" {
            return Err(Error::BadJson(format!("{data_type} cannot be set through this endpoint")));
        }
        self.put(user_id, room_id, data_type, content).await
    }

    /// Writes account data without the client-facing restrictions (push rules, read markers).
    pub async fn put(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
        content: &Value,
    ) -> Result<()> {
        let guard = self.streams.allocate_for(crate::sync::stream::Scope::user(user_id.as_str()));
        self.store
            .set_account_data(
                user_id.as_str(),
                room_id.map_or("", |r| r.as_str()),
                data_type,
                &content.to_string(),
                guard.pos(),
            )
            .await?;
        if data_type == IGNORED_USERS_TYPE && room_id.is_none() {
            self.ignored.invalidate(user_id);
        }
        Ok(())
    }

    /// Reads account data.
    pub async fn account_data(&self, user_id: &UserId, room_id: Option<&RoomId>, data_type: &str) -> Result<Value> {
        let raw = self
            .store
            .account_data(user_id.as_str(), room_id.map_or("", |r| r.as_str()), data_type)
            .await?
            .ok_or_else(|| Error::not_found("account data not found"))?;
        serde_json::from_str(&raw).map_err(|e| Error::Internal(e.to_string()))
    }

    /// A room's tags for the user: the `tags` of their `m.tag` room account data.
    pub async fn tags(&self, user_id: &UserId, room_id: &RoomId) -> Result<serde_json::Map<String, Value>> {
        let raw = self.store.account_data(user_id.as_str(), room_id.as_str(), TAG_TYPE).await?;
        let content: Value = raw.and_then(|raw| serde_json::from_str(&raw).ok()).unwrap_or_default();
        Ok(content.get("tags").and_then(Value::as_object).cloned().unwrap_or_default())
    }

    /// Adds or replaces one tag (`info` is its `order` and whatever else the client keeps), or
    /// removes it (`info` = `None`); clients see the new `m.tag` in `/sync`.
    pub async fn edit_tag(&self, user_id: &UserId, room_id: &RoomId, tag: &str, info: Option<Value>) -> Result<()> {
        // Tag edits read, change and write one document: concurrent edits must not lose one.
        let _edit = self.tag_edits.lock().await;
        let mut tags = self.tags(user_id, room_id).await?;
        match info {
            Some(info) => {
                if !info.is_object() {
                    return Err(Error::bad_json("tag info must be a JSON object"));
                }
                if info.get("order").is_some_and(|order| !order.is_number()) {
                    return Err(Error::bad_json("tag order must be a number"));
                }
                tags.insert(tag.to_owned(), info);
            }
            None => {
                tags.remove(tag);
            }
        }
        self.put(user_id, Some(room_id), TAG_TYPE, &json!({ "tags": tags })).await
    }

    /// Carries a user's settings for a room over to the room that replaced it (on joining
    /// it): their tags, and the room's place in their direct chats (`m.direct`).
    pub async fn transfer_to_upgraded_room(&self, user_id: &UserId, old: &RoomId, new: &RoomId) -> Result<()> {
        let tags = self.tags(user_id, old).await?;
        if !tags.is_empty() && self.tags(user_id, new).await?.is_empty() {
            self.put(user_id, Some(new), TAG_TYPE, &json!({ "tags": tags })).await?;
        }
        let raw = self.store.account_data(user_id.as_str(), "", "m.direct").await?;
        if let Some(mut direct) = raw.and_then(|raw| serde_json::from_str::<Value>(&raw).ok()) {
            let mut changed = false;
            for rooms in direct.as_object_mut().into_iter().flat_map(|d| d.values_mut()) {
                if let Some(list) = rooms.as_array_mut()
                    && list.iter().any(|r| r == old.as_str())
                    && !list.iter().any(|r| r == new.as_str())
                {
                    list.push(json!(new));
                    changed = true;
                }
            }
            if changed {
                self.put(user_id, None, "m.direct", &direct).await?;
            }
        }
        Ok(())
    }

    /// Records a receipt (`m.read`, `m.read.private`) for an event of the room.
    pub async fn set_receipt(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        receipt_type: &str,
        event_id: &EventId,
        thread_id: &str,
    ) -> Result<()> {
        let membership = self.store.membership(room_id.as_str(), user_id.as_str()).await?;
        if membership.is_none_or(|m| m.membership != "join") {
            return Err(Error::forbidden("you are not in this room"));
        }
        let event = self
            .store
            .event(event_id.as_str())
            .await?
            .filter(|e| e.room_id == room_id.as_str())
            .ok_or_else(|| Error::not_found("event not found"))?;
        let guard = self.streams.allocate_for(crate::sync::stream::Scope::receipt(room_id.as_str()));
        self.store
            .set_receipt(
                room_id.as_str(),
                user_id.as_str(),
                receipt_type,
                thread_id,
                event_id.as_str(),
                event.stream_pos,
                guard.pos(),
            )
            .await?;
        Ok(())
    }

    /// Stores a filter.
    pub async fn create_filter(&self, user_id: &UserId, filter: &FilterDefinition) -> Result<String> {
        let json = serde_json::to_string(filter).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(self.store.insert_filter(user_id.as_str(), &json).await?.to_string())
    }

    /// Loads a filter.
    pub async fn filter(&self, user_id: &UserId, filter_id: &str) -> Result<FilterDefinition> {
        let id: i64 = filter_id.parse().map_err(|_| Error::not_found("filter not found"))?;
        let json =
            self.store.filter(user_id.as_str(), id).await?.ok_or_else(|| Error::not_found("filter not found"))?;
        serde_json::from_str(&json).map_err(|e| Error::Internal(e.to_string()))
    }

    /// A user's push rules (stored or default).
    pub async fn push_rules(&self, user_id: &UserId) -> Result<Arc<Ruleset>> {
        load_ruleset(&self.store, &self.push_rules, user_id, false).await
    }

    /// Changes a user's push rules with `edit` and stores them; clients see the change as
    /// `m.push_rules` account data in `/sync`.
    pub async fn update_push_rules(
        &self,
        user_id: &UserId,
        edit: impl FnOnce(&mut Ruleset) -> Result<()>,
    ) -> Result<()> {
        let mut ruleset = Ruleset::clone(&*self.push_rules(user_id).await?);
        edit(&mut ruleset)?;
        self.put(user_id, None, PUSH_RULES_TYPE, &json!({ "global": ruleset_json(&ruleset) })).await?;
        self.push_rules.invalidate(user_id);
        Ok(())
    }
}

/// Refuses push rule actions the spec does not define: a rule whose action the server
/// cannot perform would silently do nothing. The deprecated `dont_notify` and `coalesce`
/// are still sent by older clients and mean "no notification".
pub fn check_actions(actions: &[Action]) -> Result<()> {
    for action in actions {
        if let Action::_Custom(_) = action {
            let name = serde_json::to_value(action).unwrap_or(Value::Null);
            if !matches!(name.as_str(), Some("dont_notify" | "coalesce")) {
                return Err(Error::BadJson(format!("unknown push rule action {name}")));
            }
        }
    }
    Ok(())
}

/// The JSON of one push rule, as the push rules API serves it.
pub fn push_rule_json(rule: AnyPushRule) -> Value {
    let value = match rule {
        AnyPushRule::Override(r) | AnyPushRule::Underride(r) => serde_json::to_value(r),
        AnyPushRule::Content(r) => serde_json::to_value(r),
        AnyPushRule::Room(r) => serde_json::to_value(r),
        AnyPushRule::Sender(r) => serde_json::to_value(r),
        _ => Ok(Value::Null),
    };
    let mut json = value.unwrap_or(Value::Null);
    show_room_rule_ids(&mut json);
    json
}
