//! What clients other than matrix-sdk do, and Missive must accept as other servers do:
//! empty bodies, state paths without the trailing slash, operators' SQLite paths, and a
//! configuration report that keeps secrets out.

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn empty_bodies_are_read_as_empty_objects() {
    let server = TestServer::start().await;
    let owner = server.register("olga").await;
    let bot = server.register("nio").await;
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&owner.access_token),
            Some(json!({ "preset": "public_chat", "room_alias_name": "lobby" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let room_id = body["room_id"].as_str().unwrap().to_owned();

    // matrix-nio posts `/join/{roomIdOrAlias}` with no body at all.
    let alias = format!("%23lobby:{}", server.server_name);
    let (status, body) =
        server.call_raw("POST", &format!("/_matrix/client/v3/join/{alias}"), Some(&bot.access_token), "").await;
    assert_eq!((status, body["room_id"].as_str()), (200, Some(room_id.as_str())), "{body}");
    let (status, body) = server
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/joined_members"), Some(&bot.access_token), None)
        .await;
    assert_eq!(status, 200);
    assert!(body["joined"].get(&bot.user_id).is_some(), "{body}");

    let (status, _) = server
        .call_raw("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&bot.access_token), "")
        .await;
    assert_eq!(status, 200);
    let (status, body) =
        server.call_raw("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&bot.access_token), "").await;
    assert_eq!((status, body["room_id"].as_str()), (200, Some(room_id.as_str())), "{body}");

    // A body that is there but is not JSON is still refused, and joins nobody.
    let stranger = server.register("stranger").await;
    let (status, body) = server
        .call_raw("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&stranger.access_token), "{nope")
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_NOT_JSON")));
    let (_, body) = server
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/joined_members"), Some(&owner.access_token), None)
        .await;
    assert!(body["joined"].get(&stranger.user_id).is_none(), "{body}");

    let (status, _) = server.call_raw("POST", "/_matrix/client/v3/logout", Some(&bot.access_token), "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn state_paths_work_with_and_without_the_trailing_slash() {
    let server = TestServer::start().await;
    let user = server.register("sam").await;
    let (_, body) =
        server.call("POST", "/_matrix/client/v3/createRoom", Some(&user.access_token), Some(json!({}))).await;
    let room_id = body["room_id"].as_str().unwrap().to_owned();
    let bare = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name");
    let slashed = format!("{bare}/");

    let (status, body) = server.call("PUT", &bare, Some(&user.access_token), Some(json!({ "name": "Bare" }))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["event_id"].is_string());
    let (status, body) = server.call("GET", &slashed, Some(&user.access_token), None).await;
    assert_eq!((status, body["name"].as_str()), (200, Some("Bare")), "{body}");

    let (status, _) = server.call("PUT", &slashed, Some(&user.access_token), Some(json!({ "name": "Slashed" }))).await;
    assert_eq!(status, 200);
    let (status, body) = server.call("GET", &bare, Some(&user.access_token), None).await;
    assert_eq!((status, body["name"].as_str()), (200, Some("Slashed")), "{body}");

    // A state key is still a state key: `m.room.name` with key "x" is another entry.
    let (status, body) = server.call("GET", &format!("{bare}/x"), Some(&user.access_token), None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
}

#[tokio::test]
async fn an_explicit_sqlite_path_is_created_like_the_default() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("var/lib/missive/missive.db");
    let url = format!("sqlite://{}", file.display());
    let server = TestServer::start_with(&[("MISSIVE_DATABASE_URL", &url)]).await;
    let user = server.register("ops").await;
    let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&user.access_token), None).await;
    assert_eq!((status, body["user_id"].as_str()), (200, Some(user.user_id.as_str())));
    assert!(file.exists(), "the database file was not created at {}", file.display());
}

#[test]
fn check_config_redacts_secrets() {
    let mut command = common::missive_command();
    let output = command
        .arg("check-config")
        .env("MISSIVE_REGISTRATION_SHARED_SECRET", "very-secret-shared")
        .env("MISSIVE_REGISTRATION", "token")
        .env("MISSIVE_REGISTRATION_TOKENS", r#"["very-secret-token"]"#)
        .env("MISSIVE_DATABASE_URL", "postgres://missive:very-secret-password@db.internal/missive")
        .output()
        .expect("run check-config");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("registration_shared_secret"), "{report}");
    for secret in ["very-secret-shared", "very-secret-token", "very-secret-password"] {
        assert!(!report.contains(secret), "check-config printed {secret}:\n{report}");
    }
}

#[tokio::test]
async fn every_room_version_from_1_to_12_can_be_created_and_used() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (_, caps) = server.call("GET", "/_matrix/client/v3/capabilities", Some(&alice.access_token), None).await;
    let versions = &caps["capabilities"]["m.room_versions"];
    assert_eq!(versions["default"], "12", "{caps}");
    for version in 1..=12 {
        let version = version.to_string();
        assert_eq!(versions["available"][&version], "stable", "{caps}");
        let (status, body) = server
            .call(
                "POST",
                "/_matrix/client/v3/createRoom",
                Some(&alice.access_token),
                Some(json!({ "room_version": version, "preset": "public_chat", "name": "v" })),
            )
            .await;
        assert_eq!(status, 200, "room version {version}: {body}");
        let room_id = body["room_id"].as_str().unwrap().to_owned();
        let (status, body) =
            server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&bob.access_token), None).await;
        assert_eq!(status, 200, "join in room version {version}: {body}");
        let (status, body) = server
            .call(
                "PUT",
                &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{version}"),
                Some(&bob.access_token),
                Some(json!({ "msgtype": "m.text", "body": "hello" })),
            )
            .await;
        assert_eq!(status, 200, "send in room version {version}: {body}");
        let event_id = body["event_id"].as_str().unwrap().to_owned();
        // Versions 1 and 2 name events `$opaque:server`; later ones by their hash.
        assert_eq!(event_id.contains(':'), version == "1" || version == "2", "{event_id} in version {version}");
        let (status, body) = server
            .call(
                "GET",
                // Room version 3 IDs are standard base64: `/` and `+` must be escaped.
                &format!(
                    "/_matrix/client/v3/rooms/{room_id}/event/{}",
                    event_id.replace('/', "%2F").replace('+', "%2B")
                ),
                Some(&alice.access_token),
                None,
            )
            .await;
        assert_eq!((status, body["content"]["body"].as_str()), (200, Some("hello")), "version {version}: {body}");
        let (status, body) = server
            .call(
                "GET",
                &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.create"),
                Some(&alice.access_token),
                None,
            )
            .await;
        assert_eq!((status, body["room_version"].as_str()), (200, Some(version.as_str())), "{body}");
    }
}

#[tokio::test]
async fn state_events_carry_what_they_replaced() {
    let server = TestServer::start().await;
    let user = server.register("tess").await;
    let (_, body) =
        server.call("POST", "/_matrix/client/v3/createRoom", Some(&user.access_token), Some(json!({}))).await;
    let room_id = body["room_id"].as_str().unwrap().to_owned();
    let topic = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic");
    let (_, first) = server.call("PUT", &topic, Some(&user.access_token), Some(json!({ "topic": "one" }))).await;
    let (_, second) = server.call("PUT", &topic, Some(&user.access_token), Some(json!({ "topic": "two" }))).await;
    let (status, event) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room_id}/event/{}", second["event_id"].as_str().unwrap()),
            Some(&user.access_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(event["unsigned"]["replaces_state"], first["event_id"], "{event}");
    assert_eq!(event["unsigned"]["prev_content"], json!({ "topic": "one" }), "{event}");
    assert_eq!(event["unsigned"]["prev_sender"], json!(user.user_id), "{event}");

    // Once the replaced event is redacted, its content is gone from `prev_content` too.
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/redact/{}/r1", first["event_id"].as_str().unwrap()),
            Some(&user.access_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, event) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room_id}/event/{}", second["event_id"].as_str().unwrap()),
            Some(&user.access_token),
            None,
        )
        .await;
    assert_eq!(event["unsigned"]["prev_content"], json!({}), "{event}");
}

#[tokio::test]
async fn uia_sessions_authorise_one_operation_and_registration_is_idempotent() {
    let server = TestServer::start().await;
    let user = server.register("uma").await;
    let login = |device: &str| {
        json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "uma" },
                "password": user.password, "device_id": device })
    };
    for device in ["FIRST", "SECOND"] {
        let (status, _) = server.call("POST", "/_matrix/client/v3/login", None, Some(login(device))).await;
        assert_eq!(status, 200);
    }
    let token = Some(user.access_token.as_str());
    let (status, challenge) = server.call("DELETE", "/_matrix/client/v3/devices/FIRST", token, Some(json!({}))).await;
    assert_eq!(status, 401);
    assert_eq!(challenge["completed"], json!([]), "{challenge}");
    assert!(challenge["params"].is_object(), "{challenge}");
    // The session opened to delete FIRST cannot delete SECOND.
    let auth = json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "uma" },
                                  "password": user.password, "session": challenge["session"] } });
    let (status, body) = server.call("DELETE", "/_matrix/client/v3/devices/SECOND", token, Some(auth)).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, _) = server.call("GET", "/_matrix/client/v3/devices/SECOND", token, None).await;
    assert_eq!(status, 200, "the device is still there");

    // Another user's valid password does not authorise deleting this user's device.
    let eve = server.register("eve").await;
    let auth = json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": eve.user_id },
                                  "password": eve.password } });
    let (status, _) = server.call("DELETE", "/_matrix/client/v3/devices/SECOND", token, Some(auth)).await;
    assert_eq!(status, 403);

    // Registration: the first request's parameters are remembered, and asking again with
    // the completed session answers the same account.
    let first = json!({ "username": "Remembered", "password": "pw", "device_id": "XYZ",
                        "initial_device_display_name": "phone" });
    let (status, challenge) = server.call("POST", "/_matrix/client/v3/register", None, Some(first)).await;
    assert_eq!(status, 401);
    let again = json!({ "auth": { "type": "m.login.dummy", "session": challenge["session"] } });
    let (status, created) = server.call("POST", "/_matrix/client/v3/register", None, Some(again.clone())).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["user_id"], format!("@remembered:{}", server.server_name), "usernames are lower-cased");
    assert_eq!(created["device_id"], "XYZ");
    let (status, repeated) = server.call("POST", "/_matrix/client/v3/register", None, Some(again)).await;
    assert_eq!((status, &repeated["user_id"]), (200, &created["user_id"]), "{repeated}");
}

#[tokio::test]
async fn tags_openid_reports_and_typing_without_timeout() {
    let server = TestServer::start().await;
    let user = server.register("tina").await;
    let other = server.register("otto").await;
    let token = Some(user.access_token.as_str());
    let room_id = server.create_room(&user.access_token, json!({ "preset": "public_chat" })).await;
    let tags = format!("/_matrix/client/v3/user/{}/rooms/{room_id}/tags", user.user_id);
    let (status, _) = server.call("PUT", &format!("{tags}/m.favourite"), token, Some(json!({ "order": 0.5 }))).await;
    assert_eq!(status, 200);
    let (status, body) = server.call("PUT", &format!("{tags}/u.work"), token, Some(json!({ "order": "x" }))).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let (_, body) = server.call("GET", &tags, token, None).await;
    assert_eq!(body, json!({ "tags": { "m.favourite": { "order": 0.5 } } }));
    let (status, _) = server.call("DELETE", &format!("{tags}/m.favourite"), token, None).await;
    assert_eq!(status, 200);
    let (_, body) = server.call("GET", &tags, token, None).await;
    assert_eq!(body, json!({ "tags": {} }));
    let (status, _) = server.call("GET", &tags, Some(&other.access_token), None).await;
    assert_eq!(status, 403, "tags are private");

    let path = format!("/_matrix/client/v3/user/{}/openid/request_token", user.user_id);
    let (status, openid) = server.call("POST", &path, token, Some(json!({}))).await;
    assert_eq!(status, 200, "{openid}");
    let info =
        format!("/_matrix/federation/v1/openid/userinfo?access_token={}", openid["access_token"].as_str().unwrap());
    let (status, body) = server.call("GET", &info, None, None).await;
    assert_eq!((status, body["sub"].as_str()), (200, Some(user.user_id.as_str())));
    let (status, body) =
        server.call("GET", "/_matrix/federation/v1/openid/userinfo?access_token=nope", None, None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));

    let (_, sent) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/r1"),
            token,
            Some(json!({ "msgtype": "m.text", "body": "spam" })),
        )
        .await;
    let event_id = sent["event_id"].as_str().unwrap();
    let report = format!("/_matrix/client/v3/rooms/{room_id}/report/{event_id}");
    let (status, _) = server.call("POST", &report, Some(&other.access_token), Some(json!({ "reason": "spam" }))).await;
    assert_eq!(status, 404, "a non-member cannot report the room's events");
    server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&other.access_token), None).await;
    let (status, _) =
        server.call("POST", &report, Some(&other.access_token), Some(json!({ "reason": "spam", "score": -100 }))).await;
    assert_eq!(status, 200);
    let (status, _) =
        server.call("POST", &report, Some(&other.access_token), Some(json!({ "reason": "spam", "score": 7 }))).await;
    assert_eq!(status, 400);
    let reports = server.query_strings("SELECT reason FROM reports").await;
    assert_eq!(reports, vec!["spam".to_owned()], "one report kept, none for the refused ones");

    let typing = format!("/_matrix/client/v3/rooms/{room_id}/typing/{}", user.user_id);
    let (status, body) = server.call("PUT", &typing, token, Some(json!({ "typing": true }))).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn presence_is_shared_with_room_mates_only_when_enabled() {
    let server = TestServer::start_with(&[("MISSIVE_PRESENCE", "true")]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room_id = server.create_room(&alice.access_token, json!({ "preset": "public_chat" })).await;
    server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&bob.access_token), None).await;
    let status_path = |user: &str| format!("/_matrix/client/v3/presence/{user}/status");
    let (status, _) = server
        .call(
            "PUT",
            &status_path(&alice.user_id),
            Some(&alice.access_token),
            Some(json!({ "presence": "unavailable", "status_msg": "in a meeting" })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = server.call("GET", &status_path(&alice.user_id), Some(&bob.access_token), None).await;
    assert_eq!(status, 200);
    assert_eq!((body["presence"].as_str(), body["status_msg"].as_str()), (Some("unavailable"), Some("in a meeting")));
    let (status, _) = server.call("GET", &status_path(&alice.user_id), Some(&carol.access_token), None).await;
    assert_eq!(status, 403, "no shared room, no presence");
    let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&bob.access_token), None).await;
    let events = sync["presence"]["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["sender"] == alice.user_id.as_str()), "{sync}");
    let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&carol.access_token), None).await;
    let events = sync["presence"]["events"].as_array().unwrap();
    assert!(!events.iter().any(|e| e["sender"] == alice.user_id.as_str()), "{sync}");
    // Alice's own syncs (online by default) do not undo the status she chose.
    server.call("GET", "/_matrix/client/v3/sync", Some(&alice.access_token), None).await;
    let (_, body) = server.call("GET", &status_path(&alice.user_id), Some(&bob.access_token), None).await;
    assert_eq!(body["presence"], "unavailable", "{body}");

    // Off (the default), the endpoints answer and nobody's status is kept.
    let quiet = TestServer::start().await;
    let dora = quiet.register("dora").await;
    let (status, _) = quiet
        .call("PUT", &status_path(&dora.user_id), Some(&dora.access_token), Some(json!({ "presence": "online" })))
        .await;
    assert_eq!(status, 200);
    let (_, body) = quiet.call("GET", &status_path(&dora.user_id), Some(&dora.access_token), None).await;
    assert_eq!(body, json!({ "presence": "offline" }));
}

#[tokio::test]
async fn legacy_event_stream_and_initial_syncs() {
    let server = TestServer::start().await;
    let user = server.register("leo").await;
    let token = Some(user.access_token.as_str());
    let (status, first) = server.call("GET", "/_matrix/client/r0/events?timeout=0", token, None).await;
    assert_eq!(status, 200, "{first}");
    let room_id = server.create_room(&user.access_token, json!({ "preset": "public_chat", "name": "Old" })).await;
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/r0/rooms/{room_id}/send/m.room.message"),
            token,
            Some(json!({ "body": "hi" })),
        )
        .await;
    assert_eq!(status, 200);
    let from = first["end"].as_str().unwrap();
    let (status, stream) =
        server.call("GET", &format!("/_matrix/client/r0/events?timeout=0&from={from}"), token, None).await;
    assert_eq!(status, 200);
    let chunk = stream["chunk"].as_array().unwrap();
    assert!(chunk.iter().any(|e| e["type"] == "m.room.create" && e["room_id"] == room_id.as_str()), "{stream}");
    assert!(chunk.iter().any(|e| e["content"]["body"] == "hi"), "{stream}");

    let (status, initial) = server.call("GET", "/_matrix/client/v3/initialSync?limit=2", token, None).await;
    assert_eq!(status, 200);
    let room = initial["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == room_id.as_str()).unwrap().clone();
    assert_eq!(room["membership"], "join");
    assert_eq!(room["messages"]["chunk"].as_array().unwrap().len(), 2);
    assert_eq!(room["messages"]["chunk"][1]["content"]["body"], "hi", "oldest first");
    let (status, room) =
        server.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/initialSync"), token, None).await;
    assert_eq!(status, 200);
    assert!(
        room["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Old")
    );
    let event_id =
        chunk.iter().find(|e| e["content"]["body"] == "hi").unwrap()["event_id"].as_str().unwrap().to_owned();
    let (status, event) = server.call("GET", &format!("/_matrix/client/v3/events/{event_id}"), token, None).await;
    assert_eq!((status, event["content"]["body"].as_str()), (200, Some("hi")));
    let stranger = server.register("stranger").await;
    let (status, _) =
        server.call("GET", &format!("/_matrix/client/v3/events/{event_id}"), Some(&stranger.access_token), None).await;
    assert_eq!(status, 404, "history is shared with members only");
}

#[tokio::test]
async fn room_upgrade_moves_settings_aliases_and_closes_the_old_room() {
    let server = TestServer::start().await;
    let owner = server.register("owen").await;
    let member = server.register("mia").await;
    let token = Some(owner.access_token.as_str());
    let room_id = server
        .create_room(
            &owner.access_token,
            json!({ "preset": "public_chat", "name": "Team", "room_alias_name": "team", "room_version": "10" }),
        )
        .await;
    server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&member.access_token), None).await;
    let upgrade = format!("/_matrix/client/v3/rooms/{room_id}/upgrade");
    let (status, _) =
        server.call("POST", &upgrade, Some(&member.access_token), Some(json!({ "new_version": "12" }))).await;
    assert_eq!(status, 403, "a member without power cannot upgrade");
    for bad in ["99", "my_bad_version"] {
        let (status, body) = server.call("POST", &upgrade, token, Some(json!({ "new_version": bad }))).await;
        assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNSUPPORTED_ROOM_VERSION")), "{bad}");
    }
    // The owner's tag and direct-chat listing follow the room.
    let tags = |room: &str| format!("/_matrix/client/v3/user/{}/rooms/{room}/tags", owner.user_id);
    server.call("PUT", &format!("{}/u.team", tags(&room_id)), token, Some(json!({}))).await;
    let direct = format!("/_matrix/client/v3/user/{}/account_data/m.direct", owner.user_id);
    server.call("PUT", &direct, token, Some(json!({ member.user_id.clone(): [room_id] }))).await;
    let (status, body) = server.call("POST", &upgrade, token, Some(json!({ "new_version": "12" }))).await;
    assert_eq!(status, 200, "{body}");
    let new_room = body["replacement_room"].as_str().unwrap().to_owned();
    let (_, new_tags) = server.call("GET", &tags(&new_room), token, None).await;
    assert!(new_tags["tags"].get("u.team").is_some(), "{new_tags}");
    let (_, dms) = server.call("GET", &direct, token, None).await;
    assert!(dms[&member.user_id].as_array().unwrap().iter().any(|r| r == new_room.as_str()), "{dms}");

    let state = |room: &str, kind: &str| format!("/_matrix/client/v3/rooms/{room}/state/{kind}");
    let (_, tombstone) = server.call("GET", &state(&room_id, "m.room.tombstone"), token, None).await;
    assert_eq!(tombstone["replacement_room"], new_room.as_str());
    let (_, create) = server.call("GET", &state(&new_room, "m.room.create"), token, None).await;
    assert_eq!(create["predecessor"]["room_id"], room_id.as_str(), "{create}");
    assert_eq!(create["room_version"], "12");
    let (_, name) = server.call("GET", &state(&new_room, "m.room.name"), token, None).await;
    assert_eq!(name["name"], "Team");
    let alias = format!("/_matrix/client/v3/directory/room/%23team:{}", server.server_name);
    let (_, resolved) = server.call("GET", &alias, token, None).await;
    assert_eq!(resolved["room_id"], new_room.as_str(), "the alias follows the room");
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/late"),
            Some(&member.access_token),
            Some(json!({ "msgtype": "m.text", "body": "too late" })),
        )
        .await;
    assert_eq!(status, 403, "the old room is closed to ordinary members");
    let (status, _) =
        server.call("POST", &format!("/_matrix/client/v3/join/{new_room}"), Some(&member.access_token), None).await;
    assert_eq!(status, 200);

    // To a version whose room IDs are chosen, the new room names the tombstone itself.
    let (status, body) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{new_room}/upgrade"),
            token,
            Some(json!({ "new_version": "11" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let third = body["replacement_room"].as_str().unwrap().to_owned();
    let (_, tombstone) = server.call("GET", &state(&new_room, "m.room.tombstone"), token, None).await;
    assert_eq!(tombstone["replacement_room"], third.as_str());
    let (_, all) = server.call("GET", &format!("/_matrix/client/v3/rooms/{new_room}/state"), token, None).await;
    let tombstone_id =
        all.as_array().unwrap().iter().find(|e| e["type"] == "m.room.tombstone").unwrap()["event_id"].clone();
    let (_, create) = server.call("GET", &state(&third, "m.room.create"), token, None).await;
    assert_eq!(create["predecessor"]["event_id"], tombstone_id, "{create}");
}

#[tokio::test]
async fn canonical_aliases_must_point_to_the_room_and_guests_are_confined() {
    let server = TestServer::start_with(&[("MISSIVE_ALLOW_GUEST_ACCESS", "true")]).await;
    let owner = server.register("cara").await;
    let token = Some(owner.access_token.as_str());
    let room_id =
        server.create_room(&owner.access_token, json!({ "preset": "public_chat", "room_alias_name": "cc" })).await;
    let other =
        server.create_room(&owner.access_token, json!({ "preset": "public_chat", "room_alias_name": "dd" })).await;
    let canonical = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.canonical_alias");
    let name = |local: &str| format!("#{local}:{}", server.server_name);
    let (status, _) = server.call("PUT", &canonical, token, Some(json!({ "alias": name("cc") }))).await;
    assert_eq!(status, 200);
    let (status, body) = server.call("PUT", &canonical, token, Some(json!({ "alias": name("missing") }))).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_ALIAS")));
    let (status, body) =
        server.call("PUT", &canonical, token, Some(json!({ "alias": name("cc"), "alt_aliases": [name("dd")] }))).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_ALIAS")), "{other}");
    let (status, body) = server.call("PUT", &canonical, token, Some(json!({ "alias": "%bad" }))).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    // Deleting the alias takes it out of the canonical alias.
    let (status, _) = server
        .call("DELETE", &format!("/_matrix/client/v3/directory/room/%23cc:{}", server.server_name), token, None)
        .await;
    assert_eq!(status, 200);
    let (_, content) = server.call("GET", &canonical, token, None).await;
    assert!(content.get("alias").is_none(), "{content}");

    let (status, guest) = server.call("POST", "/_matrix/client/v3/register?kind=guest", None, Some(json!({}))).await;
    assert_eq!(status, 200, "{guest}");
    let guest_token = guest["access_token"].as_str().unwrap();
    let (status, body) = server.call("POST", "/_matrix/client/v3/createRoom", Some(guest_token), Some(json!({}))).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_GUEST_ACCESS_FORBIDDEN")));
    let join = format!("/_matrix/client/v3/join/{room_id}");
    let (status, _) = server.call("POST", &join, Some(guest_token), None).await;
    assert_eq!(status, 403, "public_chat rooms forbid guests");
    let guest_access = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.guest_access");
    server.call("PUT", &guest_access, token, Some(json!({ "guest_access": "can_join" }))).await;
    let (status, _) = server.call("POST", &join, Some(guest_token), None).await;
    assert_eq!(status, 200);
    server.call("PUT", &guest_access, token, Some(json!({ "guest_access": "forbidden" }))).await;
    let member =
        format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{}", guest["user_id"].as_str().unwrap());
    let (_, membership) = server.call("GET", &member, token, None).await;
    assert_eq!(membership["membership"], "leave", "guests leave when guest access is revoked");
}

#[tokio::test]
async fn ignored_users_messages_and_invites_are_hidden() {
    let server = TestServer::start().await;
    let ivy = server.register("ivy").await;
    let troll = server.register("troll").await;
    let friend = server.register("friend").await;
    let room_id = server.create_room(&ivy.access_token, json!({ "preset": "public_chat" })).await;
    for user in [&troll, &friend] {
        server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&user.access_token), None).await;
    }
    let ignore = format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", ivy.user_id);
    let (status, _) = server
        .call("PUT", &ignore, Some(&ivy.access_token), Some(json!({ "ignored_users": { troll.user_id.clone(): {} } })))
        .await;
    assert_eq!(status, 200);
    for (user, body) in [(&troll, "noise"), (&friend, "signal")] {
        server
            .call(
                "PUT",
                &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{body}"),
                Some(&user.access_token),
                Some(json!({ "msgtype": "m.text", "body": body })),
            )
            .await;
    }
    let (_, messages) = server
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b"), Some(&ivy.access_token), None)
        .await;
    let bodies: Vec<&str> =
        messages["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["signal"], "{messages}");
    let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&ivy.access_token), None).await;
    let timeline = &sync["rooms"]["join"][&room_id]["timeline"]["events"];
    assert!(!timeline.as_array().unwrap().iter().any(|e| e["content"]["body"] == "noise"), "{timeline}");
    // The troll's membership (state) is still there: the room's state stays whole.
    let (_, members) = server
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/joined_members"), Some(&ivy.access_token), None)
        .await;
    assert!(members["joined"].get(&troll.user_id).is_some());

    // Invites from an ignored user do not reach the invitee.
    let trap = server.create_room(&troll.access_token, json!({})).await;
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{trap}/invite"),
            Some(&troll.access_token),
            Some(json!({ "user_id": ivy.user_id })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&ivy.access_token), None).await;
    assert!(sync["rooms"]["invite"].get(&trap).is_none(), "{sync}");
}

#[tokio::test]
async fn lazy_loaded_members_follow_incremental_timelines_without_repeating() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room_id = server.create_room(&alice.access_token, json!({ "preset": "public_chat" })).await;
    for user in [&bob, &carol] {
        server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&user.access_token), None).await;
    }
    let filter = r#"{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":10}}}"#;
    let sync = |since: Option<String>| {
        let mut path = format!("/_matrix/client/v3/sync?filter={filter}");
        if let Some(since) = since {
            path.push_str(&format!("&since={since}"));
        }
        let token = alice.access_token.clone();
        let server = &server;
        async move { server.call("GET", &path, Some(&token), None).await.1 }
    };
    let send = |user: &common::TestUser, txn: &str| {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}");
        let token = user.access_token.clone();
        let server = &server;
        async move { server.call("PUT", &path, Some(&token), Some(json!({ "msgtype": "m.text", "body": "x" }))).await }
    };
    // Alice's own messages fill the first timeline: bob's and carol's joins fall outside it.
    for i in 0..12 {
        send(&alice, &format!("a{i}")).await;
    }
    let members = |body: &serde_json::Value| -> Vec<String> {
        let mut members: Vec<String> = body["rooms"]["join"][&room_id]["state"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.member")
            .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
            .collect();
        members.sort();
        members
    };
    let first = sync(None).await;
    assert_eq!(members(&first), vec![alice.user_id.clone()], "only the senders and the user: {first}");
    let mut next = first["next_batch"].as_str().unwrap().to_owned();
    for (user, txn, expected) in [
        (&carol, "c1", vec![carol.user_id.clone()]),
        (&carol, "c2", vec![]),
        (&bob, "b1", vec![bob.user_id.clone()]),
        (&alice, "a-last", vec![]),
    ] {
        send(user, txn).await;
        let body = sync(Some(next)).await;
        assert_eq!(members(&body), expected, "after {txn}: {body}");
        next = body["next_batch"].as_str().unwrap().to_owned();
    }
}

#[tokio::test]
async fn an_invitee_is_a_device_list_change_for_the_inviter() {
    let server = TestServer::start().await;
    let (ann, eve) = (server.register("ann").await, server.register("eve").await);
    let token = Some(ann.access_token.as_str());
    let room_id = server.create_room(&ann.access_token, json!({ "preset": "private_chat" })).await;
    let (_, first) = server.call("GET", "/_matrix/client/v3/sync", token, None).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/rooms/{room_id}/invite");
    let (status, _) = server.call("POST", &path, token, Some(json!({ "user_id": eve.user_id }))).await;
    assert_eq!(status, 200);
    // Ann's client must learn eve's devices to encrypt for her before she joins.
    let (_, sync) = server.call("GET", &format!("/_matrix/client/v3/sync?since={since}"), token, None).await;
    let changed = sync["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
    assert!(changed.iter().any(|u| u == eve.user_id.as_str()), "{sync}");
}

#[tokio::test]
async fn device_changes_reach_the_users_own_sync_and_whois() {
    let server = TestServer::start().await;
    let dan = server.register("dan").await;
    let token = Some(dan.access_token.as_str());
    let (_, first) = server.call("GET", "/_matrix/client/v3/sync", token, None).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "dan" },
                        "password": dan.password, "device_id": "LAPTOP" });
    let (status, _) = server.call("POST", "/_matrix/client/v3/login", None, Some(login)).await;
    assert_eq!(status, 200);
    let (_, sync) = server.call("GET", &format!("/_matrix/client/v3/sync?since={since}"), token, None).await;
    assert!(
        sync["device_lists"]["changed"].as_array().unwrap().iter().any(|u| u == dan.user_id.as_str()),
        "a new device is a device list change: {sync}"
    );
    // The last use is written off the request path: wait for it a little.
    let mut whois = json!({});
    for _ in 0..50 {
        let (status, body) =
            server.call("GET", &format!("/_matrix/client/v3/admin/whois/{}", dan.user_id), token, None).await;
        assert_eq!(status, 200, "{body}");
        whois = body;
        if whois["devices"][&dan.device_id]["sessions"][0]["connections"][0]["ip"] == "127.0.0.1" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let connections = &whois["devices"][&dan.device_id]["sessions"][0]["connections"];
    assert_eq!(connections[0]["ip"], "127.0.0.1", "{whois}");
    let other = server.register("nosy").await;
    let (status, _) = server
        .call("GET", &format!("/_matrix/client/v3/admin/whois/{}", dan.user_id), Some(&other.access_token), None)
        .await;
    assert_eq!(status, 403, "only admins look up other users");

    // Device keys without their required fields are refused.
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            token,
            Some(json!({ "device_keys": { "user_id": dan.user_id, "device_id": dan.device_id } })),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")));
}

#[tokio::test]
async fn erased_users_messages_are_redacted_for_later_members_only() {
    let server = TestServer::start().await;
    let eric = server.register("eric").await;
    let early = server.register("early").await;
    let late = server.register("late").await;
    let room_id = server
        .create_room(
            &eric.access_token,
            json!({ "preset": "public_chat", "initial_state": [
            { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "shared" } }
        ] }),
        )
        .await;
    server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&early.access_token), None).await;
    let (_, sent) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/e1"),
            Some(&eric.access_token),
            Some(json!({ "msgtype": "m.text", "body": "my words" })),
        )
        .await;
    let event = format!("/_matrix/client/v3/rooms/{room_id}/event/{}", sent["event_id"].as_str().unwrap());
    server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&late.access_token), None).await;
    let (_, seen) = server.call("GET", &event, Some(&late.access_token), None).await;
    assert_eq!(seen["content"]["body"], "my words", "before erasure the history is shared");

    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "eric" },
                       "password": eric.password });
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/account/deactivate",
            Some(&eric.access_token),
            Some(json!({ "auth": auth, "erase": true })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, seen) = server.call("GET", &event, Some(&early.access_token), None).await;
    assert_eq!(seen["content"]["body"], "my words", "members at the time keep what they read");
    let (_, seen) = server.call("GET", &event, Some(&late.access_token), None).await;
    assert_eq!((seen["type"].as_str(), &seen["content"]), (Some("m.room.message"), &json!({})), "{seen}");
    // Deactivation left the room.
    let (_, members) = server
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/joined_members"), Some(&early.access_token), None)
        .await;
    assert!(members["joined"].get(&eric.user_id).is_none(), "{members}");
}

#[tokio::test]
async fn search_finds_readable_messages_of_the_users_rooms() {
    let server = TestServer::start().await;
    let sara = server.register("sara").await;
    let outsider = server.register("outsider").await;
    let token = Some(sara.access_token.as_str());
    let room_id = server.create_room(&sara.access_token, json!({ "preset": "public_chat", "name": "Budget" })).await;
    let other = server.create_room(&outsider.access_token, json!({ "preset": "public_chat" })).await;
    let send =
        |room: String, user: common::TestUser, txn: &'static str, kind: &'static str, content: serde_json::Value| {
            let server = &server;
            async move {
                let path = format!("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}");
                server.call("PUT", &path, Some(&user.access_token), Some(content)).await.1
            }
        };
    send(
        room_id.clone(),
        sara.clone(),
        "1",
        "m.room.message",
        json!({ "msgtype": "m.text", "body": "Budget meeting moved" }),
    )
    .await;
    send(room_id.clone(), sara.clone(), "2", "m.room.message", json!({ "msgtype": "m.text", "body": "lunch?" })).await;
    send(
        room_id.clone(),
        sara.clone(),
        "3",
        "m.room.message",
        json!({ "msgtype": "m.text", "body": "budget budget approved" }),
    )
    .await;
    // Ciphertext is opaque to the server: it cannot match.
    send(
        room_id.clone(),
        sara.clone(),
        "4",
        "m.room.encrypted",
        json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "budget" }),
    )
    .await;
    send(
        other.clone(),
        outsider.clone(),
        "1",
        "m.room.message",
        json!({ "msgtype": "m.text", "body": "budget elsewhere" }),
    )
    .await;

    let search = |body: serde_json::Value, next: Option<String>| {
        let server = &server;
        async move {
            let path = match next {
                Some(next) => format!("/_matrix/client/v3/search?next_batch={next}"),
                None => "/_matrix/client/v3/search".to_owned(),
            };
            server.call("POST", &path, token, Some(body)).await
        }
    };
    let criteria = |order: &str, limit: u32| {
        json!({ "search_categories": { "room_events": {
            "search_term": "BUDGET", "order_by": order, "filter": { "limit": limit },
            "keys": ["content.body"], "groupings": { "group_by": [{ "key": "room_id" }] },
            "event_context": { "before_limit": 1, "after_limit": 1 }
        } } })
    };
    let (status, body) = search(criteria("rank", 10), None).await;
    assert_eq!(status, 200, "{body}");
    let events = &body["search_categories"]["room_events"];
    let bodies: Vec<&str> =
        events["results"].as_array().unwrap().iter().filter_map(|r| r["result"]["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["budget budget approved", "Budget meeting moved"], "best match first: {events}");
    assert_eq!(events["groups"]["room_id"][&room_id]["results"].as_array().unwrap().len(), 2);
    assert_eq!(events["results"][1]["context"]["events_after"][0]["content"]["body"], "lunch?", "{events}");

    // Newest first, one per page.
    let (_, page) = search(criteria("recent", 1), None).await;
    let first = &page["search_categories"]["room_events"];
    assert_eq!(first["results"][0]["result"]["content"]["body"], "budget budget approved");
    let next = first["next_batch"].as_str().expect("more results").to_owned();
    let (_, page) = search(criteria("recent", 1), Some(next)).await;
    assert_eq!(
        page["search_categories"]["room_events"]["results"][0]["result"]["content"]["body"],
        "Budget meeting moved"
    );

    let (status, body) = search(json!({ "search_categories": { "room_events": { "search_term": " " } } }), None).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
}

#[tokio::test]
async fn a_room_joined_since_the_token_is_sent_once_with_state_outside_its_timeline() {
    let server = TestServer::start().await;
    let user = server.register("nina").await;
    let token = Some(user.access_token.as_str());
    let filter = r#"{"room":{"timeline":{"limit":10}}}"#;
    let (_, first) = server.call("GET", &format!("/_matrix/client/v3/sync?filter={filter}"), token, None).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let room_id = server.create_room(&user.access_token, json!({ "preset": "public_chat" })).await;
    server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic"),
            token,
            Some(json!({ "topic": "t" })),
        )
        .await;
    let (_, sync) =
        server.call("GET", &format!("/_matrix/client/v3/sync?filter={filter}&since={since}"), token, None).await;
    let room = &sync["rooms"]["join"][&room_id];
    let ids: Vec<&str> =
        room["timeline"]["events"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
    let unique: std::collections::HashSet<&&str> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "each event once: {room}");
    assert_eq!(room["timeline"]["events"][0]["type"], "m.room.create", "the whole room fits: {room}");
    assert_eq!(room["timeline"]["limited"], false);
    assert_eq!(room["state"]["events"], json!([]), "everything is in the timeline: {room}");
}

#[tokio::test]
async fn sync_reports_profile_changes_incrementally_and_names_rooms_without_heroes() {
    let server = TestServer::start().await;
    let user = server.register("pia").await;
    let friend = server.register("friend").await;
    let token = Some(user.access_token.as_str());
    let room_id = server.create_room(&user.access_token, json!({ "preset": "public_chat", "name": "Named" })).await;
    server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&friend.access_token), None).await;
    let (_, first) = server.call("GET", "/_matrix/client/v3/sync", token, None).await;
    let summary = &first["rooms"]["join"][&room_id]["summary"];
    assert_eq!(summary["m.joined_member_count"], 2, "{summary}");
    assert!(summary.get("m.heroes").is_none(), "a named room needs no heroes: {summary}");
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/profile/{}/displayname", user.user_id),
            token,
            Some(json!({ "displayname": "Pia P." })),
        )
        .await;
    assert_eq!(status, 200);
    let (_, next) = server.call("GET", &format!("/_matrix/client/v3/sync?since={since}"), token, None).await;
    let timeline = next["rooms"]["join"][&room_id]["timeline"]["events"].as_array().unwrap().clone();
    assert_eq!(timeline.len(), 1, "only the profile change, not the room again: {timeline:?}");
    assert_eq!(timeline[0]["content"]["displayname"], "Pia P.");
}

#[tokio::test]
async fn outsiders_are_refused_context_and_oversized_events_are_too_large() {
    let server = TestServer::start().await;
    let owner = server.register("owner").await;
    let outsider = server.register("outsider").await;
    let room_id = server.create_room(&owner.access_token, json!({})).await;
    let (_, sent) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/1"),
            Some(&owner.access_token),
            Some(json!({ "msgtype": "m.text", "body": "private" })),
        )
        .await;
    let context = format!("/_matrix/client/v3/rooms/{room_id}/context/{}", sent["event_id"].as_str().unwrap());
    let (status, body) = server.call("GET", &context, Some(&outsider.access_token), None).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (status, body) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/2"),
            Some(&owner.access_token),
            Some(json!({ "msgtype": "m.text", "body": "x".repeat(70_000) })),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (413, Some("M_TOO_LARGE")), "{body}");
}

#[tokio::test]
async fn device_lists_report_who_left_and_keep_user_signing_keys_private() {
    let server = TestServer::start().await;
    let ann = server.register("ann").await;
    let ben = server.register("ben").await;
    let room_id = server.create_room(&ann.access_token, json!({ "preset": "public_chat" })).await;
    server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&ben.access_token), None).await;
    let sync = |user: &common::TestUser, since: Option<String>| {
        let path = match since {
            Some(since) => format!("/_matrix/client/v3/sync?since={since}"),
            None => "/_matrix/client/v3/sync".to_owned(),
        };
        let token = user.access_token.clone();
        let server = &server;
        async move { server.call("GET", &path, Some(&token), None).await.1 }
    };
    let since = sync(&ben, None).await["next_batch"].as_str().unwrap().to_owned();

    // A self-signing key without a master key is refused; then ann's keys, user-signing last.
    let key = |usage: &str, id: &str| json!({ "user_id": ann.user_id, "usage": [usage], "keys": { format!("ed25519:{id}"): id } });
    let upload = "/_matrix/client/v3/keys/device_signing/upload";
    let (status, _) = server
        .call("POST", upload, Some(&ann.access_token), Some(json!({ "self_signing_key": key("self_signing", "s") })))
        .await;
    assert_eq!(status, 400, "the master key comes first");
    let (status, _) =
        server.call("POST", upload, Some(&ann.access_token), Some(json!({ "master_key": key("master", "m") }))).await;
    assert_eq!(status, 200);
    let after_master = sync(&ben, Some(since)).await;
    assert!(after_master["device_lists"]["changed"].as_array().unwrap().iter().any(|u| u == ann.user_id.as_str()));
    let since = after_master["next_batch"].as_str().unwrap().to_owned();
    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "ann" }, "password": ann.password });
    let (status, body) = server
        .call(
            "POST",
            upload,
            Some(&ann.access_token),
            Some(json!({ "user_signing_key": key("user_signing", "u"), "auth": auth })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let after_user_signing = sync(&ben, Some(since)).await;
    let changed = after_user_signing["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
    assert!(!changed.iter().any(|u| u == ann.user_id.as_str()), "a user-signing key is ann's own business");
    let since = after_user_signing["next_batch"].as_str().unwrap().to_owned();

    // Ann signs ben's master key with her user-signing key: only she sees that signature.
    let ben_master = json!({ "user_id": ben.user_id, "usage": ["master"], "keys": { "ed25519:bm": "bm" } });
    let (status, _) =
        server.call("POST", upload, Some(&ben.access_token), Some(json!({ "master_key": ben_master }))).await;
    assert_eq!(status, 200);
    let mut signed = ben_master.clone();
    signed["signatures"] = json!({ ann.user_id.as_str(): { "ed25519:u": "c2lnbmF0dXJl" } });
    let (status, body) = server
        .call(
            "POST",
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&ann.access_token),
            Some(json!({ ben.user_id.as_str(): { "bm": signed } })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let query = json!({ "device_keys": { ben.user_id.as_str(): [] } });
    for (who, sees) in [(&ann, true), (&ben, false)] {
        let (_, keys) =
            server.call("POST", "/_matrix/client/v3/keys/query", Some(&who.access_token), Some(query.clone())).await;
        let signatures = &keys["master_keys"][ben.user_id.as_str()]["signatures"];
        assert_eq!(signatures.get(ann.user_id.as_str()).is_some(), sees, "{} sees {keys}", who.user_id);
    }

    // When ben leaves their only shared room, ann is `left` for him.
    server.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&ben.access_token), None).await;
    let after_leave = sync(&ben, Some(since)).await;
    assert!(
        after_leave["device_lists"]["left"].as_array().unwrap().iter().any(|u| u == ann.user_id.as_str()),
        "{after_leave}"
    );
}

#[tokio::test]
async fn guests_upgrade_and_sync_filters_account_data() {
    let server = TestServer::start_with(&[("MISSIVE_ALLOW_GUEST_ACCESS", "true")]).await;
    let (status, guest) = server.call("POST", "/_matrix/client/v3/register?kind=guest", None, Some(json!({}))).await;
    assert_eq!(status, 200, "{guest}");
    let guest_id = guest["user_id"].as_str().unwrap().to_owned();
    let localpart = guest_id.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let upgrade = json!({ "username": localpart, "password": "now-a-member",
                          "guest_access_token": guest["access_token"], "auth": { "type": "m.login.dummy" } });
    let (status, full) = server.call("POST", "/_matrix/client/v3/register", None, Some(upgrade)).await;
    assert_eq!((status, full["user_id"].as_str()), (200, Some(guest_id.as_str())), "{full}");
    let token = full["access_token"].as_str().unwrap();
    let (status, _) = server.call("POST", "/_matrix/client/v3/createRoom", Some(token), Some(json!({}))).await;
    assert_eq!(status, 200, "no longer a guest");

    // Account data filters apply to global account data.
    for kind in ["my.kept", "my.dropped"] {
        server
            .call(
                "PUT",
                &format!("/_matrix/client/v3/user/{guest_id}/account_data/{kind}"),
                Some(token),
                Some(json!({ "k": 1 })),
            )
            .await;
    }
    let filter = r#"{"account_data":{"types":["my.kept"]}}"#;
    let (_, sync) = server.call("GET", &format!("/_matrix/client/v3/sync?filter={filter}"), Some(token), None).await;
    let kinds: Vec<&str> =
        sync["account_data"]["events"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, vec!["my.kept"], "{sync}");
}

#[tokio::test]
async fn current_state_shows_in_the_timeline_whatever_the_history_visibility() {
    let server = TestServer::start().await;
    let creator = server.register("cleo").await;
    let syncer = server.register("sid").await;
    let invitee = server.register("ivo").await;
    let room_id = server.create_room(&creator.access_token, json!({ "preset": "public_chat" })).await;
    let join = format!("/_matrix/client/v3/join/{room_id}");
    server.call("POST", &join, Some(&syncer.access_token), None).await;
    server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.history_visibility"),
            Some(&creator.access_token),
            Some(json!({ "history_visibility": "joined" })),
        )
        .await;
    let (_, first) = server.call("GET", "/_matrix/client/v3/sync", Some(&syncer.access_token), None).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    server.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&syncer.access_token), None).await;
    server.call("POST", &join, Some(&invitee.access_token), None).await;
    // More messages than a timeline holds are said while the syncer is away.
    for n in 0..30 {
        server
            .call(
                "PUT",
                &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/away{n}"),
                Some(&creator.access_token),
                Some(json!({ "msgtype": "m.text", "body": format!("said while away {n}") })),
            )
            .await;
    }
    server.call("POST", &join, Some(&syncer.access_token), None).await;
    let (_, sync) =
        server.call("GET", &format!("/_matrix/client/v3/sync?since={since}"), Some(&syncer.access_token), None).await;
    let timeline = sync["rooms"]["join"][&room_id]["timeline"]["events"].as_array().unwrap().clone();
    assert!(
        timeline.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == invitee.user_id.as_str()),
        "who joined while the syncer was away is part of the room's state: {timeline:?}"
    );
    assert!(
        !timeline.iter().any(|e| e["type"] == "m.room.message"),
        "a member back in a 'joined' room does not read what was said while they were away: {timeline:?}"
    );
}

#[tokio::test]
async fn directory_pages_both_ways_and_unknown_push_actions_are_refused() {
    let server = TestServer::start().await;
    let owner = server.register("pia").await;
    for _ in 0..7 {
        server.create_room(&owner.access_token, json!({ "preset": "public_chat", "visibility": "public" })).await;
    }
    let (_, all) = server.call("GET", "/_matrix/client/v3/publicRooms", Some(&owner.access_token), None).await;
    assert_eq!(all["chunk"].as_array().unwrap().len(), 7, "no limit: one page: {all}");
    let page = |since: Option<String>| {
        let mut body = json!({ "limit": 3 });
        if let Some(since) = since {
            body["since"] = json!(since);
        }
        let (server, token) = (&server, owner.access_token.clone());
        async move { server.call("POST", "/_matrix/client/v3/publicRooms", Some(&token), Some(body)).await.1 }
    };
    let (mut forwards, mut next) = (Vec::new(), None);
    let last = loop {
        let last = page(next.clone()).await;
        forwards.extend(last["chunk"].as_array().unwrap().iter().map(|r| r["room_id"].clone()));
        match last["next_batch"].as_str() {
            Some(token) => next = Some(token.to_owned()),
            None => break last,
        }
    };
    assert_eq!(forwards.len(), 7);
    // Backwards from the last page, down to the first, whose token must not read as "0".
    let (mut backwards, mut prev) = (Vec::new(), last["prev_batch"].as_str().map(str::to_owned));
    while let Some(token) = prev {
        assert_ne!(token, "0");
        let body = page(Some(token)).await;
        backwards.extend(body["chunk"].as_array().unwrap().iter().map(|r| r["room_id"].clone()));
        prev = body["prev_batch"].as_str().map(str::to_owned);
    }
    assert_eq!(backwards.len(), 6, "every page but the last, once each");

    // A push rule whose action the server cannot perform is refused; the old no-op
    // actions of older clients are accepted.
    let rule = "/_matrix/client/v3/pushrules/global/content/anything";
    let (status, body) = server
        .call(
            "PUT",
            rule,
            Some(&owner.access_token),
            Some(json!({ "pattern": "*", "actions": ["org.matrix.msc2625.mark_unread"] })),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    let (status, _) = server.call("GET", rule, Some(&owner.access_token), None).await;
    assert_eq!(status, 404, "nothing was stored");
    let (status, body) = server
        .call("PUT", rule, Some(&owner.access_token), Some(json!({ "pattern": "*", "actions": ["dont_notify"] })))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn older_clients_redact_without_a_transaction_id() {
    let server = TestServer::start().await;
    let user = server.register("rita").await;
    let room_id = server.create_room(&user.access_token, json!({ "preset": "private_chat" })).await;
    let (_, sent) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1"),
            Some(&user.access_token),
            Some(json!({ "msgtype": "m.text", "body": "oops" })),
        )
        .await;
    let event_id = sent["event_id"].as_str().unwrap();
    let (status, body) = server
        .call(
            "POST",
            &format!("/_matrix/client/r0/rooms/{room_id}/redact/{event_id}"),
            Some(&user.access_token),
            Some(json!({ "reason": "typo" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["event_id"].is_string());
    let (_, event) = server
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/event/{event_id}"), Some(&user.access_token), None)
        .await;
    assert_eq!(event["content"], json!({}), "{event}");
}
