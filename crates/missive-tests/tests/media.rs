//! The media repository: uploads and authenticated downloads with real matrix-sdk clients
//! and on the wire (headers, ranges, limits), files stored once per content.

mod common;

use common::TestServer;
use matrix_sdk::{
    media::{MediaFormat, MediaRequestParameters},
    ruma::{OwnedMxcUri, events::room::MediaSource},
};
use serde_json::Value;

/// Files under the server's media folder (the stored contents, not uploads in progress).
fn stored_files(server: &TestServer) -> Vec<std::path::PathBuf> {
    common::files_under(&server.data_dir().join("media"))
}

/// A raw request with a body and headers: status, headers and body bytes.
async fn raw(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new().request(method.parse().unwrap(), server.url(path)).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn clients_upload_and_download_files_stored_once_per_content() {
    let server = TestServer::start().await;
    let (alice, _) = server.client("alice").await;
    let (bob, _) = server.client("bob").await;
    let report = b"compte rendu de la reunion du lundi".to_vec();
    let first = alice.media().upload(&mime::TEXT_PLAIN, report.clone(), None).await.unwrap().content_uri;
    let second = alice.media().upload(&mime::TEXT_PLAIN, report.clone(), None).await.unwrap().content_uri;
    assert_ne!(first, second, "each upload has its own ID");
    assert_eq!(stored_files(&server).len(), 1, "identical files are stored once");

    // Bob downloads it through the authenticated endpoint matrix-sdk uses.
    let request = MediaRequestParameters { source: MediaSource::Plain(first.clone()), format: MediaFormat::File };
    let bytes = bob.media().get_media_content(&request, false).await.unwrap();
    assert_eq!(bytes, report);
    let unknown: OwnedMxcUri = "mxc://localhost/nosuchmedia0000000000000".into();
    let request = MediaRequestParameters { source: MediaSource::Plain(unknown), format: MediaFormat::File };
    assert!(bob.media().get_media_content(&request, false).await.is_err());
}

#[tokio::test]
async fn downloads_carry_safe_headers_ranges_and_the_limits_hold() {
    let server = TestServer::start_with(&[("MISSIVE_MEDIA__MAX_UPLOAD_SIZE", "1000")]).await;
    let alice = server.register("alice").await;
    let token = Some(alice.access_token.as_str());
    let (_, _, config) = raw(&server, "GET", "/_matrix/client/v1/media/config", token, &[], Vec::new()).await;
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["m.upload.size"], 1000);

    // An HTML page is served as an attachment, sandboxed; a PNG inline.
    let page = b"<html><script>alert(1)</script></html>".to_vec();
    let (status, _, body) = raw(
        &server,
        "POST",
        "/_matrix/media/v3/upload?filename=page.html",
        token,
        &[("content-type", "text/html")],
        page.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let uri: Value = serde_json::from_slice(&body).unwrap();
    let id = uri["content_uri"].as_str().unwrap().strip_prefix("mxc://localhost/").unwrap().to_owned();
    let download = format!("/_matrix/client/v1/media/download/localhost/{id}");
    let (status, headers, body) = raw(&server, "GET", &download, token, &[], Vec::new()).await;
    assert_eq!((status, body), (200, page.clone()));
    assert_eq!(headers["content-type"], "text/html");
    assert_eq!(headers["content-disposition"], "attachment; filename*=utf-8''page.html");
    assert!(headers["content-security-policy"].to_str().unwrap().starts_with("sandbox"));
    assert_eq!(headers["cross-origin-resource-policy"], "cross-origin");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let (_, headers, _) = raw(&server, "GET", &format!("{download}/renamed.txt"), token, &[], Vec::new()).await;
    assert_eq!(headers["content-disposition"], "attachment; filename*=utf-8''renamed.txt");

    // A range, as a player seeking in a video asks; one past the end is refused.
    let (status, headers, body) = raw(&server, "GET", &download, token, &[("range", "bytes=6-13")], Vec::new()).await;
    assert_eq!((status, body.as_slice()), (206, &page[6..14]));
    assert_eq!(headers["content-range"], format!("bytes 6-13/{}", page.len()));
    let (status, headers, _) = raw(&server, "GET", &download, token, &[("range", "bytes=500-")], Vec::new()).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], format!("bytes */{}", page.len()));

    // Without a token nothing is served; the frozen unauthenticated path is off.
    let (status, _, _) = raw(&server, "GET", &download, None, &[], Vec::new()).await;
    assert_eq!(status, 401);
    let legacy = format!("/_matrix/media/v3/download/localhost/{id}");
    let (status, _, body) = raw(&server, "GET", &legacy, None, &[], Vec::new()).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));

    // Too large, declared or not: 413, and no file is left behind.
    let before = stored_files(&server).len();
    let big = vec![7u8; 1500];
    let (status, _, body) = raw(
        &server,
        "POST",
        "/_matrix/media/v3/upload",
        token,
        &[("content-type", "application/octet-stream")],
        big.clone(),
    )
    .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, body["errcode"].as_str()), (413, Some("M_TOO_LARGE")));
    let chunks =
        futures_util::stream::iter(big.chunks(100).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
    let streamed = reqwest::Client::new()
        .post(server.url("/_matrix/media/v3/upload"))
        .bearer_auth(&alice.access_token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413, "an upload without a length is cut at the limit");
    assert_eq!(stored_files(&server).len(), before);
    let (status, _, _) = raw(&server, "POST", "/_matrix/media/v3/upload", None, &[], b"x".to_vec()).await;
    assert_eq!(status, 401);
}

/// A PNG of the given size, a gradient (so that scaling has something to average).
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test]
async fn images_get_thumbnails_of_the_sizes_asked_and_other_files_none() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let token = Some(alice.access_token.as_str());
    let upload = async |bytes: Vec<u8>, content_type: &str| {
        let (status, _, body) =
            raw(&server, "POST", "/_matrix/media/v3/upload", token, &[("content-type", content_type)], bytes).await;
        assert_eq!(status, 200);
        let body: Value = serde_json::from_slice(&body).unwrap();
        body["content_uri"].as_str().unwrap().strip_prefix("mxc://localhost/").unwrap().to_owned()
    };
    let photo = upload(png(1200, 800), "image/png").await;
    let thumbnail = |id: &str, query: &str| format!("/_matrix/client/v1/media/thumbnail/localhost/{id}?{query}");
    let decode = |bytes: &[u8]| image::load_from_memory(bytes).unwrap();

    // Crop: the smallest standard size covering the request, filled.
    let (status, headers, body) =
        raw(&server, "GET", &thumbnail(&photo, "width=30&height=30&method=crop"), token, &[], Vec::new()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "image/jpeg");
    let small = decode(&body);
    assert_eq!((small.width(), small.height()), (32, 32));
    // Scale: fits inside 320x240, the aspect kept; asked again, the kept file answers.
    let (_, _, body) =
        raw(&server, "GET", &thumbnail(&photo, "width=300&height=200&method=scale"), token, &[], Vec::new()).await;
    let scaled = decode(&body);
    assert_eq!((scaled.width(), scaled.height()), (320, 213));
    let files = stored_files(&server).len();
    let (_, _, again) =
        raw(&server, "GET", &thumbnail(&photo, "width=300&height=200&method=scale"), token, &[], Vec::new()).await;
    assert_eq!(again, body);
    assert_eq!(stored_files(&server).len(), files, "the thumbnail is made once");
    // Never larger than the original.
    let icon = upload(png(20, 10), "image/png").await;
    let (_, _, body) = raw(&server, "GET", &thumbnail(&icon, "width=640&height=480"), token, &[], Vec::new()).await;
    let kept = decode(&body);
    assert_eq!((kept.width(), kept.height()), (20, 10));

    // A file that is no image, bad sizes, no token.
    let text = upload(b"pas une image".to_vec(), "text/plain").await;
    let (status, _, body) = raw(&server, "GET", &thumbnail(&text, "width=32&height=32"), token, &[], Vec::new()).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN")), "{body}");
    for query in ["height=32", "width=0&height=32", "width=a&height=32", "width=32&height=32&method=stretch"] {
        let (status, _, _) = raw(&server, "GET", &thumbnail(&photo, query), token, &[], Vec::new()).await;
        assert_eq!(status, 400, "{query}");
    }
    let (status, _, _) = raw(&server, "GET", &thumbnail(&photo, "width=32&height=32"), None, &[], Vec::new()).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_reserved_media_id_is_uploaded_once_by_its_creator_and_waited_for() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (status, _, body) =
        raw(&server, "POST", "/_matrix/media/v1/create", Some(&alice.access_token), &[], Vec::new()).await;
    assert_eq!(status, 200);
    let created: Value = serde_json::from_slice(&body).unwrap();
    assert!(created["unused_expires_at"].as_i64().is_some());
    let id = created["content_uri"].as_str().unwrap().strip_prefix("mxc://localhost/").unwrap().to_owned();
    let put = format!("/_matrix/media/v3/upload/localhost/{id}");
    let download = format!("/_matrix/client/v1/media/download/localhost/{id}");

    // Not uploaded yet: a download waits, then says so.
    let (status, _, body) =
        raw(&server, "GET", &format!("{download}?timeout_ms=300"), Some(&bob.access_token), &[], Vec::new()).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, body["errcode"].as_str()), (504, Some("M_NOT_YET_UPLOADED")));
    // A waiting download gets the content as soon as it arrives.
    let waiting = {
        let url = server.url(&format!("{download}?timeout_ms=20000"));
        let token = bob.access_token.clone();
        tokio::spawn(async move {
            reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().bytes().await.unwrap()
        })
    };
    // Only its creator uploads it, once.
    let (status, _, _) =
        raw(&server, "PUT", &put, Some(&bob.access_token), &[("content-type", "text/plain")], b"x".to_vec()).await;
    assert_eq!(status, 403);
    let (status, _, _) = raw(
        &server,
        "PUT",
        &put,
        Some(&alice.access_token),
        &[("content-type", "text/plain")],
        b"ordre du jour".to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(waiting.await.unwrap().as_ref(), b"ordre du jour");
    let (status, _, body) = raw(&server, "PUT", &put, Some(&alice.access_token), &[], b"autre".to_vec()).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, body["errcode"].as_str()), (409, Some("M_CANNOT_OVERWRITE_MEDIA")));
    let (status, _, _) = raw(
        &server,
        "PUT",
        "/_matrix/media/v3/upload/localhost/unknown000000000000000",
        Some(&alice.access_token),
        &[],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(status, 404);

    // A user holds a bounded number of reservations.
    let mut statuses = Vec::new();
    for _ in 0..11 {
        statuses
            .push(raw(&server, "POST", "/_matrix/media/v1/create", Some(&bob.access_token), &[], Vec::new()).await.0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10);
    assert_eq!(statuses.last(), Some(&429));
}

#[tokio::test]
async fn a_user_quota_stops_uploads_past_it_and_keeps_nothing() {
    let server = TestServer::start_with(&[("MISSIVE_MEDIA__USER_QUOTA_BYTES", "100")]).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let upload = async |token: &str, bytes: Vec<u8>| {
        let (status, _, body) = raw(&server, "POST", "/_matrix/media/v3/upload", Some(token), &[], bytes).await;
        (status, serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null))
    };
    assert_eq!(upload(&alice.access_token, vec![1; 60]).await.0, 200);
    let files = stored_files(&server).len();
    let (status, body) = upload(&alice.access_token, vec![2; 60]).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    assert_eq!(stored_files(&server).len(), files, "nothing kept of the refused upload");
    assert_eq!(upload(&alice.access_token, vec![3; 40]).await.0, 200, "what is left of the quota");
    let (status, _) = upload(&alice.access_token, vec![4; 1]).await;
    assert_eq!(status, 403);
    assert_eq!(upload(&bob.access_token, vec![5; 60]).await.0, 200, "each user has their own quota");
}

/// A small web site on loopback: a page with OpenGraph tags, and a redirect to the same
/// page by address. Answers how many requests it served.
async fn web_site() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut request = vec![0u8; 4096];
            let n = socket.read(&mut request).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&request[..n]).to_string();
            let answer = if request.starts_with("GET /redirect ") {
                format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/page\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            } else {
                let page = "<html><head><title>Intranet du ministere</title>\
                    <meta property=\"og:description\" content=\"Annuaire et notes de service\">\
                    <meta property=\"og:image\" content=\"http://127.0.0.1/tracker.png\"></head><body>x</body></html>";
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                )
            };
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    (port, served)
}

#[tokio::test]
async fn url_previews_are_off_by_default_and_reach_only_listed_sites_and_ranges() {
    let (port, served) = web_site().await;
    let page = format!("http://localhost:{port}/page");
    let preview = |server: &TestServer, token: String, url: String| {
        let path = format!("/_matrix/client/v1/media/preview_url?url={}", url.replace(':', "%3A").replace('/', "%2F"));
        let server_url = server.url(&path);
        async move {
            let response = reqwest::Client::new().get(server_url).bearer_auth(token).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Off by default: as if the endpoint did not exist, and nothing is fetched.
    let plain = TestServer::start().await;
    let alice = plain.register("alice").await;
    let (status, body) = preview(&plain, alice.access_token.clone(), page.clone()).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")), "{body}");

    // A listed site on a private address: refused unless the operator allows the range.
    let listed = TestServer::start_with(&[("MISSIVE_MEDIA__URL_PREVIEW_DOMAINS", "[\"localhost\"]")]).await;
    let bob = listed.register("bob").await;
    let (status, body) = preview(&listed, bob.access_token.clone(), page.clone()).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing fetched");

    let intranet = TestServer::start_with(&[
        ("MISSIVE_MEDIA__URL_PREVIEW_DOMAINS", "[\"localhost\"]"),
        ("MISSIVE_MEDIA__URL_PREVIEW_ALLOWED_RANGES", "[\"127.0.0.0/8\"]"),
    ])
    .await;
    let carol = intranet.register("carol").await;
    let (status, body) = preview(&intranet, carol.access_token.clone(), page.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["og:title"], "Intranet du ministere");
    assert_eq!(body["og:description"], "Annuaire et notes de service");
    assert!(body.get("og:image").is_none(), "images are not fetched: {body}");
    // A site not listed, named by address or reached by a redirect, is not fetched.
    let before = served.load(std::sync::atomic::Ordering::SeqCst);
    let (status, _) = preview(&intranet, carol.access_token.clone(), format!("http://127.0.0.1:{port}/page")).await;
    assert_eq!(status, 403);
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), before);
    let (status, _) = preview(&intranet, carol.access_token.clone(), format!("http://localhost:{port}/redirect")).await;
    assert_eq!(status, 403, "the redirect leads to a site not listed");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), before + 1, "only the redirect was fetched");
    let (status, body) = preview(&intranet, carol.access_token.clone(), "file:///etc/passwd".into()).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
}
