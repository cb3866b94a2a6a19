//! sandboxd on the real Docker engine: the lifecycle API end to end, with the static execd
//! injected into the offline test images (`scripts/build-test-image.sh`).
//!
//! Every sandbox a test creates carries the label `execd-test-run=<marker>`, and the harness
//! removes whatever still carries it when the test ends, so a failed test leaves no container.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::docker::docker_available;
use crate::util::{eventually, kinds, marker, parse_sse, texts};

const BUSYBOX: &str = "execd-test/busybox";
const PYTHON: &str = "execd-test/python:bookworm";
const TOKEN_HEADER: &str = "X-EXECD-ACCESS-TOKEN";
pub(crate) const RUN_LABEL: &str = "execd-test-run";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn agent_binary() -> PathBuf {
    let bin = repo().join("target/x86_64-unknown-linux-musl/release/execd");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/build-agent.sh",
        bin.display()
    );
    bin
}

/// Builds the test image when its tag is missing (a no-op otherwise).
pub(crate) fn image(which: &str) -> &'static str {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let status = Command::new(repo().join("scripts/build-test-image.sh"))
        .arg(which)
        .stdout(Stdio::null())
        .status()
        .expect("run build-test-image.sh");
    assert!(status.success(), "scripts/build-test-image.sh {which} failed");
    match which {
        "busybox" => BUSYBOX,
        _ => PYTHON,
    }
}

pub(crate) fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("run docker");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Containers carrying this run's label.
pub(crate) fn containers_of(run: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("label={RUN_LABEL}={run}")])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A running sandboxd on a free loopback port, stopped on drop (its containers removed).
pub(crate) struct Sandboxd {
    child: Option<Child>,
    pub(crate) base: String,
    pub(crate) key: String,
    pub(crate) data_dir: PathBuf,
    _data: Option<tempfile::TempDir>,
    pub(crate) run: String,
    pub(crate) client: reqwest::Client,
}

impl Sandboxd {
    pub(crate) fn start() -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let dir = data.path().to_owned();
        let mut s = Self::start_on(&dir, &marker());
        s._data = Some(data);
        s
    }

    /// Starts on an existing data dir (a restart), tagging sandboxes with `run`.
    pub(crate) fn start_on(data_dir: &Path, run: &str) -> Self {
        Self::start_with(data_dir, run, &[])
    }

    /// [`Sandboxd::start_on`] with extra `serve` flags (e.g. rate limits).
    pub(crate) fn start_with(data_dir: &Path, run: &str, flags: &[&str]) -> Self {
        Self::start_env(data_dir, run, flags, &[])
    }

    /// [`Sandboxd::start_with`] with extra environment (e.g. `KUBECONFIG`).
    pub(crate) fn start_env(data_dir: &Path, run: &str, flags: &[&str], env: &[(&str, &Path)]) -> Self {
        let key = "test-key-0123456789".to_owned();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--api-key", &key])
            .arg("--agent")
            .arg(agent_binary())
            .arg("--data-dir")
            .arg(data_dir)
            .args(flags)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sandboxd");
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).expect("read listening line");
        let base = line
            .trim()
            .strip_prefix("sandboxd listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            child: Some(child),
            base,
            key,
            data_dir: data_dir.to_owned(),
            _data: None,
            run: run.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// Stops the process (SIGTERM), leaving its containers and state for a restart.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process with SIGKILL (no clean-up at all), leaving containers and state.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("OPEN-SANDBOX-API-KEY", &self.key)
    }

    pub(crate) async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Creates a sandbox (tagged with this run) and returns its 202 body.
    pub(crate) async fn create(&self, mut body: Value) -> Value {
        body["metadata"][RUN_LABEL] = json!(self.run);
        let (status, created) = self.json(Method::POST, "/v1/sandboxes", Some(body.clone())).await;
        assert_eq!(status, StatusCode::ACCEPTED, "create {body}: {created}");
        created
    }

    pub(crate) async fn endpoint(&self, id: &str, port: u16, server_proxy: bool) -> Execd {
        let (status, ep) = self
            .json(
                Method::GET,
                &format!("/v1/sandboxes/{id}/endpoints/{port}?use_server_proxy={server_proxy}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{ep}");
        Execd {
            base: format!("http://{}", ep["endpoint"].as_str().unwrap()),
            token: ep["headers"]["x-execd-access-token"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// `POST /v1/sandboxes/{id}/renew-expiration` to `at` (epoch ms).
    pub(crate) async fn renew(&self, id: &str, at: i64) -> (StatusCode, Value) {
        let body = json!({ "expiresAt": execd::wire::time::format_ms(at) });
        self.json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/renew-expiration"),
            Some(body),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}`.
    pub(crate) async fn info(&self, id: &str) -> (StatusCode, Value) {
        self.json(Method::GET, &format!("/v1/sandboxes/{id}"), None).await
    }

    /// `POST /v1/sandboxes/{id}/{action}` (pause, resume).
    pub(crate) async fn act(&self, id: &str, action: &str) -> (StatusCode, Value) {
        self.json(Method::POST, &format!("/v1/sandboxes/{id}/{action}"), None)
            .await
    }

    pub(crate) async fn state(&self, id: &str) -> String {
        let (status, sb) = self.info(id).await;
        assert_eq!(status, 200, "{sb}");
        sb["status"]["state"].as_str().unwrap().to_owned()
    }
}

impl Drop for Sandboxd {
    fn drop(&mut self) {
        self.stop();
        for c in containers_of(&self.run) {
            docker(&["rm", "-f", &c]);
        }
    }
}

/// An execd endpoint as sandboxd hands it out: base URL and the headers' token.
pub(crate) struct Execd {
    pub(crate) base: String,
    pub(crate) token: String,
    pub(crate) client: reqwest::Client,
}

impl Execd {
    /// A request with the endpoint's token.
    pub(crate) fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header(TOKEN_HEADER, &self.token)
    }

    /// Runs a foreground command; returns (stdout, one line per event, and the exit code).
    pub(crate) async fn run(&self, command: &str) -> (String, i64) {
        let resp = self
            .req(Method::POST, "/command")
            .json(&json!({ "command": command }))
            .send()
            .await
            .expect("send command");
        assert_eq!(
            resp.status(),
            200,
            "{command}: {}",
            resp.text().await.unwrap_or_default()
        );
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let events = parse_sse(&resp.text().await.unwrap());
        let last = events.last().map(|e| e.kind());
        assert!(
            matches!(last, Some("execution_complete" | "error")),
            "{command}: {:?}",
            kinds(&events)
        );
        let code = events.iter().find(|e| e.kind() == "error").map_or(0, |e| {
            e.data["error"]["evalue"].as_str().unwrap().parse().unwrap()
        });
        // One event per line, newline removed.
        let out = texts(&events, "stdout")
            .iter()
            .map(|line| format!("{line}\n"))
            .collect();
        (out, code)
    }

    /// Uploads `content` to `path` (mode 644).
    pub(crate) async fn upload(&self, path: &str, content: &[u8]) {
        let body = crate::files::multipart(&[
            crate::files::Part::Metadata {
                json: json!({"path": path, "mode": 644}).to_string(),
                filename: false,
            },
            crate::files::Part::File { name: "f", content },
        ]);
        let resp = self
            .req(Method::POST, "/files/upload")
            .header(
                "content-type",
                format!("multipart/form-data; boundary={}", crate::files::BOUNDARY),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
    }
}

/// The test image and a fresh sandboxd, or `None` when Docker tests are skipped.
pub(crate) fn setup(which: &str) -> Option<(&'static str, Sandboxd)> {
    docker_available().then(|| (image(which), Sandboxd::start()))
}

pub(crate) fn sandbox_body(image: &str, entrypoint: &[&str]) -> Value {
    json!({
        "image": {"uri": image},
        "entrypoint": entrypoint,
        "timeout": 600,
        "resourceLimits": {"cpu": "1", "memory": "512Mi"},
    })
}

#[tokio::test]
async fn python_sandbox_full_lifecycle() {
    let Some((image, d)) = setup("python") else {
        return;
    };
    let created = d
        .create(json!({
            "image": {"uri": image},
            "entrypoint": ["tail", "-f", "/dev/null"],
            "timeout": 600,
            "resourceLimits": {"cpu": "1", "memory": "1Gi"},
            "env": {"GREETING": "hello from env", "DROPPED": null},
            "metadata": {"team": "ml"},
        }))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"]["state"], "Running", "{created}");
    assert!(created["expiresAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["entrypoint"], json!(["tail", "-f", "/dev/null"]));

    // The container: execd as PID 1 in front of the entrypoint, limits applied.
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &format!("sandbox-{id}")])).unwrap();
    let c = &inspect[0];
    assert_eq!(c["Config"]["Entrypoint"][0], "/opt/opensandbox/execd");
    assert_eq!(c["HostConfig"]["Memory"], 1 << 30);
    assert_eq!(c["HostConfig"]["PidsLimit"], 4096);
    assert!(c["HostConfig"]["SecurityOpt"]
        .to_string()
        .contains("no-new-privileges"));
    assert_eq!(c["Config"]["Labels"]["team"], "ml");

    // Commands through the direct endpoint, with the token the endpoint hands out.
    let execd = d.endpoint(&id, 44772, false).await;
    assert!(!execd.token.is_empty());
    let unauth = execd
        .client
        .get(format!("{}/ping", execd.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401, "execd must demand the sandbox token");
    let (out, code) = execd
        .run("echo $GREETING; cat /proc/1/comm; echo ${DROPPED-unset}")
        .await;
    assert_eq!(code, 0);
    assert_eq!(out, "hello from env\nexecd\nunset\n");
    let (out, _) = execd.run("printenv EXECD_ACCESS_TOKEN || echo hidden").await;
    assert_eq!(out, "hidden\n", "the token never reaches commands");
    let (_, code) = execd.run("echo x > /opt/opensandbox/execd").await;
    assert_ne!(
        code, 0,
        "the agent is mounted read-only: a sandbox cannot replace it"
    );
    // EXECD_ENVS names a writable file whose entries reach later commands (SDK 1.1.1 set_env).
    let (_, code) = execd
        .run(r#"mkdir -p "$(dirname "$EXECD_ENVS")" && echo LATER=set >> "$EXECD_ENVS""#)
        .await;
    assert_eq!(code, 0);
    assert_eq!(execd.run("echo $LATER").await.0, "set\n");

    // Files.
    execd.upload("/tmp/a.txt", b"payload-123").await;
    let got = execd
        .req(Method::GET, "/files/download?path=/tmp/a.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(got.text().await.unwrap(), "payload-123");

    // Code: a python context on the image's ipykernel.
    let ctx: Value = execd
        .req(Method::POST, "/code/context")
        .json(&json!({"language": "python"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = execd
        .req(Method::POST, "/code")
        .json(&json!({"context": {"id": ctx["id"], "language": "python"}, "code": "x = 6 * 7\nprint(x)"}))
        .send()
        .await
        .unwrap();
    let events = parse_sse(&resp.text().await.unwrap());
    assert_eq!(texts(&events, "stdout").concat(), "42\n", "{:?}", kinds(&events));

    // Renew moves the expiry; renewing into the past is refused.
    let later = execd::wire::time::format_ms(execd::wire::time::now_ms() + 3_600_000);
    let (status, renewed) = d.renew(&id, execd::wire::time::parse_ms(&later).unwrap()).await;
    assert_eq!(status, 200, "{renewed}");
    let (_, info) = d.info(&id).await;
    assert_eq!(info["expiresAt"], renewed["expiresAt"]);
    let (status, err) = d
        .renew(&id, execd::wire::time::parse_ms("2001-01-01T00:00:00Z").unwrap())
        .await;
    assert_eq!(status, 400, "{err}");

    // Pause freezes the sandbox; resume brings it back with its state.
    let (status, _) = d.act(&id, "pause").await;
    assert_eq!(status, 202);
    assert_eq!(d.state(&id).await, "Paused");
    let (status, err) = d.act(&id, "pause").await;
    assert_eq!(status, 409, "pausing twice: {err}");
    // Upstream's codes (issue 19), with the state named.
    assert_eq!(err["code"], "DOCKER::SANDBOX_NOT_RUNNING", "{err}");
    assert!(err["message"].as_str().unwrap().contains("Paused"), "{err}");
    let (status, _) = d.act(&id, "resume").await;
    assert_eq!(status, 202);
    assert_eq!(d.state(&id).await, "Running");
    let (status, err) = d.act(&id, "resume").await;
    assert_eq!(status, 409, "resuming twice: {err}");
    assert_eq!(err["code"], "DOCKER::SANDBOX_NOT_PAUSED", "{err}");
    assert_eq!(execd.run("cat /tmp/a.txt").await.0, "payload-123\n");

    // Diagnostics.
    let (status, events) = d
        .json(
            Method::GET,
            &format!("/v1/sandboxes/{id}/diagnostics/events?scope=lifecycle"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let content = events["content"].as_str().unwrap();
    assert!(
        content.contains("paused") && content.contains("resumed"),
        "{content}"
    );

    // Delete: 204, then 404, and no container left.
    let (status, _) = d.json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = d.info(&id).await;
    assert_eq!(status, 404);
    assert!(containers_of(&d.run).is_empty(), "container left after delete");
}

#[tokio::test]
async fn busybox_image_without_libc_serves_commands_and_the_server_proxy() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let created = d.create(sandbox_body(image, &["sleep", "100000"])).await;
    let id = created["id"].as_str().unwrap();
    let execd = d.endpoint(id, 44772, false).await;
    // Issue 19: execd's own endpoint has upstream's form, `host:<mapped 44772>/proxy/44772`
    // (upstream's e2e accepts only that or `host:44772`), and works as an SDK uses it.
    assert!(execd.base.ends_with("/proxy/44772"), "{}", execd.base);
    let (out, code) = execd.run("echo busy; exit 3").await;
    assert_eq!((out.as_str(), code), ("busy\n", 3));

    // The same through sandboxd's proxy, authenticated by the sandbox token the endpoint
    // hands out (what SDK 0.1.10 sends) or by the API key (what 1.1.1 sends).
    let proxied = d.endpoint(id, 44772, true).await;
    assert!(
        proxied.base.contains(&format!("/v1/sandboxes/{id}/proxy/44772")),
        "{}",
        proxied.base
    );
    let (out, code) = proxied.run("echo via-proxy").await;
    assert_eq!((out.as_str(), code), ("via-proxy\n", 0));
    let ping = |headers: &[(&str, &str)]| {
        let mut r = proxied.client.get(format!("{}/ping", proxied.base));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send()
    };
    assert_eq!(
        ping(&[("OPEN-SANDBOX-API-KEY", &d.key)]).await.unwrap().status(),
        200
    );
    assert_eq!(
        ping(&[]).await.unwrap().status(),
        401,
        "the proxy needs the API key or the sandbox token"
    );
    assert_eq!(
        ping(&[(TOKEN_HEADER, "not-the-token")]).await.unwrap().status(),
        401
    );

    // Direct endpoints for other ports go through execd's own /proxy.
    let direct_user = d.endpoint(id, 9000, false).await.base;
    assert!(direct_user.ends_with("/proxy/9000"), "{direct_user}");
    // The 1.1.1 SDK asks for the egress port; it must answer even without a sidecar.
    let egress = d.endpoint(id, 18080, false).await.base;
    assert!(egress.ends_with("/proxy/18080"), "{egress}");
}

#[tokio::test]
async fn the_proxy_strips_credentials_before_a_user_port() {
    let Some((image, d)) = setup("python") else {
        return;
    };
    let created = d.create(sandbox_body(image, &["tail", "-f", "/dev/null"])).await;
    let id = created["id"].as_str().unwrap();
    let execd = d.endpoint(id, 44772, false).await;
    // A server on port 9000 that answers every GET with the headers it received, as JSON.
    let server = r#"
import http.server, json

class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", 9000), Echo).serve_forever()
"#;
    execd.upload("/tmp/echo.py", server.as_bytes()).await;
    let resp = execd
        .req(Method::POST, "/command")
        .json(&json!({"command": "python3 /tmp/echo.py", "background": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let proxied = d.endpoint(id, 9000, true).await;
    let seen: Value = eventually(20, "the user server", async || {
        let resp = proxied
            .req(Method::GET, "/echo/a%20b?x=1&y=2")
            .header("Authorization", "Bearer secret")
            .header("Cookie", "session=secret")
            .header("OPEN-SANDBOX-API-KEY", &d.key)
            .header("X-Custom", "kept")
            .send()
            .await
            .ok()?;
        (resp.status() == 200).then_some(())?;
        resp.json().await.ok()
    })
    .await;
    assert_eq!(seen["path"], "/echo/a%20b?x=1&y=2");
    let headers = &seen["headers"];
    assert_eq!(headers["x-custom"], "kept");
    for secret in [
        "authorization",
        "cookie",
        "open-sandbox-api-key",
        "x-execd-access-token",
    ] {
        assert!(
            headers.get(secret).is_none(),
            "{secret} leaked to the user port: {headers}"
        );
    }
    assert!(headers["x-forwarded-for"].is_string(), "{headers}");
}

#[tokio::test]
async fn list_filters_and_metadata_patch() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let mut ids = Vec::new();
    for team in ["a", "a", "b"] {
        let mut body = sandbox_body(image, &["sleep", "100000"]);
        body["metadata"] = json!({ "team": team });
        ids.push(d.create(body).await["id"].as_str().unwrap().to_owned());
    }
    let (_, paused) = d
        .json(Method::POST, &format!("/v1/sandboxes/{}/pause", ids[1]), None)
        .await;
    assert_eq!(paused, Value::String(String::new()));

    let list = async |query: &str| -> Vec<String> {
        let (status, body) = d.json(Method::GET, &format!("/v1/sandboxes?{query}"), None).await;
        assert_eq!(status, 200, "{query}: {body}");
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut all = list("").await;
    all.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(all, expected);
    assert_eq!(list("state=running").await.len(), 2, "case-insensitive state");
    assert_eq!(list("state=Paused").await, [ids[1].clone()]);
    assert_eq!(list("state=Paused&state=RUNNING").await.len(), 3, "states OR");
    let meta = format!("metadata=team%3Da%26{RUN_LABEL}%3D{}", d.run);
    let mut team_a = list(&meta).await;
    team_a.sort();
    let mut want = vec![ids[0].clone(), ids[1].clone()];
    want.sort();
    assert_eq!(team_a, want, "metadata AND");
    assert!(list("metadata=team%3Dc").await.is_empty());

    let (status, page) = d.json(Method::GET, "/v1/sandboxes?pageSize=2&page=2", None).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        page["pagination"],
        json!({"page": 2, "pageSize": 2, "totalItems": 3, "totalPages": 2, "hasNextPage": false})
    );
    let newest_first = list("").await;
    assert_eq!(newest_first[0], ids[2]);

    // Merge patch: set, change, delete with null.
    let (status, patched) = d
        .json(
            Method::PATCH,
            &format!("/v1/sandboxes/{}/metadata", ids[2]),
            Some(json!({"team": "c", "tier": "gold"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["metadata"]["team"], "c");
    assert_eq!(patched["metadata"]["tier"], "gold");
    let (_, patched) = d
        .json(
            Method::PATCH,
            &format!("/v1/sandboxes/{}/metadata", ids[2]),
            Some(json!({"tier": null})),
        )
        .await;
    assert!(patched["metadata"].get("tier").is_none(), "{patched}");
    assert_eq!(list("metadata=team%3Dc").await, [ids[2].clone()]);
    for bad in [json!({"opensandbox.io/x": "1"}), json!({"k": 1}), json!(["k"])] {
        let (status, err) = d
            .json(
                Method::PATCH,
                &format!("/v1/sandboxes/{}/metadata", ids[2]),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {err}");
    }
}

#[tokio::test]
async fn expiry_deletes_on_time_and_restart_reconciles() {
    let Some((image, mut d)) = setup("busybox") else {
        return;
    };
    let body = || sandbox_body(image, &["sleep", "100000"]);
    let expiring = d.create(body()).await["id"].as_str().unwrap().to_owned();
    let kept = d.create(body()).await["id"].as_str().unwrap().to_owned();
    let vanishing = d.create(body()).await["id"].as_str().unwrap().to_owned();
    let manual = d
        .create(json!({"image": {"uri": image}, "entrypoint": ["sleep", "100000"], "timeout": null}))
        .await;
    assert!(
        manual.get("expiresAt").is_none(),
        "manual cleanup has no expiry: {manual}"
    );
    let manual = manual["id"].as_str().unwrap().to_owned();
    let (status, _) = d
        .renew(
            &manual,
            execd::wire::time::parse_ms("2099-01-01T00:00:00Z").unwrap(),
        )
        .await;
    assert_eq!(status, 409, "manual-cleanup sandboxes have nothing to renew");

    // Expiry: renew to 1.5 s from now; it must be gone (API and Docker) soon after.
    let soon = execd::wire::time::format_ms(execd::wire::time::now_ms() + 1500);
    let (status, _) = d
        .renew(&expiring, execd::wire::time::parse_ms(&soon).unwrap())
        .await;
    assert_eq!(status, 200);
    let started = Instant::now();
    eventually(10, "the expired sandbox to go", async || {
        let (status, _) = d.info(&expiring).await;
        (status == 404).then_some(())
    })
    .await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1000), "expired early: {took:?}");
    assert!(docker(&["ps", "-aq", "--filter", &format!("name=sandbox-{expiring}")]).is_empty());

    // Restart: while sandboxd is down, one container is removed behind its back and one
    // sandbox's expiry passes.
    let (status, _) = d.renew(&kept, execd::wire::time::now_ms() + 3_600_000).await;
    assert_eq!(status, 200);
    let expiring = d.create(body()).await["id"].as_str().unwrap().to_owned();
    let soon = execd::wire::time::format_ms(execd::wire::time::now_ms() + 500);
    let (status, _) = d
        .renew(&expiring, execd::wire::time::parse_ms(&soon).unwrap())
        .await;
    assert_eq!(status, 200);
    d.stop();
    docker(&["rm", "-f", &format!("sandbox-{vanishing}")]);
    std::thread::sleep(Duration::from_millis(800));

    let d2 = Sandboxd::start_on(&d.data_dir, &d.run);
    let (status, info) = d2.info(&kept).await;
    assert_eq!(status, 200, "a running sandbox is adopted: {info}");
    assert_eq!(info["status"]["state"], "Running");
    let (out, _) = d2.endpoint(&kept, 44772, false).await.run("echo adopted").await;
    assert_eq!(out, "adopted\n");
    let (status, _) = d2.info(&manual).await;
    assert_eq!(status, 200, "manual-cleanup sandboxes survive restarts");
    let (status, _) = d2.info(&vanishing).await;
    assert_eq!(status, 404, "a vanished container is forgotten");
    let (status, _) = d2.info(&expiring).await;
    assert_eq!(status, 404, "an expired sandbox is removed at start");
    assert!(docker(&["ps", "-aq", "--filter", &format!("name=sandbox-{expiring}")]).is_empty());
    assert_eq!(
        containers_of(&d.run).len(),
        2,
        "only the adopted sandboxes' containers are left"
    );
}

#[tokio::test]
async fn a_container_killed_behind_sandboxds_back_shows_failed() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let killed = d.create(sandbox_body(image, &["sleep", "100000"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Long enough to outlive a create on a loaded machine, short enough to end soon after.
    let finished = d.create(sandbox_body(image, &["sleep", "4"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    docker(&["kill", &format!("sandbox-{killed}")]);
    let info = eventually(10, "the killed sandbox to stop running", async || {
        let (status, info) = d.info(&killed).await;
        assert_eq!(status, 200);
        (info["status"]["state"] != "Running").then_some(info)
    })
    .await;
    assert_eq!(info["status"]["state"], "Failed", "{info}");
    assert!(
        info["status"]["message"].as_str().unwrap().contains("137"),
        "{info}"
    );
    // An entrypoint that ends with 0 ends the sandbox cleanly (execd as init exits with it).
    let state = eventually(20, "the sandbox to finish", async || {
        let state = d.state(&finished).await;
        (state != "Running").then_some(state)
    })
    .await;
    assert_eq!(state, "Terminated");
    // Removed outside sandboxd: Failed with a reason, and still deletable.
    docker(&["rm", "-f", &format!("sandbox-{killed}")]);
    let (_, info) = d.info(&killed).await;
    assert_eq!(info["status"]["state"], "Failed");
    assert_eq!(info["status"]["reason"], "CONTAINER_GONE");
    let (status, _) = d
        .json(Method::DELETE, &format!("/v1/sandboxes/{killed}"), None)
        .await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_leaves_nothing() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };

    // Auth.
    let resp = d
        .client
        .get(format!("{}/v1/sandboxes", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "MISSING_API_KEY");
    let resp = d
        .client
        .get(format!("{}/v1/sandboxes", d.base))
        .header("OPEN-SANDBOX-API-KEY", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "INVALID_API_KEY");
    let health = d.client.get(format!("{}/health", d.base)).send().await.unwrap();
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "healthy"})
    );

    // Unknown id: 404 with the request id echoed, on both prefixes.
    for prefix in ["", "/v1"] {
        let resp = d
            .req(Method::GET, &format!("{prefix}/sandboxes/no-such-id"))
            .header("X-Request-ID", "req-123")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["x-request-id"], "req-123");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "SANDBOX::NOT_FOUND");
        assert!(body["message"].as_str().unwrap().contains("no-such-id"));
    }
    let resp = d.req(Method::GET, "/v1/sandboxes").send().await.unwrap();
    assert_eq!(
        resp.headers()["x-request-id"].len(),
        32,
        "a request id is made when none is sent"
    );

    let cases = [
        (json!({}), "image is required"),
        (json!({"image": {"uri": image}}), "entrypoint"),
        (
            json!({"image": {"uri": image}, "entrypoint": ["x"], "timeout": 10}),
            "at least 60",
        ),
        (
            json!({"image": {"uri": image}, "entrypoint": ["x"], "resourceLimits": {"memory": "lots"}}),
            "memory",
        ),
        (
            json!({"image": {"uri": image}, "entrypoint": ["x"], "metadata": {"opensandbox.io/id": "x"}}),
            "reserved",
        ),
        (
            json!({"image": "not-an-object", "entrypoint": ["x"]}),
            "invalid JSON body",
        ),
    ];
    for (body, needle) in cases {
        let (status, err) = d.json(Method::POST, "/v1/sandboxes", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(err["message"].as_str().unwrap().contains(needle), "{body}: {err}");
    }
    let resp = d
        .req(Method::POST, "/v1/sandboxes")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Unknown image: a clear error and no container.
    let (status, err) = d
        .json(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"image": {"uri": "execd-test/no-such-image:1"}, "entrypoint": ["x"], "metadata": {RUN_LABEL: d.run}})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "SANDBOX::IMAGE_NOT_FOUND");
    // An entrypoint that does not exist: execd cannot start it, the create fails with the
    // reason, and the container is removed.
    let (status, err) = d
        .json(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"image": {"uri": image}, "entrypoint": ["/no/such/program"], "metadata": {RUN_LABEL: d.run}})),
        )
        .await;
    assert_eq!(status, 500, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("/no/such/program"),
        "{err}"
    );
    assert!(
        containers_of(&d.run).is_empty(),
        "failed creates leave no container"
    );
    let (_, list) = d.json(Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(list["pagination"]["totalItems"], 0, "{list}");

    // Routes of the 1.1.1 server that the Docker runtime does not offer: 501, not 404.
    for path in ["/v1/sandboxes/x/networkpolicy"] {
        let (status, err) = d.json(Method::GET, path, None).await;
        assert_eq!(status, 501, "{path}: {err}");
        assert!(
            err["code"].as_str().unwrap().ends_with("API_NOT_SUPPORTED"),
            "{err}"
        );
    }
    // Templates are served: an unknown one is 404 in the catalog's terms.
    let (status, err) = d.json(Method::GET, "/templates/x", None).await;
    assert_eq!(
        (status.as_u16(), err["code"].as_str()),
        (404, Some("TEMPLATE::NOT_FOUND")),
        "{err}"
    );
    let (status, _) = d
        .json(
            Method::POST,
            "/v1/metrics/events",
            Some(json!({"eventType": "sandbox.create", "createDurationMs": 5, "success": true})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, err) = d.json(Method::GET, "/v1/sandboxes/x/endpoints/99999", None).await;
    assert_eq!(status, 404, "unknown sandbox first: {err}");
}

#[tokio::test]
async fn a_terminal_websocket_runs_through_the_server_proxy() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::Message;

    let Some((image, d)) = setup("python") else {
        return;
    };
    let created = d.create(sandbox_body(image, &["tail", "-f", "/dev/null"])).await;
    let id = created["id"].as_str().unwrap();
    let proxied = d.endpoint(id, 44772, true).await;
    let resp = proxied
        .req(Method::POST, "/pty")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let session: Value = resp.json().await.unwrap();
    let url = format!(
        "{}/pty/{}/ws",
        proxied.base.replacen("http://", "ws://", 1),
        session["session_id"].as_str().unwrap()
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert(TOKEN_HEADER, proxied.token.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade through the proxy");
    let mut input = vec![0x00];
    input.extend_from_slice(b"echo $((6 * 7))-via-ws\n");
    ws.send(Message::Binary(input.into())).await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&out).contains("42-via-ws") {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, ws.next())
            .await
            .expect("terminal output in time")
            .expect("socket open")
            .unwrap();
        if let Message::Binary(b) = frame {
            if b.first() == Some(&0x01) {
                out.extend_from_slice(&b[1..]);
            }
        }
    }
}

#[tokio::test]
async fn the_isolation_extension_makes_isolated_sessions_available() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let mut body = sandbox_body(image, &["sleep", "100000"]);
    body["extensions"] = json!({"bootstrap.execd.isolation": "enable"});
    let isolated = d.create(body).await["id"].as_str().unwrap().to_owned();
    let plain = d.create(sandbox_body(image, &["sleep", "100000"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let caps = async |id: &str| -> Value {
        let execd = d.endpoint(id, 44772, false).await;
        let resp = execd
            .req(Method::GET, "/v1/isolated/capabilities")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    };
    let with = caps(&isolated).await;
    assert_eq!(with["available"], true, "{with}");
    assert_eq!(with["userns_available"], true, "{with}");
    assert_eq!(with["hardening"]["namespaces"]["state"], "active", "{with}");
    // Never privileged: the extension only swaps the seccomp profile and unmasks /proc.
    let inspect: Value = serde_json::from_str(&docker(&["inspect", &format!("sandbox-{isolated}")])).unwrap();
    assert_eq!(inspect[0]["HostConfig"]["Privileged"], false);
    assert!(
        inspect[0]["HostConfig"]["CapAdd"].is_null(),
        "{}",
        inspect[0]["HostConfig"]["CapAdd"]
    );
    // Without it, Docker's default profile denies user namespaces and execd says so.
    let without = caps(&plain).await;
    assert_eq!(without["userns_available"], false, "{without}");
    assert_ne!(without["hardening"]["namespaces"]["state"], "active", "{without}");
}

/// A sandbox's state after a pause: waits out nothing, the pause answered already.
async fn pause_right_after_create(d: &Sandboxd, image: &str) {
    let id = d.create(sandbox_body(image, &["tail", "-f", "/dev/null"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, err) = d.act(&id, "pause").await;
    assert_eq!(status, 202, "pause right after create: {err}");
    assert_eq!(d.state(&id).await, "Paused");
    let (status, err) = d.act(&id, "resume").await;
    assert_eq!(status, 202, "{err}");
    assert_eq!(d.state(&id).await, "Running");
    let execd = d.endpoint(&id, 44772, false).await;
    assert_eq!(execd.run("echo thawed").await.0, "thawed\n");
    let (status, _) = d.json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn issue19_pause_right_after_create_ends_paused_every_time() {
    // execd warms a python kernel as the sandbox starts: on cgroup v1 the freezer can give up
    // ("unable to freeze") while those processes start, and sandboxd retries.
    let Some((image, d)) = setup("python") else {
        return;
    };
    for _ in 0..8 {
        pause_right_after_create(&d, image).await;
    }
}

#[tokio::test]
async fn issue19_diagnostics_without_scope_answer_deprecated_plain_text() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let id = d
        .create(sandbox_body(
            image,
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4 5; do echo line$i; done; exec sleep 100000",
            ],
        ))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = async |path: &str| {
        let resp = d
            .req(Method::GET, &format!("/v1/sandboxes/{id}/diagnostics/{path}"))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let content_type = resp.headers().get("content-type").cloned();
        let deprecation = resp.headers().get("deprecation").cloned();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        (content_type, deprecation, text)
    };
    let (content_type, deprecation, logs) = eventually(10, "the entrypoint's output", async || {
        let got = get("logs").await;
        got.2.contains("line5").then_some(got)
    })
    .await;
    assert_eq!(content_type.unwrap(), "text/plain; charset=utf-8");
    assert_eq!(deprecation.unwrap(), "true");
    assert!(logs.contains("line1\n"), "{logs}");
    assert_eq!(get("logs?tail=1").await.2.lines().count(), 1);
    assert!(get("logs?since=10m").await.2.contains("line5"));
    let later = execd::wire::time::format_ms(execd::wire::time::now_ms() + 3_600_000);
    assert_eq!(
        get(&format!("logs?since={later}")).await.2,
        "",
        "nothing after an hour from now"
    );

    let (content_type, deprecation, events) = get("events").await;
    assert_eq!(content_type.unwrap(), "text/plain; charset=utf-8");
    assert_eq!(deprecation.unwrap(), "true");
    assert!(events.contains("create requested"), "{events}");
    let last = get("events?tail=1").await.2;
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(last.contains("running"), "{last}");

    // The scoped form stays the JSON descriptor; tail applies there too.
    let (status, scoped) = d
        .json(
            Method::GET,
            &format!("/v1/sandboxes/{id}/diagnostics/events?scope=lifecycle&tail=1"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{scoped}");
    assert_eq!(scoped["content"], json!(last));
    assert_eq!(scoped["truncated"], true);

    for (query, field) in [("tail=0", "tail"), ("tail=many", "tail"), ("since=soon", "since")] {
        for kind in ["logs", "events"] {
            let (status, err) = d
                .json(
                    Method::GET,
                    &format!("/v1/sandboxes/{id}/diagnostics/{kind}?{query}"),
                    None,
                )
                .await;
            assert_eq!(status, 400, "{kind}?{query}: {err}");
            assert!(err["message"].as_str().unwrap().starts_with(field), "{err}");
        }
    }
}

/// An image tag removed when the test ends.
struct TempImage(String);

impl Drop for TempImage {
    fn drop(&mut self) {
        docker(&["rmi", "-f", &self.0]);
    }
}

#[tokio::test]
async fn issue19_an_image_keeping_its_entrypoint_in_opt_opensandbox_runs() {
    use std::os::unix::fs::PermissionsExt as _;

    let Some((base, d)) = setup("busybox") else {
        return;
    };
    // Upstream's code-interpreter images keep their entrypoint under /opt/opensandbox.
    let context = tempfile::tempdir().unwrap();
    let script = context.path().join("start.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho from-the-image > /tmp/started\nexec sleep 100000\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY start.sh /opt/opensandbox/start.sh\n"),
    )
    .unwrap();
    let image = TempImage(format!("execd-test/opt-opensandbox:{}", d.run));
    let built = Command::new("docker")
        .args(["build", "-q", "-t", &image.0])
        .arg(context.path())
        .output()
        .expect("run docker build");
    assert!(
        built.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    let created = d
        .create(sandbox_body(&image.0, &["/opt/opensandbox/start.sh"]))
        .await;
    let id = created["id"].as_str().unwrap();
    let execd = d.endpoint(id, 44772, false).await;
    let started = eventually(10, "the image's entrypoint to run", async || {
        let (out, code) = execd.run("cat /tmp/started").await;
        (code == 0).then_some(out)
    })
    .await;
    assert_eq!(started, "from-the-image\n");
    // Both stay visible: the image's script and the agent at upstream's path, read-only.
    let (out, code) = execd
        .run("ls /opt/opensandbox; test -x /opt/opensandbox/execd && echo agent-ok")
        .await;
    assert_eq!((out.as_str(), code), ("execd\nstart.sh\nagent-ok\n", 0));
    let (_, code) = execd.run("echo x > /opt/opensandbox/execd").await;
    assert_ne!(code, 0, "a sandbox cannot replace its agent");
    let (_, code) = execd.run("echo x > /opt/sandboxd/execd").await;
    assert_ne!(code, 0, "nor through the volume's own mount");
}

#[tokio::test]
async fn issue19_the_server_proxy_refuses_a_sandbox_that_is_not_running() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let id = d.create(sandbox_body(image, &["sleep", "100000"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let proxied = d.endpoint(&id, 44772, true).await;
    // A frozen container accepts the connection and never answers; the bounded client
    // timeout only keeps a regression from hanging the suite.
    let ping = async || {
        let resp = proxied
            .req(Method::GET, "/ping")
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("the server proxy answers a paused sandbox");
        let status = resp.status();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    };
    let refused = |(status, err): (StatusCode, Value), state: &str| {
        assert_eq!(status, 409, "{err}");
        assert_eq!(err["code"], "DOCKER::SANDBOX_NOT_RUNNING", "{err}");
        assert_eq!(err["message"], format!("sandbox {id} is {state}"), "{err}");
    };
    assert_eq!(ping().await.0, 200);

    assert_eq!(d.act(&id, "pause").await.0, 202);
    refused(ping().await, "Paused");
    assert_eq!(d.act(&id, "resume").await.0, 202);
    assert_eq!(ping().await.0, 200);

    // Paused behind sandboxd's back: known from the next read of the sandbox on.
    docker(&["pause", &format!("sandbox-{id}")]);
    assert_eq!(d.state(&id).await, "Paused");
    refused(ping().await, "Paused");
    docker(&["unpause", &format!("sandbox-{id}")]);
    assert_eq!(d.state(&id).await, "Running");
    assert_eq!(ping().await.0, 200);

    // Killed: the port refuses, and the answer says why.
    docker(&["kill", &format!("sandbox-{id}")]);
    let answer = eventually(10, "the proxy to see the sandbox stopped", async || {
        let answer = ping().await;
        (answer.0 != 200).then_some(answer)
    })
    .await;
    refused(answer, "Failed");
}

/// `method path` as the holder of `token` (no API key), with an optional JSON body.
pub(crate) async fn as_bearer(
    d: &Sandboxd,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut r = d
        .client
        .request(method, format!("{}{path}", d.base))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("send");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

/// Mints a token for `user` with `role` through the API key.
pub(crate) async fn mint(d: &Sandboxd, user: &str, role: &str) -> String {
    let (status, body) = d
        .json(
            Method::POST,
            "/v1/tokens",
            Some(json!({"userId": user, "role": role, "ttlSeconds": 600})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["tokenType"], "Bearer");
    body["accessToken"].as_str().unwrap().to_owned()
}

/// Runs `code` in the project's Python (which has PyJWT) and returns its stdout.
fn python(code: &str, args: &[&str]) -> String {
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run the project's python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn issue12_tokens_name_users_and_someone_elses_sandbox_is_not_found_anywhere() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let alice = mint(&d, "alice", "user").await;
    let bob = mint(&d, "bob", "user").await;
    let viewer = mint(&d, "alice", "viewer").await;

    let (status, me, _) = as_bearer(&d, &alice, Method::GET, "/v1/tokens/current", None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (
            me["userId"].as_str(),
            me["role"].as_str(),
            me["authMethod"].as_str()
        ),
        (Some("alice"), Some("user"), Some("bearer"))
    );

    let mut body = sandbox_body(image, &["sleep", "3600"]);
    body["metadata"][RUN_LABEL] = json!(d.run);
    let (status, created, _) = as_bearer(&d, &alice, Method::POST, "/v1/sandboxes", Some(body.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, _, _) = as_bearer(&d, &viewer, Method::POST, "/v1/sandboxes", Some(body)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer creates nothing");

    // Bob: every sandbox route answers 404 for Alice's sandbox, the proxy included.
    let renew = json!({"expiresAt": execd::wire::time::format_ms(execd::wire::time::now_ms() + 3_600_000)});
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/sandboxes/{id}"), None),
        (
            Method::PATCH,
            format!("/v1/sandboxes/{id}/metadata"),
            Some(json!({"k": "v"})),
        ),
        (Method::POST, format!("/v1/sandboxes/{id}/pause"), None),
        (Method::POST, format!("/v1/sandboxes/{id}/resume"), None),
        (
            Method::POST,
            format!("/v1/sandboxes/{id}/renew-expiration"),
            Some(renew),
        ),
        (Method::GET, format!("/v1/sandboxes/{id}/endpoints/44772"), None),
        (
            Method::GET,
            format!("/v1/sandboxes/{id}/diagnostics/logs?scope=container"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/sandboxes/{id}/diagnostics/events"),
            None,
        ),
        (Method::GET, format!("/v1/sandboxes/{id}/proxy/44772/ping"), None),
        (Method::DELETE, format!("/v1/sandboxes/{id}"), None),
    ];
    for (method, path, body) in routes {
        let (status, answer, _) = as_bearer(&d, &bob, method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "bob {method} {path}: {answer}");
        assert_eq!(answer["code"], "SANDBOX::NOT_FOUND", "{path}");
    }
    let (_, listed, _) = as_bearer(&d, &bob, Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(listed["items"], json!([]), "bob lists nothing");
    let (status, _, _) = as_bearer(&d, &bob, Method::GET, "/v1/sandboxes?owner=alice", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "?owner= is for admins");
    let (_, listed, _) = as_bearer(&d, &alice, Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let (_, listed) = d.json(Method::GET, "/v1/sandboxes?owner=alice", None).await;
    assert_eq!(listed["items"][0]["id"], id, "the API key is the admin");
    // Alice reaches her sandbox, the proxy included, with her token alone.
    let (status, _, _) = as_bearer(
        &d,
        &alice,
        Method::GET,
        &format!("/v1/sandboxes/{id}/proxy/44772/ping"),
        None,
    )
    .await;
    assert_eq!(status, 200);

    // 401s, each with WWW-Authenticate: Bearer.
    let secret = std::fs::read_to_string(d.data_dir.join("jwt.secret")).unwrap();
    let keys = execd::orchestrator::auth::jwt::Keys::new(secret.trim().as_bytes(), &[]).unwrap();
    let now = execd::wire::time::now_ms() as u64 / 1000;
    let claims = |exp: u64| execd::orchestrator::auth::jwt::Claims {
        iss: "sandboxd".into(),
        sub: "alice".into(),
        role: "user".into(),
        iat: now,
        exp,
        jti: "hand-made".into(),
    };
    let other = execd::orchestrator::auth::jwt::Keys::new(&[7u8; 32], &[]).unwrap();
    let mut tampered = alice.clone();
    tampered.pop();
    let cases = [
        ("garbled", "not-a-jwt".to_owned(), "AUTH::INVALID_TOKEN"),
        ("bad signature", other.mint(&claims(now + 600)), "AUTH::INVALID_TOKEN"),
        ("tampered", tampered, "AUTH::INVALID_TOKEN"),
        ("expired", keys.mint(&claims(now - 120)), "AUTH::TOKEN_EXPIRED"),
        (
            "alg none",
            python(
                "import jwt,sys,time; print(jwt.encode({'iss':'sandboxd','sub':'alice','role':'admin','exp':int(time.time())+600}, None, algorithm='none'))",
                &[],
            ),
            "AUTH::INVALID_TOKEN",
        ),
    ];
    for (what, token, code) in cases {
        let (status, answer, headers) = as_bearer(&d, &token, Method::GET, "/v1/sandboxes", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {answer}");
        assert_eq!(answer["code"], code, "{what}");
        assert_eq!(headers["www-authenticate"], "Bearer", "{what}");
    }
    // A wrong API key beside a valid token is refused: the key decides alone.
    let resp = d
        .client
        .get(format!("{}/v1/sandboxes", d.base))
        .bearer_auth(&alice)
        .header("OPEN-SANDBOX-API-KEY", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // PyJWT reads sandboxd's tokens, and sandboxd accepts PyJWT's.
    let decoded = python(
        "import jwt,sys; c=jwt.decode(sys.argv[1], sys.argv[2], algorithms=['HS256'], issuer='sandboxd'); print(c['sub'], c['role'])",
        &[&alice, secret.trim()],
    );
    assert_eq!(decoded, "alice user");
    let foreign = python(
        "import jwt,sys,time,uuid; print(jwt.encode({'iss':'sandboxd','sub':'carol','role':'viewer','iat':int(time.time()),'exp':int(time.time())+600,'jti':uuid.uuid4().hex}, sys.argv[1], algorithm='HS256'))",
        &[secret.trim()],
    );
    let (status, me, _) = as_bearer(&d, &foreign, Method::GET, "/v1/tokens/current", None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["userId"].as_str(), me["role"].as_str()),
        (Some("carol"), Some("viewer"))
    );

    // Revocation: Bob cannot revoke Alice's token; Alice can, and then it is refused.
    let token_id = |token: &str| {
        python(
            "import jwt,sys; print(jwt.decode(sys.argv[1], options={'verify_signature': False})['jti'])",
            &[token],
        )
    };
    let alice_id = token_id(&alice);
    let (status, _, _) = as_bearer(&d, &bob, Method::DELETE, &format!("/v1/tokens/{alice_id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = as_bearer(
        &d,
        &alice,
        Method::DELETE,
        &format!("/v1/tokens/{alice_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, answer, _) = as_bearer(&d, &alice, Method::GET, "/v1/tokens/current", None).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("AUTH::TOKEN_REVOKED"))
    );

    // Minting: a user may not mint for others or above its role; bad input is 400.
    let (status, _, _) = as_bearer(
        &d,
        &bob,
        Method::POST,
        "/v1/tokens",
        Some(json!({"userId": "bob", "role": "admin"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in [
        json!({"userId": "x".repeat(129)}),
        json!({"userId": "bob", "ttlSeconds": 10}),
        json!({"userId": "bob", "ttlSeconds": 604_801}),
        json!({"userId": "bob", "extra": 1}),
    ] {
        let (status, answer) = d.json(Method::POST, "/v1/tokens", Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
    }
}

#[tokio::test]
async fn issue12_business_domains_are_recorded_filtered_and_validated() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let mut body = sandbox_body(image, &["sleep", "3600"]);
    body["metadata"][RUN_LABEL] = json!(d.run);
    let created = |domain: &'static str| {
        d.req(Method::POST, "/v1/sandboxes")
            .header("X-Business-Domain", domain)
            .json(&body)
            .send()
    };
    let resp = created("payments").await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = created("Not_Valid").await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (_, info) = d.info(&id).await;
    assert_eq!(info["businessDomain"], "payments");
    let (_, listed) = d
        .json(Method::GET, "/v1/sandboxes?businessDomain=payments", None)
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let (_, listed) = d
        .json(Method::GET, "/v1/sandboxes?businessDomain=search", None)
        .await;
    assert_eq!(listed["items"], json!([]));
    // The request id of the create is on its events.
    let resp = d
        .req(Method::GET, &format!("/v1/sandboxes/{id}/diagnostics/events"))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(text.contains("(request "), "{text}");
}
