//! Single sign-on through a real OpenID provider (`oidc-provider` from npm): the spec's
//! `m.login.sso` redirect flow, then `m.login.token`; pseudonymous IDs that stay with their
//! identity; the profile from the claims.

mod common;

use common::{
    TestServer,
    oidc::{Browser, OidcProvider, Outcome},
    peers::free_port,
};
use serde_json::{Value, json};

/// Where the test's "application" wants its users back.
const CLIENT: &str = "http://client.test/";

/// A provider with a few agents, and a Missive server that signs in through it only.
async fn setup() -> (OidcProvider, TestServer) {
    setup_with(&[]).await
}

/// The same, with extra settings; the provider also knows a second client, `partners`,
/// which the server may name as a provider of external users.
async fn setup_with(extra: &[(&str, &str)]) -> (OidcProvider, TestServer) {
    setup_full(&[], extra).await
}

/// The same, with settings of the provider too.
async fn setup_full(provider_env: &[(&str, &str)], extra: &[(&str, &str)]) -> (OidcProvider, TestServer) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let callback = format!("{base}/_synapse/client/oidc/callback");
    let clients = json!([
        {
            "client_id": "missive",
            "client_secret": "missive-secret",
            "redirect_uris": [callback],
            "backchannel_logout_uri": format!("{base}/_synapse/client/oidc/backchannel_logout"),
            "backchannel_logout_session_required": true,
        },
        { "client_id": "partners", "client_secret": "partners-secret", "redirect_uris": [callback] },
    ]);
    let accounts = json!({
        "anne": { "email": "Anne.Weber@police.example", "email_verified": true, "given_name": "Anne", "family_name": "Weber" },
        "bruno": { "email": "bruno@police.example", "email_verified": true, "name": "Bruno K." },
        "carla": { "email": "carla@police.example", "email_verified": true },
        "dora": { "email": "dora@interior.gov.example", "email_verified": true },
        "eve": { "email": "eve@mail.example", "email_verified": true },
    });
    let provider = OidcProvider::start_with(&clients, &accounts, provider_env);
    let providers = format!(
        "[{{ id = \"iam\", name = \"State IAM\", issuer = \"{0}\", client_id = \"missive\", client_secret = \"missive-secret\" }}, \
         {{ id = \"partners\", name = \"Partners\", issuer = \"{0}\", client_id = \"partners\", client_secret = \"partners-secret\", external = true }}]",
        provider.issuer
    );
    let whitelist = format!("[\"{CLIENT}\"]");
    let listen = format!("127.0.0.1:{port}");
    let mut env = vec![
        ("MISSIVE_LISTEN", listen.as_str()),
        ("MISSIVE_PUBLIC_BASEURL", base.as_str()),
        ("MISSIVE_PASSWORD_LOGIN", "false"),
        ("MISSIVE_SSO__PROVIDERS", providers.as_str()),
        ("MISSIVE_SSO__CLIENT_WHITELIST", whitelist.as_str()),
    ];
    env.extend_from_slice(extra);
    let server = TestServer::start_with(&env).await;
    (provider, server)
}

/// Signs `login` in with a fresh browser; the login token the application receives.
async fn login_token(server: &TestServer, login: &str) -> String {
    login_token_with(server, "iam", login).await
}

/// Signs `login` in through the provider `idp`.
async fn login_token_with(server: &TestServer, idp: &str, login: &str) -> String {
    let start = server.url(&format!("/_matrix/client/v3/login/sso/redirect/{idp}?redirectUrl={CLIENT}done"));
    match Browser::default().sign_in(&start, login, CLIENT).await {
        Outcome::Redirected(url) => {
            let url = reqwest::Url::parse(&url).unwrap();
            url.query_pairs().find(|(k, _)| k == "loginToken").map(|(_, v)| v.into_owned()).expect("loginToken")
        }
        Outcome::Page(status, body) => panic!("sign-in stopped on a page ({status}): {body}"),
    }
}

/// A GET whose redirect, if any, is answered rather than followed.
async fn get_unfollowed(url: &str) -> reqwest::Response {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    client.get(url).send().await.unwrap()
}

async fn redeem(server: &TestServer, token: &str) -> (u16, Value) {
    server
        .call("POST", "/_matrix/client/v3/login", None, Some(json!({ "type": "m.login.token", "token": token })))
        .await
}

#[tokio::test]
async fn an_agent_signs_in_through_the_iam_and_keeps_a_pseudonymous_id() {
    let (_provider, server) = setup().await;
    let (_, flows) = server.call("GET", "/_matrix/client/v3/login", None, None).await;
    let types: Vec<&str> = flows["flows"].as_array().unwrap().iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(types, ["m.login.sso", "m.login.token"], "password login is off: {flows}");
    assert_eq!(
        flows["flows"][0]["identity_providers"],
        json!([{ "id": "iam", "name": "State IAM" }, { "id": "partners", "name": "Partners" }])
    );

    let token = login_token(&server, "anne").await;
    let (status, session) = redeem(&server, &token).await;
    assert_eq!(status, 200, "{session}");
    let user_id = session["user_id"].as_str().unwrap().to_owned();
    let localpart = user_id.strip_prefix('@').and_then(|u| u.split_once(':')).unwrap().0;
    assert_eq!(localpart.len(), 12, "a pseudonym, not the login or the e-mail: {user_id}");
    assert!(localpart.chars().all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)), "{user_id}");
    let access = session["access_token"].as_str().unwrap();

    // The profile comes from the claims; the e-mail is a verified 3PID.
    let (_, profile) = server.call("GET", &format!("/_matrix/client/v3/profile/{user_id}"), Some(access), None).await;
    assert_eq!(profile["displayname"], "Anne Weber");
    let (_, threepids) = server.call("GET", "/_matrix/client/v3/account/3pid", Some(access), None).await;
    assert_eq!(threepids["threepids"][0]["medium"], "email");
    assert_eq!(threepids["threepids"][0]["address"], "anne.weber@police.example", "{threepids}");

    // A login token is used once.
    let (status, body) = redeem(&server, &token).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, body) = redeem(&server, "not-a-token").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    // Password login is off.
    let password =
        json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user_id }, "password": "x" });
    let (status, body) = server.call("POST", "/_matrix/client/v3/login", None, Some(password)).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN")), "{body}");

    // Signing in again gives the same account; another agent gets another one.
    let (_, again) = redeem(&server, &login_token(&server, "anne").await).await;
    assert_eq!(again["user_id"], user_id.as_str());
    assert_ne!(again["device_id"], session["device_id"], "a new session");
    let (_, bruno) = redeem(&server, &login_token(&server, "bruno").await).await;
    assert_ne!(bruno["user_id"], user_id.as_str());
    let bruno_id = bruno["user_id"].as_str().unwrap();
    let (_, profile) = server.call("GET", &format!("/_matrix/client/v3/profile/{bruno_id}"), Some(access), None).await;
    assert_eq!(profile["displayname"], "Bruno K.", "the full name when given and family names are missing");
}

#[tokio::test]
async fn matrix_sdk_logs_in_with_the_login_token_of_single_sign_on() {
    let (_provider, server) = setup().await;
    let client = matrix_sdk::Client::builder().homeserver_url(&server.base_url).build().await.unwrap();
    let auth = client.matrix_auth();
    let types = auth.get_login_types().await.unwrap();
    assert!(
        types
            .flows
            .iter()
            .any(|f| matches!(f, matrix_sdk::ruma::api::client::session::get_login_types::v3::LoginType::Sso(_)))
    );
    let url = auth.get_sso_login_url(&format!("{CLIENT}sdk"), Some("iam")).await.unwrap();
    let token = match Browser::default().sign_in(&url, "carla", CLIENT).await {
        Outcome::Redirected(url) => reqwest::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "loginToken")
            .map(|(_, v)| v.into_owned())
            .unwrap(),
        Outcome::Page(status, body) => panic!("sign-in stopped on a page ({status}): {body}"),
    };
    let response = auth.login_token(&token).initial_device_display_name("sdk").send().await.unwrap();
    assert_eq!(client.user_id(), Some(response.user_id.as_ref()));
    let whoami = client.whoami().await.unwrap();
    assert_eq!(whoami.user_id, response.user_id);
    let profile = client.account().get_display_name().await.unwrap();
    assert_eq!(profile.as_deref(), Some("carla"), "without name claims, the e-mail's local part names the agent");
}

#[tokio::test]
async fn a_sign_in_returns_only_to_its_own_browser_and_asks_before_unknown_applications() {
    let (_provider, server) = setup().await;
    // A state the server never issued, or none.
    let (status, _) = server.call("GET", "/_synapse/client/oidc/callback?code=x&state=forged", None, None).await;
    assert_eq!(status, 400);
    // The provider's answer brought to another browser (a link sent to a victim) is refused.
    let start = server.url(&format!("/_matrix/client/v3/login/sso/redirect/iam?redirectUrl={CLIENT}x"));
    let to_provider = get_unfollowed(&start).await;
    assert_eq!(to_provider.status(), 302);
    let provider_url = to_provider.headers()["location"].to_str().unwrap().to_owned();
    match Browser::default().sign_in(&provider_url, "anne", CLIENT).await {
        Outcome::Page(status, body) => {
            assert_eq!(status, 400, "{body}");
            assert!(body.contains("unknown or has expired"), "{body}");
        }
        other => panic!("another browser signed in: {other:?}"),
    }
    // An application not in the whitelist gets its token only once the user confirms.
    let start = server.url("/_matrix/client/v3/login/sso/redirect/iam?redirectUrl=https://elsewhere.example/cb");
    match Browser::default().sign_in(&start, "anne", "https://elsewhere.example/").await {
        Outcome::Page(200, body) => {
            assert!(body.contains("Continue to your application"), "{body}");
            assert!(body.contains("https://elsewhere.example/cb?loginToken="), "{body}");
        }
        other => panic!("no confirmation: {other:?}"),
    }
    // With two providers, the user picks one.
    let picker = reqwest::get(server.url(&format!("/_matrix/client/v3/login/sso/redirect?redirectUrl={CLIENT}x")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(picker.contains("href=\"redirect/iam?redirectUrl=http%3A%2F%2Fclient%2Etest%2Fx\""), "{picker}");
    assert!(picker.contains(">Partners</a>"), "{picker}");
    // A redirect URL that would run in the browser is refused before any sign-in.
    let (status, _) = server
        .call("GET", "/_matrix/client/v3/login/sso/redirect/iam?redirectUrl=javascript:alert(1)", None, None)
        .await;
    assert_eq!(status, 403);
    let (status, _) =
        server.call("GET", "/_matrix/client/v3/login/sso/redirect/unknown?redirectUrl=http://a/", None, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn domains_send_agents_to_their_server_and_external_users_are_restricted() {
    let domains = r#"{ "police.example" = { server = "localhost", organisation = "Police" }, "gov.example" = { server = "gov.example" } }"#;
    let (_provider, server) = setup_with(&[("MISSIVE_SSO__DOMAINS", domains)]).await;
    let refused = |login: &'static str, idp: &'static str| {
        let start = server.url(&format!("/_matrix/client/v3/login/sso/redirect/{idp}?redirectUrl={CLIENT}done"));
        async move {
            match Browser::default().sign_in(&start, login, CLIENT).await {
                Outcome::Page(status, body) => (status, body),
                other => panic!("{login} signed in: {other:?}"),
            }
        }
    };
    // An agent of another server's administration is sent there, by name.
    let (status, body) = refused("dora", "iam").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("on the server gov.example"), "{body}");
    // Told before any sign-in when the application passes the address as a hint.
    let hinted = "/_matrix/client/v3/login/sso/redirect/iam?redirectUrl=http://client.test/x&login_hint=dora@interior.gov.example";
    let response = get_unfollowed(&server.url(hinted)).await;
    assert_eq!(response.status(), 403, "no redirect to the provider");
    assert!(response.text().await.unwrap().contains("on the server gov.example"));
    let hinted =
        "/_matrix/client/v3/login/sso/redirect/iam?redirectUrl=http://client.test/x&login_hint=anne@police.example";
    let response = get_unfollowed(&server.url(hinted)).await;
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().unwrap();
    assert!(location.contains("login_hint=anne%40police.example"), "the hint goes on to the provider: {location}");
    // A domain that is no administration of the server is refused.
    let (status, body) = refused("eve", "iam").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("mail.example is not an administration of this server"), "{body}");
    let (_, anne) = redeem(&server, &login_token(&server, "anne").await).await;
    let anne_token = anne["access_token"].as_str().unwrap();
    let (status, _) = server.call("POST", "/_matrix/client/v3/createRoom", Some(anne_token), Some(json!({}))).await;
    assert_eq!(status, 200, "an agent of the administration creates rooms");

    // The same person through the provider of external users is welcome, and restricted.
    let (status, eve) = redeem(&server, &login_token_with(&server, "partners", "eve").await).await;
    assert_eq!(status, 200, "{eve}");
    let eve_token = eve["access_token"].as_str().unwrap();
    let (status, body) = server.call("POST", "/_matrix/client/v3/createRoom", Some(eve_token), Some(json!({}))).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");

    // An external user joins only rooms that admit external users, and gets no power.
    let eve_id = eve["user_id"].as_str().unwrap();
    let mut rooms = Vec::new();
    for rule in [None, Some("restricted"), Some("unrestricted")] {
        let mut request = json!({ "invite": [eve_id] });
        if let Some(rule) = rule {
            request["initial_state"] =
                json!([{ "type": "im.vector.room.access_rules", "state_key": "", "content": { "rule": rule } }]);
        }
        let (_, room) = server.call("POST", "/_matrix/client/v3/createRoom", Some(anne_token), Some(request)).await;
        let room_id = room["room_id"].as_str().unwrap().to_owned();
        let (status, body) =
            server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(eve_token), Some(json!({}))).await;
        let expected = if rule == Some("unrestricted") { 200 } else { 403 };
        assert_eq!(status, expected, "{rule:?}: {body}");
        rooms.push(room_id);
    }
    let open = &rooms[2];
    let path = format!("/_matrix/client/v3/rooms/{open}/state/m.room.power_levels/");
    let (_, mut levels) = server.call("GET", &path, Some(anne_token), None).await;
    levels["users"][eve_id] = json!(50);
    let (status, body) = server.call("PUT", &path, Some(anne_token), Some(levels.clone())).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    levels["users"][eve_id] = json!(0);
    let (status, body) = server.call("PUT", &path, Some(anne_token), Some(levels)).await;
    assert_eq!(status, 200, "the default level is no power: {body}");
}

#[tokio::test]
async fn operators_suspend_deactivate_and_restore_accounts_through_the_admin_api_and_cli() {
    let (_provider, server) = setup().await;
    let admin = common::register_admin(&server, "operator").await;
    let (_, anne) = redeem(&server, &login_token(&server, "anne").await).await;
    let anne_id = anne["user_id"].as_str().unwrap().to_owned();
    let anne_token = anne["access_token"].as_str().unwrap().to_owned();
    let (_, bruno) = redeem(&server, &login_token(&server, "bruno").await).await;
    let bruno_token = bruno["access_token"].as_str().unwrap().to_owned();
    let (_, room) = server
        .call("POST", "/_matrix/client/v3/createRoom", Some(&bruno_token), Some(json!({ "invite": [anne_id] })))
        .await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    server.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&anne_token), Some(json!({}))).await;

    // Only server admins use the admin API.
    let user_path = format!("/_synapse/admin/v2/users/{anne_id}");
    let (status, _) = server.call("GET", &user_path, Some(&bruno_token), None).await;
    assert_eq!(status, 403);
    // The CLI calls the running server's admin API.
    let cli = |args: &[&str]| {
        let mut command = common::missive_command();
        let output = command
            .args(["admin", "--url", &server.base_url, "--token", &admin, "user"])
            .args(args)
            .output()
            .expect("missive admin");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice::<Value>(&output.stdout).expect("JSON")
    };
    let shown = cli(&["show", &anne_id]);
    assert_eq!(shown["name"], anne_id.as_str());
    assert_eq!(shown["displayname"], "Anne Weber");
    assert_eq!(shown["threepids"][0]["address"], "anne.weber@police.example");
    assert_eq!(shown["external_ids"][0]["external_id"], "anne");
    assert_eq!((shown["locked"].as_bool(), shown["deactivated"].as_bool()), (Some(false), Some(false)));

    // Suspended: every request of every session is refused at once, and so is signing in.
    let shown = cli(&["suspend", &anne_id]);
    assert_eq!(shown["locked"], true);
    let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&anne_token), None).await;
    assert_eq!(
        (status, body["errcode"].as_str(), body["soft_logout"].as_bool()),
        (401, Some("M_USER_LOCKED"), Some(false))
    );
    let (status, body) = redeem(&server, &login_token(&server, "anne").await).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_USER_LOCKED")), "{body}");
    // Reactivated: the same session works again, in the same rooms.
    cli(&["reactivate", &anne_id]);
    let (status, body) = server.call("GET", "/_matrix/client/v3/joined_rooms", Some(&anne_token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["joined_rooms"], json!([room_id]));
    // Synapse's suspension path does the same.
    let (status, body) = server
        .call("PUT", &format!("/_synapse/admin/v1/suspend/{anne_id}"), Some(&admin), Some(json!({ "suspend": true })))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&anne_token), None).await;
    assert_eq!(status, 401);
    server
        .call("PUT", &format!("/_synapse/admin/v1/suspend/{anne_id}"), Some(&admin), Some(json!({ "suspend": false })))
        .await;

    // Deactivated: sessions gone, rooms left, signing in refused; restored: signing in
    // gives the same account back.
    cli(&["deactivate", &anne_id]);
    let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&anne_token), None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
    let (_, members) = server
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/joined_members"), Some(&bruno_token), None)
        .await;
    assert!(members["joined"].get(&anne_id).is_none(), "{members}");
    let start = server.url(&format!("/_matrix/client/v3/login/sso/redirect/iam?redirectUrl={CLIENT}done"));
    match Browser::default().sign_in(&start, "anne", CLIENT).await {
        Outcome::Page(status, body) => assert!(status == 403 && body.contains("deactivated"), "{status} {body}"),
        other => panic!("a deactivated account signed in: {other:?}"),
    }
    let shown = cli(&["restore", &anne_id]);
    assert_eq!(shown["deactivated"], false);
    let (status, again) = redeem(&server, &login_token(&server, "anne").await).await;
    assert_eq!((status, again["user_id"].as_str()), (200, Some(anne_id.as_str())), "{again}");

    // Bad input changes nothing.
    let (status, _) = server.call("GET", "/_synapse/admin/v2/users/@nobody:localhost", Some(&admin), None).await;
    assert_eq!(status, 404);
    let (status, _) = server.call("GET", "/_synapse/admin/v2/users/@x:elsewhere.example", Some(&admin), None).await;
    assert_eq!(status, 400);
    let (status, body) = server
        .call("PUT", &format!("/_synapse/admin/v1/suspend/{anne_id}"), Some(&admin), Some(json!({ "suspend": "yes" })))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")));
}

#[tokio::test]
async fn idle_accounts_are_deactivated_and_active_ones_spared() {
    let (_provider, server) = setup_with(&[
        ("MISSIVE_LIFECYCLE__DEACTIVATE_INACTIVE_AFTER_SECS", "4"),
        ("MISSIVE_LIFECYCLE__CHECK_INTERVAL_SECS", "1"),
    ])
    .await;
    let admin = common::register_admin(&server, "operator").await;
    let (_, anne) = redeem(&server, &login_token(&server, "anne").await).await;
    let anne_id = anne["user_id"].as_str().unwrap().to_owned();
    let (_, bruno) = redeem(&server, &login_token(&server, "bruno").await).await;
    let bruno_id = bruno["user_id"].as_str().unwrap().to_owned();
    let anne_token = anne["access_token"].as_str().unwrap();
    server.call("GET", "/_matrix/client/v3/account/whoami", Some(anne_token), None).await;
    // Bruno comes back later, on a new device: that is activity.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (_, again) = redeem(&server, &login_token(&server, "bruno").await).await;
    server.call("GET", "/_matrix/client/v3/account/whoami", Some(again["access_token"].as_str().unwrap()), None).await;
    let deactivated = |user: String| {
        let server = &server;
        let admin = admin.clone();
        async move {
            let (_, shown) = server.call("GET", &format!("/_synapse/admin/v2/users/{user}"), Some(&admin), None).await;
            shown["deactivated"].as_bool().unwrap()
        }
    };
    common::until("the idle account is deactivated", async || deactivated(anne_id.clone()).await.then_some(())).await;
    assert!(!deactivated(bruno_id.clone()).await, "an account used since is spared");
    assert!(!deactivated("@operator:localhost".into()).await, "administrators' accounts are not deactivated");
    let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(anne_token), None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_deactivated_account_is_deleted_after_its_grace_period_and_its_id_never_reissued() {
    let (_provider, server) =
        setup_with(&[("MISSIVE_LIFECYCLE__DELETION_AFTER_SECS", "2"), ("MISSIVE_LIFECYCLE__CHECK_INTERVAL_SECS", "1")])
            .await;
    let admin = common::register_admin(&server, "operator").await;
    let (_, anne) = redeem(&server, &login_token(&server, "anne").await).await;
    let anne_id = anne["user_id"].as_str().unwrap().to_owned();
    let (status, _) =
        server.call("POST", &format!("/_synapse/admin/v1/deactivate/{anne_id}"), Some(&admin), Some(json!({}))).await;
    assert_eq!(status, 200);
    common::until("the account is deleted", async || {
        server
            .query_strings("SELECT user_id FROM users WHERE deleted_ts IS NOT NULL")
            .await
            .contains(&anne_id)
            .then_some(())
    })
    .await;
    // What the account held is gone; its row stays, empty, and reserves the ID.
    for (table, sql) in [
        ("profiles", "SELECT user_id FROM profiles"),
        ("user_threepids", "SELECT user_id FROM user_threepids"),
        ("devices", "SELECT user_id FROM devices"),
        ("access_tokens", "SELECT user_id FROM access_tokens"),
    ] {
        assert!(!server.query_strings(sql).await.contains(&anne_id), "{table} still holds the deleted account");
    }
    assert!(server.query_strings("SELECT user_id FROM users").await.contains(&anne_id));
    // The same agent, hired again: a new account under another ID.
    let (status, again) = redeem(&server, &login_token(&server, "anne").await).await;
    assert_eq!(status, 200, "{again}");
    let new_id = again["user_id"].as_str().unwrap();
    assert_ne!(new_id, anne_id, "a deleted account's ID is never given again");
    let (_, shown) = server.call("GET", &format!("/_synapse/admin/v2/users/{new_id}"), Some(&admin), None).await;
    assert_eq!(shown["displayname"], "Anne Weber");
    assert_eq!(shown["external_ids"][0]["external_id"], "anne");
}

#[tokio::test]
async fn sensitive_actions_are_confirmed_at_the_identity_provider_when_password_login_is_off() {
    let (_provider, server) = setup().await;
    let (_, first) = redeem(&server, &login_token(&server, "anne").await).await;
    let (_, second) = redeem(&server, &login_token(&server, "anne").await).await;
    let token = second["access_token"].as_str().unwrap();
    let doomed = first["device_id"].as_str().unwrap();
    let body = json!({ "devices": [doomed] });
    let (status, challenge) =
        server.call("POST", "/_matrix/client/v3/delete_devices", Some(token), Some(body.clone())).await;
    assert_eq!(status, 401);
    assert_eq!(challenge["flows"], json!([{ "stages": ["m.login.sso"] }]), "{challenge}");
    let session = challenge["session"].as_str().unwrap();
    let fallback =
        |session: &str| server.url(&format!("/_matrix/client/v3/auth/m.login.sso/fallback/web?session={session}"));

    // Someone else signing in at the provider confirms nothing.
    match Browser::default().sign_in(&fallback(session), "bruno", CLIENT).await {
        Outcome::Page(status, page) => assert!(status == 403 && page.contains("someone else"), "{status} {page}"),
        other => panic!("{other:?}"),
    }
    let retry = json!({ "devices": [doomed], "auth": { "session": session } });
    let (status, _) = server.call("POST", "/_matrix/client/v3/delete_devices", Some(token), Some(retry.clone())).await;
    assert_eq!(status, 401, "not confirmed yet");

    // The owner confirms; the application's retry with the session goes through.
    match Browser::default().sign_in(&fallback(session), "anne", CLIENT).await {
        Outcome::Page(200, page) => assert!(page.contains("window.onAuthDone"), "{page}"),
        other => panic!("{other:?}"),
    }
    let (status, body) = server.call("POST", "/_matrix/client/v3/delete_devices", Some(token), Some(retry)).await;
    assert_eq!(status, 200, "{body}");
    let (_, devices) = server.call("GET", "/_matrix/client/v3/devices", Some(token), None).await;
    let ids: Vec<&str> =
        devices["devices"].as_array().unwrap().iter().filter_map(|d| d["device_id"].as_str()).collect();
    assert!(!ids.contains(&doomed), "{devices}");
    // An unknown session is refused before any redirect.
    let (status, _) =
        server.call("GET", "/_matrix/client/v3/auth/m.login.sso/fallback/web?session=nope", None, None).await;
    assert_eq!(status, 400);
}

/// A SCIM request of the IAM, with its bearer token (or another).
async fn scim(server: &TestServer, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method.parse().unwrap(), server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/scim+json").body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_iam_provisions_suspends_and_deletes_accounts_through_scim() {
    let (_provider, server) =
        setup_with(&[("MISSIVE_SCIM__TOKEN", "scim-secret"), ("MISSIVE_SCIM__PROVIDER", "iam")]).await;
    let token = Some("scim-secret");
    let users = "/_missive/scim/v2/Users";
    let anne = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "externalId": "anne",
        "userName": "Anne.Weber@police.example",
        "name": { "givenName": "Anne", "familyName": "Weber" },
        "emails": [{ "value": "anne.weber@police.example", "primary": true }],
        "active": true,
    });
    // Without the IAM's token, nothing happens.
    for bad in [None, Some("wrong")] {
        let (status, body) = scim(&server, "POST", users, bad, Some(anne.clone())).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error");
    }
    let by_subject = format!("{users}?filter=externalId%20eq%20%22anne%22");
    let (_, found) = scim(&server, "GET", &by_subject, token, None).await;
    assert_eq!(found["totalResults"], 0, "{found}");

    // Created before any sign-in, with the ID and profile a sign-in would give.
    let (status, created) = scim(&server, "POST", users, token, Some(anne.clone())).await;
    assert_eq!(status, 201, "{created}");
    let user_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["displayName"], "Anne Weber");
    assert_eq!(created["externalId"], "anne");
    assert_eq!(created["active"], true);
    let (status, body) = scim(&server, "POST", users, token, Some(anne.clone())).await;
    assert_eq!((status, body["scimType"].as_str()), (409, Some("uniqueness")), "{body}");
    let (status, body) = scim(&server, "POST", users, token, Some(json!({ "userName": "x@police.example" }))).await;
    assert_eq!((status, body["scimType"].as_str()), (400, Some("invalidValue")), "{body}");
    let (status, _) = scim(&server, "POST", users, token, Some(json!("not a user"))).await;
    assert_eq!(status, 400);
    let (_, found) =
        scim(&server, "GET", &format!("{users}?filter=userName%20eq%20%22anne.weber@police.example%22"), token, None)
            .await;
    assert_eq!(found["Resources"][0]["id"], user_id.as_str(), "{found}");

    // The agent's first sign-in finds the account.
    let (_, session) = redeem(&server, &login_token(&server, "anne").await).await;
    assert_eq!(session["user_id"], user_id.as_str());
    let access = session["access_token"].as_str().unwrap();

    // Suspended the way Entra ID says it, reinstated the way Keycloak does.
    let resource = format!("{users}/{user_id}");
    let suspend = json!({ "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{ "op": "Replace", "path": "active", "value": "False" }] });
    let (status, body) = scim(&server, "PATCH", &resource, token, Some(suspend)).await;
    assert_eq!((status, body["active"].as_bool()), (200, Some(false)), "{body}");
    let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(access), None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_USER_LOCKED")));
    // A colleague sees the account as deactivated meanwhile.
    let (_, colleague) = redeem(&server, &login_token(&server, "bruno").await).await;
    let status_of_anne = async || {
        let ask = json!({ "user_ids": [user_id] });
        let path = "/_matrix/client/unstable/org.matrix.msc3720/account_status";
        let (_, body) = server.call("POST", path, colleague["access_token"].as_str(), Some(ask)).await;
        body["account_statuses"][&user_id].clone()
    };
    assert_eq!(status_of_anne().await, json!({ "exists": true, "deactivated": true }));
    let reinstate = json!({ "Operations": [{ "op": "replace", "value": { "active": true } }] });
    let (status, _) = scim(&server, "PATCH", &resource, token, Some(reinstate)).await;
    assert_eq!(status, 200);
    let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(access), None).await;
    assert_eq!(status, 200);
    assert_eq!(status_of_anne().await, json!({ "exists": true, "deactivated": false }));

    // Deleted at the IAM: deactivated here at once (deleted after the grace period).
    let (status, _) = scim(&server, "DELETE", &resource, token, None).await;
    assert_eq!(status, 204);
    let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(access), None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
    let (_, shown) = scim(&server, "GET", &resource, token, None).await;
    assert_eq!(shown["active"], false);
    let (status, _) = scim(&server, "GET", &format!("{users}/@nobody:localhost"), token, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn signing_out_at_the_identity_provider_ends_the_matrix_sessions() {
    let (provider, server) = setup().await;
    // Signed in twice (two devices) in one browser, which keeps the provider's session.
    let browser = Browser::default();
    let start = server.url(&format!("/_matrix/client/v3/login/sso/redirect/iam?redirectUrl={CLIENT}done"));
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let Outcome::Redirected(url) = browser.sign_in(&start, "anne", CLIENT).await else { panic!("no sign-in") };
        let token =
            reqwest::Url::parse(&url).unwrap().query_pairs().find(|(k, _)| k == "loginToken").unwrap().1.into_owned();
        let (_, session) = redeem(&server, &token).await;
        tokens.push(session["access_token"].as_str().unwrap().to_owned());
    }
    let (_, bruno) = redeem(&server, &login_token(&server, "bruno").await).await;
    let bruno_token = bruno["access_token"].as_str().unwrap();
    // Anne on another device, through another session at the provider (another browser).
    let (_, phone) = redeem(&server, &login_token(&server, "anne").await).await;
    let phone_token = phone["access_token"].as_str().unwrap();

    // A forged or replayed logout token changes nothing.
    let forged = reqwest::Client::new()
        .post(server.url("/_synapse/client/oidc/backchannel_logout"))
        .form(&[("logout_token", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbm5lIn0.")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&tokens[0]), None).await;
    assert_eq!(status, 200);

    // Anne signs out at the provider in the first browser: it tells Missive, which ends the
    // sessions that browser's provider session signed in, not her phone's nor Bruno's.
    match browser.sign_in(&format!("{}/session/end", provider.issuer), "anne", "http://never.example/").await {
        Outcome::Page(status, page) => assert_eq!(status, 200, "{page}"),
        other => panic!("{other:?}"),
    }
    for token in &tokens {
        let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(token), None).await;
        assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{body}");
    }
    for token in [bruno_token, phone_token] {
        let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(token), None).await;
        assert_eq!(status, 200);
    }
}

/// A P-256 key pair: the private key in PEM (PKCS#8) and the public key as a JWK.
fn client_key() -> (String, Value) {
    use base64::Engine;
    let key = rcgen::KeyPair::generate().unwrap();
    let point = key.public_key_raw();
    assert_eq!((point.len(), point[0]), (65, 4), "an uncompressed P-256 point");
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk = json!({ "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]), "kid": "missive-1", "use": "sig" });
    (key.serialize_pem(), jwk)
}

#[tokio::test]
async fn the_server_authenticates_to_the_provider_with_a_private_key() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (private_pem, public_jwk) = client_key();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("client-key.pem");
    std::fs::write(&key_file, private_pem).unwrap();
    // The provider knows the client by its public key only: no shared secret.
    let clients = json!([{
        "client_id": "keyed",
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES256",
        "jwks": { "keys": [public_jwk] },
        "redirect_uris": [format!("{base}/_synapse/client/oidc/callback")],
    }]);
    let accounts = json!({ "anne": { "email": "anne@police.example", "email_verified": true, "name": "Anne" } });
    let provider = OidcProvider::start(&clients, &accounts);
    let providers = format!(
        "[{{ id = \"iam\", name = \"State IAM\", issuer = \"{}\", client_id = \"keyed\", private_key_file = \"{}\", private_key_id = \"missive-1\" }}]",
        provider.issuer,
        key_file.display()
    );
    let listen = format!("127.0.0.1:{port}");
    let whitelist = format!("[\"{CLIENT}\"]");
    let server = TestServer::start_with(&[
        ("MISSIVE_LISTEN", listen.as_str()),
        ("MISSIVE_PUBLIC_BASEURL", base.as_str()),
        ("MISSIVE_SSO__PROVIDERS", providers.as_str()),
        ("MISSIVE_SSO__CLIENT_WHITELIST", whitelist.as_str()),
    ])
    .await;
    let (status, session) = redeem(&server, &login_token(&server, "anne").await).await;
    assert_eq!(status, 200, "{session}");
    assert!(session["user_id"].as_str().unwrap().ends_with(":localhost"));

    // A key the provider does not hold is refused at the token endpoint: no account.
    let (other_pem, _) = client_key();
    std::fs::write(&key_file, other_pem).unwrap();
    let mut server = server;
    server.restart();
    let start = server.url(&format!("/_matrix/client/v3/login/sso/redirect/iam?redirectUrl={CLIENT}done"));
    match Browser::default().sign_in(&start, "anne", CLIENT).await {
        Outcome::Page(status, page) => assert!(status >= 400 && page.contains("code exchange"), "{status}: {page}"),
        other => panic!("signed in with a key the provider does not hold: {other:?}"),
    }
}

#[tokio::test]
async fn spoilt_id_tokens_are_refused_and_create_nothing() {
    let reasons = [
        ("bad-signature", "Signature verification failed"),
        ("wrong-issuer", "Invalid issuer"),
        ("wrong-audience", "Invalid audiences"),
        ("expired", "ID token expired"),
    ];
    for (tamper, reason) in reasons {
        let (_provider, server) = setup_full(&[("OIDC_TAMPER", tamper)], &[]).await;
        let start = server.url(&format!("/_matrix/client/v3/login/sso/redirect/iam?redirectUrl={CLIENT}done"));
        match Browser::default().sign_in(&start, "anne", CLIENT).await {
            Outcome::Page(status, body) => {
                assert_eq!(status, 403, "{tamper}: {body}");
                assert!(body.contains("answer is not valid") && body.contains(reason), "{tamper}: {body}");
            }
            other => panic!("{tamper}: signed in: {other:?}"),
        }
        assert!(server.query_strings("SELECT user_id FROM user_external_ids").await.is_empty(), "{tamper}");
        assert!(server.query_strings("SELECT token_hash FROM login_tokens").await.is_empty(), "{tamper}");
    }
}

/// Where the test's native application is sent back to after an OAuth sign-in.
const APP_REDIRECT: &str = "http://127.0.0.1/callback";

/// A matrix-sdk client of `server` and the registration data of a native application
/// sent back to [`APP_REDIRECT`] (as Element X registers itself).
async fn oauth_client(
    server: &TestServer,
) -> (matrix_sdk::Client, matrix_sdk::authentication::oauth::ClientRegistrationData) {
    use matrix_sdk::{
        Client,
        authentication::oauth::{
            ClientRegistrationData,
            registration::{ApplicationType, ClientMetadata, Localized, OAuthGrantType},
        },
        config::RequestConfig,
        ruma::serde::Raw,
    };
    let client = Client::builder()
        .homeserver_url(&server.base_url)
        .handle_refresh_tokens()
        .request_config(RequestConfig::new().disable_retry())
        .build()
        .await
        .unwrap();
    let redirect = reqwest::Url::parse(APP_REDIRECT).unwrap();
    let metadata = ClientMetadata::new(
        ApplicationType::Native,
        vec![OAuthGrantType::AuthorizationCode { redirect_uris: vec![redirect] }],
        Localized::new(reqwest::Url::parse("https://element.example.org").unwrap(), []),
    );
    (client, ClientRegistrationData::new(Raw::new(&metadata).unwrap()))
}

#[tokio::test]
async fn element_x_signs_in_through_the_oauth_api_refreshes_and_signs_out() {
    use matrix_sdk::utils::UrlOrQuery;
    let (_provider, server) = setup().await;
    let (_, login) = server.call("GET", "/_matrix/client/v3/login", None, None).await;
    let sso = login["flows"].as_array().unwrap().iter().find(|f| f["type"] == "m.login.sso").unwrap();
    assert_eq!(sso["oauth_aware_preferred"], true, "{login}");

    let (client, registration) = oauth_client(&server).await;
    let oauth = client.oauth();
    let redirect = reqwest::Url::parse(APP_REDIRECT).unwrap();
    let authorization = oauth.login(redirect, None, Some(registration), None).build().await.expect("authorization URL");
    // The agent signs in at the IAM in the browser; the application gets the code back.
    let back = match Browser::default().sign_in(authorization.url.as_str(), "anne", APP_REDIRECT).await {
        Outcome::Redirected(url) => url,
        Outcome::Page(status, page) => panic!("stopped on a page ({status}): {page}"),
    };
    oauth.finish_login(UrlOrQuery::Url(reqwest::Url::parse(&back).unwrap())).await.expect("token exchange");
    let whoami = client.whoami().await.unwrap();
    assert!(whoami.user_id.as_str().ends_with(":localhost"));
    assert_eq!(whoami.device_id.as_ref().map(|d| d.as_str()), client.device_id().map(|d| d.as_str()));

    // The same account as a sign-in through /login would give, and its tokens work as any.
    let (_, legacy) = redeem(&server, &login_token(&server, "anne").await).await;
    assert_eq!(legacy["user_id"], whoami.user_id.as_str());
    let first = client.access_token().unwrap();
    oauth.refresh_access_token().await.expect("refresh");
    let second = client.access_token().unwrap();
    assert_ne!(first, second);
    let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&first), None).await;
    assert_eq!(status, 401, "the refreshed token is gone");
    let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&second), None).await;
    assert_eq!(status, 200);

    // Signing out revokes the session at the server: the request matrix-sdk's `logout`
    // sends (RFC 7009), made here since its OAuth library refuses a revocation endpoint on
    // plain HTTP, as this test server's is.
    let (_, metadata) = server.call("GET", "/_matrix/client/v1/auth_metadata", None, None).await;
    let client_id = oauth.client_id().unwrap().as_str().to_owned();
    let form = [("token", second.as_str()), ("token_type_hint", "access_token"), ("client_id", client_id.as_str())];
    let revoked = reqwest::Client::new()
        .post(metadata["revocation_endpoint"].as_str().unwrap())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let (status, body) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&second), None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));

    // The connection logs hold the OAuth session's start and end, like a /login's (the
    // refresh continued it), with the address it came from.
    let device = whoami.device_id.unwrap().to_string();
    let logged =
        server.query_strings("SELECT event || ' ' || device_id || ' ' || COALESCE(ip, '') FROM session_log").await;
    assert!(logged.contains(&format!("login {device} 127.0.0.1")), "{logged:?}");
    assert!(logged.contains(&format!("logout {device} 127.0.0.1")), "{logged:?}");
    assert_eq!(logged.iter().filter(|l| l.contains(&device)).count(), 2, "{logged:?}");
}

#[tokio::test]
async fn the_oauth_api_refuses_bad_verifiers_reused_codes_and_unregistered_redirects() {
    use base64::Engine;
    use sha2::Digest;
    let (_provider, server) = setup().await;
    let (_, metadata) = server.call("GET", "/_matrix/client/v1/auth_metadata", None, None).await;
    let endpoint = |key: &str| metadata[key].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let registration = json!({
        "client_uri": "https://app.example.org",
        "application_type": "native",
        "redirect_uris": [APP_REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    // Registration checks what it is given.
    let mut foreign = registration.clone();
    foreign["application_type"] = json!("web");
    foreign["redirect_uris"] = json!(["https://evil.example/cb"]);
    let refused = http.post(endpoint("registration_endpoint")).json(&foreign).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"], "invalid_redirect_uri");
    let registered: Value =
        http.post(endpoint("registration_endpoint")).json(&registration).send().await.unwrap().json().await.unwrap();
    let client_id = registered["client_id"].as_str().unwrap().to_owned();

    let verifier = "a-verifier-of-the-test-long-enough-for-pkce-0123456789";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier));
    let authorize = |redirect: &str| {
        let mut url = reqwest::Url::parse(&endpoint("authorization_endpoint")).unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client_id)
            .append_pair("redirect_uri", redirect)
            .append_pair("scope", "urn:matrix:client:api:* urn:matrix:client:device:PHONE12345")
            .append_pair("state", "xyz")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        url.to_string()
    };
    let code = async || match Browser::default().sign_in(&authorize(APP_REDIRECT), "anne", APP_REDIRECT).await {
        Outcome::Redirected(url) => {
            let url = reqwest::Url::parse(&url).unwrap();
            assert_eq!(url.query_pairs().find(|(k, _)| k == "state").unwrap().1, "xyz");
            url.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned()
        }
        Outcome::Page(status, page) => panic!("stopped on a page ({status}): {page}"),
    };
    let exchange = async |code: &str, verifier: &str| {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", APP_REDIRECT),
            ("client_id", client_id.as_str()),
            ("code_verifier", verifier),
        ];
        let response = http.post(endpoint("token_endpoint")).form(&form).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };

    // A body that is no form gets OAuth's JSON error.
    let response = http
        .post(endpoint("token_endpoint"))
        .json(&json!({ "grant_type": "authorization_code" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_request");

    // A redirect URI the client did not register: a page, never a redirect there.
    let page = get_unfollowed(&authorize("http://127.0.0.1/elsewhere")).await;
    assert_eq!(page.status(), 400);

    // A wrong verifier: refused, and the code is spent.
    let first = code().await;
    let (status, body) = exchange(&first, "not-the-verifier-not-the-verifier-not-the-verifier").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    let (status, _) = exchange(&first, verifier).await;
    assert_eq!(status, 400);

    // The right verifier: tokens, once.
    let second = code().await;
    let (status, tokens) = exchange(&second, verifier).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let (_, me) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&access), None).await;
    assert_eq!(me["device_id"], "PHONE12345");
    let (status, body) = exchange(&second, verifier).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");

    // Revoked: the token and its refresh token are dead.
    let revoked = http.post(endpoint("revocation_endpoint")).form(&[("token", access.as_str())]).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    let (status, _) = server.call("GET", "/_matrix/client/v3/account/whoami", Some(&access), None).await;
    assert_eq!(status, 401);
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", tokens["refresh_token"].as_str().unwrap())];
    let response = http.post(endpoint("token_endpoint")).form(&refresh).send().await.unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn agents_see_and_end_their_sessions_on_the_account_page() {
    let (_provider, server) = setup().await;
    let (_, phone) = redeem(&server, &login_token(&server, "anne").await).await;
    let (_, laptop) = redeem(&server, &login_token(&server, "anne").await).await;
    let (_, bruno) = redeem(&server, &login_token(&server, "bruno").await).await;
    let (phone_device, laptop_device) = (phone["device_id"].as_str().unwrap(), laptop["device_id"].as_str().unwrap());
    let (_, metadata) = server.call("GET", "/_matrix/client/v1/auth_metadata", None, None).await;
    let account = metadata["account_management_uri"].as_str().unwrap().to_owned();
    assert!(metadata["account_management_actions_supported"].to_string().contains("org.matrix.session_end"));

    // Not signed in: the page sends the browser to the IAM first.
    let browser = Browser::default();
    let (status, _) = browser.get(&account).await;
    assert_eq!(status, 302);

    // Signed in as anne, the confirmation of her phone's sign-out is submitted; she lands
    // on her sessions, the phone signed out, the laptop not, bruno's session untouched.
    let end = format!("{account}?action=org.matrix.session_end&device_id={phone_device}");
    let done = format!("{account}?signed_out=");
    match browser.sign_in(&end, "anne", &done).await {
        Outcome::Redirected(url) => assert!(url.ends_with(phone_device), "{url}"),
        Outcome::Page(status, page) => panic!("stopped on a page ({status}): {page}"),
    }
    let whoami = async |session: &Value| {
        server.call("GET", "/_matrix/client/v3/account/whoami", session["access_token"].as_str(), None).await.0
    };
    assert_eq!(whoami(&phone).await, 401);
    assert_eq!(whoami(&laptop).await, 200);
    assert_eq!(whoami(&bruno).await, 200);
    let (status, page) = browser.get(&account).await;
    assert_eq!(status, 200);
    assert!(page.contains(laptop_device) && !page.contains(phone_device), "{page}");

    // A form that did not come from the page (no token, as another site would post) and
    // another user's device change nothing.
    let sign_out = format!("{account}/sign_out");
    let (status, _) = browser.post_form(&sign_out, &[("device_id", laptop_device)]).await;
    assert_eq!(status, 403);
    let (status, _) = Browser::default().post_form(&sign_out, &[("device_id", laptop_device), ("token", "x")]).await;
    assert_eq!(status, 403);
    let token = page.split("name=\"token\" value=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap();
    browser.post_form(&sign_out, &[("device_id", bruno["device_id"].as_str().unwrap()), ("token", token)]).await;
    assert_eq!(whoami(&laptop).await, 200);
    assert_eq!(whoami(&bruno).await, 200, "anne's page cannot end bruno's session");
}

#[tokio::test]
async fn a_trial_server_without_single_sign_on_signs_oauth_clients_in_with_a_password_page() {
    use matrix_sdk::utils::UrlOrQuery;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let server =
        TestServer::start_with(&[("MISSIVE_LISTEN", listen.as_str()), ("MISSIVE_PUBLIC_BASEURL", base.as_str())]).await;
    // The test browser types "any password" at every password field.
    let body = json!({ "username": "carol", "password": "any password", "auth": { "type": "m.login.dummy" } });
    let (status, _) = server.call("POST", "/_matrix/client/v3/register", None, Some(body)).await;
    assert_eq!(status, 200);

    let (client, registration) = oauth_client(&server).await;
    let redirect = reqwest::Url::parse(APP_REDIRECT).unwrap();
    let authorization = client.oauth().login(redirect, None, Some(registration), None).build().await.unwrap();

    // A wrong password shows the page again; the right one sends the browser back.
    let browser = Browser::default();
    let (status, page) = browser.get(authorization.url.as_str()).await;
    assert_eq!(status, 200, "{page}");
    let request = page.split("name=\"request\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
    let authorize = format!("{base}/_missive/oauth2/authorize");
    let (status, again) =
        browser.post_form(&authorize, &[("request", request), ("login", "carol"), ("password", "wrong")]).await;
    assert_eq!(status, 403, "{again}");
    let request = again.split("name=\"request\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
    let (status, _) = browser
        .post_form(&authorize, &[("request", "made-up"), ("login", "carol"), ("password", "any password")])
        .await;
    assert_eq!(status, 400);
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(&authorize)
        .form(&[("request", request), ("login", "carol"), ("password", "any password")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let back = response.headers()["location"].to_str().unwrap().to_owned();
    client.oauth().finish_login(UrlOrQuery::Url(reqwest::Url::parse(&back).unwrap())).await.expect("token exchange");
    assert_eq!(client.whoami().await.unwrap().user_id.as_str(), "@carol:localhost");
}
