//! `missive-bench`: a load generator that speaks only the Matrix client-server API, so the
//! same scenarios run against Missive and Synapse. Users are created through shared-secret
//! registration (`/_synapse/admin/v1/register`), which both servers implement.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures_util::future::try_join_all;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};

/// What to run and how big.
#[derive(Debug, Clone, clap::Parser)]
pub struct Options {
    /// Base URL of the homeserver.
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    pub url: String,
    /// Shared registration secret of the homeserver.
    #[arg(long, default_value = "bench-secret")]
    pub secret: String,
    /// Label printed with every result (e.g. `missive-sqlite`).
    #[arg(long, default_value = "server")]
    pub label: String,
    /// PID of the server process, to read its resident memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Scenarios to run (comma-separated): send (= send_1,send_16), wakeup, initial_sync,
    /// members, e2ee, many_users, sliding_sync, push, paced, purge, sector_day.
    #[arg(
        long,
        default_value = "send,wakeup,initial_sync,members,e2ee,many_users,sliding_sync,push,paced,purge,sector_day"
    )]
    pub scenarios: String,
    /// Messages per sender configuration in the send scenario (enough for the server's CPU
    /// time, read in 10 ms ticks, to be measured to a few percent).
    #[arg(long, default_value_t = 2000)]
    pub messages: usize,
    /// Round trips in the wake-up scenario.
    #[arg(long, default_value_t = 100)]
    pub wakeups: usize,
    /// Rooms in the initial sync scenario.
    #[arg(long, default_value_t = 300)]
    pub rooms: usize,
    /// Messages per room in the initial sync scenario.
    #[arg(long, default_value_t = 5)]
    pub room_messages: usize,
    /// Members of the big room.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Devices in the to-device fan-out.
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// Rooms of the user in the sliding sync scenario.
    #[arg(long, default_value_t = 1000)]
    pub sliding_rooms: usize,
    /// Updates measured in the sliding sync scenario.
    #[arg(long, default_value_t = 50)]
    pub sliding_updates: usize,
    /// Users registered (and connected once each) in the many-users memory scenario.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Base URL of a second homeserver federating with the first (federation scenario).
    #[arg(long)]
    pub peer_url: Option<String>,
    /// Shared registration secret of the second homeserver.
    #[arg(long, default_value = "bench-secret")]
    pub peer_secret: String,
    /// PID of the second server's process.
    #[arg(long)]
    pub peer_pid: Option<u32>,
    /// Registered users of the sector_day scenario, each holding a long-polling /sync.
    #[arg(long, default_value_t = 1000)]
    pub sector_users: usize,
    /// Rooms of the sector_day scenario (2 to 500 members, a few large ones).
    #[arg(long, default_value_t = 200)]
    pub sector_rooms: usize,
    /// Messages per second in the sector_day scenario, spread over random rooms and members.
    #[arg(long, default_value_t = 50)]
    pub sector_rate: u64,
    /// Seconds the sector_day scenario sends for.
    #[arg(long, default_value_t = 120)]
    pub sector_secs: u64,
    /// Messages of the room whose history the purge scenario purges.
    #[arg(long, default_value_t = 5000)]
    pub purge_messages: usize,
    /// Messages sent 20 ms apart to measure remote delivery latency (federation scenario).
    #[arg(long, default_value_t = 200)]
    pub paced: usize,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub server: String,
    pub scenario: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct User {
    pub user_id: String,
    pub token: String,
}

/// A client for one homeserver.
#[derive(Clone)]
pub struct Bench {
    http: reqwest::Client,
    opts: Arc<Options>,
    run_id: String,
    counter: Arc<std::sync::atomic::AtomicU64>,
}

/// Big rooms of the federation scenario, each joined by one remote user.
const REMOTE_JOINS: usize = 3;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Waits until every one of `sent` reached the reader, or none arrived for 10 s (a
/// server that falls behind may send only a room's latest events once it catches up, as
/// Synapse does: the others never reach the reader's sync). Returns how many arrived and
/// when the last did.
async fn settle(
    arrivals: &std::sync::Mutex<HashMap<String, Instant>>,
    sent: &[String],
    started: Instant,
) -> (usize, Instant) {
    loop {
        let (delivered, last) = {
            let seen = arrivals.lock().expect("arrivals");
            let times: Vec<Instant> = sent.iter().filter_map(|b| seen.get(b).copied()).collect();
            (times.len(), times.into_iter().max())
        };
        let quiet = last.unwrap_or(started).elapsed() > Duration::from_secs(10);
        if delivered == sent.len() || quiet || started.elapsed() > Duration::from_secs(600) {
            return (delivered, last.unwrap_or(started));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Bench {
    /// A bench against `opts.url`.
    pub fn new(opts: Options) -> Result<Self> {
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).timeout(Duration::from_secs(120)).build()?;
        let run_id = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis());
        Ok(Self { http, opts: Arc::new(opts), run_id, counter: Default::default() })
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn figure(&self, scenario: &str, metric: &str, value: f64, unit: &str) -> Figure {
        let f = Figure {
            server: self.opts.label.clone(),
            scenario: scenario.into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
        };
        println!("{}", serde_json::to_string(&f).unwrap_or_default());
        f
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.opts.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = res.status();
        let value: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }

    async fn get(&self, path: &str, token: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(token), Some(&body)).await
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::PUT, path, Some(token), Some(&body)).await
    }

    /// Registers a fresh user with the shared secret.
    pub async fn user(&self) -> Result<User> {
        self.register(false).await
    }

    /// Registers a fresh user, a server admin if `admin`.
    async fn register(&self, admin: bool) -> Result<User> {
        let name = format!("bench{}x{}", self.run_id, self.next());
        let nonce = self.call(reqwest::Method::GET, "/_synapse/admin/v1/register", None, None).await?;
        let nonce = nonce["nonce"].as_str().context("nonce")?.to_owned();
        let password = "bench-password";
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(self.opts.secret.as_bytes())?;
        let role = if admin { "admin" } else { "notadmin" };
        mac.update(format!("{nonce}\0{name}\0{password}\0{role}").as_bytes());
        let body = json!({
            "nonce": nonce, "username": name, "password": password, "admin": admin,
            "mac": hex::encode(mac.finalize().into_bytes()),
        });
        let res = self.call(reqwest::Method::POST, "/_synapse/admin/v1/register", None, Some(&body)).await?;
        Ok(User {
            user_id: res["user_id"].as_str().context("user_id")?.into(),
            token: res["access_token"].as_str().context("token")?.into(),
        })
    }

    /// Logs in a new device of an existing user.
    async fn login(&self, user: &User) -> Result<User> {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user.user_id },
            "password": "bench-password",
        });
        let res = self.call(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(&body)).await?;
        Ok(User { user_id: user.user_id.clone(), token: res["access_token"].as_str().context("token")?.into() })
    }

    async fn users(&self, n: usize) -> Result<Vec<User>> {
        let mut out = Vec::with_capacity(n);
        // Registration is rate limited by password hashing on purpose; batches keep it brisk.
        for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
            out.extend(try_join_all(chunk.iter().map(|_| self.user())).await?);
        }
        Ok(out)
    }

    async fn room(&self, owner: &User, public: bool) -> Result<String> {
        let body = if public { json!({ "preset": "public_chat" }) } else { json!({}) };
        let res = self.post("/_matrix/client/v3/createRoom", &owner.token, body).await?;
        Ok(res["room_id"].as_str().context("room_id")?.into())
    }

    async fn join(&self, user: &User, room_id: &str) -> Result<()> {
        self.post(&format!("/_matrix/client/v3/join/{}", urlencoding::encode(room_id)), &user.token, json!({})).await?;
        Ok(())
    }

    async fn send(&self, user: &User, room_id: &str, text: &str) -> Result<String> {
        let txn = format!("b{}", self.next());
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", urlencoding::encode(room_id));
        let res = self.put(&path, &user.token, json!({ "msgtype": "m.text", "body": text })).await?;
        Ok(res["event_id"].as_str().unwrap_or_default().to_owned())
    }

    async fn sync(
        &self,
        user: &User,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&Value>,
        full_state: bool,
    ) -> Result<Value> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str(&format!("&since={}", urlencoding::encode(since)));
        }
        if let Some(filter) = filter {
            path.push_str(&format!("&filter={}", urlencoding::encode(&filter.to_string())));
        }
        if full_state {
            path.push_str("&full_state=true");
        }
        self.get(&path, &user.token).await
    }

    /// Resident memory of the server process, in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        let pid = self.opts.pid?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// CPU time used by the server process so far (user + system), in ms.
    pub fn cpu_ms(&self) -> Option<f64> {
        let pid = self.opts.pid?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks * 10.0)
    }

    /// Context switches of every thread of the server so far (voluntary and not), read
    /// from `/proc/<pid>/task/*/status`; threads that ended are not counted.
    pub fn context_switches(&self) -> Option<u64> {
        let pid = self.opts.pid?;
        let mut total = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
            for line in status.lines() {
                if line.starts_with("voluntary_ctxt_switches:") || line.starts_with("nonvoluntary_ctxt_switches:") {
                    total += line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                }
            }
        }
        Some(total)
    }

    /// Scenario `paced`: one sender, messages 0, 2, 5 and 20 ms apart, as people send: the
    /// server's CPU and context switches per message, send p50/p99 beside the p50 of
    /// `GET /versions` (the floor of any request).
    pub async fn paced(&self) -> Result<Vec<Figure>> {
        let users = self.users(2).await?;
        let room = self.room(&users[0], true).await?;
        self.join(&users[1], &room).await?;
        let mut out = Vec::new();
        let mut floor = Vec::with_capacity(200);
        for _ in 0..200 {
            let t = Instant::now();
            self.http.get(format!("{}/_matrix/client/versions", self.opts.url)).send().await?.bytes().await?;
            floor.push(ms(t.elapsed()));
        }
        floor.sort_by(f64::total_cmp);
        out.push(self.figure("paced", "versions_p50", percentile(&floor, 0.5), "ms"));
        for spacing in [0u64, 2, 5, 20] {
            let scenario = format!("paced_{spacing}ms");
            let n = self.opts.paced.max(1);
            let (cpu_before, switches_before) = (self.cpu_ms(), self.context_switches());
            let mut latencies = Vec::with_capacity(n);
            for i in 0..n {
                if spacing > 0 {
                    tokio::time::sleep(Duration::from_millis(spacing)).await;
                }
                let t = Instant::now();
                self.send(&users[0], &room, &format!("paced {i}")).await?;
                latencies.push(ms(t.elapsed()));
            }
            let (cpu_after, switches_after) = (self.cpu_ms(), self.context_switches());
            latencies.sort_by(f64::total_cmp);
            out.push(self.figure(&scenario, "send_p50", percentile(&latencies, 0.5), "ms"));
            out.push(self.figure(&scenario, "send_p99", percentile(&latencies, 0.99), "ms"));
            if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
                out.push(self.figure(&scenario, "server_cpu_per_message", (b - a) / n as f64, "ms"));
            }
            if let (Some(a), Some(b)) = (switches_before, switches_after) {
                out.push(self.figure(&scenario, "context_switches_per_message", (b - a) as f64 / n as f64, "n"));
            }
        }
        Ok(out)
    }

    /// Scenario 1: N senders in one room, each sending its share of M messages.
    pub async fn send_throughput(&self, senders: usize) -> Result<Vec<Figure>> {
        let scenario = format!("send_{senders}");
        let users = self.users(senders.max(1)).await?;
        let room = self.room(&users[0], true).await?;
        for u in &users[1..] {
            self.join(u, &room).await?;
        }
        let per_sender = (self.opts.messages / senders).max(1);
        let cpu_before = self.cpu_ms();
        let started = Instant::now();
        let tasks = users.iter().map(|u| {
            let this = self.clone();
            let u = u.clone();
            let room = room.clone();
            async move {
                let mut latencies = Vec::with_capacity(per_sender);
                for i in 0..per_sender {
                    let t = Instant::now();
                    this.send(&u, &room, &format!("message {i}")).await?;
                    latencies.push(ms(t.elapsed()));
                }
                anyhow::Ok(latencies)
            }
        });
        let mut latencies: Vec<f64> = try_join_all(tasks).await?.into_iter().flatten().collect();
        let elapsed = started.elapsed();
        let cpu_after = self.cpu_ms();
        latencies.sort_by(f64::total_cmp);
        let total = latencies.len() as f64;
        let mut out = vec![
            self.figure(&scenario, "events_per_s", total / elapsed.as_secs_f64(), "ev/s"),
            self.figure(&scenario, "latency_p50", percentile(&latencies, 0.5), "ms"),
            self.figure(&scenario, "latency_p99", percentile(&latencies, 0.99), "ms"),
        ];
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            out.push(self.figure(&scenario, "server_cpu_per_event", (b - a) / total, "ms"));
        }
        Ok(out)
    }

    /// Scenario 2: time from a send's acknowledgement to the other user's long-poll returning it.
    pub async fn wakeup(&self) -> Result<Vec<Figure>> {
        let users = self.users(2).await?;
        let (a, b) = (&users[0], &users[1]);
        let room = self.room(a, true).await?;
        self.join(b, &room).await?;
        let filter = json!({ "room": { "timeline": { "limit": 5 } }, "presence": { "not_types": ["*"] } });
        let mut since =
            self.sync(b, None, 0, Some(&filter), false).await?["next_batch"].as_str().unwrap_or_default().to_owned();
        let mut samples = Vec::new();
        for i in 0..self.opts.wakeups {
            let this = self.clone();
            let b2 = b.clone();
            let since2 = since.clone();
            let filter2 = filter.clone();
            let room2 = room.clone();
            let waiter = tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut since = since2;
                loop {
                    let res = this.sync(&b2, Some(&since), 30_000, Some(&filter2), false).await?;
                    let got = Instant::now();
                    since = res["next_batch"].as_str().unwrap_or_default().to_owned();
                    let has = res["rooms"]["join"][&room2]["timeline"]["events"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|e| e["content"]["body"] == format!("wake {i}")));
                    if has || Instant::now() > deadline {
                        return anyhow::Ok((got, since));
                    }
                }
            });
            // Let the long-poll reach the server and park.
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.send(a, &room, &format!("wake {i}")).await?;
            let acked = Instant::now();
            let (got, next) = waiter.await??;
            since = next;
            samples.push(ms(got.saturating_duration_since(acked)));
        }
        samples.sort_by(f64::total_cmp);
        Ok(vec![
            self.figure("wakeup", "p50", percentile(&samples, 0.5), "ms"),
            self.figure("wakeup", "p99", percentile(&samples, 0.99), "ms"),
        ])
    }

    /// Simplified sliding sync (MSC4186, Element X's) of a user in `sliding_rooms` rooms,
    /// with Element X's room list request (a window of 20, one timeline event, the state
    /// it shows, every extension): the first response of a new connection (median of 5,
    /// each a new device), and updates after a message in a room of the window: latency
    /// from the send's acknowledgement to the update's arrival, and the server's CPU per
    /// message and update together.
    pub async fn sliding_sync(&self) -> Result<Vec<Figure>> {
        const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
        let users = self.users(2).await?;
        let (owner, reader) = (&users[0], &users[1]);
        let mut rooms = Vec::new();
        for chunk in (0..self.opts.sliding_rooms).collect::<Vec<_>>().chunks(8) {
            rooms.extend(
                try_join_all(chunk.iter().map(|_| async {
                    let room = self.room(owner, true).await?;
                    self.join(reader, &room).await?;
                    self.send(owner, &room, "hello").await?;
                    anyhow::Ok(room)
                }))
                .await?,
            );
        }
        let request = |conn: &str| {
            json!({
                "conn_id": conn,
                "lists": { "all": {
                    "ranges": [[0, 19]],
                    "timeline_limit": 1,
                    "required_state": [
                        ["m.room.name", ""], ["m.room.avatar", ""], ["m.room.encryption", ""],
                        ["m.room.member", "$LAZY"], ["m.room.member", "$ME"],
                    ],
                } },
                "extensions": {
                    "to_device": { "enabled": true }, "e2ee": { "enabled": true },
                    "account_data": { "enabled": true }, "receipts": { "enabled": true },
                    "typing": { "enabled": true },
                },
            })
        };
        let mut firsts = Vec::new();
        for i in 0..5 {
            let device = self.login(reader).await?;
            let t = Instant::now();
            let res = self.post(&format!("{PATH}?timeout=0"), &device.token, request(&format!("first{i}"))).await?;
            firsts.push(ms(t.elapsed()));
            let count = res["lists"]["all"]["count"].as_u64().unwrap_or_default() as usize;
            if count < self.opts.sliding_rooms {
                bail!("sliding sync listed {count} rooms, expected {}", self.opts.sliding_rooms);
            }
        }
        firsts.sort_by(f64::total_cmp);

        let device = self.login(reader).await?;
        let first = self.post(&format!("{PATH}?timeout=0"), &device.token, request("updates")).await?;
        let mut pos = first["pos"].as_str().context("pos")?.to_owned();
        let room = rooms.last().context("no room")?.clone();
        let mut samples = Vec::new();
        let cpu_before = self.cpu_ms();
        for i in 0..self.opts.sliding_updates {
            let this = self.clone();
            let token = device.token.clone();
            let room2 = room.clone();
            let body = request("updates");
            let pos2 = pos.clone();
            let waiter = tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut pos = pos2;
                loop {
                    let path = format!("{PATH}?timeout=30000&pos={}", urlencoding::encode(&pos));
                    let res = this.post(&path, &token, body.clone()).await?;
                    let got = Instant::now();
                    pos = res["pos"].as_str().unwrap_or_default().to_owned();
                    let has = res["rooms"][&room2]["timeline"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|e| e["content"]["body"] == format!("update {i}")));
                    if has || Instant::now() > deadline {
                        return anyhow::Ok((got, pos));
                    }
                }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.send(owner, &room, &format!("update {i}")).await?;
            let acked = Instant::now();
            let (got, next) = waiter.await??;
            pos = next;
            samples.push(ms(got.saturating_duration_since(acked)));
        }
        samples.sort_by(f64::total_cmp);
        let mut out = vec![
            self.figure("sliding_sync", "first_response", percentile(&firsts, 0.5), "ms"),
            self.figure("sliding_sync", "update_p50", percentile(&samples, 0.5), "ms"),
            self.figure("sliding_sync", "update_p99", percentile(&samples, 0.99), "ms"),
        ];
        if let (Some(before), Some(after)) = (cpu_before, self.cpu_ms()) {
            let per = (after - before) / self.opts.sliding_updates as f64;
            out.push(self.figure("sliding_sync", "cpu_per_message_and_update", per, "ms"));
        }
        Ok(out)
    }

    /// Scenario 3: initial sync of a user in R rooms with T messages each.
    pub async fn initial_sync(&self) -> Result<Vec<Figure>> {
        let users = self.users(2).await?;
        let (owner, reader) = (&users[0], &users[1]);
        for chunk in (0..self.opts.rooms).collect::<Vec<_>>().chunks(8) {
            try_join_all(chunk.iter().map(|_| async {
                let room = self.room(owner, true).await?;
                self.join(reader, &room).await?;
                for i in 0..self.opts.room_messages {
                    self.send(owner, &room, &format!("m{i}")).await?;
                }
                anyhow::Ok(())
            }))
            .await?;
        }
        let lazy = json!({ "room": { "timeline": { "limit": 1 }, "state": { "lazy_load_members": true } } });
        let mut out = Vec::new();
        for (metric, filter, full) in [("timeline1_lazy", Some(&lazy), false), ("full_state", None, true)] {
            let mut times = Vec::new();
            for _ in 0..5 {
                // A new device each time, as a real initial sync is: Synapse answers a repeated
                // identical request from a response cache for two minutes, which would measure
                // the cache instead of the sync.
                let device = self.login(reader).await?;
                let t = Instant::now();
                let res = self.sync(&device, None, 0, filter, full).await?;
                times.push(ms(t.elapsed()));
                let n = res["rooms"]["join"].as_object().map_or(0, |m| m.len());
                if n < self.opts.rooms {
                    bail!("initial sync returned {n} rooms, expected {}", self.opts.rooms);
                }
            }
            times.sort_by(f64::total_cmp);
            out.push(self.figure("initial_sync", metric, times[times.len() / 2], "ms"));
        }
        Ok(out)
    }

    /// Scenario 4: a room with many members: join time and `/members` time.
    pub async fn members(&self) -> Result<Vec<Figure>> {
        let owner = self.user().await?;
        let room = self.room(&owner, true).await?;
        let users = self.users(self.opts.members.saturating_sub(1)).await?;
        let started = Instant::now();
        let mut join_times = Vec::new();
        for chunk in users.chunks(8) {
            let times = try_join_all(chunk.iter().map(|u| async {
                let t = Instant::now();
                self.join(u, &room).await?;
                anyhow::Ok(ms(t.elapsed()))
            }))
            .await?;
            join_times.extend(times);
        }
        let all_joined = started.elapsed();
        join_times.sort_by(f64::total_cmp);
        let t = Instant::now();
        let members =
            self.get(&format!("/_matrix/client/v3/rooms/{}/members", urlencoding::encode(&room)), &owner.token).await?;
        let members_time = ms(t.elapsed());
        let n = members["chunk"].as_array().map_or(0, Vec::len);
        if n < self.opts.members {
            bail!("/members returned {n} members, expected {}", self.opts.members);
        }
        // A message in the big room: every member's push rules are evaluated for it.
        let mut sends = Vec::new();
        for i in 0..10 {
            let t = Instant::now();
            self.send(&owner, &room, &format!("à tous {i}")).await?;
            sends.push(ms(t.elapsed()));
        }
        sends.sort_by(f64::total_cmp);
        Ok(vec![
            self.figure("members", "join_p50", percentile(&join_times, 0.5), "ms"),
            self.figure("members", "join_all", ms(all_joined), "ms"),
            self.figure("members", "members_request", members_time, "ms"),
            self.figure("members", "send_p50", percentile(&sends, 0.5), "ms"),
        ])
    }

    /// Scenario 5: key upload and claim, and to-device fan-out to many devices.
    pub async fn e2ee(&self) -> Result<Vec<Figure>> {
        let users = self.users(2).await?;
        let (alice, bob) = (&users[0], &users[1]);
        let otks: HashMap<String, Value> = (0..50)
            .map(|i| (format!("signed_curve25519:K{i}"), json!({ "key": format!("key{i}"), "signatures": {} })))
            .collect();
        let t = Instant::now();
        self.post("/_matrix/client/v3/keys/upload", &bob.token, json!({ "one_time_keys": otks })).await?;
        let upload = ms(t.elapsed());
        let whoami = self.get("/_matrix/client/v3/account/whoami", &bob.token).await?;
        let device = whoami["device_id"].as_str().unwrap_or_default().to_owned();
        let mut claims = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let body = json!({ "one_time_keys": { bob.user_id.clone(): { device.clone(): "signed_curve25519" } } });
            self.post("/_matrix/client/v3/keys/claim", &alice.token, body).await?;
            claims.push(ms(t.elapsed()));
        }
        claims.sort_by(f64::total_cmp);
        // Fan-out: one sendToDevice to N devices of bob, then each device collects it.
        let mut devices = Vec::new();
        for _ in 0..self.opts.devices {
            let res = self
                .call(
                    reqwest::Method::POST,
                    "/_matrix/client/v3/login",
                    None,
                    Some(&json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": bob.user_id }, "password": "bench-password" })),
                )
                .await?;
            devices.push((
                res["device_id"].as_str().unwrap_or_default().to_owned(),
                res["access_token"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        let messages: HashMap<String, Value> = devices.iter().map(|(d, _)| (d.clone(), json!({ "ping": 1 }))).collect();
        let t = Instant::now();
        self.put(
            &format!("/_matrix/client/v3/sendToDevice/m.bench.ping/t{}", self.next()),
            &alice.token,
            json!({ "messages": { bob.user_id.clone(): messages } }),
        )
        .await?;
        let send = ms(t.elapsed());
        let t = Instant::now();
        try_join_all(devices.iter().map(|(_, token)| async {
            let user = User { user_id: bob.user_id.clone(), token: token.clone() };
            let filter = json!({ "room": { "rooms": [] } });
            let res = self.sync(&user, None, 0, Some(&filter), false).await?;
            let n = res["to_device"]["events"].as_array().map_or(0, Vec::len);
            if n == 0 {
                bail!("to-device message not delivered");
            }
            anyhow::Ok(())
        }))
        .await?;
        let collect = ms(t.elapsed());
        Ok(vec![
            self.figure("e2ee", "keys_upload_50", upload, "ms"),
            self.figure("e2ee", "keys_claim_p50", percentile(&claims, 0.5), "ms"),
            self.figure("e2ee", "to_device_send_fanout", send, "ms"),
            self.figure("e2ee", "to_device_collect_all", collect, "ms"),
        ])
    }

    /// Scenario 7: memory with many accounts. Registers `--users` users, each of whom then
    /// connects once (an initial sync, as a client's first start does), and reads the
    /// server's resident memory.
    pub async fn many_users(&self) -> Result<Vec<Figure>> {
        let started = Instant::now();
        for chunk in (0..self.opts.users).collect::<Vec<_>>().chunks(16) {
            try_join_all(chunk.iter().map(|_| async {
                let user = self.user().await?;
                self.sync(&user, None, 0, None, false).await?;
                anyhow::Ok(())
            }))
            .await?;
        }
        let mut out = vec![self.figure("many_users", "register_and_sync_all", started.elapsed().as_secs_f64(), "s")];
        if let Some(rss) = self.rss_mib() {
            out.push(self.figure("many_users", "rss", rss, "MiB"));
        }
        Ok(out)
    }

    /// The bench of the second server (`--peer-url`).
    fn peer(&self) -> Result<Bench> {
        let mut opts = (*self.opts).clone();
        opts.url = self.opts.peer_url.clone().context("the federation scenario needs --peer-url")?;
        opts.secret = self.opts.peer_secret.clone();
        opts.pid = self.opts.peer_pid;
        Ok(Bench {
            http: self.http.clone(),
            opts: Arc::new(opts),
            run_id: self.run_id.clone(),
            counter: self.counter.clone(),
        })
    }

    /// Scenario 8: two servers federating. Users of the first send in a room that a user of
    /// the second reads through a long-polling `/sync`: remote delivery latency (send
    /// acknowledged on the first server to the second's sync returning it) for paced
    /// sends, then throughput for 16 senders; and a user of the second joining a room of
    /// the first that has `--members` members.
    pub async fn federation(&self) -> Result<Vec<Figure>> {
        let peer = self.peer()?;
        let senders = self.users(16).await?;
        let room = self.room(&senders[0], true).await?;
        for u in &senders[1..] {
            self.join(u, &room).await?;
        }
        let origin = senders[0].user_id.split_once(':').context("user ID")?.1.to_owned();
        let reader = peer.user().await?;
        let join =
            format!("/_matrix/client/v3/join/{}?via={}", urlencoding::encode(&room), urlencoding::encode(&origin));
        peer.post(&join, &reader.token, json!({})).await?;

        // The reader: one long-poll after another, noting when each message first shows.
        let arrivals: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let filter = json!({ "room": { "timeline": { "limit": 1000 } }, "presence": { "not_types": ["*"] } });
        let mut since = peer.sync(&reader, None, 0, Some(&filter), false).await?["next_batch"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let reading = {
            let (peer, reader, room, arrivals, stop) =
                (peer.clone(), reader.clone(), room.clone(), arrivals.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let res = peer.sync(&reader, Some(&since), 5_000, Some(&filter), false).await?;
                    let now = Instant::now();
                    since = res["next_batch"].as_str().unwrap_or_default().to_owned();
                    let events =
                        res["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
                    let mut seen = arrivals.lock().expect("arrivals");
                    for body in events.iter().filter_map(|e| e["content"]["body"].as_str()) {
                        seen.entry(body.to_owned()).or_insert(now);
                    }
                }
                anyhow::Ok(())
            })
        };
        // Latency: one message every 20 ms, as people type, not back to back.
        let mut acked = Vec::new();
        for i in 0..self.opts.paced {
            let body = format!("paced {i}");
            self.send(&senders[0], &room, &body).await?;
            acked.push((body, Instant::now()));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let bodies: Vec<String> = acked.iter().map(|(b, _)| b.clone()).collect();
        let paced_started = acked.first().map_or_else(Instant::now, |(_, t)| *t);
        settle(&arrivals, &bodies, paced_started).await;
        let mut latencies: Vec<f64> = {
            let seen = arrivals.lock().expect("arrivals");
            acked.iter().filter_map(|(b, t)| Some(ms(seen.get(b)?.saturating_duration_since(*t)))).collect()
        };
        let paced_delivered = 100.0 * latencies.len() as f64 / acked.len().max(1) as f64;
        latencies.sort_by(f64::total_cmp);

        // Throughput: 16 senders back to back; the last message of each marks the end.
        let per_sender = (self.opts.messages / senders.len()).max(1);
        let total = per_sender * senders.len();
        let (cpu_a, cpu_b) = (self.cpu_ms(), peer.cpu_ms());
        let started = Instant::now();
        try_join_all(senders.iter().enumerate().map(|(s, u)| {
            let (this, u, room) = (self.clone(), u.clone(), room.clone());
            async move {
                for i in 0..per_sender {
                    this.send(&u, &room, &format!("load {s} {i}")).await?;
                }
                anyhow::Ok(())
            }
        }))
        .await?;
        // What arrived is counted (see `settle`).
        let sent: Vec<String> =
            (0..senders.len()).flat_map(|s| (0..per_sender).map(move |i| format!("load {s} {i}"))).collect();
        let (delivered, last_arrival) = settle(&arrivals, &sent, started).await;
        let elapsed = last_arrival.saturating_duration_since(started);
        let (cpu_a2, cpu_b2) = (self.cpu_ms(), peer.cpu_ms());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = reading.await;

        let mut out = vec![
            self.figure("federation", "remote_delivery_p50", percentile(&latencies, 0.5), "ms"),
            self.figure("federation", "remote_delivery_p99", percentile(&latencies, 0.99), "ms"),
            self.figure("federation", "paced_delivered_live", paced_delivered, "%"),
            self.figure("federation", "events_per_s_16", delivered as f64 / elapsed.as_secs_f64(), "ev/s"),
            self.figure("federation", "delivered_live", 100.0 * delivered as f64 / total as f64, "%"),
        ];
        if let (Some(a), Some(b)) = (cpu_a, cpu_a2) {
            out.push(self.figure("federation", "sender_cpu_per_event", (b - a) / total as f64, "ms"));
        }
        if let (Some(a), Some(b)) = (cpu_b, cpu_b2) {
            out.push(self.figure("federation", "receiver_cpu_per_event", (b - a) / total as f64, "ms"));
        }

        // Remote joins to big rooms: the state of `--members` members crosses at once. One
        // join alone varies too much to compare; later joiners to the same room would find
        // their server already in it, so each joins a room of its own, once the previous
        // room's members have reached the joining server (its `/members` waits for them).
        let owner = self.user().await?;
        let mut big_rooms = Vec::new();
        for _ in 0..REMOTE_JOINS {
            big_rooms.push(self.room(&owner, true).await?);
        }
        let members = self.users(self.opts.members.saturating_sub(1)).await?;
        for big in &big_rooms {
            for chunk in members.chunks(8) {
                try_join_all(chunk.iter().map(|u| self.join(u, big))).await?;
            }
        }
        let mut join_times = Vec::new();
        for big in &big_rooms {
            let joiner = peer.user().await?;
            let room = urlencoding::encode(big);
            let join = format!("/_matrix/client/v3/join/{room}?via={}", urlencoding::encode(&origin));
            let t = Instant::now();
            peer.post(&join, &joiner.token, json!({})).await?;
            join_times.push(ms(t.elapsed()));
            peer.get(&format!("/_matrix/client/v3/rooms/{room}/members"), &joiner.token).await?;
        }
        join_times.sort_by(f64::total_cmp);
        out.push(self.figure("federation", "remote_join_big_room", percentile(&join_times, 0.5), "ms"));
        Ok(out)
    }

    /// Scenario: does push delivery slow the sender? The same paced sends (20 ms apart) to
    /// a room of 20 recipients, first without pushers, then with every recipient's pusher
    /// at a gateway that accepts connections and never answers.
    pub async fn push(&self) -> Result<Vec<Figure>> {
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let dead_url = format!("http://{}/_matrix/push/v1/notify", dead.local_addr()?);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = dead.accept().await {
                held.push(socket);
            }
        });
        let mut out = Vec::new();
        for (case, gateway) in [("no_pushers", None), ("dead_gateway", Some(dead_url))] {
            let users = self.users(21).await?;
            let room = self.room(&users[0], true).await?;
            for (i, user) in users[1..].iter().enumerate() {
                self.join(user, &room).await?;
                if let Some(url) = &gateway {
                    let pusher = json!({
                        "kind": "http", "app_id": "bench.push", "pushkey": format!("key-{}-{i}", self.next()),
                        "app_display_name": "bench", "device_display_name": "bench", "lang": "en",
                        "data": { "url": url, "format": "event_id_only" },
                    });
                    self.post("/_matrix/client/v3/pushers/set", &user.token, pusher).await?;
                }
            }
            let mut latencies = Vec::with_capacity(self.opts.paced);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0..self.opts.paced {
                tick.tick().await;
                let t = Instant::now();
                self.send(&users[0], &room, &format!("push {i}")).await?;
                latencies.push(ms(t.elapsed()));
            }
            latencies.sort_by(f64::total_cmp);
            let scenario = format!("push_{case}");
            out.push(self.figure(&scenario, "send_p50", percentile(&latencies, 0.5), "ms"));
            out.push(self.figure(&scenario, "send_p99", percentile(&latencies, 0.99), "ms"));
        }
        Ok(out)
    }

    /// Scenario `purge`: a room's history of `purge_messages` messages is purged with the
    /// admin API both servers share (`purge_history`) while a sender in another room sends
    /// every 20 ms: how long the purge takes, and the sends' p50/p99 before and during it.
    pub async fn purge(&self) -> Result<Vec<Figure>> {
        let admin = self.register(true).await?;
        let senders = self.users(16).await?;
        let big = self.room(&senders[0], true).await?;
        for user in &senders[1..] {
            self.join(user, &big).await?;
        }
        let per_sender = self.opts.purge_messages.div_ceil(senders.len());
        try_join_all(senders.iter().map(|user| {
            let big = big.clone();
            async move {
                for i in 0..per_sender {
                    self.send(user, &big, &format!("history {i}")).await?;
                }
                anyhow::Ok(())
            }
        }))
        .await?;
        let other = self.room(&senders[0], true).await?;
        let paced = async |n: Option<usize>, done: &std::sync::atomic::AtomicBool| -> Result<Vec<f64>> {
            let mut latencies = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while n.is_none_or(|n| latencies.len() < n) && !done.load(std::sync::atomic::Ordering::Acquire) {
                tick.tick().await;
                let t = Instant::now();
                self.send(&senders[0], &other, "paced").await?;
                latencies.push(ms(t.elapsed()));
            }
            latencies.sort_by(f64::total_cmp);
            Ok(latencies)
        };
        let never = std::sync::atomic::AtomicBool::new(false);
        let before = paced(Some(200), &never).await?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
        let started = Instant::now();
        let answer = self
            .post(
                &format!("/_synapse/admin/v1/purge_history/{big}"),
                &admin.token,
                json!({ "purge_up_to_ts": now, "delete_local_events": true }),
            )
            .await?;
        let purge_id = answer["purge_id"].as_str().context("purge_id")?.to_owned();
        let done = std::sync::atomic::AtomicBool::new(false);
        let watch = async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let status =
                    self.get(&format!("/_synapse/admin/v1/purge_history_status/{purge_id}"), &admin.token).await?;
                match status["status"].as_str() {
                    Some("complete") => break,
                    Some("active") => {}
                    other => bail!("purge ended as {other:?}"),
                }
            }
            let took = started.elapsed();
            done.store(true, std::sync::atomic::Ordering::Release);
            anyhow::Ok(took)
        };
        let (during, took) = tokio::try_join!(paced(None, &done), watch)?;
        Ok(vec![
            self.figure("purge", "purge_duration", ms(took), "ms"),
            self.figure(
                "purge",
                "events_purged_per_s",
                self.opts.purge_messages as f64 / took.as_secs_f64(),
                "events/s",
            ),
            self.figure("purge", "send_p50_before", percentile(&before, 0.5), "ms"),
            self.figure("purge", "send_p99_before", percentile(&before, 0.99), "ms"),
            self.figure("purge", "send_p50_during", percentile(&during, 0.5), "ms"),
            self.figure("purge", "send_p99_during", percentile(&during, 0.99), "ms"),
            self.figure("purge", "sends_during", during.len() as f64, "n"),
        ])
    }

    /// Room sizes of the sector_day scenario: two rooms of up to 500 members, eight of 100,
    /// forty of 20, the rest of 2 to 10 (direct chats and small teams), each capped at the
    /// number of users.
    fn sector_sizes(&self, rng: &mut Rng) -> Vec<usize> {
        let n = self.opts.sector_rooms;
        (0..n)
            .map(|i| match i {
                0..2 => 500,
                2..10 => 100,
                10..50 => 20,
                _ => 2 + rng.below(9),
            })
            .map(|size| size.min(self.opts.sector_users).max(2))
            .collect()
    }

    /// Scenario `sector_day`: a sector server's busy hour compressed. `sector_users` users
    /// in `sector_rooms` rooms, every user holding a long-polling `/sync`, messages sent at
    /// a steady `sector_rate` per second by random members of random rooms for
    /// `sector_secs`: the server's CPU per message (with every sync it wakes), the time from
    /// a send's acknowledgement to each recipient's sync returning it, sends, RSS.
    pub async fn sector_day(&self) -> Result<Vec<Figure>> {
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let users = self.users(self.opts.sector_users).await?;
        let sizes = self.sector_sizes(&mut rng);
        // Members of each room: a random sample of the users, the first the creator.
        let mut members: Vec<Vec<usize>> = Vec::with_capacity(sizes.len());
        for &size in &sizes {
            let mut picked: Vec<usize> = Vec::with_capacity(size);
            while picked.len() < size {
                let u = rng.below(users.len());
                if !picked.contains(&u) {
                    picked.push(u);
                }
            }
            members.push(picked);
        }
        let mut rooms = Vec::with_capacity(sizes.len());
        for room_members in &members {
            rooms.push(self.room(&users[room_members[0]], true).await?);
        }
        let joins: Vec<(usize, usize)> =
            members.iter().enumerate().flat_map(|(r, m)| m[1..].iter().map(move |&u| (r, u))).collect();
        for chunk in joins.chunks(8) {
            try_join_all(chunk.iter().map(|&(r, u)| self.join(&users[u], &rooms[r]))).await?;
        }

        // Every user syncs once, then holds a long poll, as a connected client does.
        let filter = json!({ "room": { "timeline": { "limit": 1 }, "state": { "lazy_load_members": true } },
                             "presence": { "not_types": ["*"] } });
        let mut tokens = Vec::with_capacity(users.len());
        for chunk in users.chunks(16) {
            let answers = try_join_all(chunk.iter().map(|u| self.sync(u, None, 0, Some(&filter), false))).await?;
            tokens.extend(answers.into_iter().map(|a| a["next_batch"].as_str().unwrap_or_default().to_owned()));
        }
        let acked: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
        // What each sync returned, and when: matched with the acknowledgements at the end
        // (a recipient's sync may return before the sender's answer arrives).
        let deliveries: Arc<std::sync::Mutex<Vec<(String, Instant)>>> = Default::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut syncers = Vec::with_capacity(users.len());
        for (user, since) in users.iter().cloned().zip(tokens) {
            let (this, filter, deliveries, stop) = (self.clone(), filter.clone(), deliveries.clone(), stop.clone());
            syncers.push(tokio::spawn(async move {
                let mut since = since;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let Ok(answer) = this.sync(&user, Some(&since), 10_000, Some(&filter), false).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let got = Instant::now();
                    since = answer["next_batch"].as_str().unwrap_or(&since).to_owned();
                    let Some(joined) = answer["rooms"]["join"].as_object() else { continue };
                    let mut out = deliveries.lock().expect("deliveries lock");
                    for event in joined.values().filter_map(|r| r["timeline"]["events"].as_array()).flatten() {
                        if event["sender"] != user.user_id.as_str()
                            && event["content"]["body"].as_str().is_some_and(|b| b.starts_with("sector "))
                            && let Some(id) = event["event_id"].as_str()
                        {
                            out.push((id.to_owned(), got));
                        }
                    }
                }
            }));
        }
        // Let every long poll reach the server and park.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let (cpu_before, switches_before) = (self.cpu_ms(), self.context_switches());
        let total = (self.opts.sector_rate * self.opts.sector_secs) as usize;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / self.opts.sector_rate.max(1)));
        let mut sends = Vec::with_capacity(total);
        let mut expected = 0usize;
        for i in 0..total {
            tick.tick().await;
            let r = rng.below(rooms.len());
            let sender = members[r][rng.below(members[r].len())];
            expected += members[r].len() - 1;
            let (this, user, room, acked) = (self.clone(), users[sender].clone(), rooms[r].clone(), acked.clone());
            sends.push(tokio::spawn(async move {
                let started = Instant::now();
                let event_id = this.send(&user, &room, &format!("sector {i}")).await?;
                let now = Instant::now();
                acked.lock().expect("acked lock").insert(event_id, now);
                anyhow::Ok(ms(now - started))
            }));
        }
        // A server that cannot keep up fails sends (the client gives up after 2 minutes):
        // counted, not fatal.
        let mut send_times = Vec::with_capacity(total);
        let mut failed = 0;
        for send in sends {
            match send.await? {
                Ok(took) => send_times.push(took),
                Err(_) => failed += 1,
            }
        }
        // The last messages' deliveries, then the syncs end.
        let deadline = Instant::now() + Duration::from_secs(15);
        while deliveries.lock().expect("deliveries lock").len() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (cpu_after, switches_after) = (self.cpu_ms(), self.context_switches());
        let rss = self.rss_mib();
        stop.store(true, std::sync::atomic::Ordering::Release);
        for syncer in syncers {
            syncer.abort();
        }
        let seen = std::mem::take(&mut *deliveries.lock().expect("deliveries lock"));
        let acked = acked.lock().expect("acked lock");
        let mut delivered: Vec<f64> = seen
            .iter()
            .filter_map(|(id, got)| acked.get(id).map(|at| ms(got.saturating_duration_since(*at))))
            .collect();
        delivered.sort_by(f64::total_cmp);
        send_times.sort_by(f64::total_cmp);
        let mut out = vec![
            self.figure("sector_day", "messages", total as f64, "n"),
            self.figure("sector_day", "deliveries_expected", expected as f64, "n"),
            self.figure("sector_day", "deliveries_seen", delivered.len() as f64, "n"),
            self.figure("sector_day", "delivery_p50", percentile(&delivered, 0.5), "ms"),
            self.figure("sector_day", "delivery_p99", percentile(&delivered, 0.99), "ms"),
            self.figure("sector_day", "send_p50", percentile(&send_times, 0.5), "ms"),
            self.figure("sector_day", "send_p99", percentile(&send_times, 0.99), "ms"),
            self.figure("sector_day", "sends_failed", failed as f64, "n"),
        ];
        if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
            out.push(self.figure("sector_day", "server_cpu_per_message", (b - a) / total as f64, "ms"));
        }
        if let (Some(a), Some(b)) = (switches_before, switches_after) {
            out.push(self.figure("sector_day", "context_switches_per_message", (b - a) as f64 / total as f64, "n"));
        }
        if let Some(rss) = rss {
            out.push(self.figure("sector_day", "rss", rss, "MiB"));
        }
        Ok(out)
    }

    /// Runs the selected scenarios and returns every figure.
    pub async fn run(&self) -> Result<Vec<Figure>> {
        let mut out = Vec::new();
        if let Some(rss) = self.rss_mib() {
            out.push(self.figure("memory", "rss_before", rss, "MiB"));
        }
        for scenario in self.opts.scenarios.split(',').map(str::trim) {
            let figures = match scenario {
                "send" => {
                    let mut f = self.send_throughput(1).await?;
                    f.extend(self.send_throughput(16).await?);
                    f
                }
                "send_1" => self.send_throughput(1).await?,
                "send_16" => self.send_throughput(16).await?,
                "wakeup" => self.wakeup().await?,
                "initial_sync" => self.initial_sync().await?,
                "members" => self.members().await?,
                "e2ee" => self.e2ee().await?,
                "many_users" => self.many_users().await?,
                "sliding_sync" => self.sliding_sync().await?,
                "federation" => self.federation().await?,
                "push" => self.push().await?,
                "paced" => self.paced().await?,
                "purge" => self.purge().await?,
                "sector_day" => self.sector_day().await?,
                "" => Vec::new(),
                other => bail!("unknown scenario {other}"),
            };
            out.extend(figures);
        }
        if let Some(rss) = self.rss_mib() {
            out.push(self.figure("memory", "rss_after", rss, "MiB"));
        }
        Ok(out)
    }
}

/// A small deterministic generator (xorshift64*): the same rooms and senders every run.
struct Rng(u64);

impl Rng {
    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}
