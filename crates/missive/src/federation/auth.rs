//! Inbound request authentication: the X-Matrix `Authorization` header, checked against
//! the origin's verify keys (fetched when unknown).

use ruma::{OwnedServerName, api::federation::authentication::XMatrix};

use super::{Federation, FederationError};
use crate::store::now_ms;

impl Federation {
    /// The origin of a signed request, once its signature verifies: the destination must
    /// be this server, the origin allowed, and the key one the origin publishes.
    pub async fn authenticate(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Result<OwnedServerName, FederationError> {
        let bad = |why: String| FederationError::BadAuthorization(why);
        let header = parts
            .headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .find_map(|value| value.to_str().ok().filter(|v| v.trim_start().starts_with("X-Matrix")))
            .ok_or_else(|| bad("missing X-Matrix authorization".into()))?;
        let x_matrix = XMatrix::parse(header).map_err(|e| FederationError::MalformedAuthorization(e.to_string()))?;
        // A body that is not canonical JSON (floats, huge integers) cannot have been signed.
        if !body.is_empty() && serde_json::from_slice::<ruma::CanonicalJsonValue>(body).is_err() {
            return Err(FederationError::NotCanonical);
        }
        if x_matrix.destination.as_ref().is_some_and(|d| *d != self.server_name) {
            return Err(bad(format!("request meant for another server, not {}", self.server_name)));
        }
        self.check_allowed(&x_matrix.origin)?;
        let keys = self.verify_keys(&x_matrix.origin, &[x_matrix.key.to_string()], Some(now_ms())).await?;
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let request = http::Request::builder()
            .method(parts.method.clone())
            .uri(path)
            .body(body)
            .map_err(|e| bad(e.to_string()))?;
        x_matrix.verify_request(&request, &self.server_name, &keys).map_err(|e| {
            tracing::debug!(origin = %x_matrix.origin, error = %e, "X-Matrix signature does not verify");
            FederationError::BadSignature(format!("X-Matrix signature of {}: {e}", x_matrix.origin))
        })?;
        if let Some(sender) = self.sender() {
            sender.heard_from(x_matrix.origin.as_str());
        }
        Ok(x_matrix.origin)
    }
}
