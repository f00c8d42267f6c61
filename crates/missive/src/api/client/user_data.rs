//! Account data, filters, push rules, typing, receipts and read markers.

use std::time::Duration;

use axum::{Router, response::Response};
use ruma::api::client::{
    config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
    filter::{create_filter, get_filter},
    push::{
        delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
        get_pushrules_global_scope, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
    },
    read_marker::set_read_marker,
    receipt::create_receipt,
    tag::{create_tag, delete_tag, get_tags},
    typing::create_typing_event,
};
use ruma::push::NewPushRule;
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        ruma::{Authenticated, Ruma, json, route},
    },
    error::{Error, Result},
    rooms::notify::ruleset_json,
};

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = route(router, set_global);
    let router = route(router, get_global);
    let router = route(router, set_room);
    let router = route(router, get_room);
    let router = route(router, create_filter);
    let router = route(router, get_filter);
    let router = route(router, push_rules);
    let router = route(router, push_rules_global);
    let router = route(router, push_rule);
    let router = route(router, set_push_rule);
    let router = route(router, delete_push_rule);
    let router = route(router, push_rule_enabled);
    let router = route(router, set_push_rule_enabled);
    let router = route(router, push_rule_actions);
    let router = route(router, set_push_rule_actions);
    let mut router = route(router, get_tags);
    for version in ["r0", "v3"] {
        router = router.route(
            &format!("/_matrix/client/{version}/pushrules/global/{{kind}}/"),
            axum::routing::get(push_rules_of_kind),
        );
    }
    let router = route(router, put_tag);
    let router = route(router, remove_tag);
    let router = route(router, receipt);
    let router = route(router, read_markers);
    // ruma 0.16 requires `timeout` with `typing: true`; the spec makes it optional, and
    // clients (SyTest's fixtures among them) leave it out. Supply the usual 30 s.
    let typing_routes = route(Router::new(), typing).layer(axum::middleware::map_request(default_typing_timeout));
    router.merge(typing_routes)
}

/// Longest typing body read by the layer below; a typing request is a few bytes.
const TYPING_BODY_LIMIT: usize = 4096;

async fn default_typing_timeout(req: axum::extract::Request) -> axum::extract::Request {
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    let bytes = axum::body::to_bytes(body, TYPING_BODY_LIMIT).await.unwrap_or_default();
    let patched = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut body))
            if body.get("typing") == Some(&Value::Bool(true)) && !body.contains_key("timeout") =>
        {
            body.insert("timeout".into(), json!(30_000));
            serde_json::to_vec(&body).map(axum::body::Bytes::from).unwrap_or(bytes)
        }
        _ => bytes,
    };
    axum::extract::Request::from_parts(parts, axum::body::Body::from(patched))
}

fn own(req_user: &ruma::UserId, id: &crate::accounts::Identity) -> Result<()> {
    if req_user != id.user_id {
        return Err(Error::forbidden("you can only access your own account data"));
    }
    Ok(())
}

fn body_object(bytes: &[u8]) -> Result<Value> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| Error::bad_json(e.to_string()))?;
    if !value.is_object() {
        return Err(Error::bad_json("body must be a JSON object"));
    }
    Ok(value)
}

/// # PUT /_matrix/client/v3/user/{userId}/account_data/{type}
async fn set_global(state: AppState, req: Ruma<set_global_account_data::v3::Request>) -> Result<Response> {
    own(&req.body.user_id, req.identity())?;
    let content = body_object(&req.json)?;
    state.user_data.set_account_data(&req.identity().user_id, None, &req.body.event_type.to_string(), &content).await?;
    Ok(json(json!({})))
}

/// # GET /_matrix/client/v3/user/{userId}/account_data/{type}
async fn get_global(state: AppState, req: Ruma<get_global_account_data::v3::Request>) -> Result<Response> {
    own(&req.body.user_id, req.identity())?;
    Ok(json(state.user_data.account_data(&req.identity().user_id, None, &req.body.event_type.to_string()).await?))
}

/// # PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}
async fn set_room(state: AppState, req: Ruma<set_room_account_data::v3::Request>) -> Result<Response> {
    own(&req.body.user_id, req.identity())?;
    let content = body_object(&req.json)?;
    state
        .user_data
        .set_account_data(&req.identity().user_id, Some(&req.body.room_id), &req.body.event_type.to_string(), &content)
        .await?;
    Ok(json(json!({})))
}

/// # GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}
async fn get_room(state: AppState, req: Ruma<get_room_account_data::v3::Request>) -> Result<Response> {
    own(&req.body.user_id, req.identity())?;
    let data = state
        .user_data
        .account_data(&req.identity().user_id, Some(&req.body.room_id), &req.body.event_type.to_string())
        .await?;
    Ok(json(data))
}

/// # GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags
async fn get_tags(state: AppState, req: Ruma<get_tags::v3::Request>) -> Result<Response> {
    own(&req.body.user_id, req.identity())?;
    let tags = state.user_data.tags(&req.identity().user_id, &req.body.room_id).await?;
    Ok(json(json!({ "tags": tags })))
}

/// # PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}
async fn put_tag(state: AppState, req: Ruma<create_tag::v3::Request>) -> Result<Response> {
    own(&req.body.user_id, req.identity())?;
    let info = body_object(&req.json)?;
    state.user_data.edit_tag(&req.identity().user_id, &req.body.room_id, &req.body.tag, Some(info)).await?;
    Ok(json(json!({})))
}

/// # DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}
async fn remove_tag(state: AppState, req: Ruma<delete_tag::v3::Request>) -> Result<Response> {
    own(&req.body.user_id, req.identity())?;
    state.user_data.edit_tag(&req.identity().user_id, &req.body.room_id, &req.body.tag, None).await?;
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/user/{userId}/filter
async fn create_filter(state: AppState, req: Ruma<create_filter::v3::Request>) -> Result<Response> {
    own(&req.body.user_id, req.identity())?;
    let id = state.user_data.create_filter(&req.identity().user_id, &req.body.filter).await?;
    Ok(json(json!({ "filter_id": id })))
}

/// # GET /_matrix/client/v3/user/{userId}/filter/{filterId}
async fn get_filter(state: AppState, req: Ruma<get_filter::v3::Request>) -> Result<Response> {
    own(&req.body.user_id, req.identity())?;
    let filter = state.user_data.filter(&req.identity().user_id, &req.body.filter_id).await?;
    Ok(json(serde_json::to_value(filter).map_err(|e| Error::Internal(e.to_string()))?))
}

/// # GET /_matrix/client/v3/pushrules/
async fn push_rules(state: AppState, req: Ruma<get_pushrules_all::v3::Request>) -> Result<Response> {
    let ruleset = state.user_data.push_rules(&req.identity().user_id).await?;
    Ok(json(json!({ "global": ruleset_json(&ruleset) })))
}

/// # GET /_matrix/client/v3/pushrules/global/
async fn push_rules_global(state: AppState, req: Ruma<get_pushrules_global_scope::v3::Request>) -> Result<Response> {
    let ruleset = state.user_data.push_rules(&req.identity().user_id).await?;
    Ok(json(ruleset_json(&ruleset)))
}

/// # GET /_matrix/client/v3/pushrules/global/{kind}/
///
/// The rules of one kind, as Synapse serves them (clients and SyTest list a kind this way).
async fn push_rules_of_kind(
    axum::extract::State(state): axum::extract::State<AppState>,
    Authenticated(id): Authenticated,
    axum::extract::Path(kind): axum::extract::Path<String>,
) -> Result<Response> {
    if !matches!(kind.as_str(), "override" | "content" | "room" | "sender" | "underride" | "postcontent") {
        return Err(Error::Unknown(format!("unknown push rule kind {kind}")));
    }
    let ruleset = state.user_data.push_rules(&id.user_id).await?;
    Ok(json(ruleset_json(&ruleset).get(&kind).cloned().unwrap_or_else(|| json!([]))))
}

async fn find_rule(
    state: &AppState,
    user: &ruma::UserId,
    kind: &ruma::push::RuleKind,
    rule_id: &str,
) -> Result<ruma::push::AnyPushRule> {
    let ruleset = state.user_data.push_rules(user).await?;
    ruleset.get(kind.clone(), rule_id).map(|r| r.to_owned()).ok_or_else(|| Error::not_found("push rule not found"))
}

/// # GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
async fn push_rule(state: AppState, req: Ruma<get_pushrule::v3::Request>) -> Result<Response> {
    let rule = find_rule(&state, &req.identity().user_id, &req.body.kind, &req.body.rule_id).await?;
    Ok(json(crate::user_data::push_rule_json(rule)))
}

/// # PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
async fn set_push_rule(state: AppState, req: Ruma<set_pushrule::v3::Request>) -> Result<Response> {
    let b = req.body;
    let actions = match &b.rule {
        NewPushRule::Override(r) | NewPushRule::Underride(r) => &r.actions,
        NewPushRule::Content(r) => &r.actions,
        NewPushRule::Room(r) => &r.actions,
        NewPushRule::Sender(r) => &r.actions,
        _ => &Vec::new(),
    };
    crate::user_data::check_actions(actions)?;
    let (after, before) = (b.after.clone(), b.before.clone());
    state
        .user_data
        .update_push_rules(&req.identity.expect("authenticated endpoint").user_id, move |rules| {
            rules.insert(b.rule, after.as_deref(), before.as_deref()).map_err(|e| match e {
                ruma::push::InsertPushRuleError::UnknownRuleId => Error::not_found(e.to_string()),
                e => Error::BadJson(e.to_string()),
            })
        })
        .await?;
    Ok(json(json!({})))
}

/// # DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}
async fn delete_push_rule(state: AppState, req: Ruma<delete_pushrule::v3::Request>) -> Result<Response> {
    let b = &req.body;
    state
        .user_data
        .update_push_rules(&req.identity().user_id, |rules| {
            rules.remove(b.kind.clone(), &b.rule_id).map_err(|e| match e {
                ruma::push::RemovePushRuleError::NotFound => Error::not_found(e.to_string()),
                e => Error::forbidden(e.to_string()),
            })
        })
        .await?;
    Ok(json(json!({})))
}

/// # GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
async fn push_rule_enabled(state: AppState, req: Ruma<get_pushrule_enabled::v3::Request>) -> Result<Response> {
    let rule = find_rule(&state, &req.identity().user_id, &req.body.kind, &req.body.rule_id).await?;
    Ok(json(json!({ "enabled": rule.enabled() })))
}

/// # PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled
async fn set_push_rule_enabled(state: AppState, req: Ruma<set_pushrule_enabled::v3::Request>) -> Result<Response> {
    let b = &req.body;
    state
        .user_data
        .update_push_rules(&req.identity().user_id, |rules| {
            rules.set_enabled(b.kind.clone(), &b.rule_id, b.enabled).map_err(|e| Error::not_found(e.to_string()))
        })
        .await?;
    Ok(json(json!({})))
}

/// # GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions
async fn push_rule_actions(state: AppState, req: Ruma<get_pushrule_actions::v3::Request>) -> Result<Response> {
    let rule = find_rule(&state, &req.identity().user_id, &req.body.kind, &req.body.rule_id).await?;
    Ok(json(json!({ "actions": rule.actions() })))
}

/// # PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions
async fn set_push_rule_actions(state: AppState, req: Ruma<set_pushrule_actions::v3::Request>) -> Result<Response> {
    let b = &req.body;
    crate::user_data::check_actions(&b.actions)?;
    state
        .user_data
        .update_push_rules(&req.identity().user_id, |rules| {
            rules
                .set_actions(b.kind.clone(), &b.rule_id, b.actions.clone())
                .map_err(|e| Error::not_found(e.to_string()))
        })
        .await?;
    Ok(json(json!({})))
}

/// # PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}
async fn typing(state: AppState, req: Ruma<create_typing_event::v3::Request>) -> Result<Response> {
    let id = req.identity();
    if req.body.user_id != id.user_id {
        return Err(Error::forbidden("you can only set your own typing state"));
    }
    let membership = state.store.membership(req.body.room_id.as_str(), id.user_id.as_str()).await?;
    if membership.is_none_or(|m| m.membership != "join") {
        return Err(Error::forbidden("you are not in this room"));
    }
    let timeout = match req.body.state {
        create_typing_event::v3::Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    state.sync.typing.set(&req.body.room_id, &id.user_id, timeout.map(|t: Duration| t));
    let servers = state.rooms.resident_servers(req.body.room_id.as_str()).await?;
    let content = json!({ "room_id": req.body.room_id, "user_id": id.user_id, "typing": timeout.is_some() });
    state.federation.queue_edu(&servers, "m.typing", content);
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}
async fn receipt(state: AppState, req: Ruma<create_receipt::v3::Request>) -> Result<Response> {
    use ruma::events::receipt::ReceiptThread;
    let id = req.identity();
    let thread = match &req.body.thread {
        ReceiptThread::Unthreaded => String::new(),
        ReceiptThread::Main => "main".to_owned(),
        ReceiptThread::Thread(root) => root.to_string(),
        _ => return Err(Error::invalid_param("unknown thread_id")),
    };
    let kind = req.body.receipt_type.to_string();
    match kind.as_str() {
        "m.read" | "m.read.private" => {
            state.user_data.set_receipt(&id.user_id, &req.body.room_id, &kind, &req.body.event_id, &thread).await?;
            state.push.badge(&id.user_id);
            // A private receipt stays on this server.
            if kind == "m.read" {
                let servers = state.rooms.resident_servers(req.body.room_id.as_str()).await?;
                let mut data = json!({ "ts": crate::store::now_ms() });
                if !thread.is_empty() {
                    data["thread_id"] = json!(thread);
                }
                let receipt = json!({ "event_ids": [req.body.event_id], "data": data });
                let content = json!({ req.body.room_id.as_str(): { "m.read": { id.user_id.as_str(): receipt } } });
                state.federation.queue_edu(&servers, "m.receipt", content);
            }
        }
        "m.fully_read" => {
            if !thread.is_empty() {
                return Err(Error::bad_json("m.fully_read cannot be threaded"));
            }
            let content = json!({ "event_id": req.body.event_id });
            state.user_data.put(&id.user_id, Some(&req.body.room_id), "m.fully_read", &content).await?;
        }
        _ => return Err(Error::invalid_param(format!("unknown receipt type {kind}"))),
    }
    Ok(json(json!({})))
}

/// # POST /_matrix/client/v3/rooms/{roomId}/read_markers
async fn read_markers(state: AppState, req: Ruma<set_read_marker::v3::Request>) -> Result<Response> {
    let id = req.identity();
    let room_id = &req.body.room_id;
    if let Some(event_id) = &req.body.fully_read {
        state.user_data.put(&id.user_id, Some(room_id), "m.fully_read", &json!({ "event_id": event_id })).await?;
    }
    if let Some(event_id) = &req.body.read_receipt {
        state.user_data.set_receipt(&id.user_id, room_id, "m.read", event_id, "").await?;
    }
    if let Some(event_id) = &req.body.private_read_receipt {
        state.user_data.set_receipt(&id.user_id, room_id, "m.read.private", event_id, "").await?;
    }
    if req.body.read_receipt.is_some() || req.body.private_read_receipt.is_some() {
        state.push.badge(&id.user_id);
    }
    Ok(json(json!({})))
}
