//! The server-server API, one module per spec section. Served on every listener.

mod openid;

use axum::Router;

use super::AppState;

pub(super) fn routes(router: Router<AppState>) -> Router<AppState> {
    openid::routes(router)
}
