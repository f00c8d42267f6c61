//! Server discovery: where the server called `server_name` is served, as the spec's
//! resolution steps say (configured destination, IP literal, explicit port,
//! `.well-known/matrix/server` delegation, SRV, port 8448), and the DNS guard that keeps
//! outbound connections out of private ranges unless the operator allows them.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_resolver::TokioResolver;
use ruma::ServerName;

use super::FederationError;

/// Where to send a server's requests: the URL authority (`host:port`; the host names the
/// TLS certificate to expect) and the `Host` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub authority: String,
    pub host_header: String,
}

impl Destination {
    /// The base URL of the destination's federation API.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.authority)
    }
}

/// How long a `.well-known` answer (or its absence) is trusted.
const WELL_KNOWN_TTL: Duration = Duration::from_secs(24 * 3600);
const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(5 * 60);
/// Largest `.well-known/matrix/server` document read.
const WELL_KNOWN_MAX: usize = 50 * 1024;

/// Resolves server names; its answers for hosts that SRV records move are handed to the
/// DNS guard through `targets`.
pub struct Resolver {
    destinations: HashMap<String, String>,
    well_known: Mutex<HashMap<String, (Option<String>, Instant)>>,
    dns: Arc<GuardedDns>,
    srv: Option<TokioResolver>,
}

impl Resolver {
    /// A resolver for the configured destinations, sharing `dns` with the HTTP client.
    pub fn new(destinations: HashMap<String, String>, dns: Arc<GuardedDns>) -> Self {
        let srv = TokioResolver::builder_tokio().ok().map(|builder| builder.build());
        Self { destinations, well_known: Mutex::new(HashMap::new()), dns, srv }
    }

    /// Where `server` is served. `fetch_well_known` reads a URL's body (the federation
    /// client, so that the same trust roots and DNS guard apply).
    pub async fn resolve<F, Fut>(
        &self,
        server: &ServerName,
        fetch_well_known: F,
    ) -> Result<Destination, FederationError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Option<Vec<u8>>>,
    {
        let name = server.as_str();
        let (host, port) = split_host_port(name);
        // A configured destination: connect there, but expect the server name's certificate.
        if let Some(address) = self.destinations.get(name) {
            let (to_host, to_port) = split_host_port(address);
            self.dns.route(host, to_host);
            let port = to_port.unwrap_or(8448);
            return Ok(Destination { authority: format!("{}:{port}", bracket(host)), host_header: name.to_owned() });
        }
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            self.dns.check_ip(name, ip)?;
            let port = port.unwrap_or(8448);
            return Ok(Destination { authority: format!("{}:{port}", bracket(host)), host_header: name.to_owned() });
        }
        if let Some(port) = port {
            return Ok(Destination { authority: format!("{host}:{port}"), host_header: name.to_owned() });
        }
        // Delegation: the named host says where its federation is served.
        if let Some(delegated) = self.well_known(host, fetch_well_known).await {
            let (d_host, d_port) = split_host_port(&delegated);
            if let Ok(ip) = d_host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                self.dns.check_ip(name, ip)?;
                let port = d_port.unwrap_or(8448);
                return Ok(Destination { authority: format!("{}:{port}", bracket(d_host)), host_header: delegated });
            }
            if let Some(port) = d_port {
                return Ok(Destination { authority: format!("{d_host}:{port}"), host_header: delegated });
            }
            if let Some((target, port)) = self.srv(d_host).await {
                self.dns.route(d_host, &target);
                return Ok(Destination { authority: format!("{d_host}:{port}"), host_header: d_host.to_owned() });
            }
            return Ok(Destination { authority: format!("{d_host}:8448"), host_header: d_host.to_owned() });
        }
        if let Some((target, port)) = self.srv(host).await {
            self.dns.route(host, &target);
            return Ok(Destination { authority: format!("{host}:{port}"), host_header: host.to_owned() });
        }
        Ok(Destination { authority: format!("{host}:8448"), host_header: host.to_owned() })
    }

    /// The `m.server` of `https://host/.well-known/matrix/server`, cached.
    async fn well_known<F, Fut>(&self, host: &str, fetch: F) -> Option<String>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Option<Vec<u8>>>,
    {
        if let Some((answer, expires)) = self.well_known.lock().expect("well-known cache poisoned").get(host)
            && *expires > Instant::now()
        {
            return answer.clone();
        }
        let body = fetch(format!("https://{host}/.well-known/matrix/server")).await;
        let answer = body
            .filter(|b| b.len() <= WELL_KNOWN_MAX)
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("m.server")?.as_str().map(str::to_owned))
            .filter(|s| ServerName::parse(s).is_ok());
        let ttl = if answer.is_some() { WELL_KNOWN_TTL } else { WELL_KNOWN_ERROR_TTL };
        tracing::debug!(%host, delegated = ?answer, "well-known lookup");
        self.well_known
            .lock()
            .expect("well-known cache poisoned")
            .insert(host.to_owned(), (answer.clone(), Instant::now() + ttl));
        answer
    }

    /// The best `_matrix-fed._tcp` (then legacy `_matrix._tcp`) record of a host.
    async fn srv(&self, host: &str) -> Option<(String, u16)> {
        let resolver = self.srv.as_ref()?;
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            if let Ok(lookup) = resolver.srv_lookup(format!("{service}.{host}.")).await
                && let Some(record) = lookup.iter().min_by_key(|r| (r.priority(), std::cmp::Reverse(r.weight())))
            {
                let target = record.target().to_utf8().trim_end_matches('.').to_owned();
                return Some((target, record.port()));
            }
        }
        None
    }
}

/// `host` and the port of `host[:port]` (IPv6 literals in brackets).
fn split_host_port(name: &str) -> (&str, Option<u16>) {
    if let Some(rest) = name.strip_prefix('[')
        && let Some(end) = rest.find(']')
    {
        let port = rest[end + 1..].strip_prefix(':').and_then(|p| p.parse().ok());
        return (&name[..end + 2], port);
    }
    match name.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => (host, port.parse().ok()),
        _ => (name, None),
    }
}

/// An IPv6 address in a URL authority needs brackets.
fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() }
}

/// The DNS resolver of the federation client: follows the routes resolution set (a server
/// name to its configured address, a host to its SRV target) and refuses private,
/// loopback and link-local addresses unless the operator allows them, at connection time,
/// so that a name cannot be made to point inside after it was checked.
#[derive(Default)]
pub struct GuardedDns {
    routes: Mutex<HashMap<String, String>>,
    allow_private: bool,
}

impl GuardedDns {
    /// A guard; `allow_private` lets destinations resolve to private addresses.
    pub fn new(allow_private: bool) -> Self {
        Self { routes: Mutex::new(HashMap::new()), allow_private }
    }

    fn route(&self, from: &str, to: &str) {
        if from != to {
            self.routes.lock().expect("dns routes poisoned").insert(from.to_owned(), to.to_owned());
        }
    }

    fn check_ip(&self, server: &str, ip: IpAddr) -> Result<(), FederationError> {
        if !self.allow_private && is_private(ip) {
            return Err(FederationError::Resolve(server.to_owned(), format!("{ip} is a private address")));
        }
        Ok(())
    }
}

impl reqwest::dns::Resolve for GuardedDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let target = self.routes.lock().expect("dns routes poisoned").get(&host).cloned().unwrap_or(host.clone());
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match target.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, 0)],
                Err(_) => tokio::net::lookup_host((target.as_str(), 0)).await?.collect(),
            };
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| allow_private || !is_private(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no address federation may reach").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Loopback, private, link-local, unique-local, unspecified and similar addresses.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // carrier-grade NAT
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_split_for_names_and_literals() {
        assert_eq!(split_host_port("police.example"), ("police.example", None));
        assert_eq!(split_host_port("police.example:8449"), ("police.example", Some(8449)));
        assert_eq!(split_host_port("127.0.0.1:8448"), ("127.0.0.1", Some(8448)));
        assert_eq!(split_host_port("[::1]:8448"), ("[::1]", Some(8448)));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
    }

    #[test]
    fn private_ranges_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "2001:4860::8888", "100.128.0.1"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn explicit_ports_literals_and_configured_destinations_skip_discovery() {
        let dns = Arc::new(GuardedDns::new(false));
        let destinations = HashMap::from([("police.gov.example".to_owned(), "10.0.0.7:8449".to_owned())]);
        let resolver = Resolver::new(destinations, dns.clone());
        let never = |_url: String| async { panic!("no discovery expected") };
        let configured =
            resolver.resolve(ServerName::parse("police.gov.example").unwrap().as_ref(), never).await.unwrap();
        assert_eq!(configured.authority, "police.gov.example:8449");
        assert_eq!(dns.routes.lock().unwrap()["police.gov.example"], "10.0.0.7");
        let explicit = resolver.resolve(ServerName::parse("edu.example:8500").unwrap().as_ref(), never).await.unwrap();
        assert_eq!(
            (explicit.authority.as_str(), explicit.host_header.as_str()),
            ("edu.example:8500", "edu.example:8500")
        );
        let public_ip = resolver.resolve(ServerName::parse("8.8.8.8").unwrap().as_ref(), never).await.unwrap();
        assert_eq!(public_ip.authority, "8.8.8.8:8448");
        let private = resolver.resolve(ServerName::parse("127.0.0.1:8448").unwrap().as_ref(), never).await;
        assert!(matches!(private, Err(FederationError::Resolve(..))), "{private:?}");
    }

    #[tokio::test]
    async fn well_known_delegation_is_followed_and_cached() {
        let resolver = Resolver::new(HashMap::new(), Arc::new(GuardedDns::new(false)));
        let server = ServerName::parse("gouv.example").unwrap();
        let delegate = |_url: String| async { Some(br#"{"m.server": "matrix.gouv.example:443"}"#.to_vec()) };
        let found = resolver.resolve(&server, delegate).await.unwrap();
        assert_eq!(
            (found.authority.as_str(), found.host_header.as_str()),
            ("matrix.gouv.example:443", "matrix.gouv.example:443")
        );
        let never = |_url: String| async { panic!("the delegation is cached") };
        assert_eq!(resolver.resolve(&server, never).await.unwrap(), found);
    }
}
