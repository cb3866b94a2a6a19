//! sandboxd's `POST /v1/sandboxes` body: JSON, then `spec::plan`. An accepted plan has a
//! timeout within bounds, positive limits, and volumes only at clean paths, host ones only
//! under the allowed prefixes.
#![no_main]

use std::path::{Component, Path, PathBuf};

use execd::orchestrator::runtime::Mount;
use execd::orchestrator::spec::{plan, Limits};
use execd::wire::lifecycle::CreateSandboxRequest;
use libfuzzer_sys::fuzz_target;

fn clean(p: &str) -> bool {
    let p = Path::new(p);
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<CreateSandboxRequest>(data) else {
        return;
    };
    let limits = Limits {
        max_timeout: 86_400,
        allowed_host_paths: vec![PathBuf::from("/srv/data")],
    };
    let Ok(plan) = plan(req, &limits) else {
        return;
    };
    assert!(!plan.image.is_empty() && !plan.entrypoint.is_empty());
    assert!(plan.timeout.is_none_or(|t| (60..=86_400).contains(&t)));
    assert!(plan.resources.memory.is_none_or(|m| m >= 6 << 20));
    assert!(plan.resources.nano_cpus.is_none_or(|c| c >= 10_000_000));
    assert!(plan.resources.pids >= 0);
    for m in &plan.mounts {
        match m {
            Mount::HostPath { path, mount_path, .. } => {
                assert!(
                    clean(path) && Path::new(path).starts_with("/srv/data"),
                    "host path {path:?}"
                );
                assert!(
                    clean(mount_path) && mount_path != "/",
                    "mount path {mount_path:?}"
                );
            }
            Mount::Volume {
                sub_path, mount_path, ..
            } => {
                assert!(
                    clean(mount_path) && mount_path != "/",
                    "mount path {mount_path:?}"
                );
                assert!(sub_path.as_deref().is_none_or(|s| Path::new(s)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))));
            }
        }
    }
});
