//! `/sync` semantics a client depends on, over plain HTTP so every field can be checked:
//! state at the start of the timeline, history visibility, lazy-loaded members, gaps,
//! summaries, and incremental syncs over many rooms.

mod common;

use common::{TestServer, TestUser};
use serde_json::{Value, json};

async fn create_public_room(server: &TestServer, owner: &TestUser, visibility: &str) -> String {
    let body = json!({
        "preset": "public_chat",
        "name": "old name",
        "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": visibility } }],
    });
    let (status, res) =
        server.call("POST", "/_matrix/client/v3/createRoom", Some(&owner.access_token), Some(body)).await;
    assert_eq!(status, 200, "{res}");
    res["room_id"].as_str().unwrap().to_owned()
}

async fn send(server: &TestServer, user: &TestUser, room: &str, kind: &str, state_key: Option<&str>, content: Value) {
    let path = match state_key {
        Some(key) => format!("/_matrix/client/v3/rooms/{room}/state/{kind}/{key}"),
        None => format!("/_matrix/client/v3/rooms/{room}/send/{kind}/{}", uuid_like()),
    };
    let (status, res) = server.call("PUT", &path, Some(&user.access_token), Some(content)).await;
    assert_eq!(status, 200, "{res}");
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}", N.fetch_add(1, Ordering::Relaxed))
}

async fn join(server: &TestServer, user: &TestUser, room: &str) {
    let (status, res) = server
        .call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(&user.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{res}");
}

async fn sync(server: &TestServer, user: &TestUser, since: Option<&str>, filter: Value) -> Value {
    let filter = urlencode(&filter.to_string());
    let mut path = format!("/_matrix/client/v3/sync?timeout=0&filter={filter}");
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    let (status, res) = server.call("GET", &path, Some(&user.access_token), None).await;
    assert_eq!(status, 200, "{res}");
    res
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn bodies(events: &Value) -> Vec<String> {
    events.as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect()
}

fn state_of<'a>(events: &'a Value, kind: &str, key: &str) -> Option<&'a Value> {
    events.as_array().unwrap().iter().find(|e| e["type"] == kind && e["state_key"] == key)
}

#[tokio::test]
async fn initial_sync_sends_state_at_timeline_start_and_respects_history_visibility() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    // Room "joined": bob must not see what was said before he joined.
    let joined_only = create_public_room(&server, &alice, "joined").await;
    send(&server, &alice, &joined_only, "m.room.message", None, json!({ "msgtype": "m.text", "body": "secret" })).await;
    join(&server, &bob, &joined_only).await;
    send(&server, &alice, &joined_only, "m.room.message", None, json!({ "msgtype": "m.text", "body": "welcome" }))
        .await;

    // Room "shared": history before the join is visible to members.
    let shared = create_public_room(&server, &alice, "shared").await;
    send(&server, &alice, &shared, "m.room.message", None, json!({ "msgtype": "m.text", "body": "early" })).await;
    join(&server, &bob, &shared).await;

    // Room with a renaming inside the last events: the state block is the state before the
    // timeline, the new name arrives in the timeline.
    let renamed = create_public_room(&server, &alice, "shared").await;
    join(&server, &bob, &renamed).await;
    for i in 0..5 {
        send(
            &server,
            &alice,
            &renamed,
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": format!("r{i}") }),
        )
        .await;
    }
    send(&server, &alice, &renamed, "m.room.name", Some(""), json!({ "name": "new name" })).await;
    send(&server, &alice, &renamed, "m.room.message", None, json!({ "msgtype": "m.text", "body": "after" })).await;

    let res = sync(&server, &bob, None, json!({ "room": { "timeline": { "limit": 10 } } })).await;
    let rooms = &res["rooms"]["join"];
    let timeline = &rooms[&joined_only]["timeline"]["events"];
    assert_eq!(bodies(timeline), vec!["welcome"], "pre-join history is hidden under \"joined\"");
    assert!(
        timeline.as_array().unwrap().iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id),
        "bob sees his own join"
    );
    assert_eq!(bodies(&rooms[&shared]["timeline"]["events"]), vec!["early"], "\"shared\" history is visible");

    let res = sync(&server, &bob, None, json!({ "room": { "timeline": { "limit": 2 } } })).await;
    let room = &res["rooms"]["join"][&renamed];
    let timeline = &room["timeline"]["events"];
    assert_eq!(timeline.as_array().unwrap().len(), 2);
    assert_eq!(timeline[0]["type"], "m.room.name");
    assert_eq!(bodies(timeline), vec!["after"]);
    assert_eq!(room["timeline"]["limited"], true);
    let state = &room["state"]["events"];
    assert_eq!(state_of(state, "m.room.name", "").expect("name in state")["content"]["name"], "old name");
    assert!(state_of(state, "m.room.create", "").is_some());
    assert!(state_of(state, "m.room.member", &alice.user_id).is_some());
    assert!(state.as_array().unwrap().iter().all(|e| e.get("room_id").is_none()), "sync format omits room_id");
    assert_eq!(room["summary"]["m.joined_member_count"], 2);

    // Lazy-loaded members: only the timeline's senders (and the syncing user).
    let carol = server.register("carol").await;
    join(&server, &carol, &renamed).await;
    send(&server, &alice, &renamed, "m.room.message", None, json!({ "msgtype": "m.text", "body": "last" })).await;
    let lazy = json!({ "room": { "timeline": { "limit": 1 }, "state": { "lazy_load_members": true } } });
    let res = sync(&server, &bob, None, lazy.clone()).await;
    let state = &res["rooms"]["join"][&renamed]["state"]["events"];
    assert!(state_of(state, "m.room.member", &alice.user_id).is_some(), "the sender's member event");
    assert!(state_of(state, "m.room.member", &bob.user_id).is_some(), "the syncing user's member event");
    assert!(state_of(state, "m.room.member", &carol.user_id).is_none(), "no other members");
    assert_eq!(state_of(state, "m.room.name", "").unwrap()["content"]["name"], "new name");

    // Incremental: only the room that changed, its new events, no state block.
    let since = res["next_batch"].as_str().unwrap().to_owned();
    send(&server, &alice, &shared, "m.room.topic", Some(""), json!({ "topic": "t" })).await;
    send(&server, &alice, &shared, "m.room.message", None, json!({ "msgtype": "m.text", "body": "news" })).await;
    let res = sync(&server, &bob, Some(&since), lazy.clone()).await;
    let joined = res["rooms"]["join"].as_object().unwrap();
    assert_eq!(joined.keys().collect::<Vec<_>>(), vec![&shared], "only the changed room");
    let room = &joined[&shared];
    assert_eq!(bodies(&room["timeline"]["events"]), vec!["news"]);
    assert_eq!(room["timeline"]["limited"], true, "two new events, limit 1");
    let state = &room["state"]["events"];
    assert_eq!(state_of(state, "m.room.topic", "").expect("gap state")["content"]["topic"], "t");
    assert!(room.get("summary").is_none_or(|s| s.as_object().unwrap().is_empty()), "members did not change");

    // A sender the device was sent is not sent again, unless the filter asks for it.
    let since = res["next_batch"].as_str().unwrap().to_owned();
    send(&server, &alice, &renamed, "m.room.message", None, json!({ "msgtype": "m.text", "body": "again" })).await;
    let res = sync(&server, &bob, Some(&since), lazy.clone()).await;
    let state = &res["rooms"]["join"][&renamed]["state"]["events"];
    assert!(state_of(state, "m.room.member", &alice.user_id).is_none(), "already sent: {res}");
    let redundant = json!({ "room": { "timeline": { "limit": 1 },
        "state": { "lazy_load_members": true, "include_redundant_members": true } } });
    let res = sync(&server, &bob, Some(&since), redundant).await;
    let state = &res["rooms"]["join"][&renamed]["state"]["events"];
    assert!(state_of(state, "m.room.member", &alice.user_id).is_some(), "asked for again: {res}");

    // A room joined since the token comes in full.
    let since = res["next_batch"].as_str().unwrap().to_owned();
    let fresh = create_public_room(&server, &alice, "shared").await;
    join(&server, &bob, &fresh).await;
    let res = sync(&server, &bob, Some(&since), json!({})).await;
    let room = &res["rooms"]["join"][&fresh];
    assert!(
        state_of(&room["state"]["events"], "m.room.create", "").is_some()
            || room["timeline"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create")
    );
    assert_eq!(room["summary"]["m.joined_member_count"], 2);
}

#[tokio::test]
async fn incremental_sync_carries_edits_receipts_and_device_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_public_room(&server, &alice, "shared").await;
    join(&server, &bob, &room).await;
    let first = sync(&server, &alice, None, json!({})).await;
    assert_eq!(first["device_one_time_keys_count"]["signed_curve25519"], 0);
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // A message and its edit in the same gap: the message comes with the edit bundled.
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/orig");
    let (_, sent) = server
        .call("PUT", &path, Some(&alice.access_token), Some(json!({ "msgtype": "m.text", "body": "typo" })))
        .await;
    let original = sent["event_id"].as_str().unwrap().to_owned();
    let edit = json!({
        "msgtype": "m.text", "body": "* fixed",
        "m.new_content": { "msgtype": "m.text", "body": "fixed" },
        "m.relates_to": { "rel_type": "m.replace", "event_id": original },
    });
    send(&server, &alice, &room, "m.room.message", None, edit).await;
    let (status, _) = server
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{original}"),
            Some(&bob.access_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let keys = json!({ "one_time_keys": { "signed_curve25519:AAAA": { "key": "k1" }, "signed_curve25519:AAAB": { "key": "k2" } } });
    let (status, _) =
        server.call("POST", "/_matrix/client/v3/keys/upload", Some(&alice.access_token), Some(keys)).await;
    assert_eq!(status, 200);

    let res = sync(&server, &alice, Some(&since), json!({})).await;
    let entry = &res["rooms"]["join"][&room];
    let events = entry["timeline"]["events"].as_array().unwrap();
    let message = events.iter().find(|e| e["event_id"] == original.as_str()).expect("the original in the timeline");
    assert_eq!(message["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"]["body"], "fixed");
    let receipts = entry["ephemeral"]["events"].as_array().unwrap();
    let receipt = receipts.iter().find(|e| e["type"] == "m.receipt").expect("bob's receipt");
    assert!(receipt["content"][&original]["m.read"][&bob.user_id]["ts"].is_i64());
    assert_eq!(res["device_one_time_keys_count"]["signed_curve25519"], 2);
}

#[tokio::test]
async fn left_rooms_end_at_the_leave() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_public_room(&server, &alice, "shared").await;
    join(&server, &bob, &room).await;
    let since = sync(&server, &bob, None, json!({})).await["next_batch"].as_str().unwrap().to_owned();
    send(&server, &alice, &room, "m.room.message", None, json!({ "msgtype": "m.text", "body": "bye" })).await;
    let (status, _) = server
        .call("POST", &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    send(&server, &alice, &room, "m.room.message", None, json!({ "msgtype": "m.text", "body": "unseen" })).await;
    let res = sync(&server, &bob, Some(&since), json!({})).await;
    let left = &res["rooms"]["leave"][&room]["timeline"]["events"];
    assert_eq!(bodies(left), vec!["bye"], "the timeline stops at the leave");
    assert_eq!(left.as_array().unwrap().last().unwrap()["content"]["membership"], "leave");
}

/// A long poll of `user` from `since` that the server would hold for 30 s: it must answer
/// well before, since something concerns it.
async fn poll_answered(server: &TestServer, user: &TestUser, since: &str) -> Value {
    let path = format!("/_matrix/client/v3/sync?timeout=30000&since={since}");
    let call = server.call("GET", &path, Some(&user.access_token), None);
    let (status, res) = tokio::time::timeout(std::time::Duration::from_secs(15), call)
        .await
        .expect("the long poll waited although something concerned it");
    assert_eq!(status, 200, "{res}");
    res
}

fn next_batch(res: &Value) -> String {
    res["next_batch"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn long_polls_asked_again_at_once_still_answer_what_concerns_them() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    // A first long poll that times out: the server now knows bob's (empty) list of rooms.
    let since = next_batch(&sync(&server, &bob, None, json!({})).await);
    let (_, idle) = server
        .call("GET", &format!("/_matrix/client/v3/sync?timeout=200&since={since}"), Some(&bob.access_token), None)
        .await;
    assert!(idle["rooms"]["join"].as_object().is_none_or(|r| r.is_empty()), "{idle}");

    // An invite to a room bob's list does not hold yet, then his join, then a message there.
    let room = create_public_room(&server, &alice, "shared").await;
    let path = format!("/_matrix/client/v3/rooms/{room}/invite");
    let invite = json!({ "user_id": bob.user_id });
    assert_eq!(server.call("POST", &path, Some(&alice.access_token), Some(invite)).await.0, 200);
    let res = poll_answered(&server, &bob, &next_batch(&idle)).await;
    assert!(res["rooms"]["invite"][&room].is_object(), "{res}");
    join(&server, &bob, &room).await;
    let res = poll_answered(&server, &bob, &next_batch(&res)).await;
    assert!(res["rooms"]["join"][&room].is_object(), "{res}");
    let since = next_batch(&res);
    let waiting = {
        let server = &server;
        let bob = &bob;
        async move { poll_answered(server, bob, &since).await }
    };
    let sending = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        send(&server, &alice, &room, "m.room.message", None, json!({ "msgtype": "m.text", "body": "here" })).await;
    };
    let (res, ()) = tokio::join!(waiting, sending);
    assert_eq!(bodies(&res["rooms"]["join"][&room]["timeline"]["events"]), vec!["here"]);

    // More to-device messages than one answer carries: the rest come at once in the next
    // answer, and again to a client that retries with the same token.
    for n in 0..101 {
        let path = format!("/_matrix/client/v3/sendToDevice/m.test.ping/q{n}");
        let body = json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "n": n } } } });
        assert_eq!(server.call("PUT", &path, Some(&alice.access_token), Some(body)).await.0, 200);
    }
    let first = poll_answered(&server, &bob, &next_batch(&res)).await;
    assert_eq!(first["to_device"]["events"].as_array().unwrap().len(), 100);
    let rest = poll_answered(&server, &bob, &next_batch(&first)).await;
    assert_eq!(rest["to_device"]["events"][0]["content"]["n"], 100, "{rest}");
    let retry = poll_answered(&server, &bob, &next_batch(&first)).await;
    assert_eq!(retry["to_device"]["events"][0]["content"]["n"], 100, "sent again until acknowledged: {retry}");
    let (_, acknowledged) = server
        .call(
            "GET",
            &format!("/_matrix/client/v3/sync?timeout=200&since={}", next_batch(&retry)),
            Some(&bob.access_token),
            None,
        )
        .await;
    assert!(acknowledged["to_device"]["events"].as_array().unwrap().is_empty(), "{acknowledged}");
}

/// An incremental sync takes its new events from those the server keeps in memory when it
/// can: what it serves must be each event as it is now, not as it was written.
#[tokio::test]
async fn incremental_syncs_serve_new_events_as_they_are_now() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_public_room(&server, &alice, "shared").await;
    join(&server, &bob, &room).await;
    let filter = json!({ "room": { "timeline": { "limit": 10 } } });
    let since = next_batch(&sync(&server, &bob, None, filter.clone()).await);
    let withdrawn =
        server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": "à retirer" })).await;
    server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": "reste" })).await;
    // Bob's device sees both first: their rows are now the ones syncs were served.
    let seen = sync(&server, &bob, Some(&since), filter.clone()).await;
    assert_eq!(bodies(&seen["rooms"]["join"][&room]["timeline"]["events"]), vec!["à retirer", "reste"]);
    let path = format!("/_matrix/client/v3/rooms/{room}/redact/{withdrawn}/{}", uuid_like());
    let (status, res) = server.call("PUT", &path, Some(&alice.access_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{res}");

    // Another device of bob's, or the same one asking again from the older token.
    let res = sync(&server, &bob, Some(&since), filter.clone()).await;
    let timeline = res["rooms"]["join"][&room]["timeline"]["events"].as_array().expect("the room is in the answer");
    let event = timeline.iter().find(|e| e["event_id"] == withdrawn.as_str()).expect("the message keeps its place");
    assert_eq!(event["content"], json!({}), "the redacted message is served redacted: {event}");
    assert_eq!(event["unsigned"]["redacted_because"]["type"], "m.room.redaction", "{event}");
    assert!(timeline.iter().any(|e| e["type"] == "m.room.redaction"), "{res}");
    assert_eq!(bodies(&res["rooms"]["join"][&room]["timeline"]["events"]), vec!["reste"]);
}

/// A sync woken by a message starts from what the server keeps in memory of the user and
/// their device (memberships, unread counts, account data, key counts, to-device
/// messages): every change to one of them must show in the next sync, whichever way it
/// came (a message moves the counts, a receipt clears them, another user claims a key,
/// sends a to-device message or an invite).
#[tokio::test]
async fn woken_syncs_see_every_change_to_what_the_server_keeps_of_the_user() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_public_room(&server, &alice, "shared").await;
    join(&server, &bob, &room).await;
    let filter = json!({});
    let mut since = next_batch(&sync(&server, &bob, None, filter.clone()).await);
    // Each step syncs bob's device from the previous answer's token, twice: the first
    // answer fills what is kept, the second is served from it.
    let step = async |since: &mut String| {
        let res = sync(&server, &bob, Some(since), filter.clone()).await;
        *since = next_batch(&res);
        let again = sync(&server, &bob, Some(since), filter.clone()).await;
        assert!(again["rooms"]["join"].as_object().is_none_or(|r| r.is_empty()), "nothing new: {again}");
        res
    };
    let unread = |res: &Value| res["rooms"]["join"][&room]["unread_notifications"]["notification_count"].as_i64();
    step(&mut since).await;

    let mut last = String::new();
    for n in 1..=2 {
        last = server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": "hé" })).await;
        assert_eq!(unread(&step(&mut since).await), Some(n), "alice's message {n} is unread");
    }
    let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{last}");
    let (status, res) = server.call("POST", &path, Some(&bob.access_token), Some(json!({}))).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(unread(&step(&mut since).await), Some(0), "bob read them");
    server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": "encore" })).await;
    assert_eq!(unread(&step(&mut since).await), Some(1), "counted from the receipt on");

    let keys = json!({ "one_time_keys": { "signed_curve25519:AAAA": { "key": "k1" }, "signed_curve25519:AAAB": { "key": "k2" } } });
    let (status, _) = server.call("POST", "/_matrix/client/v3/keys/upload", Some(&bob.access_token), Some(keys)).await;
    assert_eq!(status, 200);
    assert_eq!(step(&mut since).await["device_one_time_keys_count"]["signed_curve25519"], 2);
    let claim = json!({ "one_time_keys": { &bob.user_id: { &bob.device_id: "signed_curve25519" } } });
    let (status, res) =
        server.call("POST", "/_matrix/client/v3/keys/claim", Some(&alice.access_token), Some(claim)).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(step(&mut since).await["device_one_time_keys_count"]["signed_curve25519"], 1, "alice claimed one");

    let message = json!({ "messages": { &bob.user_id: { &bob.device_id: { "secret": "s" } } } });
    let path = format!("/_matrix/client/v3/sendToDevice/m.test/{}", uuid_like());
    let (status, res) = server.call("PUT", &path, Some(&alice.access_token), Some(message)).await;
    assert_eq!(status, 200, "{res}");
    let res = step(&mut since).await;
    assert_eq!(res["to_device"]["events"][0]["content"]["secret"], "s", "{res}");

    let path = format!("/_matrix/client/v3/user/{}/account_data/m.test", bob.user_id);
    let (status, res) = server.call("PUT", &path, Some(&bob.access_token), Some(json!({ "n": 1 }))).await;
    assert_eq!(status, 200, "{res}");
    let res = step(&mut since).await;
    let data = res["account_data"]["events"].as_array().expect("account data");
    assert!(data.iter().any(|e| e["type"] == "m.test" && e["content"]["n"] == 1), "{res}");

    let other = server.create_room(&alice.access_token, json!({ "invite": [&bob.user_id] })).await;
    let res = step(&mut since).await;
    assert!(res["rooms"]["invite"][&other].is_object(), "alice's invite: {res}");
    join(&server, &bob, &other).await;
    let res = step(&mut since).await;
    assert!(res["rooms"]["join"][&other].is_object(), "bob joined: {res}");
}
