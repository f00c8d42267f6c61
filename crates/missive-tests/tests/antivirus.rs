//! Every file is checked before it is delivered: sniffed type against the operator's lists,
//! and a real ClamAV daemon (with a signature database the test writes) over its socket;
//! encrypted attachments through the content scanner API, with the key in clear or sealed
//! to the server's key, and neither plaintext nor key left anywhere afterwards.

mod common;

use common::{
    TestServer,
    clamd::{Clamd, EICAR, INVENTED},
    files_under, register_admin,
};
use serde_json::{Value, json};

/// The server of a test, scanning with `clamd`, rescanning every second.
async fn scanning_server(clamd: &Clamd, extra: &[(&str, &str)]) -> TestServer {
    let socket = clamd.socket().display().to_string();
    let mut env = vec![
        ("MISSIVE_ANTIVIRUS__CLAMD", socket.as_str()),
        ("MISSIVE_ANTIVIRUS__RESCAN_INTERVAL_SECS", "1"),
        ("MISSIVE_ANTIVIRUS__TIMEOUT_SECS", "10"),
    ];
    env.extend_from_slice(extra);
    TestServer::start_with(&env).await
}

/// A raw request: status and body bytes.
async fn raw(
    server: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut request = reqwest::Client::new().request(method.parse().unwrap(), server.url(path)).bearer_auth(token);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// Uploads `bytes` and answers the status and body.
async fn upload(server: &TestServer, token: &str, content_type: &str, bytes: &[u8]) -> (u16, Value) {
    let (status, body) =
        raw(server, "POST", "/_matrix/media/v3/upload", token, Some(content_type), bytes.to_vec()).await;
    (status, json_of(&body))
}

/// The `server/id` of an `mxc://` URI.
fn mxc_path(uri: &str) -> String {
    uri.strip_prefix("mxc://").unwrap().to_owned()
}

async fn download(server: &TestServer, token: &str, uri: &str) -> (u16, Vec<u8>) {
    raw(server, "GET", &format!("/_matrix/client/v1/media/download/{}", mxc_path(uri)), token, None, vec![]).await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test]
async fn infected_uploads_are_refused_quarantined_and_never_served() {
    let clamd = Clamd::start();
    let server = scanning_server(&clamd, &[]).await;
    let (alice, alice_user) = server.client("alice").await;
    let bob = server.register("bob").await;
    let admin = register_admin(&server, "operator").await;

    // A clean document, through matrix-sdk, reaches another user.
    let report = b"ordre du jour: budget 2027, recrutements".to_vec();
    let clean = alice.media().upload(&mime::TEXT_PLAIN, report.clone(), None).await.unwrap().content_uri;
    let (status, body) = download(&server, &bob.access_token, clean.as_str()).await;
    assert_eq!((status, body), (200, report));

    // A picture and its thumbnail: scaled down, a real image of the size asked.
    let (status, picture) = upload(&server, &alice_user.access_token, "image/png", &png(1200, 900)).await;
    assert_eq!(status, 200, "{picture}");
    let picture = picture["content_uri"].as_str().unwrap().to_owned();
    let (status, thumbnail) = raw(
        &server,
        "GET",
        &format!("/_matrix/client/v1/media/thumbnail/{}?width=320&height=240&method=scale", mxc_path(&picture)),
        &bob.access_token,
        None,
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    let thumbnail = image::load_from_memory(&thumbnail).unwrap();
    assert_eq!((thumbnail.width(), thumbnail.height()), (320, 240));

    // The EICAR file and the test's invented one are refused with a clear error.
    for (name, bytes) in [("Missive.Test.EICAR", EICAR), ("Missive.Test.Invented", INVENTED)] {
        let (status, refusal) = upload(&server, &alice_user.access_token, "text/plain", bytes).await;
        assert_eq!(status, 403, "{refusal}");
        assert_eq!(refusal["errcode"], "M_FORBIDDEN");
        let message = refusal["error"].as_str().unwrap();
        assert!(message.contains("infected") && message.contains(name), "{message}");
    }

    // An infected file uploaded to a reserved ID is quarantined: never served, to the
    // uploader or anyone else, whole or as a thumbnail, nor through the content scanner.
    let (_, created) = raw(&server, "POST", "/_matrix/media/v1/create", &alice_user.access_token, None, vec![]).await;
    let reserved = json_of(&created)["content_uri"].as_str().unwrap().to_owned();
    let (status, _) = raw(
        &server,
        "PUT",
        &format!("/_matrix/media/v3/upload/{}", mxc_path(&reserved)),
        &alice_user.access_token,
        Some("application/pdf"),
        EICAR.to_vec(),
    )
    .await;
    assert_eq!(status, 403);
    for token in [&alice_user.access_token, &bob.access_token] {
        let (status, body) = download(&server, token, &reserved).await;
        assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
        assert!(!contains(&body, b"EICAR"));
        let (status, _) = raw(
            &server,
            "GET",
            &format!("/_matrix/client/v1/media/thumbnail/{}?width=32&height=32", mxc_path(&reserved)),
            token,
            None,
            vec![],
        )
        .await;
        assert_eq!(status, 404);
    }
    let scan_path = format!("/_matrix/media_proxy/unstable/scan/{}", mxc_path(&reserved));
    let (status, verdict) = raw(&server, "GET", &scan_path, &bob.access_token, None, vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&verdict)["clean"], false, "{}", json_of(&verdict));
    let proxy_download = format!("/_matrix/media_proxy/unstable/download/{}", mxc_path(&reserved));
    let (status, refusal) = raw(&server, "GET", &proxy_download, &bob.access_token, None, vec![]).await;
    assert_eq!((status, json_of(&refusal)["reason"].clone()), (403, json!("MCS_MEDIA_NOT_CLEAN")));
    let clean_scan = format!("/_matrix/media_proxy/unstable/scan/{}", mxc_path(clean.as_str()));
    let (_, verdict) = raw(&server, "GET", &clean_scan, &bob.access_token, None, vec![]).await;
    assert_eq!(json_of(&verdict)["clean"], true);

    // Operators see it: the user's media with verdicts, the antivirus's counts.
    let (status, listed) =
        server.call("GET", &format!("/_synapse/admin/v1/users/{}/media", alice_user.user_id), Some(&admin), None).await;
    assert_eq!(status, 200, "{listed}");
    let items = listed["media"].as_array().unwrap();
    let quarantined = items.iter().find(|m| reserved.ends_with(m["media_id"].as_str().unwrap())).unwrap();
    assert_eq!(quarantined["scan"]["verdict"], "infected");
    assert_eq!(quarantined["scan"]["detail"], "Missive.Test.EICAR.UNOFFICIAL");
    assert!(!quarantined["quarantined_by"].is_null());
    let (_, scans) = server.call("GET", "/_missive/admin/v1/media/scans", Some(&admin), None).await;
    assert!(scans["infected"].as_i64().unwrap() >= 1 && scans["clean"].as_i64().unwrap() >= 2, "{scans}");
    assert_eq!(scans["unscanned"], 0);
    let (status, _) = server.call("GET", "/_missive/admin/v1/media/scans", Some(&bob.access_token), None).await;
    assert_eq!(status, 403, "operators only");

    // An operator quarantines a clean file, then releases it; deletes another with its file.
    let quarantine = format!("/_synapse/admin/v1/media/quarantine/{}", mxc_path(clean.as_str()));
    assert_eq!(server.call("POST", &quarantine, Some(&admin), Some(json!({}))).await.0, 200);
    assert_eq!(download(&server, &bob.access_token, clean.as_str()).await.0, 404);
    let release = format!("/_synapse/admin/v1/media/unquarantine/{}", mxc_path(clean.as_str()));
    assert_eq!(server.call("POST", &release, Some(&admin), Some(json!({}))).await.0, 200);
    assert_eq!(download(&server, &bob.access_token, clean.as_str()).await.0, 200);
    let files_before = files_under(&server.data_dir().join("media")).len();
    let delete = format!("/_synapse/admin/v1/media/{}", mxc_path(clean.as_str()));
    let (status, deleted) = server.call("DELETE", &delete, Some(&admin), None).await;
    assert_eq!((status, deleted["total"].clone()), (200, json!(1)));
    assert_eq!(download(&server, &bob.access_token, clean.as_str()).await.0, 404);
    assert_eq!(files_under(&server.data_dir().join("media")).len(), files_before - 1, "the file went too");
}

#[tokio::test]
async fn encrypted_attachments_are_scanned_and_neither_plaintext_nor_key_is_kept() {
    let clamd = Clamd::start();
    let server = scanning_server(&clamd, &[]).await;
    let (alice, _) = server.client("alice").await;
    let bob = server.register("bob").await;
    let token = bob.access_token.clone();

    // Attachments encrypted as clients encrypt them (matrix-sdk: AES-256-CTR, JWK key).
    let document = b"PV de la commission, diffusion restreinte, version 3".to_vec();
    let clean = alice.upload_encrypted_file(&mut std::io::Cursor::new(document.clone())).await.unwrap();
    let infected = alice.upload_encrypted_file(&mut std::io::Cursor::new(EICAR.to_vec())).await.unwrap();
    let clean_file = serde_json::to_value(&clean).unwrap();
    let infected_file = serde_json::to_value(&infected).unwrap();

    // The key in clear: clean passes and the ciphertext comes back; EICAR is refused.
    let scan = |body: Value| {
        let server = &server;
        let token = token.clone();
        async move {
            let (status, body) = raw(
                server,
                "POST",
                "/_matrix/media_proxy/unstable/scan_encrypted",
                &token,
                Some("application/json"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
            (status, json_of(&body))
        }
    };
    let (status, verdict) = scan(json!({ "file": clean_file })).await;
    assert_eq!((status, verdict["clean"].clone()), (200, json!(true)), "{verdict}");
    let (status, verdict) = scan(json!({ "file": infected_file })).await;
    assert_eq!((status, verdict["clean"].clone()), (200, json!(false)), "{verdict}");
    let download_encrypted = |body: Value| {
        let server = &server;
        let token = token.clone();
        async move {
            raw(
                server,
                "POST",
                "/_matrix/media_proxy/unstable/download_encrypted",
                &token,
                Some("application/json"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await
        }
    };
    let (status, ciphertext) = download_encrypted(json!({ "file": clean_file })).await;
    assert_eq!(status, 200);
    use base64::Engine;
    use sha2::Digest;
    let hash = base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(&ciphertext));
    assert_eq!(json!(hash), clean_file["hashes"]["sha256"], "the ciphertext, as uploaded");
    let (status, refusal) = download_encrypted(json!({ "file": infected_file })).await;
    assert_eq!((status, json_of(&refusal)["reason"].clone()), (403, json!("MCS_MEDIA_NOT_CLEAN")));
    // Found infected once, the ciphertext is quarantined for everyone.
    assert_eq!(download(&server, &token, infected_file["url"].as_str().unwrap()).await.0, 404);

    // The key sealed to the server's curve25519 key, as Tchap's clients send it.
    let (status, key) = raw(&server, "GET", "/_matrix/media_proxy/unstable/public_key", &token, None, vec![]).await;
    assert_eq!(status, 200);
    let public_key = json_of(&key)["public_key"].as_str().unwrap().to_owned();
    let seal = |file: &Value| {
        let key = vodozemac::Curve25519PublicKey::from_base64(&public_key).unwrap();
        let message = vodozemac::pk_encryption::PkEncryption::from_key(key)
            .encrypt(serde_json::to_vec(&json!({ "file": file })).unwrap().as_slice())
            .unwrap();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
        let (ciphertext, mac, ephemeral) =
            (b64(&message.ciphertext), b64(&message.mac), message.ephemeral_key.to_base64());
        json!({ "encrypted_body": { "ciphertext": ciphertext, "mac": mac, "ephemeral": ephemeral } })
    };
    let other =
        alice.upload_encrypted_file(&mut std::io::Cursor::new(b"note interne, second fichier".to_vec())).await.unwrap();
    let other_file = serde_json::to_value(&other).unwrap();
    let (status, verdict) = scan(seal(&other_file)).await;
    assert_eq!((status, verdict["clean"].clone()), (200, json!(true)), "{verdict}");
    let sealed_eicar =
        serde_json::to_value(alice.upload_encrypted_file(&mut std::io::Cursor::new(EICAR.to_vec())).await.unwrap())
            .unwrap();
    let (status, verdict) = scan(seal(&sealed_eicar)).await;
    assert_eq!((status, verdict["clean"].clone()), (200, json!(false)), "{verdict}");

    // Bad input: each refused with the scanner's reason.
    let mut short_key = clean_file.clone();
    short_key["key"]["k"] = json!("c2hvcnQga2V5");
    let (status, refusal) = scan(json!({ "file": short_key })).await;
    assert_eq!((status, refusal["reason"].clone()), (400, json!("MCS_MEDIA_FAILED_TO_DECRYPT")));
    let mut wrong_hash = clean_file.clone();
    wrong_hash["hashes"]["sha256"] = other_file["hashes"]["sha256"].clone();
    let (status, refusal) = scan(json!({ "file": wrong_hash })).await;
    assert_eq!((status, refusal["reason"].clone()), (400, json!("MCS_MEDIA_FAILED_TO_DECRYPT")));
    let mut tampered = seal(&clean_file);
    tampered["encrypted_body"]["mac"] = json!("AAAAAAAAAAA");
    let (status, refusal) = scan(tampered).await;
    assert_eq!((status, refusal["reason"].clone()), (403, json!("MCS_BAD_DECRYPTION")));
    let (status, refusal) = raw(
        &server,
        "POST",
        "/_matrix/media_proxy/unstable/scan_encrypted",
        &token,
        Some("application/json"),
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!((status, json_of(&refusal)["reason"].clone()), (400, json!("MCS_MALFORMED_JSON")));
    let (status, _) = raw(&server, "POST", "/_matrix/media_proxy/unstable/scan_encrypted", "", None, vec![]).await;
    assert_eq!(status, 401);

    // Afterwards no plaintext and no key anywhere: files under the data directory (the
    // SQLite database among them), the database's tables, the server's log.
    let mut secrets: Vec<Vec<u8>> = vec![document.clone(), EICAR[..30].to_vec(), b"note interne".to_vec()];
    for file in [&clean_file, &infected_file, &other_file, &sealed_eicar] {
        let k = file["key"]["k"].as_str().unwrap();
        secrets.push(k.as_bytes().to_vec());
        secrets.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(k).unwrap());
    }
    let mut places: Vec<(String, Vec<u8>)> = files_under(server.data_dir())
        .into_iter()
        .map(|path| (path.display().to_string(), std::fs::read(&path).unwrap_or_default()))
        .collect();
    places.push(("log".into(), server.logs().into_bytes()));
    if server.is_postgres() {
        let tables =
            server.query_strings("SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()").await;
        places.push(("database".into(), server.dump_postgres(&tables).await.into_bytes()));
    }
    for (place, bytes) in &places {
        for secret in &secrets {
            assert!(!contains(bytes, secret), "{place} holds a plaintext or a key");
        }
    }
    drop(clamd);
}

#[tokio::test]
async fn unscanned_files_are_not_served_until_the_scanner_is_back() {
    let mut clamd = Clamd::start();
    let server = scanning_server(&clamd, &[]).await;
    let alice = server.register("alice").await;
    let admin = register_admin(&server, "operator").await;
    clamd.stop();

    // The upload is kept, acknowledged, and not served (fail closed) with a clear error.
    let (status, first) = upload(&server, &alice.access_token, "text/plain", b"scanned later").await;
    assert_eq!(status, 200, "{first}");
    let first = first["content_uri"].as_str().unwrap().to_owned();
    let (status, body) = download(&server, &alice.access_token, &first).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    let refusal = json_of(&body);
    assert!(refusal["error"].as_str().unwrap().contains("not been checked for viruses"), "{refusal}");
    let (status, infected) = upload(&server, &alice.access_token, "text/plain", EICAR).await;
    assert_eq!(status, 200, "the scanner is down: kept for later");
    let infected = infected["content_uri"].as_str().unwrap().to_owned();
    let (_, scans) = server.call("GET", "/_missive/admin/v1/media/scans", Some(&admin), None).await;
    assert_eq!(scans["unscanned"], 2, "{scans}");

    // Back: the sweep scans both without anyone asking; the clean one is served, the
    // infected one quarantined.
    clamd.start_again();
    common::until("the sweep scans what waited", async || {
        let (_, scans) = server.call("GET", "/_missive/admin/v1/media/scans", Some(&admin), None).await;
        (scans["unscanned"] == 0).then_some(())
    })
    .await;
    assert_eq!(download(&server, &alice.access_token, &first).await, (200, b"scanned later".to_vec()));
    assert_eq!(download(&server, &alice.access_token, &infected).await.0, 404);
}

#[tokio::test]
async fn spoofed_types_truncated_and_oversized_uploads_leave_nothing() {
    let server = TestServer::start_with(&[
        (
            "MISSIVE_MEDIA__DENIED_TYPES",
            "[\"application/vnd.microsoft.portable-executable\", \"application/x-msdownload\"]",
        ),
        ("MISSIVE_MEDIA__MAX_UPLOAD_SIZE", "100000"),
    ])
    .await;
    let alice = server.register("alice").await;
    let media_files = || files_under(&server.data_dir().join("media"));

    // A Windows executable declared as a PNG is known by its content.
    let mut executable = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00".to_vec();
    executable.resize(512, 0);
    executable[0x3c] = 0x80;
    executable.resize(0x80, 0);
    executable.extend_from_slice(b"PE\0\0\x4c\x01");
    executable.resize(1024, 0);
    let (status, refusal) = upload(&server, &alice.access_token, "image/png", &executable).await;
    assert_eq!(status, 403, "{refusal}");
    assert!(refusal["error"].as_str().unwrap().contains("not accepted"), "{refusal}");

    // Past the limit: the spec's 413, declared or not.
    let (status, refusal) = upload(&server, &alice.access_token, "text/plain", &vec![b'a'; 100_001]).await;
    assert_eq!((status, refusal["errcode"].clone()), (413, json!("M_TOO_LARGE")));

    // A body cut short of its declared length.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = server.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: text/plain\r\nContent-Length: 5000\r\n\r\n",
        alice.access_token
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&[b'x'; 1000]).await.unwrap();
    socket.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "a cut upload is not stored");

    assert!(media_files().is_empty(), "nothing was kept: {:?}", media_files());
    // A file of an allowed type still goes in.
    let (status, _) = upload(&server, &alice.access_token, "text/plain", b"ok").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn files_cross_servers_and_remote_files_are_scanned_here_too() {
    let clamd = Clamd::start();
    let socket = clamd.socket().display().to_string();
    // Police scans nothing; gov scans what it fetches.
    let mut peers = common::peers::Peers::start(&["police.test", "gov.test"], |i| match i {
        1 => vec![("MISSIVE_ANTIVIRUS__CLAMD".to_owned(), socket.clone())],
        _ => Vec::new(),
    })
    .await;
    let alice = peers.servers[0].register("alice").await;
    let (bob_client, bob) = peers.servers[1].client("bob").await;
    let (police, gov) = (&peers.servers[0], &peers.servers[1]);

    let note = b"note de service, a diffuser aux deux ministeres".to_vec();
    let (status, uploaded) = upload(police, &alice.access_token, "text/plain", &note).await;
    assert_eq!(status, 200, "{uploaded}");
    let note_uri = uploaded["content_uri"].as_str().unwrap().to_owned();
    let (_, picture) = upload(police, &alice.access_token, "image/png", &png(640, 480)).await;
    let picture = picture["content_uri"].as_str().unwrap().to_owned();
    let (status, infected) = upload(police, &alice.access_token, "text/plain", EICAR).await;
    assert_eq!(status, 200, "police has no antivirus");
    let infected = infected["content_uri"].as_str().unwrap().to_owned();

    // Bob, on gov, downloads police's file through his own server, with matrix-sdk.
    let request = matrix_sdk::media::MediaRequestParameters {
        source: matrix_sdk::ruma::events::room::MediaSource::Plain(note_uri.clone().into()),
        format: matrix_sdk::media::MediaFormat::File,
    };
    let fetched = bob_client.media().get_media_content(&request, false).await.unwrap();
    assert_eq!(fetched, note);
    let (status, thumbnail) = raw(
        gov,
        "GET",
        &format!("/_matrix/client/v1/media/thumbnail/{}?width=96&height=96&method=crop", mxc_path(&picture)),
        &bob.access_token,
        None,
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    let thumbnail = image::load_from_memory(&thumbnail).unwrap();
    assert_eq!((thumbnail.width(), thumbnail.height()), (96, 96));
    // What gov fetched is scanned there: the infected file is never served by gov.
    let (status, _) = download(gov, &bob.access_token, &infected).await;
    assert_eq!(status, 404);
    let (status, verdict) = raw(
        gov,
        "GET",
        &format!("/_matrix/media_proxy/unstable/scan/{}", mxc_path(&infected)),
        &bob.access_token,
        None,
        vec![],
    )
    .await;
    assert_eq!(json_of(&verdict)["clean"], false, "{status}");

    // Peers must sign: an unsigned request for police's media is refused.
    let media_id = note_uri.rsplit('/').next().unwrap();
    let (status, _) =
        police.call("GET", &format!("/_matrix/federation/v1/media/download/{media_id}"), None, None).await;
    assert_eq!(status, 401);

    // Fetched once, kept: gov serves it with police stopped.
    peers.servers[0].stop();
    let (status, body) = download(&peers.servers[1], &bob.access_token, &note_uri).await;
    assert_eq!((status, body), (200, note));
}
