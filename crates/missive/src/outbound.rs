//! HTTP clients that reach only public addresses, or the private ranges an operator
//! allows (an intranet): for URL previews and push gateways, whose URLs come from users.
//! Names are checked as they resolve, at connection time, so a name cannot be pointed
//! inside after a check; literal addresses never reach a resolver and are checked by
//! [`reachable`] before a request.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use crate::federation::resolve::is_private;

/// Whether an address may be reached: public, or in one of the allowed ranges.
pub fn reachable(ip: IpAddr, allowed_ranges: &[ipnet::IpNet]) -> bool {
    !is_private(ip) || allowed_ranges.iter().any(|range| range.contains(&ip))
}

/// Resolves names only to addresses that may be reached.
struct GuardedResolver {
    allowed_ranges: Arc<Vec<ipnet::IpNet>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allowed_ranges = self.allowed_ranges.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| reachable(a.ip(), &allowed_ranges))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address this server may reach").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A client that follows no redirect (callers check each hop) and gives up after `timeout`;
/// HTTPS trusts the system's roots and the state PKI's CA files.
pub fn client(
    allowed_ranges: &[ipnet::IpNet],
    trusted_ca_files: &[std::path::PathBuf],
    timeout: Duration,
    purpose: &str,
) -> Result<reqwest::Client, crate::tls::TlsError> {
    let tls = crate::tls::client_config(trusted_ca_files)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .dns_resolver(Arc::new(GuardedResolver { allowed_ranges: Arc::new(allowed_ranges.to_vec()) }))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5).min(timeout))
        .timeout(timeout)
        .user_agent(format!("Missive/{} ({purpose})", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| crate::tls::TlsError::Client(e.to_string()))
}

/// Whether a URL's host may be reached, when it is a literal address (names are checked
/// as they resolve).
pub fn literal_reachable(url: &url::Url, allowed_ranges: &[ipnet::IpNet]) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => reachable(IpAddr::V4(ip), allowed_ranges),
        Some(url::Host::Ipv6(ip)) => reachable(IpAddr::V6(ip), allowed_ranges),
        _ => true,
    }
}
