//! Security properties as tests (issue 20): the credential on every route of both binaries,
//! found by walking what they serve; no secret in any log line at any level; execd's port
//! proxy never leaving loopback; file writes never following a symlink out of their tree
//! (archive extraction has its own tests in `files.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::docker::docker_available;
use crate::files::{meta, upload, Part};
use crate::util::{Agent, Opts};

const TOKEN: &str = "sec-TOKEN-4b1d9e0c";
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// A concrete request path for a routed template: each `{param}` gets a plausible value.
fn concrete(template: &str, port: u16) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{uid}" | "{gid}" => "0".to_owned(),
            "{port}" => port.to_string(),
            "{*rest}" => "ping".to_owned(),
            s if s.starts_with('{') => "x".to_owned(),
            s => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn execd_with_token() -> Agent {
    Agent::start_with(Opts {
        token: Some(TOKEN.into()),
        ..Opts::default()
    })
}

/// Every path execd routes (`agent::http::served_paths`, the router's own record), with every
/// method, without the token, with a wrong one and as a WebSocket upgrade: 401 each time, and
/// nothing done. The proxy is walked both to execd's own port (served in-process) and to
/// another listening port.
#[tokio::test]
async fn execd_requires_the_token_on_every_served_route() {
    let agent = execd_with_token();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for conn in other.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    let bare = reqwest::Client::new();
    let paths = execd::agent::http::served_paths();
    assert!(paths.len() > 60, "the router recorded only {} paths", paths.len());
    let mut requests = 0;
    for template in &paths {
        let ports: &[u16] = if template.contains("{port}") || template.starts_with("/proxy") {
            &[agent.port, other_port]
        } else {
            &[0]
        };
        for &port in ports {
            let mut path = concrete(template, port);
            if template.starts_with("/proxy") && !template.contains("{port}") {
                // `/proxy`, `/proxy/` and `/proxy/{*rest}`: the port is the first segment.
                path = format!("/proxy/{port}/ping");
            }
            for method in METHODS {
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                for token in [None, Some("sec-TOKEN-4b1d9e0d"), Some("")] {
                    let mut req = bare.request(method.clone(), agent.url(&path));
                    if let Some(t) = token {
                        req = req.header("X-EXECD-ACCESS-TOKEN", t);
                    }
                    if method == Method::GET {
                        req = req
                            .header("connection", "upgrade")
                            .header("upgrade", "websocket")
                            .header("sec-websocket-version", "13")
                            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
                    }
                    let status = req.send().await.unwrap().status();
                    assert_eq!(status, 401, "{method} {path} with token {token:?}");
                    requests += 1;
                }
            }
        }
    }
    assert!(requests > 1000, "only {requests} requests");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the proxy dialled before auth"
    );

    // The walk is not vacuous: with the token, a route of each kind answers something else.
    for path in ["/ping", "/metrics", "/code/contexts", "/v1/isolated/capabilities"] {
        assert_ne!(agent.get(path).send().await.unwrap().status(), 401, "{path}");
    }
    let own = agent
        .get(&format!("/proxy/{}/ping", agent.port))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
}

/// A non-loopback address of this host (the one the default route leaves from), if any.
fn non_loopback_ip() -> Option<IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // connect() on UDP only picks a route; nothing is sent.
    probe.connect("192.0.2.1:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// `/proxy/{port}` dials 127.0.0.1 and nothing else, whatever the request says: a listener on a
/// non-loopback address of this host (with nothing on the same port at loopback) is never
/// reached through Host headers, forwarded-host headers, absolute-form targets, userinfo or
/// address-like ports, encoded separators or dot segments.
#[tokio::test]
async fn execd_proxy_never_reaches_a_non_loopback_address() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped: this host has no non-loopback address");
        return;
    };
    let outside = TcpListener::bind((ip, 0)).unwrap();
    let port = outside.local_addr().unwrap().port();
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    outside.set_nonblocking(false).unwrap();
    std::thread::spawn(move || {
        for conn in outside.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    let agent = execd_with_token();
    let host = format!("{ip}:{port}");
    let paths = [
        format!("/proxy/{port}/"),
        format!("/proxy/{port}/x"),
        format!("/proxy/{host}/"),
        format!("/proxy/{port}@{ip}/"),
        format!("/proxy/{ip}%3A{port}/"),
        format!("/proxy/{port}%40{ip}/"),
        format!("/proxy/{port}%2F%2F{ip}/"),
        format!("/proxy/{port}//{host}/"),
        format!("/proxy/{port}/..%2F..%2F{host}/"),
        format!("/proxy/{port}/http://{host}/"),
        format!("/proxy/0{port}/"),
        format!("/proxy/{port}.{ip}/"),
        format!("/proxy/+{port}/"),
        format!("/proxy/{}/", u32::from(port) + 65536),
    ];
    for path in &paths {
        for headers in [
            vec![("host", host.clone())],
            vec![("x-forwarded-host", host.clone())],
            vec![("forwarded", format!("host={host}"))],
            vec![],
        ] {
            let mut req = agent.get(path);
            for (k, v) in &headers {
                req = req.header(*k, v);
            }
            let status = req.send().await.unwrap().status();
            assert!(
                status.is_client_error() || status == StatusCode::BAD_GATEWAY,
                "{path} {headers:?}: {status}"
            );
        }
    }
    // Absolute-form request targets, written by hand (no client sends them to a non-proxy).
    let addr = agent.base.strip_prefix("http://").unwrap().to_owned();
    for target in [
        format!("http://{host}/proxy/{port}/"),
        format!("http://{host}/"),
        format!("http://127.0.0.1:{port}@{host}/proxy/{port}/"),
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nX-EXECD-ACCESS-TOKEN: {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        let mut conn = TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        let status: u16 = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(
            (400..500).contains(&status) || status == 502,
            "{target}: {answer}"
        );
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "execd's proxy connected to {host}"
    );
}

/// mv never writes through a symlink at the destination and moves a symlink as a link; upload
/// to a path that is a symlink writes what it points to in place (like `open(O_TRUNC)`, as
/// upstream does; execd confines no path, the caller names any), but never leaves a temp file
/// or anything else beside that target.
#[tokio::test]
async fn upload_and_mv_never_follow_a_symlink_out_of_the_tree() {
    let agent = Agent::start();
    let outside = tempfile::tempdir().unwrap();
    let tree = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"outside").unwrap();
    let link = tree.path().join("link");
    std::os::unix::fs::symlink(&secret, &link).unwrap();

    let resp = upload(
        &agent,
        "",
        &[
            Part::Metadata {
                json: meta(&link, Value::Null, Value::Null, 0o644),
                filename: true,
            },
            Part::File {
                name: "link",
                content: b"uploaded",
            },
        ],
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read(&secret).unwrap(), b"uploaded");
    std::fs::write(&secret, b"outside").unwrap();

    // mv onto a symlink: refused (never replaces dest), the target untouched.
    let link2 = tree.path().join("link2");
    std::os::unix::fs::symlink(&secret, &link2).unwrap();
    let src = tree.path().join("src");
    std::fs::write(&src, b"moved").unwrap();
    let mv = agent
        .post("/files/mv")
        .json(&json!([{"src": src, "dest": link2}]))
        .send()
        .await
        .unwrap();
    // The contract's answer for an existing dest is a 500 (files.rs asserts the code).
    assert_eq!(mv.status(), 500);
    assert!(mv.text().await.unwrap().contains("already exists"));
    assert_eq!(std::fs::read(&secret).unwrap(), b"outside");
    assert!(std::fs::symlink_metadata(&link2).unwrap().is_symlink());

    // mv of a symlink moves the link, never its target.
    let moved = tree.path().join("moved-link");
    let mv = agent
        .post("/files/mv")
        .json(&json!([{"src": link2, "dest": moved}]))
        .send()
        .await
        .unwrap();
    assert_eq!(mv.status(), 200);
    assert!(std::fs::symlink_metadata(&moved).unwrap().is_symlink());
    assert!(secret.exists());
    assert_eq!(std::fs::read(&secret).unwrap(), b"outside");
    // Nothing else appeared beside the target.
    let names: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["secret"]);
}

/// A sandboxd on a free loopback port at trace level, its stderr kept in a file.
struct TracedSandboxd {
    child: Child,
    base: String,
    log: std::path::PathBuf,
    _data: tempfile::TempDir,
    /// The `metadata` label every sandbox of this test carries, for the clean-up on drop.
    run: String,
}

const API_KEY: &str = "sec-APIKEY-93ac17f2e5";
const JWT_SECRET: &str = "sec-JWTSECRET-0d6f2a88c4e1b7-5a9d02c7e3f4";

impl TracedSandboxd {
    fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let log = data.path().join("stderr.log");
        let agent =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/x86_64-unknown-linux-musl/release/execd");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--api-key",
                API_KEY,
            ])
            .args(["--jwt-secret", JWT_SECRET, "--log-format", "json"])
            .arg("--agent")
            .arg(agent)
            .arg("--data-dir")
            .arg(data.path())
            .env("RUST_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn sandboxd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("sandboxd listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            child,
            base,
            log,
            _data: data,
            run: crate::util::marker(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for TracedSandboxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever a failed test left running.
        let label = format!("label=execd-test-run={}", self.run);
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &label])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
    }
}

/// The (path, methods) of sandboxd's generated document, the routes its router serves.
fn sandboxd_operations() -> Vec<(String, Vec<String>)> {
    let yaml = execd::orchestrator::openapi::yaml();
    let mut ops: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_paths = false;
    for line in yaml.lines() {
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(path) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            ops.push((format!("/{path}"), Vec::new()));
        } else if let Some(method) = line.strip_prefix("    ").and_then(|m| m.strip_suffix(':')) {
            if METHODS.iter().any(|k| k.eq_ignore_ascii_case(method)) {
                ops.last_mut().unwrap().1.push(method.to_ascii_uppercase());
            }
        }
    }
    ops
}

/// Every operation of sandboxd, at `/` and under `/v1`, refuses a caller without a credential
/// or with a wrong one (401), except `/health` and `/version`; the server proxy has its own
/// check and refuses likewise. Unknown routes tell nothing either.
#[tokio::test]
async fn sandboxd_requires_a_credential_on_every_api_route() {
    if !docker_available() {
        eprintln!("skipped: no Docker engine");
        return;
    }
    let d = TracedSandboxd::start();
    let client = reqwest::Client::new();
    let ops = sandboxd_operations();
    assert!(ops.len() >= 15, "walked only {} paths", ops.len());
    let open = ["/health", "/version"];
    let mut checked = 0;
    for (template, methods) in &ops {
        for prefix in ["", "/v1"] {
            let path = format!("{prefix}{}", concrete(template, 44772));
            for method in methods {
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                for cred in [
                    None,
                    Some(("OPEN-SANDBOX-API-KEY", "sec-APIKEY-wrong")),
                    Some(("authorization", "Bearer not.a.jwt")),
                ] {
                    let mut req = client.request(method.clone(), d.url(&path));
                    if let Some((k, v)) = cred {
                        req = req.header(k, v);
                    }
                    if method == Method::POST || method == Method::PATCH || method == Method::PUT {
                        req = req.json(&json!({}));
                    }
                    let status = req.send().await.unwrap().status();
                    if open.contains(&template.as_str()) {
                        assert_ne!(status, 401, "{method} {path}");
                    } else if prefix.is_empty() || status != 404 {
                        // Under `/v1` a 404 is a route not mounted there (`/v1/v1/tokens`,
                        // `/v1/metrics`), answered before any credential; every route answers 401.
                        assert_eq!(status, 401, "{method} {path} with {cred:?}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} requests");
    for path in ["/nope", "/v1/nope", "/sandboxes/x/nope"] {
        let status = client.get(d.url(path)).send().await.unwrap().status();
        assert!(status == 401 || status == 404, "{path}: {status}");
    }
    // With the key, the same walk is not all 401.
    let ok = client
        .get(d.url("/v1/sandboxes"))
        .header("OPEN-SANDBOX-API-KEY", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// At trace level, through a session of good and bad credentials (API key, a minted JWT, a
/// sandbox's execd token through the server proxy and directly), neither sandboxd's log nor the
/// sandbox's execd log holds any of the secrets.
#[tokio::test]
async fn no_secret_in_any_log_line_at_trace_level() {
    if !docker_available() {
        eprintln!("skipped: no Docker engine");
        return;
    }
    let d = TracedSandboxd::start();
    let client = reqwest::Client::new();
    let key = |r: reqwest::RequestBuilder| r.header("OPEN-SANDBOX-API-KEY", API_KEY);
    let mut secrets = vec![API_KEY.to_owned(), JWT_SECRET.to_owned()];

    // Bad credentials of every kind.
    for (k, v) in [
        ("OPEN-SANDBOX-API-KEY", "sec-APIKEY-wrong-31f0"),
        ("authorization", "Bearer sec-BADBEARER-77aa"),
        ("authorization", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
    ] {
        let r = client
            .get(d.url("/v1/sandboxes"))
            .header(k, v)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    secrets.push("sec-APIKEY-wrong-31f0".into());
    secrets.push("sec-BADBEARER-77aa".into());

    // A minted user token, used, then revoked and used again.
    let minted: Value = key(client.post(d.url("/v1/tokens")))
        .json(&json!({"userId": "alice", "role": "user", "ttlSeconds": 600}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = minted["accessToken"].as_str().unwrap().to_owned();
    let token_id = minted["tokenId"].as_str().unwrap().to_owned();
    secrets.push(jwt.clone());
    let as_alice = client
        .get(d.url("/v1/tokens/current"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(as_alice.status(), 200);

    // A sandbox: its execd token comes back in the endpoint headers; used through the server
    // proxy (right and wrong) and directly.
    let created = client
        .post(d.url("/v1/sandboxes"))
        .bearer_auth(&jwt)
        .json(&json!({
            "image": {"uri": "execd-test/busybox"},
            "entrypoint": ["sleep", "600"],
            "timeout": 120,
            "resourceLimits": {},
            "env": {"RUST_LOG": "trace"},
            "metadata": {"execd-test-run": d.run},
        }))
        .send()
        .await
        .unwrap();
    let created_status = created.status();
    let created: Value = created.json().await.unwrap();
    assert_eq!(created_status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let endpoint: Value = key(client.get(d.url(&format!("/v1/sandboxes/{id}/endpoints/44772"))))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let execd_token = endpoint["headers"]
        .as_object()
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("x-execd-access-token"))
        })
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no token in {endpoint}"))
        .to_owned();
    secrets.push(execd_token.clone());
    let direct = format!("http://{}", endpoint["endpoint"].as_str().unwrap());
    let proxied = d.url(&format!("/v1/sandboxes/{id}/proxy/44772"));
    for (base, token) in [
        (&direct, execd_token.as_str()),
        (&proxied, execd_token.as_str()),
        (&direct, "sec-EXECDWRONG-5e"),
    ] {
        let r = client
            .post(format!("{base}/command"))
            .header("X-EXECD-ACCESS-TOKEN", token)
            .json(&json!({"command": "echo hi; exit 3"}))
            .send()
            .await
            .unwrap();
        let _ = r.text().await;
    }
    secrets.push("sec-EXECDWRONG-5e".into());
    let revoked = key(client.delete(d.url(&format!("/v1/tokens/{token_id}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    let refused = client
        .get(d.url("/v1/tokens/current"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // execd's own log (the `process` scope), sandboxd's lines about the sandbox and its output.
    let diagnostics: Value = key(client.get(d.url(&format!(
        "/v1/sandboxes/{id}/diagnostics/logs?scope=all&tail=10000"
    ))))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let execd_log = diagnostics["content"].as_str().unwrap_or_default().to_owned();
    let deleted = key(client.delete(d.url(&format!("/v1/sandboxes/{id}"))))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);

    assert!(
        execd_log
            .split("=== process ===")
            .nth(1)
            .unwrap_or("")
            .lines()
            .count()
            >= 5,
        "the sandbox's execd logged only:\n{execd_log}"
    );
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.lines().count() > 20, "trace level logged only:\n{log}");
    for secret in &secrets {
        for (name, text) in [("sandboxd", &log), ("the sandbox's execd", &execd_log)] {
            if let Some(line) = text.lines().find(|l| l.contains(secret.as_str())) {
                panic!("{name}'s log holds a secret ({secret}): {line}");
            }
        }
    }
}
