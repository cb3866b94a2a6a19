//! sandboxd's rate limits and request metrics against the real binary (design §5, §6). None
//! of these tests creates a sandbox: the limits are shown on routes that answer without one
//! (`POST /sandboxes` with a bad body, `GET /sandboxes/{unknown}`), with classes configured
//! small enough to spend in a few requests. sandboxd still needs the Docker engine to start.

use std::io::{BufRead, BufReader, Write as _};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::docker::docker_available;

const KEY: &str = "test-key-0123456789";

/// A sandboxd on a free port with its own state and `args`, killed on drop.
struct Server {
    child: Child,
    base: String,
    key: Option<&'static str>,
    client: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Server {
    /// `None` when Docker tests are skipped. `key`: the API key, or none (dev mode: every
    /// caller is the anonymous admin, limited by client address).
    fn start(key: Option<&'static str>, args: &[&str]) -> Option<Self> {
        if !docker_available() {
            return None;
        }
        let data = tempfile::tempdir().expect("tempdir");
        let agent =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/x86_64-unknown-linux-musl/release/execd");
        assert!(
            agent.exists(),
            "{} is missing: run scripts/build-agent.sh",
            agent.display()
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandboxd"));
        cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .arg("--agent")
            .arg(agent)
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(key) = key {
            cmd.args(["--api-key", key]);
        }
        let mut child = cmd.spawn().expect("spawn sandboxd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read listening line");
        let base = line
            .trim()
            .strip_prefix("sandboxd listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Some(Self {
            child,
            base,
            key,
            client: client_from("127.0.0.1"),
            _data: data,
        })
    }

    /// A request from `client`, with the API key when there is one.
    fn req_from(&self, client: &reqwest::Client, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = client.request(method, format!("{}{path}", self.base));
        match self.key {
            Some(key) => r.header("OPEN-SANDBOX-API-KEY", key),
            None => r,
        }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.req_from(&self.client, method, path)
    }

    async fn status(&self, method: Method, path: &str) -> StatusCode {
        self.req(method, path).send().await.expect("send").status()
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.req(Method::GET, path).send().await.expect("send");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client whose connections come from `local` (any 127.x address is this host's).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(local.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// What a 429 said: the body, `Retry-After`, `RateLimit-Policy`, `RateLimit`.
async fn refusal(resp: reqwest::Response) -> (Value, u64, String, String) {
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{}", resp.url());
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .unwrap_or_else(|| panic!("the 429 has no {name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let retry_after: u64 = header("retry-after")
        .parse()
        .expect("Retry-After is whole seconds");
    let (policy, state) = (header("ratelimit-policy"), header("ratelimit"));
    (resp.json().await.unwrap(), retry_after, policy, state)
}

#[tokio::test]
async fn a_burst_of_creates_gets_429_with_retry_after_and_is_served_after_that_wait() {
    // 0.5/s, burst 2: the third create in a row is refused for about 2 s.
    let Some(d) = Server::start(Some(KEY), &["--rate-create", "0.5", "--burst-create", "2"]) else {
        return;
    };
    // Bad bodies: each is refused by validation, after it has spent its token.
    let create = || d.req(Method::POST, "/v1/sandboxes").json(&json!({}));
    for _ in 0..2 {
        assert_eq!(create().send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    let (body, retry_after, policy, state) = refusal(create().send().await.unwrap()).await;
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(body["code"], "RATE_LIMIT::EXCEEDED");
    assert_eq!(
        body["message"],
        format!("rate limit for class 'create' exceeded; retry after {retry_after} s")
    );
    assert_eq!(policy, "\"create\";q=2;w=4");
    assert_eq!(state, format!("\"create\";r=0;t={retry_after}"));
    // Other classes, /health, /version and the proxy are not touched by it.
    assert_eq!(d.status(Method::GET, "/v1/sandboxes").await, StatusCode::OK);
    assert_eq!(d.status(Method::GET, "/health").await, StatusCode::OK);
    assert_eq!(d.status(Method::GET, "/version").await, StatusCode::OK);
    // The wait under test is the one the server named: after exactly Retry-After, the next
    // create conforms (GCRA: Retry-After rounds the true wait up).
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        create().send().await.unwrap().status(),
        StatusCode::BAD_REQUEST,
        "served again (and refused by validation, not by the limiter)"
    );
    assert_eq!(
        create().send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn reads_are_limited_per_client_and_health_and_the_proxy_never_are() {
    // Dev mode (no API key): every caller is the anonymous admin, keyed by its address, so
    // two addresses are two independent buckets in one sandboxd (users with tokens are keyed by
    // their ids: see the test above).
    let Some(d) = Server::start(None, &["--rate-read", "0.5", "--burst-read", "2"]) else {
        return;
    };
    let (a, b) = (client_from("127.0.0.1"), client_from("127.0.0.2"));
    let read = |c: &reqwest::Client| d.req_from(c, Method::GET, "/v1/sandboxes/no-such-sandbox").send();
    for _ in 0..2 {
        assert_eq!(read(&a).await.unwrap().status(), StatusCode::NOT_FOUND);
    }
    let (body, retry_after, policy, _) = refusal(read(&a).await.unwrap()).await;
    assert_eq!(body["code"], "RATE_LIMIT::EXCEEDED");
    assert!(retry_after >= 1);
    assert_eq!(policy, "\"read\";q=2;w=4");
    // B's bucket is its own: A being refused costs B nothing.
    for _ in 0..2 {
        assert_eq!(read(&b).await.unwrap().status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(read(&b).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    // Neither /health nor the proxy data plane takes from any class.
    for _ in 0..5 {
        let health = d.req_from(&a, Method::GET, "/health").send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let proxy = d
            .req_from(&a, Method::GET, "/v1/sandboxes/no-such-sandbox/proxy/8080/x")
            .send()
            .await
            .unwrap();
        assert_eq!(proxy.status(), StatusCode::NOT_FOUND, "the proxy's own answer");
    }
}

/// A user token minted with the API key.
async fn mint(d: &Server, user: &str) -> String {
    let resp = d
        .req(Method::POST, "/v1/tokens")
        .json(&json!({"userId": user, "role": "user"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let token: Value = resp.json().await.unwrap();
    token["accessToken"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn two_users_have_independent_buckets_and_their_own_summaries() {
    let Some(d) = Server::start(Some(KEY), &["--rate-read", "0.2", "--burst-read", "4"]) else {
        return;
    };
    // Three mints: from root's bucket, not the users'.
    let (alice, bob, carol) = (
        mint(&d, "alice").await,
        mint(&d, "bob").await,
        mint(&d, "carol").await,
    );
    let as_user = |token: &str, path: &str| {
        d.client
            .get(format!("{}{path}", d.base))
            .bearer_auth(token)
            .send()
    };
    for token in [&alice, &bob] {
        for _ in 0..4 {
            assert_eq!(
                as_user(token, "/v1/sandboxes").await.unwrap().status(),
                StatusCode::OK
            );
        }
    }
    // Both spent, each on its own; the refusal in the detailed format keeps its headers.
    let detailed = d
        .client
        .get(format!("{}/v1/sandboxes", d.base))
        .bearer_auth(&alice)
        .header("X-Error-Format", "detailed")
        .send()
        .await
        .unwrap();
    let (body, retry_after, policy, _) = refusal(detailed).await;
    assert_eq!(body["code"], "RATE_LIMIT::EXCEEDED", "{body}");
    assert!(body["request_id"].is_string(), "the detailed body: {body}");
    assert!(retry_after >= 1);
    assert_eq!(policy, "\"read\";q=4;w=20");
    assert_eq!(
        as_user(&bob, "/v1/sandboxes").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Root (three mints so far, one token left) sees everyone's; a user may not.
    let (status, all) = d.get_json("/v1/metrics/summary?scope=all").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(
        (all["totalRequests"].as_u64(), all["rateLimitedRequests"].as_u64()),
        (Some(13), Some(2)),
        "3 mints + 5 of alice's + 5 of bob's: {all}"
    );
    let resp = as_user(&carol, "/v1/metrics/summary?scope=all").await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (status, own) = {
        let resp = as_user(&carol, "/v1/metrics/summary").await.unwrap();
        (resp.status(), resp.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(
        (
            own["scope"].as_str(),
            own["totalRequests"].as_u64(),
            own["failedRequests"].as_u64()
        ),
        (Some("self"), Some(1), Some(1)),
        "only carol's own 403: {own}"
    );
}

#[tokio::test]
async fn the_summary_counts_a_scripted_sequence_exactly() {
    // Burst 7 at 0.2/s: 5 OK and 2 × 404 spend it, the 8th is a 429 (a token takes 5 s).
    let Some(d) = Server::start(Some(KEY), &["--rate-read", "0.2", "--burst-read", "7"]) else {
        return;
    };
    // Not counted: public routes, the proxy, a request refused before authentication.
    assert_eq!(d.status(Method::GET, "/health").await, StatusCode::OK);
    let anonymous = d
        .client
        .get(format!("{}/v1/sandboxes", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    for _ in 0..5 {
        assert_eq!(d.status(Method::GET, "/v1/sandboxes").await, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(
            d.status(Method::GET, "/v1/sandboxes/nope").await,
            StatusCode::NOT_FOUND
        );
    }
    let (_, retry_after, _, _) = refusal(d.req(Method::GET, "/v1/sandboxes").send().await.unwrap()).await;
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, s) = d.get_json("/v1/metrics/summary").await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["scope"], "self");
    for (field, n) in [
        ("totalRequests", 8),
        ("successfulRequests", 5),
        ("failedRequests", 3),
        ("rateLimitedRequests", 1),
        ("totalExecutionTimeMs", 0),
        ("activeSandboxes", 0),
        ("pausedSandboxes", 0),
    ] {
        assert_eq!(s[field], n, "{field} in {s}");
    }
    assert_eq!(
        s["executions"],
        json!({"total": 0, "succeeded": 0, "failed": 0, "timedOut": 0})
    );
    let avg = s["averageResponseTimeMs"].as_f64().unwrap();
    let p95 = s["p95ResponseTimeMs"].as_f64().unwrap();
    assert!(avg > 0.0 && p95 >= avg * 0.5, "{s}");
    let mut keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "activeSandboxes",
            "averageResponseTimeMs",
            "executions",
            "failedRequests",
            "lastUpdated",
            "p95ResponseTimeMs",
            "pausedSandboxes",
            "rateLimitedRequests",
            "scope",
            "since",
            "successfulRequests",
            "totalExecutionTimeMs",
            "totalRequests"
        ]
    );
    assert!(s["since"].as_str().unwrap().ends_with('Z'), "{s}");
}

#[tokio::test]
async fn summary_scopes_and_bad_scopes() {
    let Some(d) = Server::start(Some(KEY), &[]) else {
        return;
    };
    assert_eq!(d.status(Method::GET, "/v1/sandboxes").await, StatusCode::OK);
    // The API key is the admin `root`: `all` is allowed and, with one principal, the same.
    let (_, own) = d.get_json("/metrics/summary?scope=self").await;
    let (status, all) = d.get_json("/v1/metrics/summary?scope=all").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (all["scope"].as_str(), own["scope"].as_str()),
        (Some("all"), Some("self"))
    );
    // `all` counts the `self` summary read before it.
    assert_eq!(own["totalRequests"], 1);
    assert_eq!(all["totalRequests"], 2);
    let (status, body) = d.get_json("/v1/metrics/summary?scope=everyone").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "SANDBOX::INVALID_PARAMETER");
    let anonymous = d
        .client
        .get(format!("{}/v1/metrics/summary", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

/// The Prometheus text parsed by `prometheus_client` (Python): one object per sample.
fn parse_prometheus(text: &str) -> Vec<Value> {
    let python = std::env::var("EXECD_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python3").to_owned());
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (run scripts/setup.sh)"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client cannot parse /metrics (or is missing: scripts/setup.sh installs it): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn prometheus_text_parses_and_its_labels_are_route_templates_never_ids() {
    let Some(d) = Server::start(Some(KEY), &[]) else {
        return;
    };
    let ids = [
        "0f3c9a1e-aaaa-4bbb-8ccc-000000000001",
        "sandbox-id-two",
        "xyz-unrouted",
    ];
    assert_eq!(
        d.status(Method::GET, &format!("/v1/sandboxes/{}", ids[0])).await,
        404
    );
    assert_eq!(
        d.status(Method::DELETE, &format!("/sandboxes/{}", ids[1])).await,
        404
    );
    assert_eq!(d.status(Method::GET, &format!("/v1/{}/x", ids[2])).await, 404);
    assert_eq!(d.status(Method::GET, "/v1/metrics").await, 404, "bare path only");
    // The 1.1.1 SDK's create event, as it sends it; then bodies upstream refuses.
    let event = |body: Value| {
        d.req(Method::POST, "/v1/metrics/events")
            .header("User-Agent", "OpenSandbox-Python-SDK/1.1.1")
            .json(&body)
            .send()
    };
    let good = json!({"eventType": "sandbox.create", "createDurationMs": 1234, "success": true,
        "sandboxId": ids[0], "image": "python:3.11"});
    assert_eq!(event(good).await.unwrap().status(), StatusCode::NO_CONTENT);
    for bad in [
        json!({"eventType": "sandbox.delete", "createDurationMs": 1, "success": true}),
        json!({"eventType": "sandbox.create", "success": true}),
        json!({"eventType": "sandbox.create", "createDurationMs": "1", "success": true}),
        json!({"eventType": "sandbox.create", "createDurationMs": -1, "success": true}),
        json!([]),
    ] {
        let resp = event(bad.clone()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "SANDBOX::INVALID_PARAMETER", "{bad}");
    }
    let anonymous = d.client.get(format!("{}/metrics", d.base)).send().await.unwrap();
    assert_eq!(
        anonymous.status(),
        StatusCode::UNAUTHORIZED,
        "admin or API key only"
    );

    let resp = d.req(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let samples = parse_prometheus(&resp.text().await.unwrap());
    let has = |name: &str, labels: Value| {
        samples.iter().any(|s| {
            s["name"] == name
                && labels
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| &s["labels"][k] == v)
        })
    };
    assert!(has(
        "sandboxd_http_requests_total",
        json!({"route": "/v1/sandboxes/{id}", "method": "GET", "status": "404"})
    ));
    assert!(has(
        "sandboxd_http_requests_total",
        json!({"route": "/sandboxes/{id}", "method": "DELETE", "status": "404"})
    ));
    assert!(has(
        "sandboxd_http_requests_total",
        json!({"route": "unmatched", "method": "GET", "status": "404"})
    ));
    assert!(has(
        "sandboxd_http_requests_total",
        json!({"route": "/v1/metrics/events", "method": "POST", "status": "400"})
    ));
    assert!(has(
        "sandboxd_http_request_duration_seconds_bucket",
        json!({"route": "/v1/sandboxes/{id}", "method": "GET"})
    ));
    assert!(has("sandboxd_sandboxes", json!({"state": "Running"})));
    assert!(has(
        "sandboxd_sdk_create_duration_ms_count",
        json!({"sdk": "python/1.1.1", "success": "true"})
    ));
    // Cardinality: no label value carries an id or any other raw path.
    for s in &samples {
        for (k, v) in s["labels"].as_object().unwrap() {
            let v = v.as_str().unwrap();
            assert!(!ids.iter().any(|id| v.contains(id)), "{k}={v} in {s}");
            if k == "route" {
                assert!(v == "unmatched" || v.starts_with('/'), "{k}={v}");
            }
        }
    }
}

#[tokio::test]
async fn metrics_public_serves_prometheus_without_a_credential() {
    let Some(d) = Server::start(Some(KEY), &["--metrics-public"]) else {
        return;
    };
    let resp = d.client.get(format!("{}/metrics", d.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("sandboxd_"));
    let summary = d
        .client
        .get(format!("{}/v1/metrics/summary", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        summary.status(),
        StatusCode::UNAUTHORIZED,
        "only /metrics is public"
    );
}
