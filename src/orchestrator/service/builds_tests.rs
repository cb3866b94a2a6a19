//! Template builds over the fake runtime: `Pending` → `Building` → `Succeeded|Failed`, the
//! log, what a sandbox create says meanwhile, restarts, and deletes.

use std::sync::Arc;
use std::time::Duration;

use super::tests::{eventually, root};
use super::Service;
use crate::orchestrator::error::{Conflict, Error};
use crate::orchestrator::runtime::fake::{CommandScript, FakeRuntime, Op};
use crate::orchestrator::runtime::Purpose;
use crate::wire::lifecycle::CreateSandboxRequest;
use crate::wire::templates::{CreateTemplateRequest, RollbackRequest, TemplateSpec, TemplateVersion};

const INSTALL: &str = "echo built > /opt/marker && echo hello-from-build";

struct Rig {
    service: Arc<Service>,
    fake: FakeRuntime,
    builder: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.builder.abort();
    }
}

impl Rig {
    /// A service with its builder running.
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::start().await;
        let service = Service::for_tests(dir.path(), &fake, "key", 86_400, Duration::from_secs(10));
        let builder = spawn_builder(&service);
        Self {
            service,
            fake,
            builder,
            dir,
        }
    }

    async fn version(&self, name: &str, v: u32) -> TemplateVersion {
        self.service.template_version(name, v, &root()).await.unwrap()
    }

    /// Polls version `v` of `name` until its phase is `phase`.
    async fn until_phase(&self, name: &str, v: u32, phase: &str) -> TemplateVersion {
        eventually(&format!("{name} v{v} is {phase}"), || async {
            self.version(name, v).await.status.phase == phase
        })
        .await;
        self.version(name, v).await
    }

    /// Build containers the fake holds.
    fn build_containers(&self) -> usize {
        self.fake
            .sandboxes()
            .values()
            .filter(|s| matches!(s.spec.purpose, Purpose::Build { .. }))
            .count()
    }

    async fn create_from(&self, name: &str) -> Result<crate::wire::lifecycle::CreateSandboxResponse, Error> {
        let req: CreateSandboxRequest =
            serde_json::from_value(serde_json::json!({"templateId": name})).unwrap();
        self.service.create(req, &root(), None).await
    }
}

fn spawn_builder(service: &Arc<Service>) -> tokio::task::JoinHandle<()> {
    let service = service.clone();
    tokio::spawn(async move { service.run_builds().await })
}

fn template(name: &str, spec: serde_json::Value) -> CreateTemplateRequest {
    CreateTemplateRequest {
        name: Some(name.into()),
        spec: Some(serde_json::from_value::<TemplateSpec>(spec).unwrap()),
        ..CreateTemplateRequest::default()
    }
}

fn held(stdout: &[&str], exit: i64) -> CommandScript {
    CommandScript {
        stdout: stdout.iter().map(|s| s.to_string()).collect(),
        exit,
        held: true,
        timed_out: false,
    }
}

#[tokio::test]
async fn an_install_command_builds_the_version_and_sandboxes_run_the_committed_image() {
    let rig = Rig::start().await;
    let s = &rig.service;
    rig.fake.script_command(INSTALL, held(&["hello-from-build"], 0));
    let created = s
        .create_template(
            template(
                "app",
                serde_json::json!({
                    "image": "busybox", "installCommand": INSTALL, "env": {"PIP_INDEX": "x"},
                    "files": [{"path": "/opt/req.txt", "content": "numpy\n"}],
                }),
            ),
            &root(),
        )
        .await
        .unwrap();
    assert_eq!(created.status.phase, "Pending", "stored before it builds");
    assert_eq!(created.status.manifest_ref, None);

    rig.until_phase("app", 1, "Building").await;
    eventually("the output is in the live log", || async {
        s.build_log("app", 1, &root())
            .await
            .unwrap()
            .contains("hello-from-build")
    })
    .await;
    let err = rig.create_from("app").await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict(Conflict::TemplateNotReady(m)) if m.contains("Building")),
        "{err}"
    );
    // The build container is no sandbox: reconciliation and the orphan sweep leave it.
    assert_eq!(rig.build_containers(), 1);
    assert_eq!(s.sweep_orphans().await.unwrap(), 0);
    assert_eq!(s.reconcile().await.unwrap().removed, 0);
    assert_eq!(rig.build_containers(), 1);
    let build = rig
        .fake
        .sandboxes()
        .into_values()
        .find(|c| matches!(c.spec.purpose, Purpose::Build { .. }))
        .unwrap();
    assert_eq!(build.spec.image, "busybox");
    assert_eq!(build.spec.entrypoint, ["tail", "-f", "/dev/null"]);
    assert_eq!(
        build.spec.env.keys().collect::<Vec<_>>(),
        ["EXECD_ACCESS_TOKEN"],
        "nothing but the token, which the commit blanks"
    );
    assert_eq!(build.spec.files.len(), 1);
    let run = rig.fake.commands().pop().unwrap();
    assert_eq!(run.command.as_deref(), Some(INSTALL));
    assert_eq!(run.envs.unwrap()["PIP_INDEX"], "x");
    assert_eq!(run.timeout, Some(1_800_000));

    rig.fake.release_command(INSTALL);
    let v = rig.until_phase("app", 1, "Succeeded").await;
    assert_eq!(v.status.manifest_ref.as_deref(), Some("sandboxd/tpl-app:v1"));
    assert_eq!(v.status.message, None);
    assert!(rig.fake.has_image("sandboxd/tpl-app:v1"));
    assert_eq!(
        rig.fake
            .commits()
            .iter()
            .map(|(_, i)| i.as_str())
            .collect::<Vec<_>>(),
        ["sandboxd/tpl-app:v1"]
    );
    eventually("the build container is removed", || async {
        rig.build_containers() == 0
    })
    .await;
    assert_eq!(
        s.build_log("app", 1, &root()).await.unwrap(),
        "hello-from-build\n",
        "the stored log"
    );
    assert_eq!(
        s.template("app", &root()).await.unwrap().status.phase,
        "Succeeded"
    );

    let sandbox = rig.create_from("app").await.unwrap();
    let made = rig.fake.sandboxes();
    let made = made.values().find(|c| c.spec.id == sandbox.id).unwrap();
    assert_eq!(made.spec.image, "sandboxd/tpl-app:v1");
    assert_eq!(made.spec.purpose, Purpose::Sandbox);
}

#[tokio::test]
async fn a_failing_install_command_fails_the_version_with_its_exit_code_and_output() {
    let rig = Rig::start().await;
    let s = &rig.service;
    rig.fake.script_command("exit 7", held(&["about to fail"], 7));
    rig.fake.release_command("exit 7");
    s.create_template(
        template(
            "broken",
            serde_json::json!({"image": "busybox", "installCommand": "exit 7"}),
        ),
        &root(),
    )
    .await
    .unwrap();
    let v = rig.until_phase("broken", 1, "Failed").await;
    let message = v.status.message.unwrap();
    assert!(message.contains("exited with code 7"), "{message}");
    assert!(message.contains("about to fail"), "{message}");
    assert_eq!(v.status.manifest_ref, None);
    assert!(rig.fake.commits().is_empty(), "nothing committed");
    eventually("the build container is removed", || async {
        rig.build_containers() == 0
    })
    .await;
    let err = rig.create_from("broken").await.unwrap_err();
    let api = crate::orchestrator::http::error::ApiError::from(&err);
    assert_eq!(api.entry.code, "TEMPLATE::NOT_READY");
    assert_eq!(api.status.as_u16(), 409);
    assert!(err.to_string().contains("exited with code 7"), "{err}");

    // A timeout and a container that cannot start say so.
    rig.fake.script_command(
        "sleep 9999",
        CommandScript {
            timed_out: true,
            ..CommandScript::default()
        },
    );
    s.create_template(
        template(
            "slow",
            serde_json::json!({"image": "busybox", "installCommand": "sleep 9999"}),
        ),
        &root(),
    )
    .await
    .unwrap();
    let v = rig.until_phase("slow", 1, "Failed").await;
    assert!(
        v.status
            .message
            .as_deref()
            .unwrap()
            .contains("did not finish within 1800 s"),
        "{:?}",
        v.status.message
    );
    rig.fake.fail(Op::Create, 1, || {
        crate::orchestrator::runtime::RuntimeError::ImageNotFound("image \"nope\" cannot be pulled".into())
    });
    s.create_template(
        template(
            "nope",
            serde_json::json!({"image": "nope", "installCommand": "true"}),
        ),
        &root(),
    )
    .await
    .unwrap();
    let v = rig.until_phase("nope", 1, "Failed").await;
    assert!(
        v.status.message.as_deref().unwrap().contains("cannot be pulled"),
        "{:?}",
        v.status.message
    );
    assert_eq!(rig.build_containers(), 0);
}

#[tokio::test]
async fn a_restart_removes_left_build_containers_and_builds_unfinished_versions_again() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::start().await;
    fake.script_command("true", CommandScript::default());
    let first = Service::for_tests(dir.path(), &fake, "key", 86_400, Duration::from_secs(10));
    // No builder runs in the first process: its versions stay Pending, one is "Building".
    for name in ["a", "b"] {
        first
            .create_template(
                template(
                    name,
                    serde_json::json!({"image": "busybox", "installCommand": "true"}),
                ),
                &root(),
            )
            .await
            .unwrap();
    }
    let (a, _) = first.store.template("a").await.unwrap().unwrap();
    first
        .store
        .set_build_state(&a.id, 1, "Building", None, None)
        .await
        .unwrap();
    let left = fake.plant_build("a", 1);
    drop(first);

    let second = Service::for_tests(dir.path(), &fake, "key", 86_400, Duration::from_secs(10));
    second.recover_builds().await.unwrap();
    assert!(
        !fake.sandboxes().contains_key(&left.reference),
        "the build container the crash left is removed"
    );
    let rig = Rig {
        builder: spawn_builder(&second),
        service: second,
        fake,
        dir,
    };
    for name in ["a", "b"] {
        let v = rig.until_phase(name, 1, "Succeeded").await;
        assert_eq!(v.status.manifest_ref.unwrap(), format!("sandboxd/tpl-{name}:v1"));
    }
    assert!(rig.dir.path().exists());
}

#[tokio::test]
async fn new_versions_build_and_a_delete_removes_only_built_images() {
    let rig = Rig::start().await;
    let s = &rig.service;
    rig.fake.script_command("true", CommandScript::default());
    s.create_template(
        template(
            "app",
            serde_json::json!({"image": "busybox", "installCommand": "true"}),
        ),
        &root(),
    )
    .await
    .unwrap();
    rig.until_phase("app", 1, "Succeeded").await;
    let update = crate::wire::templates::UpdateTemplateRequest {
        spec: Some(serde_json::from_value(serde_json::json!({"image": "busybox:2"})).unwrap()),
        ..Default::default()
    };
    let (t, created) = s.update_template("app", update, &root()).await.unwrap();
    assert!(created);
    assert_eq!(
        (t.status.phase.as_str(), t.status.manifest_ref.as_deref()),
        ("Succeeded", Some("busybox:2")),
        "nothing to build"
    );
    let back = RollbackRequest {
        target_version: 1,
        changelog: None,
    };
    let r = s.rollback_template("app", back, &root()).await.unwrap();
    assert_eq!((r.new_version, r.template.status.phase.as_str()), (3, "Pending"));
    rig.until_phase("app", 3, "Succeeded").await;
    assert!(rig.fake.has_image("sandboxd/tpl-app:v1"));
    assert!(rig.fake.has_image("sandboxd/tpl-app:v3"));
    rig.fake.add_image("busybox:2");

    s.delete_template("app", &root()).await.unwrap();
    assert!(!rig.fake.has_image("sandboxd/tpl-app:v1"));
    assert!(!rig.fake.has_image("sandboxd/tpl-app:v3"));
    assert!(
        rig.fake.has_image("busybox:2"),
        "a base image is not sandboxd's to remove"
    );
    assert_eq!(rig.fake.calls(Op::RemoveImage), 2);
}

#[tokio::test]
async fn a_template_deleted_while_it_builds_gets_no_image() {
    let rig = Rig::start().await;
    let s = &rig.service;
    rig.fake.script_command("make", held(&["compiling"], 0));
    let t = s
        .create_template(
            template(
                "gone",
                serde_json::json!({"image": "busybox", "installCommand": "make"}),
            ),
            &root(),
        )
        .await
        .unwrap();
    rig.until_phase("gone", 1, "Building").await;
    s.delete_template("gone", &root()).await.unwrap();
    rig.fake.release_command("make");
    eventually("the build container is removed", || async {
        rig.build_containers() == 0
    })
    .await;
    eventually("the build is over", || async {
        s.builds.live_log(&t.template_id, 1).is_none()
    })
    .await;
    assert!(rig.fake.commits().is_empty(), "nothing committed");
    assert!(!rig.fake.has_image("sandboxd/tpl-gone:v1"));
}

#[tokio::test]
async fn install_commands_are_checked_like_the_rest_of_the_spec() {
    let rig = Rig::start().await;
    for (command, says) in [
        ("  ", "non-empty"),
        ("a\0b", "NUL"),
        (&"x".repeat(65 * 1024), "at most"),
    ] {
        let err = rig
            .service
            .create_template(
                template(
                    "bad",
                    serde_json::json!({"image": "busybox", "installCommand": command}),
                ),
                &root(),
            )
            .await
            .unwrap_err();
        let api = crate::orchestrator::http::error::ApiError::from(&err);
        assert_eq!(api.entry.code, "TEMPLATE::INVALID_SPEC", "{err}");
        assert!(err.to_string().contains(says), "{err}");
    }
}
