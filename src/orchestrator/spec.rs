//! Turns a `CreateSandboxRequest` into a [`Plan`] any runtime can carry out, or an error
//! naming the offending field. Pure: no I/O and no runtime's syntax (volumes are
//! [`Mount`]s), so every rule is unit-tested here.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::error::Error;
use super::runtime::{Gpus, Mount, RegistryAuth, Resources, SpecFile, Workspace, WORKSPACE_DIR};
use crate::wire::lifecycle::{
    CreateSandboxRequest, PausePolicy, PlatformSpec, PreStartHook, WorkspaceSpec, LIFECYCLE_ENV,
};
use crate::wire::templates::ReadinessProbe;

/// The extension that asks for isolated sessions inside the sandbox.
pub const ISOLATION_EXTENSION: &str = "bootstrap.execd.isolation";
/// The extension that, `"false"`, creates the sandbox without starting it (design §15).
pub const AUTO_START_EXTENSION: &str = "sandboxd.autoStart";
/// Label and metadata prefixes reserved for sandboxd itself (upstream's, and its own).
const RESERVED_PREFIXES: [&str; 2] = ["opensandbox.io/", "sandboxd.io/"];
/// At most this many volumes.
const MAX_VOLUMES: usize = 32;
/// The longest a pre-start hook may run (upstream's limit: 3 hours).
const MAX_PRE_START_SECONDS: u64 = 10_800;

/// A validated create request.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Display name.
    pub name: Option<String>,
    /// Image reference.
    pub image: String,
    /// The image's registry credentials (`image.auth`), for this create only.
    pub image_auth: Option<RegistryAuth>,
    /// Entrypoint argv.
    pub entrypoint: Vec<String>,
    /// Seconds to live; `None` for manual cleanup.
    pub timeout: Option<u64>,
    /// Resource limits; `pids` is 0 when the request set none (the service's default then).
    pub resources: Resources,
    /// The same limits as given, for the sandbox's view.
    pub resource_limits: BTreeMap<String, String>,
    /// Environment, null entries dropped.
    pub env: BTreeMap<String, String>,
    /// User labels.
    pub metadata: BTreeMap<String, String>,
    /// Extensions as given.
    pub extensions: BTreeMap<String, String>,
    /// Whether isolated sessions were asked for.
    pub isolation: bool,
    /// Volumes, in request order.
    pub mounts: Vec<Mount>,
    /// Echo of the platform.
    pub platform: Option<PlatformSpec>,
    /// Files to write before start (from a template).
    pub files: Vec<SpecFile>,
    /// A command execd runs before the entrypoint (`lifecycle.preStart`, or a template's
    /// `startupScript`).
    pub pre_start: Option<PreStart>,
    /// A check that gates `Running` (from a template).
    pub readiness: Option<ReadinessProbe>,
    /// The snapshot whose image `image` is (set by the service, which resolves `snapshotId`).
    pub snapshot_id: Option<String>,
    /// How the sandbox pauses.
    pub pause_policy: PausePolicy,
    /// Whether the sandbox starts at create (else at `POST /sandboxes/{id}/start`).
    pub auto_start: bool,
    /// A persistent workspace at `/workspace` (`workspace.persistent`).
    pub workspace: Option<Workspace>,
}

/// `lifecycle.preStart`: argv without a shell, and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreStart {
    /// argv.
    pub command: Vec<String>,
    /// Seconds (1–10800, default 60).
    pub timeout_seconds: u64,
}

impl PreStart {
    /// The hook as execd reads it from `OPENSANDBOX_LIFECYCLE`.
    pub fn hook(&self) -> PreStartHook {
        PreStartHook {
            command: self.command.clone(),
            timeout_seconds: Some(self.timeout_seconds),
        }
    }
}

/// Limits that validation enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest timeout, seconds.
    pub max_timeout: u64,
    /// Host directories host volumes may come from.
    pub allowed_host_paths: Vec<PathBuf>,
}

/// Validates `req`, whose `snapshotId`, if it had one, the service has already turned into
/// the snapshot's image (and [`Plan::snapshot_id`] is set after).
pub fn plan(req: CreateSandboxRequest, limits: &Limits) -> Result<Plan, Error> {
    if req.snapshot_id.is_some() {
        return Err(Error::invalid(if req.image.is_some() {
            "image and snapshotId are mutually exclusive"
        } else {
            "snapshotId must be resolved to its snapshot's image before planning"
        }));
    }
    if req.template_id.is_some() {
        return Err(Error::UnsupportedField(
            "templateId: templates need the Kubernetes runtime".into(),
        ));
    }
    for (set, field) in [
        (
            req.network_policy.as_ref().is_some_and(|v| !v.is_null()),
            "networkPolicy",
        ),
        (
            req.credential_proxy.as_ref().is_some_and(|v| !v.is_null()),
            "credentialProxy",
        ),
        (req.secure_access == Some(true), "secureAccess"),
    ] {
        if set {
            return Err(Error::UnsupportedField(format!(
                "{field} is not supported by the Docker runtime"
            )));
        }
    }
    let pre_start = match req.lifecycle.filter(|v| !v.is_null()) {
        Some(lifecycle) => pre_start(lifecycle)?,
        None => None,
    };
    let image = req.image.ok_or_else(|| Error::invalid("image is required"))?;
    let image_auth = image.auth.map(image_auth).transpose()?.flatten();
    let image = image.uri.trim().to_owned();
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid("image.uri must be a non-empty image reference"));
    }
    let entrypoint = req
        .entrypoint
        .ok_or_else(|| Error::invalid("entrypoint is required with image"))?;
    if entrypoint.first().is_none_or(|e| e.is_empty()) {
        return Err(Error::invalid("entrypoint must name a program"));
    }
    if entrypoint.iter().any(|a| a.contains('\0')) {
        return Err(Error::invalid("entrypoint must not contain NUL bytes"));
    }
    if let Some(p) = &req.platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        if p.os != "linux" || p.arch != arch {
            return Err(Error::UnsupportedField(format!(
                "platform {}/{}: this host runs linux/{arch}",
                p.os, p.arch
            )));
        }
    }
    let timeout = timeout(req.timeout.as_ref(), limits.max_timeout)?;
    let (resources, resource_limits) = resource_limits(req.resource_limits.unwrap_or_default())?;
    let name = req.name.map(|n| check_name(&n).map(|()| n)).transpose()?;
    let mut env = BTreeMap::new();
    for (k, v) in req.env.unwrap_or_default() {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(Error::invalid(format!("env: invalid variable name {k:?}")));
        }
        if let Some(v) = v {
            if v.contains('\0') {
                return Err(Error::invalid(format!("env: {k} contains a NUL byte")));
            }
            env.insert(k, v);
        }
    }
    if env.contains_key(LIFECYCLE_ENV) {
        return Err(Error::invalid(format!(
            "env: {LIFECYCLE_ENV} is set by sandboxd from lifecycle; use lifecycle.preStart"
        )));
    }
    let metadata = req.metadata.unwrap_or_default();
    for (k, v) in &metadata {
        check_label(k, v)?;
    }
    let extensions = req.extensions.unwrap_or_default();
    let isolation = match extensions.get(ISOLATION_EXTENSION).map(String::as_str) {
        None | Some("disable" | "disabled" | "false") => false,
        Some("enable" | "enabled" | "true") => true,
        Some(other) => {
            return Err(Error::invalid(format!(
                "extensions.{ISOLATION_EXTENSION}: expected \"enable\" or \"disable\", got {other:?}"
            )))
        }
    };
    let auto_start = match extensions.get(AUTO_START_EXTENSION).map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(Error::invalid(format!(
                "extensions.{AUTO_START_EXTENSION}: expected \"true\" or \"false\", got {other:?}"
            )))
        }
    };
    let mounts = volumes(req.volumes.unwrap_or_default(), limits)?;
    let workspace = workspace(req.workspace, &mounts)?;
    Ok(Plan {
        name,
        image,
        image_auth,
        entrypoint,
        timeout,
        resource_limits,
        resources,
        env,
        metadata,
        extensions,
        isolation,
        mounts,
        platform: req.platform,
        files: Vec::new(),
        pre_start,
        readiness: None,
        snapshot_id: None,
        pause_policy: req.pause_policy.unwrap_or_default(),
        auto_start,
        workspace,
    })
}

/// The smallest persistent workspace that may be asked for.
const MIN_WORKSPACE_BYTES: i64 = 1024 * 1024;

/// `workspace`: `None` unless `persistent`; a `size` is a quantity of at least 1Mi, and only
/// with `persistent`; no volume of the request may take `/workspace` itself.
fn workspace(spec: Option<WorkspaceSpec>, mounts: &[Mount]) -> Result<Option<Workspace>, Error> {
    let Some(spec) = spec else { return Ok(None) };
    if !spec.persistent {
        return match spec.size {
            Some(_) => Err(Error::invalid("workspace.size needs workspace.persistent: true")),
            None => Ok(None),
        };
    }
    let size_bytes = match spec.size.as_deref().map(str::trim) {
        None => None,
        Some(text) => {
            let bytes = parse_bytes(text).ok_or_else(|| {
                Error::invalid(format!(
                    "workspace.size: invalid quantity {text:?} (expected e.g. \"10Gi\")"
                ))
            })?;
            if bytes < MIN_WORKSPACE_BYTES {
                return Err(Error::invalid(format!("workspace.size: {text} is below 1Mi")));
            }
            Some(bytes)
        }
    };
    let taken = mounts.iter().any(|m| {
        let path = match m {
            Mount::HostPath { mount_path, .. } | Mount::Volume { mount_path, .. } => mount_path,
        };
        Path::new(path) == Path::new(WORKSPACE_DIR)
    });
    if taken {
        return Err(Error::invalid(format!(
            "volumes: {WORKSPACE_DIR} is the persistent workspace's; mount the volume elsewhere or drop workspace.persistent"
        )));
    }
    Ok(Some(Workspace { size_bytes }))
}

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// A display name: 1–128 printable characters (no control characters), not blank.
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() {
        return Err(Error::invalid("name must not be blank"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::invalid(format!(
            "name: longer than {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("name must not contain control characters"));
    }
    Ok(())
}

/// `lifecycle`: only `preStart` (`{command: [argv], timeoutSeconds?}`), every key known.
/// `periodic` hooks are refused by name: execd does not run them.
fn pre_start(lifecycle: serde_json::Value) -> Result<Option<PreStart>, Error> {
    let serde_json::Value::Object(fields) = lifecycle else {
        return Err(Error::invalid("lifecycle must be an object"));
    };
    let mut hook = None;
    for (key, value) in fields {
        match key.as_str() {
            "preStart" | "pre_start" => hook = Some(value),
            "periodic" if value.is_null() => {}
            "periodic" => {
                return Err(Error::UnsupportedField(
                    "lifecycle.periodic: periodic hooks are not supported".into(),
                ))
            }
            other => return Err(Error::invalid(format!("lifecycle.{other}: unknown field"))),
        }
    }
    let Some(hook) = hook.filter(|h| !h.is_null()) else {
        return Ok(None);
    };
    let serde_json::Value::Object(fields) = hook else {
        return Err(Error::invalid("lifecycle.preStart must be an object"));
    };
    let (mut command, mut timeout) = (None, None);
    for (key, value) in fields {
        match key.as_str() {
            "command" => command = Some(value),
            "timeoutSeconds" | "timeout_seconds" => timeout = Some(value),
            other => {
                return Err(Error::invalid(format!(
                    "lifecycle.preStart.{other}: unknown field"
                )))
            }
        }
    }
    let command: Vec<String> = command
        .and_then(|c| serde_json::from_value(c).ok())
        .ok_or_else(|| Error::invalid("lifecycle.preStart.command must be an array of strings"))?;
    if command.first().is_none_or(|c| c.is_empty()) {
        return Err(Error::invalid("lifecycle.preStart.command must name a program"));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err(Error::invalid(
            "lifecycle.preStart.command must not contain NUL bytes",
        ));
    }
    let timeout_seconds = match timeout.filter(|t| !t.is_null()) {
        None => PreStartHook::DEFAULT_TIMEOUT_SECONDS,
        Some(t) => t
            .as_u64()
            .filter(|t| (1..=MAX_PRE_START_SECONDS).contains(t))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "lifecycle.preStart.timeoutSeconds must be an integer from 1 to {MAX_PRE_START_SECONDS}, got {t}"
                ))
            })?,
    };
    Ok(Some(PreStart {
        command,
        timeout_seconds,
    }))
}

/// `timeout`: whole seconds from 60 to `max`; null or absent is manual cleanup.
pub fn timeout(value: Option<&serde_json::Value>, max: u64) -> Result<Option<u64>, Error> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let secs = value
        .as_u64()
        .or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        })
        .ok_or_else(|| {
            Error::invalid(format!(
                "timeout must be an integer number of seconds, got {value}"
            ))
        })?;
    if secs < 60 {
        return Err(Error::invalid(format!(
            "timeout must be at least 60 seconds, got {secs}"
        )));
    }
    if secs > max {
        return Err(Error::invalid(format!(
            "timeout must be at most {max} seconds, got {secs}"
        )));
    }
    Ok(Some(secs))
}

/// Checks `resourceLimits`-style quantities (a template's `resources`).
pub fn check_resource_limits(limits: BTreeMap<String, serde_json::Value>) -> Result<(), Error> {
    resource_limits(limits).map(drop)
}

/// Limits to apply to a running sandbox, and each as given.
pub type LiveLimits = (Resources, BTreeMap<String, String>);

/// A `resourceLimits` override applied to a running sandbox (a pool acquire's): the limits
/// as numbers (a pids limit of 0: unchanged), and each as given (trimmed text). Bad values are
/// 400s, as at create.
pub fn live_limits(limits: BTreeMap<String, serde_json::Value>) -> Result<LiveLimits, Error> {
    let (resources, given) = resource_limits(limits)?;
    for (set, key) in [
        (resources.gpu.is_some(), "gpu"),
        (resources.disk.is_some(), "disk"),
    ] {
        if set {
            return Err(Error::UnsupportedField(format!(
                "resourceLimits.{key}: cannot be changed on a running sandbox"
            )));
        }
    }
    Ok((resources, given))
}

/// `image.auth`: `{username, password}` (upstream's shape), both non-empty strings; `null` is
/// none. The message never holds what was given.
fn image_auth(auth: serde_json::Value) -> Result<Option<RegistryAuth>, Error> {
    let fields = match auth {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(fields) => fields,
        _ => {
            return Err(Error::invalid(
                "image.auth must be an object {username, password}",
            ))
        }
    };
    if let Some(other) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "username" | "password"))
    {
        return Err(Error::invalid(format!(
            "image.auth.{other}: unknown field (expected username and password)"
        )));
    }
    let field = |key: &str| match fields.get(key) {
        Some(serde_json::Value::String(v)) if !v.is_empty() && !v.contains(['\0', '\n', '\r']) => {
            Ok(v.clone())
        }
        _ => Err(Error::invalid(format!(
            "image.auth.{key} must be a non-empty string without NUL or line breaks"
        ))),
    };
    Ok(Some(RegistryAuth {
        username: field("username")?,
        password: field("password")?,
    }))
}

/// `resourceLimits` → [`Resources`] (a pids limit of 0 when none was given), and each limit
/// as given (trimmed text).
type Limited = (Resources, BTreeMap<String, String>);

fn resource_limits(limits: BTreeMap<String, serde_json::Value>) -> Result<Limited, Error> {
    let mut resources = Resources::default();
    let mut given = BTreeMap::new();
    for (key, value) in limits {
        let text = match &value {
            serde_json::Value::String(s) => s.trim().to_owned(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Null => continue,
            other => {
                return Err(Error::invalid(format!(
                    "resourceLimits.{key}: expected a quantity, got {other}"
                )))
            }
        };
        let bad = || Error::invalid(format!("resourceLimits.{key}: invalid quantity {text:?}"));
        match key.as_str() {
            "cpu" => {
                let nano = parse_cpu(&text).ok_or_else(bad)?;
                if nano < 10_000_000 {
                    return Err(Error::invalid(format!("resourceLimits.cpu: {text} is below 10m")));
                }
                resources.nano_cpus = Some(nano);
            }
            "memory" => {
                let bytes = parse_bytes(&text).ok_or_else(bad)?;
                if bytes < 6 * 1024 * 1024 {
                    return Err(Error::invalid(format!(
                        "resourceLimits.memory: {text} is below Docker's 6Mi minimum"
                    )));
                }
                resources.memory = Some(bytes);
            }
            "pids" => resources.pids = text.parse::<i64>().ok().filter(|&p| p > 0).ok_or_else(bad)?,
            // Whether the runtime offers GPUs (and "all") is the service's to check.
            "gpu" => {
                resources.gpu = Some(match text.as_str() {
                    "all" => Gpus::All,
                    count => Gpus::Count(count.parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| {
                        Error::invalid(format!(
                            "resourceLimits.gpu: expected a whole number of GPUs (at least 1) or \"all\", got {text:?}"
                        ))
                    })?),
                })
            }
            "disk" => resources.disk = Some(parse_bytes(&text).ok_or_else(bad)?),
            other => {
                return Err(Error::invalid(format!(
                    "resourceLimits.{other}: unknown resource (expected cpu, memory, pids, gpu or disk)"
                )))
            }
        }
        given.insert(key, text);
    }
    Ok((resources, given))
}

/// `500m`, `1`, `0.5`, `2` → billionths of a CPU.
fn parse_cpu(text: &str) -> Option<i64> {
    if let Some(milli) = text.strip_suffix('m') {
        return milli
            .parse::<i64>()
            .ok()
            .filter(|&m| m > 0)
            .and_then(|m| m.checked_mul(1_000_000));
    }
    let cpus: f64 = text.parse().ok().filter(|c: &f64| c.is_finite() && *c > 0.0)?;
    Some((cpus * 1e9).round() as i64)
}

/// `512Mi`, `2Gi`, `64M`, `1G`, `1048576`, `1.5Gi` → bytes.
fn parse_bytes(text: &str) -> Option<i64> {
    const UNITS: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("KB", 1e3),
        ("MB", 1e6),
        ("GB", 1e9),
    ];
    let (number, factor) = UNITS
        .iter()
        .rev()
        .find_map(|(suffix, f)| text.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((text, 1.0));
    let n: f64 = number.parse().ok().filter(|n: &f64| n.is_finite() && *n > 0.0)?;
    let bytes = n * factor;
    (bytes < i64::MAX as f64).then_some(bytes as i64)
}

/// A sandbox port: `1`..`65535`, digits only.
pub fn parse_port(text: &str) -> Result<u16, Error> {
    text.parse::<u16>()
        .ok()
        .filter(|&p| p != 0 && text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| Error::invalid(format!("port must be a number from 1 to 65535, got {text:?}")))
}

/// An `X-Business-Domain`: 1–63 of `a-z 0-9 -`.
pub fn business_domain(value: &str) -> Result<String, Error> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(format!(
            "X-Business-Domain {value:?} must be 1 to 63 of a-z, 0-9 and -"
        )))
    }
}

/// A Kubernetes label: `[prefix/]name` where name is ≤ 63 of `[A-Za-z0-9._-]` starting and
/// ending alphanumeric and the prefix a DNS subdomain; the value ≤ 63 of the same alphabet (or
/// empty). The `opensandbox.io/` prefix is sandboxd's own.
pub fn check_label(key: &str, value: &str) -> Result<(), Error> {
    if let Some(prefix) = RESERVED_PREFIXES.iter().find(|p| key.starts_with(*p)) {
        return Err(Error::invalid(format!(
            "metadata key {key:?}: the {prefix} prefix is reserved"
        )));
    }
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let dns_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    };
    if !prefix.is_none_or(dns_ok) || !label_word(name) || name.is_empty() {
        return Err(Error::invalid(format!(
            "metadata key {key:?} is not a valid label key ([prefix/]name, name ≤ 63 of A-Z a-z 0-9 . _ -)"
        )));
    }
    if !(value.is_empty() || label_word(value)) {
        return Err(Error::invalid(format!(
            "metadata value {value:?} of {key:?} is not a valid label value (≤ 63 of A-Z a-z 0-9 . _ -)"
        )));
    }
    Ok(())
}

fn label_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// An absolute path without `.`/`..` components or empty segments.
fn clean_absolute(path: &str) -> bool {
    let p = Path::new(path);
    p.is_absolute()
        && !path.contains("//")
        && !path.contains('\0')
        && !path.contains(':')
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// A relative path inside a volume, without `..`.
fn clean_relative(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && !path.contains('\0')
        && !path.contains(':')
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn volumes(volumes: Vec<crate::wire::lifecycle::Volume>, limits: &Limits) -> Result<Vec<Mount>, Error> {
    if volumes.len() > MAX_VOLUMES {
        return Err(Error::invalid(format!(
            "at most {MAX_VOLUMES} volumes, got {}",
            volumes.len()
        )));
    }
    let mut mounts = Vec::with_capacity(volumes.len());
    let mut seen = std::collections::BTreeSet::new();
    for v in volumes {
        let label = format!("volumes[{}]", v.name);
        if !label_word(&v.name) || v.name.contains(['_', '.']) || v.name != v.name.to_ascii_lowercase() {
            return Err(Error::invalid(format!("{label}: name must be a DNS label")));
        }
        if !clean_absolute(&v.mount_path) || v.mount_path == "/" {
            return Err(Error::invalid(format!(
                "{label}: mountPath {:?} must be a clean absolute path other than /",
                v.mount_path
            )));
        }
        if !seen.insert(v.mount_path.clone()) {
            return Err(Error::invalid(format!(
                "{label}: mountPath {} is used twice",
                v.mount_path
            )));
        }
        if let Some(sub) = &v.sub_path {
            if !clean_relative(sub) {
                return Err(Error::invalid(format!(
                    "{label}: subPath {sub:?} must be a relative path without .."
                )));
            }
        }
        match (&v.host, &v.pvc, &v.ossfs) {
            (Some(host), None, None) => {
                if !clean_absolute(&host.path) {
                    return Err(Error::invalid(format!(
                        "{label}: host.path {:?} must be a clean absolute path",
                        host.path
                    )));
                }
                let mut src = PathBuf::from(&host.path);
                if let Some(sub) = &v.sub_path {
                    src.push(sub);
                }
                if !limits
                    .allowed_host_paths
                    .iter()
                    .any(|allowed| src.starts_with(allowed))
                {
                    return Err(Error::HostPathNotAllowed(format!(
                        "{label}: host path {} is not under an allowed prefix (sandboxd --allow-host-path)",
                        src.display()
                    )));
                }
                mounts.push(Mount::HostPath {
                    path: src.display().to_string(),
                    mount_path: v.mount_path.clone(),
                    read_only: v.read_only,
                });
            }
            (None, Some(pvc), None) => {
                let name = &pvc.claim_name;
                let valid = !name.is_empty()
                    && name.len() <= 128
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                    && name.as_bytes()[0].is_ascii_alphanumeric();
                if !valid {
                    return Err(Error::invalid(format!(
                        "{label}: pvc.claimName {name:?} is not a valid volume name"
                    )));
                }
                mounts.push(Mount::Volume {
                    name: name.clone(),
                    sub_path: v.sub_path.clone(),
                    mount_path: v.mount_path.clone(),
                    read_only: v.read_only,
                });
            }
            (None, None, Some(_)) => {
                return Err(Error::UnsupportedField(format!(
                    "{label}: ossfs volumes are not supported"
                )))
            }
            _ => {
                return Err(Error::invalid(format!(
                    "{label}: exactly one of host, pvc or ossfs is required"
                )))
            }
        }
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Issue 20 (found by `fuzz/` target `sandbox_spec`): `"cpu": "99999999999999m"`
    /// overflowed `millis * 1_000_000` and panicked the create request; now a 400.
    #[test]
    fn issue20_cpu_millis_overflow_is_invalid() {
        let r = req(json!({"resourceLimits": {"cpu": "99999999999999m", "memory": "9e18"}}));
        assert!(matches!(plan(r, &limits()), Err(Error::Invalid(_))));
    }

    fn limits() -> Limits {
        Limits {
            max_timeout: 3600,
            allowed_host_paths: vec![PathBuf::from("/srv/data")],
        }
    }

    fn req(extra: serde_json::Value) -> CreateSandboxRequest {
        let mut base = json!({"image": {"uri": "python:3"}, "entrypoint": ["sleep", "infinity"]});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn err(extra: serde_json::Value) -> Error {
        plan(req(extra), &limits()).unwrap_err()
    }

    #[test]
    fn a_persistent_workspace_is_checked_and_sized() {
        let ws = |v: serde_json::Value| plan(req(json!({"workspace": v})), &limits()).map(|p| p.workspace);
        assert_eq!(
            ws(json!({"persistent": true})).unwrap(),
            Some(Workspace { size_bytes: None })
        );
        assert_eq!(
            ws(json!({"persistent": true, "size": " 10Gi "})).unwrap(),
            Some(Workspace {
                size_bytes: Some(10 << 30)
            })
        );
        assert_eq!(ws(json!({"persistent": false})).unwrap(), None);
        assert_eq!(ws(json!({})).unwrap(), None);
        assert_eq!(plan(req(json!({})), &limits()).unwrap().workspace, None);
        for (bad, says) in [
            (
                json!({"persistent": false, "size": "1Gi"}),
                "workspace.size needs workspace.persistent",
            ),
            (
                json!({"size": "1Gi"}),
                "workspace.size needs workspace.persistent",
            ),
            (
                json!({"persistent": true, "size": "lots"}),
                "workspace.size: invalid quantity \"lots\"",
            ),
            (
                json!({"persistent": true, "size": "-1Gi"}),
                "workspace.size: invalid quantity",
            ),
            (
                json!({"persistent": true, "size": "512Ki"}),
                "workspace.size: 512Ki is below 1Mi",
            ),
        ] {
            let e = ws(bad.clone()).unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{bad}: {e:?}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let e = err(json!({
            "workspace": {"persistent": true},
            "volumes": [{"name": "w", "pvc": {"claimName": "x"}, "mountPath": "/workspace/"}],
        }));
        assert!(
            e.to_string().contains("/workspace is the persistent workspace's"),
            "{e}"
        );
        // Without a persistent workspace a volume may take /workspace, as before.
        let p = plan(
            req(json!({"volumes": [{"name": "w", "pvc": {"claimName": "x"}, "mountPath": "/workspace"}]})),
            &limits(),
        )
        .unwrap();
        assert_eq!(p.workspace, None);
        // Unknown fields and wrong types are refused by the JSON extractor's catalogued 400.
        assert!(
            serde_json::from_value::<CreateSandboxRequest>(json!({"workspace": {"persistant": true}}))
                .is_err()
        );
        assert!(
            serde_json::from_value::<CreateSandboxRequest>(json!({"workspace": {"persistent": "yes"}}))
                .is_err()
        );
    }

    #[test]
    fn a_typical_sdk_request() {
        let p = plan(
            req(json!({
                "timeout": 600,
                "resourceLimits": {"cpu": "500m", "memory": "2Gi", "pids": "128"},
                "env": {"A": "1", "B": null},
                "metadata": {"team": "ml", "example.com/owner": "x_y"},
                "extensions": {"bootstrap.execd.isolation": "enable"},
                "volumes": [
                    {"name": "data", "host": {"path": "/srv/data"}, "mountPath": "/data", "readOnly": true, "subPath": "a"},
                    {"name": "cache", "pvc": {"claimName": "cache-1"}, "mountPath": "/cache"}
                ]
            })),
            &limits(),
        )
        .unwrap();
        assert_eq!(p.timeout, Some(600));
        assert_eq!(
            p.resources,
            Resources {
                memory: Some(2 << 30),
                nano_cpus: Some(500_000_000),
                pids: 128,
                ..Resources::default()
            }
        );
        assert_eq!(p.env.len(), 1);
        assert!(p.isolation);
        assert_eq!(
            p.mounts,
            [
                Mount::HostPath {
                    path: "/srv/data/a".into(),
                    mount_path: "/data".into(),
                    read_only: true
                },
                Mount::Volume {
                    name: "cache-1".into(),
                    sub_path: None,
                    mount_path: "/cache".into(),
                    read_only: false
                }
            ]
        );
        let manual = plan(req(json!({"timeout": null})), &limits()).unwrap();
        assert_eq!(manual.timeout, None);
    }

    #[test]
    fn lifecycle_pre_start_is_planned_with_its_timeout() {
        let p = plan(
            req(json!({"lifecycle": {"preStart": {"command": ["sh", "-c", "touch /ready"], "timeoutSeconds": 10800}}})),
            &limits(),
        )
        .unwrap();
        assert_eq!(
            p.pre_start,
            Some(PreStart {
                command: vec!["sh".into(), "-c".into(), "touch /ready".into()],
                timeout_seconds: 10800
            })
        );
        // The default timeout, the snake_case spellings, and nulls meaning absent.
        let p = plan(
            req(json!({"lifecycle": {"pre_start": {"command": ["true"], "timeout_seconds": null}, "periodic": null}})),
            &limits(),
        )
        .unwrap();
        assert_eq!(p.pre_start.map(|h| h.timeout_seconds), Some(60));
        for empty in [json!(null), json!({}), json!({"preStart": null})] {
            let p = plan(req(json!({ "lifecycle": empty })), &limits()).unwrap();
            assert_eq!(p.pre_start, None, "{empty}");
        }
        // What execd reads: upstream's camelCase shape.
        let hook = PreStart {
            command: vec!["true".into()],
            timeout_seconds: 5,
        }
        .hook();
        assert_eq!(
            serde_json::to_value(crate::wire::lifecycle::Lifecycle {
                pre_start: Some(hook)
            })
            .unwrap(),
            json!({"preStart": {"command": ["true"], "timeoutSeconds": 5}})
        );
    }

    #[test]
    fn bad_lifecycle_input_names_the_field() {
        let cases = [
            (json!({"lifecycle": "sh"}), "lifecycle must be an object"),
            (
                json!({"lifecycle": {"postStop": {}}}),
                "lifecycle.postStop: unknown field",
            ),
            (
                json!({"lifecycle": {"preStart": []}}),
                "lifecycle.preStart must be an object",
            ),
            (json!({"lifecycle": {"preStart": {}}}), "array of strings"),
            (
                json!({"lifecycle": {"preStart": {"command": "true"}}}),
                "array of strings",
            ),
            (
                json!({"lifecycle": {"preStart": {"command": [1]}}}),
                "array of strings",
            ),
            (
                json!({"lifecycle": {"preStart": {"command": []}}}),
                "name a program",
            ),
            (
                json!({"lifecycle": {"preStart": {"command": [""]}}}),
                "name a program",
            ),
            (
                json!({"lifecycle": {"preStart": {"command": ["a\u{0}b"]}}}),
                "NUL",
            ),
            (
                json!({"lifecycle": {"preStart": {"command": ["true"], "shell": true}}}),
                "lifecycle.preStart.shell: unknown field",
            ),
            (
                json!({"lifecycle": {"preStart": {"command": ["true"], "timeoutSeconds": 0}}}),
                "1 to 10800",
            ),
            (
                json!({"lifecycle": {"preStart": {"command": ["true"], "timeoutSeconds": 10801}}}),
                "1 to 10800",
            ),
            (
                json!({"lifecycle": {"preStart": {"command": ["true"], "timeoutSeconds": "60"}}}),
                "timeoutSeconds",
            ),
            (
                json!({"lifecycle": {"preStart": {"command": ["true"], "timeoutSeconds": 1.5}}}),
                "timeoutSeconds",
            ),
            (
                json!({"env": {"OPENSANDBOX_LIFECYCLE": "{}"}}),
                "OPENSANDBOX_LIFECYCLE",
            ),
        ];
        for (extra, needle) in cases {
            let e = err(extra.clone());
            assert!(matches!(e, Error::Invalid(_)), "{extra}: {e:?}");
            assert!(e.to_string().contains(needle), "{extra}: {e:?} lacks {needle:?}");
        }
        let e = err(
            json!({"lifecycle": {"preStart": {"command": ["true"]}, "periodic": [{"name": "n", "schedule": "@hourly", "command": ["true"]}]}}),
        );
        assert!(
            matches!(&e, Error::UnsupportedField(m) if m.contains("lifecycle.periodic")),
            "{e:?}"
        );
    }

    /// Issue 18: GPUs (a count or `"all"`) and a disk limit are planned for any runtime; the
    /// service refuses what its runtime cannot do (Docker: both; Kubernetes: `"all"`).
    #[test]
    fn issue18_gpu_and_disk_limits_are_planned() {
        let p = plan(
            req(json!({"resourceLimits": {"cpu": "1", "gpu": "2", "disk": "10Gi"}})),
            &limits(),
        )
        .unwrap();
        assert_eq!(p.resources.gpu, Some(Gpus::Count(2)));
        assert_eq!(p.resources.disk, Some(10 << 30));
        assert_eq!(p.resource_limits["gpu"], "2");
        assert_eq!(p.resource_limits["disk"], "10Gi");
        let all = plan(req(json!({"resourceLimits": {"gpu": " all "}})), &limits()).unwrap();
        assert_eq!(all.resources.gpu, Some(Gpus::All));
        assert_eq!(
            plan(req(json!({"resourceLimits": {"gpu": 1}})), &limits())
                .unwrap()
                .resources
                .gpu,
            Some(Gpus::Count(1)),
            "a JSON number too"
        );
        let plain = plan(req(json!({})), &limits()).unwrap();
        assert_eq!((plain.resources.gpu, plain.resources.disk), (None, None));
        // A running sandbox's GPUs and disk cannot change (a pool acquire's override).
        for key in ["gpu", "disk"] {
            let e = live_limits(BTreeMap::from([(key.to_owned(), json!("1"))])).unwrap_err();
            assert!(
                matches!(&e, Error::UnsupportedField(m) if m.contains(key)),
                "{e:?}"
            );
        }
    }

    /// Issue 18: `image.auth` is planned for the pull and hidden from `Debug`; errors never
    /// repeat what was given.
    #[test]
    fn issue18_image_auth_is_planned_and_never_shown() {
        let r = req(
            json!({"image": {"uri": "ghcr.io/org/app:1", "auth": {"username": "robot", "password": "s3cr3t"}}}),
        );
        assert!(!format!("{r:?}").contains("s3cr3t"), "{r:?}");
        let p = plan(r, &limits()).unwrap();
        assert_eq!(
            p.image_auth,
            Some(RegistryAuth {
                username: "robot".into(),
                password: "s3cr3t".into()
            })
        );
        assert!(!format!("{p:?}").contains("s3cr3t"));
        let none = plan(
            req(json!({"image": {"uri": "python:3", "auth": null}})),
            &limits(),
        )
        .unwrap();
        assert_eq!(none.image_auth, None);
        let e = err(json!({"image": {"uri": "python:3", "auth": {"username": "robot", "password": 7}}}));
        assert!(!e.to_string().contains("robot"), "{e}");
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("44772").unwrap(), 44772);
        for bad in ["0", "65536", "+80", "", "http"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn business_domains() {
        assert_eq!(business_domain("team-a1").unwrap(), "team-a1");
        for bad in ["", "Team", "a_b", "x".repeat(64).as_str(), "a b"] {
            assert!(business_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu("1"), Some(1_000_000_000));
        assert_eq!(parse_cpu("0.25"), Some(250_000_000));
        assert_eq!(parse_cpu("100m"), Some(100_000_000));
        assert_eq!(parse_cpu("-1"), None);
        // Issue 20 (fuzz target `sandbox_spec`): millis that overflow nano-CPUs panicked.
        assert_eq!(parse_cpu("99999999999999m"), None);
        assert_eq!(parse_cpu("lots"), None);
        assert_eq!(parse_bytes("64Mi"), Some(64 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("Mi"), None);
        assert_eq!(parse_bytes("0"), None);
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            (json!({"timeout": 59}), "at least 60"),
            (json!({"timeout": 3601}), "at most 3600"),
            (json!({"timeout": "soon"}), "integer"),
            (json!({"entrypoint": []}), "entrypoint"),
            (json!({"image": {"uri": " "}}), "image.uri"),
            (json!({"resourceLimits": {"memory": "1Ki"}}), "6Mi"),
            (json!({"resourceLimits": {"cpu": "fast"}}), "resourceLimits.cpu"),
            (json!({"resourceLimits": {"scratch": "1Gi"}}), "unknown resource"),
            (json!({"resourceLimits": {"disk": "lots"}}), "resourceLimits.disk"),
            (json!({"resourceLimits": {"gpu": "0"}}), "resourceLimits.gpu"),
            (json!({"resourceLimits": {"gpu": "1.5"}}), "whole number"),
            (json!({"resourceLimits": {"gpu": "ALL"}}), "resourceLimits.gpu"),
            (
                json!({"image": {"uri": "python:3", "auth": "robot:pw"}}),
                "image.auth",
            ),
            (
                json!({"image": {"uri": "python:3", "auth": {"username": "robot"}}}),
                "image.auth.password",
            ),
            (
                json!({"image": {"uri": "python:3", "auth": {"username": "", "password": "pw"}}}),
                "image.auth.username",
            ),
            (
                json!({"image": {"uri": "python:3", "auth": {"username": "r", "password": "pw", "email": "e"}}}),
                "image.auth.email",
            ),
            (json!({"env": {"A=B": "1"}}), "env"),
            (json!({"metadata": {"opensandbox.io/id": "x"}}), "reserved"),
            (json!({"metadata": {"sandboxd.io/owner": "x"}}), "reserved"),
            (json!({"metadata": {"bad key": "x"}}), "label key"),
            (json!({"metadata": {"k": "v".repeat(64)}}), "label value"),
            (
                json!({"extensions": {"bootstrap.execd.isolation": "maybe"}}),
                "enable",
            ),
            (
                json!({"extensions": {"sandboxd.autoStart": "later"}}),
                "sandboxd.autoStart",
            ),
            (
                json!({"volumes": [{"name": "a", "host": {"path": "/etc"}, "mountPath": "/x"}]}),
                "allowed prefix",
            ),
            (
                json!({"volumes": [{"name": "a", "host": {"path": "/srv/data/../../etc"}, "mountPath": "/x"}]}),
                "clean absolute",
            ),
            (
                json!({"volumes": [{"name": "a", "pvc": {"claimName": "v"}, "mountPath": "rel"}]}),
                "mountPath",
            ),
            (
                json!({"volumes": [{"name": "a", "pvc": {"claimName": "v"}, "mountPath": "/x", "subPath": "../y"}]}),
                "subPath",
            ),
            (
                json!({"volumes": [{"name": "a", "mountPath": "/x"}]}),
                "exactly one",
            ),
            (
                json!({"volumes": [{"name": "A_b", "pvc": {"claimName": "v"}, "mountPath": "/x"}]}),
                "DNS label",
            ),
            (
                json!({"platform": {"os": "windows", "arch": "amd64"}}),
                "platform",
            ),
            (json!({"snapshotId": "s"}), "snapshot"),
            (
                json!({"networkPolicy": {"defaultAction": "deny"}}),
                "networkPolicy",
            ),
        ];
        for (extra, needle) in cases {
            let e = err(extra.clone());
            assert!(e.is_client_error(), "{extra}: {e:?}");
            assert!(e.to_string().contains(needle), "{extra}: {e:?} lacks {needle:?}");
        }
        let e = plan(CreateSandboxRequest::default(), &limits()).unwrap_err();
        assert!(e.to_string().contains("image is required"));
    }
}
