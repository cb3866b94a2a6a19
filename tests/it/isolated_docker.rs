//! Isolated sessions with execd inside Docker (static agent in the static-busybox test image):
//! (b) a container started with `deploy/seccomp-userns.json` and `systempaths=unconfined`,
//! where the full jail works, and (c) a default container, where namespaces are denied and
//! execd must say so: 503 unless degraded mode is allowed, and then the layers that remain
//! (landlock, seccomp, no_new_privs, secrets filtering) must still hold.
//!
//! Runs whenever the engine answers (`EXECD_TEST_REQUIRE_DOCKER=1` makes a missing one fail).

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use crate::docker::docker_available;
use crate::util::{collect_sse, eventually};

const IMAGE: &str = "execd-test/busybox";
const TOKEN: &str = "tok-iso-5150";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("run docker")
}

/// A container running the static execd, removed on drop.
struct Sandbox {
    id: String,
    base: String,
    client: reqwest::Client,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.id]);
    }
}

impl Sandbox {
    /// Starts execd in the busybox image with `security` options and extra execd flags.
    async fn start(security: &[&str], flags: &[&str]) -> Self {
        let bin = repo().join("target/x86_64-unknown-linux-musl/release/execd");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/build-agent.sh first",
            bin.display()
        );
        if !docker(&["image", "inspect", IMAGE]).status.success() {
            let out = Command::new(repo().join("scripts/build-test-image.sh"))
                .arg("busybox")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "build-test-image: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut args: Vec<String> = ["create", "-p", "127.0.0.1::44772", "-e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(format!("EXECD_ACCESS_TOKEN={TOKEN}"));
        args.extend(["-e".into(), "MY_API_KEY=key-sekrit-5150".into()]);
        // The uppers must live on a filesystem overlayfs accepts as upper (not overlayfs).
        args.extend(["--tmpfs".into(), "/var/lib/execd".into()]);
        args.extend(security.iter().map(|s| s.to_string()));
        args.extend([IMAGE.into(), "/execd".into(), "--port".into(), "44772".into()]);
        args.extend(flags.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = docker(&argv);
        assert!(
            out.status.success(),
            "docker create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mut b = Sandbox {
            id,
            base: String::new(),
            client: reqwest::Client::new(),
        };
        let out = docker(&["cp", bin.to_str().unwrap(), &format!("{}:/execd", b.id)]);
        assert!(
            out.status.success(),
            "docker cp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = docker(&["start", &b.id]);
        assert!(
            out.status.success(),
            "docker start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = String::from_utf8_lossy(&docker(&["port", &b.id, "44772"]).stdout)
            .trim()
            .to_owned();
        let base = format!("http://{}", port.lines().next().unwrap());
        b.base = base;
        eventually(10, "execd in the container", async || {
            let r = b
                .client
                .get(format!("{}/ping", b.base))
                .header("X-EXECD-ACCESS-TOKEN", TOKEN)
                .send()
                .await;
            r.ok().filter(|r| r.status() == 200)
        })
        .await;
        b
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("X-EXECD-ACCESS-TOKEN", TOKEN)
    }

    async fn caps(&self) -> Value {
        self.req(reqwest::Method::GET, "/v1/isolated/capabilities")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn create(&self, body: Value) -> reqwest::Response {
        self.req(reqwest::Method::POST, "/v1/isolated/session")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn session(&self, body: Value) -> String {
        let resp = self.create(body.clone()).await;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(status, 201, "create {body}: {v}");
        v["session_id"].as_str().unwrap().to_owned()
    }

    /// Output and exit code of `code` in session `sid`.
    async fn run(&self, sid: &str, code: &str) -> (String, i64) {
        let resp = self
            .req(reqwest::Method::POST, &format!("/v1/isolated/session/{sid}/run"))
            .json(&json!({ "code": code }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let events = collect_sse(resp).await;
        let out: String = events
            .iter()
            .filter(|e| e.kind() == "stdout")
            .map(|e| format!("{}\n", e.text().trim_end_matches('\n')))
            .collect();
        (out, crate::isolated::exit_code(&events))
    }

    /// Output of a plain (not isolated) command in the container.
    async fn command(&self, cmd: &str) -> String {
        let resp = self
            .req(reqwest::Method::POST, "/command")
            .json(&json!({ "command": cmd }))
            .send()
            .await
            .unwrap();
        collect_sse(resp)
            .await
            .iter()
            .filter(|e| e.kind() == "stdout")
            .map(|e| format!("{}\n", e.text().trim_end_matches('\n')))
            .collect()
    }
}

fn profile() -> String {
    format!("seccomp={}", repo().join("deploy/seccomp-userns.json").display())
}

/// Checks shared by (b) and (c): what must hold in both modes.
async fn common_escapes_blocked(b: &Sandbox, sid: &str) {
    // Secrets: the token and secret-looking variables never reach the session.
    let (out, _) = b
        .run(sid, "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'")
        .await;
    assert!(
        !out.contains("sekrit") && !out.contains(TOKEN) && !out.contains("EXECD_"),
        "{out}"
    );
    // Writes outside the mounts fail.
    let (out, _) = b
        .run(
            sid,
            "echo x > /etc/escape && echo WROTE-ETC; echo x > /escape && echo WROTE-ROOT; true",
        )
        .await;
    assert!(!out.contains("WROTE"), "{out}");
    assert!(!b
        .command("ls /etc/escape /escape 2>&1")
        .await
        .contains("/etc/escape\n"));
    // Namespaces and mounts cannot be made from inside.
    let (out, _) = b
        .run(
            sid,
            "unshare -U true && echo UNSHARED; mount -t tmpfs x /tmp && echo MOUNTED; true",
        )
        .await;
    assert!(!out.contains("UNSHARED") && !out.contains("MOUNTED"), "{out}");
    // execd's state (other sessions, logs) is not readable.
    let (out, _) = b.run(sid, "ls -A /var/lib/execd 2>/dev/null | wc -l").await;
    assert_eq!(out.trim(), "0", "{out}");
}

#[tokio::test]
async fn docker_userns_profile_gives_the_full_jail() {
    if !docker_available() {
        return;
    }
    let b = Sandbox::start(
        // Exactly what sandboxd asks Docker for when a sandbox wants isolated sessions.
        &[
            "--security-opt",
            &profile(),
            "--security-opt",
            "systempaths=unconfined",
            "--security-opt",
            "no-new-privileges:true",
        ],
        &[],
    )
    .await;
    let caps = b.caps().await;
    assert_eq!(caps["available"], true, "{caps}");
    assert_eq!(caps["userns_available"], true, "{caps}");
    assert_eq!(caps["diff_supported"], true);
    assert_eq!(caps["hardening"]["namespaces"]["state"], "active", "{caps}");
    assert_eq!(caps["hardening"]["seccomp"]["state"], "active");
    // cgroups are read-only in a container without SYS_ADMIN: reported, not pretended.
    assert_eq!(caps["hardening"]["cgroups"]["state"], "degraded", "{caps}");

    b.command("mkdir -p /workspace && echo lower > /workspace/f")
        .await;
    let sid = b
        .session(json!({ "workspace": { "path": "/workspace" }, "share_net": false }))
        .await;
    common_escapes_blocked(&b, &sid).await;
    // Own pid namespace: only the jail's processes; execd (pid 1 of the container) is absent.
    let (out, _) = b.run(&sid, "ls /proc | grep -cE '^[0-9]+$'").await;
    let procs: u32 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(procs < 8, "{out}");
    // Network: the container's loopback listener is out of reach with share_net false.
    assert_eq!(b.command(&listen_on(9911)).await.trim(), "LISTENING");
    let (out, _) = b
        .run(&sid, "echo | nc -w 1 127.0.0.1 9911 && echo CONNECTED; true")
        .await;
    assert!(!out.contains("CONNECTED"), "{out}");
    // Overlay: writes stay in the session until commit.
    let (_, code) = b
        .run(&sid, "echo upper > /workspace/f; echo n > /workspace/new")
        .await;
    assert_eq!(code, 0);
    assert_eq!(b.command("cat /workspace/f; ls /workspace").await, "lower\nf\n");
    let resp = b
        .req(
            reqwest::Method::POST,
            &format!("/v1/isolated/session/{sid}/commit"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        b.command("cat /workspace/f; ls /workspace").await,
        "upper\nf\nnew\n"
    );
}

#[tokio::test]
async fn docker_default_container_reports_degraded_mode_and_keeps_what_remains() {
    if !docker_available() {
        return;
    }
    // Without the operator's consent: truthfully unavailable, 503 on use.
    let strict = Sandbox::start(&[], &[]).await;
    let caps = strict.caps().await;
    assert_eq!(caps["available"], false, "{caps}");
    assert_eq!(caps["userns_available"], false);
    assert_eq!(caps["hardening"]["namespaces"]["state"], "degraded", "{caps}");
    assert!(
        caps["message"]
            .as_str()
            .unwrap()
            .contains("--isolated-allow-degraded"),
        "{caps}"
    );
    let resp = strict
        .create(json!({ "workspace": { "path": "/workspace" } }))
        .await;
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "SERVICE_UNAVAILABLE");
    drop(strict);

    // With consent: sessions run with landlock, seccomp, no_new_privs and filtering.
    let b = Sandbox::start(&[], &["--isolated-allow-degraded"]).await;
    let caps = b.caps().await;
    assert_eq!(caps["available"], true, "{caps}");
    assert_eq!(caps["userns_available"], false);
    assert_eq!(caps["diff_supported"], false);
    assert_eq!(caps["hardening"]["namespaces"]["state"], "degraded");
    assert_eq!(caps["hardening"]["landlock"]["state"], "active", "{caps}");
    assert!(
        caps["message"].as_str().unwrap().contains("degraded mode"),
        "{caps}"
    );
    let resp = b
        .create(json!({ "workspace": { "path": "/workspace" }, "uid_mode": "userns" }))
        .await;
    assert_eq!(resp.status(), 503, "userns cannot be promised here");

    b.command("mkdir -p /workspace /data && echo lower > /workspace/f")
        .await;
    let sid = b
        .session(json!({ "overlays": [{ "path": "/workspace" }, { "path": "/data", "mode": "rw" }], "share_net": false }))
        .await;
    common_escapes_blocked(&b, &sid).await;
    // Landlock: the rw mount is writable, the overlay (no copy-on-write without mounts) is not.
    let (out, _) = b
        .run(
            &sid,
            "echo d > /data/d && echo DATA-OK; echo x > /workspace/f && echo WS-WROTE; true",
        )
        .await;
    assert!(out.contains("DATA-OK") && !out.contains("WS-WROTE"), "{out}");
    assert_eq!(b.command("cat /workspace/f").await, "lower\n");
    // No pid namespace, but execd can be neither signalled nor inspected.
    let (out, _) = b
        .run(
            &sid,
            "kill -0 1 && echo SIGNALLED; cat /proc/1/environ >/dev/null && echo READ-ENV; true",
        )
        .await;
    assert!(!out.contains("SIGNALLED") && !out.contains("READ-ENV"), "{out}");
    // No net namespace, but IP sockets are refused when share_net is false.
    assert_eq!(b.command(&listen_on(9912)).await.trim(), "LISTENING");
    let (out, _) = b
        .run(&sid, "echo | nc -w 1 127.0.0.1 9912 && echo CONNECTED; true")
        .await;
    assert!(!out.contains("CONNECTED"), "{out}");
    // Background runs work, and deleting the session kills them (no pid namespace to do it).
    let resp = b
        .req(reqwest::Method::POST, &format!("/v1/isolated/session/{sid}/run"))
        .json(&json!({ "code": "sleep 3131", "background": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    eventually(5, "the sleeper to start", async || {
        (b.command("ps -o args | grep -c '^sleep 3131'").await.trim() == "1").then_some(())
    })
    .await;
    let resp = b
        .req(reqwest::Method::DELETE, &format!("/v1/isolated/session/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    eventually(5, "the sleeper to die with its session", async || {
        (b.command("ps -o args | grep -c '^sleep 3131'").await.trim() == "0").then_some(())
    })
    .await;
}

/// Shell text for the container: start a loopback listener on `port` and print `LISTENING`
/// once the kernel shows it (polled with a deadline of 5 s).
fn listen_on(port: u16) -> String {
    format!(
        "(nc -l -p {port} </dev/null >/dev/null 2>&1 &); i=0; \
         until cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q ':{port:04X} [0-9A-F:]* 0A'; do \
         i=$((i+1)); [ $i -ge 100 ] && break; sleep 0.05; done; \
         [ $i -lt 100 ] && echo LISTENING"
    )
}
