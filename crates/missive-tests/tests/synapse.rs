//! Interoperability with Synapse, the reference homeserver, installed from PyPI: rooms
//! created on either server are joined from the other, messages, edits, redactions and
//! state changes flow both ways, both servers agree on the state, and an encrypted direct
//! chat decrypts both ways.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{Endpoint, TestUser, state_map, synapse::Pair, until};
use serde_json::{Value, json};

/// The latest events of a room as `user` reads them on `server`.
async fn timeline(server: &Endpoint, user: &TestUser, room_id: &str) -> Vec<Value> {
    let path = format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100");
    let (status, body) = server.call("GET", &path, Some(&user.access_token), None).await;
    if status != 200 {
        return Vec::new();
    }
    body["chunk"].as_array().cloned().unwrap_or_default()
}

/// Waits until `user` sees on `server` an event of `room_id` that `matches`.
async fn see(server: &Endpoint, user: &TestUser, room_id: &str, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    until(what, async || timeline(server, user, room_id).await.into_iter().find(|e| matches(e))).await
}

/// Waits until both servers hold the same current state of the room.
async fn agree(pair: &Pair, alice: &TestUser, bob: &TestUser, room_id: &str) {
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let agreed = until("the same state on both servers", async || {
        let here = state_map(&pair.missive, &alice.access_token, room_id).await;
        let there = state_map(&pair.synapse, &bob.access_token, room_id).await;
        if here == there {
            return Some(());
        }
        last = (here, there);
        None
    });
    if tokio::time::timeout(Duration::from_secs(31), agreed).await.is_err() {
        panic!("states differ: missive {:?}, synapse {:?}", last.0, last.1);
    }
}

/// Messages, an edit, a redaction and state changes in both directions, then agreement;
/// alice (of Missive) speaks first when `missive_first`, else bob (of Synapse).
async fn converse(pair: &Pair, room_id: &str, alice: &TestUser, bob: &TestUser, missive_first: bool) {
    let (missive, synapse): (&Endpoint, &Endpoint) = (&pair.missive, &pair.synapse);
    let ((local, local_user), (remote, remote_user)) =
        if missive_first { ((missive, alice), (synapse, bob)) } else { ((synapse, bob), (missive, alice)) };
    let hello =
        local.send_message(&local_user.access_token, room_id, json!({ "msgtype": "m.text", "body": "Bonjour" })).await;
    see(remote, remote_user, room_id, "the first message", |e| e["event_id"] == hello.as_str()).await;
    let reply =
        remote.send_message(&remote_user.access_token, room_id, json!({ "msgtype": "m.text", "body": "Salut" })).await;
    see(local, local_user, room_id, "the reply", |e| e["content"]["body"] == "Salut").await;

    let edit = json!({
        "msgtype": "m.text",
        "body": "* Salut à tous",
        "m.new_content": { "msgtype": "m.text", "body": "Salut à tous" },
        "m.relates_to": { "rel_type": "m.replace", "event_id": reply },
    });
    remote.send_message(&remote_user.access_token, room_id, edit).await;
    see(local, local_user, room_id, "the edit", |e| {
        e["content"]["m.relates_to"]["event_id"] == reply.as_str()
            && e["content"]["m.new_content"]["body"] == "Salut à tous"
    })
    .await;

    let path = format!("/_matrix/client/v3/rooms/{room_id}/redact/{hello}/{}", rand::random::<u64>());
    let (status, body) = local.call("PUT", &path, Some(&local_user.access_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let redaction = body["event_id"].as_str().unwrap().to_owned();
    see(remote, remote_user, room_id, "the redaction", |e| e["event_id"] == redaction.as_str()).await;
    let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{hello}");
    let redacted = until("the message redacted on the other server", async || {
        let (_, event) = remote.call("GET", &path, Some(&remote_user.access_token), None).await;
        event["content"].as_object().is_some_and(|c| c.is_empty()).then_some(event)
    })
    .await;
    assert_eq!(redacted["sender"], local_user.user_id.as_str());

    let topic =
        local.put_state(&local_user.access_token, room_id, "m.room.topic", json!({ "topic": "Coordination" })).await;
    see(remote, remote_user, room_id, "the topic", |e| e["event_id"] == topic.as_str()).await;
    let name = remote
        .put_state(&remote_user.access_token, room_id, "m.room.name", json!({ "name": "Cellule de crise" }))
        .await;
    see(local, local_user, room_id, "the name", |e| e["event_id"] == name.as_str()).await;
    agree(pair, alice, bob, room_id).await;
}

#[tokio::test]
async fn a_missive_user_and_a_synapse_user_share_rooms_created_on_either_server() {
    let pair = Pair::start().await;
    let alice = pair.missive.register("alice").await;
    let bob = pair.synapse.register("bob").await;

    // A room of Synapse: bob invites alice (invite v2 towards Missive), she accepts
    // (make_join/send_join towards Synapse) and gives herself the power to name it.
    let synapse_room = pair
        .synapse
        .create_room(
            &bob.access_token,
            json!({
                "preset": "private_chat",
                "invite": [alice.user_id],
                "power_level_content_override": { "users": { alice.user_id.clone(): 100 } },
            }),
        )
        .await;
    until("alice is invited", async || {
        let (_, sync) = pair.missive.call("GET", "/_matrix/client/v3/sync", Some(&alice.access_token), None).await;
        sync["rooms"]["invite"].get(&synapse_room).map(|_| ())
    })
    .await;
    let path = format!("/_matrix/client/v3/rooms/{synapse_room}/join");
    let (status, body) = pair.missive.call("POST", &path, Some(&alice.access_token), Some(json!({}))).await;
    assert_eq!(status, 200, "alice joins bob's room: {body}");
    see(&pair.synapse, &bob, &synapse_room, "alice's join", |e| {
        e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str() && e["content"]["membership"] == "join"
    })
    .await;
    converse(&pair, &synapse_room, &alice, &bob, true).await;
    // Missive joined with the members left out, then fetched them from Synapse.
    let (status, members) = pair
        .missive
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{synapse_room}/joined_members"),
            Some(&alice.access_token),
            None,
        )
        .await;
    assert_eq!((status, members["joined"].as_object().map(|m| m.len())), (200, Some(2)), "{members}");
    let logs = pair.missive.logs();
    assert!(logs.lines().any(|l| l.contains("joined a room of another server") && l.contains("partial_state=true")));
    assert!(logs.contains("completed the state of a room joined partially"), "{logs}");

    // A room of Missive, found by its alias: Synapse asks Missive's directory, then joins.
    let missive_room = pair
        .missive
        .create_room(
            &alice.access_token,
            json!({
                "preset": "public_chat",
                "room_alias_name": "crise",
                "power_level_content_override": { "users": { bob.user_id.clone(): 50 } },
            }),
        )
        .await;
    let alias = format!("#crise:{}", pair.missive.server_name);
    let path = format!("/_matrix/client/v3/join/{}", alias.replace('#', "%23"));
    let (status, body) = pair.synapse.call("POST", &path, Some(&bob.access_token), Some(json!({}))).await;
    assert_eq!(status, 200, "bob joins alice's room through Synapse: {body}");
    assert_eq!(body["room_id"], missive_room.as_str());
    see(&pair.missive, &alice, &missive_room, "bob's join", |e| {
        e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str() && e["content"]["membership"] == "join"
    })
    .await;
    converse(&pair, &missive_room, &alice, &bob, false).await;

    // Bob's leave (make_leave/send_leave towards Missive) reaches alice.
    let path = format!("/_matrix/client/v3/rooms/{missive_room}/leave");
    let (status, _) = pair.synapse.call("POST", &path, Some(&bob.access_token), Some(json!({}))).await;
    assert_eq!(status, 200);
    see(&pair.missive, &alice, &missive_room, "bob's leave", |e| {
        e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str() && e["content"]["membership"] == "leave"
    })
    .await;
}

#[tokio::test]
async fn an_encrypted_direct_chat_between_missive_and_synapse_decrypts_both_ways() {
    use matrix_sdk::ruma::{
        OwnedRoomId, OwnedUserId, api::client::room::create_room::v3::Request as CreateRoom,
        events::room::message::RoomMessageEventContent,
    };
    let pair = Pair::start().await;
    let (alice, _) = pair.missive.client("alice").await;
    let (bob, bob_user) = pair.synapse.client("bob").await;
    for client in [&alice, &bob] {
        client.sync_once(Default::default()).await.expect("first sync uploads device keys");
    }
    let bob_id = OwnedUserId::try_from(bob_user.user_id.as_str()).unwrap();
    let mut request = CreateRoom::new();
    request.is_direct = true;
    request.invite = vec![bob_id];
    request.preset = Some(matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset::TrustedPrivateChat);
    request.initial_state = vec![
        matrix_sdk::ruma::serde::Raw::new(&json!({
            "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" }
        }))
        .unwrap()
        .cast_unchecked(),
    ];
    let room = alice.create_room(request).await.expect("alice creates the direct chat");
    let room_id: OwnedRoomId = room.room_id().to_owned();
    until("bob is invited", async || {
        bob.sync_once(Default::default()).await.ok()?;
        bob.get_room(&room_id).filter(|r| r.state() == matrix_sdk::RoomState::Invited).map(|_| ())
    })
    .await;
    bob.join_room_by_id(&room_id).await.expect("bob joins through Synapse");
    until("alice sees bob joined", async || {
        alice.sync_once(Default::default()).await.ok()?;
        let members = alice.get_room(&room_id)?.members(matrix_sdk::RoomMemberships::JOIN).await.ok()?;
        (members.len() == 2).then_some(())
    })
    .await;

    let alice_room = alice.get_room(&room_id).expect("alice's room");
    alice_room.send(RoomMessageEventContent::text_plain("Le dossier est prêt")).await.expect("send");
    common::receive_text(&bob, &room_id, "Le dossier est prêt").await;
    bob.get_room(&room_id)
        .expect("bob's room")
        .send(RoomMessageEventContent::text_plain("Merci, je le relis"))
        .await
        .expect("reply");
    common::receive_text(&alice, &room_id, "Merci, je le relis").await;
}

#[tokio::test]
async fn after_an_outage_everything_synapse_sent_meanwhile_reaches_missive() {
    let mut pair = Pair::start().await;
    let alice = pair.missive.register("alice").await;
    let bob = pair.synapse.register("bob").await;
    let room_id = pair
        .synapse
        .create_room(
            &bob.access_token,
            json!({ "preset": "public_chat", "room_alias_name": "veille", "topic": "Avant" }),
        )
        .await;
    let path = format!("/_matrix/client/v3/join/%23veille:{}", pair.synapse.server_name);
    let (status, body) = pair.missive.call("POST", &path, Some(&alice.access_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let hello =
        pair.synapse.send_message(&bob.access_token, &room_id, json!({ "msgtype": "m.text", "body": "Bonjour" })).await;
    see(&pair.missive, &alice, &room_id, "the first message", |e| e["event_id"] == hello.as_str()).await;

    // Missive is down while the topic changes and 30 messages follow; back up, it gets
    // them all from Synapse's retries and both servers agree on the room's state.
    pair.missive.stop();
    pair.synapse.put_state(&bob.access_token, &room_id, "m.room.topic", json!({ "topic": "Pendant la coupure" })).await;
    let mut last = String::new();
    for i in 0..30 {
        last = pair
            .synapse
            .send_message(&bob.access_token, &room_id, json!({ "msgtype": "m.text", "body": format!("message {i}") }))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    pair.missive.start_again();

    see(&pair.missive, &alice, &room_id, "the latest message", |e| e["event_id"] == last.as_str()).await;
    let topic = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/");
    until("the topic set during the outage", async || {
        let (_, content) = pair.missive.call("GET", &topic, Some(&alice.access_token), None).await;
        (content["topic"] == "Pendant la coupure").then_some(())
    })
    .await;
    agree(&pair, &alice, &bob, &room_id).await;
}

#[tokio::test]
async fn synapse_follows_the_devices_a_missive_user_adds_and_removes() {
    let pair = Pair::start().await;
    let alice = pair.synapse.register("alice").await;
    let (first, bob) = pair.missive.client("bob").await;
    first.sync_once(Default::default()).await.expect("the first device uploads its keys");
    pair.synapse
        .create_room(&alice.access_token, json!({ "preset": "public_chat", "room_alias_name": "appareils" }))
        .await;
    let path = format!("/_matrix/client/v3/join/%23appareils:{}", pair.synapse.server_name);
    let (status, body) = pair.missive.call("POST", &path, Some(&bob.access_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    // The devices of bob that alice's server gives her, each with its identity keys.
    let devices = async || {
        let query = json!({ "device_keys": { bob.user_id.clone(): [] } });
        let (_, answer) =
            pair.synapse.call("POST", "/_matrix/client/v3/keys/query", Some(&alice.access_token), Some(query)).await;
        let mut ids: Vec<String> = answer["device_keys"][&bob.user_id]
            .as_object()
            .map(|m| m.iter().filter(|(_, d)| d["keys"].is_object()).map(|(id, _)| id.clone()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    };
    let first_id = first.device_id().unwrap().to_string();
    until("alice's server knows bob's device", async || (devices().await == [first_id.clone()]).then_some(())).await;

    // A second device: Synapse, which now follows bob's list, learns of it with its keys.
    let second = pair.missive.login(&bob).await;
    second.sync_once(Default::default()).await.expect("the second device uploads its keys");
    let second_id = second.device_id().unwrap().to_string();
    let mut both = vec![first_id.clone(), second_id.clone()];
    both.sort();
    until("alice's server knows both devices", async || (devices().await == both).then_some(())).await;

    // Bob removes it: Synapse forgets it.
    let path = format!("/_matrix/client/v3/devices/{second_id}");
    let (status, challenge) = pair.missive.call("DELETE", &path, Some(&bob.access_token), Some(json!({}))).await;
    assert_eq!(status, 401, "{challenge}");
    let auth = json!({ "auth": {
        "type": "m.login.password", "session": challenge["session"],
        "identifier": { "type": "m.id.user", "user": bob.user_id }, "password": bob.password,
    } });
    let (status, body) = pair.missive.call("DELETE", &path, Some(&bob.access_token), Some(auth)).await;
    assert_eq!(status, 200, "{body}");
    until("alice's server forgets the removed device", async || (devices().await == [first_id.clone()]).then_some(()))
        .await;
}

#[tokio::test]
async fn synapse_users_see_which_missive_accounts_are_deactivated() {
    let pair = Pair::start().await;
    let alice = pair.missive.register("alice").await;
    let bob = pair.synapse.register("bob").await;
    let admin = common::register_admin(&pair.missive, "root").await;
    let path = "/_matrix/client/unstable/org.matrix.msc3720/account_status";
    let ghost = format!("@ghost:{}", pair.synapse.server_name);

    // Missive asks Synapse: Synapse 1.163's federation handler of MSC3720 fails (its
    // `on_POST` lacks an argument, a 500), so its users are listed as failures, the request
    // itself answered.
    let ask = json!({ "user_ids": [bob.user_id, ghost] });
    let (status, body) = pair.missive.call("POST", path, Some(&alice.access_token), Some(ask)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["failures"], json!([bob.user_id, ghost]), "{body}");

    // Synapse asks Missive, before and while alice is suspended.
    let ask = json!({ "user_ids": [alice.user_id] });
    let (status, body) = pair.synapse.call("POST", path, Some(&bob.access_token), Some(ask.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["account_statuses"][&alice.user_id], json!({ "exists": true, "deactivated": false }), "{body}");
    let suspend = format!("/_synapse/admin/v1/suspend/{}", alice.user_id);
    let (status, _) = pair.missive.call("PUT", &suspend, Some(&admin), Some(json!({ "suspend": true }))).await;
    assert_eq!(status, 200);
    let (_, body) = pair.synapse.call("POST", path, Some(&bob.access_token), Some(ask)).await;
    assert_eq!(body["account_statuses"][&alice.user_id]["deactivated"], true, "{body}");
}

/// Uploads `bytes` to `server` and answers the `mxc://` URI.
async fn upload(server: &Endpoint, user: &TestUser, bytes: &[u8]) -> String {
    let response = reqwest::Client::new()
        .post(server.url("/_matrix/media/v3/upload?filename=note.txt"))
        .bearer_auth(&user.access_token)
        .header("content-type", "text/plain")
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json::<Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned()
}

/// Downloads an `mxc://` URI through `server`'s authenticated media endpoint.
async fn download(server: &Endpoint, user: &TestUser, uri: &str) -> (u16, Vec<u8>) {
    let path = format!("/_matrix/client/v1/media/download/{}", uri.strip_prefix("mxc://").unwrap());
    let response = reqwest::Client::new().get(server.url(&path)).bearer_auth(&user.access_token).send().await.unwrap();
    (response.status().as_u16(), response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn files_uploaded_on_either_server_are_downloaded_from_the_other() {
    let pair = Pair::start().await;
    let alice = pair.missive.register("alice").await;
    let bob = pair.synapse.register("bob").await;

    // Synapse fetches Missive's file over federation (multipart, X-Matrix signed).
    let note = b"compte rendu, de Missive vers Synapse".to_vec();
    let uri = upload(&pair.missive, &alice, &note).await;
    assert_eq!(download(&pair.synapse, &bob, &uri).await, (200, note));

    // Missive fetches Synapse's, stores it, and serves it to its own users.
    let reply = b"accuse de reception, de Synapse vers Missive".to_vec();
    let uri = upload(&pair.synapse, &bob, &reply).await;
    assert_eq!(download(&pair.missive, &alice, &uri).await, (200, reply));

    // An unknown media ID of the other server is Synapse's 404, passed on.
    let missing = format!("mxc://{}/doesnotexist", pair.synapse.server_name);
    assert_eq!(download(&pair.missive, &alice, &missing).await.0, 404);
}
