//! How the docklet of OUR MODEL OF KUBERNETES (test-only) turns a Pod's spec into Docker
//! objects: volumes (Docker volumes for emptyDirs and claims, files under the state directory
//! for ConfigMaps and Secrets, binds for hostPaths), the environment with `valueFrom` and
//! `envFrom` resolved from the store, and the `docker create` arguments (command and args,
//! mounts, user, capabilities, seccomp, memory and CPU limits). Async only where it runs
//! `docker`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::{json, Value};

use crate::docklet::{docker, docker_name, kind, Docklet, LABEL};

/// A Kubernetes quantity (`512Mi`, `1G`, `500m`, `2`) as a number.
pub(crate) fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    num.parse::<f64>().ok().map(|n| n * factor)
}

/// Why a pod cannot go on yet (`Retry`: a missing ConfigMap, Secret or claim, which may
/// appear), or at all.
pub(crate) enum Blocked {
    Retry(String),
    Fatal(String),
}

/// Where a volume comes from.
#[derive(Clone)]
pub(crate) enum Source {
    Bind(PathBuf),
    Volume(String),
}

impl Docklet {
    /// Makes the pod's volumes: Docker volumes for emptyDirs and claims, files for
    /// ConfigMaps and Secrets, binds for hostPaths.
    pub(crate) async fn volumes(
        &self,
        ns: &str,
        uid: &str,
        spec: &PodSpec,
    ) -> Result<HashMap<String, Source>, Blocked> {
        let mut out = HashMap::new();
        for v in spec.volumes.iter().flatten() {
            let source = if let Some(e) = &v.empty_dir {
                let name = docker_name(&[&self.label, uid, &v.name]);
                let mut args = vec!["volume".to_owned(), "create".into()];
                args.extend(self.labels(uid));
                if e.medium.as_deref() == Some("Memory") {
                    args.extend([
                        "--opt".into(),
                        "type=tmpfs".into(),
                        "--opt".into(),
                        "device=tmpfs".into(),
                    ]);
                }
                args.push(name.clone());
                docker(&args).await.map_err(Blocked::Fatal)?;
                Source::Volume(name)
            } else if let Some(cm) = &v.config_map {
                let dir = self.state_dir.join(uid).join(&v.name);
                let obj = match self.store.get(kind("configmaps"), ns, &cm.name) {
                    Ok(obj) => obj,
                    Err(_) if cm.optional == Some(true) => json!({}),
                    Err(e) => {
                        return Err(Blocked::Retry(format!(
                            "MountVolume.SetUp failed for volume {:?}: {}",
                            v.name, e.message
                        )))
                    }
                };
                let mut files: Vec<(String, Vec<u8>)> = Vec::new();
                for (k, val) in obj.get("data").and_then(Value::as_object).into_iter().flatten() {
                    files.push((k.clone(), val.as_str().unwrap_or_default().as_bytes().to_vec()));
                }
                for (k, val) in obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(val.as_str().unwrap_or_default())
                        .unwrap_or_default();
                    files.push((k.clone(), bytes));
                }
                write_files(&dir, files, cm.items.as_deref(), cm.default_mode).map_err(Blocked::Fatal)?;
                Source::Bind(dir)
            } else if let Some(s) = &v.secret {
                let dir = self.state_dir.join(uid).join(&v.name);
                let secret = s.secret_name.clone().unwrap_or_default();
                let obj = match self.store.get(kind("secrets"), ns, &secret) {
                    Ok(obj) => obj,
                    Err(_) if s.optional == Some(true) => json!({}),
                    Err(e) => {
                        return Err(Blocked::Retry(format!(
                            "MountVolume.SetUp failed for volume {:?}: {}",
                            v.name, e.message
                        )))
                    }
                };
                let files = secret_data(&obj).into_iter().collect();
                write_files(&dir, files, s.items.as_deref(), s.default_mode).map_err(Blocked::Fatal)?;
                Source::Bind(dir)
            } else if let Some(h) = &v.host_path {
                if matches!(h.type_.as_deref(), Some("DirectoryOrCreate")) {
                    std::fs::create_dir_all(&h.path)
                        .map_err(|e| Blocked::Fatal(format!("hostPath {}: {e}", h.path)))?;
                }
                Source::Bind(PathBuf::from(&h.path))
            } else if let Some(claim) = &v.persistent_volume_claim {
                if let Err(e) = self
                    .store
                    .get(kind("persistentvolumeclaims"), ns, &claim.claim_name)
                {
                    return Err(Blocked::Retry(e.message));
                }
                let name = self.claim_volume(ns, &claim.claim_name);
                let mut args = vec![
                    "volume".to_owned(),
                    "create".into(),
                    "--label".into(),
                    format!("{LABEL}={}", self.label),
                    name.clone(),
                ];
                args.insert(2, "--label".into());
                args.insert(3, format!("fake-kube.claim={ns}.{}", claim.claim_name));
                docker(&args).await.map_err(Blocked::Fatal)?;
                Source::Volume(name)
            } else {
                return Err(Blocked::Fatal(format!("volume {:?}: the fake supports emptyDir, configMap, secret, hostPath and persistentVolumeClaim only", v.name)));
            };
            out.insert(v.name.clone(), source);
        }
        Ok(out)
    }

    /// The container's environment, with `valueFrom` and `envFrom` resolved.
    fn env(&self, pod: &Value, c: &Container) -> Result<Vec<(String, String)>, String> {
        let ns = pod
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut env = Vec::new();
        let config_map = |name: &str| {
            self.store
                .get(kind("configmaps"), ns, name)
                .map_err(|e| e.message)
        };
        let secret = |name: &str| self.store.get(kind("secrets"), ns, name).map_err(|e| e.message);
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref {
                match config_map(&r.name) {
                    Ok(cm) => {
                        for (k, v) in cm.get("data").and_then(Value::as_object).into_iter().flatten() {
                            env.push((format!("{prefix}{k}"), v.as_str().unwrap_or_default().to_owned()));
                        }
                    }
                    Err(e) if r.optional != Some(true) => return Err(e),
                    Err(_) => {}
                }
            }
            if let Some(r) = &from.secret_ref {
                match secret(&r.name) {
                    Ok(s) => {
                        for (k, v) in secret_data(&s) {
                            env.push((format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned()));
                        }
                    }
                    Err(e) if r.optional != Some(true) => return Err(e),
                    Err(_) => {}
                }
            }
        }
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(from)) => {
                    if let Some(r) = &from.secret_key_ref {
                        match secret(&r.name) {
                            Ok(s) => match secret_data(&s).remove(&r.key) {
                                Some(v) => Some(String::from_utf8_lossy(&v).into_owned()),
                                None if r.optional == Some(true) => None,
                                None => {
                                    return Err(format!(
                                        "couldn't find key {} in Secret {ns}/{}",
                                        r.key, r.name
                                    ))
                                }
                            },
                            Err(_) if r.optional == Some(true) => None,
                            Err(e) => return Err(e),
                        }
                    } else if let Some(r) = &from.config_map_key_ref {
                        match config_map(&r.name) {
                            Ok(cm) => match cm.pointer(&format!("/data/{}", r.key)).and_then(Value::as_str) {
                                Some(v) => Some(v.to_owned()),
                                None if r.optional == Some(true) => None,
                                None => {
                                    return Err(format!(
                                        "couldn't find key {} in ConfigMap {ns}/{}",
                                        r.key, r.name
                                    ))
                                }
                            },
                            Err(_) if r.optional == Some(true) => None,
                            Err(e) => return Err(e),
                        }
                    } else if let Some(f) = &from.field_ref {
                        let path = f.field_path.as_str();
                        let meta = |k: &str| {
                            pod.pointer(&format!("/metadata/{k}"))
                                .and_then(Value::as_str)
                                .map(str::to_owned)
                        };
                        match path {
                            "metadata.name" | "metadata.namespace" | "metadata.uid" => meta(&path[9..]),
                            "spec.nodeName" => Some("fake-kube".into()),
                            "status.hostIP" => Some("127.0.0.1".into()),
                            _ => return Err(format!("the fake cannot resolve fieldRef {path:?}")),
                        }
                    } else {
                        return Err(format!(
                            "env {:?}: the fake resolves secretKeyRef, configMapKeyRef and fieldRef only",
                            e.name
                        ));
                    }
                }
                (None, None) => Some(String::new()),
            };
            if let Some(v) = value {
                env.push((e.name.clone(), v));
            }
        }
        Ok(env)
    }

    /// `docker create` for one container; its id, or the waiting reason and message.
    pub(crate) async fn create(
        &self,
        pod: &Value,
        spec: &PodSpec,
        c: &Container,
        volumes: &HashMap<String, Source>,
        network_of: Option<&str>,
    ) -> Result<String, (&'static str, String)> {
        let meta = |f: &str| {
            pod.pointer(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (name, uid) = (meta("name"), meta("uid"));
        let image = c.image.clone().unwrap_or_default();
        if docker(["image", "inspect", "-f", "{{.Id}}", image.as_str()])
            .await
            .is_err()
        {
            return Err((
                "ErrImagePull",
                format!("image {image:?} is not present locally (the fake apiserver never pulls)"),
            ));
        }
        let env = self.env(pod, c).map_err(|e| ("CreateContainerConfigError", e))?;
        let cname = self.container_name(&name, &uid, &c.name);
        let mut args: Vec<String> = vec!["create".into(), "--name".into(), cname.clone()];
        args.extend(self.labels(&uid));
        args.extend([
            "--label".into(),
            format!("fake-kube.pod={}/{name}", meta("namespace")),
            "--label".into(),
            format!("fake-kube.container={}", c.name),
        ]);
        match network_of {
            Some(first) => args.extend(["--network".into(), format!("container:{first}")]),
            None => args.extend(["--hostname".into(), name.chars().take(63).collect()]),
        }
        // The env through a file (0600, removed after the create): values never appear in
        // a process list, and the docker CLI's own environment stays its own.
        let env_file = self.state_dir.join(&uid).join(format!("{}.env", c.name));
        let mut text = String::new();
        for (k, v) in &env {
            if v.contains('\n') || k.contains('=') {
                return Err((
                    "CreateContainerConfigError",
                    format!("env {k:?}: the fake cannot pass a value with a newline"),
                ));
            }
            text.push_str(&format!("{k}={v}\n"));
        }
        write_private(&env_file, text.as_bytes()).map_err(|e| ("CreateContainerConfigError", e))?;
        args.extend(["--env-file".into(), env_file.display().to_string()]);
        for m in c.volume_mounts.iter().flatten() {
            let ro = if m.read_only == Some(true) {
                ",readonly"
            } else {
                ""
            };
            let sub = m.sub_path.clone().filter(|s| !s.is_empty());
            let mount = match volumes.get(&m.name) {
                Some(Source::Bind(dir)) => {
                    let src = sub.map_or(dir.clone(), |s| dir.join(s));
                    format!("type=bind,src={},dst={}{ro}", src.display(), m.mount_path)
                }
                Some(Source::Volume(v)) => {
                    let sub = sub.map(|s| format!(",volume-subpath={s}")).unwrap_or_default();
                    format!("type=volume,src={v},dst={}{sub}{ro}", m.mount_path)
                }
                None => {
                    return Err((
                        "CreateContainerConfigError",
                        format!("volumeMount {:?} names no volume", m.name),
                    ))
                }
            };
            args.extend(["--mount".into(), mount]);
        }
        if let Some(dir) = &c.working_dir {
            args.extend(["--workdir".into(), dir.clone()]);
        }
        let sc = c.security_context.clone().unwrap_or_default();
        let psc = spec.security_context.clone().unwrap_or_default();
        if let Some(user) = sc.run_as_user.or(psc.run_as_user) {
            let group = sc
                .run_as_group
                .or(psc.run_as_group)
                .map(|g| format!(":{g}"))
                .unwrap_or_default();
            args.extend(["--user".into(), format!("{user}{group}")]);
        }
        for cap in sc.capabilities.iter().flat_map(|c| c.add.iter().flatten()) {
            args.extend(["--cap-add".into(), cap.clone()]);
        }
        for cap in sc.capabilities.iter().flat_map(|c| c.drop.iter().flatten()) {
            args.extend(["--cap-drop".into(), cap.clone()]);
        }
        if sc.privileged == Some(true) {
            args.push("--privileged".into());
        }
        if sc.allow_privilege_escalation == Some(false) {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        if sc.read_only_root_filesystem == Some(true) {
            args.push("--read-only".into());
        }
        let seccomp = sc.seccomp_profile.or(psc.seccomp_profile).map(|p| p.type_);
        if seccomp.as_deref() == Some("Unconfined") {
            args.extend(["--security-opt".into(), "seccomp=unconfined".into()]);
        }
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        if let Some(bytes) = limits.get("memory").and_then(|q| quantity(&q.0)) {
            args.extend(["--memory".into(), format!("{}", bytes as u64)]);
        }
        if let Some(cpus) = limits.get("cpu").and_then(|q| quantity(&q.0)) {
            args.extend(["--cpus".into(), format!("{cpus}")]);
        }
        // Kubernetes' command replaces the image's entrypoint, args its cmd; docker takes
        // one program as --entrypoint, so the rest of the command leads the cmd.
        let command = c.command.clone().unwrap_or_default();
        if let Some((program, _)) = command.split_first() {
            args.extend(["--entrypoint".into(), program.clone()]);
        }
        args.push(image);
        args.extend(command.iter().skip(1).cloned());
        args.extend(c.args.iter().flatten().cloned());
        let created = docker(&args).await;
        let _ = std::fs::remove_file(&env_file);
        created.map_err(|e| ("CreateContainerError", e))
    }
}

/// A Secret's `data` (base64) and `stringData`, decoded.
fn secret_data(secret: &Value) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for (k, v) in secret
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .unwrap_or_default();
        out.insert(k.clone(), bytes);
    }
    for (k, v) in secret
        .get("stringData")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        out.insert(k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec());
    }
    out
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A ConfigMap or Secret volume's files: every key (or only `items`, at their paths), with
/// the item's mode or the volume's `defaultMode` (0644).
fn write_files(
    dir: &Path,
    files: Vec<(String, Vec<u8>)>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    let default_mode = default_mode.unwrap_or(0o644) as u32;
    let files: HashMap<String, Vec<u8>> = files.into_iter().collect();
    let mut chosen: Vec<(String, &[u8], u32)> = Vec::new();
    match items {
        Some(items) => {
            for item in items {
                let bytes = files
                    .get(&item.key)
                    .ok_or_else(|| format!("key {:?} is not in the volume's source", item.key))?;
                if item.path.starts_with('/') || item.path.split('/').any(|p| p == "..") {
                    return Err(format!(
                        "item path {:?} must be relative without \"..\"",
                        item.path
                    ));
                }
                chosen.push((
                    item.path.clone(),
                    bytes,
                    item.mode.map_or(default_mode, |m| m as u32),
                ));
            }
        }
        None => chosen.extend(files.iter().map(|(k, v)| (k.clone(), v.as_slice(), default_mode))),
    }
    for (rel, bytes, mode) in chosen {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
