//! OUR MODEL OF KUBERNETES (`examples/fake_kube`, test-only) driven by kube-rs, the client
//! sandboxd's Kubernetes runtime uses: the apiserver semantics it models (conflicts, patches,
//! selectors, watches and 410), and its docklet running real pods on Docker, among them the
//! agent's injection pod (`execd install` in an init container from the `FROM scratch` agent
//! image, `execd init` with seed files and a token from a Secret in the main container).
//!
//! Built with `--features k8s` (CI: `k8s-portforward`), which also builds the example. Docker tests run whenever the
//! engine answers (see `docker.rs`).

#![cfg(feature = "k8s")]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{wait::await_condition, watcher};
use kube::{Client, Config};
use serde_json::{json, Value};

use crate::docker::docker_available;
use crate::util::{eventually, parse_sse, texts};

/// The example binary, built beside this test binary by `cargo test --features k8s`.
fn fake_kube_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples/fake_kube");
    assert!(
        bin.exists(),
        "{} is missing: build with --features k8s",
        bin.display()
    );
    bin
}

/// A running fake apiserver; SIGTERM on drop (which removes its Docker objects).
pub(crate) struct FakeKube {
    child: Child,
    pub(crate) kubeconfig: PathBuf,
    base: String,
    pub(crate) label: String,
    _dir: tempfile::TempDir,
}

impl FakeKube {
    pub(crate) fn start(extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", extra)
    }

    /// On a given address (`listen`), e.g. the one a sandboxd started before it was told to
    /// connect to.
    pub(crate) fn start_on(listen: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let label = format!("fake-kube-test-{}", uuid::Uuid::new_v4().simple());
        let mut child = Command::new(fake_kube_bin())
            .args(["--listen", listen, "--docker-label", &label, "--kubeconfig-out"])
            .arg(&kubeconfig)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fake_kube");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected {line:?}"));
        Self {
            child,
            kubeconfig,
            base: format!("http://{addr}"),
            label,
            _dir: dir,
        }
    }

    pub(crate) async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        assert_eq!(config.default_namespace, "default");
        Client::try_from(config).unwrap()
    }

    /// SIGTERM, then wait for the exit.
    async fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        eventually(60, "fake_kube to exit", async || self.child.try_wait().unwrap()).await
    }

    pub(crate) fn docker_objects(&self, filter: &str) -> String {
        let ps = Command::new("docker")
            .args(["ps", "-aq", "--filter", filter])
            .output()
            .unwrap();
        let vols = Command::new("docker")
            .args(["volume", "ls", "-q", "--filter", filter])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&ps.stdout).trim(),
            String::from_utf8_lossy(&vols.stdout).trim()
        )
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
    }
}

fn api_status(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("not an apiserver error: {other:?}"),
    }
}

fn config_map(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
}

#[tokio::test]
async fn fake_kube_crud_conflicts_patches_and_selectors() {
    let fake = FakeKube::start(&[]);
    let client = fake.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let pp = PostParams::default();

    let a = cms
        .create(&pp, &config_map("a", json!({"x": "1"})))
        .await
        .unwrap();
    let meta = &a.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some());
    assert_eq!(
        api_status(cms.create(&pp, &config_map("a", json!({}))).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        api_status(cms.get("missing").await.unwrap_err()),
        (404, "NotFound".into())
    );

    // A merge patch moves the version on; the old version is then stale for PUT and PATCH.
    let stale = a.metadata.resource_version.clone().unwrap();
    let b = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"x": "2"}})),
        )
        .await
        .unwrap();
    assert!(
        b.metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > stale.parse().unwrap()
    );
    assert_eq!(
        api_status(cms.replace("a", &pp, &a).await.unwrap_err()),
        (409, "Conflict".into())
    );
    let stale_patch = Patch::Merge(json!({"metadata": {"resourceVersion": stale}, "data": {"x": "3"}}));
    assert_eq!(
        api_status(
            cms.patch("a", &PatchParams::default(), &stale_patch)
                .await
                .unwrap_err()
        ),
        (409, "Conflict".into())
    );
    let fresh = cms.replace("a", &pp, &b).await.unwrap();
    assert_eq!(fresh.data.unwrap()["x"], "2");

    // JSON Patch: a failed `test` op is 422 and changes nothing; a passing one applies.
    let claim = |expect: &str| {
        Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "test", "path": "/data/x", "value": expect},
                {"op": "replace", "path": "/data/x", "value": "claimed"},
            ]))
            .unwrap(),
        )
    };
    assert_eq!(
        api_status(
            cms.patch("a", &PatchParams::default(), &claim("1"))
                .await
                .unwrap_err()
        ),
        (422, "Invalid".into())
    );
    assert_eq!(cms.get("a").await.unwrap().data.unwrap()["x"], "2");
    let claimed = cms
        .patch("a", &PatchParams::default(), &claim("2"))
        .await
        .unwrap();
    assert_eq!(claimed.data.unwrap()["x"], "claimed");
    // A strategic merge patch is applied as a merge patch.
    let s = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"y": "s"}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data.unwrap()["y"], "s");

    // Equality selectors.
    let mut labelled = config_map("b", json!({}));
    labelled.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    cms.create(&pp, &labelled).await.unwrap();
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(cms.list(&ListParams::default().labels("app=web")).await.unwrap()),
        ["b"]
    );
    assert_eq!(
        names(cms.list(&ListParams::default().labels("app!=web")).await.unwrap()),
        ["a"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=a"))
                .await
                .unwrap()
        ),
        ["a"]
    );
    assert_eq!(names(cms.list(&ListParams::default()).await.unwrap()), ["a", "b"]);

    // A Secret's stringData is stored as data.
    let secrets: Api<Secret> = Api::default_namespaced(client);
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}})).unwrap();
    let s = secrets.create(&pp, &s).await.unwrap();
    assert_eq!(s.data.unwrap()["k"].0, b"v");

    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        api_status(cms.get("a").await.unwrap_err()),
        (404, "NotFound".into())
    );
    assert_eq!(
        api_status(cms.delete("a", &DeleteParams::default()).await.unwrap_err()),
        (404, "NotFound".into())
    );
}

async fn next<T>(stream: &mut (impl futures_util::Stream<Item = T> + Unpin)) -> T {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("a watch event in time")
        .expect("stream open")
}

#[tokio::test]
async fn fake_kube_watch_sees_changes_and_a_watcher_recovers_from_410() {
    let fake = FakeKube::start(&[]);
    let client = fake.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    let pp = PostParams::default();
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let mut events = cms.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    cms.create(&pp, &config_map("w", json!({}))).await.unwrap();
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    cms.delete("w", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        match next(&mut events).await.unwrap() {
            WatchEvent::Added(c) => seen.push(("ADDED", c.metadata.name.unwrap())),
            WatchEvent::Modified(c) => seen.push(("MODIFIED", c.metadata.name.unwrap())),
            WatchEvent::Deleted(c) => seen.push(("DELETED", c.metadata.name.unwrap())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("ADDED", "w".into()),
            ("MODIFIED", "w".into()),
            ("DELETED", "w".into())
        ]
    );

    // A resumed watch replays from its version.
    let mut replay = cms.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    assert!(matches!(next(&mut replay).await.unwrap(), WatchEvent::Added(_)));

    // kube-rs's watcher: after a compaction its watch ends with 410, and it re-lists.
    let mut w = watcher(cms.clone(), watcher::Config::default()).boxed();
    eventually_event(&mut w, |e| matches!(e, Ok(watcher::Event::InitDone))).await;
    // Seen as an Apply, "before" came through the watch, which is therefore open.
    cms.create(&pp, &config_map("before", json!({}))).await.unwrap();
    eventually_event(
        &mut w,
        |e| matches!(e, Ok(watcher::Event::Apply(c)) if c.metadata.name.as_deref() == Some("before")),
    )
    .await;
    let compact = reqwest::Client::new()
        .post(format!("{}/fake-kube/compact", fake.base))
        .send()
        .await
        .unwrap();
    assert_eq!(compact.status(), 204);
    eventually_event(
        &mut w,
        |e| matches!(e, Err(watcher::Error::WatchError(s)) if s.code == 410),
    )
    .await;
    eventually_event(&mut w, |e| matches!(e, Ok(watcher::Event::InitDone))).await;
    cms.create(&pp, &config_map("after", json!({}))).await.unwrap();
    eventually_event(
        &mut w,
        |e| matches!(e, Ok(watcher::Event::Apply(c)) if c.metadata.name.as_deref() == Some("after")),
    )
    .await;

    // An old version after the compaction: an ERROR event with 410, as the apiserver sends.
    let mut gone = cms.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match next(&mut gone).await {
        Ok(WatchEvent::Error(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

type WatcherItem = Result<watcher::Event<ConfigMap>, watcher::Error>;

async fn eventually_event(
    w: &mut (impl futures_util::Stream<Item = WatcherItem> + Unpin),
    want: impl Fn(&WatcherItem) -> bool,
) {
    loop {
        let e = next(w).await;
        if want(&e) {
            return;
        }
    }
}

const AGENT_IMAGE: &str = "execd-test/agent:fake-kube";
const USER_IMAGE: &str = "execd-test/busybox:latest";

/// The `FROM scratch` agent image (no shell) from the static build of scripts/build-agent.sh.
pub(crate) fn agent_image() -> &'static str {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    assert!(
        repo.join("target/x86_64-unknown-linux-musl/release/execd")
            .exists(),
        "run scripts/build-agent.sh first"
    );
    let out = Command::new("docker")
        .args([
            "build",
            "-q",
            "-f",
            "Dockerfile.agent",
            "--target",
            "agent",
            "-t",
            AGENT_IMAGE,
        ])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    AGENT_IMAGE
}

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

fn is_ready(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until `cond` holds for the pod, or the pod has ended (phase `Failed` or `Succeeded`,
/// which Kubernetes never leaves), which fails at once unless `cond` holds for it.
async fn wait_for(
    pods: &Api<Pod>,
    name: &str,
    cond: impl Fn(Option<&Pod>) -> bool + Send + Sync + 'static,
) -> Pod {
    let cond = std::sync::Arc::new(cond);
    let until = {
        let cond = cond.clone();
        move |p: Option<&Pod>| cond(p) || has_ended(p)
    };
    let found = match tokio::time::timeout(
        Duration::from_secs(90),
        await_condition(pods.clone(), name, until),
    )
    .await
    {
        Ok(found) => found.unwrap(),
        Err(_) => {
            let status = pods.get_opt(name).await.ok().flatten().and_then(|p| p.status);
            panic!("pod {name} did not reach the condition: {status:?}")
        }
    };
    let found = found.unwrap_or_else(|| panic!("pod {name} is gone"));
    assert!(
        cond(Some(&found)),
        "pod {name} ended without reaching the condition: {:?}",
        found.status
    );
    found
}

fn has_ended(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| matches!(phase, "Failed" | "Succeeded"))
}

#[tokio::test]
async fn fake_kube_runs_the_agent_injection_pod_with_seed_files_and_collects_its_secret() {
    if !docker_available() {
        return;
    }
    let agent = agent_image();
    let fake = FakeKube::start(&[]);
    let client = fake.client().await;
    let pp = PostParams::default();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "sbx-1"}, "stringData": {"EXECD_ACCESS_TOKEN": token}}),
    )
    .unwrap();
    secrets.create(&pp, &secret).await.unwrap();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let manifest = json!([
        {"key": "f0", "path": "/etc/seeded/hello.txt", "mode": 0o600},
        {"key": "f1", "path": "/opt/data/bin.dat", "mode": 0o644},
    ]);
    let files: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "sbx-1-files"},
        "data": {"manifest.json": manifest.to_string(), "f0": "seeded content"},
        "binaryData": {"f1": "AAEC/w=="},
    }))
    .unwrap();
    cms.create(&pp, &files).await.unwrap();

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let created = pods
        .create(
            &pp,
            &pod(json!({
                "metadata": {"name": "sbx-1", "labels": {"sandboxd.io/managed": "true"}},
                "spec": {
                    "restartPolicy": "Never",
                    "volumes": [
                        {"name": "opensandbox-bin", "emptyDir": {"sizeLimit": "64Mi"}},
                        {"name": "seed-files", "configMap": {"name": "sbx-1-files"}},
                    ],
                    "initContainers": [{
                        "name": "execd-installer", "image": agent,
                        "command": ["/execd", "install", "/opt/opensandbox"],
                        "volumeMounts": [{"name": "opensandbox-bin", "mountPath": "/opt/opensandbox"}],
                    }],
                    "containers": [{
                        "name": "sandbox", "image": USER_IMAGE,
                        "command": ["/opt/opensandbox/execd", "init", "--", "sleep", "infinity"],
                        "env": [
                            {"name": "OPENSANDBOX_ID", "value": "1"},
                            {"name": "EXECD_SEED_FILES", "value": "/opt/opensandbox/seed-files/manifest.json"},
                            {"name": "EXECD_ACCESS_TOKEN", "valueFrom": {"secretKeyRef": {"name": "sbx-1", "key": "EXECD_ACCESS_TOKEN"}}},
                        ],
                        "volumeMounts": [
                            {"name": "opensandbox-bin", "mountPath": "/opt/opensandbox"},
                            {"name": "seed-files", "mountPath": "/opt/opensandbox/seed-files", "readOnly": true},
                        ],
                        // execd's /ping wants the token as every route does (a kubelet, like this
                        // fake, counts the 401 as not ready), so the probe carries it.
                        "readinessProbe": {"httpGet": {"path": "/ping", "port": 44772,
                            "httpHeaders": [{"name": "X-EXECD-ACCESS-TOKEN", "value": token}]}, "periodSeconds": 1},
                        "resources": {"limits": {"memory": "256Mi", "cpu": "1"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["NET_RAW"]}},
                    }],
                },
            })),
        )
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    // As sandboxd does: the Secret and ConfigMap owned by the pod once it exists.
    let owned = Patch::Merge(
        json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "sbx-1", "uid": uid}]}}),
    );
    secrets
        .patch("sbx-1", &PatchParams::default(), &owned)
        .await
        .unwrap();
    cms.patch("sbx-1-files", &PatchParams::default(), &owned)
        .await
        .unwrap();

    let ready = wait_for(&pods, "sbx-1", is_ready).await;
    let status = ready.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let init = &status.init_container_statuses.unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );
    // The kubelet's events, by the field selector `kubectl describe pod` uses.
    let events: Api<Event> = Api::default_namespaced(client.clone());
    let of_pod = ListParams::default().fields("involvedObject.name=sbx-1,involvedObject.kind=Pod");
    let seen: Vec<(String, String)> = events
        .list(&of_pod)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            let path = e.involved_object.field_path.unwrap_or_default();
            (path, e.reason.unwrap_or_default())
        })
        .collect();
    for (path, reason) in [
        ("", "Scheduled"),
        ("spec.initContainers{execd-installer}", "Pulled"),
        ("spec.initContainers{execd-installer}", "Created"),
        ("spec.initContainers{execd-installer}", "Started"),
        ("spec.containers{sandbox}", "Pulled"),
        ("spec.containers{sandbox}", "Created"),
        ("spec.containers{sandbox}", "Started"),
    ] {
        assert!(
            seen.contains(&(path.to_owned(), reason.to_owned())),
            "no {reason} of {path:?}: {seen:?}"
        );
    }
    let other = ListParams::default().fields("involvedObject.name=sbx-1,involvedObject.kind=Secret");
    assert!(events.list(&other).await.unwrap().items.is_empty());

    let ip = status.pod_ip.expect("a pod IP");
    let base = format!("http://{ip}:44772");
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/ping")).send().await.unwrap().status(),
        401,
        "the token is required"
    );
    let with_token = |r: reqwest::RequestBuilder| r.header("X-EXECD-ACCESS-TOKEN", &token);
    assert_eq!(
        with_token(http.get(format!("{base}/ping")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let body = with_token(http.post(format!("{base}/command")))
        .json(&json!({"command": "cat /etc/seeded/hello.txt; echo; stat -c %a /etc/seeded/hello.txt; od -An -tx1 /opt/data/bin.dat; echo $OPENSANDBOX_ID"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = parse_sse(&body);
    let out: Vec<String> = texts(&events, "stdout")
        .iter()
        .map(|t| t.trim().to_owned())
        .collect();
    assert_eq!(out, ["seeded content", "600", "00 01 02 ff", "1"], "{body}");

    // pods/log: execd's own start-up line is in the container's log.
    let log = pods
        .logs(
            "sbx-1",
            &LogParams {
                container: Some("sandbox".into()),
                tail_lines: Some(100),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert!(log.contains("listening on"), "{log}");

    // Delete: the containers and volumes go, then the pod, then (GC) its Secret and ConfigMap.
    pods.delete("sbx-1", &DeleteParams::default()).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(pods.clone(), "sbx-1", kube::runtime::conditions::is_deleted(&uid)),
    )
    .await
    .expect("the pod is deleted in time")
    .unwrap();
    assert_eq!(api_status(secrets.get("sbx-1").await.unwrap_err()).0, 404);
    assert_eq!(api_status(cms.get("sbx-1-files").await.unwrap_err()).0, 404);
    assert_eq!(fake.docker_objects(&format!("label=fake-kube.pod-uid={uid}")), "");
}

#[tokio::test]
async fn fake_kube_reports_err_image_pull_and_init_errors_and_cleans_up_at_exit() {
    if !docker_available() {
        return;
    }
    let mut fake = FakeKube::start(&[]);
    let client = fake.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let pp = PostParams::default();
    let missing = pod(
        json!({"metadata": {"name": "missing"}, "spec": {"containers": [{"name": "c", "image": "execd-test/not-there:nope"}]}}),
    );
    pods.create(&pp, &missing).await.unwrap();
    let waiting = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .is_some_and(|r| r == "ErrImagePull")
    };
    let p = wait_for(&pods, "missing", waiting).await;
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));

    let failing = pod(json!({"metadata": {"name": "init-fails"}, "spec": {
        "initContainers": [{"name": "i", "image": USER_IMAGE, "command": ["sh", "-c", "exit 3"]}],
        "containers": [{"name": "c", "image": USER_IMAGE, "command": ["sleep", "infinity"]}],
    }}));
    pods.create(&pp, &failing).await.unwrap();
    let p = wait_for(&pods, "init-fails", |p| {
        p.and_then(|p| p.status.as_ref()?.phase.clone())
            .is_some_and(|ph| ph == "Failed")
    })
    .await;
    let init = &p.status.unwrap().init_container_statuses.unwrap()[0];
    let terminated = init.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (3, Some("Error"))
    );

    // A running pod with an emptyDir: its container and volume exist until the fake exits.
    let running = pod(json!({"metadata": {"name": "runs"}, "spec": {
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "containers": [{"name": "c", "image": USER_IMAGE, "command": ["sleep", "infinity"],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
    }}));
    pods.create(&pp, &running).await.unwrap();
    wait_for(&pods, "runs", is_ready).await;
    let label = format!("label=fake-kube={}", fake.label);
    assert_ne!(fake.docker_objects(&label), "");
    assert!(fake.stop().await.success());
    assert_eq!(
        fake.docker_objects(&label),
        "",
        "everything the fake created is gone"
    );
}

/// `pods/portforward` over WebSocket as kube-rs speaks it (`v4.channel.k8s.io`, a data and an
/// error channel per port, each opened by the port): one forward of two ports of a pod whose
/// reported IP is unroutable (`--unroutable-pod-ips`), the first to busybox's `httpd` (an
/// HTTP exchange through it), the second to nothing (the kubelet's error on its error
/// channel); a pod that does not exist is the apiserver's 404.
#[cfg(feature = "k8s-portforward")]
#[tokio::test]
async fn fake_kube_port_forwards_over_websocket_to_pods_with_unroutable_ips() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if !docker_available() {
        return;
    }
    let fake = FakeKube::start(&["--unroutable-pod-ips"]);
    let pods: Api<Pod> = Api::default_namespaced(fake.client().await);
    let web = pod(json!({"metadata": {"name": "web"}, "spec": {"containers": [{
        "name": "c", "image": USER_IMAGE,
        "command": ["sh", "-c", "mkdir -p /www && echo hello-pf > /www/index.html && exec httpd -f -p 8000 -h /www"],
    }]}}));
    pods.create(&PostParams::default(), &web).await.unwrap();
    let p = wait_for(&pods, "web", is_ready).await;
    let ip = p.status.unwrap().pod_ip.unwrap();
    assert!(ip.starts_with("192.0.2."), "{ip}");

    // httpd may not listen yet when the pod is Ready (it has no probe): ask until it answers.
    let page = eventually(30, "httpd through the port-forward", async || {
        let mut forward = pods.portforward("web", &[8000, 8001]).await.unwrap();
        let mut stream = forward.take_stream(8000).unwrap();
        let error = forward.take_error(8001).unwrap();
        stream
            .write_all(b"GET /index.html HTTP/1.0\r\nHost: web\r\n\r\n")
            .await
            .unwrap();
        let mut page = String::new();
        stream.read_to_string(&mut page).await.unwrap();
        // Port 8001: nothing listens, and the error says so.
        let message = tokio::time::timeout(Duration::from_secs(30), error)
            .await
            .expect("no error for port 8001")
            .expect("the error channel closed without a message");
        assert!(
            message.contains("error forwarding port 8001 to pod web"),
            "{message}"
        );
        drop((stream, forward));
        page.contains("200 OK").then_some(page)
    })
    .await;
    assert!(page.ends_with("hello-pf\n"), "{page}");

    match pods.portforward("nope", &[80]).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404, "{s:?}"),
        Err(other) => panic!("a missing pod: {other:?}"),
        Ok(_) => panic!("a missing pod was port-forwarded"),
    }
}
