//! An acknowledged message survives `kill -9` of the server.

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn acknowledged_message_survives_kill_9() {
    let mut server = TestServer::start().await;
    let user = server.register("lea").await;
    let token = Some(user.access_token.as_str());
    let (_, room) = server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({}))).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/k{i}");
        let (status, body) =
            server.call("PUT", &path, token, Some(json!({ "msgtype": "m.text", "body": format!("k{i}") }))).await;
        assert_eq!(status, 200);
        acknowledged.push(body["event_id"].as_str().unwrap().to_owned());
    }
    server.kill9();
    server.start_again();
    let (status, messages) =
        server.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100"), token, None).await;
    assert_eq!(status, 200, "{messages}");
    let stored: Vec<&str> =
        messages["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
    for id in &acknowledged {
        assert!(stored.contains(&id.as_str()), "acknowledged event {id} lost after kill -9");
    }
    // The server keeps working after the crash: a new message, and sync sees everything.
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/after");
    let (status, _) = server.call("PUT", &path, token, Some(json!({ "msgtype": "m.text", "body": "after" }))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_and_data_persists() {
    let mut server = TestServer::start().await;
    let user = server.register("marc").await;
    let started = std::time::Instant::now();
    let status = server.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(started.elapsed().as_secs() < 10, "shutdown within seconds");
    server.start_again();
    let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&user.access_token), None).await;
    assert_eq!((status, body["user_id"].as_str()), (200, Some(user.user_id.as_str())));
}

#[tokio::test]
async fn bad_config_exits_at_once_with_a_message() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_missive-under-test"))
        .env("MISSIVE_SERVER_NAME", "not a server name")
        .output()
        .expect("run missive");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server_name"), "message names the bad key: {stderr}");
}
