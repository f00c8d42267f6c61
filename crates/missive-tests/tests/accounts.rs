//! Accounts, devices, tokens, profiles, push rules and rate limits over HTTP.

mod common;

use common::TestServer;
use serde_json::{Value, json};

fn login_body(user: &str, password: &str) -> Value {
    json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": password })
}

#[tokio::test]
async fn deleting_a_device_needs_the_password_and_kills_its_token() {
    let server = TestServer::start().await;
    let user = server.register("nora").await;
    let (_, second) =
        server.call("POST", "/_matrix/client/v3/login", None, Some(login_body("nora", &user.password))).await;
    let second_token = second["access_token"].as_str().unwrap();
    let second_device = second["device_id"].as_str().unwrap();
    let (_, devices) = server.call("GET", "/_matrix/client/v3/devices", Some(&user.access_token), None).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2);

    let path = format!("/_matrix/client/v3/devices/{second_device}");
    let (status, challenge) = server.call("DELETE", &path, Some(&user.access_token), Some(json!({}))).await;
    assert_eq!(status, 401, "{challenge}");
    assert_eq!(challenge["flows"][0]["stages"][0], "m.login.password");
    let session = challenge["session"].as_str().unwrap();
    let wrong = json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user.user_id },
        "password": "wrong", "session": session } });
    let (status, body) = server.call("DELETE", &path, Some(&user.access_token), Some(wrong)).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_FORBIDDEN")), "{body}");
    let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(second_token), None).await;
    assert_eq!(status, 200, "a failed UIA changes nothing");
    let right = json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user.user_id },
        "password": user.password, "session": session } });
    let (status, body) = server.call("DELETE", &path, Some(&user.access_token), Some(right)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(second_token), None).await;
    assert_eq!(status, 401);
    let (_, devices) = server.call("GET", "/_matrix/client/v3/devices", Some(&user.access_token), None).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn refresh_tokens_rotate() {
    let server = TestServer::start().await;
    let user = server.register("oscar").await;
    let mut body = login_body("oscar", &user.password);
    body["refresh_token"] = json!(true);
    let (_, session) = server.call("POST", "/_matrix/client/v3/login", None, Some(body)).await;
    let refresh = session["refresh_token"].as_str().expect("refresh token issued");
    assert!(session["expires_in_ms"].as_u64().unwrap() > 0);
    let (status, renewed) =
        server.call("POST", "/_matrix/client/v3/refresh", None, Some(json!({ "refresh_token": refresh }))).await;
    assert_eq!(status, 200, "{renewed}");
    let new_token = renewed["access_token"].as_str().unwrap();
    let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(new_token), None).await;
    assert_eq!(status, 200);
    let old = session["access_token"].as_str().unwrap();
    let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(old), None).await;
    assert_eq!(status, 401, "the old access token is replaced");
    let (status, body) =
        server.call("POST", "/_matrix/client/v3/refresh", None, Some(json!({ "refresh_token": refresh }))).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "a refresh token is single-use");
}

#[tokio::test]
async fn shared_secret_registration_follows_synapse_contract() {
    use std::process::Command;
    let server = TestServer::start().await;
    let (_, nonce) = server.call("GET", "/_synapse/admin/v1/register", None, None).await;
    let nonce = nonce["nonce"].as_str().unwrap();
    // HMAC-SHA1 over nonce\0user\0password\0notadmin, computed by an independent tool.
    let mac = Command::new("python3")
        .args([
            "-c",
            "import hmac,hashlib,sys; print(hmac.new(b'test-secret', sys.argv[1].encode()+b'\\x00paul\\x00pw\\x00notadmin', hashlib.sha1).hexdigest())",
            nonce,
        ])
        .output()
        .expect("python3");
    let mac = String::from_utf8(mac.stdout).unwrap().trim().to_owned();
    let body = json!({ "nonce": nonce, "username": "paul", "password": "pw", "admin": false, "mac": mac });
    let (status, res) = server.call("POST", "/_synapse/admin/v1/register", None, Some(body.clone())).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["user_id"], "@paul:localhost");
    let (status, _) = server.call("POST", "/_synapse/admin/v1/register", None, Some(body)).await;
    assert_eq!(status, 400, "a nonce is single-use");
    let (_, nonce) = server.call("GET", "/_synapse/admin/v1/register", None, None).await;
    let forged = json!({ "nonce": nonce["nonce"], "username": "mallory", "password": "pw", "mac": "00" });
    let (status, res) = server.call("POST", "/_synapse/admin/v1/register", None, Some(forged)).await;
    assert_eq!((status, res["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
}

#[tokio::test]
async fn profile_changes_reach_room_member_events() {
    let server = TestServer::start().await;
    let user = server.register("quentin").await;
    let token = Some(user.access_token.as_str());
    let (_, room) = server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({}))).await;
    let room_id = room["room_id"].as_str().unwrap();
    let path = format!("/_matrix/client/v3/profile/{}/displayname", user.user_id);
    let (status, _) = server.call("PUT", &path, token, Some(json!({ "displayname": "Quentin D." }))).await;
    assert_eq!(status, 200);
    let (_, name) = server.call("GET", &path, None, None).await;
    assert_eq!(name["displayname"], "Quentin D.");
    let member = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{}", user.user_id);
    let (_, content) = server.call("GET", &member, token, None).await;
    assert_eq!(content["displayname"], "Quentin D.", "{content}");
    let other = server.register("rita").await;
    let (status, _) = server.call("PUT", &path, Some(&other.access_token), Some(json!({ "displayname": "x" }))).await;
    assert_eq!(status, 403, "nobody changes someone else's profile");
}

#[tokio::test]
async fn push_rules_are_served_editable_and_evaluated() {
    let server = TestServer::start().await;
    let alice = server.register("sam").await;
    let bob = server.register("tess").await;
    let (_, rules) = server.call("GET", "/_matrix/client/v3/pushrules/", Some(&bob.access_token), None).await;
    let overrides = rules["global"]["override"].as_array().unwrap();
    assert!(overrides.iter().any(|r| r["rule_id"] == ".m.rule.master"), "default rules are served");
    assert!(rules["global"]["underride"].as_array().unwrap().iter().any(|r| r["rule_id"] == ".m.rule.message"));

    // Bob adds a keyword rule that highlights "urgent".
    let rule = json!({ "pattern": "urgent", "actions": ["notify", { "set_tweak": "highlight" }] });
    let (status, body) = server
        .call("PUT", "/_matrix/client/v3/pushrules/global/content/urgent", Some(&bob.access_token), Some(rule))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, got) =
        server.call("GET", "/_matrix/client/v3/pushrules/global/content/urgent", Some(&bob.access_token), None).await;
    assert_eq!(got["pattern"], "urgent");

    let (_, room) = server
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&alice.access_token),
            Some(json!({ "invite": [bob.user_id] })),
        )
        .await;
    let room_id = room["room_id"].as_str().unwrap();
    server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&bob.access_token), Some(json!({}))).await;
    for (i, text) in ["hello", "this is urgent"].iter().enumerate() {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/p{i}");
        server.call("PUT", &path, Some(&alice.access_token), Some(json!({ "msgtype": "m.text", "body": text }))).await;
    }
    let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&bob.access_token), None).await;
    let counts = &sync["rooms"]["join"][room_id]["unread_notifications"];
    assert_eq!(
        (counts["notification_count"].as_i64(), counts["highlight_count"].as_i64()),
        (Some(2), Some(1)),
        "{counts}"
    );
    let pushed =
        sync["account_data"]["events"].as_array().unwrap().iter().find(|e| e["type"] == "m.push_rules").cloned();
    assert!(pushed.is_some_and(|e| e.to_string().contains("urgent")), "clients see the edited rules in sync");

    // Disabling the default message rules (one-to-one first, then the general one) stops
    // ordinary notifications.
    for rule in [".m.rule.room_one_to_one", ".m.rule.message"] {
        let path = format!("/_matrix/client/v3/pushrules/global/underride/{rule}/enabled");
        let (status, _) = server.call("PUT", &path, Some(&bob.access_token), Some(json!({ "enabled": false }))).await;
        assert_eq!(status, 200);
        let (_, enabled) = server.call("GET", &path, Some(&bob.access_token), None).await;
        assert_eq!(enabled["enabled"], false, "{enabled}");
    }
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/p9");
    server.call("PUT", &path, Some(&alice.access_token), Some(json!({ "msgtype": "m.text", "body": "quiet" }))).await;
    let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&bob.access_token), None).await;
    assert_eq!(sync["rooms"]["join"][room_id]["unread_notifications"]["notification_count"], 2);

    // Two members keep the default rules through a message; one of them then edits hers,
    // the room's state unchanged: the next message follows each member's rules.
    let ulla = server.register("ulla").await;
    let vera = server.register("vera").await;
    for member in [&ulla, &vera] {
        let invite = json!({ "user_id": member.user_id });
        server
            .call(
                "POST",
                &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
                Some(&alice.access_token),
                Some(invite),
            )
            .await;
        server
            .call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&member.access_token), Some(json!({})))
            .await;
    }
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/p10");
    server.call("PUT", &path, Some(&alice.access_token), Some(json!({ "msgtype": "m.text", "body": "plain" }))).await;
    let rule = json!({ "pattern": "deadline", "actions": ["notify", { "set_tweak": "highlight" }] });
    let path = "/_matrix/client/v3/pushrules/global/content/deadline";
    let (status, _) = server.call("PUT", path, Some(&ulla.access_token), Some(rule)).await;
    assert_eq!(status, 200);
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/p11");
    let body = json!({ "msgtype": "m.text", "body": "the deadline" });
    server.call("PUT", &path, Some(&alice.access_token), Some(body)).await;
    for (member, highlights) in [(&ulla, 1), (&vera, 0)] {
        let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&member.access_token), None).await;
        let counts = &sync["rooms"]["join"][room_id]["unread_notifications"];
        assert_eq!(
            (counts["notification_count"].as_i64(), counts["highlight_count"].as_i64()),
            (Some(2), Some(highlights)),
            "{}: {counts}",
            member.user_id
        );
    }
    let (status, body) = server
        .call("DELETE", "/_matrix/client/v3/pushrules/global/override/.m.rule.master", Some(&bob.access_token), None)
        .await;
    assert_eq!(status, 403, "server-default rules cannot be deleted: {body}");
}

#[tokio::test]
async fn rate_limits_answer_limit_exceeded() {
    let server = TestServer::start_with(&[
        ("MISSIVE_RATE_LIMITS__ENABLED", "true"),
        ("MISSIVE_RATE_LIMITS__MESSAGE", "{ per_second = 0.01, burst = 3 }"),
    ])
    .await;
    let user = server.register("ugo").await;
    let token = Some(user.access_token.as_str());
    let (_, room) = server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({}))).await;
    let room_id = room["room_id"].as_str().unwrap();
    let mut statuses = Vec::new();
    for i in 0..5 {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/r{i}");
        let (status, body) = server.call("PUT", &path, token, Some(json!({ "msgtype": "m.text", "body": "x" }))).await;
        if status == 429 {
            assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
            assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
        }
        statuses.push(status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn deactivation_erases_what_notified_the_account() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (_, room) = server
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&alice.access_token),
            Some(json!({ "invite": [bob.user_id] })),
        )
        .await;
    let room_id = room["room_id"].as_str().unwrap();
    server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&bob.access_token), Some(json!({}))).await;
    let content = json!({ "msgtype": "m.text", "body": "hi", "m.mentions": { "user_ids": [bob.user_id] } });
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/m1");
    let (status, body) = server.call("PUT", &path, Some(&alice.access_token), Some(content)).await;
    assert_eq!(status, 200, "{body}");
    let rows = "SELECT user_id FROM push_exceptions UNION ALL SELECT user_id FROM notification_offsets";
    assert!(server.query_strings(rows).await.contains(&bob.user_id), "the mention is an exception for bob");

    let auth = json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": bob.user_id },
        "password": bob.password } });
    let (status, body) =
        server.call("POST", "/_matrix/client/v3/account/deactivate", Some(&bob.access_token), Some(auth)).await;
    assert_eq!(status, 200, "{body}");
    let left = server.query_strings(rows).await;
    assert!(!left.contains(&bob.user_id), "{left:?}");
    assert!(left.contains(&alice.user_id), "other members keep their counts: {left:?}");
}
