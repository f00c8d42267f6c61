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
