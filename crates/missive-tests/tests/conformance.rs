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
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_missive-under-test"));
    for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("MISSIVE_")) {
        command.env_remove(key);
    }
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
