//! L1, the schema (design §16.6): the builders' objects for a matrix of specs, written as YAML
//! beside the deploy manifests' directory, checked by `tests/k8s/validate.py`
//! (`kubernetes-validate --strict -k 1.33.0`, from the project's `.venv`). Without the tool
//! the test is skipped, except under `EXECD_TEST_REQUIRE_DOCKER=1` or `CI` (set by `.ci/run`),
//! where a missing tool fails it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::objects::Objects;
use crate::orchestrator::runtime::{Gpus, RegistryAuth, Resources, SandboxSpec, SpecFile, Workspace};

fn base(id: &str) -> SandboxSpec {
    SandboxSpec {
        env: BTreeMap::from([
            ("EXECD_ACCESS_TOKEN".into(), "t0k3n".into()),
            ("OPENSANDBOX_ID".into(), id.into()),
        ]),
        labels: BTreeMap::from([("team".into(), "ml".into())]),
        expires_at: Some(1_800_000_000_000),
        resources: Resources {
            nano_cpus: Some(1_500_000_000),
            memory: Some(256 * 1024 * 1024),
            pids: 4096,
            ..Resources::default()
        },
        ..SandboxSpec::for_test(id, "python:3.12", &["python3", "-m", "http.server"])
    }
}

/// Every shape of spec the builders treat differently.
fn matrix() -> Vec<SandboxSpec> {
    let mut specs = vec![base("plain")];
    let mut s = base("files");
    s.files = vec![
        SpecFile {
            path: "/etc/app.toml".into(),
            content: b"a = 1\n".to_vec(),
            mode: 0o600,
        },
        SpecFile {
            path: "/usr/local/bin/tool".into(),
            content: vec![0x7f, b'E', b'L', b'F', 0, 1],
            mode: 0o755,
        },
    ];
    specs.push(s);
    let mut s = base("isolated");
    s.isolation = true;
    specs.push(s);
    let mut s = base("mounts");
    s.mounts = super::sample_mounts();
    specs.push(s);
    let mut s = base("manual");
    s.expires_at = None;
    s.resources = Resources::default();
    s.entrypoint = Vec::new();
    specs.push(s);
    let mut s = base("later");
    s.start = false;
    specs.push(s);
    let mut s = base("workspace");
    s.workspace = Some(Workspace {
        size_bytes: Some(10 << 30),
    });
    specs.push(s);
    // Issue 18: GPUs, a disk limit and a private registry (a pull Secret).
    let mut s = base("gpu-private");
    s.image = "registry.example.com:5000/ml/train:1".into();
    s.resources.gpu = Some(Gpus::Count(2));
    s.resources.disk = Some(10 << 30);
    s.image_auth = Some(RegistryAuth {
        username: "robot".into(),
        password: "s3cr3t".into(),
    });
    specs.push(s);
    specs
}

/// The tool, or `None` (skip) where it may be missing.
fn validator(root: &Path) -> Option<PathBuf> {
    let python = root.join(".venv/bin/python");
    let has_tool = std::process::Command::new(&python)
        .args(["-c", "import kubernetes_validate, yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if has_tool {
        return Some(python);
    }
    let required = std::env::var("EXECD_TEST_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    assert!(
        !required,
        "kubernetes-validate is missing from {} (scripts/setup.sh installs tests/requirements.txt)",
        python.display()
    );
    eprintln!("skipped: no kubernetes-validate in {}", python.display());
    None
}

#[test]
fn issue18_objects_and_deploy_manifests_pass_kubernetes_validate_strict() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(python) = validator(&root) else {
        return;
    };
    let objects = Objects {
        namespace: "sandboxes".into(),
        agent_image: "execd-agent:0.1.0".into(),
        instance: "0123456789abcdef0123456789abcdef".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    for spec in matrix() {
        let mut docs = vec![yaml_serde::to_string(&objects.secret(&spec)).unwrap()];
        if let Some(files) = objects.files(&spec).unwrap() {
            docs.push(yaml_serde::to_string(&files).unwrap());
        }
        if let Some(claim) = super::workspace::claim(&objects, &spec, Some("standard")) {
            docs.push(yaml_serde::to_string(&claim).unwrap());
        }
        if let Some(pull) = objects.pull_secret(&spec).unwrap() {
            docs.push(yaml_serde::to_string(&pull).unwrap());
        }
        docs.push(yaml_serde::to_string(&objects.pod(&spec).unwrap()).unwrap());
        std::fs::write(dir.path().join(format!("{}.yaml", spec.id)), docs.join("---\n")).unwrap();
    }
    let out = std::process::Command::new(python)
        .arg(root.join("tests/k8s/validate.py"))
        .arg(dir.path())
        .arg(root.join("deploy/kubernetes"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 8 specs: a Secret and a Pod each, one ConfigMap, one PersistentVolumeClaim, one pull
    // Secret; 6 deploy documents.
    assert!(report.contains("25 documents, 0 failed"), "{report}");
}
