//! Simplified sliding sync (MSC4186), what Element X syncs with, driven by matrix-sdk's
//! own sliding sync (the code Element X runs) and checked on the wire.

mod common;

use std::time::Duration;

use common::{TestServer, TestUser, until};
use matrix_sdk::{
    Client,
    ruma::{
        UserId,
        api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset},
        events::{StateEventType, room::message::RoomMessageEventContent},
    },
    sliding_sync::{SlidingSync, SlidingSyncList, SlidingSyncMode, Version},
};
use serde_json::{Value, json};

/// A sliding sync of every room of the client, with every extension.
async fn sliding(client: &Client) -> SlidingSync {
    client
        .sliding_sync("main")
        .unwrap()
        .version(Version::Native)
        .with_all_extensions()
        .poll_timeout(Duration::ZERO)
        .add_list(
            SlidingSyncList::builder("all")
                .sync_mode(SlidingSyncMode::new_selective().add_range(0..=19))
                .timeline_limit(5)
                .required_state(vec![
                    (StateEventType::RoomName, "".to_owned()),
                    (StateEventType::RoomEncryption, "".to_owned()),
                    (StateEventType::RoomMember, "$LAZY".to_owned()),
                    (StateEventType::RoomMember, "$ME".to_owned()),
                ]),
        )
        .build()
        .await
        .unwrap()
}

/// A raw sliding sync request; `pos` and `timeout` go in the query, as the MSC has it.
async fn raw(server: &TestServer, user: &TestUser, pos: Option<&str>, body: Value) -> (u16, Value) {
    let path = match pos {
        Some(pos) => format!("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?pos={pos}&timeout=300"),
        None => "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync".to_owned(),
    };
    server.call("POST", &path, Some(&user.access_token), Some(body)).await
}

#[tokio::test]
async fn matrix_sdk_lists_rooms_and_receives_messages_through_sliding_sync() {
    let server = TestServer::start().await;
    let (alice, alice_user) = server.client("alice").await;
    let (bob, _) = server.client("bob").await;
    bob.sync_once(Default::default()).await.unwrap();
    let alice_id = UserId::parse(&alice_user.user_id).unwrap();

    // Bob's rooms: one alice is in, an encrypted direct chat, and one she is only invited to.
    let mut named = CreateRoom::new();
    named.name = Some("Cellule de crise".into());
    named.invite = vec![alice_id.clone()];
    let crisis = bob.create_room(named).await.unwrap().room_id().to_owned();
    let mut direct = CreateRoom::new();
    direct.is_direct = true;
    direct.preset = Some(RoomPreset::TrustedPrivateChat);
    direct.invite = vec![alice_id.clone()];
    let dm = bob.create_room(direct).await.unwrap().room_id().to_owned();
    let mut later = CreateRoom::new();
    later.invite = vec![alice_id.clone()];
    let invited = bob.create_room(later).await.unwrap().room_id().to_owned();
    for room in [&crisis, &dm] {
        alice.join_room_by_id(room).await.unwrap();
    }
    bob.get_room(&crisis).unwrap().send(RoomMessageEventContent::text_plain("point de situation à 9h")).await.unwrap();

    // Alice's phone starts sliding sync: her rooms, named, the invite, the last messages.
    let sync = sliding(&alice).await;
    sync.sync_once().await.unwrap();
    let room = alice.get_room(&crisis).expect("the room is listed");
    assert_eq!(room.name().as_deref(), Some("Cellule de crise"));
    assert_eq!(alice.get_room(&invited).expect("the invite is listed").state(), matrix_sdk::RoomState::Invited);
    assert!(alice.get_room(&dm).is_some());

    // A message from bob reaches her through the next request, with its unread count.
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = received.clone();
    alice.add_event_handler(move |ev: matrix_sdk::ruma::events::room::message::OriginalSyncRoomMessageEvent| {
        let seen = seen.clone();
        async move { seen.lock().unwrap().push(ev.content.body().to_owned()) }
    });
    bob.get_room(&crisis).unwrap().send(RoomMessageEventContent::text_plain("RAS")).await.unwrap();
    until("alice receives the message", async || {
        sync.sync_once().await.unwrap();
        received.lock().unwrap().iter().any(|b| b == "RAS").then_some(())
    })
    .await;
    assert!(alice.get_room(&crisis).unwrap().unread_notification_counts().notification_count >= 1);
}

#[tokio::test]
async fn a_resumed_connection_gets_only_what_changed_and_a_stale_position_is_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut rooms = Vec::new();
    for name in ["un", "deux", "trois"] {
        let room = server.create_room(&bob.access_token, json!({ "name": name, "invite": [alice.user_id] })).await;
        server.membership(&alice.access_token, &room, "join", json!({})).await;
        rooms.push(room);
    }
    server.send_message(&bob.access_token, &rooms[0], json!({ "msgtype": "m.text", "body": "premier" })).await;
    let request = |conn: &str| {
        json!({
            "conn_id": conn,
            "lists": { "all": { "ranges": [[0, 1]], "timeline_limit": 3, "required_state": [["m.room.name", ""]] } },
            "extensions": { "e2ee": { "enabled": true }, "to_device": { "enabled": true } },
        })
    };

    // The first answer: two of three rooms (the window), the most recent ones: "un",
    // where bob wrote, and "trois", the last created.
    let (status, first) = raw(&server, &alice, None, request("phone")).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");
    let mut sent: Vec<&String> = first["rooms"].as_object().unwrap().keys().collect();
    sent.sort();
    let mut expected = vec![&rooms[0], &rooms[2]];
    expected.sort();
    assert_eq!(sent, expected, "{first}");
    let trois = &first["rooms"][&rooms[2]];
    assert_eq!(trois["initial"], true, "{first}");
    assert_eq!(trois["name"], "trois");
    assert!(trois["required_state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"));
    assert!(first["rooms"][&rooms[0]]["bump_stamp"].as_i64() > trois["bump_stamp"].as_i64());
    let pos = first["pos"].as_str().unwrap().to_owned();

    // Nothing changed: an empty answer after the timeout, with a new position.
    let (status, idle) = raw(&server, &alice, Some(&pos), request("phone")).await;
    assert_eq!(status, 200, "{idle}");
    assert_eq!(idle["rooms"], json!({}), "{idle}");
    let pos = idle["pos"].as_str().unwrap().to_owned();

    // A message in "deux" moves it into the window: sent whole, as new, its timeline cut
    // to the limit; "trois" leaves the window (the client keeps what it has).
    server.send_message(&bob.access_token, &rooms[1], json!({ "msgtype": "m.text", "body": "deuxième" })).await;
    let (_, moved) = raw(&server, &alice, Some(&pos), request("phone")).await;
    let deux = &moved["rooms"][&rooms[1]];
    assert_eq!(deux["initial"], true, "{moved}");
    assert_eq!(deux["limited"], true, "{moved}");
    assert_eq!(deux["timeline"].as_array().unwrap().len(), 3, "{moved}");
    assert_eq!(deux["timeline"][2]["content"]["body"], "deuxième", "{moved}");
    assert_eq!(moved["rooms"].as_object().unwrap().len(), 1, "{moved}");
    let pos = moved["pos"].as_str().unwrap().to_owned();

    // A room the connection has gets only what is new.
    server.send_message(&bob.access_token, &rooms[0], json!({ "msgtype": "m.text", "body": "second" })).await;
    let (_, update) = raw(&server, &alice, Some(&pos), request("phone")).await;
    let un = &update["rooms"][&rooms[0]];
    assert!(un.get("initial").is_none(), "{update}");
    assert_eq!((&un["num_live"], &un["limited"]), (&json!(1), &json!(false)), "{update}");
    let bodies: Vec<&str> =
        un["timeline"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["second"], "{update}");
    assert_eq!(un["notification_count"], 2, "{update}");
    // A message alone does not change who is in the room: its counts are not sent again.
    assert!(un.get("joined_count").is_none(), "{update}");
    let pos = update["pos"].as_str().unwrap().to_owned();

    // A member joining: their membership events, and the room's counts again.
    let carol = server.register("carol").await;
    server.membership(&bob.access_token, &rooms[0], "invite", json!({ "user_id": carol.user_id })).await;
    server.membership(&carol.access_token, &rooms[0], "join", json!({})).await;
    let (_, joined) = raw(&server, &alice, Some(&pos), request("phone")).await;
    let un = &joined["rooms"][&rooms[0]];
    assert_eq!(
        (&un["joined_count"], &un["invited_count"], &un["num_live"]),
        (&json!(3), &json!(0), &json!(2)),
        "{joined}"
    );
    let memberships: Vec<&str> =
        un["timeline"].as_array().unwrap().iter().filter_map(|e| e["content"]["membership"].as_str()).collect();
    assert_eq!(memberships, ["invite", "join"], "{joined}");
    let pos = joined["pos"].as_str().unwrap().to_owned();

    // Alice leaves: her timeline ends at her leave, and what bob writes after is not hers.
    server.membership(&alice.access_token, &rooms[0], "leave", json!({})).await;
    server.send_message(&bob.access_token, &rooms[0], json!({ "msgtype": "m.text", "body": "après" })).await;
    let (_, left) = raw(&server, &alice, Some(&pos), request("phone")).await;
    let un = &left["rooms"][&rooms[0]];
    let timeline = un["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 1, "{left}");
    assert_eq!(
        (&timeline[0]["sender"], &timeline[0]["content"]["membership"]),
        (&json!(alice.user_id), &json!("leave")),
        "{left}"
    );
    let pos = left["pos"].as_str().unwrap().to_owned();

    // A position another connection never had, or made up, is refused.
    for (pos, conn) in [(pos.as_str(), "laptop"), ("999999", "phone"), ("nonsense", "phone")] {
        let (status, body) = raw(&server, &alice, Some(pos), request(conn)).await;
        assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{pos} on {conn}: {body}");
    }
}

#[tokio::test]
async fn a_waiting_request_wakes_when_a_message_arrives() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&bob.access_token, json!({ "invite": [alice.user_id] })).await;
    server.membership(&alice.access_token, &room, "join", json!({})).await;
    let body = json!({ "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } } });
    let (_, first) = raw(&server, &alice, None, body.clone()).await;
    let waiting = spawn_long_poll(&server, &alice, first["pos"].as_str().unwrap(), body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.send_message(&bob.access_token, &room, json!({ "msgtype": "m.text", "body": "réveil" })).await;
    let (waited, answer) = waiting.await.unwrap().unwrap();
    assert!(waited < Duration::from_secs(10), "woke after {waited:?}");
    assert_eq!(answer["rooms"][&room]["timeline"][0]["content"]["body"], "réveil", "{answer}");
}

#[tokio::test]
async fn an_encrypted_direct_chat_decrypts_and_typing_shows_through_sliding_sync() {
    let server = TestServer::start().await;
    let (alice, alice_user) = server.client("alice").await;
    let (bob, _) = server.client("bob").await;
    // Alice's phone syncs only by sliding sync: its keys go up through it too.
    let sync = sliding(&alice).await;
    sync.sync_once().await.unwrap();
    bob.sync_once(Default::default()).await.unwrap();

    let mut direct = CreateRoom::new();
    direct.is_direct = true;
    direct.preset = Some(RoomPreset::TrustedPrivateChat);
    direct.invite = vec![UserId::parse(&alice_user.user_id).unwrap()];
    let room_id = bob.create_room(direct).await.unwrap().room_id().to_owned();
    until("alice sees the invite", async || {
        sync.sync_once().await.unwrap();
        alice.get_room(&room_id).filter(|r| r.state() == matrix_sdk::RoomState::Invited).map(|_| ())
    })
    .await;
    alice.join_room_by_id(&room_id).await.unwrap();
    sync.sync_once().await.unwrap();
    bob.sync_once(Default::default()).await.unwrap();

    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = received.clone();
    alice.add_event_handler(move |ev: matrix_sdk::ruma::events::room::message::OriginalSyncRoomMessageEvent| {
        let seen = seen.clone();
        async move { seen.lock().unwrap().push(ev.content.body().to_owned()) }
    });
    let typing = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen_typing = typing.clone();
    alice.add_event_handler(move |ev: matrix_sdk::ruma::events::typing::SyncTypingEvent| {
        let seen = seen_typing.clone();
        async move { seen.lock().unwrap().extend(ev.content.user_ids.iter().map(|u| u.to_string())) }
    });
    let bob_room = bob.get_room(&room_id).unwrap();
    assert!(bob_room.latest_encryption_state().await.unwrap().is_encrypted());
    bob_room.send(RoomMessageEventContent::text_plain("message chiffré")).await.unwrap();
    until("alice decrypts bob's message", async || {
        sync.sync_once().await.unwrap();
        received.lock().unwrap().iter().any(|b| b == "message chiffré").then_some(())
    })
    .await;

    bob_room.typing_notice(true).await.unwrap();
    until("alice sees bob typing", async || {
        sync.sync_once().await.unwrap();
        typing.lock().unwrap().iter().any(|u| u.starts_with("@bob")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn element_x_sync_service_lists_rooms_and_its_timeline_decrypts() {
    use matrix_sdk_ui::{
        room_list_service::RoomListLoadingState, sync_service::SyncService, timeline::TimelineBuilder,
    };
    let server = TestServer::start().await;
    let (alice, alice_user) = server.client("alice").await;
    let (bob, _) = server.client("bob").await;
    bob.sync_once(Default::default()).await.unwrap();
    let alice_id = UserId::parse(&alice_user.user_id).unwrap();

    // Element X's services: the encryption sync and the room list, each its own connection.
    let service = SyncService::builder(alice.clone()).build().await.unwrap();
    service.start().await;
    let rooms = service.room_list_service();
    let all = rooms.all_rooms().await.unwrap();
    let loading = all.loading_state();
    until("the room list loads", async || match loading.get() {
        RoomListLoadingState::Loaded { .. } => Some(()),
        RoomListLoadingState::NotLoaded => None,
    })
    .await;

    // Bob opens an encrypted direct chat and invites her to a named room: both listed.
    let mut direct = CreateRoom::new();
    direct.is_direct = true;
    direct.preset = Some(RoomPreset::TrustedPrivateChat);
    direct.invite = vec![alice_id.clone()];
    let dm = bob.create_room(direct).await.unwrap().room_id().to_owned();
    let mut named = CreateRoom::new();
    named.name = Some("Préfecture".into());
    named.invite = vec![alice_id.clone()];
    let prefecture = bob.create_room(named).await.unwrap().room_id().to_owned();
    until("both invites are listed", async || {
        let listed = |id| alice.get_room(id).is_some_and(|r| r.state() == matrix_sdk::RoomState::Invited);
        (listed(&dm)
            && listed(&prefecture)
            && matches!(loading.get(), RoomListLoadingState::Loaded { maximum_number_of_rooms: Some(n) } if n >= 2))
        .then_some(())
    })
    .await;
    assert_eq!(rooms.room(&prefecture).unwrap().name().as_deref(), Some("Préfecture"));
    alice.join_room_by_id(&dm).await.unwrap();
    until("alice is in the chat", async || {
        alice.get_room(&dm).filter(|r| r.state() == matrix_sdk::RoomState::Joined).map(|_| ())
    })
    .await;
    bob.sync_once(Default::default()).await.unwrap();

    // Bob's encrypted message shows decrypted in her timeline, and counts as unread.
    let timeline = TimelineBuilder::new(&alice.get_room(&dm).unwrap()).build().await.unwrap();
    bob.get_room(&dm).unwrap().send(RoomMessageEventContent::text_plain("à déchiffrer")).await.unwrap();
    until("the timeline shows the message decrypted", async || {
        let items = timeline.items().await;
        items
            .iter()
            .filter_map(|i| i.as_event())
            .any(|e| e.content().as_message().is_some_and(|m| m.body() == "à déchiffrer"))
            .then_some(())
    })
    .await;
    until("the message counts as unread", async || {
        (alice.get_room(&dm).unwrap().num_unread_notifications() >= 1).then_some(())
    })
    .await;
    service.stop().await;
}

#[tokio::test]
async fn lists_filter_by_encryption_type_and_invite_as_kept_at_write_time() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let space = server
        .create_room(
            &bob.access_token,
            json!({ "preset": "public_chat", "creation_content": { "type": "m.space" }, "name": "Préfecture" }),
        )
        .await;
    let encrypted = server
        .create_room(
            &bob.access_token,
            json!({ "preset": "public_chat", "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }] }),
        )
        .await;
    let plain = server.create_room(&bob.access_token, json!({ "preset": "public_chat" })).await;
    let invite = server.create_room(&bob.access_token, json!({ "invite": [alice.user_id] })).await;
    for room in [&space, &encrypted, &plain] {
        server.membership(&alice.access_token, room, "join", json!({})).await;
    }
    let lists = json!({
        "lists": {
            "encrypted": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_encrypted": true } },
            "spaces": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "room_types": ["m.space"] } },
            "rooms": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "not_room_types": ["m.space"] } },
            "invites": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_invite": true } },
        },
    });
    let counts = |body: &Value| {
        ["encrypted", "spaces", "rooms", "invites"].map(|l| body["lists"][l]["count"].as_u64().unwrap_or(99))
    };
    let (status, first) = raw(&server, &alice, None, lists.clone()).await;
    assert_eq!(status, 200, "{first}");
    // The invite is to a private room, encrypted by default.
    assert_eq!(counts(&first), [2, 1, 3, 1], "{first}");
    assert!(first["rooms"][&invite]["invite_state"].is_array(), "{first}");

    // Encryption turned on later counts from the write that turns it on; a message moves
    // its room to the top.
    let path = format!("/_matrix/client/v3/rooms/{plain}/state/m.room.encryption/");
    let body = json!({ "algorithm": "m.megolm.v1.aes-sha2" });
    assert_eq!(server.call("PUT", &path, Some(&bob.access_token), Some(body)).await.0, 200);
    server.send_message(&bob.access_token, &plain, json!({ "msgtype": "m.text", "body": "chiffré" })).await;
    let (_, later) = raw(&server, &alice, None, lists).await;
    assert_eq!(counts(&later), [3, 1, 3, 1], "{later}");
    let stamps = |room: &str| later["rooms"][room]["bump_stamp"].as_i64().unwrap_or(-1);
    assert!(stamps(&plain) > stamps(&encrypted) && stamps(&encrypted) > stamps(&space), "{later}");

    // The migration that introduced the kept facts derives from the events what the
    // writes kept.
    let facts = "SELECT room_id || ' ' || COALESCE(CAST(bump_pos AS TEXT), '-') || ' ' || CAST(encrypted AS TEXT) \
                 || ' ' || COALESCE(room_type, '-') FROM rooms ORDER BY room_id";
    let kept = server.query_strings(facts).await;
    assert_eq!(kept.len(), 4);
    assert!(kept.iter().any(|r| r.starts_with(&space) && r.ends_with(" 0 m.space")), "{kept:?}");
    let migration = if server.is_postgres() {
        include_str!("../../missive/migrations/postgres/0025_room_facts.sql")
    } else {
        include_str!("../../missive/migrations/sqlite/0025_room_facts.sql")
    };
    let backfill = &migration[migration.find("UPDATE rooms").unwrap()..migration.find("DROP INDEX").unwrap()];
    server.execute("UPDATE rooms SET bump_pos = NULL, encrypted = 0, room_type = NULL").await;
    server.execute(Box::leak(backfill.to_owned().into_boxed_str())).await;
    assert_eq!(server.query_strings(facts).await, kept);
}

/// A long poll on a resumed connection (30 s), which must answer well before it times out.
async fn long_poll(server: &TestServer, user: &TestUser, pos: &str, body: &Value) -> Value {
    let path = format!("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?pos={pos}&timeout=30000");
    let started = std::time::Instant::now();
    let (status, answer) = server.call("POST", &path, Some(&user.access_token), Some(body.clone())).await;
    assert_eq!(status, 200, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(15), "answered after {:?}: {answer}", started.elapsed());
    answer
}

/// A long poll on a resumed connection (30 s) run in the background: how long it waited
/// and its answer.
fn spawn_long_poll(
    server: &TestServer,
    user: &TestUser,
    pos: &str,
    body: Value,
) -> tokio::task::JoinHandle<anyhow::Result<(Duration, Value)>> {
    let url =
        server.url(&format!("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?pos={pos}&timeout=30000"));
    let token = user.access_token.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let answer: Value =
            reqwest::Client::new().post(url).bearer_auth(token).json(&body).send().await?.json().await?;
        Ok((started.elapsed(), answer))
    })
}

/// A client asks again right after each answer: the server may then wait without
/// computing, but only when nothing since its position concerns it and it asks what it
/// asked before.
#[tokio::test]
async fn a_connection_asking_again_at_once_still_gets_what_concerns_it() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&bob.access_token, json!({ "invite": [alice.user_id] })).await;
    server.membership(&alice.access_token, &room, "join", json!({})).await;
    let body = |limit: u32, since: Option<&str>| {
        json!({
            "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": limit } },
            "extensions": {
                "to_device": { "enabled": true, "since": since },
                "typing": { "enabled": true },
                "account_data": { "enabled": true },
            },
        })
    };
    let (_, first) = raw(&server, &alice, None, body(5, None)).await;
    let pos = |answer: &Value| answer["pos"].as_str().unwrap().to_owned();
    let to_device = |answer: &Value| answer["extensions"]["to_device"]["next_batch"].as_str().map(str::to_owned);
    let mut since = to_device(&first);

    // A message sent between two requests.
    server.send_message(&bob.access_token, &room, json!({ "msgtype": "m.text", "body": "entre deux" })).await;
    let answer = long_poll(&server, &alice, &pos(&first), &body(5, since.as_deref())).await;
    assert_eq!(answer["rooms"][&room]["timeline"][0]["content"]["body"], "entre deux", "{answer}");

    // Typing started between two requests.
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", bob.user_id),
            Some(&bob.access_token),
            Some(json!({ "typing": true, "timeout": 30000 })),
        )
        .await;
    assert_eq!(status, 200);
    let answer = long_poll(&server, &alice, &pos(&answer), &body(5, since.as_deref())).await;
    assert_eq!(answer["extensions"]["typing"]["rooms"][&room]["content"]["user_ids"][0], bob.user_id, "{answer}");

    // A to-device message, then the same token again: it is still there until acknowledged.
    let (status, _) = server
        .call(
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.test/t1",
            Some(&bob.access_token),
            Some(json!({ "messages": { &alice.user_id: { &alice.device_id: { "n": 1 } } } })),
        )
        .await;
    assert_eq!(status, 200);
    let answer = long_poll(&server, &alice, &pos(&answer), &body(5, since.as_deref())).await;
    assert_eq!(answer["extensions"]["to_device"]["events"][0]["content"]["n"], 1, "{answer}");
    let again = long_poll(&server, &alice, &pos(&answer), &body(5, since.as_deref())).await;
    assert_eq!(again["extensions"]["to_device"]["events"][0]["content"]["n"], 1, "not acknowledged: {again}");
    since = to_device(&again);

    // Her own account data, set between two requests.
    let (status, _) = server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/user/{}/account_data/org.example.note", alice.user_id),
            Some(&alice.access_token),
            Some(json!({ "n": 2 })),
        )
        .await;
    assert_eq!(status, 200);
    let answer = long_poll(&server, &alice, &pos(&again), &body(5, since.as_deref())).await;
    let global = answer["extensions"]["account_data"]["global"].as_array().cloned().unwrap_or_default();
    assert!(global.iter().any(|e| e["type"] == "org.example.note"), "{answer}");

    // Nothing new: the request waits, and a message arriving meanwhile wakes it.
    let waiting = spawn_long_poll(&server, &alice, &pos(&answer), body(5, since.as_deref()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.send_message(&bob.access_token, &room, json!({ "msgtype": "m.text", "body": "réveil" })).await;
    let (waited, woken) = waiting.await.unwrap().unwrap();
    assert!(waited < Duration::from_secs(15), "woke after {waited:?}");
    assert_eq!(woken["rooms"][&room]["timeline"][0]["content"]["body"], "réveil", "{woken}");

    // The same position asked for more: the room is sent again, whole, at once.
    let wider = long_poll(&server, &alice, &pos(&woken), &body(10, since.as_deref())).await;
    assert_eq!(wider["rooms"][&room]["initial"], true, "{wider}");
    let bodies: Vec<&str> = wider["rooms"][&room]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, ["entre deux", "réveil"], "{wider}");
}
