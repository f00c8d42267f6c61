//! Every operator action is in the audit trail: who acted, on what, from where, with what
//! outcome; refusals too; the trail is read through the admin API and `missive admin audit`,
//! and nothing in the API removes from it.

mod common;

use common::{TestServer, register_admin};
use serde_json::{Value, json};

#[tokio::test]
async fn every_operator_action_is_audited_with_its_actor() {
    let server = TestServer::start().await;
    let admin = register_admin(&server, "operator").await;
    let operator = format!("@operator:{}", server.server_name);
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let suspend = format!("/_synapse/admin/v1/suspend/{}", alice.user_id);
    let (status, _) = server.call("PUT", &suspend, Some(&admin), Some(json!({ "suspend": true }))).await;
    assert_eq!(status, 200);
    // Someone who is no operator tries: refused, and recorded.
    let (status, _) =
        server.call("GET", &format!("/_synapse/admin/v2/users/{}", alice.user_id), Some(&bob.access_token), None).await;
    assert_eq!(status, 403);
    let (status, _) = server.call("GET", "/_missive/admin/v1/audit", Some(&bob.access_token), None).await;
    assert_eq!(status, 403, "only operators read the trail");

    let (status, trail) = server.call("GET", "/_missive/admin/v1/audit", Some(&admin), None).await;
    assert_eq!(status, 200, "{trail}");
    let entries = trail["entries"].as_array().unwrap();
    let find = |actor: &str, action: &str| -> Value {
        entries
            .iter()
            .find(|e| e["actor"] == actor && e["action"] == action)
            .cloned()
            .unwrap_or_else(|| panic!("no {actor} {action} in {trail}"))
    };
    let suspension = find(&operator, "PUT /_synapse/admin/v1/suspend/{user_id}");
    assert_eq!(suspension["target"], alice.user_id.as_str());
    assert_eq!(suspension["status"], 200);
    assert_eq!(suspension["ip"], "127.0.0.1");
    assert!(suspension["ts"].as_i64().unwrap() > 0);
    let refused = find(&bob.user_id, "GET /_synapse/admin/v2/users/{user_id}");
    assert_eq!((refused["status"].clone(), refused["target"].clone()), (json!(403), json!(alice.user_id)));
    find(&bob.user_id, "GET /_missive/admin/v1/audit");
    let registration = find("shared-secret", "POST /_synapse/admin/v1/register");
    assert_eq!(registration["status"], 200);
    assert!(!trail.to_string().contains("\"pw\""), "no request body is kept");

    // Filtered by actor; nothing in the API deletes from it.
    let path = format!("/_missive/admin/v1/audit?actor={}", bob.user_id.replace('@', "%40").replace(':', "%3A"));
    let (_, bobs) = server.call("GET", &path, Some(&admin), None).await;
    assert!(bobs["entries"].as_array().unwrap().iter().all(|e| e["actor"] == bob.user_id.as_str()), "{bobs}");
    assert_eq!(bobs["entries"].as_array().unwrap().len(), 2);
    let (status, _) = server.call("DELETE", "/_missive/admin/v1/audit", Some(&admin), None).await;
    assert_eq!(status, 405);

    // The command line reads it through the running server.
    let mut command = common::missive_command();
    command.args(["admin", "--url", &server.base_url, "--token", &admin, "audit", "--target", &alice.user_id]);
    let output = command.output().expect("run missive admin audit");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let actions: Vec<&Value> = printed["entries"].as_array().unwrap().iter().map(|e| &e["action"]).collect();
    assert!(actions.contains(&&json!("PUT /_synapse/admin/v1/suspend/{user_id}")), "{printed}");
}

/// Runs `missive admin records` with the given environment, no server.
fn records(env: &[(&str, &str)], format: &str) -> String {
    let mut command = common::missive_command();
    command.args(["admin", "records", "--format", format]);
    command.envs(env.iter().copied());
    let output = command.output().expect("run missive admin records");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_record_of_processing_follows_the_configured_retention() {
    let tchap: Value = serde_json::from_str(&records(&[("MISSIVE_RETENTION__PRESET", "tchap")], "json")).unwrap();
    let class = |record: &Value, id: &str| {
        record["classes"].as_array().unwrap().iter().find(|c| c["id"] == id).cloned().unwrap()
    };
    assert_eq!(class(&tchap, "content")["retention_days"], 1095);
    assert_eq!(class(&tchap, "connection_logs")["retention_days"], 365);
    assert_eq!(class(&tchap, "profile")["retention_days"], 1095);
    assert_eq!(tchap["retention"]["inactive_deactivation_days"], 183);
    assert!(class(&tchap, "content")["stored_in"]["tables"].as_array().unwrap().contains(&json!("events")));
    assert!(class(&tchap, "media")["stored_in"]["files"].as_array().unwrap().contains(&json!("media/sha256/")));

    let lux =
        records(&[("MISSIVE_RETENTION__PRESET", "luxchat4gov"), ("MISSIVE_RETENTION__CONTENT_DAYS", "365")], "json");
    let lux: Value = serde_json::from_str(&lux).unwrap();
    assert_eq!(class(&lux, "content")["retention_days"], 365, "the operator's value wins");
    assert_eq!(class(&lux, "connection_logs")["retention_days"], 183);
    assert_eq!(class(&lux, "backups")["retention_days"], 30);
    assert!(class(&lux, "push")["deletion"].as_str().unwrap().contains("never stored"));

    let markdown = records(&[("MISSIVE_RETENTION__PRESET", "tchap")], "markdown");
    assert!(markdown.starts_with("# Record of processing activities"), "{markdown}");
    assert!(markdown.contains("| Connection logs |") && markdown.contains("1 year (365 days)"), "{markdown}");
    // A preset that does not exist stops the command with a clear error.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_missive-under-test"));
    command.args(["admin", "records"]).env("MISSIVE_RETENTION__PRESET", "forever");
    assert!(!command.output().unwrap().status.success());
}

/// A device's connections as `/admin/whois` serves them.
async fn connections(server: &TestServer, admin: &str, user: &str) -> Vec<Value> {
    let (_, whois) = server.call("GET", &format!("/_matrix/client/v3/admin/whois/{user}"), Some(admin), None).await;
    whois["devices"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|d| d["sessions"][0]["connections"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn connection_data_and_audit_entries_past_their_retention_are_purged_and_newer_kept() {
    let server = TestServer::start_with(&[("MISSIVE_RETENTION__PRESET", "luxchat4gov")]).await;
    assert_eq!(server.server_name, "localhost", "the SQL below names the users");
    let admin = register_admin(&server, "operator").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    for user in [&alice, &bob] {
        let response = reqwest::Client::new()
            .get(server.url("/_matrix/client/v3/account/whoami"))
            .bearer_auth(&user.access_token)
            .header("user-agent", "Tchap-Android/2.14")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
    for user in ["@alice:localhost", "@bob:localhost"] {
        common::until("the connection is recorded", async || {
            connections(&server, &admin, user).await.iter().any(|c| c["ip"] == "127.0.0.1").then_some(())
        })
        .await;
    }
    let path = format!("/_synapse/admin/v2/users/{}", bob.user_id);
    assert_eq!(server.call("PUT", &path, Some(&admin), Some(json!({ "external": true }))).await.0, 200);
    assert_eq!(server.call("GET", &path, Some(&admin), None).await.0, 200);

    // Time moves: alice was last seen 200 days ago (past the 6 months), the PUT was 400
    // days ago (past the audit's 12 months); bob and the GET stay recent.
    server
        .execute("UPDATE devices SET last_seen_ts = last_seen_ts - 17280000000 WHERE user_id = '@alice:localhost'")
        .await;
    server.execute("UPDATE audit_log SET ts = ts - 34560000000 WHERE action LIKE 'PUT %'").await;
    let (status, report) =
        server.call("POST", "/_missive/admin/v1/retention/purge", Some(&admin), Some(json!({}))).await;
    assert_eq!(status, 200, "{report}");
    assert!(report["connection_logs_erased"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["audit_entries_deleted"].as_u64().unwrap() >= 1, "{report}");

    let alice_seen = connections(&server, &admin, "@alice:localhost").await;
    assert!(alice_seen.iter().all(|c| c["ip"].is_null() && c["user_agent"].is_null()), "{alice_seen:?}");
    let bob_seen = connections(&server, &admin, "@bob:localhost").await;
    assert!(bob_seen.iter().any(|c| c["ip"] == "127.0.0.1" && c["user_agent"] == "Tchap-Android/2.14"), "{bob_seen:?}");
    let (_, trail) = server.call("GET", "/_missive/admin/v1/audit", Some(&admin), None).await;
    let actions: Vec<&str> =
        trail["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(!actions.contains(&"PUT /_synapse/admin/v2/users/{user_id}"), "{actions:?}");
    assert!(actions.contains(&"GET /_synapse/admin/v2/users/{user_id}"), "{actions:?}");
    assert!(actions.contains(&"POST /_missive/admin/v1/retention/purge"), "the purge itself is audited");
    // A second run finds nothing more.
    let (_, again) = server.call("POST", "/_missive/admin/v1/retention/purge", Some(&admin), Some(json!({}))).await;
    assert_eq!((again["connection_logs_erased"].clone(), again["audit_entries_deleted"].clone()), (json!(0), json!(0)));
}

#[tokio::test]
async fn a_users_export_holds_all_of_their_data_and_nothing_of_others() {
    let server = TestServer::start().await;
    let admin = register_admin(&server, "operator").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let path = format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id);
    server.call("PUT", &path, Some(&alice.access_token), Some(json!({ "displayname": "Alice Export" }))).await;
    let path = format!("/_synapse/admin/v2/users/{}", alice.user_id);
    let change = json!({ "threepids": [{ "medium": "email", "address": "alice@etat.example" }] });
    assert_eq!(server.call("PUT", &path, Some(&admin), Some(change)).await.0, 200);
    let path = format!("/_matrix/client/v3/user/{}/account_data/org.example.settings", alice.user_id);
    server.call("PUT", &path, Some(&alice.access_token), Some(json!({ "theme": "sombre" }))).await;

    // A room in clear shared with bob, an encrypted one, a file.
    let clear =
        server.create_room(&alice.access_token, json!({ "preset": "public_chat", "name": "Salle claire" })).await;
    server.call("POST", &format!("/_matrix/client/v3/join/{clear}"), Some(&bob.access_token), Some(json!({}))).await;
    server
        .send_message(&alice.access_token, &clear, json!({ "msgtype": "m.text", "body": "message en clair 1234" }))
        .await;
    server.send_message(&bob.access_token, &clear, json!({ "msgtype": "m.text", "body": "message de bob 5678" })).await;
    let secret_room = server
        .create_room(
            &alice.access_token,
            json!({ "name": "Salle chiffree", "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }] }),
        )
        .await;
    let path = format!("/_matrix/client/v3/rooms/{secret_room}/send/m.room.encrypted/t1");
    let ciphertext = json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "QkxPQkNJUEhFUg", "sender_key": "k", "device_id": "D", "session_id": "s" });
    assert_eq!(server.call("PUT", &path, Some(&alice.access_token), Some(ciphertext)).await.0, 200);
    let upload = reqwest::Client::new()
        .post(server.url("/_matrix/media/v3/upload?filename=note.txt"))
        .bearer_auth(&alice.access_token)
        .header("content-type", "text/plain")
        .body("piece jointe")
        .send()
        .await
        .unwrap();
    let uri = upload.json::<Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned();

    let path = format!("/_missive/admin/v1/users/{}/export", alice.user_id);
    let (status, export) = server.call("GET", &path, Some(&admin), None).await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["profile"]["displayname"], "Alice Export");
    assert_eq!(export["identifiers"]["threepids"][0]["address"], "alice@etat.example");
    assert!(!export["devices_and_connections"].as_array().unwrap().is_empty());
    let rooms: Vec<&Value> = export["rooms"].as_array().unwrap().iter().collect();
    assert!(rooms.iter().any(|r| r["name"] == "Salle claire" && r["end_to_end_encrypted"] == false), "{rooms:?}");
    assert!(rooms.iter().any(|r| r["name"] == "Salle chiffree" && r["end_to_end_encrypted"] == true), "{rooms:?}");
    let text = export.to_string();
    assert!(text.contains("message en clair 1234"));
    assert_eq!(export["encrypted_messages"], 1);
    assert!(!text.contains("QkxPQkNJUEhFUg"), "ciphertext is named, not copied");
    assert!(export["account_data"].as_array().unwrap().iter().any(|d| d["type"] == "org.example.settings"));
    assert_eq!(export["media"][0]["uri"], uri.as_str());
    assert!(
        export["audit"].as_array().unwrap().iter().any(|e| e["action"] == "PUT /_synapse/admin/v2/users/{user_id}")
    );
    assert!(!text.contains("5678") && !text.contains(&bob.user_id), "nothing of another user: {text}");
    let (status, _) = server.call("GET", &path, Some(&bob.access_token), None).await;
    assert_eq!(status, 403, "operators only");

    // Human-readable, through the command line.
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut command = common::missive_command();
    command.args(["admin", "--url", &server.base_url, "--token", &admin, "user", "export", &alice.user_id]);
    command.args(["--format", "html", "--output", file.path().to_str().unwrap()]);
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let html = std::fs::read_to_string(file.path()).unwrap();
    assert!(html.contains(&format!("Everything this server holds about {}", alice.user_id)), "{html}");
    assert!(html.contains("message en clair 1234") && html.contains("Salle chiffree"));
}

#[tokio::test]
async fn transparency_statistics_count_accounts_activity_messages_and_storage_per_organisation() {
    let server = TestServer::start().await;
    assert_eq!(server.server_name, "localhost", "the SQL below names the users");
    let admin = register_admin(&server, "operator").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    server.register("carol").await;
    server
        .execute("UPDATE users SET organisation = 'police' WHERE user_id IN ('@alice:localhost', '@bob:localhost')")
        .await;
    let room = server.create_room(&alice.access_token, json!({ "preset": "public_chat" })).await;
    server.call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(&bob.access_token), Some(json!({}))).await;
    for i in 0..3 {
        server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": format!("{i}") })).await;
    }
    server.send_message(&bob.access_token, &room, json!({ "msgtype": "m.text", "body": "ok" })).await;
    // Carol has not used her account for two months.
    server.execute("UPDATE devices SET last_seen_ts = 1 WHERE user_id = '@carol:localhost'").await;

    let stats = common::until("activity is recorded", async || {
        let (status, stats) = server.call("GET", "/_missive/admin/v1/statistics", Some(&admin), None).await;
        assert_eq!(status, 200, "{stats}");
        (stats["daily_active_users"].as_i64() >= Some(3)).then_some(stats)
    })
    .await;
    assert_eq!(stats["accounts"], 4, "{stats}");
    assert_eq!(stats["daily_active_users"], 3, "carol is not active: {stats}");
    let today: i64 =
        stats["messages_per_day"].as_array().unwrap().iter().map(|d| d["messages"].as_i64().unwrap()).sum();
    assert_eq!(today, 4, "{stats}");
    assert!(stats["storage"]["database_bytes"].as_i64().unwrap() > 0);
    let police = stats["per_organisation"].as_array().unwrap().iter().find(|o| o["organisation"] == "police").unwrap();
    assert_eq!((police["accounts"].clone(), police["daily_active"].clone()), (json!(2), json!(2)), "{stats}");
    let (status, _) = server.call("GET", "/_missive/admin/v1/statistics", Some(&bob.access_token), None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn held_data_survives_the_purge_until_the_hold_is_lifted() {
    let server = TestServer::start_with(&[("MISSIVE_RETENTION__PRESET", "luxchat4gov")]).await;
    let admin = register_admin(&server, "operator").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut uris = Vec::new();
    for (user, body) in [(&alice, "piece d'alice"), (&bob, "piece de bob")] {
        let response = reqwest::Client::new()
            .post(server.url("/_matrix/media/v3/upload"))
            .bearer_auth(&user.access_token)
            .header("content-type", "text/plain")
            .header("user-agent", "Element/1.11")
            .body(body)
            .send()
            .await
            .unwrap();
        uris.push(response.json::<Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned());
    }
    for user in ["@alice:localhost", "@bob:localhost"] {
        common::until("the connection is recorded", async || {
            connections(&server, &admin, user).await.iter().any(|c| c["ip"] == "127.0.0.1").then_some(())
        })
        .await;
    }
    let download = async |uri: &str| {
        let path = format!("/_matrix/client/v1/media/download/{}", uri.trim_start_matches("mxc://"));
        reqwest::Client::new().get(server.url(&path)).bearer_auth(&admin).send().await.unwrap().status().as_u16()
    };

    // Bad holds are refused; a hold on alice is placed.
    for bad in [
        json!({ "user_id": alice.user_id, "room_id": "!r:localhost", "reason": "x", "reference": "y" }),
        json!({ "user_id": alice.user_id, "reason": "", "reference": "y" }),
        json!({ "user_id": "not a user", "reason": "x", "reference": "y" }),
    ] {
        let (status, _) = server.call("POST", "/_missive/admin/v1/legal_holds", Some(&admin), Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}");
    }
    let hold = json!({ "user_id": alice.user_id, "reason": "requisition judiciaire", "reference": "PJ-2026-118" });
    let (status, placed) = server.call("POST", "/_missive/admin/v1/legal_holds", Some(&admin), Some(hold)).await;
    assert_eq!(status, 200, "{placed}");
    let hold_id = placed["id"].as_i64().unwrap();

    // Everything is now past its retention.
    server.execute("UPDATE media SET created_ts = 1").await;
    server.execute("UPDATE devices SET last_seen_ts = 1").await;
    let (_, report) = server.call("POST", "/_missive/admin/v1/retention/purge", Some(&admin), Some(json!({}))).await;
    assert_eq!(report["media_deleted"], 1, "{report}");
    assert_eq!(download(&uris[0]).await, 200, "alice's file is held");
    assert_eq!(download(&uris[1]).await, 404, "bob's file went");
    assert!(connections(&server, &admin, "@alice:localhost").await.iter().any(|c| c["ip"] == "127.0.0.1"));
    assert!(connections(&server, &admin, "@bob:localhost").await.iter().all(|c| c["ip"].is_null()));
    let files = |dir: &std::path::Path| common::files_under(dir).len();
    assert_eq!(files(&server.data_dir().join("media/sha256")), 1, "bob's file is gone from the disk");

    // Lifted, the hold lets the purge take alice's data too; its record stays.
    let (status, _) =
        server.call("DELETE", &format!("/_missive/admin/v1/legal_holds/{hold_id}"), Some(&admin), None).await;
    assert_eq!(status, 200);
    let (status, _) =
        server.call("DELETE", &format!("/_missive/admin/v1/legal_holds/{hold_id}"), Some(&admin), None).await;
    assert_eq!(status, 404, "already lifted");
    let (_, report) = server.call("POST", "/_missive/admin/v1/retention/purge", Some(&admin), Some(json!({}))).await;
    assert_eq!(report["media_deleted"], 1, "{report}");
    assert_eq!(download(&uris[0]).await, 404);
    assert_eq!(files(&server.data_dir().join("media/sha256")), 0);
    let (_, holds) = server.call("GET", "/_missive/admin/v1/legal_holds", Some(&admin), None).await;
    assert_eq!(holds["holds"][0]["reference"], "PJ-2026-118");
    assert!(holds["holds"][0]["lifted_ts"].as_i64().is_some());
    // Holds are audited.
    let (_, trail) = server.call("GET", "/_missive/admin/v1/audit", Some(&admin), None).await;
    let actions: Vec<&str> =
        trail["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"POST /_missive/admin/v1/legal_holds"));
    assert!(actions.contains(&"DELETE /_missive/admin/v1/legal_holds/{id}"));
}

#[tokio::test]
async fn logins_and_logouts_are_logged_exported_and_purged_with_connection_logs() {
    let server = TestServer::start_with(&[("MISSIVE_RETENTION__PRESET", "tchap")]).await;
    let admin = register_admin(&server, "operator").await;
    let alice = server.register("alice").await;
    let login = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": alice.password });
    let response = reqwest::Client::new()
        .post(server.url("/_matrix/client/v3/login"))
        .header("user-agent", "Tchap-iOS/3.2")
        .json(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let session: Value = response.json().await.unwrap();
    let token = session["access_token"].as_str().unwrap();
    let response = reqwest::Client::new()
        .post(server.url("/_matrix/client/v3/logout"))
        .bearer_auth(token)
        .header("user-agent", "Tchap-iOS/3.2")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    let path = format!("/_missive/admin/v1/users/{}/export", alice.user_id);
    let (_, export) = server.call("GET", &path, Some(&admin), None).await;
    let log = export["logins_and_logouts"].as_array().unwrap();
    let events: Vec<&str> = log.iter().map(|e| e["event"].as_str().unwrap()).collect();
    // The registration's session, then this login and its logout.
    assert_eq!(events, vec!["login", "login", "logout"], "{export}");
    assert!(log.iter().all(|e| e["ip"] == "127.0.0.1"), "{log:?}");
    assert!(log[1..].iter().all(|e| e["user_agent"] == "Tchap-iOS/3.2"), "{log:?}");
    assert_eq!(log[1]["device_id"], session["device_id"]);

    // A year and a day later (Tchap keeps connection data one year), they are gone.
    server.execute("UPDATE session_log SET ts = ts - 31622400000").await;
    let (_, report) = server.call("POST", "/_missive/admin/v1/retention/purge", Some(&admin), Some(json!({}))).await;
    assert!(report["connection_logs_erased"].as_u64().unwrap() >= 3, "{report}");
    let (_, export) = server.call("GET", &path, Some(&admin), None).await;
    assert_eq!(export["logins_and_logouts"], json!([]));
}

#[tokio::test]
async fn a_held_account_is_not_deleted_until_the_hold_is_lifted() {
    let server = TestServer::start_with(&[
        ("MISSIVE_LIFECYCLE__DELETION_AFTER_SECS", "1"),
        ("MISSIVE_LIFECYCLE__CHECK_INTERVAL_SECS", "1"),
    ])
    .await;
    let admin = register_admin(&server, "operator").await;
    let alice = server.register("alice").await;
    let path = format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id);
    server.call("PUT", &path, Some(&alice.access_token), Some(json!({ "displayname": "Alice Tenue" }))).await;
    let hold = json!({ "user_id": alice.user_id, "reason": "enquete", "reference": "REF-7" });
    let (_, placed) = server.call("POST", "/_missive/admin/v1/legal_holds", Some(&admin), Some(hold)).await;
    let deactivate = format!("/_synapse/admin/v1/deactivate/{}", alice.user_id);
    assert_eq!(server.call("POST", &deactivate, Some(&admin), Some(json!({}))).await.0, 200);
    let export = format!("/_missive/admin/v1/users/{}/export", alice.user_id);
    // Several runs of the job pass: the held account keeps its data.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let (_, held) = server.call("GET", &export, Some(&admin), None).await;
    assert_eq!(held["profile"]["displayname"], "Alice Tenue", "{held}");
    let lift = format!("/_missive/admin/v1/legal_holds/{}", placed["id"]);
    assert_eq!(server.call("DELETE", &lift, Some(&admin), None).await.0, 200);
    common::until("the account is deleted once the hold is lifted", async || {
        let (_, export) = server.call("GET", &export, Some(&admin), None).await;
        export["profile"]["displayname"].is_null().then_some(())
    })
    .await;
}

#[tokio::test]
async fn logs_are_json_lines_for_collectors_or_plain_text_without_colour_codes() {
    let json_server = TestServer::start_with(&[("MISSIVE_LOG_FORMAT", "json")]).await;
    json_server.register("alice").await;
    let logs = json_server.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(parsed["level"].is_string() && parsed["timestamp"].is_string(), "{line}");
    }
    let text_server = TestServer::start().await;
    text_server.register("alice").await;
    assert!(!text_server.logs().contains('\u{1b}'), "no colour codes in a log file");
}
