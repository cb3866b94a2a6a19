//! Startup gates on the real Docker engine: `lifecycle.preStart` through sandboxd's API, and
//! (until templates reach the API) readiness probes and files through the lifecycle service
//! in-process, over the same Docker runtime sandboxd uses.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use execd::orchestrator::auth::{jwt::Keys, Authority, Principal};
use execd::orchestrator::runtime::docker::{Docker, Settings as DockerSettings};
use execd::orchestrator::runtime::SpecFile;
use execd::orchestrator::service::{Service, Settings};
use execd::orchestrator::spec::{self, Limits, Plan};
use execd::orchestrator::store::Store;
use execd::wire::lifecycle::{CreateSandboxRequest, SandboxStatus};
use execd::wire::templates::{HttpGetProbe, ReadinessProbe};

use crate::docker::docker_available;
use crate::sandboxd::{
    agent_binary, containers_of, docker, image, sandbox_body, setup, Execd, Sandboxd, RUN_LABEL,
};
use crate::util::{eventually, marker};

/// The sandbox's `(state, reason, message)` as `GET` shows it.
async fn status_of(d: &Sandboxd, id: &str) -> (String, String, String) {
    let (status, sb) = d.info(id).await;
    assert_eq!(status, 200, "{sb}");
    let text = |k: &str| sb["status"][k].as_str().unwrap_or_default().to_owned();
    (text("state"), text("reason"), text("message"))
}

#[tokio::test]
async fn a_pre_start_hook_keeps_the_sandbox_pending_until_it_has_run() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    // The hook waits for a file the test creates through execd, which serves meanwhile: so the
    // sandbox is certainly seen Pending, with no sleep in the test.
    let mut body = sandbox_body(
        image,
        &["sh", "-c", "cat /tmp/prepared > /tmp/seen; exec sleep 300"],
    );
    body["lifecycle"] = json!({"preStart": {
        "command": ["sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo prepared > /tmp/prepared"],
        "timeoutSeconds": 120,
    }});
    let created = d.create(body).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"]["state"], "Pending", "{created}");
    assert_eq!(created["status"]["reason"], "PRE_START_RUNNING", "{created}");
    assert_eq!(status_of(&d, &id).await.1, "PRE_START_RUNNING");

    let execd = d.endpoint(&id, 44772, false).await;
    let ping = execd.req(Method::GET, "/ping").send().await.unwrap();
    assert_eq!(ping.status(), 503);
    let ping: Value = ping.json().await.unwrap();
    assert_eq!(ping["code"], "STARTING");
    // What execd was given, passed on as upstream passes it.
    let (lifecycle, _) = execd.run("echo \"$OPENSANDBOX_LIFECYCLE\"").await;
    let lifecycle: Value = serde_json::from_str(&lifecycle).unwrap_or_else(|e| panic!("{e}: {lifecycle:?}"));
    assert_eq!(lifecycle["preStart"]["timeoutSeconds"], 120);
    assert_eq!(execd.run("touch /tmp/go").await.1, 0);

    eventually(30, "the sandbox to be Running", async || {
        (status_of(&d, &id).await.0 == "Running").then_some(())
    })
    .await;
    let seen = eventually(10, "the entrypoint to start", async || {
        let (out, code) = execd.run("cat /tmp/seen").await;
        (code == 0).then_some(out)
    })
    .await;
    assert_eq!(seen, "prepared\n", "the entrypoint ran after the hook");
}

#[tokio::test]
async fn a_failing_pre_start_hook_shows_failed_with_its_output_and_keeps_the_container() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let mut body = sandbox_body(image, &["sleep", "300"]);
    body["lifecycle"] = json!({"preStart": {
        "command": ["sh", "-c", "echo fetching weights; echo 'weights: 403 forbidden' >&2; exit 3"],
    }});
    let created = d.create(body).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let message = eventually(30, "the sandbox to be Failed", async || {
        let (state, reason, message) = status_of(&d, &id).await;
        (state == "Failed").then(|| {
            assert_eq!(reason, "PRE_START_FAILED", "{message}");
            message
        })
    })
    .await;
    assert!(message.starts_with("preStart failed (exit 3): "), "{message}");
    assert!(message.contains("fetching weights"), "{message}");
    assert!(message.contains("weights: 403 forbidden"), "{message}");
    assert_eq!(
        containers_of(&d.run).len(),
        1,
        "the container is kept for inspection"
    );
    let (status, _) = d.json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(containers_of(&d.run).is_empty());
}

#[tokio::test]
async fn bad_lifecycle_input_is_refused_before_anything_is_made() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let cases = [
        json!({"lifecycle": {"periodic": [{"name": "n", "schedule": "@hourly", "command": ["true"]}]}}),
        json!({"lifecycle": {"preStart": {"command": []}}}),
        json!({"lifecycle": {"preStart": {"command": ["true"], "timeoutSeconds": 10801}}}),
        json!({"lifecycle": {"postStart": {}}}),
        json!({"env": {"OPENSANDBOX_LIFECYCLE": "{}"}}),
    ];
    for extra in cases {
        let mut body = sandbox_body(image, &["sleep", "300"]);
        body["metadata"] = json!({ RUN_LABEL: d.run });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, err) = d.json(Method::POST, "/v1/sandboxes", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {err}");
    }
    assert!(containers_of(&d.run).is_empty());
}

/// The lifecycle service in-process over the Docker runtime, for what only templates set
/// through the API (readiness probes, files). Removes its containers when dropped.
struct InProcess {
    service: Arc<Service>,
    run: String,
    _data: tempfile::TempDir,
}

impl InProcess {
    async fn start() -> Option<(&'static str, Self)> {
        if !docker_available() {
            return None;
        }
        let image = image("busybox");
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let runtime = Docker::connect(DockerSettings {
            agent: agent_binary(),
            instance: store.instance.clone(),
            publish_ip: [127, 0, 0, 1].into(),
            public_host: "127.0.0.1".into(),
            network: "bridge".into(),
            isolation_profile: None,
        })
        .await
        .unwrap();
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef", &[]).unwrap();
        let settings = Settings {
            limits: Limits {
                max_timeout: 3600,
                allowed_host_paths: Vec::new(),
            },
            ready_timeout: std::time::Duration::from_secs(30),
            pids_limit: 4096,
            max_sandboxes_per_user: 10,
            builds: Default::default(),
            pools: Default::default(),
            executions: Default::default(),
        };
        let service = Service::new(
            store,
            Arc::new(runtime),
            Arc::new(Authority::new(None, keys, Vec::new())),
            settings,
        );
        let me = Self {
            service: Arc::new(service),
            run: marker(),
            _data: data,
        };
        Some((image, me))
    }

    /// The plan of a create request, tagged with this run.
    fn plan(&self, mut body: Value) -> Plan {
        body["metadata"] = json!({ RUN_LABEL: self.run });
        let req: CreateSandboxRequest = serde_json::from_value(body).unwrap();
        let limits = Limits {
            max_timeout: 3600,
            allowed_host_paths: Vec::new(),
        };
        spec::plan(req, &limits).unwrap()
    }

    async fn create(&self, plan: Plan) -> (String, SandboxStatus) {
        let created = self
            .service
            .create_from_plan(plan, None, &Principal::root(), None)
            .await
            .unwrap();
        (created.id, created.status)
    }

    async fn status(&self, id: &str) -> SandboxStatus {
        self.service.get(id, &Principal::root()).await.unwrap().status
    }

    async fn until(&self, id: &str, state: &str) -> SandboxStatus {
        eventually(60, &format!("the sandbox to be {state}"), async || {
            let s = self.status(id).await;
            (s.state == state).then_some(s)
        })
        .await
    }

    async fn execd(&self, id: &str) -> Execd {
        let ep = self
            .service
            .endpoint(id, "44772", false, None, &Principal::root())
            .await
            .unwrap();
        Execd {
            base: format!("http://{}", ep.endpoint),
            token: ep.headers.into_values().next().unwrap_or_default(),
            client: reqwest::Client::new(),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        for c in containers_of(&self.run) {
            docker(&["rm", "-f", &c]);
        }
    }
}

fn http_probe(port: u16, threshold: u64) -> ReadinessProbe {
    ReadinessProbe {
        http_get: Some(HttpGetProbe {
            port,
            path: Some("/health".into()),
        }),
        period_seconds: Some(1),
        failure_threshold: Some(threshold),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_http_readiness_probe_that_passes_late_makes_the_sandbox_running() {
    let Some((image, rig)) = InProcess::start().await else {
        return;
    };
    // The application starts serving only when told to (through execd).
    let serve = "while [ ! -e /tmp/serve ]; do sleep 0.05; done; \
                 mkdir -p /www; echo ok > /www/health; exec httpd -f -p 3000 -h /www";
    let plan = Plan {
        readiness: Some(http_probe(3000, 120)),
        ..rig.plan(sandbox_body(image, &["sh", "-c", serve]))
    };
    let (id, status) = rig.create(plan).await;
    assert_eq!(
        (status.state.as_str(), status.reason.as_deref()),
        ("Pending", Some("READINESS_PROBE"))
    );
    assert_eq!(rig.status(&id).await.reason.as_deref(), Some("READINESS_PROBE"));
    let execd = rig.execd(&id).await;
    assert_eq!(execd.run("touch /tmp/serve").await.1, 0);
    let running = rig.until(&id, "Running").await;
    assert_eq!(running.reason.as_deref(), Some("CONTAINER_RUNNING"));
}

#[tokio::test]
async fn an_http_readiness_probe_that_never_passes_fails_the_sandbox() {
    let Some((image, rig)) = InProcess::start().await else {
        return;
    };
    let plan = Plan {
        readiness: Some(http_probe(3001, 2)),
        ..rig.plan(sandbox_body(image, &["sleep", "300"]))
    };
    let (id, _) = rig.create(plan).await;
    let failed = rig.until(&id, "Failed").await;
    assert_eq!(failed.reason.as_deref(), Some("READINESS_PROBE_FAILED"));
    let message = failed.message.unwrap_or_default();
    assert!(
        message
            .starts_with("readiness probe httpGet :3001/health failed 2 times in a row; last: answered 502"),
        "{message}"
    );
    assert!(message.contains("cannot connect to port 3001"), "{message}");
    assert_eq!(containers_of(&rig.run).len(), 1, "the container is kept");
}

#[tokio::test]
async fn files_are_in_place_with_their_modes_before_the_sandbox_starts() {
    let Some((image, rig)) = InProcess::start().await else {
        return;
    };
    let mut body = sandbox_body(image, &["sleep", "300"]);
    // The hook runs one of the files: they are there before anything in the sandbox starts.
    body["lifecycle"] = json!({"preStart": {"command": ["/opt/tools/bin/setup.sh"]}});
    let plan = Plan {
        files: vec![
            SpecFile {
                path: "/etc/app/config.toml".into(),
                content: b"answer = 42\n".to_vec(),
                mode: 0o600,
            },
            SpecFile {
                path: "/opt/tools/bin/setup.sh".into(),
                content: b"#!/bin/sh\ncp /etc/app/config.toml /tmp/copied\n".to_vec(),
                mode: 0o755,
            },
            SpecFile {
                path: "/tmp/seed/data.txt".into(),
                content: b"seed".to_vec(),
                mode: 0o644,
            },
        ],
        ..rig.plan(body)
    };
    let (id, _) = rig.create(plan).await;
    rig.until(&id, "Running").await;
    let execd = rig.execd(&id).await;
    let (out, code) = execd
        .run("stat -c '%a %u %n' /etc/app/config.toml /opt/tools/bin/setup.sh /opt/tools /tmp/seed/data.txt /tmp; cat /tmp/copied")
        .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "600 0 /etc/app/config.toml\n\
         755 0 /opt/tools/bin/setup.sh\n\
         755 0 /opt/tools\n\
         644 0 /tmp/seed/data.txt\n\
         1777 0 /tmp\n\
         answer = 42\n",
        "files with their modes, parents created, existing directories untouched"
    );
}
