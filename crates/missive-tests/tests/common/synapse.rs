//! Synapse, the reference homeserver, as a real peer: a Missive server and a Synapse
//! server on loopback, each with its own name, key and TLS certificate from a CA generated
//! for the test, each trusting the other through its config. `scripts/test` installs
//! Synapse from PyPI into a virtualenv; `MISSIVE_TEST_SYNAPSE` names its Python.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{
    Endpoint, TestServer,
    peers::{TestCa, free_port},
};

/// Where `scripts/test` installs Synapse when `MISSIVE_TEST_SYNAPSE` is not set.
const DEFAULT_VENV: &str = ".cache/missive-synapse-venv/bin/python";

/// A running Synapse.
pub struct Synapse {
    child: Child,
    endpoint: Endpoint,
    dir: PathBuf,
}

impl std::ops::Deref for Synapse {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Missive server and a Synapse server that federate with each other.
pub struct Pair {
    pub missive: TestServer,
    pub synapse: Synapse,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// Starts both: Missive as `localhost:<its TLS port>`, Synapse as `localhost:<its TLS
    /// port>`, so that each finds the other by the explicit port of its name.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new(dir.path());
        let (missive_port, synapse_port) = (free_port(), free_port());
        let missive_name = format!("localhost:{missive_port}");
        let synapse_name = format!("localhost:{synapse_port}");
        let (cert, key) = ca.issue("localhost", &dir.path().join("missive"));
        let env = [
            ("MISSIVE_SERVER_NAME", missive_name.clone()),
            ("MISSIVE_FEDERATION_LISTEN", format!("127.0.0.1:{missive_port}")),
            ("MISSIVE_TLS_CERT", cert.display().to_string()),
            ("MISSIVE_TLS_KEY", key.display().to_string()),
            ("MISSIVE_FEDERATION__TRUSTED_CA_FILES", format!("[\"{}\"]", ca.path.display())),
            ("MISSIVE_FEDERATION__ALLOW_PRIVATE_DESTINATIONS", "true".to_owned()),
            ("MISSIVE_FEDERATION__DESTINATIONS", format!("{{ \"{synapse_name}\" = \"127.0.0.1:{synapse_port}\" }}")),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let missive = TestServer::start_with(&env).await;
        let synapse = Synapse::start(&ca, &synapse_name, synapse_port, &dir.path().join("synapse")).await;
        Pair { missive, synapse, _dir: dir }
    }
}

impl Synapse {
    /// Starts Synapse named `server_name`, federation over TLS on `tls_port`, the client
    /// API on a plain port of its own, SQLite, rate limits off, open registration.
    pub async fn start(ca: &TestCa, server_name: &str, tls_port: u16, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("synapse dir");
        let (cert, key) = ca.issue("localhost", &dir.join("tls"));
        let client_port = free_port();
        let d = dir.display();
        let limit = "{ per_second: 10000, burst_count: 10000 }";
        std::fs::write(
            dir.join("log.yaml"),
            format!(
                "version: 1\nformatters:\n  precise:\n    format: '%(asctime)s %(name)s %(levelname)s %(message)s'\n\
                 handlers:\n  file:\n    class: logging.FileHandler\n    formatter: precise\n    filename: {d}/homeserver.log\n\
                 root:\n  level: INFO\n  handlers: [file]\ndisable_existing_loggers: false\n"
            ),
        )
        .expect("write log config");
        let config = format!(
            r#"server_name: "{server_name}"
pid_file: {d}/homeserver.pid
listeners:
  - port: {client_port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    resources: [{{ names: [client], compress: false }}]
  - port: {tls_port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: true
    resources: [{{ names: [federation], compress: false }}]
tls_certificate_path: {cert}
tls_private_key_path: {key}
federation_verify_certificates: true
federation_custom_ca_list: [{ca}]
ip_range_whitelist: ['127.0.0.0/8', '::1/128']
trusted_key_servers: []
suppress_key_server_warning: true
database:
  name: sqlite3
  args: {{ database: {d}/homeserver.db }}
log_config: {d}/log.yaml
media_store_path: {d}/media
signing_key_path: {d}/signing.key
report_stats: false
enable_metrics: false
macaroon_secret_key: test-macaroon-secret
form_secret: test-form-secret
registration_shared_secret: test-secret
enable_registration: true
enable_registration_without_verification: true
bcrypt_rounds: 4
presence:
  enabled: false
rc_message: {limit}
rc_registration: {limit}
rc_joins: {{ local: {limit}, remote: {limit} }}
rc_joins_per_room: {limit}
rc_invites: {{ per_room: {limit}, per_user: {limit}, per_issuer: {limit} }}
rc_login: {{ address: {limit}, account: {limit}, failed_attempts: {limit} }}
rc_key_requests: {limit}
rc_admin_redaction: {limit}
rc_federation: {{ window_size: 1000, sleep_limit: 10000, sleep_delay: 0, reject_limit: 10000, concurrent: 1000 }}
experimental_features:
  msc3720_enabled: true
federation:
  destination_min_retry_interval: 500
  destination_max_retry_interval: 1000
"#,
            cert = cert.display(),
            key = key.display(),
            ca = ca.path.display(),
        );
        let config_path = dir.join("homeserver.yaml");
        std::fs::write(&config_path, config).expect("write synapse config");
        let python = python();
        let status = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("run Synapse from {python:?} (scripts/test installs it): {e}"));
        assert!(status.success(), "Synapse could not generate its signing key");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let child = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&config_path)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start Synapse");
        let mut synapse = Synapse {
            child,
            endpoint: Endpoint { base_url: format!("http://127.0.0.1:{client_port}"), server_name: server_name.into() },
            dir: dir.to_owned(),
        };
        synapse.wait_up().await;
        synapse
    }

    async fn wait_up(&mut self) {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if http.get(self.url("/_matrix/client/versions")).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Synapse exited ({status}): {}", self.logs());
            }
            assert!(tokio::time::Instant::now() < deadline, "Synapse did not start: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Synapse's log and standard error so far.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}\n{}", read("stderr.log"), read("homeserver.log"))
    }
}

fn python() -> PathBuf {
    match std::env::var_os("MISSIVE_TEST_SYNAPSE") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(DEFAULT_VENV),
    }
}
