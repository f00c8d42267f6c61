//! Room aliases, the public room directory and the user directory.

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn public_rooms_are_listed_and_joinable_by_alias() {
    let server = TestServer::start().await;
    let owner = server.register("vera").await;
    let visitor = server.register("will").await;
    let body = json!({ "visibility": "public", "preset": "public_chat", "room_alias_name": "accueil", "name": "Accueil", "topic": "Bienvenue" });
    let (status, room) =
        server.call("POST", "/_matrix/client/v3/createRoom", Some(&owner.access_token), Some(body)).await;
    assert_eq!(status, 200, "{room}");
    let room_id = room["room_id"].as_str().unwrap();
    server
        .call("POST", "/_matrix/client/v3/createRoom", Some(&owner.access_token), Some(json!({ "name": "Privé" })))
        .await;

    let (_, list) = server.call("GET", "/_matrix/client/v3/publicRooms", Some(&visitor.access_token), None).await;
    let chunk = list["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1, "only the public room is listed: {list}");
    assert_eq!(chunk[0]["name"], "Accueil");
    assert_eq!(chunk[0]["canonical_alias"], "#accueil:localhost");
    assert_eq!(chunk[0]["num_joined_members"], 1);

    let (_, alias) = server.call("GET", "/_matrix/client/v3/directory/room/%23accueil:localhost", None, None).await;
    assert_eq!(alias["room_id"], room_id);
    let (status, joined) = server
        .call("POST", "/_matrix/client/v3/join/%23accueil:localhost", Some(&visitor.access_token), Some(json!({})))
        .await;
    assert_eq!((status, joined["room_id"].as_str()), (200, Some(room_id)));

    let again = json!({ "room_alias_name": "accueil" });
    let (status, body) =
        server.call("POST", "/_matrix/client/v3/createRoom", Some(&owner.access_token), Some(again)).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_ROOM_IN_USE")));
}

#[tokio::test]
async fn user_directory_finds_room_mates_only() {
    let server = TestServer::start().await;
    let xavier = server.register("xavier").await;
    let yasmine = server.register("yasmine").await;
    let zoe = server.register("zoe").await;
    let (_, room) = server
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&xavier.access_token),
            Some(json!({ "invite": [yasmine.user_id] })),
        )
        .await;
    let room_id = room["room_id"].as_str().unwrap();
    server
        .call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&yasmine.access_token), Some(json!({})))
        .await;
    let search = |term: &str| json!({ "search_term": term, "limit": 10 });
    let (_, found) = server
        .call("POST", "/_matrix/client/v3/user_directory/search", Some(&xavier.access_token), Some(search("yas")))
        .await;
    assert_eq!(found["results"][0]["user_id"], yasmine.user_id, "{found}");
    let (_, found) = server
        .call("POST", "/_matrix/client/v3/user_directory/search", Some(&xavier.access_token), Some(search("zoe")))
        .await;
    assert_eq!(found["results"], json!([]), "users sharing no room stay hidden");

    // Members of a public room are listed while the room is public.
    let (_, room) = server
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&zoe.access_token),
            Some(json!({ "preset": "public_chat" })),
        )
        .await;
    let public = room["room_id"].as_str().unwrap();
    let (_, found) = server
        .call("POST", "/_matrix/client/v3/user_directory/search", Some(&xavier.access_token), Some(search("zoe")))
        .await;
    assert_eq!(found["results"][0]["user_id"], zoe.user_id, "{found}");
    let (_, found) = server
        .call("POST", "/_matrix/client/v3/user_directory/search", Some(&zoe.access_token), Some(search("zoe")))
        .await;
    assert_eq!(found["results"][0]["user_id"], zoe.user_id, "a public room's member finds themself: {found}");
    server
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{public}/state/m.room.join_rules"),
            Some(&zoe.access_token),
            Some(json!({ "join_rule": "invite" })),
        )
        .await;
    let (_, found) = server
        .call("POST", "/_matrix/client/v3/user_directory/search", Some(&xavier.access_token), Some(search("zoe")))
        .await;
    assert_eq!(found["results"], json!([]), "the room is no longer public: {found}");
    let (_, found) = server
        .call("POST", "/_matrix/client/v3/user_directory/search", Some(&zoe.access_token), Some(search("zoe")))
        .await;
    assert_eq!(found["results"], json!([]), "a private room does not list its own member to them: {found}");
}

/// The user IDs a directory search by `token` finds for `term`.
async fn search(server: &TestServer, token: &str, term: &str) -> Vec<String> {
    let (status, body) = server
        .call("POST", "/_matrix/client/v3/user_directory/search", Some(token), Some(json!({ "search_term": term })))
        .await;
    assert_eq!(status, 200, "{body}");
    body["results"].as_array().unwrap().iter().map(|r| r["user_id"].as_str().unwrap().to_owned()).collect()
}

async fn set_hide_profile(server: &TestServer, user: &common::TestUser, hide: bool) {
    let path = format!("/_matrix/client/v3/user/{}/account_data/im.vector.hide_profile", user.user_id);
    let (status, _) = server.call("PUT", &path, Some(&user.access_token), Some(json!({ "hide_profile": hide }))).await;
    assert_eq!(status, 200);
}

async fn profile_status(server: &TestServer, token: &str, user: &str) -> u16 {
    server.call("GET", &format!("/_matrix/client/v3/profile/{user}"), Some(token), None).await.0
}

#[tokio::test]
async fn opt_in_and_liste_rouge_directories_hide_who_did_not_ask_and_their_profiles_from_strangers() {
    // Luxchat4Gov: only those who asked appear; room mates see each other.
    let server = TestServer::start_with(&[("MISSIVE_DIRECTORY__MODE", "opt_in")]).await;
    let listed = server.register("agent-listed").await;
    let quiet = server.register("agent-quiet").await;
    let mate = server.register("agent-mate").await;
    let stranger = server.register("stranger").await;
    set_hide_profile(&server, &listed, false).await;
    let room = server.create_room(&mate.access_token, json!({ "invite": [quiet.user_id] })).await;
    server.call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(&quiet.access_token), Some(json!({}))).await;
    assert_eq!(search(&server, &stranger.access_token, "agent").await, vec![listed.user_id.clone()]);
    let mut seen_by_mate = search(&server, &mate.access_token, "agent").await;
    seen_by_mate.sort();
    assert_eq!(seen_by_mate, vec![listed.user_id.clone(), quiet.user_id.clone()]);
    assert_eq!(profile_status(&server, &stranger.access_token, &quiet.user_id).await, 403);
    assert_eq!(profile_status(&server, &mate.access_token, &quiet.user_id).await, 200);
    assert_eq!(profile_status(&server, &stranger.access_token, &listed.user_id).await, 200);
    assert_eq!(profile_status(&server, &quiet.access_token, &quiet.user_id).await, 200, "one's own");

    // Tchap: everyone appears but those on the "liste rouge".
    let server = TestServer::start_with(&[("MISSIVE_DIRECTORY__MODE", "opt_out")]).await;
    let open = server.register("agent-open").await;
    let red = server.register("agent-red").await;
    let mate = server.register("agent-mate").await;
    let stranger = server.register("stranger").await;
    set_hide_profile(&server, &red, true).await;
    let room = server.create_room(&mate.access_token, json!({ "invite": [red.user_id] })).await;
    server.call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(&red.access_token), Some(json!({}))).await;
    let found = search(&server, &stranger.access_token, "agent").await;
    assert!(found.contains(&open.user_id) && found.contains(&mate.user_id), "{found:?}");
    assert!(!found.contains(&red.user_id), "on the liste rouge: {found:?}");
    assert_eq!(profile_status(&server, &stranger.access_token, &red.user_id).await, 403);
    assert_eq!(profile_status(&server, &mate.access_token, &red.user_id).await, 200);
    assert_eq!(profile_status(&server, &stranger.access_token, &open.user_id).await, 200);
}
