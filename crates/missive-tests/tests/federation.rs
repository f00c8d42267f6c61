//! Federation between real Missive servers over TLS: server keys, notaries, signed
//! requests both ways, and what a hostile or unlisted peer gets.

mod common;

use common::{TestServer, TestUser, peers::Peers};
use ruma::{
    CanonicalJsonValue,
    signatures::{Ed25519KeyPair, KeyPair, PublicKeyMap, PublicKeySet},
};
use serde_json::{Value, json};

/// `value` in the spec's canonical JSON.
fn canonical(value: &Value) -> String {
    CanonicalJsonValue::try_from(value.clone()).expect("canonical JSON").to_string()
}

/// An X-Matrix `Authorization` header for a request, signed with `key`, written out from
/// the spec rather than with the server's own code.
fn x_matrix(method: &str, uri: &str, origin: &str, destination: &str, key: &Ed25519KeyPair) -> String {
    x_matrix_of(method, uri, origin, destination, key, None)
}

/// [`x_matrix`] for a request with a body, which the signature covers.
fn x_matrix_of(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    key: &Ed25519KeyPair,
    content: Option<&Value>,
) -> String {
    let mut signed = json!({ "method": method, "uri": uri, "origin": origin, "destination": destination });
    if let Some(content) = content {
        signed["content"] = content.clone();
    }
    let signature = key.sign(canonical(&signed).as_bytes());
    format!(
        "X-Matrix origin=\"{origin}\",destination=\"{destination}\",key=\"ed25519:{}\",sig=\"{}\"",
        key.version(),
        signature.base64()
    )
}

/// The signing key of a server under test, read from its database (as an attacker who
/// stole it, or a test that signs in its name, would have it).
async fn signing_key_of(server: &TestServer) -> Ed25519KeyPair {
    use base64::Engine;
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(&server.database_url()).await.expect("database");
    let (key_id, pkcs8): (String, String) =
        sqlx::query_as("SELECT key_id, pkcs8 FROM server_signing_keys WHERE expired_ts IS NULL")
            .fetch_one(&mut db)
            .await
            .expect("signing key");
    let der = base64::engine::general_purpose::STANDARD.decode(pkcs8).expect("base64");
    Ed25519KeyPair::from_der(&der, key_id.trim_start_matches("ed25519:").to_owned()).expect("key pair")
}

/// A request to `server` signed as `origin` with `key`, and its answer.
async fn signed_call(
    server: &TestServer,
    (origin, key): (&str, &Ed25519KeyPair),
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = x_matrix_of(method, uri, origin, &server.server_name, key, body.as_ref());
    let request =
        reqwest::Client::new().request(method.parse().unwrap(), server.url(uri)).header("Authorization", auth);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json::<Value>().await.unwrap_or_default())
}

async fn set_name(server: &TestServer, user: &TestUser, name: &str) {
    let path = format!("/_matrix/client/v3/profile/{}/displayname", user.user_id);
    let (status, _) = server.call("PUT", &path, Some(&user.access_token), Some(json!({ "displayname": name }))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn servers_publish_signed_keys_over_both_listeners_and_notaries_vouch_for_peers() {
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);

    let (status, document) = police.call("GET", "/_matrix/key/v2/server", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(document["server_name"], "police.test");
    let mut keys = PublicKeySet::new();
    for (id, key) in document["verify_keys"].as_object().expect("verify_keys") {
        keys.insert(id.clone(), ruma::serde::Base64::parse(key["key"].as_str().unwrap()).unwrap());
    }
    let map = PublicKeyMap::from([("police.test".to_owned(), keys)]);
    let object = match CanonicalJsonValue::try_from(document.clone()).unwrap() {
        CanonicalJsonValue::Object(object) => object,
        other => panic!("not an object: {other:?}"),
    };
    ruma::signatures::verify_json(&map, &object).expect("the key document is signed by its key");

    // The TLS listener serves the same routes, with a certificate of the state PKI.
    let url = format!("https://police.test:{}/_matrix/key/v2/server", peers.tls_ports[0]);
    let over_tls: Value = peers.tls_client().get(url).send().await.expect("TLS").json().await.expect("JSON");
    assert_eq!(over_tls["verify_keys"], document["verify_keys"]);

    // Gov, asked as a notary, fetches police's document over TLS and countersigns it.
    let (status, body) =
        gov.call("POST", "/_matrix/key/v2/query", None, Some(json!({ "server_keys": { "police.test": {} } }))).await;
    assert_eq!(status, 200, "{body}");
    let vouched = &body["server_keys"][0];
    assert_eq!(vouched["verify_keys"], document["verify_keys"], "{body}");
    assert!(vouched["signatures"]["police.test"].is_object() && vouched["signatures"]["gov.test"].is_object());
    let (_, again) = gov.call("GET", "/_matrix/key/v2/query/police.test", None, None).await;
    assert_eq!(again["server_keys"][0]["verify_keys"], document["verify_keys"], "served from the store: {again}");
    // Asked for keys by ID: the documents holding them; a key police never had, none.
    let key_id = document["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    let ask = |key: &str| json!({ "server_keys": { "police.test": { key: {} } } });
    let (_, named) = gov.call("POST", "/_matrix/key/v2/query", None, Some(ask(&key_id))).await;
    assert_eq!(named["server_keys"][0]["verify_keys"], document["verify_keys"], "{named}");
    let (status, unknown) = gov.call("POST", "/_matrix/key/v2/query", None, Some(ask("ed25519:never"))).await;
    assert_eq!((status, &unknown["server_keys"]), (200, &json!([])), "{unknown}");
}

#[tokio::test]
async fn signed_requests_cross_servers_and_forged_or_unlisted_ones_are_refused() {
    let deny_gov = |i: usize| match i {
        2 => vec![("MISSIVE_FEDERATION__DENY_LIST".to_owned(), "[\"gov.*\"]".to_owned())],
        _ => Vec::new(),
    };
    let peers = Peers::start(&["police.test", "gov.test", "edu.test"], deny_gov).await;
    let (police, gov, edu) = (&peers.servers[0], &peers.servers[1], &peers.servers[2]);
    let alice = police.register("alice").await;
    set_name(police, &alice, "Alice of the police").await;
    let bob = gov.register("bob").await;
    let carol = edu.register("carol").await;
    set_name(edu, &carol, "Carol of education").await;

    // Bob reads a police agent's profile: gov asks police, signed.
    let (status, body) =
        gov.call("GET", &format!("/_matrix/client/v3/profile/{}", alice.user_id), Some(&bob.access_token), None).await;
    assert_eq!((status, body["displayname"].as_str()), (200, Some("Alice of the police")), "{body}");
    // Education does not federate with gov: its answer is a refusal.
    let (status, body) =
        gov.call("GET", &format!("/_matrix/client/v3/profile/{}", carol.user_id), Some(&bob.access_token), None).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");

    let uri = format!("/_matrix/federation/v1/query/profile?user_id={}", alice.user_id.replace('@', "%40"));
    let ask = |auth: Option<String>, uri: String| {
        let url = police.url(&uri);
        async move {
            let mut request = reqwest::Client::new().get(url);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            let response = request.send().await.expect("request");
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, body) = ask(None, uri.clone()).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "no signature: {body}");

    // A key gov never published, claiming to be gov.
    let forger = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "forged".into()).unwrap();
    let (status, body) = ask(Some(x_matrix("GET", &uri, "gov.test", "police.test", &forger)), uri.clone()).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "forged key: {body}");

    let gov_key = signing_key_of(gov).await;
    let (status, body) = ask(Some(x_matrix("GET", &uri, "gov.test", "elsewhere.test", &gov_key)), uri.clone()).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "another destination: {body}");
    let other_uri = uri.replace("alice", "someone");
    let (status, _) = ask(Some(x_matrix("GET", &other_uri, "gov.test", "police.test", &gov_key)), uri.clone()).await;
    assert_eq!(status, 401, "a signature covers the exact URI");
    let (status, body) = ask(Some(x_matrix("GET", &uri, "gov.test", "police.test", &gov_key)), uri.clone()).await;
    assert_eq!((status, body["displayname"].as_str()), (200, Some("Alice of the police")), "{body}");

    // Signed by gov's real key, education still refuses gov.
    let edu_uri = format!("/_matrix/federation/v1/query/profile?user_id={}", carol.user_id.replace('@', "%40"));
    let response = reqwest::Client::new()
        .get(edu.url(&edu_uri))
        .header("Authorization", x_matrix("GET", &edu_uri, "gov.test", "edu.test", &gov_key))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
}

#[tokio::test]
async fn device_keys_and_one_time_keys_are_queried_and_claimed_across_servers() {
    let deny_gov = |i: usize| match i {
        2 => vec![("MISSIVE_FEDERATION__DENY_LIST".to_owned(), "[\"gov.test\"]".to_owned())],
        _ => Vec::new(),
    };
    let peers = Peers::start(&["police.test", "gov.test", "edu.test"], deny_gov).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let alice = police.register("alice").await;
    let bob = gov.register("bob").await;
    let device_keys = json!({
        "user_id": alice.user_id, "device_id": alice.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{}", alice.device_id): "Y3VydmU", format!("ed25519:{}", alice.device_id): "ZWQyNTUxOQ" },
        "signatures": { alice.user_id.as_str(): { format!("ed25519:{}", alice.device_id): "c2ln" } },
    });
    let one_time = json!({ "signed_curve25519:AAAAAQ": { "key": "b3Rr", "signatures": {} } });
    let (status, body) = police
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&alice.access_token),
            Some(json!({ "device_keys": device_keys, "one_time_keys": one_time })),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Bob's server asks police; education refuses gov and is reported as a failure.
    let query = json!({ "device_keys": { alice.user_id.as_str(): [], "@carol:edu.test": [] } });
    let (status, body) = gov.call("POST", "/_matrix/client/v3/keys/query", Some(&bob.access_token), Some(query)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_keys"][alice.user_id.as_str()][&alice.device_id]["keys"], device_keys["keys"], "{body}");
    assert!(body["failures"]["edu.test"].is_object(), "{body}");

    let claim =
        json!({ "one_time_keys": { alice.user_id.as_str(): { alice.device_id.as_str(): "signed_curve25519" } } });
    let (status, body) =
        gov.call("POST", "/_matrix/client/v3/keys/claim", Some(&bob.access_token), Some(claim.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["one_time_keys"][alice.user_id.as_str()][&alice.device_id]["signed_curve25519:AAAAAQ"]["key"],
        "b3Rr",
        "{body}"
    );
    let (_, again) = gov.call("POST", "/_matrix/client/v3/keys/claim", Some(&bob.access_token), Some(claim)).await;
    assert!(again["one_time_keys"].get(alice.user_id.as_str()).is_none(), "a one-time key is handed out once: {again}");

    // Police lists alice's devices to a signed request of gov.
    let gov_key = signing_key_of(gov).await;
    let uri = format!("/_matrix/federation/v1/user/devices/{}", alice.user_id.replace('@', "%40"));
    let devices: Value = reqwest::Client::new()
        .get(police.url(&uri))
        .header("Authorization", x_matrix("GET", &uri, "gov.test", "police.test", &gov_key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(devices["devices"][0]["device_id"], alice.device_id.as_str(), "{devices}");
    assert_eq!(devices["devices"][0]["keys"]["keys"], device_keys["keys"]);
}

/// The device IDs gov's bob is shown for `user` by `keys/query`, and its `failures`.
async fn devices_seen(gov: &TestServer, bob: &TestUser, user: &str) -> (Vec<String>, Value) {
    let query = json!({ "device_keys": { user: [] } });
    let (status, body) = gov.call("POST", "/_matrix/client/v3/keys/query", Some(&bob.access_token), Some(query)).await;
    assert_eq!(status, 200, "{body}");
    let mut devices: Vec<String> =
        body["device_keys"][user].as_object().map(|d| d.keys().cloned().collect()).unwrap_or_default();
    devices.sort();
    (devices, body["failures"].clone())
}

#[tokio::test]
async fn a_remote_users_devices_are_cached_while_a_room_is_shared_and_follow_their_updates() {
    let mut peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (alice_client, alice) = peers.servers[0].client("alice").await;
    alice_client.sync_once(Default::default()).await.expect("alice's first device uploads its keys");
    // Her devices with keys: the registration's has none.
    let first_id = alice_client.device_id().unwrap().to_string();
    let bob = peers.servers[1].register("bob").await;
    let room_id = peers.servers[1].create_room(&bob.access_token, json!({ "preset": "public_chat" })).await;
    let (status, body) = peers.servers[0]
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{room_id}?server_name=gov.test"),
            Some(&alice.access_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Asked once of police, then kept by gov while the room is shared.
    let gov = &peers.servers[1];
    let (devices, failures) = devices_seen(gov, &bob, &alice.user_id).await;
    assert_eq!(devices, std::slice::from_ref(&first_id), "{failures}");
    assert_eq!(
        gov.query_strings("SELECT user_id FROM remote_device_lists").await,
        std::slice::from_ref(&alice.user_id)
    );

    // A second device: police tells gov, whose clients are told the list changed.
    let second = peers.servers[0].login(&alice).await;
    second.sync_once(Default::default()).await.expect("the second device uploads its keys");
    let second_id = second.device_id().unwrap().to_string();
    let mut expected = vec![first_id, second_id];
    expected.sort();
    common::until("gov learns of alice's second device", async || {
        (devices_seen(gov, &bob, &alice.user_id).await.0 == expected).then_some(())
    })
    .await;

    // Police down: gov still answers for alice's devices, from what it holds.
    peers.servers[0].stop();
    let gov = &peers.servers[1];
    let (devices, failures) = devices_seen(gov, &bob, &alice.user_id).await;
    assert_eq!((devices, failures.as_object().map_or(0, |f| f.len())), (expected.clone(), 0), "{failures}");

    // Once alice has left the only room they shared, gov keeps nothing of her devices.
    peers.servers[0].start_again();
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let (status, _) = police
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&alice.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    wait_for_event(gov, &bob, &room_id, |e| {
        e["state_key"] == alice.user_id.as_str() && e["content"]["membership"] == "leave"
    })
    .await;
    assert!(gov.query_strings("SELECT user_id FROM remote_device_lists").await.is_empty());
}

#[tokio::test]
async fn aliases_and_public_rooms_of_other_servers_are_found() {
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let alice = police.register("alice").await;
    let bob = gov.register("bob").await;
    let room_id = police
        .create_room(
            &alice.access_token,
            json!({ "preset": "public_chat", "visibility": "public", "room_alias_name": "desk", "name": "Front desk" }),
        )
        .await;

    let (status, body) =
        gov.call("GET", "/_matrix/client/v3/directory/room/%23desk:police.test", Some(&bob.access_token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room_id.as_str());
    assert_eq!(body["servers"][0], "police.test");
    let (status, body) = gov
        .call("GET", "/_matrix/client/v3/directory/room/%23nothing:police.test", Some(&bob.access_token), None)
        .await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");

    let (status, body) =
        gov.call("GET", "/_matrix/client/v3/publicRooms?server=police.test", Some(&bob.access_token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["chunk"][0]["room_id"], room_id.as_str(), "{body}");
    let (status, body) = gov
        .call(
            "POST",
            "/_matrix/client/v3/publicRooms?server=police.test",
            Some(&bob.access_token),
            Some(json!({ "filter": { "generic_search_term": "desk" } })),
        )
        .await;
    assert_eq!((status, body["chunk"][0]["name"].as_str()), (200, Some("Front desk")), "{body}");
}

/// Syncs `user` until some event of `room_id`'s `section` (`timeline`, `ephemeral`)
/// satisfies `found`, for at most 15 s, and returns it.
async fn wait_for(
    server: &TestServer,
    user: &TestUser,
    room_id: &str,
    section: &str,
    found: impl Fn(&Value) -> bool,
) -> Value {
    let mut since: Option<String> = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let path = match &since {
            Some(since) => format!("/_matrix/client/v3/sync?timeout=1000&since={since}"),
            None => "/_matrix/client/v3/sync".to_owned(),
        };
        let (status, body) = server.call("GET", &path, Some(&user.access_token), None).await;
        assert_eq!(status, 200, "{body}");
        if let Some(events) = body["rooms"]["join"][room_id][section]["events"].as_array()
            && let Some(event) = events.iter().find(|e| found(e))
        {
            return event.clone();
        }
        since = body["next_batch"].as_str().map(str::to_owned);
    }
    panic!("{} never saw the {section} event in {room_id}; logs:\n{}", user.user_id, server.logs());
}

/// [`wait_for`] in the timeline.
async fn wait_for_event(server: &TestServer, user: &TestUser, room_id: &str, found: impl Fn(&Value) -> bool) -> Value {
    wait_for(server, user, room_id, "timeline", found).await
}

#[tokio::test]
async fn agents_of_two_servers_join_one_room_and_talk_both_ways() {
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let alice = police.register("alice").await;
    let bob = gov.register("bob").await;
    let room_id = police
        .create_room(
            &alice.access_token,
            json!({ "preset": "public_chat", "room_alias_name": "crisis", "name": "Crisis cell" }),
        )
        .await;

    // Bob joins through the alias: gov asks police for the room, then joins through it.
    let (status, body) =
        gov.call("POST", "/_matrix/client/v3/join/%23crisis:police.test", Some(&bob.access_token), None).await;
    assert_eq!((status, body["room_id"].as_str()), (200, Some(room_id.as_str())), "{body}");
    let (status, name) = gov
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name"), Some(&bob.access_token), None)
        .await;
    assert_eq!((status, name["name"].as_str()), (200, Some("Crisis cell")), "gov holds the room's state");
    let (_, members) = police
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/joined_members"), Some(&alice.access_token), None)
        .await;
    assert!(members["joined"].get(&bob.user_id).is_some(), "police admitted bob's join: {members}");

    police
        .send_message(
            &alice.access_token,
            &room_id,
            json!({ "msgtype": "m.text", "body": "Bob, the briefing is at ten" }),
        )
        .await;
    let seen = wait_for_event(gov, &bob, &room_id, |e| e["content"]["body"] == "Bob, the briefing is at ten").await;
    assert_eq!(seen["sender"], alice.user_id.as_str());
    gov.send_message(&bob.access_token, &room_id, json!({ "msgtype": "m.text", "body": "Noted, I will be there" }))
        .await;
    let seen = wait_for_event(police, &alice, &room_id, |e| e["content"]["body"] == "Noted, I will be there").await;
    assert_eq!(seen["sender"], bob.user_id.as_str());

    // Typing and read receipts cross too.
    let typing = format!("/_matrix/client/v3/rooms/{room_id}/typing/{}", bob.user_id);
    let (status, _) =
        gov.call("PUT", &typing, Some(&bob.access_token), Some(json!({ "typing": true, "timeout": 20000 }))).await;
    assert_eq!(status, 200);
    let bob_id = bob.user_id.clone();
    wait_for(police, &alice, &room_id, "ephemeral", |e| {
        e["type"] == "m.typing" && e["content"]["user_ids"].as_array().is_some_and(|u| u.iter().any(|u| *u == *bob_id))
    })
    .await;
    let event_id = seen["event_id"].as_str().unwrap();
    let receipt = format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{event_id}");
    let (status, _) = police.call("POST", &receipt, Some(&alice.access_token), Some(json!({}))).await;
    assert_eq!(status, 200);
    let alice_id = alice.user_id.clone();
    wait_for(gov, &bob, &room_id, "ephemeral", |e| {
        e["type"] == "m.receipt" && e["content"][event_id]["m.read"].get(alice_id.as_str()).is_some()
    })
    .await;

    // Bob takes his message back: police deletes its content too.
    let redact = format!("/_matrix/client/v3/rooms/{room_id}/redact/{event_id}/r1");
    let (status, _) = gov.call("PUT", &redact, Some(&bob.access_token), Some(json!({}))).await;
    assert_eq!(status, 200);
    let at_police = format!("/_matrix/client/v3/rooms/{room_id}/event/{event_id}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (_, event) = police.call("GET", &at_police, Some(&alice.access_token), None).await;
        if event["content"] == json!({}) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "police still holds the redacted content: {event}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Gov reads the room's events and state from police; not those of a room it is not in.
    let gov_key = signing_key_of(gov).await;
    let signed_get = |uri: String| {
        let (url, auth) = (police.url(&uri), x_matrix("GET", &uri, "gov.test", "police.test", &gov_key));
        async move {
            let response = reqwest::Client::new().get(url).header("Authorization", auth).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, body) = signed_get(format!("/_matrix/federation/v1/event/{event_id}")).await;
    assert_eq!((status, body["pdus"][0]["event_id"].as_str().or(Some(event_id))), (200, Some(event_id)), "{body}");
    assert_eq!(body["pdus"][0]["content"], json!({}), "peers get the redacted event: {body}");
    let (status, body) = signed_get(format!("/_matrix/federation/v1/state_ids/{room_id}?event_id={event_id}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["pdu_ids"].as_array().unwrap().len() >= 5 && !body["auth_chain_ids"].as_array().unwrap().is_empty());
    let private_room = police.create_room(&alice.access_token, json!({ "preset": "private_chat" })).await;
    let (_, private_state) = police
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{private_room}/state/m.room.create"),
            Some(&alice.access_token),
            None,
        )
        .await;
    assert!(private_state.is_object());
    let (_, messages) = police
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{private_room}/messages?dir=b&limit=1"),
            Some(&alice.access_token),
            None,
        )
        .await;
    let private_event = messages["chunk"][0]["event_id"].as_str().unwrap();
    let (status, _) = signed_get(format!("/_matrix/federation/v1/event/{private_event}")).await;
    assert_eq!(status, 403, "gov has no user in alice's private room");
}

#[tokio::test]
async fn an_encrypted_room_shared_by_two_servers_decrypts_both_ways() {
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let (alice, alice_user) = police.client("alice").await;
    let (bob, bob_user) = gov.client("bob").await;
    for client in [&alice, &bob] {
        client.sync_once(Default::default()).await.expect("first sync uploads device keys");
    }
    let encryption =
        json!({ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } });
    let room_id = matrix_sdk::ruma::OwnedRoomId::try_from(
        police
            .create_room(
                &alice_user.access_token,
                json!({ "preset": "public_chat", "room_alias_name": "cell", "initial_state": [encryption] }),
            )
            .await,
    )
    .unwrap();
    let alias = matrix_sdk::ruma::OwnedRoomOrAliasId::try_from("#cell:police.test").unwrap();
    bob.join_room_by_id_or_alias(&alias, &[]).await.expect("bob joins through gov");
    for client in [&alice, &bob] {
        client.sync_once(Default::default()).await.unwrap();
    }

    // Keys are queried and claimed across servers, the room key travels to-device from
    // police to gov, and the ciphertext through the room.
    let alice_room = alice.get_room(&room_id).expect("alice's room");
    assert!(alice_room.latest_encryption_state().await.unwrap().is_encrypted());
    alice_room.send(RoomMessageEventContent::text_plain("Rendez-vous à 10h")).await.expect("send");
    common::receive_text(&bob, &room_id, "Rendez-vous à 10h").await;
    let bob_room = bob.get_room(&room_id).expect("bob's room");
    bob_room.send(RoomMessageEventContent::text_plain("Bien reçu")).await.expect("reply");
    common::receive_text(&alice, &room_id, "Bien reçu").await;

    // Bob signs in on a second device: police hears of it, and alice's sync says so.
    let (_, first) = police.call("GET", "/_matrix/client/v3/sync", Some(&alice_user.access_token), None).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let _second_device = gov.login(&bob_user).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let path = format!("/_matrix/client/v3/sync?timeout=1000&since={since}");
        let (_, sync) = police.call("GET", &path, Some(&alice_user.access_token), None).await;
        if sync["device_lists"]["changed"].as_array().is_some_and(|c| c.iter().any(|u| u == bob_user.user_id.as_str()))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "alice never heard of bob's new device");
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
}

#[tokio::test]
async fn nothing_queued_for_a_stopped_server_is_lost_even_when_the_sender_is_killed() {
    let mut peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let alice = peers.servers[0].register("alice").await;
    let bob = peers.servers[1].register("bob").await;
    let room_id = peers.servers[0]
        .create_room(&alice.access_token, json!({ "preset": "public_chat", "room_alias_name": "ops" }))
        .await;
    let (status, _) = peers.servers[1]
        .call("POST", "/_matrix/client/v3/join/%23ops:police.test", Some(&bob.access_token), None)
        .await;
    assert_eq!(status, 200);

    // Gov goes down; police queues 100 messages and a topic change, then is killed.
    peers.servers[1].stop();
    for n in 0..100 {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/m{n}");
        let body = json!({ "msgtype": "m.text", "body": format!("update {n}") });
        let (status, _) = peers.servers[0].call("PUT", &path, Some(&alice.access_token), Some(body)).await;
        assert_eq!(status, 200);
    }
    let topic = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic");
    let (status, _) = peers.servers[0]
        .call("PUT", &topic, Some(&alice.access_token), Some(json!({ "topic": "Flood response" })))
        .await;
    assert_eq!(status, 200);
    // The operator sees gov failing, and what waits for it (Synapse's admin API).
    let admin = common::register_admin(&peers.servers[0], "operator").await;
    let path = "/_synapse/admin/v1/federation/destinations/gov.test";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, gov_state) = peers.servers[0].call("GET", path, Some(&admin), None).await;
        assert_eq!(status, 200, "{gov_state}");
        if gov_state["failure_ts"].is_i64() && gov_state["queued_pdus"].as_i64() >= Some(100) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{gov_state}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, _) = peers.servers[0].call("GET", path, Some(&alice.access_token), None).await;
    assert_eq!(status, 403, "only admins see destinations");
    // The same through `missive admin federation`.
    let mut command = common::missive_command();
    let output = command
        .args(["admin", "--url", &peers.servers[0].base_url, "--token", &admin, "federation"])
        .output()
        .expect("missive admin");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && printed.contains("gov.test"), "{printed}");
    peers.servers[0].kill9();
    peers.servers[1].start_again();
    peers.servers[0].start_again();

    // Police resumes its queue at start: gov gets every message, in order, and the topic.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let gov = &peers.servers[1];
        let (_, state) = gov.call("GET", &topic, Some(&bob.access_token), None).await;
        let path = format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=200");
        let (_, messages) = gov.call("GET", &path, Some(&bob.access_token), None).await;
        let bodies: Vec<&str> = messages["chunk"]
            .as_array()
            .map(|c| c.iter().filter_map(|e| e["content"]["body"].as_str()).collect())
            .unwrap_or_default();
        if state["topic"] == "Flood response" && bodies.len() == 100 {
            let expected: Vec<String> = (0..100).rev().map(|n| format!("update {n}")).collect();
            assert_eq!(bodies, expected, "every message once, in order");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gov has {} messages; logs:\n{}",
            bodies.len(),
            peers.servers[0].logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A PDU of the room in `room_id` (room version 12), built and signed as `origin` with
/// `key`, on top of `prev`, authorised by `auth`.
fn pdu(
    key: &Ed25519KeyPair,
    origin: &str,
    room_id: &str,
    (kind, state_key, sender): (&str, Option<&str>, &str),
    content: Value,
    prev: &str,
    auth: &[String],
) -> (String, ruma::CanonicalJsonObject) {
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    let mut event = json!({
        "room_id": room_id, "sender": sender, "type": kind, "content": content,
        "origin_server_ts": now_ms(), "depth": 1000, "prev_events": [prev], "auth_events": auth,
    });
    if let Some(state_key) = state_key {
        event["state_key"] = json!(state_key);
    }
    let mut object = match CanonicalJsonValue::try_from(event).unwrap() {
        CanonicalJsonValue::Object(object) => object,
        _ => unreachable!(),
    };
    ruma::signatures::hash_and_sign_event(origin, key, &mut object, &rules.redaction).unwrap();
    let id = format!("${}", ruma::signatures::reference_hash(&object, &rules).unwrap());
    (id, object)
}

#[tokio::test]
async fn events_beyond_a_gap_too_wide_to_pull_are_judged_by_the_state_their_origin_gives() {
    let mut peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let alice = peers.servers[0].register("alice").await;
    let bob = peers.servers[1].register("bob").await;
    let body = json!({ "preset": "public_chat", "topic": "Before", "power_level_content_override": {
        "users": { bob.user_id.clone(): 100 } } });
    let room_id = peers.servers[0].create_room(&alice.access_token, body).await;
    let (status, body) = peers.servers[1]
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{room_id}?server_name=police.test"),
            Some(&bob.access_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for_event(&peers.servers[0], &alice, &room_id, |e| e["state_key"] == bob.user_id.as_str()).await;

    // Gov cannot reach police: bob changes the topic, then writes 30 messages police
    // does not get.
    peers.servers[1].set_env("MISSIVE_FEDERATION__DESTINATIONS", "{ \"police.test\" = \"127.0.0.1:1\" }");
    peers.servers[1].restart();
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    gov.put_state(&bob.access_token, &room_id, "m.room.topic", json!({ "topic": "After" })).await;
    let mut last = String::new();
    for i in 0..30 {
        last = gov
            .send_message(&bob.access_token, &room_id, json!({ "msgtype": "m.text", "body": format!("m{i}") }))
            .await;
    }
    // Then police gets the last one alone (as a server catching up sends the newest): it
    // pulls 20 with get_missing_events, and the state beyond them from gov.
    let police_key = signing_key_of(police).await;
    let (status, answer) =
        signed_call(gov, ("police.test", &police_key), "GET", &format!("/_matrix/federation/v1/event/{last}"), None)
            .await;
    assert_eq!(status, 200, "{answer}");
    let gov_key = signing_key_of(gov).await;
    let uri = "/_matrix/federation/v1/send/catch-up-1";
    let txn = json!({ "origin": "gov.test", "origin_server_ts": 1, "pdus": answer["pdus"], "edus": [] });
    let (status, result) = signed_call(police, ("gov.test", &gov_key), "PUT", uri, Some(txn)).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["pdus"][last.as_str()], json!({}), "{result}");
    let seen = wait_for_event(police, &alice, &room_id, |e| e["content"]["body"] == "m29").await;
    assert_eq!(seen["sender"], bob.user_id.as_str());
    // The topic came with the state beyond the gap (the pulled events alone lack it).
    let (_, topic) = police
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic"), Some(&alice.access_token), None)
        .await;
    assert_eq!(topic["topic"], "After", "police's topic: {topic}");
}

#[tokio::test]
async fn an_erased_users_messages_leave_for_other_servers_pruned() {
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let alice = police.register("alice").await;
    let dan = police.register("dan").await;
    let bob = gov.register("bob").await;
    let room_id = police.create_room(&alice.access_token, json!({ "preset": "public_chat" })).await;
    for (server, user) in [(police, &dan), (gov, &bob)] {
        let path = format!("/_matrix/client/v3/join/{room_id}?server_name=police.test");
        let (status, body) = server.call("POST", &path, Some(&user.access_token), None).await;
        assert_eq!(status, 200, "{body}");
    }
    let said =
        police.send_message(&alice.access_token, &room_id, json!({ "msgtype": "m.text", "body": "my words" })).await;
    let gov_key = signing_key_of(gov).await;
    let as_gov = ("gov.test", &gov_key);
    let fetch = format!("/_matrix/federation/v1/event/{said}");
    let (status, answer) = signed_call(police, as_gov, "GET", &fetch, None).await;
    assert_eq!((status, &answer["pdus"][0]["content"]["body"]), (200, &json!("my words")), "{answer}");

    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" },
                       "password": alice.password });
    let body = json!({ "auth": auth, "erase": true });
    let (status, body) =
        police.call("POST", "/_matrix/client/v3/account/deactivate", Some(&alice.access_token), Some(body)).await;
    assert_eq!(status, 200, "{body}");
    // The event, as `/event` and `/backfill` serve it, has lost its content.
    let (status, answer) = signed_call(police, as_gov, "GET", &fetch, None).await;
    assert_eq!((status, &answer["pdus"][0]["content"]), (200, &json!({})), "{answer}");
    let backfill = format!("/_matrix/federation/v1/backfill/{room_id}?v={said}&limit=1");
    let (status, answer) = signed_call(police, as_gov, "GET", &backfill, None).await;
    assert_eq!((status, &answer["pdus"][0]["content"]), (200, &json!({})), "{answer}");
}

#[tokio::test]
async fn a_hostile_peer_gets_each_pdu_and_edu_refused_and_nothing_is_stored() {
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let alice = police.register("alice").await;
    let bob = gov.register("bob").await;
    let room_id =
        police.create_room(&alice.access_token, json!({ "preset": "public_chat", "room_alias_name": "front" })).await;
    let (status, _) =
        gov.call("POST", "/_matrix/client/v3/join/%23front:police.test", Some(&bob.access_token), None).await;
    assert_eq!(status, 200);
    let (_, state) =
        police.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/state"), Some(&alice.access_token), None).await;
    let id_of = |kind: &str, key: &str| {
        state.as_array().unwrap().iter().find(|e| e["type"] == kind && e["state_key"] == key).unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let auth = vec![id_of("m.room.power_levels", ""), id_of("m.room.member", &bob.user_id)];
    let prev = id_of("m.room.member", &bob.user_id);
    let gov_key = signing_key_of(gov).await;
    let send = |txn: &str, pdus: Vec<Value>, edus: Vec<Value>| {
        let uri = format!("/_matrix/federation/v1/send/{txn}");
        let body = json!({ "origin": "gov.test", "origin_server_ts": 1, "pdus": pdus, "edus": edus });
        let auth = x_matrix_of("PUT", &uri, "gov.test", "police.test", &gov_key, Some(&body));
        let url = police.url(&uri);
        async move {
            let response =
                reqwest::Client::new().put(url).header("Authorization", auth).json(&body).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or_default())
        }
    };
    let message = |text: &str| json!({ "msgtype": "m.text", "body": text });
    let stored = |event_id: String| {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{event_id}");
        let token = alice.access_token.clone();
        async move { police.call("GET", &path, Some(&token), None).await }
    };

    // A well-formed message from bob is admitted: the rig itself is sound.
    let (good, object) =
        pdu(&gov_key, "gov.test", &room_id, ("m.room.message", None, &bob.user_id), message("hello"), &prev, &auth);
    let (status, body) = send("t1", vec![json!(object)], vec![]).await;
    assert_eq!((status, &body["pdus"][&good]), (200, &json!({})), "{body}");
    assert_eq!(stored(good.clone()).await.0, 200);

    // A forged signature (a key gov never published).
    let forger = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), gov_key.version().to_owned()).unwrap();
    let (forged, object) =
        pdu(&forger, "gov.test", &room_id, ("m.room.message", None, &bob.user_id), message("forged"), &good, &auth);
    // An event the auth rules refuse: bob may not change the power levels.
    let (unauthorised, power) = pdu(
        &gov_key,
        "gov.test",
        &room_id,
        ("m.room.power_levels", Some(""), &bob.user_id),
        json!({ "users": { bob.user_id.as_str(): 100 } }),
        &good,
        &auth,
    );
    // A sender of another server, signed by gov only.
    let (spoofed, spoof) = pdu(
        &gov_key,
        "gov.test",
        &room_id,
        ("m.room.message", None, &alice.user_id),
        message("I resign"),
        &good,
        &auth,
    );
    let (status, body) = send("t2", vec![json!(object), json!(power), json!(spoof)], vec![]).await;
    assert_eq!(status, 200, "{body}");
    // What fails its checks is reported; what the auth rules reject is handled (rejected),
    // as Synapse answers.
    assert_eq!(body["pdus"][&unauthorised], json!({}), "{body}");
    for (name, id) in [("forged", &forged), ("unauthorised", &unauthorised), ("spoofed", &spoofed)] {
        if name != "unauthorised" {
            assert!(body["pdus"][id]["error"].is_string() || body["pdus"].get(id).is_none(), "{name}: {body}");
        }
        assert_eq!(stored(id.clone()).await.0, 404, "{name} is not stored");
    }

    // A redaction aimed at an event of another room (one gov is not even in).
    let elsewhere = police.create_room(&alice.access_token, json!({ "preset": "private_chat" })).await;
    let target = police.send_message(&alice.access_token, &elsewhere, message("not yours")).await;
    let (cross, object) = pdu(
        &gov_key,
        "gov.test",
        &room_id,
        ("m.room.redaction", None, &bob.user_id),
        json!({ "redacts": target }),
        &good,
        &auth,
    );
    let (status, body) = send("t2b", vec![json!(object)], vec![]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stored(cross).await.0, 404, "a redaction of another room's event is not stored");
    let path = format!("/_matrix/client/v3/rooms/{elsewhere}/event/{target}");
    let (_, event) = police.call("GET", &path, Some(&alice.access_token), None).await;
    assert_eq!(event["content"]["body"], "not yours", "{event}");

    // A tampered content keeps only the redacted event.
    let (tampered, mut object) =
        pdu(&gov_key, "gov.test", &room_id, ("m.room.message", None, &bob.user_id), message("original"), &good, &auth);
    object.insert("content".into(), CanonicalJsonValue::try_from(message("tampered")).unwrap());
    let (status, body) = send("t3", vec![json!(object)], vec![]).await;
    assert_eq!(status, 200, "{body}");
    let (status, event) = stored(tampered).await;
    assert_eq!((status, &event["content"]), (200, &json!({})), "{event}");

    // An EDU about a user of another server changes nothing; oversized transactions are refused.
    let typing =
        json!({ "edu_type": "m.typing", "content": { "room_id": room_id, "user_id": alice.user_id, "typing": true } });
    let (status, _) = send("t4", vec![], vec![typing]).await;
    assert_eq!(status, 200);
    let (_, sync) = police.call("GET", "/_matrix/client/v3/sync", Some(&alice.access_token), None).await;
    let ephemeral = sync["rooms"]["join"][&room_id]["ephemeral"]["events"].to_string();
    assert!(!ephemeral.contains("m.typing") || !ephemeral.contains(alice.user_id.as_str()), "{ephemeral}");
    let (status, body) = send("t5", vec![json!({}); 51], vec![]).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");

    // Once the room's ACL denies gov, its PDUs are refused.
    let acl = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.server_acl");
    let (status, _) = police
        .call("PUT", &acl, Some(&alice.access_token), Some(json!({ "allow": ["*"], "deny": ["gov.test"] })))
        .await;
    assert_eq!(status, 200);
    let (denied, object) = pdu(
        &gov_key,
        "gov.test",
        &room_id,
        ("m.room.message", None, &bob.user_id),
        message("still here"),
        &good,
        &auth,
    );
    let (status, body) = send("t6", vec![json!(object)], vec![]).await;
    assert_eq!(status, 200);
    assert!(body["pdus"][&denied]["error"].is_string(), "the denied server is told: {body}");
    assert_eq!(stored(denied).await.0, 404, "an ACL-denied server's event is not stored");
}

#[tokio::test]
async fn an_encrypted_direct_chat_invites_across_servers_and_decrypts_both_ways() {
    use matrix_sdk::ruma::{
        UserId,
        api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset},
        events::room::message::RoomMessageEventContent,
    };
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let (alice, _) = police.client("alice").await;
    let (bob, bob_user) = gov.client("bob").await;
    for client in [&alice, &bob] {
        client.sync_once(Default::default()).await.expect("first sync uploads device keys");
    }
    let mut request = CreateRoom::new();
    request.is_direct = true;
    request.preset = Some(RoomPreset::TrustedPrivateChat);
    request.invite = vec![UserId::parse(&bob_user.user_id).unwrap()];
    let room = alice.create_room(request).await.expect("create the direct chat");
    let room_id = room.room_id().to_owned();

    // The invite reaches bob's server, countersigned, and shows in his sync with the room's
    // description; he joins through the inviting server.
    common::sync_until(&bob, (), |_, r| r.rooms.invited.contains_key(&room_id)).await;
    let (_, sync) = gov.call("GET", "/_matrix/client/v3/sync", Some(&bob_user.access_token), None).await;
    let invite_state = sync["rooms"]["invite"][room_id.as_str()]["invite_state"]["events"].to_string();
    assert!(invite_state.contains("m.room.create") && invite_state.contains("m.room.encryption"), "{invite_state}");
    bob.join_room_by_id(&room_id).await.expect("bob accepts");
    for client in [&alice, &bob] {
        client.sync_once(Default::default()).await.unwrap();
    }
    room.send(RoomMessageEventContent::text_plain("Bonjour Bob")).await.expect("send");
    common::receive_text(&bob, &room_id, "Bonjour Bob").await;
    bob.get_room(&room_id).unwrap().send(RoomMessageEventContent::text_plain("Bonjour Alice")).await.expect("reply");
    common::receive_text(&alice, &room_id, "Bonjour Alice").await;

    // An invite to a room of another server can be declined; the inviting server hears of it.
    let carol = peers_token(police, "carol").await;
    let declined = police.create_room(&carol, json!({ "invite": [bob_user.user_id] })).await;
    let (status, _) = gov
        .call("POST", &format!("/_matrix/client/v3/rooms/{declined}/leave"), Some(&bob_user.access_token), None)
        .await;
    assert_eq!(status, 200);
    let (_, sync) = gov.call("GET", "/_matrix/client/v3/sync", Some(&bob_user.access_token), None).await;
    assert!(sync["rooms"]["invite"].get(&declined).is_none(), "{sync}");
    let (_, sync) = gov
        .call(
            "GET",
            "/_matrix/client/v3/sync?filter={\"room\":{\"include_leave\":true}}",
            Some(&bob_user.access_token),
            None,
        )
        .await;
    assert!(sync["rooms"]["leave"].get(&declined).is_some(), "the declined room is left: {sync}");
    let member = format!("/_matrix/client/v3/rooms/{declined}/state/m.room.member/{}", bob_user.user_id);
    let (status, body) = police.call("GET", &member, Some(&carol), None).await;
    assert_eq!((status, body["membership"].as_str()), (200, Some("leave")), "{body}");
}

/// Registers a user and returns their access token.
async fn peers_token(server: &TestServer, localpart: &str) -> String {
    server.register(localpart).await.access_token
}

#[tokio::test]
async fn three_sector_servers_share_an_encrypted_room_and_each_reads_the_others() {
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
    let peers = Peers::start(&["police.test", "gov.test", "edu.test"], |_| Vec::new()).await;
    let mut clients = Vec::new();
    for (server, name) in peers.servers.iter().zip(["alice", "bob", "carol"]) {
        let (client, user) = server.client(name).await;
        client.sync_once(Default::default()).await.expect("first sync uploads device keys");
        clients.push((client, user));
    }
    let encryption =
        json!({ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } });
    let room_id = matrix_sdk::ruma::OwnedRoomId::try_from(
        peers.servers[0]
            .create_room(
                &clients[0].1.access_token,
                json!({ "preset": "public_chat", "room_alias_name": "joint", "initial_state": [encryption] }),
            )
            .await,
    )
    .unwrap();
    let alias = matrix_sdk::ruma::OwnedRoomOrAliasId::try_from("#joint:police.test").unwrap();
    for (client, _) in &clients[1..] {
        client.join_room_by_id_or_alias(&alias, &[]).await.expect("join through police");
    }
    // Every agent's client knows the three members before anyone encrypts to them.
    for (i, (_, user)) in clients.iter().enumerate() {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/joined_members");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let (_, members) = peers.servers[i].call("GET", &path, Some(&user.access_token), None).await;
            if members["joined"].as_object().is_some_and(|m| m.len() == 3) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{} sees {members}", user.user_id);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    for (client, _) in &clients {
        client.sync_once(Default::default()).await.unwrap();
    }
    // Each agent speaks; the two others decrypt.
    for (i, (speaker, _)) in clients.iter().enumerate() {
        let text = format!("Report from sector {i}");
        speaker.get_room(&room_id).expect("room").send(RoomMessageEventContent::text_plain(&text)).await.expect("send");
        for (j, (listener, _)) in clients.iter().enumerate() {
            if i != j {
                common::receive_text(listener, &room_id, &text).await;
            }
        }
    }
}

#[tokio::test]
async fn servers_cut_from_each_other_converge_on_the_state_resolution_gives() {
    let mut peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let alice = peers.servers[0].register("alice").await;
    let bob = peers.servers[1].register("bob").await;
    let room_id = peers.servers[0]
        .create_room(
            &alice.access_token,
            json!({
                "preset": "public_chat",
                "room_alias_name": "crise",
                "topic": "Initial",
                "power_level_content_override": { "users": { bob.user_id.clone(): 100 } },
            }),
        )
        .await;
    let (status, body) = peers.servers[1]
        .call("POST", "/_matrix/client/v3/join/%23crise:police.test", Some(&bob.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{body}");
    let before_cut = common::until("both servers agree before the cut", async || {
        let here = common::state_map(&peers.servers[0], &alice.access_token, &room_id).await;
        let there = common::state_map(&peers.servers[1], &bob.access_token, &room_id).await;
        (here == there && here.contains_key(&("m.room.member".into(), bob.user_id.clone()))).then_some(here)
    })
    .await;

    // Cut: each server finds the other at a closed port.
    let cut = "{ \"police.test\" = \"127.0.0.1:1\", \"gov.test\" = \"127.0.0.1:1\" }";
    let joined = format!(
        "{{ \"police.test\" = \"127.0.0.1:{}\", \"gov.test\" = \"127.0.0.1:{}\" }}",
        peers.tls_ports[0], peers.tls_ports[1]
    );
    for server in &mut peers.servers {
        server.set_env("MISSIVE_FEDERATION__DESTINATIONS", cut);
        server.restart();
    }
    // Alice (the creator) demotes bob first; then bob, still an admin on his side, closes
    // the room and changes its topic.
    let mut levels = peers.servers[0]
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels/"),
            Some(&alice.access_token),
            None,
        )
        .await
        .1;
    levels["users"][&bob.user_id] = json!(0);
    let put = |kind: &str| format!("/_matrix/client/v3/rooms/{room_id}/state/{kind}/");
    let (status, body) =
        peers.servers[0].call("PUT", &put("m.room.power_levels"), Some(&alice.access_token), Some(levels)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (status, body) = peers.servers[1]
        .call("PUT", &put("m.room.join_rules"), Some(&bob.access_token), Some(json!({ "join_rule": "invite" })))
        .await;
    assert_eq!(status, 200, "{body}");
    let closed = body["event_id"].as_str().unwrap().to_owned();
    let (status, _) = peers.servers[1]
        .call("PUT", &put("m.room.topic"), Some(&bob.access_token), Some(json!({ "topic": "Branch" })))
        .await;
    assert_eq!(status, 200);
    let (_, rule) = peers.servers[1].call("GET", &put("m.room.join_rules"), Some(&bob.access_token), None).await;
    assert_eq!(rule["join_rule"], "invite", "gov applied bob's change while cut off");

    // Reconnected, both resolve the two branches: alice's demotion sorts first (a creator
    // outranks an admin), so bob's changes fail the rules in the resolved order.
    for server in &mut peers.servers {
        server.set_env("MISSIVE_FEDERATION__DESTINATIONS", &joined);
        server.restart();
    }
    let content =
        async |server: &TestServer, token: &str, kind: &str| server.call("GET", &put(kind), Some(token), None).await.1;
    let agreed = common::until("both servers converge", async || {
        let here = common::state_map(&peers.servers[0], &alice.access_token, &room_id).await;
        let there = common::state_map(&peers.servers[1], &bob.access_token, &room_id).await;
        (here == there && here != before_cut).then_some(here)
    })
    .await;
    for (server, token) in [(&peers.servers[0], &alice.access_token), (&peers.servers[1], &bob.access_token)] {
        assert_eq!(content(server, token, "m.room.join_rules").await["join_rule"], "public", "{agreed:?}");
        assert_eq!(content(server, token, "m.room.topic").await["topic"], "Initial");
        assert_eq!(content(server, token, "m.room.power_levels").await["users"][&bob.user_id], 0);
    }
    // Police never put bob's soft-failed change in its timeline.
    let (_, page) = peers.servers[0]
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100"),
            Some(&alice.access_token),
            None,
        )
        .await;
    let timeline = page["chunk"].as_array().unwrap();
    assert!(!timeline.is_empty() && timeline.iter().all(|e| e["event_id"] != closed.as_str()), "{page}");

    // The branches are merged: bob's next message builds on both and reaches alice.
    let (status, body) = peers.servers[1]
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/after"),
            Some(&bob.access_token),
            Some(json!({ "msgtype": "m.text", "body": "Reconnecté" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let message = body["event_id"].as_str().unwrap().to_owned();
    common::until("alice receives bob's message", async || {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{message}");
        (peers.servers[0].call("GET", &path, Some(&alice.access_token), None).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_late_joiner_on_another_server_backfills_the_history_it_may_see() {
    let peers = Peers::start(&["police.test", "gov.test", "edu.test"], |_| Vec::new()).await;
    let (police, gov, edu) = (&peers.servers[0], &peers.servers[1], &peers.servers[2]);
    let alice = police.register("alice").await;
    let bob = gov.register("bob").await;
    let carol = edu.register("carol").await;
    let create = |alias: &str, visibility: &str| {
        json!({
            "preset": "public_chat",
            "room_alias_name": alias,
            "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": visibility } }],
        })
    };
    let send = async |server: &TestServer, user: &TestUser, room_id: &str, body: &str| {
        server.send_message(&user.access_token, room_id, json!({ "msgtype": "m.text", "body": body })).await
    };
    let seen_by = async |server: &TestServer, user: &TestUser, room_id: &str, event_id: &str| {
        common::until("the event crosses", async || {
            let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{event_id}");
            (server.call("GET", &path, Some(&user.access_token), None).await.0 == 200).then_some(())
        })
        .await
    };
    let messages = async |room_id: &str, from: Option<&str>| {
        let from = from.map(|f| format!("&from={f}")).unwrap_or_default();
        let path = format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100{from}");
        let (status, page) = edu.call("GET", &path, Some(&carol.access_token), None).await;
        assert_eq!(status, 200, "{page}");
        page
    };

    // A room whose history is shared with members: alice and bob talk, carol joins later.
    let shared = police.create_room(&alice.access_token, create("archive", "shared")).await;
    let (status, _) = gov
        .call("POST", "/_matrix/client/v3/join/%23archive:police.test", Some(&bob.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let mut said = Vec::new();
    let mut ids = Vec::new();
    for i in 0..6 {
        let (server, user, peer, reader) =
            if i % 2 == 0 { (police, &alice, gov, &bob) } else { (gov, &bob, police, &alice) };
        let text = format!("message {i}");
        let event_id = send(server, user, &shared, &text).await;
        seen_by(peer, reader, &shared, &event_id).await;
        said.push(text);
        ids.push(event_id);
    }
    let (status, body) = edu
        .call("POST", "/_matrix/client/v3/join/%23archive:police.test", Some(&carol.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{body}");

    // Jumping to a date before she joined: her server holds nothing that old yet and asks.
    let (_, second) = police
        .call("GET", &format!("/_matrix/client/v3/rooms/{shared}/event/{}", ids[2]), Some(&alice.access_token), None)
        .await;
    let ts = second["origin_server_ts"].as_i64().unwrap();
    let path = format!("/_matrix/client/v1/rooms/{shared}/timestamp_to_event?ts={ts}&dir=b");
    let (status, found) = edu.call("GET", &path, Some(&carol.access_token), None).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["event_id"], ids[2].as_str(), "{found}");
    assert_eq!(found["origin_server_ts"], ts);
    let path = format!("/_matrix/client/v1/rooms/{shared}/timestamp_to_event?ts={}&dir=f", ts + 1);
    let (_, next) = police.call("GET", &path, Some(&alice.access_token), None).await;
    assert_eq!(next["event_id"], ids[3].as_str(), "{next}");

    let page = messages(&shared, None).await;
    let chunk = page["chunk"].as_array().unwrap();
    let bodies: Vec<&str> = chunk.iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    let mut expected: Vec<&str> = said.iter().map(String::as_str).collect();
    expected.reverse();
    assert_eq!(bodies, expected, "carol reads the history, newest first: {page}");
    assert_eq!(chunk.first().unwrap()["type"], "m.room.member", "her join comes first");
    assert_eq!(chunk.last().unwrap()["type"], "m.room.create", "back to the room's creation: {page}");
    if let Some(end) = page["end"].as_str() {
        assert_eq!(messages(&shared, Some(end)).await["chunk"], json!([]), "nothing before the creation");
    }
    // Asked again, the history is served from here.
    let ids =
        |page: &Value| page["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&messages(&shared, None).await), ids(&page));

    // A room whose history is for those who were joined: carol's server holds it, but she
    // sees nothing from before she joined.
    let closed = police.create_room(&alice.access_token, create("cercle", "joined")).await;
    send(police, &alice, &closed, "avant").await;
    let (status, _) = edu
        .call("POST", "/_matrix/client/v3/join/%23cercle:police.test", Some(&carol.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let after = send(police, &alice, &closed, "après").await;
    seen_by(edu, &carol, &closed, &after).await;
    let page = messages(&closed, None).await;
    let bodies: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["après"], "{page}");
}

#[tokio::test]
async fn a_space_lists_its_rooms_on_other_servers_that_its_members_may_see() {
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let alice = police.register("alice").await;
    let bob = gov.register("bob").await;
    let space = gov
        .create_room(
            &bob.access_token,
            json!({ "preset": "public_chat", "name": "Ministère", "creation_content": { "type": "m.space" } }),
        )
        .await;
    let gov_room = gov.create_room(&bob.access_token, json!({ "preset": "public_chat", "name": "Cabinet" })).await;
    let police_room =
        police.create_room(&alice.access_token, json!({ "preset": "public_chat", "name": "Police" })).await;
    let secret = police.create_room(&alice.access_token, json!({ "preset": "private_chat", "name": "Secret" })).await;
    for (child, server, extra) in [
        (gov_room.as_str(), "gov.test", json!({ "suggested": true })),
        (police_room.as_str(), "police.test", json!({ "order": "a" })),
        (&secret, "police.test", json!({})),
    ] {
        let mut content = json!({ "via": [server] });
        content.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let path = format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}");
        let (status, body) = gov.call("PUT", &path, Some(&bob.access_token), Some(content)).await;
        assert_eq!(status, 200, "{body}");
    }
    let hierarchy = async |query: &str| {
        let path = format!("/_matrix/client/v1/rooms/{space}/hierarchy{query}");
        let (status, body) = gov.call("GET", &path, Some(&bob.access_token), None).await;
        assert_eq!(status, 200, "{body}");
        body
    };
    let ids = |body: &Value| {
        body["rooms"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };

    // The room of police is described by police; its private room is not shown to gov.
    let all = hierarchy("").await;
    assert_eq!(ids(&all), [space.as_str(), police_room.as_str(), gov_room.as_str()], "{all}");
    let rooms = all["rooms"].as_array().unwrap();
    assert_eq!(rooms[0]["room_type"], "m.space");
    assert_eq!(rooms[0]["children_state"].as_array().unwrap().len(), 3);
    assert_eq!(rooms[1]["name"], "Police");
    assert_eq!(rooms[1]["num_joined_members"], 1);
    assert_eq!(rooms[1]["join_rule"], "public");
    assert_eq!(ids(&hierarchy("?suggested_only=true").await), [space.as_str(), gov_room.as_str()]);
    assert_eq!(ids(&hierarchy("?max_depth=0").await), [space.as_str()]);
    let first = hierarchy("?limit=2").await;
    assert_eq!(ids(&first), [space.as_str(), police_room.as_str()]);
    let next = first["next_batch"].as_str().expect("a next page");
    let second = hierarchy(&format!("?limit=2&from={next}")).await;
    assert_eq!(ids(&second), [gov_room.as_str()]);
    assert!(second.get("next_batch").is_none(), "{second}");
}

#[tokio::test]
async fn a_user_of_another_server_knocks_and_is_let_in() {
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let alice = police.register("alice").await;
    let bob = gov.register("bob").await;
    let room_id = police.create_room(&alice.access_token, json!({
                "preset": "private_chat",
                "name": "Salle fermée",
                "room_alias_name": "fermee",
                "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
            })).await;

    // Joining is refused; knocking (through the alias's server) is taken.
    let (status, _) = gov
        .call("POST", "/_matrix/client/v3/join/%23fermee:police.test", Some(&bob.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 403);
    let (status, body) = gov
        .call(
            "POST",
            "/_matrix/client/v3/knock/%23fermee:police.test",
            Some(&bob.access_token),
            Some(json!({ "reason": "Je remplace Paul" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room_id.as_str());

    // Bob's sync shows the knock with the room's description; alice sees the knock.
    let (_, sync) = gov.call("GET", "/_matrix/client/v3/sync", Some(&bob.access_token), None).await;
    let described = sync["rooms"]["knock"][&room_id]["knock_state"]["events"].as_array().cloned().unwrap_or_default();
    assert!(described.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Salle fermée"), "{sync}");
    let member = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{}", bob.user_id);
    let (status, knock) = police.call("GET", &member, Some(&alice.access_token), None).await;
    assert_eq!(status, 200, "{knock}");
    assert_eq!(knock["membership"], "knock");
    assert_eq!(knock["reason"], "Je remplace Paul");

    // He withdraws the knock (police is told), then knocks again.
    let (status, body) = gov
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&bob.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, withdrawn) = police.call("GET", &member, Some(&alice.access_token), None).await;
    assert_eq!(withdrawn["membership"], "leave", "{withdrawn}");
    let (status, body) = gov
        .call("POST", "/_matrix/client/v3/knock/%23fermee:police.test", Some(&bob.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, knock) = police.call("GET", &member, Some(&alice.access_token), None).await;
    assert_eq!(knock["membership"], "knock");

    // Alice lets him in: the invite crosses, and bob joins.
    let path = format!("/_matrix/client/v3/rooms/{room_id}/invite");
    let (status, body) =
        police.call("POST", &path, Some(&alice.access_token), Some(json!({ "user_id": bob.user_id }))).await;
    assert_eq!(status, 200, "{body}");
    common::until("bob is invited", async || {
        let (_, sync) = gov.call("GET", "/_matrix/client/v3/sync", Some(&bob.access_token), None).await;
        sync["rooms"]["invite"].get(&room_id).map(|_| ())
    })
    .await;
    let (status, body) = gov
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&bob.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, joined) = police.call("GET", &member, Some(&alice.access_token), None).await;
    assert_eq!(joined["membership"], "join");
}

#[tokio::test]
async fn a_server_that_left_a_room_joins_it_again_with_what_changed_meanwhile() {
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let alice = police.register("alice").await;
    let bob = gov.register("bob").await;
    let room_id = police
        .create_room(
            &alice.access_token,
            json!({ "preset": "public_chat", "room_alias_name": "retour", "topic": "Avant" }),
        )
        .await;
    let (status, _) = gov
        .call("POST", "/_matrix/client/v3/join/%23retour:police.test", Some(&bob.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let (status, _) = gov
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&bob.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let member = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{}", bob.user_id);
    common::until("police sees bob leave", async || {
        (police.call("GET", &member, Some(&alice.access_token), None).await.1["membership"] == "leave").then_some(())
    })
    .await;

    // While gov is out of the room, it changes.
    let topic = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/");
    let (status, _) = police.call("PUT", &topic, Some(&alice.access_token), Some(json!({ "topic": "Après" }))).await;
    assert_eq!(status, 200);

    // Bob joins again: through police, with the room's state as it is now.
    let (status, body) = gov
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&bob.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, now) = gov.call("GET", &topic, Some(&bob.access_token), None).await;
    assert_eq!(now["topic"], "Après", "gov holds the room's current state");
    common::until("police sees bob back", async || {
        (police.call("GET", &member, Some(&alice.access_token), None).await.1["membership"] == "join").then_some(())
    })
    .await;
    let here = common::state_map(police, &alice.access_token, &room_id).await;
    let there = common::state_map(gov, &bob.access_token, &room_id).await;
    assert_eq!(here, there);

    // And the conversation goes on both ways.
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/back");
    let (status, body) = gov
        .call("PUT", &path, Some(&bob.access_token), Some(json!({ "msgtype": "m.text", "body": "Me revoilà" })))
        .await;
    assert_eq!(status, 200, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    common::until("alice reads bob", async || {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/event/{event_id}");
        (police.call("GET", &path, Some(&alice.access_token), None).await.0 == 200).then_some(())
    })
    .await;
}

/// A membership template of a resident server (room version 12), dated now and signed as
/// gov.test: its event ID and the event.
fn signed_template(template: &Value, key: &Ed25519KeyPair) -> (String, Value) {
    let mut event = template["event"].clone();
    event["origin_server_ts"] = json!(now_ms());
    let mut object = match CanonicalJsonValue::try_from(event).unwrap() {
        CanonicalJsonValue::Object(object) => object,
        _ => unreachable!(),
    };
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    ruma::signatures::hash_and_sign_event("gov.test", key, &mut object, &rules.redaction).unwrap();
    let event_id = format!("${}", ruma::signatures::reference_hash(&object, &rules).unwrap());
    (event_id, serde_json::to_value(&object).unwrap())
}

#[tokio::test]
async fn a_join_returns_before_the_members_arrive_and_they_follow() {
    let peers = Peers::start(&["police.test", "gov.test", "edu.test"], |_| Vec::new()).await;
    let (police, gov, edu) = (&peers.servers[0], &peers.servers[1], &peers.servers[2]);
    let alice = police.register("alice").await;
    let room_id = police
        .create_room(
            &alice.access_token,
            json!({ "preset": "public_chat", "room_alias_name": "all-hands", "name": "All hands" }),
        )
        .await;
    let join = "/_matrix/client/v3/join/%23all-hands:police.test";
    for i in 0..10 {
        let officer = police.register(&format!("officer{i}")).await;
        let (status, _) = police.call("POST", join, Some(&officer.access_token), None).await;
        assert_eq!(status, 200);
    }
    let carol = edu.register("carol").await;
    let (status, _) = edu.call("POST", join, Some(&carol.access_token), None).await;
    assert_eq!(status, 200);

    // What police answers a server that takes the members later: the state without them,
    // the servers in the room, and an auth chain without the state's own events.
    let gov_key = signing_key_of(gov).await;
    let as_gov = ("gov.test", &gov_key);
    let dave = "@dave:gov.test";
    let (status, template) =
        signed_call(police, as_gov, "GET", &format!("/_matrix/federation/v1/make_join/{room_id}/{dave}?ver=12"), None)
            .await;
    assert_eq!(status, 200, "{template}");
    let (event_id, body) = signed_template(&template, &gov_key);
    let send_join = format!("/_matrix/federation/v2/send_join/{room_id}/{event_id}?omit_members=true");
    let (status, answer) = signed_call(police, as_gov, "PUT", &send_join, Some(body)).await;
    assert_eq!((status, answer["members_omitted"].as_bool()), (200, Some(true)), "{answer}");
    let state = answer["state"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.name"), "{answer}");
    assert!(!state.iter().any(|e| e["type"] == "m.room.member"), "a named room needs no heroes: {answer}");
    let mut servers: Vec<&str> =
        answer["servers_in_room"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    servers.sort();
    assert_eq!(servers, ["edu.test", "police.test"]);
    let chain = answer["auth_chain"].as_array().unwrap();
    assert!(chain.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str()));
    assert!(chain.iter().all(|e| !state.contains(e)), "{answer}");
    // A get_missing_events without its lists (as some servers send it) asks for nothing.
    let missing = format!("/_matrix/federation/v1/get_missing_events/{room_id}");
    let (status, answer) = signed_call(police, as_gov, "POST", &missing, Some(json!({}))).await;
    assert_eq!((status, &answer["events"]), (200, &json!([])), "{answer}");
    // Dave leaves again, so that gov's own join below is its first.
    let leave_path = format!("/_matrix/federation/v1/make_leave/{room_id}/{dave}");
    let (status, template) = signed_call(police, as_gov, "GET", &leave_path, None).await;
    assert_eq!(status, 200, "{template}");
    let (event_id, body) = signed_template(&template, &gov_key);
    let send_leave = format!("/_matrix/federation/v2/send_leave/{room_id}/{event_id}");
    let (status, answer) = signed_call(police, as_gov, "PUT", &send_leave, Some(body)).await;
    assert_eq!(status, 200, "{answer}");

    // Bob of gov joins: the join returns before gov has the members, and bob and carol
    // (whose membership police left out) talk at once. Bob speaks first: a message carol
    // sent before edu heard of bob's join would not be sent to gov (as with any server).
    let bob = gov.register("bob").await;
    let (status, body) = gov.call("POST", join, Some(&bob.access_token), None).await;
    assert_eq!((status, body["room_id"].as_str()), (200, Some(room_id.as_str())), "{body}");
    gov.send_message(&bob.access_token, &room_id, json!({ "msgtype": "m.text", "body": "Hello, all" })).await;
    wait_for_event(edu, &carol, &room_id, |e| e["content"]["body"] == "Hello, all").await;
    wait_for_event(police, &alice, &room_id, |e| e["content"]["body"] == "Hello, all").await;
    edu.send_message(&carol.access_token, &room_id, json!({ "msgtype": "m.text", "body": "Welcome, Bob" })).await;
    let seen = wait_for_event(gov, &bob, &room_id, |e| e["content"]["body"] == "Welcome, Bob").await;
    assert_eq!(seen["sender"], carol.user_id.as_str());

    // Bob's member list is the whole room's, and both servers hold the same state.
    let (status, members) = gov
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/joined_members"), Some(&bob.access_token), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(members["joined"].as_object().unwrap().len(), 13, "{members}");
    let logs = gov.logs();
    assert!(logs.lines().any(|l| l.contains("joined a room of another server") && l.contains("partial_state=true")));
    assert!(logs.contains("completed the state of a room joined partially"), "{logs}");
    let at_police = common::state_map(police, &alice.access_token, &room_id).await;
    let at_gov = common::state_map(gov, &bob.access_token, &room_id).await;
    assert_eq!(at_police, at_gov, "both servers hold the same state");
}

#[tokio::test]
async fn partners_here_and_on_other_servers_see_a_suspended_account_as_deactivated() {
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let anne = police.register("anne").await;
    let bruno = police.register("bruno").await;
    let gabriel = gov.register("gabriel").await;
    let admin = common::register_admin(police, "root").await;
    let (_, capabilities) = gov.call("GET", "/_matrix/client/v3/capabilities", Some(&gabriel.access_token), None).await;
    assert_eq!(capabilities["capabilities"]["org.matrix.msc3720.account_status"]["enabled"], true);

    // Gov asks police (and a server that does not answer) in one request.
    let path = "/_matrix/client/unstable/org.matrix.msc3720/account_status";
    let unreachable = "@x:127.0.0.1:1";
    let ask = json!({ "user_ids": [anne.user_id, "@ghost:police.test", unreachable] });
    let (status, body) = gov.call("POST", path, Some(&gabriel.access_token), Some(ask.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["account_statuses"][&anne.user_id], json!({ "exists": true, "deactivated": false }));
    assert_eq!(body["account_statuses"]["@ghost:police.test"], json!({ "exists": false }));
    assert_eq!(body["failures"], json!([unreachable]));

    // Suspended: shown as deactivated to partners on both servers, then active again.
    let suspend_path = format!("/_synapse/admin/v1/suspend/{}", anne.user_id);
    let suspend = |on: bool| police.call("PUT", &suspend_path, Some(&admin), Some(json!({ "suspend": on })));
    assert_eq!(suspend(true).await.0, 200);
    let (_, body) = gov.call("POST", path, Some(&gabriel.access_token), Some(ask.clone())).await;
    assert_eq!(body["account_statuses"][&anne.user_id]["deactivated"], true, "{body}");
    let local = format!("{path}?user_id={}", anne.user_id.replace('@', "%40").replace(':', "%3A"));
    let (status, body) = police.call("GET", &local, Some(&bruno.access_token), None).await;
    assert_eq!((status, &body["account_statuses"][&anne.user_id]["deactivated"]), (200, &json!(true)), "{body}");
    assert_eq!(suspend(false).await.0, 200);
    let (_, body) = gov.call("POST", path, Some(&gabriel.access_token), Some(ask)).await;
    assert_eq!(body["account_statuses"][&anne.user_id]["deactivated"], false, "{body}");

    // Bad input gets the MSC's errors.
    for (body, errcode) in [
        (json!({ "user_ids": [] }), "M_MISSING_PARAM"),
        (json!({}), "M_MISSING_PARAM"),
        (json!({ "user_ids": ["not a user"] }), "M_INVALID_PARAM"),
    ] {
        let (status, answer) = gov.call("POST", path, Some(&gabriel.access_token), Some(body)).await;
        assert_eq!((status, answer["errcode"].as_str()), (400, Some(errcode)), "{answer}");
    }
    let (status, _) = gov.call("POST", path, None, Some(json!({ "user_ids": [anne.user_id] }))).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_external_user_joins_only_the_rooms_of_other_servers_that_admit_externals() {
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let anne = police.register("anne").await;
    let eve = gov.register("eve").await;
    let gabriel = gov.register("gabriel").await;
    let admin = common::register_admin(gov, "root").await;
    let path = format!("/_synapse/admin/v2/users/{}", eve.user_id);
    let (status, body) = gov.call("PUT", &path, Some(&admin), Some(json!({ "external": true }))).await;
    assert_eq!((status, &body["external"]), (200, &json!(true)), "{body}");

    // Police's rooms: one that admits externals, one restricted, one public without rules.
    let rules =
        |rule: &str| json!({ "type": "im.vector.room.access_rules", "state_key": "", "content": { "rule": rule } });
    let invited = |rule: &str| json!({ "invite": [eve.user_id], "initial_state": [rules(rule)] });
    let open = police.create_room(&anne.access_token, invited("unrestricted")).await;
    let closed = police.create_room(&anne.access_token, invited("restricted")).await;
    let public = police.create_room(&anne.access_token, json!({ "preset": "public_chat" })).await;
    common::until("eve is invited twice", async || {
        let (_, sync) = gov.call("GET", "/_matrix/client/v3/sync", Some(&eve.access_token), None).await;
        let invites = &sync["rooms"]["invite"];
        (invites.get(&open).is_some() && invites.get(&closed).is_some()).then_some(())
    })
    .await;
    let join = async |room: &str| {
        let path = format!("/_matrix/client/v3/rooms/{room}/join");
        gov.call("POST", &path, Some(&eve.access_token), Some(json!({}))).await
    };
    let (status, body) = join(&open).await;
    assert_eq!(status, 200, "{body}");
    for room in [&closed, &public] {
        let (status, body) = join(room).await;
        assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{room}: {body}");
    }
    // A colleague who is no external joins the public room as usual.
    let (status, body) = gov
        .call(
            "POST",
            &format!("/_matrix/client/v3/join/{public}?via=police.test"),
            Some(&gabriel.access_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Nor can a room created here raise her above the default.
    let raise = json!({ "power_level_content_override": { "users": { gabriel.user_id.clone(): 100, eve.user_id.clone(): 50 } } });
    let (status, body) =
        gov.call("POST", "/_matrix/client/v3/createRoom", Some(&gabriel.access_token), Some(raise)).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
}

#[tokio::test]
async fn an_opt_in_directory_keeps_unlisted_profiles_from_other_servers() {
    let opt_in = |i: usize| match i {
        0 => vec![("MISSIVE_DIRECTORY__MODE".to_owned(), "opt_in".to_owned())],
        _ => Vec::new(),
    };
    let peers = Peers::start(&["police.test", "gov.test"], opt_in).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let alice = police.register("alice").await;
    set_name(police, &alice, "Alice of the police").await;
    let bob = gov.register("bob").await;
    let path = format!("/_matrix/client/v3/profile/{}", alice.user_id);

    // Not listed, sharing no room with anyone of gov: gov is refused, and says so.
    let (status, body) = gov.call("GET", &path, Some(&bob.access_token), None).await;
    assert_eq!(status, 403, "{body}");
    // Alice asks to be listed: gov reads her profile.
    let optin = format!("/_matrix/client/v3/user/{}/account_data/im.vector.hide_profile", alice.user_id);
    police.call("PUT", &optin, Some(&alice.access_token), Some(json!({ "hide_profile": false }))).await;
    let (status, body) = gov.call("GET", &path, Some(&bob.access_token), None).await;
    assert_eq!((status, body["displayname"].as_str()), (200, Some("Alice of the police")), "{body}");
}

#[tokio::test]
async fn auth_chains_reach_peers_whole_in_every_event_format() {
    let peers = Peers::start(&["police.test", "gov.test"], |_| Vec::new()).await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);
    let alice = police.register("alice").await;
    let bob = gov.register("bob").await;
    let gov_key = signing_key_of(gov).await;
    // Room version 1 names auth events as `[id, hashes]` pairs, later ones by ID alone.
    for version in ["1", "12"] {
        let body = json!({ "preset": "public_chat", "room_version": version, "name": format!("v{version}") });
        let room_id = police.create_room(&alice.access_token, body).await;
        police.send_message(&alice.access_token, &room_id, json!({ "msgtype": "m.text", "body": "avant" })).await;

        // Bob's server joins with the members left out, then fetches the whole state: each
        // answer's auth chain must hold every event its state rests on, or gov refuses it.
        let join = format!("/_matrix/client/v3/join/{room_id}?server_name=police.test");
        let (status, body) = gov.call("POST", &join, Some(&bob.access_token), Some(json!({}))).await;
        assert_eq!(status, 200, "v{version}: {body}");
        let members = format!("/_matrix/client/v3/rooms/{room_id}/joined_members");
        let (status, joined) = gov.call("GET", &members, Some(&bob.access_token), None).await;
        assert_eq!(status, 200, "v{version}: {joined}");
        assert!(joined["joined"].get(&alice.user_id).is_some(), "v{version}: gov holds the members: {joined}");

        // `/event_auth` of bob's join: alice's join, the power levels, the join rules and
        // the create event, each once.
        let messages = format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50");
        let (_, events) = police.call("GET", &messages, Some(&alice.access_token), None).await;
        let join_id = events["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
            .and_then(|e| e["event_id"].as_str())
            .expect("bob's join in police's timeline")
            .to_owned();
        let uri = format!("/_matrix/federation/v1/event_auth/{room_id}/{join_id}");
        let (status, answer) = signed_call(police, ("gov.test", &gov_key), "GET", &uri, None).await;
        assert_eq!(status, 200, "v{version}: {answer}");
        let mut kinds: Vec<String> = answer["auth_chain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {}", e["type"].as_str().unwrap(), e["state_key"].as_str().unwrap_or("")))
            .collect();
        kinds.sort();
        let mut expected = vec![
            "m.room.join_rules ".to_owned(),
            format!("m.room.member {}", alice.user_id),
            "m.room.power_levels ".to_owned(),
        ];
        // From version 12 the create event, whose ID is the room's, is never listed.
        if version == "1" {
            expected.push("m.room.create ".to_owned());
        }
        expected.sort();
        assert_eq!(kinds, expected, "v{version}: {answer}");
    }
}
