//! The "docklet" of OUR MODEL OF KUBERNETES (test-only): each Pod is materialized on the local
//! Docker engine through the `docker` CLI, standing in for a kubelet. A Docker volume per
//! emptyDir (labelled with the pod's uid), configMap and secret volumes as files under the
//! state directory bound read-only, hostPath binds, a PVC as a Docker volume; init containers
//! in order, each to completion (non-zero: the pod fails); then the main containers, the first
//! on the default bridge and the others in its network namespace. The docklet owns the pod's
//! `status`: phase, podIP (the first container's bridge IP), conditions, container states,
//! readiness from the readinessProbe, `ErrImagePull` for an image that is not present locally
//! (it never pulls); with `--unroutable-pod-ips`, a podIP from 192.0.2.0/24 instead of the
//! real one (`pods/portforward` still reaches the pod). Everything it creates carries the `--docker-label` and the pod's uid, so
//! a delete or the fake's exit removes it all. Async: a task per pod, aborted on delete.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::response::Response;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::containers::Blocked;
use crate::store::{kind_of, now, ApiErr, Kind, Store};

/// The label key every Docker object of this fake carries, with `--docker-label` as value.
pub const LABEL: &str = "fake-kube";
const POD_UID_LABEL: &str = "fake-kube.pod-uid";

pub struct Docklet {
    pub(crate) store: Arc<Store>,
    pub(crate) label: String,
    pub(crate) state_dir: PathBuf,
    /// The task running each pod, by uid; aborted when the pod is deleted (its `docker`
    /// children are killed on drop).
    tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    http: reqwest::Client,
    /// How long each pod (`namespace/name`) took here, served by `GET /fake-kube/timings`
    /// so that a benchmark can tell the docklet's own time from its client's.
    timings: Mutex<HashMap<String, Timing>>,
    /// The event already recorded for each (pod uid, field path, reason, message), so that a
    /// repeat bumps its `count` as the kubelet's event correlator does. Dropped with the pod.
    recorded: Mutex<HashMap<EventKey, String>>,
    /// `--unroutable-pod-ips`: the podIP reported is from 192.0.2.0/24, not the real one.
    unroutable: bool,
    /// The last unroutable address handed out (its last octet).
    next_unroutable: std::sync::atomic::AtomicU8,
}

/// The docklet's own time for one pod, in ms from the start of its materialization (the
/// pod's create answered, its task started): `running` once every container was started
/// through the `docker` CLI and the pod IP read (the Docker work), `ready` once every
/// readinessProbe passed (the Docker work plus the probe loop's cadence).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timing {
    running: Option<f64>,
    ready: Option<f64>,
}

/// What makes two events the same one, repeated.
type EventKey = (String, String, String, String);

/// The node every pod is "scheduled" to (the fake has no nodes).
const NODE: &str = "fake-kube";

/// Runs `docker ARGS`; its trimmed stdout, or its stderr as the error.
pub(crate) async fn docker<I, S>(args: I) -> Result<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

pub(crate) fn kind(plural: &str) -> Kind {
    kind_of("v1", plural).expect("a core kind the fake serves")
}

/// Docker's name alphabet: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub(crate) fn docker_name(parts: &[&str]) -> String {
    parts
        .join(".")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The kubelet's default `imagePullPolicy`: `Always` for `:latest` or no tag (and no
/// digest), else `IfNotPresent`.
fn default_pull_policy(image: &str) -> &'static str {
    let name = image.rsplit('/').next().unwrap_or(image);
    let tag = name.split_once(':').map(|(_, t)| t);
    if image.contains('@') || tag.is_some_and(|t| t != "latest") {
        "IfNotPresent"
    } else {
        "Always"
    }
}

/// The pod's `status`, as the docklet keeps it.
struct Run {
    ns: String,
    name: String,
    uid: String,
    phase: &'static str,
    reason: Option<String>,
    init: Vec<Value>,
    main: Vec<Value>,
    ready: Vec<bool>,
    pod_ip: Option<String>,
    start_time: String,
    /// (type, status, lastTransitionTime), changed only on a transition.
    conditions: Vec<(&'static str, bool, String)>,
}

fn state_waiting(reason: &str, message: &str) -> Value {
    json!({"waiting": {"reason": reason, "message": message}})
}

fn container_status(c: &Container, state: Value, id: Option<&str>) -> Value {
    json!({
        "name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0,
        "started": state.get("running").is_some(),
        "containerID": id.map(|id| format!("docker://{id}")), "state": state,
    })
}

impl Run {
    fn condition(&mut self, kind: &'static str, value: bool) {
        match self.conditions.iter_mut().find(|c| c.0 == kind) {
            Some(c) if c.1 == value => {}
            Some(c) => *c = (kind, value, now()),
            None => self.conditions.push((kind, value, now())),
        }
    }

    fn status(&mut self) -> Value {
        let ready = !self.ready.is_empty() && self.ready.iter().all(|r| *r) && self.phase == "Running";
        self.condition("ContainersReady", ready);
        self.condition("Ready", ready);
        for (s, r) in self.main.iter_mut().zip(&self.ready) {
            s["ready"] = (*r).into();
        }
        let conditions: Vec<Value> = self
            .conditions
            .iter()
            .map(|(t, s, at)| json!({"type": t, "status": if *s { "True" } else { "False" }, "lastTransitionTime": at}))
            .collect();
        let mut status = json!({
            "phase": self.phase, "conditions": conditions, "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}], "startTime": self.start_time, "qosClass": "BestEffort",
            "initContainerStatuses": self.init, "containerStatuses": self.main,
        });
        if let Some(ip) = &self.pod_ip {
            status["podIP"] = ip.clone().into();
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if let Some(reason) = &self.reason {
            status["reason"] = reason.clone().into();
        }
        status
    }
}

/// A container's readiness probe and when it runs next.
struct ProbeState {
    probe: Probe,
    due: Instant,
    failures: i32,
}

impl Docklet {
    pub fn new(store: Arc<Store>, label: String, state_dir: PathBuf, unroutable: bool) -> Arc<Self> {
        Arc::new(Self {
            store,
            label,
            state_dir,
            tasks: Mutex::default(),
            http: reqwest::Client::new(),
            timings: Mutex::default(),
            recorded: Mutex::default(),
            unroutable,
            next_unroutable: std::sync::atomic::AtomicU8::new(0),
        })
    }

    /// Every pod's [`Timing`], by `namespace/name` (the latest pod of that name).
    pub fn timings(&self) -> HashMap<String, Timing> {
        self.timings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn timed(&self, ns: &str, name: &str, begun: Instant, ready: bool) {
        let ms = begun.elapsed().as_secs_f64() * 1000.0;
        let mut timings = self.timings.lock().unwrap_or_else(|p| p.into_inner());
        let t = timings.entry(format!("{ns}/{name}")).or_default();
        if ready {
            t.ready.get_or_insert(ms);
        } else {
            t.running = Some(ms);
            t.ready = None;
        }
    }

    /// The podIP to report for a pod whose container has `real`: `real`, or with
    /// `--unroutable-pod-ips` one of 192.0.2.1–254 in turn.
    fn reported_ip(&self, real: &str) -> Option<String> {
        if real.is_empty() {
            return None;
        }
        if !self.unroutable {
            return Some(real.to_owned());
        }
        let n = self
            .next_unroutable
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(format!("192.0.2.{}", n % 254 + 1))
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::task::JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn container_name(&self, pod: &str, uid: &str, container: &str) -> String {
        docker_name(&[&self.label, pod, container, &uid[..uid.len().min(8)]])
    }

    pub(crate) fn labels(&self, uid: &str) -> Vec<String> {
        vec![
            "--label".into(),
            format!("{LABEL}={}", self.label),
            "--label".into(),
            format!("{POD_UID_LABEL}={uid}"),
        ]
    }

    pub(crate) fn claim_volume(&self, ns: &str, claim: &str) -> String {
        docker_name(&[&self.label, "pvc", ns, claim])
    }

    /// Starts materializing a newly created pod.
    pub fn start(self: &Arc<Self>, pod: Value) {
        let uid = pod
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let me = Arc::clone(self);
        let task = tokio::spawn(async move { me.run(pod).await });
        self.tasks().insert(uid, task);
    }

    /// Tears down a pod marked for deletion, then removes it from the store (and so its
    /// dependents).
    pub fn stop(self: &Arc<Self>, pod: Value, grace: i64) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let meta = |f: &str| {
                pod.pointer(&format!("/metadata/{f}"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let (ns, name, uid) = (meta("namespace"), meta("name"), meta("uid"));
            if let Some(task) = me.tasks().remove(&uid) {
                task.abort();
            }
            let running: Vec<String> = pod
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|s| s.pointer("/state/running").is_some())
                .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect();
            for c in running {
                me.container_event(
                    &ns,
                    &name,
                    &uid,
                    &format!("spec.containers{{{c}}}"),
                    ("Normal", "Killing"),
                    &format!("Stopping container {c}"),
                );
            }
            let filter = format!("label={POD_UID_LABEL}={uid}");
            me.remove_docker_objects(&filter, grace.clamp(0, 5)).await;
            let _ = tokio::fs::remove_dir_all(me.state_dir.join(&uid)).await;
            let _ = me.store.remove(kind("pods"), &ns, &name, Some(&uid));
            me.recorded().retain(|k, _| k.0 != uid);
        });
    }

    /// Removes the Docker volume of a deleted claim. A claim deleted while a pod being torn
    /// down still mounts it keeps its volume until that pod's container is gone (as the
    /// apiserver's `kubernetes.io/pvc-protection` finalizer does): the removal is retried for
    /// up to a minute.
    pub fn claim_deleted(self: &Arc<Self>, pvc: &Value) {
        let meta = |f: &str| {
            pvc.pointer(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let volume = self.claim_volume(&meta("namespace"), &meta("name"));
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            let mut pause = std::time::Duration::from_millis(100);
            loop {
                match docker(["volume", "rm", "-f", &volume]).await {
                    Ok(_) => return,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        tracing::warn!(%volume, error = %e, "cannot remove a claim's volume (still in use?)");
                        return;
                    }
                    Err(_) => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_secs(2));
                    }
                }
            }
        });
    }

    async fn remove_docker_objects(&self, filter: &str, grace: i64) {
        let ids = docker(["ps", "-aq", "--filter", filter])
            .await
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let grace = grace.to_string();
            let _ = docker(["stop", "-t", grace.as_str()].iter().chain(&ids)).await;
            let _ = docker(["rm", "-f", "-v"].iter().chain(&ids)).await;
        }
        let vols = docker(["volume", "ls", "-q", "--filter", filter])
            .await
            .unwrap_or_default();
        let vols: Vec<&str> = vols.split_whitespace().collect();
        if !vols.is_empty() {
            let _ = docker(["volume", "rm", "-f"].iter().chain(&vols)).await;
        }
    }

    /// Removes everything this fake created (at exit).
    pub async fn shutdown(&self) {
        for (_, task) in self.tasks().drain() {
            task.abort();
        }
        self.remove_docker_objects(&format!("label={LABEL}={}", self.label), 2)
            .await;
        let _ = tokio::fs::remove_dir_all(&self.state_dir).await;
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, HashMap<EventKey, String>> {
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An event of the pod as a whole, reported by the kubelet (or the scheduler).
    fn event(&self, ns: &str, pod: &str, uid: &str, type_: &str, reason: &str, message: &str) {
        self.container_event(ns, pod, uid, "", (type_, reason), message);
    }

    /// A core/v1 `Event` as the kubelet records one: `involvedObject` the pod (with the
    /// container's `fieldPath`, as `spec.containers{sandbox}`), `source` and
    /// `reportingComponent` the kubelet (the scheduler for `Scheduled`); the same event again
    /// bumps `count` and `lastTimestamp` instead of adding one.
    fn container_event(
        &self,
        ns: &str,
        pod: &str,
        uid: &str,
        field_path: &str,
        (type_, reason): (&str, &str),
        message: &str,
    ) {
        let at = now();
        let key = (
            uid.to_owned(),
            field_path.to_owned(),
            reason.to_owned(),
            message.to_owned(),
        );
        let events = kind("events");
        let seen = self.recorded().get(&key).cloned();
        if let Some(name) = seen {
            let bumped = self.store.update(events, ns, &name, false, |mut e| {
                let count = e.get("count").and_then(Value::as_i64).unwrap_or(1);
                e["count"] = (count + 1).into();
                e["lastTimestamp"] = at.clone().into();
                Ok(e)
            });
            if bumped.is_ok() {
                return;
            }
        }
        let component = if reason == "Scheduled" {
            "default-scheduler"
        } else {
            "kubelet"
        };
        let mut involved =
            json!({"kind": "Pod", "apiVersion": "v1", "namespace": ns, "name": pod, "uid": uid});
        if !field_path.is_empty() {
            involved["fieldPath"] = field_path.into();
        }
        let created = self.store.create(
            events,
            ns,
            json!({
                "metadata": {"generateName": format!("{pod}.")},
                "involvedObject": involved,
                "reason": reason, "message": message, "type": type_, "count": 1,
                "source": {"component": component, "host": NODE},
                "reportingComponent": component, "reportingInstance": NODE,
                "firstTimestamp": at, "lastTimestamp": at,
            }),
        );
        if let Some(name) = created
            .ok()
            .as_ref()
            .and_then(|e| e.pointer("/metadata/name"))
            .and_then(Value::as_str)
        {
            self.recorded().insert(key, name.to_owned());
        }
    }

    /// The kubelet's image step for one container, with its events: an image present
    /// locally is `Pulled` ("already present on machine" under `IfNotPresent`; under
    /// `Always`, the default for `:latest` or no tag, `Pulling` then `Pulled`, though the
    /// fake never contacts a registry); a missing one is `Pulling`, then `Failed` twice, as
    /// the kubelet reports `ErrImagePull`. Err: the waiting message.
    async fn pull(&self, run: &Run, c: &Container, field_path: &str) -> Result<(), String> {
        let image = c.image.clone().unwrap_or_default();
        let event = |type_: &str, reason: &str, message: &str| {
            self.container_event(&run.ns, &run.name, &run.uid, field_path, (type_, reason), message);
        };
        let present = docker(["image", "inspect", "-f", "{{.Size}}", image.as_str()]).await;
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| default_pull_policy(&image).into());
        match present {
            Ok(_) if policy != "Always" => {
                event(
                    "Normal",
                    "Pulled",
                    &format!("Container image \"{image}\" already present on machine"),
                );
                Ok(())
            }
            Ok(size) => {
                event("Normal", "Pulling", &format!("Pulling image \"{image}\""));
                event(
                    "Normal",
                    "Pulled",
                    &format!("Successfully pulled image \"{image}\" in 0s (0s including waiting). Image size: {size} bytes."),
                );
                Ok(())
            }
            Err(_) => {
                let why = format!("image {image:?} is not present locally (the fake apiserver never pulls)");
                if policy != "Never" {
                    event("Normal", "Pulling", &format!("Pulling image \"{image}\""));
                }
                event(
                    "Warning",
                    "Failed",
                    &format!("Failed to pull image \"{image}\": {why}"),
                );
                event("Warning", "Failed", "Error: ErrImagePull");
                Err(why)
            }
        }
    }

    fn publish(&self, run: &mut Run) {
        let status = run.status();
        self.store.set_pod_status(&run.ns, &run.name, &run.uid, status);
    }

    /// The pod's life, from volumes to the last container's exit.
    async fn run(self: Arc<Self>, pod: Value) {
        let begun = Instant::now();
        let meta = |f: &str| {
            pod.pointer(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (ns, name, uid) = (meta("namespace"), meta("name"), meta("uid"));
        let spec = match serde_json::from_value::<Pod>(pod.clone()) {
            Ok(p) => p.spec.unwrap_or_default(),
            Err(e) => {
                self.event(
                    &ns,
                    &name,
                    &uid,
                    "Warning",
                    "FailedCreate",
                    &format!("the pod does not decode: {e}"),
                );
                return;
            }
        };
        if spec.containers.is_empty() {
            self.event(
                &ns,
                &name,
                &uid,
                "Warning",
                "FailedCreate",
                "the pod has no containers",
            );
            return;
        }
        let init_cs = spec.init_containers.clone().unwrap_or_default();
        let main_cs = spec.containers.clone();
        let mut run = Run {
            ns: ns.clone(),
            name: name.clone(),
            uid: uid.clone(),
            phase: "Pending",
            reason: None,
            init: init_cs
                .iter()
                .map(|c| container_status(c, state_waiting("PodInitializing", ""), None))
                .collect(),
            main: main_cs
                .iter()
                .map(|c| container_status(c, state_waiting("ContainerCreating", ""), None))
                .collect(),
            ready: vec![false; main_cs.len()],
            pod_ip: None,
            start_time: now(),
            conditions: vec![("PodScheduled", true, now())],
        };
        run.condition("Initialized", init_cs.is_empty());
        self.publish(&mut run);
        self.event(
            &ns,
            &name,
            &uid,
            "Normal",
            "Scheduled",
            &format!("Successfully assigned {ns}/{name} to fake-kube"),
        );

        // Volumes: a missing ConfigMap, Secret or claim is waited for, as the kubelet does.
        let mut warned = false;
        let volumes = loop {
            match self.volumes(&ns, &uid, &spec).await {
                Ok(v) => break v,
                Err(Blocked::Retry(msg)) => {
                    if !warned {
                        self.event(&ns, &name, &uid, "Warning", "FailedMount", &msg);
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(Blocked::Fatal(msg)) => {
                    self.event(&ns, &name, &uid, "Warning", "FailedMount", &msg);
                    run.phase = "Failed";
                    run.reason = Some("UnsupportedVolume".into());
                    self.publish(&mut run);
                    return;
                }
            }
        };

        // Init containers, in order, each to completion.
        for (i, c) in init_cs.iter().enumerate() {
            let field_path = format!("spec.initContainers{{{}}}", c.name);
            if let Err(msg) = self.pull(&run, c, &field_path).await {
                run.init[i] = container_status(c, state_waiting("ErrImagePull", &msg), None);
                self.publish(&mut run);
                return;
            }
            let docker_id = match self.create(&pod, &spec, c, &volumes, None).await {
                Ok(id) => id,
                Err((reason, msg)) => {
                    run.init[i] = container_status(c, state_waiting(reason, &msg), None);
                    self.container_event(
                        &ns,
                        &name,
                        &uid,
                        &field_path,
                        ("Warning", "Failed"),
                        &format!("Error: {reason}"),
                    );
                    self.publish(&mut run);
                    return;
                }
            };
            self.container_event(
                &ns,
                &name,
                &uid,
                &field_path,
                ("Normal", "Created"),
                &format!("Created container: {}", c.name),
            );
            let cname = self.container_name(&name, &uid, &c.name);
            if let Err(e) = docker(["start", cname.as_str()]).await {
                run.init[i] = container_status(c, state_waiting("RunContainerError", &e), Some(&docker_id));
                self.publish(&mut run);
                return;
            }
            let started = now();
            run.init[i] = container_status(c, json!({"running": {"startedAt": started}}), Some(&docker_id));
            self.container_event(
                &ns,
                &name,
                &uid,
                &field_path,
                ("Normal", "Started"),
                &format!("Started container {}", c.name),
            );
            self.publish(&mut run);
            let code: i64 = docker(["wait", cname.as_str()])
                .await
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(-1);
            let reason = if code == 0 { "Completed" } else { "Error" };
            run.init[i] = container_status(
                c,
                json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now()}}),
                Some(&docker_id),
            );
            if code != 0 {
                // restartPolicy is not honoured: a failed init container fails the pod
                // (kubectl shows Init:Error).
                run.phase = "Failed";
                self.event(
                    &ns,
                    &name,
                    &uid,
                    "Warning",
                    "Failed",
                    &format!("init container {} exited with {code}", c.name),
                );
                self.publish(&mut run);
                return;
            }
            self.publish(&mut run);
        }
        run.condition("Initialized", true);

        // The main containers: created, then started in order; the first owns the network.
        let mut ids = Vec::new();
        let first = self.container_name(&name, &uid, &main_cs[0].name);
        for (i, c) in main_cs.iter().enumerate() {
            let field_path = format!("spec.containers{{{}}}", c.name);
            if let Err(msg) = self.pull(&run, c, &field_path).await {
                run.main[i] = container_status(c, state_waiting("ErrImagePull", &msg), None);
                self.publish(&mut run);
                return;
            }
            let network = (i > 0).then_some(first.as_str());
            match self.create(&pod, &spec, c, &volumes, network).await {
                Ok(id) => ids.push(id),
                Err((reason, msg)) => {
                    run.main[i] = container_status(c, state_waiting(reason, &msg), None);
                    self.container_event(
                        &ns,
                        &name,
                        &uid,
                        &field_path,
                        ("Warning", "Failed"),
                        &format!("Error: {reason}"),
                    );
                    self.publish(&mut run);
                    return;
                }
            }
            self.container_event(
                &ns,
                &name,
                &uid,
                &field_path,
                ("Normal", "Created"),
                &format!("Created container: {}", c.name),
            );
        }
        for (i, c) in main_cs.iter().enumerate() {
            let cname = self.container_name(&name, &uid, &c.name);
            if let Err(e) = docker(["start", cname.as_str()]).await {
                run.main[i] = container_status(c, state_waiting("RunContainerError", &e), Some(&ids[i]));
                self.publish(&mut run);
                return;
            }
            run.main[i] = container_status(c, json!({"running": {"startedAt": now()}}), Some(&ids[i]));
            self.container_event(
                &ns,
                &name,
                &uid,
                &format!("spec.containers{{{}}}", c.name),
                ("Normal", "Started"),
                &format!("Started container {}", c.name),
            );
        }
        let ip = docker([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            first.as_str(),
        ])
        .await
        .unwrap_or_default();
        run.pod_ip = self.reported_ip(&ip);
        run.phase = "Running";
        self.publish(&mut run);
        self.timed(&ns, &name, begun, false);

        // Supervise: exits and readiness.
        let (exit_tx, mut exits) = mpsc::channel::<(usize, i64, bool)>(main_cs.len());
        let mut waiters = tokio::task::JoinSet::new();
        for (i, c) in main_cs.iter().enumerate() {
            let (tx, cname) = (exit_tx.clone(), self.container_name(&name, &uid, &c.name));
            waiters.spawn(async move {
                let code = docker(["wait", cname.as_str()])
                    .await
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(-1);
                let oom = docker(["inspect", "-f", "{{.State.OOMKilled}}", cname.as_str()])
                    .await
                    .is_ok_and(|o| o == "true");
                let _ = tx.send((i, code, oom)).await;
            });
        }
        let started = Instant::now();
        let mut probes: Vec<Option<ProbeState>> = main_cs
            .iter()
            .map(|c| {
                c.readiness_probe.clone().map(|probe| ProbeState {
                    due: started
                        + Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64),
                    probe,
                    failures: 0,
                })
            })
            .collect();
        for (i, p) in probes.iter().enumerate() {
            run.ready[i] = p.is_none();
        }
        self.publish(&mut run);
        if run.ready.iter().all(|r| *r) {
            self.timed(&ns, &name, begun, true);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut done = vec![false; main_cs.len()];
        loop {
            tokio::select! {
                Some((i, code, oom)) = exits.recv() => {
                    done[i] = true;
                    run.ready[i] = false;
                    let reason = if oom { "OOMKilled" } else if code == 0 { "Completed" } else { "Error" };
                    let started_at = run.main[i].pointer("/state/running/startedAt").cloned().unwrap_or(Value::Null);
                    run.main[i] = container_status(
                        &main_cs[i],
                        json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": now()}}),
                        Some(&ids[i]),
                    );
                    if done.iter().all(|d| *d) {
                        let failed = run.main.iter().any(|s| s.pointer("/state/terminated/exitCode").and_then(Value::as_i64) != Some(0));
                        run.phase = if failed { "Failed" } else { "Succeeded" };
                        self.publish(&mut run);
                        return;
                    }
                    self.publish(&mut run);
                }
                _ = tick.tick() => {
                    for (i, p) in probes.iter_mut().enumerate() {
                        let Some(p) = p.as_mut().filter(|p| !done[i] && Instant::now() >= p.due) else { continue };
                        let probed = self.probe(&p.probe, &ip, &main_cs[i], &self.container_name(&name, &uid, &main_cs[i].name)).await;
                        let period = p.probe.period_seconds.unwrap_or(10).max(1) as u64;
                        if let Err(why) = &probed {
                            self.container_event(
                                &ns,
                                &name,
                                &uid,
                                &format!("spec.containers{{{}}}", main_cs[i].name),
                                ("Warning", "Unhealthy"),
                                &format!("Readiness probe failed: {why}"),
                            );
                        }
                        if probed.is_ok() {
                            p.failures = 0;
                            run.ready[i] = true;
                        } else {
                            p.failures += 1;
                            if p.failures >= p.probe.failure_threshold.unwrap_or(3).max(1) {
                                run.ready[i] = false;
                            }
                        }
                        // Not ready yet: probed every second at most (faster than the
                        // kubelet's period, so tests converge quickly; docs/fake-kube.md).
                        let next = if run.ready[i] { period } else { period.min(1) };
                        p.due = Instant::now() + Duration::from_secs(next);
                    }
                    self.publish(&mut run);
                    if run.ready.iter().all(|r| *r) {
                        self.timed(&ns, &name, begun, true);
                    }
                }
            }
        }
    }

    /// One probe, with why it failed in the kubelet's words (Go's `net/http` errors).
    async fn probe(&self, probe: &Probe, ip: &str, c: &Container, cname: &str) -> Result<(), String> {
        let port = |p: &IntOrString| match p {
            IntOrString::Int(n) => Some(*n),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port),
        };
        let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        if let Some(h) = &probe.http_get {
            let port = port(&h.port).ok_or_else(|| format!("no port named {:?}", h.port))?;
            let host = h.host.as_deref().unwrap_or(ip);
            let path = h.path.as_deref().unwrap_or("/");
            let url = format!("http://{host}:{port}{path}");
            let mut req = self.http.get(&url).timeout(timeout);
            for header in h.http_headers.iter().flatten() {
                req = req.header(&header.name, &header.value);
            }
            return match req.send().await {
                Ok(r) if (200..400).contains(&r.status().as_u16()) => Ok(()),
                Ok(r) => Err(format!("HTTP probe failed with statuscode: {}", r.status().as_u16())),
                Err(e) if e.is_connect() => Err(format!(
                    "Get \"{url}\": dial tcp {host}:{port}: connect: connection refused"
                )),
                Err(e) if e.is_timeout() => Err(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
                Err(e) => Err(format!("Get \"{url}\": {e}")),
            };
        }
        if let Some(t) = &probe.tcp_socket {
            let port = port(&t.port).ok_or_else(|| format!("no port named {:?}", t.port))?;
            let host = t.host.as_deref().unwrap_or(ip).to_owned();
            return match tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect((host.as_str(), port as u16)),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(format!("dial tcp {host}:{port}: connect: connection refused")),
                Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
            };
        }
        if let Some(cmd) = probe.exec.as_ref().and_then(|e| e.command.as_ref()) {
            return docker(["exec".to_owned(), cname.to_owned()].iter().chain(cmd))
                .await
                .map(drop)
                .map_err(|e| format!("command {cmd:?} failed: {e}"));
        }
        Err("the fake runs no gRPC probes".into())
    }

    /// `pods/log`: `docker logs` of the container, streamed, with `tailLines`,
    /// `sinceSeconds`, `timestamps` and `follow`.
    pub async fn logs(&self, pod: &Value, q: &HashMap<String, String>) -> Result<Response, ApiErr> {
        let meta = |f: &str| {
            pod.pointer(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (name, uid) = (meta("name"), meta("uid"));
        let names: Vec<String> = ["/spec/initContainers", "/spec/containers"]
            .iter()
            .flat_map(|p| {
                pod.pointer(p)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let mains = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let container = match q.get("container") {
            Some(c) if names.contains(c) => c.clone(),
            Some(c) => {
                return Err(ApiErr::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
            None if mains == 1 => names[names.len() - 1].clone(),
            None => {
                return Err(ApiErr::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: {names:?}"
                )))
            }
        };
        if q.get("previous").is_some_and(|p| p == "true") {
            return Err(ApiErr::bad_request(
                "the fake keeps no previous containers".into(),
            ));
        }
        let cname = self.container_name(&name, &uid, &container);
        if docker(["inspect", "--type", "container", "-f", "{{.Id}}", cname.as_str()])
            .await
            .is_err()
        {
            return Err(ApiErr::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            )));
        }
        let mut args = vec!["logs".to_owned()];
        if let Some(n) = q.get("tailLines") {
            args.extend(["--tail".into(), n.clone()]);
        }
        if let Some(s) = q.get("sinceSeconds") {
            args.extend(["--since".into(), format!("{s}s")]);
        }
        if q.get("timestamps").is_some_and(|t| t == "true") {
            args.push("--timestamps".into());
        }
        if q.get("follow").is_some_and(|f| f == "true") {
            args.push("--follow".into());
        }
        args.push(cname);
        let mut child = tokio::process::Command::new("docker")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ApiErr {
                code: 500,
                reason: "InternalError",
                message: format!("cannot run docker logs: {e}"),
            })?;
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ApiErr {
                code: 500,
                reason: "InternalError",
                message: "docker logs has no pipes".into(),
            });
        };
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        tokio::spawn(async move {
            // The container's stdout and stderr, merged line by line, until both end or
            // the client goes away (dropping `child` kills docker logs).
            let _child = child;
            let mut out = tokio::io::BufReader::new(out).lines();
            let mut err = tokio::io::BufReader::new(err).lines();
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                let (from_out, line) = tokio::select! {
                    l = out.next_line(), if out_open => (true, l),
                    l = err.next_line(), if err_open => (false, l),
                    () = tx.closed() => return,
                };
                match line {
                    Ok(Some(l)) => {
                        if tx.send(Ok(Bytes::from(format!("{l}\n")))).await.is_err() {
                            return;
                        }
                    }
                    _ if from_out => out_open = false,
                    _ => err_open = false,
                }
            }
        });
        Ok(Response::builder()
            .header("content-type", "text/plain")
            .body(Body::from_stream(ReceiverStream::new(rx)))
            .expect("static response parts"))
    }
}
