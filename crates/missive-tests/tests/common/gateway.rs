//! A push gateway for the tests: a real HTTP listener that records what it is sent and
//! answers as told (fail the first requests, reject some pushkeys, or never answer).

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the gateway received and how it answers.
#[derive(Default)]
pub struct Gateway {
    pub port: u16,
    /// Bodies of the requests it accepted (answered 200), as received.
    pub accepted: Mutex<Vec<String>>,
    /// Every request, accepted or not.
    pub attempts: AtomicUsize,
    /// Requests still to fail with a 500.
    pub fail_next: AtomicUsize,
    /// Pushkeys answered as rejected.
    pub rejected: Mutex<HashSet<String>>,
    /// Read requests and never answer.
    pub hang: AtomicBool,
}

impl Gateway {
    /// Starts the gateway on loopback.
    pub async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = Arc::new(Self { port: listener.local_addr().unwrap().port(), ..Self::default() });
        let serving = gateway.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serving.clone().connection(socket));
            }
        });
        gateway
    }

    /// The URL of its notify endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/_matrix/push/v1/notify", self.port)
    }

    /// The accepted notifications, parsed.
    pub fn notifications(&self) -> Vec<Value> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|b| serde_json::from_str::<Value>(b).unwrap()["notification"].clone())
            .collect()
    }

    /// The accepted notifications sent to a pushkey.
    pub fn for_pushkey(&self, pushkey: &str) -> Vec<Value> {
        self.notifications().into_iter().filter(|n| n["devices"][0]["pushkey"] == pushkey).collect()
    }

    async fn connection(self: Arc<Self>, mut socket: tokio::net::TcpStream) {
        let mut buffer = Vec::new();
        loop {
            // Headers, then the body of Content-Length bytes; requests may follow on the
            // same connection.
            let header_end = loop {
                if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                let mut chunk = [0u8; 4096];
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buffer[..header_end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0);
            while buffer.len() < header_end + length {
                let mut chunk = [0u8; 4096];
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
            let body = String::from_utf8_lossy(&buffer[header_end..header_end + length]).to_string();
            buffer.drain(..header_end + length);
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let failing = self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            let (status, answer) = if failing {
                ("500 Internal Server Error", json!({ "errcode": "M_UNKNOWN" }))
            } else {
                let pushkey = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["notification"]["devices"][0]["pushkey"].as_str().map(str::to_owned));
                let rejected: Vec<String> =
                    pushkey.into_iter().filter(|k| self.rejected.lock().unwrap().contains(k)).collect();
                self.accepted.lock().unwrap().push(body);
                ("200 OK", json!({ "rejected": rejected }))
            };
            let answer = answer.to_string();
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            );
            if socket.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}
