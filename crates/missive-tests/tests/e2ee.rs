//! End-to-end encryption with real `matrix-sdk` clients: the server carries keys and
//! ciphertext and never sees plaintext.

mod common;

use std::time::Duration;

use common::{TestServer, TestUser, body_of, raw_json, receive_text, sync_until};
use matrix_sdk::{
    Client,
    room::MessagesOptions,
    ruma::{
        OwnedRoomId, UserId,
        api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset},
        events::room::message::RoomMessageEventContent,
    },
};
use serde_json::json;

/// Alice opens an encrypted direct chat with bob; both clients are synced and ready.
async fn direct_chat(server: &TestServer) -> (Client, TestUser, Client, TestUser, OwnedRoomId) {
    let (alice, alice_user) = server.client("alice").await;
    let (bob, bob_user) = server.client("bob").await;
    for client in [&alice, &bob] {
        client.sync_once(Default::default()).await.expect("first sync uploads device keys");
    }
    let mut request = CreateRoom::new();
    request.is_direct = true;
    request.preset = Some(RoomPreset::TrustedPrivateChat);
    request.invite = vec![UserId::parse(&bob_user.user_id).unwrap()];
    let room = alice.create_room(request).await.expect("create DM");
    let room_id = room.room_id().to_owned();
    sync_until(&bob, (), |_, r| r.rooms.invited.contains_key(&room_id)).await;
    bob.join_room_by_id(&room_id).await.expect("join");
    alice.sync_once(Default::default()).await.unwrap();
    bob.sync_once(Default::default()).await.unwrap();
    (alice, alice_user, bob, bob_user, room_id)
}

#[tokio::test]
async fn encrypted_direct_chat_decrypts_both_ways() {
    let server = TestServer::start().await;
    let (alice, alice_user, bob, _, room_id) = direct_chat(&server).await;
    let alice_room = alice.get_room(&room_id).unwrap();
    assert!(
        alice_room.latest_encryption_state().await.unwrap().is_encrypted(),
        "direct chats are encrypted by default"
    );

    let sent =
        alice_room.send(RoomMessageEventContent::text_plain("Bonjour Bob")).await.expect("send").response.event_id;
    receive_text(&bob, &room_id, "Bonjour Bob").await;
    bob.get_room(&room_id).unwrap().send(RoomMessageEventContent::text_plain("Bonjour Alice")).await.expect("reply");
    receive_text(&alice, &room_id, "Bonjour Alice").await;

    // What the server holds and serves is ciphertext.
    let (_, event) = server
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/event/{sent}"), Some(&alice_user.access_token), None)
        .await;
    assert_eq!(event["type"], "m.room.encrypted", "{event}");
    assert_eq!(event["content"]["algorithm"], "m.megolm.v1.aes-sha2");
}

#[tokio::test]
async fn the_operator_cannot_read_messages() {
    let server = TestServer::start().await;
    let (alice, _, bob, _, room_id) = direct_chat(&server).await;
    let marker = "MARQUEUR-CONFIDENTIEL-7f3a9c";
    alice.get_room(&room_id).unwrap().send(RoomMessageEventContent::text_plain(marker)).await.expect("send");
    receive_text(&bob, &room_id, marker).await;

    // Not in the database: every byte of the SQLite files, or every row of every table.
    match server.sqlite_path() {
        Some(path) => {
            for file in [path.clone(), path.with_extension("db-wal")] {
                if let Ok(bytes) = std::fs::read(&file) {
                    assert!(
                        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                        "marker found in {}",
                        file.display()
                    );
                }
            }
        }
        None => {
            let tables = server
                .query_strings("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'")
                .await;
            assert!(tables.len() > 10, "{tables:?}");
            let dump = server.dump_postgres(&tables).await;
            assert!(dump.len() > 1000, "the dump covers the data");
            assert!(!dump.contains(marker), "marker found in the PostgreSQL tables");
        }
    }
    // Not in the logs either (which run at debug level in tests).
    let logs = server.logs();
    assert!(!logs.is_empty());
    assert!(!logs.contains(marker), "marker found in the server log");
}

#[tokio::test]
async fn one_time_keys_run_out_and_the_fallback_key_still_forms_a_session() {
    let server = TestServer::start().await;
    let (alice, _, bob, bob_user, room_id) = direct_chat(&server).await;
    let bob_device = bob.device_id().unwrap().to_string();
    // A third party drains every one-time key of bob's device.
    let mallory = server.register("mallory").await;
    let claim = json!({ "one_time_keys": { bob_user.user_id.clone(): { bob_device.clone(): "signed_curve25519" } } });
    let mut fallback_seen = false;
    for _ in 0..200 {
        let (status, claimed) = server
            .call("POST", "/_matrix/client/v3/keys/claim", Some(&mallory.access_token), Some(claim.clone()))
            .await;
        assert_eq!(status, 200);
        let keys = &claimed["one_time_keys"][&bob_user.user_id][&bob_device];
        let key =
            keys.as_object().expect("a key is always returned while a fallback key exists").values().next().unwrap();
        if key["fallback"] == true {
            fallback_seen = true;
            break;
        }
    }
    assert!(fallback_seen, "the fallback key is handed out once one-time keys are gone");
    let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&bob_user.access_token), None).await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0, "{}", sync["device_one_time_keys_count"]);

    // Alice has never talked to bob's device: her client claims, gets the fallback key, and
    // the Olm session still forms.
    alice
        .get_room(&room_id)
        .unwrap()
        .send(RoomMessageEventContent::text_plain("après épuisement"))
        .await
        .expect("send");
    receive_text(&bob, &room_id, "après épuisement").await;
}

#[tokio::test]
async fn to_device_messages_are_delivered_once_and_survive_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let send = |txn: &str, text: &str| {
        (
            format!("/_matrix/client/v3/sendToDevice/m.test.ping/{txn}"),
            json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "text": text } } } }),
        )
    };
    let (_, initial) = server.call("GET", "/_matrix/client/v3/sync", Some(&bob.access_token), None).await;
    let mut since = initial["next_batch"].as_str().unwrap().to_owned();

    let (path, body) = send("t1", "un");
    assert_eq!(server.call("PUT", &path, Some(&alice.access_token), Some(body.clone())).await.0, 200);
    assert_eq!(server.call("PUT", &path, Some(&alice.access_token), Some(body)).await.0, 200, "retry is idempotent");
    let sync_from = |since: &str| format!("/_matrix/client/v3/sync?since={since}&timeout=0");
    let (_, first) = server.call("GET", &sync_from(&since), Some(&bob.access_token), None).await;
    let events = first["to_device"]["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "delivered once even though sent twice: {first}");
    assert_eq!(events[0]["content"]["text"], "un");
    assert_eq!(events[0]["sender"], alice.user_id);
    // A client that did not get the answer retries with the same token: delivered again.
    let (_, retry) = server.call("GET", &sync_from(&since), Some(&bob.access_token), None).await;
    assert_eq!(retry["to_device"]["events"].as_array().unwrap().len(), 1, "kept until acknowledged");
    since = retry["next_batch"].as_str().unwrap().to_owned();
    let (_, after_ack) = server.call("GET", &sync_from(&since), Some(&bob.access_token), None).await;
    assert!(after_ack["to_device"]["events"].as_array().unwrap().is_empty(), "gone once acknowledged");
    since = after_ack["next_batch"].as_str().unwrap().to_owned();

    let (path, body) = send("t2", "deux");
    server.call("PUT", &path, Some(&alice.access_token), Some(body)).await;
    server.restart();
    let (_, after_restart) = server.call("GET", &sync_from(&since), Some(&bob.access_token), None).await;
    let events = after_restart["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{after_restart}");
    assert_eq!(events[0]["content"]["text"], "deux");
}

#[tokio::test]
async fn keys_upload_query_claim_and_device_deletion() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let device_keys = json!({
        "user_id": alice.user_id, "device_id": alice.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{}", alice.device_id): "cKey", format!("ed25519:{}", alice.device_id): "eKey" },
        "signatures": {}
    });
    let upload = json!({
        "device_keys": device_keys,
        "one_time_keys": { "signed_curve25519:AAAA": { "key": "otk1", "signatures": {} } },
        "fallback_keys": { "signed_curve25519:FFFF": { "key": "fb1", "fallback": true, "signatures": {} } },
    });
    let (status, counts) =
        server.call("POST", "/_matrix/client/v3/keys/upload", Some(&alice.access_token), Some(upload)).await;
    assert_eq!(status, 200, "{counts}");
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 1);
    let forged = json!({ "device_keys": { "user_id": bob.user_id, "device_id": "X", "keys": {} } });
    let (status, _) =
        server.call("POST", "/_matrix/client/v3/keys/upload", Some(&alice.access_token), Some(forged)).await;
    assert_eq!(status, 400, "nobody uploads keys for someone else's device");

    let query = json!({ "device_keys": { alice.user_id.clone(): [] } });
    let (_, keys) =
        server.call("POST", "/_matrix/client/v3/keys/query", Some(&bob.access_token), Some(query.clone())).await;
    assert_eq!(
        keys["device_keys"][&alice.user_id][&alice.device_id]["keys"][format!("ed25519:{}", alice.device_id)],
        "eKey"
    );

    let claim = json!({ "one_time_keys": { alice.user_id.clone(): { alice.device_id.clone(): "signed_curve25519" } } });
    let (_, first) =
        server.call("POST", "/_matrix/client/v3/keys/claim", Some(&bob.access_token), Some(claim.clone())).await;
    assert_eq!(first["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:AAAA"]["key"], "otk1");
    let (_, second) =
        server.call("POST", "/_matrix/client/v3/keys/claim", Some(&bob.access_token), Some(claim.clone())).await;
    assert_eq!(second["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:FFFF"]["key"], "fb1");
    let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&alice.access_token), None).await;
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]), "the used fallback key is reported");

    // Deleting the device deletes its keys and pending messages.
    let msg = json!({ "messages": { alice.user_id.clone(): { alice.device_id.clone(): { "x": 1 } } } });
    server.call("PUT", "/_matrix/client/v3/sendToDevice/m.test/d1", Some(&bob.access_token), Some(msg)).await;
    let (_, second_login) = server
        .call(
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": alice.password })),
        )
        .await;
    let other_token = second_login["access_token"].as_str().unwrap();
    let auth = json!({ "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": alice.user_id },
        "password": alice.password } });
    let path = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    let (status, body) = server.call("DELETE", &path, Some(other_token), Some(auth)).await;
    assert_eq!(status, 200, "{body}");
    let (_, keys) = server.call("POST", "/_matrix/client/v3/keys/query", Some(&bob.access_token), Some(query)).await;
    assert_eq!(keys["device_keys"][&alice.user_id], json!({}), "{keys}");
    let (_, claimed) = server.call("POST", "/_matrix/client/v3/keys/claim", Some(&bob.access_token), Some(claim)).await;
    assert_eq!(claimed["one_time_keys"], json!({}));
    let leftovers = server.query_strings("SELECT device_id FROM to_device").await;
    assert!(leftovers.is_empty(), "pending to-device messages of the deleted device are gone: {leftovers:?}");
}

#[tokio::test]
async fn cross_signing_and_backup_restore_history_on_a_new_device() {
    let server = TestServer::start().await;
    let (alice, alice_user, bob, _, room_id) = direct_chat(&server).await;
    let alice_room = alice.get_room(&room_id).unwrap();
    alice_room.send(RoomMessageEventContent::text_plain("historique à retrouver")).await.expect("send");
    receive_text(&bob, &room_id, "historique à retrouver").await;

    alice.encryption().wait_for_e2ee_initialization_tasks().await;
    // The first upload of cross-signing keys needs no user-interactive authentication.
    alice.encryption().bootstrap_cross_signing(None).await.expect("bootstrap cross-signing");
    let recovery_key = alice.encryption().recovery().enable().await.expect("enable recovery (cross-signing + backup)");
    alice.encryption().backups().wait_for_steady_state().await.expect("keys backed up");
    let status = alice.encryption().cross_signing_status().await.expect("cross-signing status");
    assert!(status.has_master && status.has_self_signing && status.has_user_signing, "{status:?}");
    let (_, backup) =
        server.call("GET", "/_matrix/client/v3/room_keys/version", Some(&alice_user.access_token), None).await;
    assert!(backup["count"].as_i64().unwrap() >= 1, "the session key is in the backup: {backup}");

    // A new device of alice restores with the recovery key and reads the earlier history.
    let fresh = server.login(&alice_user).await;
    fresh.sync_once(Default::default()).await.unwrap();
    fresh.encryption().recovery().recover(&recovery_key).await.expect("recover");
    fresh.encryption().backups().download_room_keys_for_room(&room_id).await.expect("download keys");
    let room = fresh.get_room(&room_id).unwrap();
    let mut found = false;
    for _ in 0..20 {
        let page = room.messages(MessagesOptions::backward()).await.expect("history");
        found = page.chunk.iter().any(|e| body_of(&raw_json(e)).as_deref() == Some("historique à retrouver"));
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(found, "the new device decrypts history restored from the backup");
}

#[tokio::test]
async fn mandatory_encryption_keeps_private_rooms_encrypted_and_public_rooms_clear() {
    let server = TestServer::start_with(&[("MISSIVE_ENCRYPTION_MANDATORY", "true")]).await;
    let user = server.register("alice").await;
    let token = Some(user.access_token.as_str());
    let (_, private) = server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({}))).await;
    let private = private["room_id"].as_str().unwrap();
    let state = |room: &str, kind: &str| format!("/_matrix/client/v3/rooms/{room}/state/{kind}/");
    let (status, enc) = server.call("GET", &state(private, "m.room.encryption"), token, None).await;
    assert_eq!((status, enc["algorithm"].as_str()), (200, Some("m.megolm.v1.aes-sha2")));
    let (status, _) =
        server.call("PUT", &state(private, "m.room.encryption"), token, Some(json!({ "algorithm": "none" }))).await;
    assert_eq!(status, 403, "encryption cannot be weakened");
    let (status, _) =
        server.call("PUT", &state(private, "m.room.join_rules"), token, Some(json!({ "join_rule": "public" }))).await;
    assert_eq!(status, 403, "an encrypted room cannot be made public");

    let (_, public) =
        server.call("POST", "/_matrix/client/v3/createRoom", token, Some(json!({ "preset": "public_chat" }))).await;
    let public = public["room_id"].as_str().unwrap();
    let (status, _) = server.call("GET", &state(public, "m.room.encryption"), token, None).await;
    assert_eq!(status, 404, "public rooms are not encrypted");
    let (status, body) = server
        .call("PUT", &state(public, "m.room.encryption"), token, Some(json!({ "algorithm": "m.megolm.v1.aes-sha2" })))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
}

#[tokio::test]
async fn replacing_cross_signing_keys_needs_the_password() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let master = |key: &str| json!({ "master_key": { "user_id": alice.user_id, "usage": ["master"], "keys": { format!("ed25519:{key}"): key } } });
    let path = "/_matrix/client/v3/keys/device_signing/upload";
    let (status, body) = server.call("POST", path, Some(&alice.access_token), Some(master("first"))).await;
    assert_eq!(status, 200, "first upload needs no UIA: {body}");
    let (status, _) = server.call("POST", path, Some(&alice.access_token), Some(master("first"))).await;
    assert_eq!(status, 200, "re-uploading the same key is harmless");
    let (status, challenge) = server.call("POST", path, Some(&alice.access_token), Some(master("second"))).await;
    assert_eq!(status, 401, "{challenge}");
    let mut with_auth = master("second");
    with_auth["auth"] = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": alice.user_id },
        "password": alice.password, "session": challenge["session"] });
    let (status, body) = server.call("POST", path, Some(&alice.access_token), Some(with_auth)).await;
    assert_eq!(status, 200, "{body}");
    let query = json!({ "device_keys": { alice.user_id.clone(): [] } });
    let (_, keys) = server.call("POST", "/_matrix/client/v3/keys/query", Some(&alice.access_token), Some(query)).await;
    assert_eq!(keys["master_keys"][&alice.user_id]["keys"]["ed25519:second"], "second");
}

#[tokio::test]
async fn a_dehydrated_device_receives_messages_while_all_devices_are_off() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let base = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";
    let device = json!({
        "device_id": "DEHYDRATED1",
        "device_data": { "algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": "opaque", "nonce": "n" },
        "device_keys": { "user_id": alice.user_id, "device_id": "DEHYDRATED1", "algorithms": [], "keys": {}, "signatures": {} },
        "initial_device_display_name": "Dehydrated",
    });
    let (status, body) = server.call("PUT", base, Some(&alice.access_token), Some(device)).await;
    assert_eq!(status, 200, "{body}");
    let (_, got) = server.call("GET", base, Some(&alice.access_token), None).await;
    assert_eq!(got["device_id"], "DEHYDRATED1");
    assert_eq!(got["device_data"]["device_pickle"], "opaque");

    let msg = json!({ "messages": { alice.user_id.clone(): { "DEHYDRATED1": { "room_key": "for later" } } } });
    server.call("PUT", "/_matrix/client/v3/sendToDevice/m.room.encrypted/h1", Some(&bob.access_token), Some(msg)).await;
    let events_path = format!("{base}/DEHYDRATED1/events");
    let (status, events) = server.call("POST", &events_path, Some(&alice.access_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(events["events"][0]["content"]["room_key"], "for later");
    let next = events["next_batch"].clone();
    let (_, again) =
        server.call("POST", &events_path, Some(&alice.access_token), Some(json!({ "next_batch": next }))).await;
    assert_eq!(again["events"], json!([]), "acknowledged messages are gone");
    let (status, _) = server.call("DELETE", base, Some(&alice.access_token), None).await;
    assert_eq!(status, 200);
    let (status, _) = server.call("GET", base, Some(&alice.access_token), None).await;
    assert_eq!(status, 404);
}
