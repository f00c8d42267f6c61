//! The outbound federation client: resolves the destination, signs the request with
//! X-Matrix (ruma builds the header from the request it serialises), sends it over TLS
//! checked against the system's roots and the operator's CA files, and parses the answer.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use ruma::{
    ServerName,
    api::{
        IncomingResponse, OutgoingRequest,
        auth_scheme::{AuthScheme, NoAuthentication},
        federation::authentication::{ServerSignatures, ServerSignaturesInput},
        path_builder::PathBuilder,
    },
};

use super::{
    Federation, FederationError,
    resolve::{Destination, GuardedDns, Resolver},
};
use crate::config::Config;

/// Largest answer read from another server (a large room's `send_join` state included).
const MAX_RESPONSE: usize = 100 * 1024 * 1024;

/// The HTTP client of federation, with its resolver.
pub struct Client {
    http: reqwest::Client,
    resolver: Resolver,
}

impl Client {
    /// Builds the client: TLS roots, DNS guard, timeouts.
    pub fn new(config: &Config) -> Result<Self, crate::tls::TlsError> {
        let settings = &config.federation;
        let tls = crate::tls::client_config(&settings.trusted_ca_files)?;
        let dns = Arc::new(GuardedDns::new(settings.allow_private_destinations));
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(dns.clone())
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("Missive/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| crate::tls::TlsError::Client(e.to_string()))?;
        let destinations = settings.destinations.clone().into_iter().collect();
        Ok(Self { http, resolver: Resolver::new(destinations, dns) })
    }

    /// Where `server` is served.
    pub async fn destination(&self, server: &ServerName) -> Result<Destination, FederationError> {
        self.resolver.resolve(server, |url| self.fetch(url)).await
    }

    /// A plain GET (for `.well-known`): the body of a 200 answer, or nothing.
    async fn fetch(&self, url: String) -> Option<Vec<u8>> {
        let response = self.http.get(&url).timeout(Duration::from_secs(10)).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.bytes().await.ok().map(|b| b.to_vec())
    }

    /// Sends an unauthenticated GET to `server` (the key document) and returns the JSON.
    pub async fn get_json(&self, server: &ServerName, path: &str) -> Result<serde_json::Value, FederationError> {
        let destination = self.destination(server).await?;
        let url = format!("{}{path}", destination.base_url());
        let request = self
            .http
            .get(&url)
            .header(http::header::HOST, &destination.host_header)
            .build()
            .map_err(|e| FederationError::Transport(server.to_string(), e.to_string()))?;
        let (status, body) = self.execute(server, request).await?;
        if !status.is_success() {
            return Err(remote_error(server, status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| FederationError::InvalidResponse(server.to_string(), e.to_string()))
    }

    async fn execute(
        &self,
        server: &ServerName,
        request: reqwest::Request,
    ) -> Result<(http::StatusCode, Bytes), FederationError> {
        let transport = |e: reqwest::Error| FederationError::Transport(server.to_string(), error_chain(&e));
        let mut response = self.http.execute(request).await.map_err(transport)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(FederationError::InvalidResponse(server.to_string(), "answer too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, Bytes::from(body)))
    }
}

impl Federation {
    /// Sends a server-server request to `destination`, signed by this server.
    pub async fn send<R>(&self, destination: &ServerName, request: R) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest,
        R::Authentication: FederationAuth,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = ()>,
    {
        self.check_allowed(destination)?;
        let target = self.client.destination(destination).await?;
        let input = R::Authentication::input(self, destination);
        let http_request: http::Request<Vec<u8>> =
            request.try_into_http_request(&target.base_url(), input, ()).map_err(|e| {
                FederationError::InvalidResponse(destination.to_string(), format!("cannot build request: {e}"))
            })?;
        let (status, body) = self.dispatch(destination, &target, http_request).await?;
        let response = http::Response::builder().status(status).body(body).expect("status and body make a response");
        R::IncomingResponse::try_from_http_response(response)
            .map_err(|e| FederationError::UnreadableAnswer(destination.to_string(), e.to_string()))
    }

    /// Sends a signed request that ruma has no usable type for (older API versions) and
    /// returns the JSON answer.
    pub async fn send_json(
        &self,
        destination: &ServerName,
        method: http::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, FederationError> {
        self.check_allowed(destination)?;
        let target = self.client.destination(destination).await?;
        let bytes = serde_json::to_vec(body)
            .map_err(|e| FederationError::InvalidResponse(destination.to_string(), e.to_string()))?;
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", target.base_url()))
            .body(bytes)
            .map_err(|e| FederationError::Transport(destination.to_string(), e.to_string()))?;
        let input = ServerSignaturesInput::new(self.server_name.clone(), destination.to_owned(), &self.keys.key_pair);
        let x_matrix = ruma::api::federation::authentication::XMatrix::try_from_http_request(&request, input)
            .map_err(|e| FederationError::Transport(destination.to_string(), e.to_string()))?;
        request.headers_mut().insert(http::header::AUTHORIZATION, http::HeaderValue::from(&x_matrix));
        let (_, body) = self.dispatch(destination, &target, request).await?;
        serde_json::from_slice(&body)
            .map_err(|e| FederationError::UnreadableAnswer(destination.to_string(), e.to_string()))
    }

    /// Sends a signed GET whose answer may be large (a media file): a successful answer is
    /// returned unread, for its body to be streamed.
    pub async fn get_streaming(
        &self,
        destination: &ServerName,
        path: &str,
    ) -> Result<reqwest::Response, FederationError> {
        self.check_allowed(destination)?;
        let target = self.client.destination(destination).await?;
        let transport = |e: String| FederationError::Transport(destination.to_string(), e);
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(format!("{}{path}", target.base_url()))
            .body(Vec::new())
            .map_err(|e| transport(e.to_string()))?;
        let input = ServerSignaturesInput::new(self.server_name.clone(), destination.to_owned(), &self.keys.key_pair);
        let x_matrix = ruma::api::federation::authentication::XMatrix::try_from_http_request(&request, input)
            .map_err(|e| transport(e.to_string()))?;
        request.headers_mut().insert(http::header::AUTHORIZATION, http::HeaderValue::from(&x_matrix));
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(&target.host_header)
                .map_err(|e| FederationError::Resolve(destination.to_string(), e.to_string()))?,
        );
        let request = reqwest::Request::try_from(request).map_err(|e| transport(e.to_string()))?;
        let response = self.client.http.execute(request).await.map_err(|e| transport(error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            // An error's JSON is small: what comes past the first 64 KiB is not read.
            let mut response = response;
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                body.extend_from_slice(&chunk);
                if body.len() > 64 * 1024 {
                    break;
                }
            }
            return Err(remote_error(destination, status, &body));
        }
        Ok(response)
    }

    /// Sends a built request to its destination (`Host` and content type set) and returns
    /// a successful answer's status and body.
    async fn dispatch(
        &self,
        destination: &ServerName,
        target: &super::resolve::Destination,
        request: http::Request<Vec<u8>>,
    ) -> Result<(http::StatusCode, Bytes), FederationError> {
        let (mut parts, body) = request.into_parts();
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(&target.host_header)
                .map_err(|e| FederationError::Resolve(destination.to_string(), e.to_string()))?,
        );
        if !body.is_empty() {
            parts.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        }
        let request = reqwest::Request::try_from(http::Request::from_parts(parts, body))
            .map_err(|e| FederationError::Transport(destination.to_string(), e.to_string()))?;
        let (status, body) = self.client.execute(destination, request).await?;
        if !status.is_success() {
            return Err(remote_error(destination, status, &body));
        }
        Ok((status, body))
    }
}

/// The authentication of a federation endpoint, as this server provides it.
pub trait FederationAuth: AuthScheme {
    /// What ruma needs to authenticate a request to `destination`.
    fn input<'a>(federation: &'a Federation, destination: &ServerName) -> Self::Input<'a>;
}

impl FederationAuth for ServerSignatures {
    fn input<'a>(federation: &'a Federation, destination: &ServerName) -> ServerSignaturesInput<'a> {
        ServerSignaturesInput::new(federation.server_name.clone(), destination.to_owned(), &federation.keys.key_pair)
    }
}

impl FederationAuth for NoAuthentication {
    fn input(_: &Federation, _: &ServerName) {}
}

fn remote_error(server: &ServerName, status: http::StatusCode, body: &[u8]) -> FederationError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)?.as_str().map(str::to_owned));
    FederationError::Remote {
        server: server.to_string(),
        status: status.as_u16(),
        errcode: field("errcode"),
        message: field("error"),
        room_version: field("room_version"),
    }
}

/// An error with its causes, for logs (reqwest's own message omits them).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
