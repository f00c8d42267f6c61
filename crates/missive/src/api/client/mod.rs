//! Client-server API handlers, one module per spec section.

pub mod account;
pub mod backup;
pub mod directory;
pub mod discovery;
pub mod keys;
pub mod legacy;
mod media;
mod media_proxy;
mod oauth;
pub mod presence;
pub mod profile;
mod push;
pub mod reporting;
pub mod rooms;
pub mod spaces;
mod sso;
pub mod sync;
pub mod user_data;

use axum::Router;

use super::AppState;

/// Registers every client-server endpoint.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = discovery::routes(router);
    let router = account::routes(router);
    let router = profile::routes(router);
    let router = user_data::routes(router);
    let router = rooms::routes(router);
    let router = spaces::routes(router);
    let router = directory::routes(router);
    let router = keys::routes(router);
    let router = backup::routes(router);
    let router = reporting::routes(router);
    let router = presence::routes(router);
    let router = legacy::routes(router);
    let router = sso::routes(router);
    let router = oauth::routes(router);
    let router = media::routes(router);
    let router = media_proxy::routes(router);
    let router = push::routes(router);
    sync::routes(router)
}
