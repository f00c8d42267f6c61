//! The HTTP layer: thin axum handlers grouped as the spec groups them, and the route table.

pub mod admin;
mod audit;
pub mod client;
pub mod federation;
pub mod ruma;
pub mod scim;

use std::sync::Arc;

use axum::{Router, routing::get};
use tower_http::cors::CorsLayer;

use crate::{accounts::Accounts, config::Config, ratelimit::RateLimiter, rooms::Rooms, store::Store, sync::Sync};

/// Everything a handler can reach, built once at start-up and shared by `Arc`.
pub struct Services {
    pub config: Arc<Config>,
    pub store: Store,
    pub accounts: Arc<Accounts>,
    pub rooms: Arc<Rooms>,
    pub sync: Sync,
    pub limits: RateLimiter,
    pub user_data: crate::user_data::UserData,
    pub e2ee: Arc<crate::e2ee::E2ee>,
    pub backups: crate::backup::Backups,
    pub reports: crate::reports::Reports,
    pub federation: Arc<crate::federation::Federation>,
    pub sso: Arc<crate::identity::Sso>,
    /// The media repository.
    pub media: Arc<crate::media::Media>,
    /// Pushers and push delivery.
    pub push: Arc<crate::push::Push>,
    /// The retention purge.
    pub purge: Arc<crate::privacy::Purge>,
    /// The OAuth 2.0 API, offered when single sign-on is set up.
    pub oauth: Option<Arc<crate::identity::oauth::OAuth>>,
}

/// The axum state: a handle on the services.
pub type AppState = Arc<Services>;

/// The complete route table.
pub fn router(state: AppState) -> Router {
    let router = Router::new();
    let router = client::routes(router);
    let router = federation::routes(router);
    // Every operator and IAM request goes through the audit trail.
    let audited = scim::routes(admin::routes(Router::new()))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit::record));
    router
        .merge(audited)
        .route("/.well-known/matrix/client", get(client::discovery::well_known))
        .fallback(self::ruma::unrecognized)
        .method_not_allowed_fallback(self::ruma::method_not_allowed)
        .layer(CorsLayer::very_permissive())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
