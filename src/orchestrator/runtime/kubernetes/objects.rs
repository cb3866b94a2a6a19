//! The objects one sandbox is made of on Kubernetes, built from a [`SandboxSpec`], and a pod's
//! state read back as [`Observed`]. Pure: no client, no I/O; every field here is checked by the
//! unit tests below (L0) and by `kubernetes-validate --strict` (L1, `tests/k8s/`).
//!
//! Per sandbox (design §16.2): a Secret `sbx-<id>` with execd's token, a ConfigMap
//! `sbx-<id>-files` when the spec has files, and the Pod `sbx-<id>`: an init container that
//! runs `execd install` from the agent image into an emptyDir, then the user's image with
//! `execd init --` in front of its entrypoint.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Capabilities as PodCapabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerStatus,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HostPathVolumeSource, PersistentVolumeClaimVolumeSource, Pod,
    PodSchedulingGate, PodSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector,
    SecurityContext, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use crate::orchestrator::runtime::{Gpus, Mount, Observed, Purpose, RuntimeError, SandboxSpec, EXECD_PORT};
use crate::wire::time::format_ms;

/// Label: the sandbox id (upstream's name).
pub const LABEL_ID: &str = "opensandbox.io/id";
/// Label: every pod sandboxd manages.
pub const LABEL_MANAGED: &str = "sandboxd.io/managed";
/// Label: which sandboxd state file owns the pod, so that two sandboxd instances sharing a
/// namespace never see (or sweep) each other's sandboxes.
pub const LABEL_INSTANCE: &str = "sandboxd.io/instance";
/// Label: set to `true` on manual-cleanup sandboxes (no expiry).
pub const LABEL_MANUAL: &str = "opensandbox.io/manual-cleanup";
/// Annotation: the expiry, RFC 3339 (an annotation, not a label: a label value cannot hold
/// `:`).
pub const ANNOTATION_EXPIRES: &str = "opensandbox.io/expires-at";
/// The Secret key holding execd's token, also the variable's name in the sandbox.
pub const TOKEN_KEY: &str = "EXECD_ACCESS_TOKEN";
/// The init container that installs execd.
pub const INSTALLER: &str = "execd-installer";
/// The container that runs the user's image.
pub const SANDBOX_CONTAINER: &str = "sandbox";
/// The emptyDir execd is installed into.
pub const BIN_VOLUME: &str = "opensandbox-bin";
/// Where that emptyDir is mounted in both containers.
pub const BIN_DIR: &str = "/opt/opensandbox";
/// execd inside the sandbox container.
pub const EXECD_PATH: &str = "/opt/opensandbox/execd";
/// Where the files ConfigMap is mounted (read-only).
pub const SEED_DIR: &str = "/opt/opensandbox/seed-files";
/// The manifest's key in the files ConfigMap (and its file name under [`SEED_DIR`]).
pub const SEED_MANIFEST: &str = "manifest.json";
/// The variable that tells `execd init` where the manifest is.
pub const SEED_ENV: &str = "EXECD_SEED_FILES";
/// The most file bytes a sandbox's ConfigMap takes (the apiserver's own limit is 1 MiB).
pub const MAX_FILES_BYTES: usize = 512 * 1024;
/// execd's state directory: an emptyDir in sandboxes with isolated sessions (overlay upper
/// directories cannot live on the container's own overlay root), as the tmpfs on Docker.
pub const ISOLATION_STATE: &str = "/var/lib/execd";
/// The scheduling gate of a sandbox created with `autoStart` false: the pod exists (and is
/// listed, reconciled and expired like any) but is not scheduled until the gate is removed.
pub const START_GATE: &str = "sandboxd.io/await-start";
/// Size of the emptyDir execd is installed into.
const BIN_SIZE: &str = "64Mi";

/// Docker's default capability set (moby `oci/caps/defaults.go`): sandboxes get exactly these
/// on Kubernetes too, whatever the node's container runtime would add (`drop: [ALL]`, then
/// these).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// What the builders need beside the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objects {
    /// Namespace of every object.
    pub namespace: String,
    /// The image the init container runs `/execd install` from.
    pub agent_image: String,
    /// This sandboxd's state-file identity ([`LABEL_INSTANCE`]).
    pub instance: String,
}

#[cfg(test)]
impl Objects {
    /// The settings the builders' unit tests share.
    pub(crate) fn for_test() -> Self {
        Self {
            namespace: "sbx".into(),
            agent_image: "sandboxd/execd:0.1.0".into(),
            instance: "inst1".into(),
        }
    }
}

/// The Pod's (and Secret's) name.
pub fn pod_name(id: &str) -> String {
    format!("sbx-{id}")
}

/// The files ConfigMap's name.
pub fn files_name(id: &str) -> String {
    format!("sbx-{id}-files")
}

/// The label selector of every pod of this sandboxd instance.
pub fn selector(instance: &str) -> String {
    format!("{LABEL_MANAGED}=true,{LABEL_INSTANCE}={instance}")
}

/// One entry of the seed-files manifest (`manifest.json`), read by `execd init`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeedFile {
    /// The ConfigMap key (`f0`, `f1`, …) holding the bytes.
    pub key: String,
    /// Absolute target path.
    pub path: String,
    /// Permission bits (decimal in JSON: 420 is 0644).
    pub mode: u32,
}

impl Objects {
    pub(super) fn meta(&self, name: String, spec: &SandboxSpec) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.system_labels(&spec.id)),
            ..Default::default()
        }
    }

    /// The labels sandboxd sets on everything of sandbox `id` (user labels come first on the
    /// pod, so these win).
    pub(super) fn system_labels(&self, id: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_ID.to_owned(), id.to_owned()),
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_INSTANCE.to_owned(), self.instance.clone()),
        ])
    }

    /// The Secret `sbx-<id>` holding execd's token (taken from the spec's environment, where
    /// the service puts it; the pod reads it through `secretKeyRef`, so the token never
    /// appears in the pod spec).
    pub fn secret(&self, spec: &SandboxSpec) -> Secret {
        let token = spec.env.get(TOKEN_KEY).cloned().unwrap_or_default();
        Secret {
            metadata: self.meta(pod_name(&spec.id), spec),
            type_: Some("Opaque".into()),
            string_data: Some(BTreeMap::from([(TOKEN_KEY.to_owned(), token)])),
            ..Default::default()
        }
    }

    /// The ConfigMap `sbx-<id>-files` of the spec's files, `None` without files: `binaryData`
    /// `f0`, `f1`, … with the bytes, and `data` `manifest.json` naming each key's path and
    /// mode. More than [`MAX_FILES_BYTES`] in total is the user's to fix.
    pub fn files(&self, spec: &SandboxSpec) -> Result<Option<ConfigMap>, RuntimeError> {
        if spec.files.is_empty() {
            return Ok(None);
        }
        let total: usize = spec.files.iter().map(|f| f.content.len()).sum();
        if total > MAX_FILES_BYTES {
            return Err(RuntimeError::Rejected(format!(
                "files: {total} bytes in total; a sandbox on Kubernetes takes at most {MAX_FILES_BYTES} (512 KiB)"
            )));
        }
        let mut binary = BTreeMap::new();
        let mut manifest = Vec::with_capacity(spec.files.len());
        for (i, file) in spec.files.iter().enumerate() {
            let key = format!("f{i}");
            binary.insert(key.clone(), ByteString(file.content.clone()));
            manifest.push(SeedFile {
                key,
                path: file.path.clone(),
                mode: file.mode & 0o7777,
            });
        }
        let manifest = serde_json::to_string(&manifest).map_err(|e| RuntimeError::Engine {
            op: "encode the files manifest",
            message: e.to_string(),
        })?;
        Ok(Some(ConfigMap {
            metadata: self.meta(files_name(&spec.id), spec),
            binary_data: Some(binary),
            data: Some(BTreeMap::from([(SEED_MANIFEST.to_owned(), manifest)])),
            ..Default::default()
        }))
    }

    /// The Pod `sbx-<id>`. Builds are refused: they need [`crate::orchestrator::runtime::Runtime::commit`],
    /// which this runtime does not have.
    pub fn pod(&self, spec: &SandboxSpec) -> Result<Pod, RuntimeError> {
        if let Purpose::Build { .. } = spec.purpose {
            return Err(RuntimeError::Rejected(
                "template builds are not supported on Kubernetes (no commit of a pod's filesystem)".into(),
            ));
        }
        let mut labels = spec.labels.clone();
        labels.extend(self.system_labels(&spec.id));
        if spec.expires_at.is_none() {
            labels.insert(LABEL_MANUAL.to_owned(), "true".to_owned());
        }
        let annotations = spec
            .expires_at
            .map(|at| BTreeMap::from([(ANNOTATION_EXPIRES.to_owned(), format_ms(at))]));
        let name = pod_name(&spec.id);

        let mut volumes = vec![Volume {
            name: BIN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(BIN_SIZE.into())),
                ..Default::default()
            }),
            ..Default::default()
        }];
        let bin_mount = |read_only: bool| VolumeMount {
            name: BIN_VOLUME.into(),
            mount_path: BIN_DIR.into(),
            read_only: read_only.then_some(true),
            ..Default::default()
        };
        let mut mounts = vec![bin_mount(false)];
        let mut env = self.env(spec);
        if !spec.files.is_empty() {
            volumes.push(Volume {
                name: "seed-files".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: files_name(&spec.id),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: "seed-files".into(),
                mount_path: SEED_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
            env.push(EnvVar {
                name: SEED_ENV.into(),
                value: Some(format!("{SEED_DIR}/{SEED_MANIFEST}")),
                ..Default::default()
            });
        }
        for (i, mount) in spec.mounts.iter().enumerate() {
            let volume = format!("vol-{i}");
            let (source, mount_path, sub_path, read_only) = match mount {
                Mount::HostPath {
                    path,
                    mount_path,
                    read_only,
                } => (
                    Volume {
                        name: volume.clone(),
                        host_path: Some(HostPathVolumeSource {
                            path: path.clone(),
                            type_: None,
                        }),
                        ..Default::default()
                    },
                    mount_path,
                    None,
                    *read_only,
                ),
                // A named volume is a PersistentVolumeClaim of that name, which must exist
                // (sandboxd creates no claims; a missing one leaves the pod Pending until the
                // create times out). An emptyDir would lose the data with the pod, which is
                // not what a named volume means on Docker.
                Mount::Volume {
                    name,
                    sub_path,
                    mount_path,
                    read_only,
                } => (
                    Volume {
                        name: volume.clone(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: name.clone(),
                            read_only: read_only.then_some(true),
                        }),
                        ..Default::default()
                    },
                    mount_path,
                    sub_path.clone(),
                    *read_only,
                ),
            };
            volumes.push(source);
            mounts.push(VolumeMount {
                name: volume,
                mount_path: mount_path.clone(),
                sub_path,
                read_only: read_only.then_some(true),
                ..Default::default()
            });
        }
        if let Some((volume, mount)) = super::workspace::volume(spec) {
            volumes.push(volume);
            mounts.push(mount);
        }

        let mut add: Vec<String> = DEFAULT_CAPS.iter().map(|c| (*c).to_owned()).collect();
        let mut security = SecurityContext {
            // The apiserver refuses `false` beside CAP_SYS_ADMIN, so an isolation sandbox
            // leaves it unset; execd sets no_new_privs on every jailed process itself.
            allow_privilege_escalation: (!spec.isolation).then_some(false),
            ..Default::default()
        };
        if spec.isolation {
            add.push("SYS_ADMIN".into());
            security.seccomp_profile = Some(SeccompProfile {
                type_: "Unconfined".into(),
                localhost_profile: None,
            });
            volumes.push(Volume {
                name: "execd-state".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: "execd-state".into(),
                mount_path: ISOLATION_STATE.into(),
                ..Default::default()
            });
        }
        security.capabilities = Some(PodCapabilities {
            add: Some(add),
            drop: Some(vec!["ALL".into()]),
        });

        let mut command = vec![EXECD_PATH.to_owned(), "init".to_owned(), "--".to_owned()];
        command.extend(spec.entrypoint.iter().cloned());
        let sandbox = Container {
            name: SANDBOX_CONTAINER.into(),
            image: Some(spec.image.clone()),
            command: Some(command),
            env: Some(env),
            ports: None,
            // A TCP probe, not `httpGet /ping`: execd's `/ping` takes the token, and a probe's
            // headers would put it in the pod spec. sandboxd asks `/ping` itself (with the
            // token) once the pod is Ready, as on Docker.
            readiness_probe: Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(i32::from(EXECD_PORT)),
                    host: None,
                }),
                period_seconds: Some(1),
                failure_threshold: Some(3),
                ..Default::default()
            }),
            resources: Some(resources(spec)?),
            security_context: Some(security),
            volume_mounts: Some(mounts),
            ..Default::default()
        };
        let installer = Container {
            name: INSTALLER.into(),
            image: Some(self.agent_image.clone()),
            command: Some(vec!["/execd".into(), "install".into(), BIN_DIR.into()]),
            volume_mounts: Some(vec![bin_mount(false)]),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(PodCapabilities {
                    add: None,
                    drop: Some(vec!["ALL".into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(Pod {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations,
                ..Default::default()
            },
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                enable_service_links: Some(false),
                automount_service_account_token: Some(false),
                init_containers: Some(vec![installer]),
                containers: vec![sandbox],
                image_pull_secrets: Self::image_pull_secrets(spec),
                volumes: Some(volumes),
                scheduling_gates: (!spec.start).then(|| {
                    vec![PodSchedulingGate {
                        name: START_GATE.into(),
                    }]
                }),
                ..Default::default()
            }),
            status: None,
        })
    }

    /// The sandbox container's environment: the spec's, without the token, which comes from
    /// the Secret instead.
    fn env(&self, spec: &SandboxSpec) -> Vec<EnvVar> {
        let mut env: Vec<EnvVar> = spec
            .env
            .iter()
            .filter(|(k, _)| k.as_str() != TOKEN_KEY)
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                ..Default::default()
            })
            .collect();
        env.push(EnvVar {
            name: TOKEN_KEY.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: pod_name(&spec.id),
                    key: TOKEN_KEY.into(),
                    optional: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        env
    }
}

/// The extended resource a GPU count is asked for as (NVIDIA's device plugin), as upstream.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Limits = requests (a Guaranteed pod when both are set): CPU in millicores from the
/// spec's billionths (at least 1m), memory in bytes, GPUs as [`GPU_RESOURCE`], disk as
/// `ephemeral-storage` bytes. The process limit has no pod field (it is the kubelet's
/// `podPidsLimit`), so it is not sent. Every GPU (`"all"`) has no pod equivalent: refused
/// (the service refuses it first, from the capabilities).
pub fn resources(spec: &SandboxSpec) -> Result<ResourceRequirements, RuntimeError> {
    let mut limits = BTreeMap::new();
    match spec.resources.gpu {
        Some(Gpus::Count(n)) => {
            limits.insert(GPU_RESOURCE.to_owned(), Quantity(n.to_string()));
        }
        Some(Gpus::All) => {
            return Err(RuntimeError::Rejected(
                "resourceLimits.gpu: \"all\" is not supported on Kubernetes; give a number of GPUs".into(),
            ))
        }
        None => {}
    }
    if let Some(bytes) = spec.resources.disk.filter(|&b| b > 0) {
        limits.insert("ephemeral-storage".to_owned(), Quantity(bytes.to_string()));
    }
    if let Some(nano) = spec.resources.nano_cpus.filter(|&n| n > 0) {
        let milli = (nano.saturating_add(999_999) / 1_000_000).max(1);
        limits.insert("cpu".to_owned(), Quantity(format!("{milli}m")));
    }
    if let Some(bytes) = spec.resources.memory.filter(|&b| b > 0) {
        limits.insert("memory".to_owned(), Quantity(bytes.to_string()));
    }
    if limits.is_empty() {
        return Ok(ResourceRequirements::default());
    }
    Ok(ResourceRequirements {
        limits: Some(limits.clone()),
        requests: Some(limits),
        ..Default::default()
    })
}

/// The merge patch that makes the pod `uid` named `pod` the controller-less owner of a Secret
/// or ConfigMap, so that the cluster's garbage collector removes them with it.
pub fn owner_patch(pod: &str, uid: &str) -> serde_json::Value {
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.to_owned(),
        uid: uid.to_owned(),
        block_owner_deletion: None,
        controller: None,
    };
    serde_json::json!({ "metadata": { "ownerReferences": [owner] } })
}

/// The JSON Patch that lets a gated pod (`autoStart` false) be scheduled.
pub fn start_patch() -> serde_json::Value {
    serde_json::json!([{ "op": "remove", "path": "/spec/schedulingGates" }])
}

/// Waiting reasons that mean the image will not come (the kubelet would retry with
/// back-off for ever): a create fails fast on them.
const IMAGE_PULL_FAILURES: [&str; 3] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];

/// The `message` of an [`Observed::Exited`] for an image that cannot be pulled; the service
/// shows it as the sandbox's failure.
pub const IMAGE_PULL_FAILED: &str = "IMAGE_PULL_FAILED";

/// What a pod is doing, as [`Observed`]: `deletionTimestamp` → `Stopping`; `Pending` →
/// `Starting`, unless an image cannot be pulled or the installer failed (`Exited` with why);
/// `Running` → the sandbox container's own state; `Succeeded`/`Failed` → `Exited` with the
/// container's code; anything else → `Unknown`.
pub fn observed(pod: &Pod) -> Observed {
    if pod.metadata.deletion_timestamp.is_some() {
        return Observed::Stopping;
    }
    let Some(status) = &pod.status else {
        return Observed::Starting;
    };
    let init = status.init_container_statuses.as_deref().unwrap_or_default();
    let main = status.container_statuses.as_deref().unwrap_or_default();
    let sandbox = main.iter().find(|c| c.name == SANDBOX_CONTAINER);
    match status.phase.as_deref() {
        None | Some("Pending") => {
            if let Some(pull) = init.iter().chain(main).find_map(pull_failure) {
                return pull;
            }
            if let Some(failed) = init.iter().find_map(init_failure) {
                return failed;
            }
            match sandbox.map(container_observed) {
                Some(exited @ Observed::Exited { .. }) => exited,
                _ => Observed::Starting,
            }
        }
        Some("Running") => sandbox.map_or(Observed::Starting, container_observed),
        Some("Succeeded") | Some("Failed") => {
            if let Some(failed) = init.iter().find_map(init_failure) {
                return failed;
            }
            match sandbox.map(container_observed) {
                Some(exited @ Observed::Exited { .. }) => exited,
                // Evicted, or failed before the container ran: the pod's own account.
                _ => Observed::Exited {
                    code: None,
                    oom: false,
                    message: Some(
                        [status.reason.as_deref(), status.message.as_deref()]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(": "),
                    )
                    .filter(|m| !m.is_empty()),
                },
            }
        }
        Some(other) => Observed::Unknown(format!("kubernetes reports pod phase {other:?}")),
    }
}

/// A container's state as [`Observed`].
fn container_observed(c: &ContainerStatus) -> Observed {
    let Some(state) = &c.state else {
        return Observed::Starting;
    };
    if let Some(t) = &state.terminated {
        let oom = t.reason.as_deref() == Some("OOMKilled");
        return Observed::Exited {
            code: Some(i64::from(t.exit_code)),
            oom,
            message: t.message.clone().filter(|m| !m.is_empty()),
        };
    }
    if state.running.is_some() {
        return Observed::Running;
    }
    Observed::Starting
}

/// `Exited` with [`IMAGE_PULL_FAILED`] for a container whose image cannot be pulled.
fn pull_failure(c: &ContainerStatus) -> Option<Observed> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    IMAGE_PULL_FAILURES.contains(&reason).then(|| Observed::Exited {
        code: None,
        oom: false,
        message: Some(format!(
            "{IMAGE_PULL_FAILED}: {reason} for {} ({}): {}",
            c.name,
            c.image,
            waiting.message.as_deref().unwrap_or("no detail")
        )),
    })
}

/// `Exited` for an init container that ended non-zero (the pod shows `Init:Error`).
fn init_failure(c: &ContainerStatus) -> Option<Observed> {
    let t = c.state.as_ref()?.terminated.as_ref()?;
    (t.exit_code != 0).then(|| Observed::Exited {
        code: Some(i64::from(t.exit_code)),
        oom: t.reason.as_deref() == Some("OOMKilled"),
        message: Some(format!(
            "Init:Error: init container {} exited with code {}{}",
            c.name,
            t.exit_code,
            t.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
        )),
    })
}

/// The pod's IP once it is Ready (its readiness probe passes, so execd listens).
pub fn ready_ip(pod: &Pod) -> Option<IpAddr> {
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_deref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

/// The pod's IP, ready or not.
pub fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::runtime::{Resources, SpecFile};
    use serde_json::{json, Value};

    fn spec() -> SandboxSpec {
        SandboxSpec {
            env: BTreeMap::from([
                ("EXECD_ACCESS_TOKEN".into(), "secret-token".into()),
                ("OPENSANDBOX_ID".into(), "abc".into()),
                ("X".into(), "1".into()),
            ]),
            labels: BTreeMap::from([("team".into(), "ml".into())]),
            expires_at: Some(1_800_000_000_000),
            resources: Resources {
                nano_cpus: Some(500_000_000),
                memory: Some(512 * 1024 * 1024),
                pids: 4096,
                ..Resources::default()
            },
            ..SandboxSpec::for_test("abc", "python:3.12", &["python3", "-m", "http.server"])
        }
    }

    fn pod_json(spec: &SandboxSpec) -> Value {
        serde_json::to_value(Objects::for_test().pod(spec).unwrap()).unwrap()
    }

    fn env_of(pod: &Value) -> BTreeMap<String, Value> {
        pod["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
            .collect()
    }

    #[test]
    fn the_secret_holds_the_token_under_the_pods_name_with_the_instance_labels() {
        let secret = serde_json::to_value(Objects::for_test().secret(&spec())).unwrap();
        assert_eq!(secret["metadata"]["name"], "sbx-abc");
        assert_eq!(secret["metadata"]["namespace"], "sbx");
        assert_eq!(secret["type"], "Opaque");
        assert_eq!(
            secret["stringData"],
            json!({"EXECD_ACCESS_TOKEN": "secret-token"})
        );
        assert_eq!(
            secret["metadata"]["labels"],
            json!({"opensandbox.io/id": "abc", "sandboxd.io/managed": "true", "sandboxd.io/instance": "inst1"})
        );
    }

    #[test]
    fn the_pod_is_labelled_annotated_and_never_restarts_or_sees_the_cluster() {
        let pod = pod_json(&spec());
        assert_eq!(pod["metadata"]["name"], "sbx-abc");
        assert_eq!(
            pod["metadata"]["labels"],
            json!({"opensandbox.io/id": "abc", "sandboxd.io/managed": "true",
                   "sandboxd.io/instance": "inst1", "team": "ml"})
        );
        assert_eq!(
            pod["metadata"]["annotations"],
            json!({"opensandbox.io/expires-at": format_ms(1_800_000_000_000)})
        );
        let s = &pod["spec"];
        assert_eq!(s["restartPolicy"], "Never");
        assert_eq!(s["enableServiceLinks"], false);
        assert_eq!(s["automountServiceAccountToken"], false);
        assert!(s.get("schedulingGates").is_none(), "started at once");
        assert_eq!(
            s["volumes"][0],
            json!({"name": "opensandbox-bin", "emptyDir": {"sizeLimit": "64Mi"}})
        );
    }

    #[test]
    fn user_labels_cannot_override_sandboxds_own() {
        let mut s = spec();
        s.labels.insert(LABEL_INSTANCE.into(), "someone-else".into());
        s.labels.insert(LABEL_ID.into(), "other".into());
        let pod = pod_json(&s);
        assert_eq!(pod["metadata"]["labels"][LABEL_INSTANCE], "inst1");
        assert_eq!(pod["metadata"]["labels"][LABEL_ID], "abc");
    }

    #[test]
    fn a_sandbox_without_expiry_is_labelled_manual_cleanup_and_has_no_annotation() {
        let mut s = spec();
        s.expires_at = None;
        let pod = pod_json(&s);
        assert_eq!(pod["metadata"]["labels"][LABEL_MANUAL], "true");
        assert!(pod["metadata"].get("annotations").is_none());
    }

    #[test]
    fn the_installer_runs_execd_install_from_the_agent_image_without_a_shell() {
        let pod = pod_json(&spec());
        let init = &pod["spec"]["initContainers"];
        assert_eq!(init.as_array().unwrap().len(), 1);
        assert_eq!(init[0]["name"], "execd-installer");
        assert_eq!(init[0]["image"], "sandboxd/execd:0.1.0");
        assert_eq!(
            init[0]["command"],
            json!(["/execd", "install", "/opt/opensandbox"])
        );
        assert_eq!(
            init[0]["volumeMounts"],
            json!([{"name": "opensandbox-bin", "mountPath": "/opt/opensandbox"}])
        );
        assert_eq!(init[0]["securityContext"]["allowPrivilegeEscalation"], false);
    }

    #[test]
    fn the_sandbox_runs_execd_init_before_the_entrypoint_and_reads_the_token_from_the_secret() {
        let pod = pod_json(&spec());
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["name"], "sandbox");
        assert_eq!(c["image"], "python:3.12");
        assert_eq!(
            c["command"],
            json!([
                "/opt/opensandbox/execd",
                "init",
                "--",
                "python3",
                "-m",
                "http.server"
            ])
        );
        assert!(c.get("args").is_none());
        let env = env_of(&pod);
        assert_eq!(
            env["EXECD_ACCESS_TOKEN"],
            json!({"name": "EXECD_ACCESS_TOKEN",
                   "valueFrom": {"secretKeyRef": {"name": "sbx-abc", "key": "EXECD_ACCESS_TOKEN"}}})
        );
        assert_eq!(env["X"], json!({"name": "X", "value": "1"}));
        assert_eq!(env["OPENSANDBOX_ID"]["value"], "abc");
        assert!(
            !pod.to_string().contains("secret-token"),
            "the token is not in the pod"
        );
        assert!(!env.contains_key(SEED_ENV), "no files, no manifest");
        assert_eq!(
            c["readinessProbe"]["tcpSocket"],
            json!({"port": 44772}),
            "execd listening; sandboxd pings it with the token"
        );
    }

    #[test]
    fn limits_equal_requests_in_millicores_and_bytes() {
        let pod = pod_json(&spec());
        let r = &pod["spec"]["containers"][0]["resources"];
        let want = json!({"cpu": "500m", "memory": "536870912"});
        assert_eq!(r["limits"], want);
        assert_eq!(r["requests"], want);
        let mut s = spec();
        s.resources = Resources {
            nano_cpus: Some(1),
            memory: None,
            pids: 0,
            ..Resources::default()
        };
        assert_eq!(
            pod_json(&s)["spec"]["containers"][0]["resources"]["limits"],
            json!({"cpu": "1m"}),
            "rounded up, never 0"
        );
        s.resources = Resources::default();
        assert_eq!(
            pod_json(&s)["spec"]["containers"][0]["resources"],
            json!({}),
            "no limits, no requests"
        );
    }

    /// Issue 18: GPUs are `nvidia.com/gpu` and disk `ephemeral-storage`, limits = requests;
    /// every GPU (`"all"`) has no pod equivalent and is refused.
    #[test]
    fn issue18_gpus_and_disk_become_extended_and_ephemeral_storage_limits() {
        let mut s = spec();
        s.resources.gpu = Some(Gpus::Count(2));
        s.resources.disk = Some(10 << 30);
        let r = &pod_json(&s)["spec"]["containers"][0]["resources"];
        let want = json!({"cpu": "500m", "memory": "536870912", "nvidia.com/gpu": "2",
                          "ephemeral-storage": "10737418240"});
        assert_eq!((&r["limits"], &r["requests"]), (&want, &want));
        s.resources.gpu = Some(Gpus::All);
        assert!(
            matches!(Objects::for_test().pod(&s), Err(RuntimeError::Rejected(m)) if m.contains("\"all\""))
        );
    }

    #[test]
    fn capabilities_are_dockers_defaults_and_no_privilege_escalation() {
        let pod = pod_json(&spec());
        let sc = &pod["spec"]["containers"][0]["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["capabilities"]["add"], json!(DEFAULT_CAPS));
        assert!(
            sc.get("seccompProfile").is_none(),
            "the runtime's default profile"
        );
    }

    #[test]
    fn isolation_adds_sys_admin_unconfined_seccomp_and_a_state_empty_dir() {
        let mut s = spec();
        s.isolation = true;
        let pod = pod_json(&s);
        let c = &pod["spec"]["containers"][0];
        let sc = &c["securityContext"];
        assert!(sc["capabilities"]["add"]
            .as_array()
            .unwrap()
            .contains(&json!("SYS_ADMIN")));
        assert_eq!(sc["seccompProfile"], json!({"type": "Unconfined"}));
        assert!(
            sc.get("allowPrivilegeEscalation").is_none(),
            "the apiserver refuses false beside SYS_ADMIN"
        );
        assert!(c["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "execd-state", "mountPath": "/var/lib/execd"})));
        assert!(pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "execd-state", "emptyDir": {}})));
    }

    #[test]
    fn mounts_become_host_paths_and_claims() {
        let mut s = spec();
        s.mounts = super::super::sample_mounts();
        let pod = pod_json(&s);
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert!(volumes.contains(&json!({"name": "vol-0", "hostPath": {"path": "/srv/data"}})));
        assert!(volumes.contains(&json!({"name": "vol-1", "persistentVolumeClaim": {"claimName": "cache"}})));
        let mounts = pod["spec"]["containers"][0]["volumeMounts"].as_array().unwrap();
        assert!(mounts.contains(&json!({"name": "vol-0", "mountPath": "/data", "readOnly": true})));
        assert!(mounts.contains(&json!({"name": "vol-1", "mountPath": "/root/.cache", "subPath": "pip"})));
    }

    #[test]
    fn files_go_into_a_config_map_with_a_manifest_mounted_for_execd_init() {
        let mut s = spec();
        s.files = vec![
            SpecFile {
                path: "/etc/app.toml".into(),
                content: b"a = 1\n".to_vec(),
                mode: 0o644,
            },
            SpecFile {
                path: "/usr/local/bin/run".into(),
                content: vec![0, 159, 146, 150],
                mode: 0o100755,
            },
        ];
        let cm = serde_json::to_value(Objects::for_test().files(&s).unwrap().unwrap()).unwrap();
        assert_eq!(cm["metadata"]["name"], "sbx-abc-files");
        assert_eq!(cm["binaryData"], json!({"f0": "YSA9IDEK", "f1": "AJ+Slg=="}));
        let manifest: Value = serde_json::from_str(cm["data"]["manifest.json"].as_str().unwrap()).unwrap();
        assert_eq!(
            manifest,
            json!([{"key": "f0", "path": "/etc/app.toml", "mode": 420},
                   {"key": "f1", "path": "/usr/local/bin/run", "mode": 493}])
        );
        let pod = pod_json(&s);
        assert!(pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "seed-files", "configMap": {"name": "sbx-abc-files"}})));
        assert!(pod["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(
                &json!({"name": "seed-files", "mountPath": "/opt/opensandbox/seed-files", "readOnly": true})
            ));
        assert_eq!(
            env_of(&pod)[SEED_ENV]["value"],
            "/opt/opensandbox/seed-files/manifest.json"
        );
        assert!(
            Objects::for_test().files(&spec()).unwrap().is_none(),
            "no files, no config map"
        );
    }

    #[test]
    fn more_than_512_kib_of_files_is_refused() {
        let mut s = spec();
        s.files = vec![SpecFile {
            path: "/a".into(),
            content: vec![0; MAX_FILES_BYTES],
            mode: 0o644,
        }];
        assert!(
            Objects::for_test().files(&s).unwrap().is_some(),
            "exactly 512 KiB fits"
        );
        s.files.push(SpecFile {
            path: "/b".into(),
            content: vec![1],
            mode: 0o644,
        });
        match Objects::for_test().files(&s) {
            Err(RuntimeError::Rejected(m)) => assert!(m.contains("524289 bytes"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sandbox_not_started_is_gated_and_builds_are_refused() {
        let mut s = spec();
        s.start = false;
        assert_eq!(
            pod_json(&s)["spec"]["schedulingGates"],
            json!([{"name": START_GATE}])
        );
        s.purpose = Purpose::Build {
            template: "t".into(),
            version: 1,
        };
        assert!(matches!(
            Objects::for_test().pod(&s),
            Err(RuntimeError::Rejected(_))
        ));
    }

    #[test]
    fn patches_hand_objects_to_the_pod_and_remove_the_gate() {
        assert_eq!(
            owner_patch("sbx-abc", "u-1"),
            json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "sbx-abc", "uid": "u-1"}]}})
        );
        let patch: json_patch::Patch = serde_json::from_value(start_patch()).unwrap();
        assert_eq!(patch.0.len(), 1);
    }

    fn pod(status: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "sbx-abc"}, "status": status})).unwrap()
    }

    fn container(name: &str, state: Value) -> Value {
        json!({"name": name, "image": "img", "imageID": "", "ready": false, "restartCount": 0, "state": state})
    }

    #[test]
    fn pod_phases_become_observed_states() {
        assert_eq!(observed(&pod(json!({}))), Observed::Starting, "no phase yet");
        assert_eq!(observed(&pod(json!({"phase": "Pending"}))), Observed::Starting);
        let running =
            json!({"phase": "Running", "containerStatuses": [container("sandbox", json!({"running": {}}))]});
        assert_eq!(observed(&pod(running.clone())), Observed::Running);
        assert_eq!(
            observed(&pod(
                json!({"phase": "Succeeded", "containerStatuses": [container("sandbox",
                json!({"terminated": {"exitCode": 0}}))]})
            )),
            Observed::Exited {
                code: Some(0),
                oom: false,
                message: None
            }
        );
        assert_eq!(
            observed(&pod(
                json!({"phase": "Failed", "containerStatuses": [container("sandbox",
                json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}))]})
            )),
            Observed::Exited {
                code: Some(137),
                oom: true,
                message: None
            }
        );
        assert_eq!(
            observed(&pod(
                json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory"})
            )),
            Observed::Exited {
                code: None,
                oom: false,
                message: Some("Evicted: low on memory".into())
            }
        );
        assert!(matches!(
            observed(&pod(json!({"phase": "Unknown"}))),
            Observed::Unknown(_)
        ));
        let mut deleting = pod(running);
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-12-07T00:00:00Z".parse().unwrap(),
        ));
        assert_eq!(observed(&deleting), Observed::Stopping);
    }

    #[test]
    fn image_pull_failures_and_installer_errors_end_a_pending_pod() {
        for reason in ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"] {
            let p = pod(
                json!({"phase": "Pending", "containerStatuses": [container("sandbox",
                json!({"waiting": {"reason": reason, "message": "not found"}}))]}),
            );
            match observed(&p) {
                Observed::Exited {
                    code: None,
                    message: Some(m),
                    ..
                } => assert!(
                    m.starts_with(&format!(
                        "{IMAGE_PULL_FAILED}: {reason} for sandbox (img): not found"
                    )),
                    "{m}"
                ),
                other => panic!("{reason}: {other:?}"),
            }
        }
        let agent = pod(
            json!({"phase": "Pending", "initContainerStatuses": [container("execd-installer",
            json!({"waiting": {"reason": "ImagePullBackOff"}}))]}),
        );
        assert!(
            matches!(observed(&agent), Observed::Exited { message: Some(m), .. } if m.contains("execd-installer"))
        );
        let creating = pod(
            json!({"phase": "Pending", "containerStatuses": [container("sandbox",
            json!({"waiting": {"reason": "ContainerCreating"}}))]}),
        );
        assert_eq!(observed(&creating), Observed::Starting);
        let init_error = pod(
            json!({"phase": "Pending", "initContainerStatuses": [container("execd-installer",
            json!({"terminated": {"exitCode": 2, "message": "no space"}}))]}),
        );
        assert_eq!(
            observed(&init_error),
            Observed::Exited {
                code: Some(2),
                oom: false,
                message: Some(
                    "Init:Error: init container execd-installer exited with code 2: no space".into()
                )
            }
        );
    }

    #[test]
    fn a_pod_is_ready_only_with_the_condition_and_an_ip() {
        let ready = |conditions: Value, ip: Option<&str>| {
            let mut status = json!({"phase": "Running", "conditions": conditions});
            if let Some(ip) = ip {
                status["podIP"] = json!(ip);
            }
            ready_ip(&pod(status))
        };
        let yes = json!([{"type": "Ready", "status": "True"}]);
        assert_eq!(
            ready(yes.clone(), Some("10.0.0.5")),
            Some("10.0.0.5".parse().unwrap())
        );
        assert_eq!(ready(yes, None), None);
        assert_eq!(
            ready(json!([{"type": "Ready", "status": "False"}]), Some("10.0.0.5")),
            None
        );
    }
}
