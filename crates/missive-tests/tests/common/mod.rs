//! The test kit: start a real `missive` process on a free port with a fresh database
//! (SQLite by default; PostgreSQL when `MISSIVE_TEST_POSTGRES` names a server), register
//! users, and build `matrix-sdk` clients against it.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use matrix_sdk::{
    Client,
    config::{RequestConfig, SyncSettings},
    ruma::api::client::{filter::FilterDefinition, sync::sync_events},
};
use serde_json::{Value, json};

pub mod clamd;
pub mod gateway;
pub mod oidc;
pub mod peers;
pub mod smtp;
pub mod synapse;

/// Where the PostgreSQL test databases are created, e.g. `postgres://postgres@127.0.0.1:5432`.
const POSTGRES_ENV: &str = "MISSIVE_TEST_POSTGRES";

/// A homeserver as its clients see it: where it listens and what it is called. Missive
/// under test and Synapse alike are driven through it.
#[derive(Clone, Debug, Default)]
pub struct Endpoint {
    pub base_url: String,
    pub server_name: String,
}

/// A running server under test.
pub struct TestServer {
    child: Option<Child>,
    endpoint: Endpoint,
    data_dir: tempfile::TempDir,
    database_url: Option<String>,
    extra_env: Vec<(String, String)>,
}

/// A registered user with an access token.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub user_id: String,
    pub password: String,
    pub access_token: String,
    pub device_id: String,
}

impl TestServer {
    /// Starts a server with a fresh database.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts a server with extra `MISSIVE_*` settings.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let database_url = match std::env::var(POSTGRES_ENV) {
            Ok(base) if !base.is_empty() => Some(fresh_postgres_database(&base).await),
            _ => None,
        };
        let server_name = env.iter().find(|(k, _)| *k == "MISSIVE_SERVER_NAME").map_or("localhost", |(_, v)| v);
        let mut server = TestServer {
            child: None,
            endpoint: Endpoint { base_url: String::new(), server_name: server_name.into() },
            data_dir,
            database_url,
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        server.spawn();
        server
    }

    /// Path of the server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.path().join("server.log")
    }

    /// The server's data directory.
    #[allow(dead_code)]
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// Path of the SQLite database, when SQLite is in use.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self.database_url.is_none().then(|| self.data_dir.path().join("missive.db"))
    }

    /// The database URL the server uses.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.path().join("missive.db").display()))
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_missive-under-test"));
        for (key, _) in std::env::vars() {
            if key.starts_with("MISSIVE_") {
                cmd.env_remove(key);
            }
        }
        // Reuse the port across restarts so clients keep working.
        let listen = match self.base_url.strip_prefix("http://") {
            Some(addr) => addr.to_owned(),
            None => "127.0.0.1:0".to_owned(),
        };
        cmd.env("MISSIVE_SERVER_NAME", &self.server_name)
            .env("MISSIVE_LISTEN", listen)
            .env("MISSIVE_DATA_DIR", self.data_dir.path())
            .env("MISSIVE_RATE_LIMITS__ENABLED", "false")
            .env("MISSIVE_REGISTRATION_SHARED_SECRET", "test-secret")
            .env("MISSIVE_PASSWORD_HASHING__MEMORY_KIB", "1024")
            .env("MISSIVE_PASSWORD_HASHING__ITERATIONS", "1")
            .env("MISSIVE_LOG", "info,missive=debug")
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(url) = &self.database_url {
            cmd.env("MISSIVE_DATABASE_URL", url);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start missive");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read startup line");
        let url = line
            .trim()
            .strip_prefix("missive listening on ")
            .unwrap_or_else(|| panic!("server did not start: {line:?}; log: {}", self.logs()))
            .to_owned();
        self.endpoint.base_url = url;
        self.child = Some(child);
    }

    /// The server's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server with SIGKILL: no graceful shutdown, nothing flushed by us.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("send SIGTERM");
        child.wait().expect("wait for exit")
    }

    /// Starts the server again on the same data and port.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// Changes one `MISSIVE_*` setting for the server's next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts again after a kill.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Whether the server under test runs on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.database_url().starts_with("postgres")
    }

    /// Runs SQL statements against the server's database behind its back (to provoke
    /// failures the server must survive).
    pub async fn execute(&self, sql: &'static str) {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.database_url()).await.expect("connect to test db");
        sqlx::raw_sql(sql).execute(&mut conn).await.expect("execute");
    }

    /// Runs one SQL query against the server's database and returns the first column as text.
    pub async fn query_strings(&self, sql: &'static str) -> Vec<String> {
        use sqlx::{Connection, Row};
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.database_url()).await.expect("connect to test db");
        let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("query");
        rows.iter().map(|r| r.try_get::<String, _>(0).unwrap_or_default()).collect()
    }
}

impl TestServer {
    /// Every row of the given PostgreSQL tables, as JSON text.
    pub async fn dump_postgres(&self, tables: &[String]) -> String {
        use sqlx::{Connection, Row};
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.database_url()).await.expect("connect to test db");
        let mut dump = String::new();
        for table in tables {
            let sql = format!("SELECT row_to_json(t)::text FROM \"{table}\" t");
            for row in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await.expect("dump table") {
                dump.push_str(&row.try_get::<String, _>(0).unwrap_or_default());
                dump.push('\n');
            }
        }
        dump
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl std::ops::Deref for TestServer {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Endpoint {
    /// An HTTP URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Registers a user through `/register` with the dummy stage, as a client would.
    pub async fn register(&self, localpart: &str) -> TestUser {
        let http = reqwest::Client::new();
        let password = format!("{localpart}-password");
        let body = json!({ "username": localpart, "password": password, "auth": { "type": "m.login.dummy" } });
        let res: Value = http
            .post(self.url("/_matrix/client/v3/register"))
            .json(&body)
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("register body");
        TestUser {
            user_id: res["user_id"].as_str().unwrap_or_else(|| panic!("register failed: {res}")).to_owned(),
            access_token: res["access_token"].as_str().unwrap().to_owned(),
            device_id: res["device_id"].as_str().unwrap().to_owned(),
            password,
        }
    }

    /// Registers a user and logs a `matrix-sdk` client in as them.
    pub async fn client(&self, localpart: &str) -> (Client, TestUser) {
        let user = self.register(localpart).await;
        let client = self.login(&user).await;
        (client, user)
    }

    /// Logs a new `matrix-sdk` client (a new device) in as an existing user.
    pub async fn login(&self, user: &TestUser) -> Client {
        // No retries: a server error must fail the test at once, not after minutes of backoff.
        let client = Client::builder()
            .homeserver_url(&self.base_url)
            .request_config(RequestConfig::new().disable_retry())
            .build()
            .await
            .expect("build client");
        client
            .matrix_auth()
            .login_username(&user.user_id, &user.password)
            .initial_device_display_name("missive test")
            .await
            .expect("login");
        client
    }

    /// A raw HTTP request with an access token; returns status and JSON body.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let http = reqwest::Client::new();
        let mut req = http.request(method.parse().expect("method"), self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Creates a room with the given createRoom body as `token`'s user; returns its ID.
    pub async fn create_room(&self, token: &str, body: Value) -> String {
        let (status, body) = self.call("POST", "/_matrix/client/v3/createRoom", Some(token), Some(body)).await;
        assert_eq!(status, 200, "{body}");
        body["room_id"].as_str().unwrap().to_owned()
    }

    /// Sends a message event as `token`'s user; returns its event ID.
    pub async fn send_message(&self, token: &str, room_id: &str, content: Value) -> String {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{}", rand::random::<u64>());
        let (status, body) = self.call("PUT", &path, Some(token), Some(content)).await;
        assert_eq!(status, 200, "{body}");
        body["event_id"].as_str().unwrap().to_owned()
    }

    /// Changes `token`'s user's membership of a room (`join`, `leave`, `invite` with a
    /// `user_id` body, ...) and asserts it succeeded.
    pub async fn membership(&self, token: &str, room_id: &str, action: &str, body: Value) {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/{action}");
        let (status, body) = self.call("POST", &path, Some(token), Some(body)).await;
        assert_eq!(status, 200, "{action}: {body}");
    }

    /// Sets a state event with an empty state key as `token`'s user; returns its event ID.
    pub async fn put_state(&self, token: &str, room_id: &str, kind: &str, content: Value) -> String {
        let path = format!("/_matrix/client/v3/rooms/{room_id}/state/{kind}/");
        let (status, body) = self.call("PUT", &path, Some(token), Some(content)).await;
        assert_eq!(status, 200, "{body}");
        body["event_id"].as_str().unwrap().to_owned()
    }

    /// A raw request with a raw body.
    pub async fn call_raw(&self, method: &str, path: &str, token: Option<&str>, body: &'static str) -> (u16, Value) {
        let http = reqwest::Client::new();
        let mut req = http.request(method.parse().expect("method"), self.url(path)).body(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

async fn fresh_postgres_database(base: &str) -> String {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let name = format!("missive_test_{}", rand::random::<u64>());
    let admin_url = format!("{}/postgres", base.trim_end_matches('/'));
    let mut conn = sqlx::AnyConnection::connect(&admin_url).await.expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    format!("{}/{name}", base.trim_end_matches('/'))
}

/// Syncs `client` (timeline limit 50 per room) until `step` says the accumulated responses
/// are enough, or panics after 20 s.
pub async fn sync_until<T>(
    client: &Client,
    mut state: T,
    mut step: impl FnMut(&mut T, &matrix_sdk::sync::SyncResponse) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut filter = FilterDefinition::default();
        filter.room.timeline.limit = Some(50u32.into());
        let settings = SyncSettings::default()
            .timeout(Duration::from_millis(500))
            .filter(sync_events::v3::Filter::FilterDefinition(filter));
        let response = client.sync_once(settings).await.expect("sync");
        if step(&mut state, &response) {
            return state;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not reached by sync within 20 s");
    }
}

/// Polls `probe` until it answers, or panics after 30 s naming `what`.
pub async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "not reached within 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A room's current state as `token`'s user reads it on `server`: (type, state key) to
/// event ID.
pub async fn state_map(
    server: &Endpoint,
    token: &str,
    room_id: &str,
) -> std::collections::BTreeMap<(String, String), String> {
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state");
    let (status, body) = server.call("GET", &path, Some(token), None).await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("state array")
        .iter()
        .map(|e| {
            let key = (e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap().to_owned());
            (key, e["event_id"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// The raw JSON of a timeline event.
pub fn raw_json(event: &matrix_sdk::deserialized_responses::TimelineEvent) -> Value {
    serde_json::from_str(event.raw().json().get()).expect("event JSON")
}

/// The body of a message event (decrypted by the client when it was encrypted).
pub fn body_of(event: &Value) -> Option<String> {
    event["content"]["body"].as_str().map(str::to_owned)
}

/// Syncs `client` until a message with body `text` arrives in `room_id`.
pub async fn receive_text(client: &Client, room_id: &matrix_sdk::ruma::OwnedRoomId, text: &str) {
    sync_until(client, (), |_, r| {
        r.rooms
            .joined
            .get(room_id)
            .is_some_and(|u| u.timeline.events.iter().any(|e| body_of(&raw_json(e)).as_deref() == Some(text)))
    })
    .await;
}

/// Registers a server admin through the shared-secret endpoint (HMAC computed by python3,
/// independently of the server) and returns their access token.
pub async fn register_admin(server: &TestServer, localpart: &str) -> String {
    let (_, nonce) = server.call("GET", "/_synapse/admin/v1/register", None, None).await;
    let nonce = nonce["nonce"].as_str().expect("nonce").to_owned();
    let script = format!(
        "import hmac,hashlib,sys; print(hmac.new(b'test-secret', sys.argv[1].encode()+b'\\x00{localpart}\\x00pw\\x00admin', hashlib.sha1).hexdigest())"
    );
    let mac = Command::new("python3").args(["-c", &script, &nonce]).output().expect("python3");
    let mac = String::from_utf8(mac.stdout).unwrap().trim().to_owned();
    let body = json!({ "nonce": nonce, "username": localpart, "password": "pw", "admin": true, "mac": mac });
    let (status, res) = server.call("POST", "/_synapse/admin/v1/register", None, Some(body)).await;
    assert_eq!(status, 200, "{res}");
    res["access_token"].as_str().unwrap().to_owned()
}

/// Every file under a directory, recursively (none if it does not exist).
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The server's binary as a command (`missive admin …`, `check-config`), without the
/// test's own `MISSIVE_*` settings (`MISSIVE_TEST_POSTGRES`), which are no config keys.
pub fn missive_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_missive-under-test"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MISSIVE_")) {
        command.env_remove(key);
    }
    command
}
