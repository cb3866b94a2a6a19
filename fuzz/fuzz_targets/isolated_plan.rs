//! `POST /v1/isolated/session`: the JSON body, then the plan's validation. An accepted plan
//! only ever names clean absolute mount paths, once each, and writable paths or bind sources
//! under the allowlist.
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use execd::agent::isolate::cgroup::Limits;
use execd::agent::isolated::plan::plan;
use execd::agent::isolated::Settings;
use execd::wire::isolated::CreateIsolatedSessionRequest;
use libfuzzer_sys::fuzz_target;

fn clean(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<CreateIsolatedSessionRequest>(data) else {
        return;
    };
    let allowed = PathBuf::from("/tmp");
    for (namespaces, root) in [(true, true), (false, false)] {
        let settings = Settings {
            namespaces,
            allow_degraded: true,
            root,
            landlock_abi: 6,
            state_dir: "/var/lib/execd".into(),
            allowed_writable: vec![allowed.clone()],
            limits: Limits::default(),
            gc_interval: Duration::from_secs(60),
        };
        let Ok(plan) = plan(&req, &settings) else {
            continue;
        };
        assert!(!plan.mounts.is_empty());
        for (i, m) in plan.mounts.iter().enumerate() {
            assert!(clean(&m.path), "mount {:?} accepted", m.path);
            assert!(
                plan.mounts[..i].iter().all(|o| o.path != m.path),
                "mount {:?} twice",
                m.path
            );
        }
        for w in &plan.extra_writable {
            assert!(
                clean(Path::new(w)) && Path::new(w).starts_with(&allowed),
                "extra_writable {w:?}"
            );
        }
        for b in &plan.binds {
            let source = Path::new(&b.source);
            assert!(
                clean(source) && source.starts_with(&allowed),
                "bind source {:?}",
                b.source
            );
            assert!(
                b.dest.as_deref().is_some_and(|d| clean(Path::new(d))),
                "bind dest {:?}",
                b.dest
            );
        }
        assert!(plan.idle_timeout_seconds >= 0);
    }
});
