//! Turning a create request into a session plan: validation (the contract's 400s), the
//! effective mounts, the environment a profile lets through, and the jail spec.
//!
//! Pure functions of the request and execd's configuration, plus `mkdir -p` of mount points.
//! Synchronous.

use std::path::{Component, Path, PathBuf};

use super::{IsolatedError, Settings};
use crate::agent::env::EnvMap;
use crate::agent::isolate::harden::roots_except;
use crate::agent::isolate::proto::{JailSpec, LandlockPolicy, MountStep, RunPolicy};
use crate::wire::isolated::{
    BindMount, CreateIsolatedSessionRequest, EnvPassthrough, EnvPassthroughMode, IsolatedOverlaySpec,
    IsolationProfile, MountMode, UidMode,
};

/// Mounts per session, `workspace` included.
pub const MAX_MOUNTS: usize = 16;
/// Default idle timeout (OSEP).
pub const DEFAULT_IDLE_SECONDS: i64 = 1800;

/// One effective mount of a session.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Path inside and outside.
    pub path: PathBuf,
    /// Mode.
    pub mode: MountMode,
    /// Overlay with a host upper.
    pub persist: bool,
    /// The host upper directory (persistent overlays only).
    pub upper: Option<PathBuf>,
}

impl Mount {
    /// The wire echo.
    pub fn spec(&self) -> IsolatedOverlaySpec {
        IsolatedOverlaySpec {
            path: self.path.display().to_string(),
            mode: Some(self.mode),
            persist: (self.mode == MountMode::Overlay).then_some(self.persist),
        }
    }
}

/// Everything decided at creation.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Effective profile.
    pub profile: IsolationProfile,
    /// Created through `workspace` alone.
    pub legacy_workspace: bool,
    /// Effective mounts, in request order.
    pub mounts: Vec<Mount>,
    /// Echo.
    pub extra_writable: Vec<String>,
    /// Echo.
    pub binds: Vec<BindMount>,
    /// Effective.
    pub share_net: bool,
    /// Echo.
    pub env_passthrough: Option<EnvPassthrough>,
    /// Effective identity.
    pub uid: u32,
    /// Effective identity.
    pub gid: u32,
    /// Effective.
    pub uid_mode: UidMode,
    /// Effective (0 = never).
    pub idle_timeout_seconds: i64,
}

/// A path the contract accepts: absolute and clean (no trailing `/`, no `.`/`..`, no `//`).
pub fn clean_absolute(raw: &str, what: &str) -> Result<PathBuf, IsolatedError> {
    let bad = |why: &str| IsolatedError::Invalid(format!("{what} {raw:?} {why}"));
    if !raw.starts_with('/') {
        return Err(bad("is not absolute"));
    }
    if raw.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if raw != "/" && (raw.ends_with('/') || raw.contains("//")) {
        return Err(bad("is not clean"));
    }
    if Path::new(raw)
        .components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        || raw.split('/').any(|s| s == "." || s == "..")
    {
        return Err(bad("is not clean"));
    }
    Ok(PathBuf::from(raw))
}

/// Validates `req` against `settings`.
pub fn plan(req: &CreateIsolatedSessionRequest, settings: &Settings) -> Result<Plan, IsolatedError> {
    let profile = req.profile.unwrap_or_default();
    let default_mode = match profile {
        IsolationProfile::Strict => MountMode::Overlay,
        IsolationProfile::Balanced => MountMode::Rw,
    };
    let mut specs: Vec<IsolatedOverlaySpec> = Vec::new();
    if let Some(ws) = &req.workspace {
        specs.push(IsolatedOverlaySpec {
            path: ws.path.clone(),
            mode: Some(ws.mode.unwrap_or(default_mode)),
            persist: None,
        });
    }
    specs.extend(req.overlays.iter().flatten().cloned());
    if specs.is_empty() {
        return Err(IsolatedError::Invalid("workspace or overlays is required".into()));
    }
    if specs.len() > MAX_MOUNTS {
        return Err(IsolatedError::Invalid(format!(
            "at most {MAX_MOUNTS} mounts per session, got {}",
            specs.len()
        )));
    }
    let mut mounts: Vec<Mount> = Vec::new();
    for spec in &specs {
        let path = clean_absolute(&spec.path, "mount path")?;
        if mounts.iter().any(|m| m.path == path) {
            return Err(IsolatedError::Invalid(format!(
                "mount path {:?} is given twice",
                spec.path
            )));
        }
        let mode = spec.mode.unwrap_or(MountMode::Overlay);
        if mode != MountMode::Overlay && spec.persist.is_some() {
            return Err(IsolatedError::Invalid(format!(
                "persist applies to overlay mounts only ({:?})",
                spec.path
            )));
        }
        if mode == MountMode::Overlay && path == Path::new("/") && spec.persist != Some(false) {
            return Err(IsolatedError::Invalid(
                "an overlay of / must set persist: false".into(),
            ));
        }
        mounts.push(Mount {
            path,
            mode,
            persist: mode == MountMode::Overlay && spec.persist.unwrap_or(true),
            upper: None,
        });
    }
    let mut extra_writable = Vec::new();
    for raw in req.extra_writable.iter().flatten() {
        let path = clean_absolute(raw, "extra_writable path")?;
        settings.check_allowed(&path, "extra_writable path")?;
        extra_writable.push(raw.clone());
    }
    let mut binds = Vec::new();
    for b in req.binds.iter().flatten() {
        let source = clean_absolute(&b.source, "bind source")?;
        settings.check_allowed(&source, "bind source")?;
        let dest = b.dest.clone().unwrap_or_else(|| b.source.clone());
        clean_absolute(&dest, "bind dest")?;
        if !source.exists() {
            return Err(IsolatedError::Invalid(format!(
                "bind source {:?} does not exist",
                b.source
            )));
        }
        binds.push(BindMount {
            source: b.source.clone(),
            dest: Some(dest),
            readonly: b.readonly,
        });
    }
    let idle = match req.idle_timeout_seconds {
        None => DEFAULT_IDLE_SECONDS,
        Some(s) if s < 0 => {
            return Err(IsolatedError::Invalid(
                "idle_timeout_seconds must not be negative".into(),
            ))
        }
        Some(s) => s,
    };
    if let Some(EnvPassthrough { keys: Some(keys), .. }) = &req.env_passthrough {
        if keys
            .iter()
            .any(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(IsolatedError::Invalid(
                "env_passthrough keys must be variable names".into(),
            ));
        }
    }
    let uid_mode = req.uid_mode.unwrap_or_default();
    let (own_uid, own_gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    let uid = req.uid.unwrap_or(own_uid);
    let gid = req.gid.unwrap_or(if req.uid.is_some() { uid } else { own_gid });
    match uid_mode {
        UidMode::Userns if !settings.namespaces => {
            return Err(IsolatedError::NotSupported(
                "uid_mode userns needs user namespaces, which this host denies".into(),
            ))
        }
        UidMode::Setpriv if (uid != own_uid || gid != own_gid) && !settings.root => {
            return Err(IsolatedError::NotSupported(
                "switching identity with uid_mode setpriv needs execd to run as root".into(),
            ))
        }
        _ => {}
    }
    Ok(Plan {
        profile,
        legacy_workspace: req.workspace.is_some() && req.overlays.as_ref().is_none_or(Vec::is_empty),
        mounts,
        extra_writable,
        binds,
        share_net: req.share_net.unwrap_or(true),
        env_passthrough: req.env_passthrough.clone(),
        uid,
        gid,
        uid_mode,
        idle_timeout_seconds: idle,
    })
}

/// Whether `key` matches the built-in secret patterns (case-insensitive).
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    ["_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD"]
        .iter()
        .any(|s| k.ends_with(s))
        || ["AWS_", "ALI_", "ALIYUN_", "K8S_", "KUBE_"]
            .iter()
            .any(|p| k.starts_with(p))
}

/// The environment of a session's runs: execd's own (its secrets already removed) without
/// any `EXECD_*` variable, filtered per profile and `env_passthrough`.
pub fn session_env(base: &EnvMap, profile: IsolationProfile, pass: Option<&EnvPassthrough>) -> EnvMap {
    let base = base.iter().filter(|(k, _)| !k.starts_with("EXECD_"));
    let mode = pass.and_then(|p| p.mode);
    let keys: Vec<&str> = pass
        .and_then(|p| p.keys.as_ref())
        .map(|k| k.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let keep = |k: &str| -> bool {
        match (mode, pass.is_some()) {
            (Some(EnvPassthroughMode::Allow), _) => keys.contains(&k),
            (_, true) if !keys.is_empty() => !keys.contains(&k),
            (_, true) => !is_secret(k),
            (_, false) => profile == IsolationProfile::Balanced || !is_secret(k),
        }
    };
    let mut env: EnvMap = base
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env
}

/// Supplementary groups of `uid` (`setpriv --init-groups`), always including `gid`.
pub fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    use nix::unistd::{getgrouplist, Gid, Uid, User};
    let mut groups = match User::from_uid(Uid::from_raw(uid)).ok().flatten() {
        Some(user) => std::ffi::CString::new(user.name.as_bytes())
            .ok()
            .and_then(|name| getgrouplist(&name, Gid::from_raw(gid)).ok())
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    groups
}

/// The session's directories on the host, and the jail spec built from `plan`. Creates the
/// mount points (`mkdir -p`) and per-mount upper/work directories.
pub fn jail_spec(
    plan: &mut Plan,
    settings: &Settings,
    dir: &Path,
    cgroup_procs: Vec<PathBuf>,
) -> Result<JailSpec, IsolatedError> {
    let io = |what: String| move |e: std::io::Error| IsolatedError::Invalid(format!("{what}: {e}"));
    std::fs::create_dir_all(dir.join("root")).map_err(io("cannot create session directory".into()))?;
    std::fs::create_dir_all(dir.join("tmp")).map_err(io("cannot create session directory".into()))?;
    let mut steps: Vec<(usize, MountStep)> = Vec::new();
    for (i, m) in plan.mounts.iter_mut().enumerate() {
        std::fs::create_dir_all(&m.path).map_err(io(format!("cannot create {}", m.path.display())))?;
        let depth = m.path.components().count();
        let step = match (m.mode, m.persist) {
            (MountMode::Overlay, true) => {
                let (upper, work) = (dir.join(format!("m{i}/upper")), dir.join(format!("m{i}/work")));
                std::fs::create_dir_all(&upper).map_err(io("cannot create upper".into()))?;
                std::fs::create_dir_all(&work).map_err(io("cannot create upper".into()))?;
                m.upper = Some(upper.clone());
                MountStep::Overlay {
                    path: m.path.clone(),
                    upper,
                    work,
                }
            }
            (MountMode::Overlay, false) => {
                let scratch = dir.join(format!("m{i}/scratch"));
                std::fs::create_dir_all(&scratch).map_err(io("cannot create scratch".into()))?;
                MountStep::TmpOverlay {
                    path: m.path.clone(),
                    scratch,
                }
            }
            (mode, _) => MountStep::Bind {
                source: m.path.clone(),
                dest: m.path.clone(),
                readonly: mode == MountMode::Ro,
            },
        };
        steps.push((depth, step));
    }
    // Shallow first, so a nested mount shadows its ancestor in its own subtree.
    steps.sort_by_key(|(depth, _)| *depth);
    let mut mounts: Vec<MountStep> = steps.into_iter().map(|(_, s)| s).collect();
    for raw in &plan.extra_writable {
        mounts.push(MountStep::Bind {
            source: raw.into(),
            dest: raw.into(),
            readonly: false,
        });
    }
    for b in &plan.binds {
        let dest = PathBuf::from(b.dest.clone().unwrap_or_else(|| b.source.clone()));
        if !dest.exists() {
            let made = if Path::new(&b.source).is_dir() {
                std::fs::create_dir_all(&dest)
            } else {
                dest.parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::File::create(&dest).map(drop))
            };
            made.map_err(io(format!("cannot create bind destination {}", dest.display())))?;
        }
        mounts.push(MountStep::Bind {
            source: b.source.clone().into(),
            dest,
            readonly: b.readonly,
        });
    }

    let writable: Vec<PathBuf> = plan
        .mounts
        .iter()
        .filter(|m| m.mode == MountMode::Rw || (settings.namespaces && m.mode == MountMode::Overlay))
        .map(|m| m.path.clone())
        .chain(plan.extra_writable.iter().map(PathBuf::from))
        .chain(
            plan.binds
                .iter()
                .filter(|b| !b.readonly)
                .filter_map(|b| b.dest.clone().map(PathBuf::from)),
        )
        .collect();
    let devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"].map(PathBuf::from);
    let landlock = (settings.landlock_abi > 0).then(|| {
        if settings.namespaces {
            let mut write = writable.clone();
            write.extend(["/tmp", "/dev/shm", "/run"].map(PathBuf::from));
            write.extend(devices.iter().cloned());
            LandlockPolicy {
                read: vec!["/".into()],
                write,
                scope_signals: settings.landlock_abi >= 6,
            }
        } else {
            // No mounts to hide anything: reads everywhere but execd's state and /dev.
            let mut read = roots_except(&[settings.state_dir.clone(), "/dev".into()]);
            read.extend(["/dev/random", "/dev/urandom", "/dev/pts"].map(PathBuf::from));
            read.extend(devices.iter().cloned());
            read.push(dir.join("tmp"));
            let mut write = writable.clone();
            write.push(dir.join("tmp"));
            write.extend(devices.iter().cloned());
            LandlockPolicy {
                read,
                write,
                scope_signals: settings.landlock_abi >= 6,
            }
        }
    });
    let (uid_map, gid_map, deny_setgroups) =
        crate::agent::isolate::id_maps(settings.root, plan.uid, plan.gid);
    let groups = match plan.uid_mode {
        UidMode::Setpriv => groups_of(plan.uid, plan.gid),
        UidMode::Userns => vec![plan.gid],
    };
    let run = RunPolicy {
        uid: plan.uid,
        gid: plan.gid,
        groups,
        // Unprivileged: the id map already gives the jail its only ids, and setgroups is denied.
        switch_identity: !deny_setgroups || !settings.namespaces,
        drop_caps: settings.root || settings.namespaces,
        landlock,
        deny_inet: !settings.namespaces && !plan.share_net,
        rlimits: vec![(libc::RLIMIT_CORE as i32, 0)],
    };
    let run = RunPolicy {
        switch_identity: run.switch_identity && (settings.root || settings.namespaces),
        ..run
    };
    Ok(JailSpec {
        namespaces: settings.namespaces,
        uid_map,
        gid_map,
        deny_setgroups,
        share_net: plan.share_net,
        root: dir.join("root"),
        mounts,
        masks: vec![settings.state_dir.clone()],
        private_tmp: plan.profile == IsolationProfile::Strict,
        cgroup_procs,
        run,
        probe_run: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(namespaces: bool, state: &Path) -> Settings {
        Settings {
            namespaces,
            allow_degraded: true,
            root: true,
            landlock_abi: 6,
            state_dir: state.to_path_buf(),
            allowed_writable: vec![state.parent().unwrap().join("allowed")],
            limits: Default::default(),
            gc_interval: std::time::Duration::from_secs(60),
        }
    }

    #[test]
    fn jail_spec_orders_mounts_shallow_first_and_scopes_writes() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        let (deep, shallow, ro) = (b.join("w/deep/er"), b.join("w"), b.join("ro"));
        let req: CreateIsolatedSessionRequest = serde_json::from_value(serde_json::json!({
            "overlays": [
                { "path": deep, "mode": "overlay" },
                { "path": shallow, "mode": "rw" },
                { "path": ro, "mode": "ro" },
            ],
            "extra_writable": [b.join("allowed/x")],
            "uid": 1000,
        }))
        .unwrap();
        std::fs::create_dir_all(b.join("allowed/x")).unwrap();
        let s = settings(true, &b.join("state"));
        let mut plan = plan(&req, &s).unwrap();
        let spec = jail_spec(&mut plan, &s, &b.join("state/isolated/s"), Vec::new()).unwrap();
        let dests: Vec<PathBuf> = spec
            .mounts
            .iter()
            .map(|m| match m {
                MountStep::Overlay { path, .. } | MountStep::TmpOverlay { path, .. } => path.clone(),
                MountStep::Bind { dest, .. } => dest.clone(),
            })
            .collect();
        assert_eq!(
            dests,
            vec![shallow.clone(), ro.clone(), deep.clone(), b.join("allowed/x")]
        );
        assert!(deep.is_dir(), "mount points are created");
        assert!(plan.mounts[0]
            .upper
            .as_ref()
            .is_some_and(|u| u.ends_with("m0/upper") && u.is_dir()));
        let ll = spec.run.landlock.unwrap();
        assert!(ll.write.contains(&shallow) && ll.write.contains(&deep) && !ll.write.contains(&ro));
        assert_eq!(ll.read, vec![PathBuf::from("/")]);
        assert_eq!((spec.run.uid, spec.run.gid), (1000, 1000));
        assert!(spec.run.switch_identity && spec.run.drop_caps && !spec.run.deny_inet);
        assert_eq!(spec.masks, vec![b.join("state")]);
    }

    #[test]
    fn degraded_spec_reads_everything_but_the_state_dir_and_writes_no_overlay() {
        let base = tempfile::tempdir().unwrap();
        let b = base.path();
        let req: CreateIsolatedSessionRequest = serde_json::from_value(serde_json::json!({
            "overlays": [{ "path": b.join("ov") }, { "path": b.join("rw"), "mode": "rw" }],
            "share_net": false,
        }))
        .unwrap();
        let s = settings(false, &b.join("state"));
        let mut plan = plan(&req, &s).unwrap();
        let spec = jail_spec(&mut plan, &s, &b.join("state/isolated/s"), Vec::new()).unwrap();
        assert!(!spec.namespaces && spec.run.deny_inet);
        let ll = spec.run.landlock.unwrap();
        assert!(!ll
            .read
            .iter()
            .any(|p| p.starts_with(b.join("state")) && !p.ends_with("tmp")));
        assert!(!ll.read.contains(&PathBuf::from("/dev")));
        assert!(ll.write.contains(&b.join("rw")) && !ll.write.contains(&b.join("ov")));
        assert!(ll.write.contains(&b.join("state/isolated/s/tmp")));
    }

    #[test]
    fn clean_paths() {
        for ok in ["/", "/workspace", "/a/b.c"] {
            assert!(clean_absolute(ok, "p").is_ok(), "{ok}");
        }
        for bad in ["", "rel", "/a/", "/a//b", "/a/./b", "/a/../b", "/..", "/a/."] {
            assert!(clean_absolute(bad, "p").is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_patterns_are_case_insensitive() {
        for k in [
            "OPENAI_API_KEY",
            "gh_token",
            "Db_Password",
            "aws_region",
            "KUBECONFIG_X",
            "KUBE_X",
            "X_SECRET",
        ] {
            assert_eq!(is_secret(k), k != "KUBECONFIG_X", "{k}");
        }
        assert!(!is_secret("PATH"));
        assert!(!is_secret("TOKENIZER"));
    }

    #[test]
    fn env_filtering_per_profile_and_passthrough() {
        let base: EnvMap = [
            ("PATH", "/bin"),
            ("A_TOKEN", "s"),
            ("EXECD_X", "1"),
            ("HOME", "/root"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let strict = session_env(&base, IsolationProfile::Strict, None);
        assert!(
            strict.contains_key("HOME") && !strict.contains_key("A_TOKEN") && !strict.contains_key("EXECD_X")
        );
        let balanced = session_env(&base, IsolationProfile::Balanced, None);
        assert!(balanced.contains_key("A_TOKEN") && !balanced.contains_key("EXECD_X"));
        let allow = EnvPassthrough {
            mode: Some(EnvPassthroughMode::Allow),
            keys: Some(vec!["HOME".into()]),
        };
        let only = session_env(&base, IsolationProfile::Balanced, Some(&allow));
        assert_eq!(only.keys().collect::<Vec<_>>(), ["HOME", "PATH"]);
        let deny = EnvPassthrough {
            mode: Some(EnvPassthroughMode::Deny),
            keys: Some(vec!["HOME".into()]),
        };
        let without = session_env(&base, IsolationProfile::Strict, Some(&deny));
        assert!(!without.contains_key("HOME") && without.contains_key("A_TOKEN"));
    }
}
