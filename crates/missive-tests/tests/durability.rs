//! Durability: an acknowledged message survives `kill -9`, a clean stop, and failing commits.

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

/// Makes every message insert fail, or lets them through again.
async fn fail_message_inserts(server: &TestServer, fail: bool) {
    match (server.is_postgres(), fail) {
        (false, true) => {
            server
                .execute(
                    "CREATE TRIGGER test_fail BEFORE INSERT ON events WHEN NEW.event_type = 'm.room.message' \
                     BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
                )
                .await
        }
        (false, false) => server.execute("DROP TRIGGER test_fail").await,
        (true, true) => {
            server
                .execute("ALTER TABLE events ADD CONSTRAINT test_fail CHECK (event_type <> 'm.room.message') NOT VALID")
                .await
        }
        (true, false) => server.execute("ALTER TABLE events DROP CONSTRAINT test_fail").await,
    }
}

#[tokio::test]
async fn failed_commits_acknowledge_nothing_and_the_room_recovers() {
    let server = TestServer::start().await;
    let user = server.register("noe").await;
    let token = Some(user.access_token.as_str());
    let (_, room) = server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({}))).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let send = |tag: String| {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{tag}");
        let server = &server;
        async move { server.call("PUT", &path, token, Some(json!({ "msgtype": "m.text", "body": tag }))).await }
    };
    let (status, _) = send("before".into()).await;
    assert_eq!(status, 200);

    // Concurrent sends while every commit fails: batches built on a failed batch's head must
    // not survive it, and no send is acknowledged.
    fail_message_inserts(&server, true).await;
    let failed = futures_util::future::join_all((0..12).map(|i| send(format!("lost{i}")))).await;
    for (status, body) in &failed {
        assert_eq!(*status, 500, "{body}");
        assert_eq!(body["errcode"], "M_UNKNOWN");
    }
    fail_message_inserts(&server, false).await;

    let sent = futures_util::future::join_all((0..12).map(|i| send(format!("after{i}")))).await;
    let mut acknowledged = Vec::new();
    for (status, body) in &sent {
        assert_eq!(*status, 200, "{body}");
        acknowledged.push(body["event_id"].as_str().unwrap().to_owned());
    }
    let (status, messages) =
        server.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100"), token, None).await;
    assert_eq!(status, 200, "{messages}");
    let bodies: Vec<&str> = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies.len(), 13, "the first message and the twelve acknowledged ones: {bodies:?}");
    assert!(bodies.iter().all(|b| !b.starts_with("lost")), "nothing unacknowledged was stored");
    // The DAG holds together: every stored event's prev_events are stored events.
    let prev_ids = server.query_strings("SELECT json FROM events").await;
    let stored: std::collections::HashSet<String> =
        server.query_strings("SELECT event_id FROM events").await.into_iter().collect();
    for json in prev_ids {
        let pdu: serde_json::Value = serde_json::from_str(&json).unwrap();
        for prev in pdu["prev_events"].as_array().unwrap() {
            assert!(stored.contains(prev.as_str().unwrap()), "dangling prev_event {prev}");
        }
    }
    for id in acknowledged {
        let (status, _) =
            server.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/event/{id}"), token, None).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn a_retry_while_its_send_is_committing_gets_the_same_event_and_nothing_is_acknowledged_early() {
    use sqlx::Connection;
    let server = TestServer::start().await;
    let user = server.register("ines").await;
    let token = Some(user.access_token.as_str());
    let (_, room) = server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({}))).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/once");
    let body = json!({ "msgtype": "m.text", "body": "once" });

    // Another connection holds the write lock: the send's commit waits behind it.
    sqlx::any::install_default_drivers();
    let mut blocker = sqlx::AnyConnection::connect(&server.database_url()).await.unwrap();
    let lock = if server.is_postgres() { "BEGIN; LOCK TABLE events IN EXCLUSIVE MODE" } else { "BEGIN IMMEDIATE" };
    sqlx::raw_sql(lock).execute(&mut blocker).await.unwrap();

    let released = std::sync::atomic::AtomicBool::new(false);
    let first = async {
        let answer = server.call("PUT", &path, token, Some(body.clone())).await;
        (answer, released.load(std::sync::atomic::Ordering::SeqCst))
    };
    let retry = async {
        // The first send is built and queued by now; its commit is waiting.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        server.call("PUT", &path, token, Some(body.clone())).await
    };
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let stored = server.query_strings("SELECT event_id FROM events WHERE txn_id = 'once'").await;
        released.store(true, std::sync::atomic::Ordering::SeqCst);
        sqlx::raw_sql("COMMIT").execute(&mut blocker).await.unwrap();
        stored
    };
    let (((s1, b1), answered_after_release), (s2, b2), stored_while_locked) = tokio::join!(first, retry, release);
    assert!(stored_while_locked.is_empty(), "nothing is stored before the lock is released");
    assert!(answered_after_release, "the send is acknowledged only once committed");
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    assert_eq!(b1["event_id"], b2["event_id"], "the retry gets the event of the send still committing");
    let stored = server.query_strings("SELECT event_id FROM events WHERE txn_id = 'once'").await;
    assert_eq!(stored, vec![b1["event_id"].as_str().unwrap().to_owned()], "one event stored");
}

#[tokio::test]
async fn a_retry_gets_its_event_before_and_after_a_restart_and_transaction_ids_are_per_room() {
    let mut server = TestServer::start().await;
    let user = server.register("ines").await;
    let token = Some(user.access_token.as_str());
    let mut rooms = Vec::new();
    for _ in 0..2 {
        let (_, room) = server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({}))).await;
        rooms.push(room["room_id"].as_str().unwrap().to_owned());
    }
    let send = async |server: &TestServer, room_id: &str, txn: &str| -> String {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}");
        let (status, body) = server.call("PUT", &path, token, Some(json!({ "msgtype": "m.text", "body": txn }))).await;
        assert_eq!(status, 200, "{body}");
        body["event_id"].as_str().unwrap().to_owned()
    };
    let first: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(send(&server, &rooms[0], &format!("t{i}")).await);
        }
        ids
    };
    assert_eq!(send(&server, &rooms[0], "t1").await, first[1], "a retry gets the stored event");
    let other = send(&server, &rooms[1], "t1").await;
    assert_ne!(other, first[1], "the same transaction ID in another room is another send");
    assert_eq!(send(&server, &rooms[1], "t1").await, other);

    server.kill9();
    server.start_again();
    assert_eq!(send(&server, &rooms[0], "t2").await, first[2], "a retry after a restart finds the stored event");
    let fresh = send(&server, &rooms[0], "t3").await;
    assert!(!first.contains(&fresh));
    assert_eq!(send(&server, &rooms[0], "t3").await, fresh);
    let (_, messages) = server
        .call("GET", &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", rooms[0]), token, None)
        .await;
    let bodies: Vec<&str> = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["t3", "t2", "t1", "t0"], "each transaction stored once");
}
