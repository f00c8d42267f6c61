//! Several real Missive servers that federate: each with its own server name, signing key
//! and TLS certificate, issued by a CA generated for the test and trusted through the
//! config, each reaching the others through `[federation] destinations` on loopback.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::TestServer;

/// Servers started together, in the order of their names.
pub struct Peers {
    pub servers: Vec<TestServer>,
    /// The TLS port of each server.
    pub tls_ports: Vec<u16>,
    /// The CA certificate (PEM) that issued every server's certificate.
    pub ca_pem: String,
    _dir: tempfile::TempDir,
}

impl Peers {
    /// Starts one server per name; `extra(i)` adds settings to server `i`.
    pub async fn start(names: &[&str], extra: impl Fn(usize) -> Vec<(String, String)>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new(dir.path());
        let tls_ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
        let destinations = names
            .iter()
            .zip(&tls_ports)
            .map(|(name, port)| format!("\"{name}\" = \"127.0.0.1:{port}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut servers = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (cert, key) = ca.issue(name, &dir.path().join(name));
            let mut env = vec![
                ("MISSIVE_SERVER_NAME".to_owned(), name.to_string()),
                ("MISSIVE_FEDERATION_LISTEN".to_owned(), format!("127.0.0.1:{}", tls_ports[i])),
                ("MISSIVE_TLS_CERT".to_owned(), cert.display().to_string()),
                ("MISSIVE_TLS_KEY".to_owned(), key.display().to_string()),
                ("MISSIVE_FEDERATION__TRUSTED_CA_FILES".to_owned(), format!("[\"{}\"]", ca.path.display())),
                ("MISSIVE_FEDERATION__ALLOW_PRIVATE_DESTINATIONS".to_owned(), "true".to_owned()),
                ("MISSIVE_FEDERATION__DESTINATIONS".to_owned(), format!("{{ {destinations} }}")),
            ];
            env.extend(extra(i));
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            servers.push(TestServer::start_with(&env).await);
        }
        Peers { servers, tls_ports, ca_pem: ca.pem, _dir: dir }
    }

    /// An HTTPS client that trusts the test CA and finds each server by name.
    pub fn tls_client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA certificate")]);
        for port in &self.tls_ports {
            let server = &self.servers[self.tls_ports.iter().position(|p| p == port).unwrap()];
            builder = builder.resolve(&server.server_name, ([127, 0, 0, 1], *port).into());
        }
        builder.build().expect("TLS client")
    }
}

/// A certificate authority generated for one test: the state PKI of a closed federation.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    /// Where the CA certificate is written.
    pub path: PathBuf,
}

impl TestCa {
    /// A new CA, its certificate written to `dir/ca.pem`.
    pub fn new(dir: &std::path::Path) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Missive test state PKI");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA");
        let pem = issuer.pem();
        let path = dir.join("ca.pem");
        std::fs::write(&path, &pem).expect("write CA");
        TestCa { issuer, pem, path }
    }

    /// A certificate for `name` signed by the CA, written as PEM files under `stem`.
    pub fn issue(&self, name: &str, stem: &std::path::Path) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec![name.to_owned()]).expect("server params");
        let cert = params.signed_by(&key, &self.issuer).expect("server certificate");
        let (cert_path, key_path) = (stem.with_extension("crt"), stem.with_extension("key"));
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }
}

/// A port free on loopback now, for a server that may be restarted on it: taken below
/// the kernel's ephemeral range (from which outbound connections and every `:0` bind
/// draw, so a stopped server's port could be handed to another test meanwhile), and never
/// handed out twice in this process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries run one after another; each starts elsewhere in the span.
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::SeqCst)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {}", FIRST + SPAN);
}
