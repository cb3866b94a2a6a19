//! `/metrics` routes: a snapshot answered from memory, and a periodic SSE stream.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Json;
use bytes::Bytes;

use super::error::ApiError;
use super::extract::Params;
use super::sse_headers;
use super::Routes;
use crate::agent::AppState;
use crate::wire::files::Metrics;
use crate::wire::ErrorBody;

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/metrics", get(get_metrics))
        .route("/metrics/watch", get(watch_metrics))
}

/// CPU, memory (cgroup-aware), disk, network, processes and load, from the background
/// sampler: answered at once, CPU percent over the last second.
#[utoipa::path(get, path = "/metrics", tag = "metrics", responses((status = 200, body = Metrics)))]
pub(crate) async fn get_metrics(State(state): State<AppState>) -> Json<Metrics> {
    Json(state.metrics.latest())
}

/// Streams metrics every `interval_ms` (default 1000, 100 to 3600000) as standard SSE, CPU
/// percent measured over each interval.
#[utoipa::path(get, path = "/metrics/watch", tag = "metrics",
    params(("interval_ms" = Option<u64>, Query, description = "milliseconds between samples")),
    responses((status = 200, description = "SSE stream of Metrics", content_type = "text/event-stream", body = Metrics),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn watch_metrics(State(state): State<AppState>, q: Params) -> Result<Response, ApiError> {
    let interval = q.parse::<u64>("interval_ms")?.unwrap_or(1000);
    if !(100..=3_600_000).contains(&interval) {
        return Err(ApiError::bad_request("interval_ms must be from 100 to 3600000"));
    }
    let sampler = state.metrics.sampler();
    let first = {
        let s = sampler.clone();
        tokio::task::spawn_blocking(move || s.counters())
            .await
            .map_err(|_| ApiError::runtime("metrics sampler failed"))?
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let stream = futures_util::stream::unfold((ticker, first, 1u64), move |(mut ticker, prev, id)| {
        let sampler = sampler.clone();
        async move {
            ticker.tick().await;
            let (metrics, cur) = tokio::task::spawn_blocking(move || sampler.sample(&prev))
                .await
                .ok()?;
            let json = serde_json::to_string(&metrics).ok()?;
            let frame = Bytes::from(format!("id: {id}\ndata: {json}\n\n"));
            Some((Ok::<_, std::io::Error>(frame), (ticker, cur, id + 1)))
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    sse_headers(resp.headers_mut());
    Ok(resp)
}
