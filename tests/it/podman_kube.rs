//! The slow tier of the Kubernetes runtime (design §16.6): the exact objects its builders make
//! (`runtime::kubernetes::objects`: the Secret, the files ConfigMap and the Pod) fed to
//! `podman kube play`, an independent pod runtime, which must run the injection pod: the init
//! container runs `/execd install /opt/opensandbox` from the `FROM scratch` agent image, the
//! busybox container runs `execd init --`, execd answers `/ping` and runs a command with the
//! token from the Secret, and the seed file from the ConfigMap is in place with its mode.
//!
//! What the test adds to the builders' objects, and why (design §16.5; nothing else changes):
//! * the pod annotation `io.podman.annotations.init.container.type: always` (podman's default
//!   "once" init containers sometimes abort with "cannot remove … as it is running");
//! * a `hostPort` on `127.0.0.1` for execd's port (the builders publish no port: in a cluster
//!   sandboxd dials `podIP:44772`), a free port picked by the test;
//! * podman 4.3 (Debian 12) stores a Secret document from `kube play` as YAML but reads it back
//!   as JSON for `secretKeyRef` (podman#16269, fixed in 4.4 by podman#16631), so before 4.4 the
//!   Secret's `stringData` is created as a podman secret of that name in the JSON shape 4.3
//!   reads (`{key: base64}`); from 4.4 the Secret document goes into the YAML as it is;
//! * its own `containers.conf` (`CONTAINERS_CONF`) with `default_ulimits`: root in this VM lacks
//!   `CAP_SYS_RESOURCE`, so runc's default rlimits fail with EPERM.
//!
//! Needs root, Docker (the images are built there and moved with `docker save | podman load`)
//! and podman with catatonit (scripts/setup.sh installs both). When podman is missing or does
//! not work, the test fails with "not run: <reason>": it is never counted as a pass. Everything
//! it made in podman (pod, containers, secret, ConfigMap volume) is removed, even on failure.

#![cfg(feature = "k8s")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use execd::orchestrator::runtime::kubernetes::objects::{Objects, SANDBOX_CONTAINER};
use execd::orchestrator::runtime::{Purpose, Resources, SandboxSpec, SpecFile, EXECD_PORT};
use serde_json::{json, Value};

use crate::docker::docker_available;
use crate::fake_kube::agent_image;
use crate::sandboxd::image;
use crate::util::{parse_sse, texts};

/// The §16.5 quirk: without these, runc fails to set rlimits (EPERM) in this VM.
const CONTAINERS_CONF: &str = "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n";
/// The annotation that makes podman keep (and re-run) init containers.
const INIT_TYPE: (&str, &str) = ("io.podman.annotations.init.container.type", "always");
const SEED_PATH: &str = "/etc/seed/hello.txt";
const SEED_TEXT: &str = "seeded from a ConfigMap\n";

/// `podman ARGS` with the test's containers.conf.
fn podman(conf: &Path, args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .env("CONTAINERS_CONF", conf)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("not run: cannot execute podman ({e}); scripts/setup.sh installs podman and catatonit")
        })
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// podman's (major, minor), after checking that it runs containers at all here.
fn podman_works(conf: &Path) -> (u32, u32) {
    let out = podman(conf, &["version", "--format", "{{.Client.Version}}"]);
    assert!(
        out.status.success(),
        "not run: `podman version` failed: {}",
        text(&out)
    );
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let out = podman(conf, &["info", "--format", "{{.Host.OCIRuntime.Name}}"]);
    assert!(
        out.status.success(),
        "not run: `podman info` failed: {}",
        text(&out)
    );
    assert!(
        Path::new("/usr/libexec/podman/catatonit").exists() || which("catatonit"),
        "not run: catatonit is missing (podman's pods need it; scripts/setup.sh installs it)"
    );
    eprintln!(
        "podman {version}, OCI runtime {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    (major, minor)
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(bin).exists()))
}

/// Copies a Docker image into podman's own store (`docker save | podman load`).
fn podman_load(conf: &Path, image: &str) {
    let mut save = Command::new("docker")
        .args(["save", image])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run docker save");
    let load = Command::new("podman")
        .args(["load", "-q"])
        .env("CONTAINERS_CONF", conf)
        .stdin(save.stdout.take().unwrap())
        .output()
        .expect("run podman load");
    assert!(save.wait().unwrap().success(), "docker save {image} failed");
    assert!(load.status.success(), "podman load of {image}: {}", text(&load));
}

/// A free port on 127.0.0.1 for the pod's hostPort.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What `podman kube play` made for one sandbox, removed on drop.
struct Played {
    conf: PathBuf,
    yaml: PathBuf,
    id: String,
}

impl Played {
    fn pod(&self) -> String {
        format!("sbx-{}", self.id)
    }

    /// Every container of the pod with its status, for failure messages.
    fn describe(&self) -> String {
        let ps = podman(
            &self.conf,
            &[
                "ps",
                "-a",
                "--filter",
                &format!("pod={}", self.pod()),
                "--format",
                "{{.Names}}: {{.Status}}",
            ],
        );
        let logs = podman(
            &self.conf,
            &["logs", &format!("{}-{SANDBOX_CONTAINER}", self.pod())],
        );
        format!("containers:\n{}\nsandbox log:\n{}", text(&ps), text(&logs))
    }
}

impl Drop for Played {
    fn drop(&mut self) {
        let yaml = self.yaml.to_string_lossy().into_owned();
        let pod = self.pod();
        let files = format!("{pod}-files");
        for args in [
            vec!["kube", "down", yaml.as_str()],
            vec!["pod", "rm", "-f", "--ignore", pod.as_str()],
            vec!["secret", "rm", pod.as_str()],
            vec!["volume", "rm", "-f", files.as_str()],
        ] {
            let _ = podman(&self.conf, &args);
        }
    }
}

/// The spec the service would hand the runtime for a busybox sandbox from a template with one
/// file, limits and an expiry.
fn spec(id: &str, user_image: &str, token: &str) -> SandboxSpec {
    SandboxSpec {
        id: id.into(),
        image: user_image.into(),
        entrypoint: vec!["sleep".into(), "100000".into()],
        env: BTreeMap::from([
            ("EXECD_ACCESS_TOKEN".into(), token.into()),
            ("OPENSANDBOX_ID".into(), id.into()),
            ("GREETING".into(), "hello from the spec".into()),
        ]),
        labels: BTreeMap::from([("team".into(), "podman".into())]),
        expires_at: Some(
            (std::time::SystemTime::now() + Duration::from_secs(3600))
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        ),
        resources: Resources {
            nano_cpus: Some(500_000_000),
            memory: Some(256 * 1024 * 1024),
            pids: 4096,
            ..Resources::default()
        },
        mounts: Vec::new(),
        isolation: false,
        files: vec![SpecFile {
            path: SEED_PATH.into(),
            content: SEED_TEXT.as_bytes().to_vec(),
            mode: 0o640,
        }],
        purpose: Purpose::Sandbox,
        previous: None,
        start: true,
        workspace: None,
        image_auth: None,
        pool: None,
    }
}

/// The builders' Pod with the test's two additions (the init-container annotation and the
/// hostPort), everything else as built.
fn podman_pod(pod: &k8s_openapi::api::core::v1::Pod, host_port: u16) -> Value {
    let mut pod = serde_json::to_value(pod).unwrap();
    pod["metadata"]["annotations"][INIT_TYPE.0] = json!(INIT_TYPE.1);
    let containers = pod["spec"]["containers"].as_array_mut().unwrap();
    let sandbox = containers
        .iter_mut()
        .find(|c| c["name"] == SANDBOX_CONTAINER)
        .expect("the sandbox container");
    assert!(
        sandbox.get("ports").is_none(),
        "the builders publish no port: {sandbox}"
    );
    sandbox["ports"] = json!([{
        "containerPort": EXECD_PORT,
        "hostIP": "127.0.0.1",
        "hostPort": host_port,
    }]);
    pod
}

#[tokio::test]
async fn issue18_podman_kube_play_runs_the_builders_injection_pod() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("containers.conf");
    std::fs::write(&conf, CONTAINERS_CONF).unwrap();
    let version = podman_works(&conf);

    // The images, built on Docker as the other tiers build them, then moved into podman.
    let agent = agent_image();
    let user = format!("{}:latest", image("busybox"));
    podman_load(&conf, agent);
    podman_load(&conf, &user);

    let id = format!("podman{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let spec = spec(&id, &user, &token);
    let objects = Objects {
        namespace: "default".into(),
        agent_image: agent.into(),
        instance: "0123456789abcdef0123456789abcdef".into(),
    };
    let secret = objects.secret(&spec);
    let files = objects.files(&spec).unwrap().expect("a files ConfigMap");
    let pod = objects.pod(&spec).unwrap();
    let port = free_port();
    let pod = podman_pod(&pod, port);
    assert!(
        !pod.to_string().contains(&token),
        "the token is not in the pod spec"
    );

    let mut docs = Vec::new();
    let secret_in_yaml = version >= (4, 4);
    if secret_in_yaml {
        docs.push(yaml_serde::to_string(&secret).unwrap());
    }
    docs.push(yaml_serde::to_string(&files).unwrap());
    docs.push(yaml_serde::to_string(&pod).unwrap());
    let yaml = dir.path().join(format!("{id}.yaml"));
    std::fs::write(&yaml, docs.join("---\n")).unwrap();
    let played = Played {
        conf: conf.clone(),
        yaml: yaml.clone(),
        id: id.clone(),
    };
    if !secret_in_yaml {
        // podman 4.3's reading of a Secret for `secretKeyRef`: a JSON object of base64 values.
        let data: BTreeMap<&String, String> = secret
            .string_data
            .as_ref()
            .expect("the token in stringData")
            .iter()
            .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
            .collect();
        let file = dir.path().join("secret.json");
        std::fs::write(&file, serde_json::to_vec(&data).unwrap()).unwrap();
        let out = podman(
            &conf,
            &["secret", "create", &played.pod(), file.to_str().unwrap()],
        );
        assert!(out.status.success(), "podman secret create: {}", text(&out));
    }

    let started = Instant::now();
    let out = podman(&conf, &["kube", "play", yaml.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "podman kube play {}: {}\n{}",
        yaml.display(),
        text(&out),
        std::fs::read_to_string(&yaml).unwrap()
    );

    // execd answers on the hostPort once the init container has installed it.
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ping = client
            .get(format!("{base}/ping"))
            .header("X-EXECD-ACCESS-TOKEN", &token)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if ping.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "execd did not answer /ping on {base} within 120 s of kube play\n{}",
            played.describe()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "podman kube play → execd /ping 200: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The token is the Secret's: without it, 401.
    let anonymous = client.get(format!("{base}/ping")).send().await.unwrap();
    assert_eq!(
        anonymous.status(),
        401,
        "execd requires the token from the Secret"
    );

    // A command, with the token: the spec's env and the seed file are there.
    let body = client
        .post(format!("{base}/command"))
        .header("X-EXECD-ACCESS-TOKEN", &token)
        .json(&json!({"command": format!("cat {SEED_PATH}; echo \"id=$OPENSANDBOX_ID greeting=$GREETING\"; ls /opt/opensandbox")}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = parse_sse(&body);
    let stdout = texts(&events, "stdout").concat();
    assert!(stdout.contains(SEED_TEXT.trim()), "{body}");
    assert!(
        stdout.contains(&format!("id={id} greeting=hello from the spec")),
        "{body}"
    );
    assert!(
        stdout.contains("execd"),
        "execd installed in the emptyDir: {body}"
    );
    assert!(events.iter().any(|e| e.kind() == "execution_complete"), "{body}");

    let info: Value = client
        .get(format!("{base}/files/info"))
        .query(&[("path", SEED_PATH)])
        .header("X-EXECD-ACCESS-TOKEN", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info[SEED_PATH]["mode"], json!(640), "{info}");

    // The installer ran from the agent image and exited 0.
    let installer = podman(
        &conf,
        &[
            "inspect",
            "--format",
            "{{.State.ExitCode}} {{.ImageName}}",
            &format!("{}-execd-installer", played.pod()),
        ],
    );
    let installer = text(&installer);
    assert!(
        installer.trim().starts_with("0 ") && installer.contains(agent),
        "the init container: {installer}\n{}",
        played.describe()
    );
    drop(played);
    let left = podman(&conf, &["pod", "exists", &format!("sbx-{id}")]);
    assert!(!left.status.success(), "the pod is removed");
}
