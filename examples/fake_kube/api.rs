//! The HTTP face of OUR MODEL OF KUBERNETES (test-only): the apiserver's REST paths for the
//! kinds in `store::KINDS`, `Status` error bodies, list and watch (newline-delimited JSON
//! events, bookmarks, 410 as an `ERROR` event as the apiserver sends it), patches by content
//! type, `pods/log`, `pods/portforward` (WebSocket, `portforward.rs`), and a test hook
//! `POST /fake-kube/compact`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::docklet::Docklet;
use crate::store::{is_gated, kind_of, ApiErr, Change, Kind, Notice, Selectors, Store};

/// What every handler shares.
#[derive(Clone)]
pub struct Ctx {
    pub store: Arc<Store>,
    pub docklet: Arc<Docklet>,
}

type Params = HashMap<String, String>;

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(self.body())).into_response()
    }
}

pub fn router(ctx: Ctx) -> Router {
    let collection = get(list_or_watch).post(create).delete(delete_collection);
    let object = get(read).put(replace).patch(patch).delete(delete);
    let sub = get(read_sub).put(replace_sub).patch(patch_sub);
    Router::new()
        .route("/version", get(version))
        .route("/fake-kube/compact", post(compact))
        .route("/fake-kube/timings", get(timings))
        .route("/api/{version}/{plural}", get(list_or_watch))
        .route("/api/{version}/namespaces/{ns}/{plural}", collection.clone())
        .route("/api/{version}/namespaces/{ns}/{plural}/{name}", object.clone())
        .route(
            "/api/{version}/namespaces/{ns}/{plural}/{name}/{sub}",
            sub.clone(),
        )
        .route("/apis/{group}/{version}/{plural}", get(list_or_watch))
        .route("/apis/{group}/{version}/namespaces/{ns}/{plural}", collection)
        .route("/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}", object)
        .route(
            "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/{sub}",
            sub,
        )
        .fallback(|| async {
            ApiErr {
                code: 404,
                reason: "NotFound",
                message: "the server could not find the requested resource".into(),
            }
        })
        .with_state(ctx)
}

/// The kind a path names, else the apiserver's 404.
fn kind(path: &Params) -> Result<Kind, ApiErr> {
    let version = path.get("version").map(String::as_str).unwrap_or("v1");
    let gv = match path.get("group") {
        Some(group) => format!("{group}/{version}"),
        None => version.to_owned(),
    };
    let plural = path.get("plural").map(String::as_str).unwrap_or("");
    kind_of(&gv, plural).ok_or_else(|| ApiErr {
        code: 404,
        reason: "NotFound",
        message: format!("the server could not find the requested resource ({gv}/{plural})"),
    })
}

fn part<'a>(path: &'a Params, key: &str) -> &'a str {
    path.get(key).map(String::as_str).unwrap_or("")
}

fn body_json(body: &Bytes) -> Result<Value, ApiErr> {
    serde_json::from_slice(body).map_err(|e| ApiErr::bad_request(format!("the body is not JSON: {e}")))
}

fn ok(code: StatusCode, v: Value) -> Response {
    (code, Json(v)).into_response()
}

async fn version() -> Json<Value> {
    Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake-kube", "platform": "linux/amd64"}))
}

async fn compact(State(ctx): State<Ctx>) -> StatusCode {
    ctx.store.compact();
    StatusCode::NO_CONTENT
}

/// The docklet's own time per pod (a benchmark hook: `scripts/bench.sh k8s`).
async fn timings(State(ctx): State<Ctx>) -> Json<HashMap<String, crate::docklet::Timing>> {
    Json(ctx.docklet.timings())
}

async fn create(State(ctx): State<Ctx>, Path(path): Path<Params>, body: Bytes) -> Result<Response, ApiErr> {
    let kind = kind(&path)?;
    let ns = part(&path, "ns");
    let mut obj = body_json(&body)?;
    if let Some(body_ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str) {
        if body_ns != ns {
            return Err(ApiErr::bad_request(format!(
                "the namespace of the provided object does not match the namespace sent on the request ({body_ns} != {ns})"
            )));
        }
    }
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    let created = ctx.store.create(kind, ns, obj)?;
    if kind.plural == "pods" && !is_gated(&created) {
        ctx.docklet.start(created.clone());
    }
    Ok(ok(StatusCode::CREATED, created))
}

async fn read(State(ctx): State<Ctx>, Path(path): Path<Params>) -> Result<Response, ApiErr> {
    let kind = kind(&path)?;
    Ok(ok(
        StatusCode::OK,
        ctx.store.get(kind, part(&path, "ns"), part(&path, "name"))?,
    ))
}

fn selectors(q: &Params) -> Result<Selectors, ApiErr> {
    Selectors::parse(
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
    )
}

fn flag(q: &Params, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true" || v == "1")
}

async fn list_or_watch(
    State(ctx): State<Ctx>,
    Path(path): Path<Params>,
    Query(q): Query<Params>,
) -> Result<Response, ApiErr> {
    let kind = kind(&path)?;
    let ns = path.get("ns").map(String::as_str);
    let sel = selectors(&q)?;
    if flag(&q, "watch") {
        return watch(ctx, kind, ns, &q, sel);
    }
    let (items, rv) = ctx.store.list(kind, ns, &sel);
    Ok(ok(
        StatusCode::OK,
        json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version,
               "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    ))
}

fn line(verb: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": verb, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": kind.kind, "apiVersion": kind.api_version, "metadata": meta}),
    )
}

/// A watch: the initial events, then live changes, as `{"type":…,"object":…}` lines; a
/// version too old, a compaction or a watcher too slow to keep up ends it with an `ERROR`
/// event carrying a 410 `Status` (what kube-rs's watcher re-lists on).
fn watch(ctx: Ctx, kind: Kind, ns: Option<&str>, q: &Params, sel: Selectors) -> Result<Response, ApiErr> {
    let rv = match q
        .get("resourceVersion")
        .map(String::as_str)
        .filter(|v| !v.is_empty())
    {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiErr::bad_request(format!("invalid resource version {v:?}")))?,
        ),
    };
    let send_initial = flag(q, "sendInitialEvents");
    let bookmarks = flag(q, "allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800u64);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    let start = if send_initial {
        ctx.store.watch(kind, ns, None, &sel)
    } else {
        ctx.store.watch(kind, ns, rv, &sel)
    };
    let ns = ns.map(str::to_owned);
    tokio::spawn(async move {
        let mut start = match start {
            Ok(start) => start,
            Err(gone) => {
                let _ = tx.send(Ok(line("ERROR", &gone.body()))).await;
                return;
            }
        };
        let mut last = start.rv;
        for change in &start.initial {
            if tx.send(Ok(line(change.verb, &change.object))).await.is_err() {
                return;
            }
        }
        if send_initial && tx.send(Ok(bookmark(kind, start.rv, true))).await.is_err() {
            return;
        }
        let sent_through = start.initial.iter().map(|c| c.rv).max().unwrap_or(0);
        let matches = |c: &Change| {
            c.kind == kind && ns.as_deref().is_none_or(|n| n == c.namespace) && sel.matches(&c.object)
        };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        ticks.tick().await;
        loop {
            let out = tokio::select! {
                notice = start.rx.recv() => match notice {
                    Ok(Notice::Change(c)) => {
                        last = last.max(c.rv);
                        if c.rv <= sent_through || !matches(&c) { continue }
                        line(c.verb, &c.object)
                    }
                    Ok(Notice::Compacted) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = ApiErr::gone(format!("too old resource version: {last}"));
                        let _ = tx.send(Ok(line("ERROR", &gone.body()))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticks.tick(), if bookmarks => bookmark(kind, last, false),
                () = &mut deadline => return,
                () = tx.closed() => return,
            };
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .expect("static response parts"))
}

async fn replace(State(ctx): State<Ctx>, Path(path): Path<Params>, body: Bytes) -> Result<Response, ApiErr> {
    update(ctx, path, false, |_| body_json(&body))
}

async fn replace_sub(
    State(ctx): State<Ctx>,
    Path(path): Path<Params>,
    body: Bytes,
) -> Result<Response, ApiErr> {
    status_sub(&path)?;
    update(ctx, path, true, |_| body_json(&body))
}

async fn patch(
    State(ctx): State<Ctx>,
    Path(path): Path<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiErr> {
    let ct = content_type(&headers);
    update(ctx, path, false, |current| apply_patch(&ct, current, &body))
}

async fn patch_sub(
    State(ctx): State<Ctx>,
    Path(path): Path<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiErr> {
    status_sub(&path)?;
    let ct = content_type(&headers);
    update(ctx, path, true, |current| apply_patch(&ct, current, &body))
}

fn status_sub(path: &Params) -> Result<(), ApiErr> {
    match part(path, "sub") {
        "status" => Ok(()),
        other => Err(ApiErr {
            code: 404,
            reason: "NotFound",
            message: format!("the fake serves no subresource {other:?} for this verb"),
        }),
    }
}

fn update(
    ctx: Ctx,
    path: Params,
    status_only: bool,
    edit: impl FnOnce(Value) -> Result<Value, ApiErr>,
) -> Result<Response, ApiErr> {
    let kind = kind(&path)?;
    // Seen under the store's lock, so only the update that removes the last gate starts the pod.
    let mut was_gated = false;
    let updated = ctx.store.update(
        kind,
        part(&path, "ns"),
        part(&path, "name"),
        status_only,
        |current| {
            was_gated = is_gated(&current);
            edit(current)
        },
    )?;
    if kind.plural == "pods" && was_gated && !is_gated(&updated) {
        ctx.docklet.start(updated.clone());
    }
    Ok(ok(StatusCode::OK, updated))
}

fn content_type(headers: &HeaderMap) -> String {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ct.split(';').next().unwrap_or("").trim().to_owned()
}

/// A patch by its content type. A strategic merge patch is applied as a JSON merge patch:
/// the fake knows no patch strategies (lists are replaced whole).
fn apply_patch(content_type: &str, mut current: Value, body: &Bytes) -> Result<Value, ApiErr> {
    match content_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            json_patch::merge(&mut current, &body_json(body)?);
            Ok(current)
        }
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiErr::bad_request(format!("the body is not a JSON patch: {e}")))?;
            json_patch::patch(&mut current, &ops).map_err(|e| {
                ApiErr::invalid(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
            Ok(current)
        }
        other => Err(ApiErr {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!("the fake apiserver does not support the patch type {other:?}"),
        }),
    }
}

/// DELETE: a pod is marked and torn down by the docklet (the response is the pod, with its
/// `deletionTimestamp`); anything else goes at once (a `Status` of `Success`), taking its
/// dependents with it.
async fn delete(
    State(ctx): State<Ctx>,
    Path(path): Path<Params>,
    Query(q): Query<Params>,
    body: Bytes,
) -> Result<Response, ApiErr> {
    let kind = kind(&path)?;
    let (ns, name) = (part(&path, "ns"), part(&path, "name"));
    let opts: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let grace = q
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse().ok())
        .or_else(|| opts.get("gracePeriodSeconds").and_then(Value::as_i64))
        .unwrap_or(30);
    delete_one(&ctx, kind, ns, name, grace)
}

fn delete_one(ctx: &Ctx, kind: Kind, ns: &str, name: &str, grace: i64) -> Result<Response, ApiErr> {
    if kind.plural == "pods" {
        let pod = ctx.store.mark_deleting(ns, name, grace)?;
        ctx.docklet.stop(pod.clone(), grace);
        return Ok(ok(StatusCode::OK, pod));
    }
    let removed = ctx.store.remove(kind, ns, name, None)?;
    for (k, obj) in &removed {
        if k.plural == "persistentvolumeclaims" {
            ctx.docklet.claim_deleted(obj);
        }
    }
    let uid = removed
        .first()
        .and_then(|(_, o)| o.pointer("/metadata/uid").cloned())
        .unwrap_or(Value::Null);
    Ok(ok(
        StatusCode::OK,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
               "details": {"name": name, "kind": kind.plural, "uid": uid}}),
    ))
}

async fn delete_collection(
    State(ctx): State<Ctx>,
    Path(path): Path<Params>,
    Query(q): Query<Params>,
) -> Result<Response, ApiErr> {
    let kind = kind(&path)?;
    let ns = part(&path, "ns");
    let (items, rv) = ctx.store.list(kind, Some(ns), &selectors(&q)?);
    let mut deleted = Vec::new();
    for item in items {
        let name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if delete_one(&ctx, kind, ns, &name, 30).is_ok() {
            deleted.push(item);
        }
    }
    Ok(ok(
        StatusCode::OK,
        json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version,
               "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
    ))
}

async fn read_sub(
    State(ctx): State<Ctx>,
    Path(path): Path<Params>,
    Query(q): Query<Params>,
    req: axum::extract::Request,
) -> Result<Response, ApiErr> {
    let kind = kind(&path)?;
    let pod = ctx.store.get(kind, part(&path, "ns"), part(&path, "name"))?;
    match (kind.plural, part(&path, "sub")) {
        ("pods", "log") => ctx.docklet.logs(&pod, &q).await,
        ("pods", "portforward") => {
            use axum::extract::FromRequestParts as _;
            let (mut parts, _) = req.into_parts();
            let ws = axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &())
                .await
                .map_err(|e| ApiErr {
                    code: 400,
                    reason: "BadRequest",
                    message: format!("port-forward needs a WebSocket upgrade: {}", e.body_text()),
                })?;
            crate::portforward::serve(&ctx.docklet, &pod, &q, ws).await
        }
        (_, "status") => Ok(ok(StatusCode::OK, pod)),
        (_, other) => Err(ApiErr {
            code: 404,
            reason: "NotFound",
            message: format!("the fake serves no subresource {other:?}"),
        }),
    }
}
