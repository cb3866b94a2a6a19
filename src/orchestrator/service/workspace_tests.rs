//! The persistent workspace (`workspace.persistent`) over the fake runtime: a Rootfs pause on
//! a runtime that keeps only the workspace (Kubernetes) and on one that commits (Docker), and
//! the workspace removed with the sandbox however it goes.

use super::tests::{rig, root, Rig};
use crate::orchestrator::error::{Error, Feature};
use crate::orchestrator::runtime::fake::Op;
use crate::orchestrator::runtime::{RootfsPause, Runtime as _, Workspace};
use crate::orchestrator::store::Phase;
use crate::wire::lifecycle::CreateSandboxRequest;
use crate::wire::time::now_ms;

fn request(extra: serde_json::Value) -> CreateSandboxRequest {
    let mut base = serde_json::json!({
        "image": {"uri": "busybox"},
        "entrypoint": ["sleep", "infinity"],
        "timeout": 600,
        "pausePolicy": {"snapshotType": "Rootfs"},
    });
    base.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

async fn sandbox(rig: &Rig, extra: serde_json::Value) -> String {
    rig.service
        .create(request(extra), &root(), None)
        .await
        .unwrap()
        .id
}

fn persistent() -> serde_json::Value {
    serde_json::json!({"workspace": {"persistent": true, "size": "2Gi"}})
}

/// The runtime's sandboxes of `id` (0 while paused, 1 while running).
fn instances(rig: &Rig, id: &str) -> usize {
    rig.fake.sandboxes().values().filter(|s| s.spec.id == id).count()
}

async fn state(rig: &Rig, id: &str) -> (String, Option<String>) {
    let s = rig.service.get(id, &root()).await.unwrap().status;
    (s.state, s.reason)
}

#[tokio::test]
async fn on_a_workspace_runtime_rootfs_removes_the_instance_keeps_the_workspace_and_resume_remounts_it() {
    let rig = rig().await;
    rig.fake.set_rootfs_pause(RootfsPause::Workspace);
    let id = sandbox(&rig, persistent()).await;
    let workspace = Some(Workspace {
        size_bytes: Some(2 << 30),
    });
    let before = rig
        .fake
        .sandboxes()
        .into_values()
        .find(|s| s.spec.id == id)
        .unwrap()
        .spec;
    assert_eq!(before.workspace, workspace);
    let shown = rig.service.get(&id, &root()).await.unwrap().workspace.unwrap();
    assert!(shown.persistent);
    assert_eq!(shown.size.as_deref(), Some("2147483648"));
    assert!(rig.fake.workspaces().contains(&id));

    rig.service.pause(&id, None, &root()).await.unwrap();
    assert_eq!(instances(&rig, &id), 0, "no instance while paused");
    assert_eq!(
        state(&rig, &id).await,
        ("Paused".into(), Some("HIBERNATED".into()))
    );
    assert!(rig.fake.commits().is_empty(), "nothing is committed");
    assert!(rig.fake.workspaces().contains(&id), "the workspace stays");
    let record = rig.service.store.get(&id).await.unwrap().unwrap();
    let hibernation = record.hibernation.unwrap();
    assert!(hibernation.workspace_only);
    assert_eq!(hibernation.image, "busybox");

    rig.service.resume(&id, &root()).await.unwrap();
    assert_eq!(state(&rig, &id).await.0, "Running");
    let after = rig
        .fake
        .sandboxes()
        .into_values()
        .find(|s| s.spec.id == id)
        .unwrap()
        .spec;
    assert_eq!(after.image, "busybox", "made again from its own image");
    assert_eq!(after.workspace, workspace, "with the same workspace");
    assert_eq!(after.env, before.env);
    let record = rig.service.store.get(&id).await.unwrap().unwrap();
    assert_eq!(record.launch.unwrap().image, None);
    assert_eq!(
        rig.fake.calls(Op::RemoveImage),
        0,
        "no image of its own to remove"
    );

    // Paused again, then deleted: the workspace goes with it.
    rig.service.pause(&id, None, &root()).await.unwrap();
    rig.service.delete(&id, &root()).await.unwrap();
    assert!(!rig.fake.workspaces().contains(&id));
    assert_eq!(
        rig.fake.calls(Op::RemoveImage),
        0,
        "busybox is not the sandbox's to remove"
    );
}

#[tokio::test]
async fn on_a_workspace_runtime_rootfs_without_a_workspace_is_501_naming_the_fix_and_changes_nothing() {
    let rig = rig().await;
    rig.fake.set_rootfs_pause(RootfsPause::Workspace);
    let id = sandbox(&rig, serde_json::json!({})).await;
    let e = rig.service.pause(&id, None, &root()).await.unwrap_err();
    assert!(
        matches!(e, Error::Unsupported(Feature::RootfsWithoutWorkspace)),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("\"workspace\": {\"persistent\": true}"),
        "{e}"
    );
    assert_eq!(state(&rig, &id).await.0, "Running");
    assert_eq!(instances(&rig, &id), 1);
    assert_eq!(rig.fake.calls(Op::Remove), 0);
}

#[tokio::test]
async fn a_removal_that_fails_leaves_the_sandbox_running() {
    let rig = rig().await;
    rig.fake.set_rootfs_pause(RootfsPause::Workspace);
    let id = sandbox(&rig, persistent()).await;
    rig.fake.fail(Op::Remove, 1, || {
        crate::orchestrator::runtime::RuntimeError::Unavailable("down".into())
    });
    rig.service.pause(&id, None, &root()).await.unwrap_err();
    assert_eq!(state(&rig, &id).await.0, "Running");
    let record = rig.service.store.get(&id).await.unwrap().unwrap();
    assert_eq!((record.phase, record.hibernation), (Phase::Ready, None));
    assert!(rig.fake.workspaces().contains(&id));
}

#[tokio::test]
async fn on_a_committing_runtime_the_workspace_survives_rootfs_beside_the_commit() {
    let rig = rig().await;
    let id = sandbox(&rig, persistent()).await;
    rig.service.pause(&id, None, &root()).await.unwrap();
    assert_eq!(rig.fake.commits().len(), 1, "Docker still commits");
    assert!(rig.fake.workspaces().contains(&id));
    rig.service.resume(&id, &root()).await.unwrap();
    let after = rig
        .fake
        .sandboxes()
        .into_values()
        .find(|s| s.spec.id == id)
        .unwrap()
        .spec;
    assert!(after.image.starts_with("sandboxd-paused/"), "{}", after.image);
    assert_eq!(
        after.workspace,
        Some(Workspace {
            size_bytes: Some(2 << 30)
        })
    );
    rig.service.delete(&id, &root()).await.unwrap();
    assert!(!rig.fake.workspaces().contains(&id));
}

#[tokio::test]
async fn a_sandbox_that_expires_paused_or_running_leaves_no_workspace() {
    let rig = rig().await;
    rig.fake.set_rootfs_pause(RootfsPause::Workspace);
    let paused = sandbox(&rig, persistent()).await;
    rig.service.pause(&paused, None, &root()).await.unwrap();
    let running = sandbox(&rig, persistent()).await;
    let plain = sandbox(&rig, serde_json::json!({})).await;
    for id in [&paused, &running, &plain] {
        let mut record = rig.service.store.get(id).await.unwrap().unwrap();
        record.expires_at = Some(now_ms() - 1);
        rig.service.store.update(&record).await.unwrap();
        assert!(rig.service.expire(id).await);
    }
    assert!(rig.fake.workspaces().is_empty());
    assert_eq!(
        rig.fake.calls(Op::RemoveWorkspace),
        2,
        "only sandboxes that had one"
    );
}

#[tokio::test]
async fn a_volume_at_workspace_cannot_be_combined_with_a_persistent_workspace() {
    let rig = rig().await;
    let plan = rig
        .service
        .create(
            request(serde_json::json!({"workspace": {"persistent": true}, "volumes": [
                {"name": "w", "pvc": {"claimName": "x"}, "mountPath": "/workspace"}
            ]})),
            &root(),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(plan, Error::Invalid(_)), "{plan:?}");
    assert!(plan.to_string().contains("/workspace"), "{plan}");
}

#[tokio::test]
async fn a_restart_finishes_a_workspace_only_pause_it_cut_short_and_keeps_the_workspace() {
    let rig = rig().await;
    rig.fake.set_rootfs_pause(RootfsPause::Workspace);
    // Cut short before the instance was removed (or while it was going): finished.
    let live = sandbox(&rig, persistent()).await;
    let mut record = rig.service.store.get(&live).await.unwrap().unwrap();
    record.phase = Phase::Committing;
    record.hibernation = Some(crate::orchestrator::store::Hibernation {
        image: "busybox".into(),
        previous: record.instance.clone().unwrap(),
        suspended_ms: None,
        workspace_only: true,
    });
    rig.service.store.update(&record).await.unwrap();
    // Cut short after the instance was gone: nothing to check an image for.
    let gone = sandbox(&rig, persistent()).await;
    let mut record = rig.service.store.get(&gone).await.unwrap().unwrap();
    rig.fake.remove(record.instance.as_ref().unwrap()).await.unwrap();
    record.phase = Phase::Committing;
    record.hibernation = Some(crate::orchestrator::store::Hibernation {
        image: "busybox".into(),
        previous: record.instance.clone().unwrap(),
        suspended_ms: None,
        workspace_only: true,
    });
    rig.service.store.update(&record).await.unwrap();

    let done = rig.service.reconcile().await.unwrap();
    assert_eq!((done.forgotten, done.removed), (0, 0), "{done:?}");
    for id in [&live, &gone] {
        assert_eq!(
            state(&rig, id).await,
            ("Paused".into(), Some("HIBERNATED".into())),
            "{id}"
        );
        assert_eq!(instances(&rig, id), 0, "{id}");
        assert!(rig.fake.workspaces().contains(id), "{id}");
        rig.service.resume(id, &root()).await.unwrap();
        assert_eq!(state(&rig, id).await.0, "Running", "{id}");
    }
    assert_eq!(rig.fake.calls(Op::ImagePresent), 0, "no image is looked for");
}
