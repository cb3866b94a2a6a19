//! `/v1/isolated/session/{sid}/files*`, `/directories*`, `/diff` and `/commit`.

use axum::Router;

use crate::agent::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
}
