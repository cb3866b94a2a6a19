//! `/v1/tokens`: mint a user token, say who the caller is, revoke a token.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::extract::{Caller, JsonBody};
use super::App;
use crate::orchestrator::auth::Perm;
use crate::orchestrator::error::Error;
use crate::wire::identity::CreateToken;

/// The routes of this resource (behind auth).
pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/tokens", post(mint))
        .route("/tokens/current", get(current))
        .route("/tokens/{token_id}", delete(revoke))
}

#[utoipa::path(post, path = "/v1/tokens", request_body = crate::wire::identity::CreateToken,
    responses((status = 201, description = "an HS256 JWT for `Authorization: Bearer`", body = crate::wire::identity::Token),
        (status = 400, description = "`userId` not 1–128 of `[A-Za-z0-9._@-]`, an unknown role, `ttlSeconds` outside 60–604800, or an unknown field", body = crate::wire::lifecycle::LifecycleError),
        (status = 401, description = "no or a bad credential (`WWW-Authenticate: Bearer`)", body = crate::wire::lifecycle::LifecycleError),
        (status = 403, description = "`AUTH::FORBIDDEN`: a non-admin minting for someone else or above its own role", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn mint(
    State(app): State<App>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreateToken>,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let token = app.service.mint_token(body, &caller).await?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

#[utoipa::path(get, path = "/v1/tokens/current",
    responses((status = 200, description = "who the caller is", body = crate::wire::identity::CurrentPrincipal),
        (status = 401, description = "no or a bad credential", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn current(State(app): State<App>, Caller(caller): Caller) -> Response {
    Json(app.service.current_principal(&caller)).into_response()
}

#[utoipa::path(delete, path = "/v1/tokens/{token_id}", params(("token_id" = String, Path)),
    responses((status = 204, description = "revoked: refused from now until it expires"),
        (status = 401, description = "no or a bad credential", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`AUTH::TOKEN_NOT_FOUND`: unknown, or someone else's", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn revoke(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(token_id): Path<String>,
) -> Result<StatusCode, Error> {
    app.service.revoke_token(&token_id, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}
