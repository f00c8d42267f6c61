//! The server-server API, one module per spec section. Served on every listener.

mod events;
mod keys;
mod keys_e2ee;
mod media;
mod membership;
mod openid;
mod query;
mod transactions;

use axum::Router;

use super::AppState;

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = keys::routes(router);
    let router = events::routes(router);
    let router = query::routes(router);
    let router = keys_e2ee::routes(router);
    let router = media::routes(router);
    let router = membership::routes(router);
    let router = transactions::routes(router);
    openid::routes(router)
}
