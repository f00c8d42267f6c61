//! Two agents chatting through real `matrix-sdk` clients: rooms, invites, 100 messages in
//! order, pagination, edits, reactions, threads, redactions, typing and receipts.

mod common;

use std::time::Duration;

use common::{TestServer, TestUser, raw_json, sync_until};
use matrix_sdk::{
    Client, Room,
    room::MessagesOptions,
    ruma::{
        OwnedEventId, OwnedRoomId, RoomId, UserId,
        api::client::{
            receipt::create_receipt::v3::ReceiptType,
            room::create_room::v3::{Request as CreateRoom, RoomPreset},
        },
        events::{
            reaction::ReactionEventContent,
            receipt::ReceiptThread,
            relation::{Annotation, Thread},
            room::message::{ReplacementMetadata, RoomMessageEventContent},
        },
    },
};
use serde_json::{Value, json};

/// Alice creates a private (hence end-to-end encrypted) room, invites bob, bob joins.
async fn room_with_bob(server: &TestServer) -> (Client, Client, OwnedRoomId) {
    room_with_bob_preset(server, None).await
}

async fn room_with_bob_preset(server: &TestServer, preset: Option<RoomPreset>) -> (Client, Client, OwnedRoomId) {
    let (alice, _) = server.client("alice").await;
    let (bob, bob_user) = server.client("bob").await;
    let mut request = CreateRoom::new();
    request.preset = preset;
    request.name = Some("Cellule de crise".into());
    request.invite = vec![UserId::parse(&bob_user.user_id).unwrap()];
    let room = alice.create_room(request).await.expect("create room");
    let room_id = room.room_id().to_owned();
    sync_until(&bob, (), |_, r| r.rooms.invited.contains_key(&room_id)).await;
    bob.join_room_by_id(&room_id).await.expect("bob joins");
    alice.sync_once(Default::default()).await.expect("alice syncs");
    (alice, bob, room_id)
}

fn room(client: &Client, room_id: &RoomId) -> Room {
    client.get_room(room_id).expect("room known to client")
}

fn body_of(event: &Value) -> Option<String> {
    event["content"]["body"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn two_users_exchange_100_messages_in_order() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = room_with_bob(&server).await;
    let alice_room = room(&alice, &room_id);
    bob.sync_once(Default::default()).await.expect("bob syncs");
    let mut received = Vec::<String>::new();
    // Four bursts of 25, bob syncing after each, as a chat goes.
    for burst in 0..4 {
        for i in 0..25 {
            let n = burst * 25 + i;
            alice_room.send(RoomMessageEventContent::text_plain(format!("message {n}"))).await.expect("send");
        }
        received = sync_until(&bob, received, |seen, response| {
            if let Some(update) = response.rooms.joined.get(&room_id) {
                assert!(!update.timeline.limited, "25 new messages fit in a timeline of 50");
                for event in &update.timeline.events {
                    if let Some(body) = body_of(&raw_json(event)) {
                        seen.push(body);
                    }
                }
            }
            seen.len() >= (burst + 1) * 25
        })
        .await;
    }
    let expected: Vec<String> = (0..100).map(|i| format!("message {i}")).collect();
    assert_eq!(received, expected, "bob receives every message exactly once, in order");

    // And back: bob's reply reaches alice.
    room(&bob, &room_id).send(RoomMessageEventContent::text_plain("bien reçu")).await.expect("reply");
    sync_until(&alice, (), |_, r| {
        r.rooms
            .joined
            .get(&room_id)
            .is_some_and(|u| u.timeline.events.iter().any(|e| body_of(&raw_json(e)).as_deref() == Some("bien reçu")))
    })
    .await;
}

#[tokio::test]
async fn history_paginates_back_with_messages() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = room_with_bob(&server).await;
    let alice_room = room(&alice, &room_id);
    for i in 0..30 {
        alice_room.send(RoomMessageEventContent::text_plain(format!("m{i}"))).await.expect("send");
    }
    // Bob's client receives the room key over to-device messages, then decrypts history.
    sync_until(&bob, 0, |n, r| {
        *n += r.rooms.joined.get(&room_id).map_or(0, |u| u.timeline.events.len());
        *n >= 30
    })
    .await;
    let bob_room = room(&bob, &room_id);
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut options = MessagesOptions::backward();
        options.limit = 7u32.into();
        options.from = from.clone();
        let page = bob_room.messages(options).await.expect("messages");
        pages += 1;
        seen.extend(page.chunk.iter().filter_map(|e| body_of(&raw_json(e))));
        match page.end {
            Some(end) => from = Some(end),
            None => break,
        }
        assert!(pages < 50, "pagination must end");
    }
    let expected: Vec<String> = (0..30).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(seen, expected, "backward pagination returns every message once, newest first");
    assert!(pages >= 5, "30 messages at 7 per page take several pages");

    // Forward from the start gives them in sending order.
    let mut forward = MessagesOptions::forward();
    forward.limit = 100u32.into();
    let page = bob_room.messages(forward).await.expect("forward");
    let bodies: Vec<String> = page.chunk.iter().filter_map(|e| body_of(&raw_json(e))).collect();
    assert_eq!(bodies, (0..30).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn edit_react_thread_and_redact() {
    let server = TestServer::start().await;
    // A public room: the server itself must see the content to show that redaction deletes it.
    let (alice, bob, room_id) = room_with_bob_preset(&server, Some(RoomPreset::PublicChat)).await;
    let alice_room = room(&alice, &room_id);
    let bob_room = room(&bob, &room_id);
    let original: OwnedEventId = alice_room
        .send(RoomMessageEventContent::text_plain("réunion à 10h SECRET-MARKER-42"))
        .await
        .expect("send")
        .response
        .event_id;

    // Bob reacts; alice edits; bob replies in a thread.
    bob_room.send(ReactionEventContent::new(Annotation::new(original.clone(), "👍".into()))).await.expect("react");
    let edit = RoomMessageEventContent::text_plain("réunion à 11h")
        .make_replacement(ReplacementMetadata::new(original.clone(), None));
    alice_room.send(edit).await.expect("edit");
    let mut reply = RoomMessageEventContent::text_plain("je serai là");
    reply.relates_to = Some(matrix_sdk::ruma::events::room::message::Relation::Thread(Thread::plain(
        original.clone(),
        original.clone(),
    )));
    bob_room.send(reply).await.expect("thread reply");

    // The original, fetched by bob, carries the edit and the thread summary.
    let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{original}");
    let bob_token = bob.access_token().unwrap();
    let (status, event) = server.call("GET", &path, Some(&bob_token), None).await;
    assert_eq!(status, 200, "{event}");
    let relations = &event["unsigned"]["m.relations"];
    assert_eq!(relations["m.replace"]["content"]["m.new_content"]["body"], "réunion à 11h", "{event}");
    assert_eq!(relations["m.thread"]["count"], 1, "{event}");
    assert_eq!(relations["m.thread"]["latest_event"]["content"]["body"], "je serai là");
    assert_eq!(relations["m.thread"]["current_user_participated"], true);

    // /relations lists the reaction, /threads lists the root.
    let (status, rel) = server
        .call(
            "GET",
            &format!("/_matrix/client/v1/rooms/{room_id}/relations/{original}/m.annotation"),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(rel["chunk"].as_array().unwrap().len(), 1, "{rel}");
    assert_eq!(rel["chunk"][0]["content"]["m.relates_to"]["key"], "👍");
    let (_, threads) =
        server.call("GET", &format!("/_matrix/client/v1/rooms/{room_id}/threads"), Some(&bob_token), None).await;
    assert_eq!(threads["chunk"][0]["event_id"], original.as_str(), "{threads}");

    // Bob may not redact alice's message (power level 0 < redact 50)...
    let denied = bob_room.redact(&original, None, None).await;
    assert!(denied.is_err(), "bob must not redact alice's message");
    // ...but alice may redact her own.
    alice_room.redact(&original, Some("erreur"), None).await.expect("redact");
    let (_, event) = server.call("GET", &path, Some(&bob_token), None).await;
    assert_eq!(event["content"], serde_json::json!({}), "content gone for bob: {event}");
    assert_eq!(event["unsigned"]["redacted_because"]["type"], "m.room.redaction", "{event}");
    let alice_token = alice.access_token().unwrap();
    let (_, event) = server.call("GET", &path, Some(&alice_token), None).await;
    assert_eq!(event["content"], serde_json::json!({}), "content gone for alice too");

    // The original content is gone from the database itself, not just hidden.
    let stored = server.query_strings("SELECT json FROM events").await;
    let with_marker: Vec<&String> = stored.iter().filter(|j| j.contains("SECRET-MARKER-42")).collect();
    assert!(with_marker.is_empty(), "redacted content must be deleted from storage: {with_marker:?}");
}

#[tokio::test]
async fn typing_and_read_receipts_reach_the_other_user() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = room_with_bob(&server).await;
    let alice_room = room(&alice, &room_id);
    let alice_id = alice.user_id().unwrap().to_owned();
    let bob_id = bob.user_id().unwrap().to_owned();
    bob.sync_once(Default::default()).await.expect("bob syncs");

    alice_room.typing_notice(true).await.expect("typing");
    sync_until(&bob, (), |_, r| {
        r.rooms.joined.get(&room_id).is_some_and(|u| {
            u.ephemeral.iter().any(|e| {
                let e: Value = serde_json::from_str(e.json().get()).unwrap();
                e["type"] == "m.typing"
                    && e["content"]["user_ids"].as_array().is_some_and(|a| a.iter().any(|u| u == alice_id.as_str()))
            })
        })
    })
    .await;

    let event_id = alice_room.send(RoomMessageEventContent::text_plain("lu ?")).await.expect("send").response.event_id;
    sync_until(&bob, (), |_, r| r.rooms.joined.get(&room_id).is_some_and(|u| !u.timeline.events.is_empty())).await;
    room(&bob, &room_id)
        .send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, event_id.clone())
        .await
        .expect("receipt");
    sync_until(&alice, (), |_, r| {
        r.rooms.joined.get(&room_id).is_some_and(|u| {
            u.ephemeral.iter().any(|e| {
                let e: Value = serde_json::from_str(e.json().get()).unwrap();
                e["type"] == "m.receipt" && e["content"][event_id.as_str()]["m.read"][bob_id.as_str()].is_object()
            })
        })
    })
    .await;
}

#[tokio::test]
async fn unread_counts_follow_messages_and_receipts() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = room_with_bob(&server).await;
    let alice_room = room(&alice, &room_id);
    bob.sync_once(Default::default()).await.expect("sync");
    let mut last = None;
    for i in 0..3 {
        last = Some(
            alice_room.send(RoomMessageEventContent::text_plain(format!("n{i}"))).await.unwrap().response.event_id,
        );
    }
    let bob_token = bob.access_token().unwrap();
    let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&bob_token), None).await;
    let counts = &sync["rooms"]["join"][room_id.as_str()]["unread_notifications"];
    assert_eq!(counts["notification_count"], 3, "{counts}");
    room(&bob, &room_id)
        .send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, last.unwrap())
        .await
        .unwrap();
    let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&bob_token), None).await;
    assert_eq!(sync["rooms"]["join"][room_id.as_str()]["unread_notifications"]["notification_count"], 0);
}

#[tokio::test]
async fn long_poll_wakes_when_a_message_arrives() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = room_with_bob(&server).await;
    bob.sync_once(Default::default()).await.expect("sync");
    let alice_room = room(&alice, &room_id);
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        alice_room.send(RoomMessageEventContent::text_plain("réveil")).await.expect("send");
    });
    let started = std::time::Instant::now();
    // Long polls of 30 s: the room key (to-device) and the message each wake them up.
    let mut woke = false;
    while !woke && started.elapsed() < Duration::from_secs(25) {
        let response = bob
            .sync_once(matrix_sdk::config::SyncSettings::default().timeout(Duration::from_secs(30)))
            .await
            .expect("long poll");
        woke = response
            .rooms
            .joined
            .get(&room_id)
            .is_some_and(|u| u.timeline.events.iter().any(|e| body_of(&raw_json(e)).as_deref() == Some("réveil")));
    }
    sender.await.unwrap();
    assert!(woke, "the long poll returns the new message, decrypted");
    assert!(started.elapsed() < Duration::from_secs(25), "long polls returned on the message, not the timeout");
}

#[tokio::test]
async fn leave_kick_and_ban_respect_power_levels() {
    let server = TestServer::start().await;
    let (alice, bob, room_id) = room_with_bob(&server).await;
    let (carol, carol_user) = server.client("carol").await;
    let carol_id = UserId::parse(&carol_user.user_id).unwrap();
    let bob_id = bob.user_id().unwrap().to_owned();
    room(&alice, &room_id).invite_user_by_id(&carol_id).await.expect("invite carol");
    carol.join_room_by_id(&room_id).await.expect("carol joins");
    bob.sync_once(Default::default()).await.unwrap();

    // Bob (power 0) may not kick or ban.
    let bob_room = room(&bob, &room_id);
    assert!(bob_room.kick_user(&carol_id, None).await.is_err(), "bob cannot kick");
    assert!(bob_room.ban_user(&carol_id, None).await.is_err(), "bob cannot ban");
    let bob_token = bob.access_token().unwrap();
    let (status, body) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/"),
            Some(&bob_token),
            Some(serde_json::json!({ "name": "pris" })),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");

    // Alice (creator) kicks bob and bans carol.
    alice.sync_once(Default::default()).await.unwrap();
    let alice_room = room(&alice, &room_id);
    alice_room.kick_user(&bob_id, Some("hors sujet")).await.expect("kick");
    alice_room.ban_user(&carol_id, None).await.expect("ban");
    let alice_token = alice.access_token().unwrap();
    let (_, members) = server
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/joined_members"), Some(&alice_token), None)
        .await;
    let joined: Vec<&String> = members["joined"].as_object().unwrap().keys().collect();
    assert_eq!(joined, vec![alice.user_id().unwrap().as_str()], "{members}");

    // A kicked user cannot send; a banned user cannot rejoin.
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/x1"),
            Some(&bob_token),
            Some(serde_json::json!({ "msgtype": "m.text", "body": "encore" })),
        )
        .await;
    assert_eq!(status, 403);
    let carol_token = carol.access_token().unwrap();
    let (status, body) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room_id}/join"),
            Some(&carol_token),
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    // The kicked user still reads the room as it was when he left; the banned one reads
    // nothing of it.
    let messages = format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=5");
    let (status, _) = server.call("GET", &messages, Some(&bob_token), None).await;
    assert_eq!(status, 200);
    let (status, body) = server.call("GET", &messages, Some(&carol_token), None).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let state = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{}", carol_user.user_id);
    let (status, _) = server.call("GET", &state, Some(&carol_token), None).await;
    assert_eq!(status, 403);

    // Unbanned and re-invited, carol can come back; bob leaves by himself after re-joining.
    alice_room.unban_user(&carol_id, None).await.expect("unban");
    alice_room.invite_user_by_id(&carol_id).await.expect("re-invite");
    carol.join_room_by_id(&room_id).await.expect("carol rejoins");
    alice_room.invite_user_by_id(&bob_id).await.expect("invite bob back");
    bob.join_room_by_id(&room_id).await.expect("bob rejoins");
    bob.sync_once(Default::default()).await.unwrap();
    room(&bob, &room_id).leave().await.expect("leave");
    sync_until(&bob, (), |_, r| r.rooms.left.contains_key(&room_id)).await;
}

/// A member's `(notification_count, highlight_count)` in a room, from an initial sync.
async fn unread(server: &TestServer, user: &TestUser, room_id: &str) -> (i64, i64) {
    let (status, sync) = server.call("GET", "/_matrix/client/v3/sync", Some(&user.access_token), None).await;
    assert_eq!(status, 200, "{sync}");
    let counts = &sync["rooms"]["join"][room_id]["unread_notifications"];
    (counts["notification_count"].as_i64().unwrap_or(-1), counts["highlight_count"].as_i64().unwrap_or(-1))
}

/// Alice's public room, with Bob and Carol joined.
async fn three_in_a_room(server: &TestServer) -> (TestUser, TestUser, TestUser, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let body = json!({ "preset": "public_chat" });
    let (_, room) = server.call("POST", "/_matrix/client/v3/createRoom", Some(&alice.access_token), Some(body)).await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    for user in [&bob, &carol] {
        let path = format!("/_matrix/client/v3/join/{room_id}");
        let (status, body) = server.call("POST", &path, Some(&user.access_token), Some(json!({}))).await;
        assert_eq!(status, 200, "{body}");
    }
    (alice, bob, carol, room_id)
}

#[tokio::test]
async fn unread_counts_follow_mentions_threads_receipts_and_membership() {
    let server = TestServer::start().await;
    let (alice, bob, carol, room_id) = three_in_a_room(&server).await;
    let mut txn = 0;
    let mut send = async |user: &TestUser, content: Value| -> String {
        txn += 1;
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{txn}");
        let (status, body) = server.call("PUT", &path, Some(&user.access_token), Some(content)).await;
        assert_eq!(status, 200, "{body}");
        body["event_id"].as_str().unwrap().to_owned()
    };
    let m1 = send(&alice, json!({ "msgtype": "m.text", "body": "good morning" })).await;
    // A mention of Bob: a highlight for him alone.
    let m2 = send(
        &alice,
        json!({ "msgtype": "m.text", "body": "a question for you", "m.mentions": { "user_ids": [bob.user_id] } }),
    )
    .await;
    let m3 = send(
        &alice,
        json!({ "msgtype": "m.text", "body": "in a thread", "m.relates_to": { "rel_type": "m.thread", "event_id": m1 } }),
    )
    .await;
    let b1 = send(&bob, json!({ "msgtype": "m.text", "body": "my own message" })).await;

    assert_eq!(unread(&server, &bob, &room_id).await, (3, 1), "own messages never count");
    assert_eq!(unread(&server, &carol, &room_id).await, (4, 0));
    assert_eq!(unread(&server, &alice, &room_id).await, (1, 0));

    let receipt = async |user: &TestUser, event_id: &str, thread: Option<&str>| {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{event_id}");
        let body = thread.map_or(json!({}), |t| json!({ "thread_id": t }));
        let (status, body) = server.call("POST", &path, Some(&user.access_token), Some(body)).await;
        assert_eq!(status, 200, "{body}");
    };
    // Reading the thread clears the thread's message only.
    receipt(&bob, &m3, Some(&m1)).await;
    assert_eq!(unread(&server, &bob, &room_id).await, (2, 1));
    // A receipt on an older event clears what comes up to it, and not what was read already.
    receipt(&bob, &m1, None).await;
    assert_eq!(unread(&server, &bob, &room_id).await, (1, 1));
    receipt(&bob, &m2, Some("main")).await;
    assert_eq!(unread(&server, &bob, &room_id).await, (0, 0));
    let exceptions = server.query_strings("SELECT user_id FROM push_exceptions").await;
    assert!(!exceptions.contains(&bob.user_id), "the read mention is not kept: {exceptions:?}");
    // A private receipt behind the public one changes nothing.
    let path = format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read.private/{m2}");
    server.call("POST", &path, Some(&bob.access_token), Some(json!({}))).await;
    assert_eq!(unread(&server, &bob, &room_id).await, (0, 0));
    // Carol reads everything at once, the thread included.
    receipt(&carol, &b1, None).await;
    assert_eq!(unread(&server, &carol, &room_id).await, (0, 0));

    // Someone who joins counts from their join, and again from zero after leaving and coming back.
    let dave = server.register("dave").await;
    let join = format!("/_matrix/client/v3/join/{room_id}");
    server.call("POST", &join, Some(&dave.access_token), Some(json!({}))).await;
    assert_eq!(unread(&server, &dave, &room_id).await, (0, 0));
    send(&alice, json!({ "msgtype": "m.text", "body": "welcome", "m.mentions": { "user_ids": [dave.user_id] } })).await;
    assert_eq!(unread(&server, &dave, &room_id).await, (1, 1));
    assert_eq!(unread(&server, &carol, &room_id).await, (1, 0));
    let leave = format!("/_matrix/client/v3/rooms/{room_id}/leave");
    server.call("POST", &leave, Some(&dave.access_token), Some(json!({}))).await;
    send(&alice, json!({ "msgtype": "m.text", "body": "while away" })).await;
    server.call("POST", &join, Some(&dave.access_token), Some(json!({}))).await;
    assert_eq!(unread(&server, &dave, &room_id).await, (0, 0));
    assert_eq!(unread(&server, &carol, &room_id).await, (2, 0));
}

#[tokio::test]
async fn a_members_own_rules_set_their_count_apart() {
    let server = TestServer::start().await;
    let (alice, bob, carol, room_id) = three_in_a_room(&server).await;
    // Bob highlights "urgent" and mutes nothing; Carol keeps the defaults, under which her
    // name in a message is no mention (only `m.mentions` is).
    let rule = json!({ "pattern": "urgent", "actions": ["notify", { "set_tweak": "highlight" }] });
    let path = "/_matrix/client/v3/pushrules/global/content/urgent";
    let (status, body) = server.call("PUT", path, Some(&bob.access_token), Some(rule)).await;
    assert_eq!(status, 200, "{body}");
    for (i, text) in ["carol, this is URGENT", "bob: nothing special"].iter().enumerate() {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/r{i}");
        let content = json!({ "msgtype": "m.text", "body": text });
        let (status, body) = server.call("PUT", &path, Some(&alice.access_token), Some(content)).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(unread(&server, &bob, &room_id).await, (2, 1));
    assert_eq!(unread(&server, &carol, &room_id).await, (2, 0));
    // Muting the room for Bob (an override rule on the room) stops his notifications alone.
    let mute =
        json!({ "actions": [], "conditions": [{ "kind": "event_match", "key": "room_id", "pattern": room_id }] });
    let path = "/_matrix/client/v3/pushrules/global/override/mute-room";
    let (status, body) = server.call("PUT", path, Some(&bob.access_token), Some(mute)).await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/r9");
    server.call("PUT", &path, Some(&alice.access_token), Some(json!({ "msgtype": "m.text", "body": "urgent" }))).await;
    assert_eq!(unread(&server, &bob, &room_id).await, (2, 1));
    assert_eq!(unread(&server, &carol, &room_id).await, (3, 0));
}

#[tokio::test]
async fn room_rules_keep_any_id_their_owner_gives_and_still_mute_rooms() {
    let server = TestServer::start().await;
    let (alice, bob, _carol, room_id) = three_in_a_room(&server).await;
    let token = Some(bob.access_token.as_str());
    let rules = "/_matrix/client/v3/pushrules/global/room";
    let notify = json!({ "actions": ["notify"] });
    // Clients (and the spec's test suite) name room rules by alias; the spec's API takes any
    // string but a dot-prefixed, slashed or backslashed one.
    for (id, query) in
        [("%23a:example.com", ""), ("%23b:example.com", ""), ("%23c:example.com", "?before=%23a:example.com")]
    {
        let (status, body) = server.call("PUT", &format!("{rules}/{id}{query}"), token, Some(notify.clone())).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) =
        server.call("PUT", &format!("{rules}/%23f%5Co:example.com"), token, Some(notify.clone())).await;
    assert_eq!(status, 400, "{body}");
    let (_, listed) = server.call("GET", &format!("{rules}/"), token, None).await;
    let ids: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|r| r["rule_id"].as_str()).collect();
    assert_eq!(ids, ["#b:example.com", "#c:example.com", "#a:example.com"], "{listed}");
    let (status, _) = server
        .call("PUT", &format!("{rules}/%23a:example.com/enabled"), token, Some(json!({ "enabled": false })))
        .await;
    assert_eq!(status, 200);
    let (_, rule) = server.call("GET", &format!("{rules}/%23a:example.com"), token, None).await;
    assert_eq!((rule["rule_id"].as_str(), rule["enabled"].as_bool()), (Some("#a:example.com"), Some(false)), "{rule}");
    let (status, _) = server.call("DELETE", &format!("{rules}/%23b:example.com"), token, None).await;
    assert_eq!(status, 200);
    let (status, _) = server.call("GET", &format!("{rules}/%23b:example.com"), token, None).await;
    assert_eq!(status, 404);
    // Sync's account data shows the IDs as given.
    let (_, sync) = server.call("GET", "/_matrix/client/v3/sync", token, None).await;
    let push_rules = sync["account_data"]["events"].as_array().unwrap().iter().find(|e| e["type"] == "m.push_rules");
    let room_rules = &push_rules.expect("m.push_rules in sync")["content"]["global"]["room"];
    assert_eq!(room_rules[0]["rule_id"], "#c:example.com", "{room_rules}");

    // Beside them, a rule on the room's real ID still mutes it for Bob.
    let (status, body) =
        server.call("PUT", &format!("{rules}/{room_id}"), token, Some(json!({ "actions": ["dont_notify"] }))).await;
    assert_eq!(status, 200, "{body}");
    let before = unread(&server, &bob, &room_id).await;
    server.send_message(&alice.access_token, &room_id, json!({ "msgtype": "m.text", "body": "muted" })).await;
    assert_eq!(unread(&server, &bob, &room_id).await, before, "the room is muted for bob");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn a_message_disappears_when_its_sender_asked_even_across_a_restart() {
    let mut server = TestServer::start().await;
    let (alice, bob, room_id) = room_with_bob_preset(&server, Some(RoomPreset::PublicChat)).await;
    let alice_room = room(&alice, &room_id);
    let send = async |body: &str, after: Option<i64>| -> OwnedEventId {
        let mut content = json!({ "msgtype": "m.text", "body": body });
        if let Some(after) = after {
            content["org.matrix.self_destruct_after"] = json!(now_ms() + after);
        }
        alice_room.send_raw("m.room.message", content).await.expect("send").response.event_id
    };
    let soon = send("EPHEMERAL-MARKER-1 soon gone", Some(1_500)).await;
    let after_restart = send("EPHEMERAL-MARKER-2 gone while down", Some(4_000)).await;
    let kept = send("kept", None).await;
    // A state event is never made to disappear: the room's authorisation rests on it.
    let topic = server
        .put_state(
            alice.access_token().as_deref().unwrap(),
            room_id.as_str(),
            "m.room.topic",
            json!({ "topic": "ordre du jour", "org.matrix.self_destruct_after": now_ms() + 1_000 }),
        )
        .await;

    let bob_token = bob.access_token().unwrap();
    let content = async |server: &TestServer, id: &str| {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{id}");
        let (status, event) = server.call("GET", &path, Some(&bob_token), None).await;
        assert_eq!(status, 200, "{event}");
        event["content"].clone()
    };
    assert_eq!(content(&server, soon.as_str()).await["body"], "EPHEMERAL-MARKER-1 soon gone");
    common::until("the first message disappears", async || {
        content(&server, soon.as_str()).await.as_object().is_some_and(|c| c.is_empty()).then_some(())
    })
    .await;
    assert_eq!(content(&server, after_restart.as_str()).await["body"], "EPHEMERAL-MARKER-2 gone while down");

    // Down when the second one is due: it disappears once the server is back.
    server.stop();
    tokio::time::sleep(Duration::from_millis((4_000 + 500) as u64)).await;
    server.start_again();
    common::until("the second message disappears after the restart", async || {
        content(&server, after_restart.as_str()).await.as_object().is_some_and(|c| c.is_empty()).then_some(())
    })
    .await;
    assert_eq!(content(&server, kept.as_str()).await["body"], "kept");
    assert_eq!(content(&server, topic.as_str()).await["topic"], "ordre du jour");

    // Gone from storage, not only from answers; nothing is left to expire.
    let stored = server.query_strings("SELECT json FROM events").await;
    assert!(!stored.iter().any(|j| j.contains("EPHEMERAL-MARKER")), "expired content must be deleted from storage");
    assert!(server.query_strings("SELECT event_id FROM event_expiry").await.is_empty());
}
