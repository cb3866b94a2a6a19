//! Image prepull tasks against the real Docker engine and local registries
//! (`scripts/registry.sh`: 127.0.0.1:5000, and 127.0.0.1:5001 with htpasswd auth).
//!
//! A pull from a registry on loopback takes well under a second, too fast to watch. So the
//! pulls whose progress or cancellation is tested go through a [`Valve`]: a TCP relay to the
//! registry that passes only as many bytes as the test has allowed so far. The test opens it
//! step by step and waits for sandboxd to report each step, so nothing depends on timing.
//! Docker treats every 127.0.0.0/8 registry as insecure (plain HTTP), the relay's port too.
//!
//! Each test pulls its own image (its own random layer), so tests running in parallel never
//! share a download, and removes it locally before and after.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::docker::docker_available;
use crate::sandboxd::{docker, Sandboxd};
use crate::util::eventually;

pub(crate) const REGISTRY: &str = "127.0.0.1:5000";
const AUTH_REGISTRY: &str = "127.0.0.1:5001";
const USER: &str = "prepull";
const PASSWORD: &str = "prepull-secret";
pub(crate) const MIB: u64 = 1024 * 1024;

/// Starts the local registries (a no-op while they run and hold the test images). Docker
/// tests are skipped without an engine, as everywhere in this suite; with one, a registry
/// that cannot start fails the test, unless `EXECD_TEST_SKIP_REGISTRY=1` says to skip.
pub(crate) fn registries() -> bool {
    if !docker_available() {
        return false;
    }
    if std::env::var("EXECD_TEST_SKIP_REGISTRY").is_ok_and(|v| v == "1") {
        eprintln!("skipping: EXECD_TEST_SKIP_REGISTRY=1");
        return false;
    }
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/registry.sh"))
        .arg("start")
        .stdout(Stdio::null())
        .output()
        .expect("run scripts/registry.sh");
    assert!(
        out.status.success(),
        "scripts/registry.sh start failed (EXECD_TEST_SKIP_REGISTRY=1 skips these tests): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Removes every local image of repository `name` (any registry, any tag), so that a pull
/// downloads its layers again; also on drop.
pub(crate) struct Forget(&'static str);

impl Forget {
    pub(crate) fn now(name: &'static str) -> Self {
        let f = Forget(name);
        f.clean();
        f
    }

    fn clean(&self) {
        // By image id: that covers every tag, and images whose tag a later pull took over.
        let suffix = format!("/{}", self.0);
        for line in docker(&["images", "--format", "{{.Repository}} {{.ID}}"]).lines() {
            if let Some((repo, id)) = line.split_once(' ') {
                if repo.ends_with(&suffix) {
                    docker(&["rmi", "-f", id]);
                }
            }
        }
    }
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.clean();
    }
}

pub(crate) fn image_present(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A TCP relay to a registry that passes registry→client bytes only up to an allowance.
pub(crate) struct Valve {
    pub(crate) port: u16,
    allowed: watch::Sender<u64>,
    passed: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Valve {
    pub(crate) async fn to(upstream: &'static str, allowed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(allowed);
        let passed = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn({
            let passed = passed.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    tokio::spawn(relay(client, server, rx.clone(), passed.clone()));
                }
            }
        });
        Self {
            port,
            allowed: tx,
            passed,
            accept,
        }
    }

    /// Lets `bytes` more through.
    pub(crate) fn allow(&self, bytes: u64) {
        self.allowed.send_modify(|a| *a = a.saturating_add(bytes));
    }

    pub(crate) fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }
}

impl Drop for Valve {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One connection: client→registry freely, registry→client within the allowance.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    mut allowed: watch::Receiver<u64>,
    passed: Arc<AtomicU64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n as u64,
            };
            let need = passed.load(Ordering::Relaxed) + n;
            if allowed.wait_for(|&a| a >= need).await.is_err() {
                break;
            }
            if client_write.write_all(&buf[..n as usize]).await.is_err() {
                break;
            }
            passed.fetch_add(n, Ordering::Relaxed);
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

async fn create(d: &Sandboxd, body: Value) -> (StatusCode, Value) {
    d.json(Method::POST, "/v1/prepulls", Some(body)).await
}

async fn task(d: &Sandboxd, id: &str) -> Value {
    let (status, t) = d.json(Method::GET, &format!("/v1/prepulls/{id}"), None).await;
    assert_eq!(status, 200, "{t}");
    t
}

/// Waits until the task satisfies `check`; returns it.
async fn until(d: &Sandboxd, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(120, what, async || {
        let t = task(d, id).await;
        check(&t).then_some(t)
    })
    .await
}

fn state(t: &Value) -> &str {
    t["status"]["state"].as_str().unwrap_or("")
}

fn bytes_done(t: &Value) -> u64 {
    t["progress"]["bytesDone"].as_u64().unwrap_or(0)
}

/// Opens `/v1/prepulls/{id}/events` (the task is watched once this returns) and reads it to
/// its end in the background: (id, task) per event.
async fn follow(d: &Sandboxd, id: &str) -> tokio::task::JoinHandle<Vec<(u64, Value)>> {
    let resp = d
        .req(Method::GET, &format!("/v1/prepulls/{id}/events"))
        .send()
        .await
        .expect("open the events");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let (mut text, mut events) = (String::new(), Vec::new());
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("read the events")));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let (mut seq, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        seq = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if let (Some(seq), false) = (seq, data.is_empty()) {
                    events.push((seq, serde_json::from_str(&data).expect("event JSON")));
                }
            }
        }
        events
    })
}

#[tokio::test]
async fn a_pull_reports_byte_progress_that_moves_then_completes() {
    if !registries() {
        return;
    }
    let _forget = Forget::now("prepull-test");
    let d = Sandboxd::start();
    // Enough for the manifest, the config and the first part of the 30 MB layer.
    let valve = Valve::to(REGISTRY, 4 * MIB).await;
    let image = format!("127.0.0.1:{}/prepull-test:1", valve.port);
    let (status, created) = create(&d, json!({"image": image, "timeout": 300})).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("pp-"), "{id}");
    let events = follow(&d, &id).await;
    // Three observations while pulling, each with more bytes than the one before.
    let mut seen = Vec::new();
    let mut last = 0;
    for step in 0..3 {
        let t = until(&d, &id, "more bytes while pulling", |t| {
            state(t) == "Pulling" && bytes_done(t) > last
        })
        .await;
        last = bytes_done(&t);
        seen.push(t);
        valve.allow(8 * MIB * (step + 1));
    }
    let first = &seen[0]["progress"];
    assert!(
        first["bytesTotal"].as_u64().unwrap() > 30 * 1000 * 1000,
        "{first}"
    );
    assert!(seen.windows(2).all(|w| bytes_done(&w[0]) < bytes_done(&w[1])));
    let percents: Vec<f64> = seen
        .iter()
        .map(|t| t["progress"]["percent"].as_f64().unwrap())
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]) && percents[2] < 100.0,
        "{percents:?}"
    );
    valve.allow(u64::MAX);
    let done = until(&d, &id, "completed", |t| state(t) != "Pulling").await;
    assert_eq!(state(&done), "Completed", "{done}");
    let p = &done["progress"];
    assert_eq!(
        (p["layersTotal"].as_u64(), p["layersDone"].as_u64()),
        (Some(2), Some(2)),
        "{p}"
    );
    assert_eq!(p["percent"], 100.0);
    assert!(done["startedAt"].is_string() && done["completedAt"].is_string());
    assert!(image_present(&image));
    assert!(valve.passed() > 30 * 1000 * 1000);
    let events = events.await.unwrap();
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "event ids grow");
    let states: Vec<&str> = events.iter().map(|(_, t)| state(t)).collect();
    assert_eq!(states.last(), Some(&"Completed"), "{states:?}");
    assert!(
        events
            .iter()
            .filter(|(_, t)| state(t) == "Pulling" && bytes_done(t) > 0)
            .count()
            >= 2,
        "{states:?}"
    );
    // Present now: a new task completes at once.
    let (status, again) = create(&d, json!({"image": image})).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(state(&again), "Completed");
    assert_eq!(again["status"]["reason"], "ALREADY_PRESENT");
    assert_eq!(again["progress"]["percent"], 100.0);
}

#[tokio::test]
async fn delete_cancels_a_pull_mid_download_and_a_repeated_create_gets_the_same_task() {
    if !registries() {
        return;
    }
    let _forget = Forget::now("prepull-cancel");
    let d = Sandboxd::start();
    let valve = Valve::to(REGISTRY, 4 * MIB).await;
    let image = format!("127.0.0.1:{}/prepull-cancel:1", valve.port);
    let (status, created) = create(&d, json!({"image": image})).await;
    assert_eq!(status, 202, "{created}");
    let location = d
        .req(Method::POST, "/v1/prepulls")
        .json(&json!({"image": image}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        location.status(),
        200,
        "an active task is returned, not duplicated"
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        location.headers()["location"].to_str().unwrap(),
        format!("/v1/prepulls/{id}")
    );
    let again: Value = location.json().await.unwrap();
    assert_eq!(again["id"], id.as_str());
    until(&d, &id, "downloading", |t| {
        state(t) == "Pulling" && bytes_done(t) > 0
    })
    .await;
    let events = follow(&d, &id).await;
    let resp = d
        .req(Method::DELETE, &format!("/v1/prepulls/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, gone) = d.json(Method::GET, &format!("/v1/prepulls/{id}"), None).await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["code"], "PREPULL::NOT_FOUND");
    let events = events.await.unwrap();
    let last = &events.last().expect("events").1;
    assert_eq!(state(last), "Cancelled", "{last}");
    // The engine gave the pull up: nothing was tagged.
    assert!(!image_present(&image));
    let (status, listed) = d.json(Method::GET, "/v1/prepulls?state=Pulling", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["items"], json!([]), "{listed}");
}

#[tokio::test]
async fn registry_failures_become_reasons() {
    if !registries() {
        return;
    }
    let d = Sandboxd::start();
    for (image, reason) in [
        (format!("{REGISTRY}/missing:1"), "IMAGE_NOT_FOUND"),
        ("127.0.0.1:5999/x:1".to_owned(), "REGISTRY_UNREACHABLE"),
    ] {
        let (status, created) = create(&d, json!({"image": image})).await;
        assert_eq!(status, 202, "{created}");
        let id = created["id"].as_str().unwrap();
        let t = until(&d, id, "finished", |t| !matches!(state(t), "Pending" | "Pulling")).await;
        assert_eq!(state(&t), "Failed", "{t}");
        assert_eq!(t["status"]["reason"], reason, "{t}");
        assert!(
            t["status"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{t}"
        );
    }
}

#[tokio::test]
async fn an_auth_registry_refuses_a_pull_without_credentials_and_serves_one_with_them() {
    if !registries() {
        return;
    }
    let _forget = Forget::now("prepull-auth");
    let d = Sandboxd::start();
    let image = format!("{AUTH_REGISTRY}/prepull-auth:1");
    let (status, created) = create(&d, json!({"image": image})).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap();
    let t = until(&d, id, "finished", |t| !matches!(state(t), "Pending" | "Pulling")).await;
    assert_eq!(
        (state(&t), &t["status"]["reason"]),
        ("Failed", &json!("UNAUTHORIZED")),
        "{t}"
    );
    let (status, created) = create(
        &d,
        json!({"image": image, "auth": {"username": USER, "password": PASSWORD}}),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    assert!(!created.to_string().contains(PASSWORD));
    let id = created["id"].as_str().unwrap();
    let t = until(&d, id, "finished", |t| !matches!(state(t), "Pending" | "Pulling")).await;
    assert_eq!(state(&t), "Completed", "{t}");
    assert!(!t.to_string().contains(PASSWORD));
    assert!(image_present(&image));
    let wrong = create(
        &d,
        json!({"image": format!("{AUTH_REGISTRY}/prepull-auth:2"), "auth": {"username": USER, "password": "wrong"}}),
    )
    .await;
    let id = wrong.1["id"].as_str().unwrap();
    let t = until(&d, id, "finished", |t| !matches!(state(t), "Pending" | "Pulling")).await;
    assert_eq!(t["status"]["reason"], "UNAUTHORIZED", "{t}");
}

#[tokio::test]
async fn bad_requests_are_refused_with_catalogued_codes() {
    if !docker_available() {
        return;
    }
    let d = Sandboxd::start();
    for (body, status, code) in [
        (json!({"image": "Not A Reference"}), 400, "PREPULL::INVALID_IMAGE"),
        (json!({"image": "a".repeat(513)}), 400, "PREPULL::INVALID_IMAGE"),
        (
            json!({"image": "busybox@sha256:abc"}),
            400,
            "PREPULL::INVALID_IMAGE",
        ),
        (
            json!({"image": "busybox", "timeout": 59}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            json!({"image": "busybox", "timout": 60}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            json!({"image": "busybox", "platform": {"os": "linux"}}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
    ] {
        let (got, err) = create(&d, body.clone()).await;
        assert_eq!(
            (got.as_u16(), err["code"].as_str()),
            (status, Some(code)),
            "{body}: {err}"
        );
    }
    let (status, err) = d.json(Method::GET, "/v1/prepulls/pp-nope", None).await;
    assert_eq!(
        (status.as_u16(), &err["code"]),
        (404, &json!("PREPULL::NOT_FOUND"))
    );
    let (status, err) = d.json(Method::DELETE, "/prepulls/pp-nope", None).await;
    assert_eq!(
        (status.as_u16(), &err["code"]),
        (404, &json!("PREPULL::NOT_FOUND"))
    );
    let (status, err) = d.json(Method::GET, "/v1/prepulls?state=Done", None).await;
    assert_eq!(
        (status.as_u16(), &err["code"]),
        (400, &json!("SANDBOX::INVALID_PARAMETER"))
    );
    let (status, err) = d
        .json(Method::POST, "/v1/templates/no-such-template/prepull", None)
        .await;
    assert_eq!(
        (status.as_u16(), &err["code"]),
        (404, &json!("TEMPLATE::NOT_FOUND")),
        "{err}"
    );
    let (status, listed) = d.json(Method::GET, "/v1/prepulls", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["items"], json!([]));
    assert_eq!(listed["pagination"]["totalItems"], 0);
}

/// `(status, body)` of a request with a bearer token.
async fn as_bearer(
    d: &Sandboxd,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method, format!("{}{path}", d.base))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn mint(d: &Sandboxd, user: &str, role: &str) -> String {
    let body = json!({"userId": user, "role": role, "ttlSeconds": 600});
    let (status, token) = d.json(Method::POST, "/v1/tokens", Some(body)).await;
    assert_eq!(status, 201, "{token}");
    token["accessToken"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_template_prepull_needs_a_template_the_caller_may_read() {
    if !docker_available() {
        return;
    }
    let image = crate::sandboxd::image("busybox");
    let d = Sandboxd::start();
    let (alice, bob, vera) = (
        mint(&d, "alice", "user").await,
        mint(&d, "bob", "user").await,
        mint(&d, "alice", "viewer").await,
    );
    // Templates are written by admins; a private one is readable by its author.
    let template =
        json!({"name": "pp-private", "isPublic": false, "author": "alice", "spec": {"image": image}});
    let (status, created) = d.json(Method::POST, "/v1/templates", Some(template)).await;
    assert_eq!(status, 201, "{created}");
    let (status, err) = as_bearer(&d, &bob, Method::POST, "/v1/templates/pp-private/prepull", None).await;
    assert_eq!(
        (status, &err["code"]),
        (404, &json!("TEMPLATE::NOT_FOUND")),
        "{err}"
    );
    let (status, err) = as_bearer(&d, &vera, Method::POST, "/v1/templates/pp-private/prepull", None).await;
    assert_eq!((status, &err["code"]), (403, &json!("AUTH::FORBIDDEN")), "{err}");
    let (status, t) = as_bearer(&d, &alice, Method::POST, "/v1/templates/pp-private/prepull", None).await;
    assert_eq!(status, 202, "{t}");
    assert_eq!(t["image"], format!("{image}:latest"));
    assert_eq!(t["templateId"], created["templateId"], "{t} {created}");
    assert_eq!(t["templateVersion"], 1);
    assert_eq!(
        (state(&t), &t["status"]["reason"]),
        ("Completed", &json!("ALREADY_PRESENT"))
    );
    // Bob does not see alice's task either, and lists only his own.
    let id = t["id"].as_str().unwrap();
    let (status, _) = as_bearer(&d, &bob, Method::GET, &format!("/v1/prepulls/{id}"), None).await;
    assert_eq!(status, 404);
    let (_, listed) = as_bearer(&d, &bob, Method::GET, "/v1/prepulls", None).await;
    assert_eq!(listed["items"], json!([]));
    let (_, listed) = as_bearer(&d, &vera, Method::GET, "/v1/prepulls?templateId=", None).await;
    assert_eq!(
        listed["pagination"]["totalItems"], 0,
        "an empty templateId matches none"
    );
    let (_, listed) = as_bearer(&d, &vera, Method::GET, "/v1/prepulls", None).await;
    assert_eq!(listed["items"][0]["id"], id, "a viewer reads its own");
}
