//! Bad requests get the spec's status and `errcode`, and change nothing.

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn authentication_errors() {
    let server = TestServer::start().await;
    let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", None, None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")));
    let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", Some("nope"), None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
    let user = server.register("dora").await;
    // The token is accepted in the header and, for older clients, in the query string.
    let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&user.access_token), None).await;
    assert_eq!((status, body["user_id"].as_str()), (200, Some(user.user_id.as_str())));
    let path = format!("/_matrix/client/v3/account/whoami?access_token={}", user.access_token);
    let (status, _) = server.call("GET", &path, None, None).await;
    assert_eq!(status, 200);
    // After logout the token is dead.
    let (status, _) = server.call("POST", "/_matrix/client/v3/logout", Some(&user.access_token), Some(json!({}))).await;
    assert_eq!(status, 200);
    let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&user.access_token), None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
}

#[tokio::test]
async fn wrong_password_and_taken_user_id() {
    let server = TestServer::start().await;
    let user = server.register("erin").await;
    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "erin" }, "password": "wrong" });
    let (status, body) = server.call("POST", "/_matrix/client/v3/login", None, Some(login)).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let again = json!({ "username": "erin", "password": "x", "auth": { "type": "m.login.dummy" } });
    let (status, body) = server.call("POST", "/_matrix/client/v3/register", None, Some(again)).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")));
    let (status, body) = server.call("GET", "/_matrix/client/v3/register/available?username=erin", None, None).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")));
    let bad = json!({ "username": "Not Valid!", "password": "x", "auth": { "type": "m.login.dummy" } });
    let (status, body) = server.call("POST", "/_matrix/client/v3/register", None, Some(bad)).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_USERNAME")));
    let _ = user;
}

#[tokio::test]
async fn registration_requires_the_dummy_stage_and_can_be_closed() {
    let server = TestServer::start().await;
    let (status, body) = server
        .call("POST", "/_matrix/client/v3/register", None, Some(json!({ "username": "fred", "password": "p" })))
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"][0]["stages"][0], "m.login.dummy", "{body}");
    assert!(body["session"].is_string());
    let closed = TestServer::start_with(&[("MISSIVE_REGISTRATION", "closed")]).await;
    let body = json!({ "username": "fred", "password": "p", "auth": { "type": "m.login.dummy" } });
    let (status, res) = closed.call("POST", "/_matrix/client/v3/register", None, Some(body)).await;
    assert_eq!((status, res["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
}

#[tokio::test]
async fn malformed_bodies_and_unknown_endpoints() {
    let server = TestServer::start().await;
    let user = server.register("gina").await;
    let token = Some(user.access_token.as_str());
    let (status, body) = server.call_raw("POST", "/_matrix/client/v3/createRoom", token, "{not json").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_NOT_JSON")), "{body}");
    let (status, body) =
        server.call_raw("POST", "/_matrix/client/v3/createRoom", token, r#"{"invite": "nobody"}"#).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    let (status, body) = server.call("GET", "/_matrix/client/v3/no/such/endpoint", token, None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")));
    // A push rule path without its parts is a bad request, as clients expect.
    let (status, _) = server.call("PUT", "/_matrix/client/v3/pushrules/global/room", token, Some(json!({}))).await;
    assert_eq!(status, 400);
    // A known path with a method it does not serve gets the spec's error body.
    let (status, body) = server.call("DELETE", "/_matrix/client/v3/account/whoami", token, None).await;
    assert_eq!((status, body["errcode"].as_str()), (405, Some("M_UNRECOGNIZED")), "{body}");
    let (status, body) =
        server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({ "room_version": "13" }))).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNSUPPORTED_ROOM_VERSION")));
    let (_, rooms) = server.call("GET", "/_matrix/client/v3/joined_rooms", token, None).await;
    assert_eq!(rooms["joined_rooms"], json!([]), "failed requests created nothing");
}

#[tokio::test]
async fn unknown_rooms_and_non_members() {
    let server = TestServer::start().await;
    let owner = server.register("hugo").await;
    let outsider = server.register("ines").await;
    let (_, room) = server
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&owner.access_token),
            Some(json!({ "preset": "private_chat" })),
        )
        .await;
    let room_id = room["room_id"].as_str().unwrap();
    let send = |room: &str| format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1");
    let msg = json!({ "msgtype": "m.text", "body": "x" });
    let (status, body) =
        server.call("PUT", &send("!unknown:localhost"), Some(&owner.access_token), Some(msg.clone())).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = server.call("PUT", &send(room_id), Some(&outsider.access_token), Some(msg.clone())).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room_id}/join"),
            Some(&outsider.access_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403, "invite-only room refuses an uninvited join");
    let (status, _) = server
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b"), Some(&outsider.access_token), None)
        .await;
    assert_eq!(status, 403);
    // Nothing of the refused sends was stored.
    let (_, messages) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50"),
            Some(&owner.access_token),
            None,
        )
        .await;
    let texts = messages["chunk"].as_array().unwrap().iter().filter(|e| e["type"] == "m.room.message").count();
    assert_eq!(texts, 0);
}

#[tokio::test]
async fn same_transaction_id_stores_one_event() {
    let server = TestServer::start().await;
    let user = server.register("jules").await;
    let token = Some(user.access_token.as_str());
    let (_, room) = server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({}))).await;
    let room_id = room["room_id"].as_str().unwrap();
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/txn-1");
    let msg = json!({ "msgtype": "m.text", "body": "une seule fois" });
    let (_, first) = server.call("PUT", &path, token, Some(msg.clone())).await;
    let (_, second) = server.call("PUT", &path, token, Some(msg.clone())).await;
    assert!(first["event_id"].is_string());
    assert_eq!(first["event_id"], second["event_id"]);
    let (_, messages) =
        server.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50"), token, None).await;
    let copies =
        messages["chunk"].as_array().unwrap().iter().filter(|e| e["content"]["body"] == "une seule fois").count();
    assert_eq!(copies, 1);
    // The transaction ID is echoed to the sending device only.
    let found =
        messages["chunk"].as_array().unwrap().iter().find(|e| e["content"]["body"] == "une seule fois").unwrap();
    assert_eq!(found["unsigned"]["transaction_id"], "txn-1");
}

#[tokio::test]
async fn room_versions_10_11_and_12_all_work() {
    let server = TestServer::start().await;
    let user = server.register("kim").await;
    let token = Some(user.access_token.as_str());
    for version in ["10", "11", "12"] {
        let (status, room) = server
            .call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({ "room_version": version, "name": "v" })))
            .await;
        assert_eq!(status, 200, "{room}");
        let room_id = room["room_id"].as_str().unwrap();
        let (_, create) =
            server.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.create/"), token, None).await;
        assert_eq!(create["room_version"], version);
        let (status, sent) = server
            .call(
                "PUT",
                &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/a"),
                token,
                Some(json!({ "msgtype": "m.text", "body": "ok" })),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        let event_id = sent["event_id"].as_str().unwrap();
        let (status, _) = server
            .call("PUT", &format!("/_matrix/client/v3/rooms/{room_id}/redact/{event_id}/r"), token, Some(json!({})))
            .await;
        assert_eq!(status, 200, "redaction works in room version {version}");
    }
}

#[tokio::test]
async fn identical_create_requests_make_distinct_rooms() {
    let server = TestServer::start().await;
    let user = server.register("nina").await;
    let token = Some(user.access_token.as_str());
    let requests = (0..8)
        .map(|_| server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({ "preset": "public_chat" }))));
    let results = futures_util::future::join_all(requests).await;
    let mut ids: Vec<String> = results
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["room_id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8, "room version 12 IDs are create-event hashes; each request gets its own room");
}

#[tokio::test]
async fn concurrent_sends_and_retries_are_all_stored_once() {
    let server = TestServer::start().await;
    let user = server.register("olga").await;
    let token = Some(user.access_token.as_str());
    let (_, room) = server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({}))).await;
    let room_id = room["room_id"].as_str().unwrap();
    let paths: Vec<String> = (0..20)
        .map(|i| format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/c{i}"))
        .chain((0..5).map(|_| format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/same")))
        .collect();
    let sends = paths.iter().map(|p| server.call("PUT", p, token, Some(json!({ "msgtype": "m.text", "body": "x" }))));
    let results = futures_util::future::join_all(sends).await;
    assert!(results.iter().all(|(status, _)| *status == 200), "{results:?}");
    let retried: Vec<&serde_json::Value> = results[20..].iter().map(|(_, b)| &b["event_id"]).collect();
    assert!(retried.iter().all(|id| *id == retried[0]), "retries of one transaction get one event: {retried:?}");
    let (_, messages) =
        server.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100"), token, None).await;
    let stored = messages["chunk"].as_array().unwrap().iter().filter(|e| e["type"] == "m.room.message").count();
    assert_eq!(stored, 21);
    // Batched writes keep the DAG linear: one leaf, the newest event.
    let leaves = server.query_strings("SELECT event_id FROM room_extremities").await;
    assert_eq!(leaves.len(), 1, "{leaves:?}");
    assert_eq!(leaves[0], messages["chunk"][0]["event_id"].as_str().unwrap());
}
