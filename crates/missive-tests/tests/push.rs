//! Push notifications through a real HTTP gateway: who is notified, what reaches the
//! gateway (IDs and counts only), retries and rejected pushkeys, pushers' bad input, and
//! nothing of a delivered notification left in the database.

mod common;

use std::sync::atomic::Ordering;

use common::{TestServer, TestUser, gateway::Gateway, sync_until, until};
use matrix_sdk::ruma::{
    OwnedRoomId, UserId, api::client::room::create_room::v3::Request as CreateRoom,
    events::room::message::RoomMessageEventContent,
};
use serde_json::{Value, json};

/// A server whose pushers may use a gateway on loopback.
async fn server() -> TestServer {
    TestServer::start_with(&[("MISSIVE_PUSH__GATEWAY_ALLOWED_RANGES", "[\"127.0.0.0/8\"]")]).await
}

/// Registers an HTTP pusher for `user` at `gateway`, with `pushkey`.
async fn set_pusher(server: &TestServer, user: &TestUser, gateway: &Gateway, pushkey: &str) {
    let (status, body) = server
        .call("POST", "/_matrix/client/v3/pushers/set", Some(&user.access_token), Some(pusher(gateway, pushkey)))
        .await;
    assert_eq!(status, 200, "{body}");
}

fn pusher(gateway: &Gateway, pushkey: &str) -> Value {
    json!({
        "kind": "http",
        "app_id": "fr.gouv.tchap.android",
        "app_display_name": "Tchap",
        "device_display_name": "Téléphone de service",
        "pushkey": pushkey,
        "lang": "fr",
        "data": { "url": gateway.url(), "format": "event_id_only" },
    })
}

async fn set_display_name(server: &TestServer, user: &TestUser, name: &str) {
    let path = format!("/_matrix/client/v3/profile/{}/displayname", user.user_id);
    let (status, _) = server.call("PUT", &path, Some(&user.access_token), Some(json!({ "displayname": name }))).await;
    assert_eq!(status, 200);
}

/// A member's notification count in a room, as their sync shows it.
async fn sync_count(server: &TestServer, user: &TestUser, room_id: &str) -> Value {
    let (_, body) = server.call("GET", "/_matrix/client/v3/sync?timeout=0", Some(&user.access_token), None).await;
    body["rooms"]["join"][room_id]["unread_notifications"].clone()
}

/// Tables (of SQLite or PostgreSQL) in which `needle` appears.
async fn tables_holding(server: &TestServer, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    if server.is_postgres() {
        let tables =
            server.query_strings("SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()").await;
        for table in tables {
            if server.dump_postgres(std::slice::from_ref(&table)).await.contains(needle) {
                out.push(table);
            }
        }
    } else {
        let script = "import sqlite3, sys\n\
            db = sqlite3.connect(sys.argv[1])\n\
            for (t,) in db.execute(\"SELECT name FROM sqlite_master WHERE type='table'\").fetchall():\n\
            \x20   rows = db.execute('SELECT * FROM \"%s\"' % t).fetchall()\n\
            \x20   if sys.argv[2] in repr(rows): print(t)\n";
        let path = server.sqlite_path().unwrap();
        let output = std::process::Command::new("python3")
            .args(["-c", script, path.to_str().unwrap(), needle])
            .output()
            .expect("python3");
        out.extend(String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned));
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_right_members_are_notified_with_ids_and_counts_only() {
    let server = server().await;
    let gateway = Gateway::start().await;
    let (alice, alice_user) = server.client("alice").await;
    let (bob, bob_user) = server.client("bob").await;
    set_display_name(&server, &alice_user, "Alice Martin-Secret").await;
    for client in [&alice, &bob] {
        client.sync_once(Default::default()).await.unwrap();
    }
    set_pusher(&server, &alice_user, &gateway, "alice-phone").await;
    set_pusher(&server, &bob_user, &gateway, "bob-phone").await;
    let (_, listed) = server.call("GET", "/_matrix/client/v3/pushers", Some(&bob_user.access_token), None).await;
    assert_eq!(listed["pushers"][0]["pushkey"], "bob-phone", "{listed}");
    assert_eq!(listed["pushers"][0]["data"]["url"], gateway.url().as_str());

    // An encrypted direct chat, named.
    let mut request = CreateRoom::new();
    request.is_direct = true;
    request.preset = Some(matrix_sdk::ruma::api::client::room::create_room::v3::RoomPreset::TrustedPrivateChat);
    request.invite = vec![UserId::parse(&bob_user.user_id).unwrap()];
    request.name = Some("Cellule Confidentielle Omega".into());
    let room = alice.create_room(request).await.unwrap();
    let room_id: OwnedRoomId = room.room_id().to_owned();
    sync_until(&bob, (), |_, r| r.rooms.invited.contains_key(&room_id)).await;
    bob.join_room_by_id(&room_id).await.unwrap();
    alice.sync_once(Default::default()).await.unwrap();
    bob.sync_once(Default::default()).await.unwrap();

    let secret = "Le code du coffre est 4242-ZULU";
    let sent = room.send(RoomMessageEventContent::text_plain(secret)).await.unwrap().response.event_id;
    let pushed = until("bob's phone is notified", async || {
        gateway.for_pushkey("bob-phone").into_iter().find(|n| n["event_id"] == sent.as_str())
    })
    .await;
    assert_eq!(pushed["room_id"], room_id.as_str());
    assert_eq!(pushed["counts"]["unread"], 1);
    assert_eq!(pushed["devices"][0]["app_id"], "fr.gouv.tchap.android");
    assert!(pushed["devices"][0]["data"].get("url").is_none(), "the gateway's URL is not sent back");
    // The count is the one bob's sync shows.
    assert_eq!(sync_count(&server, &bob_user, room_id.as_str()).await["notification_count"], 1);

    // Bob answers: alice is notified of his message, never of her own.
    let reply = bob.get_room(&room_id).unwrap().send(RoomMessageEventContent::text_plain("Bien reçu")).await.unwrap();
    let reply = reply.response.event_id;
    until("alice's phone is notified of bob's reply", async || {
        gateway.for_pushkey("alice-phone").into_iter().find(|n| n["event_id"] == reply.as_str())
    })
    .await;
    let to_alice: Vec<Value> = gateway.for_pushkey("alice-phone");
    assert!(to_alice.iter().all(|n| n["event_id"] != sent.as_str()), "her own message notifies nobody: {to_alice:?}");

    // Nothing but IDs and counts left the server: no text, no sender name, no room name.
    for body in gateway.accepted.lock().unwrap().iter() {
        for secret in [secret, "4242-ZULU", "Alice Martin-Secret", "Cellule Confidentielle Omega", "Bien reçu"] {
            assert!(!body.contains(secret), "the gateway received {secret:?}: {body}");
        }
        let notification = &serde_json::from_str::<Value>(body).unwrap()["notification"];
        let keys: Vec<&String> = notification.as_object().unwrap().keys().collect();
        assert!(
            keys.iter().all(|k| ["event_id", "room_id", "counts", "prio", "devices"].contains(&k.as_str())),
            "{keys:?}"
        );
    }

    // The notifications are listed; reading clears the count.
    let (_, listed) = server.call("GET", "/_matrix/client/v3/notifications", Some(&bob_user.access_token), None).await;
    assert_eq!(listed["notifications"][0]["event"]["event_id"], sent.as_str(), "{listed}");
    assert_eq!(listed["notifications"][0]["read"], false);

    // Delivered, the notification is stored nowhere: the tables holding the pushed event
    // are those holding a message no one was notified of.
    let quiet = server.create_room(&alice_user.access_token, json!({ "name": "seule" })).await;
    let unpushed =
        server.send_message(&alice_user.access_token, &quiet, json!({ "msgtype": "m.text", "body": "x" })).await;
    // Followed by others, as the pushed one was: neither is a leaf of its room.
    for body in ["y", "z"] {
        server.send_message(&alice_user.access_token, &quiet, json!({ "msgtype": "m.text", "body": body })).await;
    }
    let holding_pushed = tables_holding(&server, sent.as_str()).await;
    let holding_unpushed = tables_holding(&server, &unpushed).await;
    assert_eq!(holding_pushed, holding_unpushed, "a delivered notification left a trace");
    assert!(!holding_pushed.iter().any(|t| t.contains("push")), "{holding_pushed:?}");

    // Reading updates the phone's badge: a notification of counts alone.
    let receipt = format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{sent}");
    assert_eq!(server.call("POST", &receipt, Some(&bob_user.access_token), Some(json!({}))).await.0, 200);
    let badge = until("the badge update after reading", async || {
        gateway.for_pushkey("bob-phone").into_iter().find(|n| n.get("event_id").is_none())
    })
    .await;
    assert_eq!(badge["counts"]["unread"], 0, "{badge}");
}

#[tokio::test]
async fn mentions_highlight_and_muted_rooms_stay_silent() {
    let server = server().await;
    let gateway = Gateway::start().await;
    let alice = server.register("alice").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    set_display_name(&server, &carol, "Carol").await;
    set_pusher(&server, &carol, &gateway, "carol-phone").await;
    set_pusher(&server, &dave, &gateway, "dave-phone").await;
    let room = server
        .create_room(&alice.access_token, json!({ "preset": "private_chat", "invite": [carol.user_id, dave.user_id] }))
        .await;
    for user in [&carol, &dave] {
        let (status, _) = server
            .call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(&user.access_token), Some(json!({})))
            .await;
        assert_eq!(status, 200);
    }
    // Dave mutes the room.
    let mute = format!("/_matrix/client/v3/pushrules/global/room/{room}");
    let (status, body) = server.call("PUT", &mute, Some(&dave.access_token), Some(json!({ "actions": [] }))).await;
    assert_eq!(status, 200, "{body}");

    let mention = server
        .send_message(
            &alice.access_token,
            &room,
            json!({ "msgtype": "m.text", "body": "Carol, voir la note", "m.mentions": { "user_ids": [carol.user_id] } }),
        )
        .await;
    let plain =
        server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": "Pour tous" })).await;
    let to_carol = until("carol gets both", async || {
        let got = gateway.for_pushkey("carol-phone");
        (got.len() >= 2).then_some(got)
    })
    .await;
    let mentioned = to_carol.iter().find(|n| n["event_id"] == mention.as_str()).unwrap();
    assert_eq!(mentioned["devices"][0]["tweaks"]["highlight"], true);
    let general = to_carol.iter().find(|n| n["event_id"] == plain.as_str()).unwrap();
    assert!(general["devices"][0]["tweaks"].get("highlight").is_none());
    assert_eq!(general["counts"]["unread"], 2);
    let (_, highlights) =
        server.call("GET", "/_matrix/client/v3/notifications?only=highlight", Some(&carol.access_token), None).await;
    let ids: Vec<&Value> =
        highlights["notifications"].as_array().unwrap().iter().map(|n| &n["event"]["event_id"]).collect();
    assert_eq!(ids, vec![&json!(mention)]);
    // Dave's muted room: after carol's two, still nothing for dave.
    assert!(gateway.for_pushkey("dave-phone").is_empty());

    // A room mention by someone allowed to make one (`event_property_is` and
    // `sender_notification_permission`) highlights; a notice of a rule of carol's own
    // (`event_property_is` on the msgtype) stays silent.
    let rule = json!({
        "conditions": [{ "kind": "event_property_is", "key": "content.msgtype", "value": "m.notice" }],
        "actions": [],
    });
    let path = "/_matrix/client/v3/pushrules/global/override/quiet-notices";
    let (status, body) = server.call("PUT", path, Some(&carol.access_token), Some(rule)).await;
    assert_eq!(status, 200, "{body}");
    let notice = server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.notice", "body": "bot" })).await;
    let everyone = server
        .send_message(
            &alice.access_token,
            &room,
            json!({ "msgtype": "m.text", "body": "Tout le monde", "m.mentions": { "room": true } }),
        )
        .await;
    let room_mention = until("the room mention", async || {
        gateway.for_pushkey("carol-phone").into_iter().find(|n| n["event_id"] == everyone.as_str())
    })
    .await;
    assert_eq!(room_mention["devices"][0]["tweaks"]["highlight"], true);
    assert!(gateway.for_pushkey("carol-phone").iter().all(|n| n["event_id"] != notice.as_str()));

    // An invitation rings the invitee's phone, though they are no member yet.
    let other = server.create_room(&alice.access_token, json!({ "preset": "private_chat" })).await;
    let path = format!("/_matrix/client/v3/rooms/{other}/invite");
    let (status, _) =
        server.call("POST", &path, Some(&alice.access_token), Some(json!({ "user_id": dave.user_id }))).await;
    assert_eq!(status, 200);
    let invite = until("dave's phone rings for the invite", async || {
        gateway.for_pushkey("dave-phone").into_iter().find(|n| n["room_id"] == other.as_str())
    })
    .await;
    assert!(invite["event_id"].as_str().is_some_and(|id| id.starts_with('$')));
}

#[tokio::test]
async fn a_failing_gateway_gets_each_notification_once_and_rejected_pushkeys_go() {
    let server = server().await;
    let gateway = Gateway::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    set_pusher(&server, &bob, &gateway, "bob-phone").await;
    let room =
        server.create_room(&alice.access_token, json!({ "preset": "private_chat", "invite": [bob.user_id] })).await;
    let (status, _) =
        server.call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(&bob.access_token), Some(json!({}))).await;
    assert_eq!(status, 200);

    // Down for two attempts, then up: delivered once, after the retries.
    gateway.fail_next.store(2, Ordering::SeqCst);
    let first = server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": "un" })).await;
    until("the gateway recovers and gets it", async || (!gateway.for_pushkey("bob-phone").is_empty()).then_some(()))
        .await;
    assert_eq!(gateway.attempts.load(Ordering::SeqCst), 3);
    let second = server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": "deux" })).await;
    until("the second", async || (gateway.for_pushkey("bob-phone").len() == 2).then_some(())).await;
    let ids: Vec<Value> = gateway.for_pushkey("bob-phone").iter().map(|n| n["event_id"].clone()).collect();
    assert_eq!(ids, vec![json!(first), json!(second)], "each once, in order");

    // The gateway no longer knows the pushkey: the pusher goes.
    gateway.rejected.lock().unwrap().insert("bob-phone".into());
    server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": "trois" })).await;
    until("the rejected pusher is removed", async || {
        let (_, listed) = server.call("GET", "/_matrix/client/v3/pushers", Some(&bob.access_token), None).await;
        listed["pushers"].as_array().unwrap().is_empty().then_some(())
    })
    .await;

    // A gateway that never answers delays no send.
    set_pusher(&server, &bob, &gateway, "bob-tablet").await;
    gateway.hang.store(true, Ordering::SeqCst);
    for i in 0..5 {
        server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": format!("{i}") })).await;
    }
}

#[tokio::test]
async fn bad_pushers_are_refused_and_nothing_is_stored() {
    let open = server().await;
    let strict = TestServer::start().await;
    let gateway = Gateway::start().await;
    let user = open.register("alice").await;
    let strict_user = strict.register("alice").await;
    let set = async |server: &TestServer, user: &TestUser, body: Value| {
        server.call("POST", "/_matrix/client/v3/pushers/set", Some(&user.access_token), Some(body)).await
    };
    let with_data = |data: Value| {
        let mut body = pusher(&gateway, "key");
        body["data"] = data;
        body
    };
    let cases = [
        (with_data(json!({ "url": "not a url" })), 400, "M_INVALID_PARAM"),
        (with_data(json!({ "url": "ftp://127.0.0.1/_matrix/push/v1/notify" })), 400, "M_INVALID_PARAM"),
        (with_data(json!({ "url": format!("http://127.0.0.1:{}/elsewhere", gateway.port) })), 400, "M_INVALID_PARAM"),
        (with_data(json!({})), 400, "M_INVALID_PARAM"),
        (with_data(json!({ "url": gateway.url(), "padding": "x".repeat(5000) })), 400, "M_INVALID_PARAM"),
        (with_data(json!({ "url": gateway.url(), "format": 7 })), 400, "M_INVALID_PARAM"),
        (
            {
                let mut b = pusher(&gateway, "key");
                b["kind"] = json!("carrier-pigeon");
                b
            },
            400,
            "M_INVALID_PARAM",
        ),
        (
            {
                let mut b = pusher(&gateway, "key");
                b.as_object_mut().unwrap().remove("app_id");
                b
            },
            400,
            "M_MISSING_PARAM",
        ),
        (pusher(&gateway, &"k".repeat(513)), 400, "M_INVALID_PARAM"),
    ];
    for (body, status, errcode) in cases {
        let (got, answer) = set(&open, &user, body.clone()).await;
        assert_eq!((got, answer["errcode"].as_str()), (status, Some(errcode)), "{body}: {answer}");
    }
    // A gateway in a private range the operator did not allow.
    let (status, answer) = set(&strict, &strict_user, pusher(&gateway, "key")).await;
    assert_eq!((status, answer["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{answer}");
    for (server, user) in [(&open, &user), (&strict, &strict_user)] {
        let (_, listed) = server.call("GET", "/_matrix/client/v3/pushers", Some(&user.access_token), None).await;
        assert_eq!(listed["pushers"], json!([]));
    }
    // Removing: `kind: null`.
    set_pusher(&open, &user, &gateway, "key").await;
    let mut removal = pusher(&gateway, "key");
    removal["kind"] = Value::Null;
    assert_eq!(set(&open, &user, removal).await.0, 200);
    let (_, listed) = open.call("GET", "/_matrix/client/v3/pushers", Some(&user.access_token), None).await;
    assert_eq!(listed["pushers"], json!([]));
}

/// The messages the SMTP server received for `address`, quoted-printable bodies decoded
/// (as a mail client shows them).
fn mails_to(smtp: &common::smtp::Smtp, address: &str) -> Vec<String> {
    smtp.messages()
        .into_iter()
        .filter(|m| m.contains(&format!("To: {address}")))
        .map(|m| quoted_printable(&m))
        .collect()
}

fn quoted_printable(text: &str) -> String {
    let joined = text.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'=', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn missed_messages_are_mailed_after_the_delay_without_content_and_stop_after_opt_out() {
    let smtp = common::smtp::Smtp::start();
    let listen = format!("127.0.0.1:{}", common::peers::free_port());
    let base = format!("http://{listen}");
    let (port, ca) = (smtp.port.to_string(), smtp.ca.display().to_string());
    let server = TestServer::start_with(&[
        ("MISSIVE_LISTEN", listen.as_str()),
        ("MISSIVE_PUBLIC_BASEURL", base.as_str()),
        ("MISSIVE_EMAIL__SMTP_HOST", "localhost"),
        ("MISSIVE_EMAIL__SMTP_PORT", port.as_str()),
        ("MISSIVE_EMAIL__CA_FILE", ca.as_str()),
        ("MISSIVE_EMAIL__FROM", "Tchap <notifications@agent.example>"),
        ("MISSIVE_EMAIL__APP_NAME", "Tchap"),
        ("MISSIVE_EMAIL__NOTIF_DELAY_SECS", "2"),
        ("MISSIVE_EMAIL__NOTIF_PERIOD_SECS", "6"),
    ])
    .await;
    let admin = common::register_admin(&server, "operator").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    set_display_name(&server, &alice, "Alice Durand").await;
    let address = "bob@interieur.example";
    let path = format!("/_synapse/admin/v2/users/{}", bob.user_id);
    let (status, body) = server
        .call("PUT", &path, Some(&admin), Some(json!({ "threepids": [{ "medium": "email", "address": address }] })))
        .await;
    assert_eq!(status, 200, "{body}");
    let email_pusher = |pushkey: &str| {
        json!({
            "kind": "email", "app_id": "m.email", "pushkey": pushkey, "app_display_name": "E-mail",
            "device_display_name": pushkey, "lang": "fr", "data": {},
        })
    };
    // Only an address of the account.
    let (status, body) = server
        .call("POST", "/_matrix/client/v3/pushers/set", Some(&bob.access_token), Some(email_pusher("eve@evil.example")))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = server
        .call("POST", "/_matrix/client/v3/pushers/set", Some(&bob.access_token), Some(email_pusher(address)))
        .await;
    assert_eq!(status, 200, "{body}");

    let room = |name: &'static str, encrypted: bool| {
        let server = &server;
        let (alice, bob) = (&alice, &bob);
        async move {
            let mut body = json!({ "name": name, "preset": "private_chat", "invite": [bob.user_id] });
            if encrypted {
                body["initial_state"] = json!([{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }]);
            }
            let room = server.create_room(&alice.access_token, body).await;
            let (status, _) = server
                .call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(&bob.access_token), Some(json!({})))
                .await;
            assert_eq!(status, 200);
            room
        }
    };
    // Read before the delay: no mail.
    let read_room = room("Salle deja lue", false).await;
    let read = server
        .send_message(&alice.access_token, &read_room, json!({ "msgtype": "m.text", "body": "lu tout de suite" }))
        .await;
    let receipt = format!("/_matrix/client/v3/rooms/{read_room}/receipt/m.read/{read}");
    assert_eq!(server.call("POST", &receipt, Some(&bob.access_token), Some(json!({}))).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert!(mails_to(&smtp, address).is_empty(), "read in time: no mail");

    // Unread after the delay: one mail, rooms and senders, no content.
    let plain = room("Preparation du sommet", false).await;
    let secret = "Texte secret du message 9081";
    server.send_message(&alice.access_token, &plain, json!({ "msgtype": "m.text", "body": secret })).await;
    let encrypted = room("Cellule chiffree", true).await;
    let ciphertext = json!({
        "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg",
        "sender_key": "peI4hGz2kD7Yyc3y", "device_id": "ALICEDEV", "session_id": "sess1",
    });
    let path = format!("/_matrix/client/v3/rooms/{encrypted}/send/m.room.encrypted/t1");
    assert_eq!(server.call("PUT", &path, Some(&alice.access_token), Some(ciphertext)).await.0, 200);
    let mail = until("the mail arrives", async || mails_to(&smtp, address).into_iter().next()).await;
    assert!(mail.contains("Preparation du sommet") && mail.contains("Alice Durand"), "{mail}");
    assert!(mail.contains("Cellule chiffree") && mail.contains("1 new encrypted message"), "{mail}");
    assert!(!mail.contains("Salle deja lue"), "{mail}");
    for leaked in [secret, "9081", "AwgAEnACgAk"] {
        assert!(!mail.contains(leaked), "the mail holds {leaked:?}: {mail}");
    }
    assert!(mail.contains("From: Tchap <notifications@agent.example>"), "{mail}");
    assert!(mail.contains("List-Unsubscribe: <"), "{mail}");
    let link = mail
        .split_whitespace()
        .find(|w| w.starts_with(&format!("{base}/_missive/email/unsubscribe?")))
        .unwrap_or_else(|| panic!("no link in {mail}"))
        .to_owned();

    // Within the period, more messages wait; after it, one more mail.
    server.send_message(&alice.access_token, &plain, json!({ "msgtype": "m.text", "body": "encore" })).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(mails_to(&smtp, address).len(), 1, "one mail per period");
    until("the next period's mail", async || (mails_to(&smtp, address).len() == 2).then_some(())).await;

    // A forged link is refused; the real one turns mails off.
    let forged = link.replace("sig=", "sig=0");
    assert_eq!(reqwest::get(&forged).await.unwrap().status().as_u16(), 403);
    let answer = reqwest::get(&link).await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let (_, listed) = server.call("GET", "/_matrix/client/v3/pushers", Some(&bob.access_token), None).await;
    assert_eq!(listed["pushers"], json!([]));
    server.send_message(&alice.access_token, &plain, json!({ "msgtype": "m.text", "body": "apres" })).await;
    tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    assert_eq!(mails_to(&smtp, address).len(), 2, "no mail after opting out");
}

#[tokio::test]
async fn the_full_format_reaches_a_gateway_only_where_the_operator_allows_it() {
    let gateway = Gateway::start().await;
    for allowed in [false, true] {
        let full = if allowed { "true" } else { "false" };
        let server = TestServer::start_with(&[
            ("MISSIVE_PUSH__GATEWAY_ALLOWED_RANGES", "[\"127.0.0.0/8\"]"),
            ("MISSIVE_PUSH__ALLOW_FULL_FORMAT", full),
        ])
        .await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        set_display_name(&server, &alice, "Alice Durand").await;
        // A pusher that asks for the full format (no `format`).
        let pushkey = format!("bob-{full}");
        let mut body = pusher(&gateway, &pushkey);
        body["data"] = json!({ "url": gateway.url() });
        let (status, _) =
            server.call("POST", "/_matrix/client/v3/pushers/set", Some(&bob.access_token), Some(body)).await;
        assert_eq!(status, 200);
        let room = server
            .create_room(
                &alice.access_token,
                json!({ "name": "Point presse", "preset": "private_chat", "invite": [bob.user_id] }),
            )
            .await;
        server.call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(&bob.access_token), Some(json!({}))).await;
        let sent =
            server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": "A 15h" })).await;
        let pushed = until("the notification", async || {
            gateway.for_pushkey(&pushkey).into_iter().find(|n| n["event_id"] == sent.as_str())
        })
        .await;
        if allowed {
            assert_eq!(pushed["content"]["body"], "A 15h", "{pushed}");
            assert_eq!(pushed["room_name"], "Point presse");
            assert_eq!(pushed["sender_display_name"], "Alice Durand");
        } else {
            assert!(pushed.get("content").is_none() && pushed.get("room_name").is_none(), "{pushed}");
        }
    }
}

#[tokio::test]
async fn counts_are_kept_apart_per_thread_for_clients_that_ask() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room =
        server.create_room(&alice.access_token, json!({ "preset": "private_chat", "invite": [bob.user_id] })).await;
    server.call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(&bob.access_token), Some(json!({}))).await;
    let root = server.send_message(&alice.access_token, &room, json!({ "msgtype": "m.text", "body": "Sujet" })).await;
    let reply = server
        .send_message(
            &alice.access_token,
            &room,
            json!({ "msgtype": "m.text", "body": "Reponse", "m.relates_to": { "rel_type": "m.thread", "event_id": root } }),
        )
        .await;
    let sync = async |threaded: bool| {
        let filter = if threaded {
            "&filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22unread_thread_notifications%22%3Atrue%7D%7D%7D"
        } else {
            ""
        };
        let path = format!("/_matrix/client/v3/sync?timeout=0{filter}");
        let (status, body) = server.call("GET", &path, Some(&bob.access_token), None).await;
        assert_eq!(status, 200, "{body}");
        body["rooms"]["join"][&room].clone()
    };
    let plain = sync(false).await;
    assert_eq!(plain["unread_notifications"]["notification_count"], 2);
    assert!(plain.get("unread_thread_notifications").is_none());
    let threaded = sync(true).await;
    assert_eq!(threaded["unread_notifications"]["notification_count"], 1, "{threaded}");
    assert_eq!(threaded["unread_thread_notifications"][&root]["notification_count"], 1, "{threaded}");

    // Reading the thread clears its count only.
    let path = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{reply}");
    let (status, body) = server.call("POST", &path, Some(&bob.access_token), Some(json!({ "thread_id": root }))).await;
    assert_eq!(status, 200, "{body}");
    let threaded = sync(true).await;
    assert_eq!(threaded["unread_notifications"]["notification_count"], 1, "{threaded}");
    assert!(threaded["unread_thread_notifications"].get(&root).is_none(), "{threaded}");
}
