//! Snapshots, create from a snapshot, forks and Rootfs pause over the fake runtime.

use std::collections::BTreeMap;

use super::tests::{eventually, rig, root, user, Rig};
use super::*;
use crate::orchestrator::auth::Role;
use crate::orchestrator::error::{Conflict, Denial, Kind};
use crate::orchestrator::runtime::fake::Op;
use crate::orchestrator::runtime::{ImageRole, Mount, RuntimeError};
use crate::orchestrator::store::{Phase, SnapshotRow, SnapshotSource, SnapshotState};
use crate::wire::lifecycle::{CreateSandboxRequest, PauseMode};
use crate::wire::snapshots::{CreateSnapshotRequest, ForkRequest};
use crate::wire::time::now_ms;

fn request(extra: serde_json::Value) -> CreateSandboxRequest {
    let mut base = serde_json::json!({
        "image": {"uri": "busybox"},
        "entrypoint": ["sleep", "infinity"],
        "timeout": 600,
        "env": {"A": "1", "B": "2"},
        "metadata": {"team": "ml"},
        "resourceLimits": {"cpu": "500m", "memory": "256Mi"},
    });
    base.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

fn from_snapshot(id: &str, extra: serde_json::Value) -> CreateSandboxRequest {
    let mut base = serde_json::json!({"snapshotId": id, "timeout": 600});
    base.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

impl Rig {
    /// The journal's (type, reason) of sandbox `id`, oldest first.
    async fn journal(&self, id: &str) -> Vec<(String, Option<String>)> {
        self.service
            .store
            .events(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.reason))
            .collect()
    }

    async fn sandbox(&self, extra: serde_json::Value) -> String {
        self.service
            .create(request(extra), &root(), None)
            .await
            .unwrap()
            .id
    }

    /// Takes a snapshot of `id` and waits until it is Ready.
    async fn ready_snapshot(&self, id: &str) -> String {
        let snap = self
            .service
            .create_snapshot(id, CreateSnapshotRequest::default(), &root())
            .await
            .unwrap();
        assert_eq!(snap.status.state, "Creating");
        assert_eq!(snap.status.reason.as_deref(), Some("snapshot_accepted"));
        let service = self.service.clone();
        let snap_id = snap.id.clone();
        eventually("the snapshot is Ready", || {
            let (service, snap_id) = (service.clone(), snap_id.clone());
            async move {
                service
                    .get_snapshot(&snap_id, &root())
                    .await
                    .unwrap()
                    .status
                    .state
                    == "Ready"
            }
        })
        .await;
        snap.id
    }

    /// The spec the fake was last given for sandbox `id`.
    fn spec_of(&self, id: &str) -> crate::orchestrator::runtime::SandboxSpec {
        self.fake
            .sandboxes()
            .into_values()
            .find(|s| s.spec.id == id)
            .unwrap_or_else(|| panic!("no sandbox {id} in the runtime"))
            .spec
    }

    fn has_sandbox(&self, id: &str) -> bool {
        self.fake.sandboxes().values().any(|s| s.spec.id == id)
    }

    async fn state(&self, id: &str) -> (String, Option<String>) {
        let s = self.service.get(id, &root()).await.unwrap().status;
        (s.state, s.reason)
    }
}

#[tokio::test]
async fn a_snapshot_is_taken_live_and_sandboxes_are_made_from_it_until_it_is_deleted() {
    let rig = rig().await;
    let source = rig.sandbox(serde_json::json!({})).await;
    let snap = rig.ready_snapshot(&source).await;
    let image = format!("opensandbox-snapshots:{snap}");
    assert!(rig.fake.has_image(&image));
    assert_eq!(rig.fake.image_role(&image), Some(ImageRole::Snapshot));
    assert_eq!(
        rig.state(&source).await.0,
        "Running",
        "a snapshot leaves its source running"
    );
    assert!(rig
        .journal(&source)
        .await
        .contains(&("SnapshotTaken".into(), None)));
    let got = rig.service.get_snapshot(&snap, &root()).await.unwrap();
    assert_eq!(
        (got.sandbox_id.as_str(), got.status.reason.as_deref()),
        (source.as_str(), Some("snapshot_ready"))
    );

    // The source's entrypoint and environment, under the request's own (null drops one).
    let child = rig
        .service
        .create(
            from_snapshot(
                &snap,
                serde_json::json!({"env": {"B": "two", "A": null, "C": "3"}}),
            ),
            &root(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(child.entrypoint, ["sleep", "infinity"]);
    let spec = rig.spec_of(&child.id);
    assert_eq!(spec.image, image);
    assert_eq!(spec.entrypoint, ["sleep", "infinity"]);
    assert_eq!(spec.env.get("A"), None);
    assert_eq!(spec.env.get("B").map(String::as_str), Some("two"));
    assert_eq!(spec.env.get("C").map(String::as_str), Some("3"));
    let view = rig.service.get(&child.id, &root()).await.unwrap();
    assert_eq!(view.snapshot_id.as_deref(), Some(snap.as_str()));
    assert!(view.image.is_none(), "upstream shows image or snapshotId");
    // An entrypoint of the request's own wins.
    let other = rig
        .service
        .create(
            from_snapshot(
                &snap,
                serde_json::json!({"entrypoint": ["tail", "-f", "/dev/null"]}),
            ),
            &root(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(rig.spec_of(&other.id).entrypoint, ["tail", "-f", "/dev/null"]);

    let list = rig
        .service
        .list_snapshots(
            SnapshotFilter {
                sandbox_id: Some(source.clone()),
                states: vec!["ready".into()],
                page: 1,
                page_size: 20,
                ..Default::default()
            },
            &root(),
        )
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let none = rig
        .service
        .list_snapshots(
            SnapshotFilter {
                states: vec!["Failed".into()],
                page: 1,
                page_size: 20,
                ..Default::default()
            },
            &root(),
        )
        .await
        .unwrap();
    assert!(none.items.is_empty());

    let e = rig.service.delete_snapshot(&snap, &root()).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(Conflict::SnapshotInUse(_))), "{e:?}");
    assert_eq!(
        rig.service
            .get_snapshot(&snap, &root())
            .await
            .unwrap()
            .status
            .state,
        "Ready"
    );
    rig.service.delete(&child.id, &root()).await.unwrap();
    rig.service.delete(&other.id, &root()).await.unwrap();
    rig.service.delete_snapshot(&snap, &root()).await.unwrap();
    assert!(
        !rig.fake.has_image(&image),
        "the image is removed with the snapshot"
    );
    let e = rig.service.get_snapshot(&snap, &root()).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotFound {
                kind: Kind::Snapshot,
                ..
            }
        ),
        "{e:?}"
    );
    // The source outlives its snapshots and vice versa.
    assert_eq!(rig.state(&source).await.0, "Running");
}

#[tokio::test]
async fn snapshots_are_their_owners_and_bad_requests_say_why() {
    let rig = rig().await;
    let source = rig.sandbox(serde_json::json!({})).await;
    let snap = rig.ready_snapshot(&source).await;
    let bob = user("bob", Role::User);
    let not_found = |e: Error| matches!(e, Error::NotFound { .. });
    assert!(not_found(
        rig.service.get_snapshot(&snap, &bob).await.unwrap_err()
    ));
    assert!(not_found(
        rig.service.delete_snapshot(&snap, &bob).await.unwrap_err()
    ));
    assert!(not_found(
        rig.service
            .create(from_snapshot(&snap, serde_json::json!({})), &bob, None)
            .await
            .unwrap_err()
    ));
    assert!(not_found(
        rig.service
            .create_snapshot(&source, CreateSnapshotRequest::default(), &bob)
            .await
            .unwrap_err()
    ));
    let page = SnapshotFilter {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    assert!(rig
        .service
        .list_snapshots(page.clone(), &bob)
        .await
        .unwrap()
        .items
        .is_empty());
    assert_eq!(
        rig.service
            .list_snapshots(page, &root())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let mut both = from_snapshot(&snap, serde_json::json!({}));
    both.image = Some(crate::wire::lifecycle::ImageSpec {
        uri: "busybox".into(),
        auth: None,
    });
    let e = rig.service.create(both, &root(), None).await.unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("mutually exclusive")),
        "{e:?}"
    );
    let e = rig
        .service
        .create(from_snapshot("snap-nope", serde_json::json!({})), &root(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::NotFound {
                kind: Kind::Snapshot,
                ..
            }
        ),
        "{e:?}"
    );
    let e = rig
        .service
        .create_snapshot(
            &source,
            CreateSnapshotRequest {
                name: Some(" ".into()),
            },
            &root(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");

    // A failed commit: Failed with why, nothing can be made from it, and it can be deleted.
    rig.fake.fail(Op::Commit, 1, || {
        RuntimeError::NotFound("no such container".into())
    });
    let failed = rig
        .service
        .create_snapshot(&source, CreateSnapshotRequest::default(), &root())
        .await
        .unwrap();
    let service = rig.service.clone();
    let id = failed.id.clone();
    eventually("the snapshot failed", || {
        let (service, id) = (service.clone(), id.clone());
        async move { service.get_snapshot(&id, &root()).await.unwrap().status.state == "Failed" }
    })
    .await;
    let status = rig
        .service
        .get_snapshot(&failed.id, &root())
        .await
        .unwrap()
        .status;
    assert_eq!(status.reason.as_deref(), Some("snapshot_capture_failed"));
    assert!(status.message.unwrap().contains("gone"));
    let e = rig
        .service
        .create(from_snapshot(&failed.id, serde_json::json!({})), &root(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Conflict(Conflict::SnapshotNotReady(_))),
        "{e:?}"
    );
    rig.service.delete_snapshot(&failed.id, &root()).await.unwrap();

    // Only a running (or frozen) sandbox can be snapshotted.
    rig.fake.set_observed(
        &source,
        crate::orchestrator::runtime::Observed::Exited {
            code: Some(1),
            oom: false,
            message: None,
        },
    );
    let e = rig
        .service
        .create_snapshot(&source, CreateSnapshotRequest::default(), &root())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict(Conflict::NotRunning { .. })), "{e:?}");
}

#[tokio::test]
async fn a_snapshot_being_taken_cannot_be_deleted_and_a_restart_settles_it() {
    let rig = rig().await;
    let source = rig.sandbox(serde_json::json!({})).await;
    let row = |id: &str| SnapshotRow {
        id: id.into(),
        sandbox_id: source.clone(),
        name: None,
        owner: "root".into(),
        image: format!("opensandbox-snapshots:{id}"),
        source: SnapshotSource::default(),
        state: SnapshotState::Creating,
        reason: None,
        message: None,
        created_at: now_ms(),
        transition_at: now_ms(),
    };
    rig.service
        .store
        .insert_snapshot(&row("snap-done"))
        .await
        .unwrap();
    rig.service
        .store
        .insert_snapshot(&row("snap-lost"))
        .await
        .unwrap();
    rig.fake.add_image("opensandbox-snapshots:snap-done");
    let e = rig
        .service
        .delete_snapshot("snap-done", &root())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Conflict(Conflict::SnapshotNotReady(_))),
        "{e:?}"
    );
    // Nor can its sandbox be paused meanwhile.
    let e = rig.service.pause(&source, None, &root()).await.unwrap_err();
    assert!(
        matches!(e, Error::Conflict(Conflict::SnapshotInProgress(_))),
        "{e:?}"
    );
    rig.service.recover_snapshots().await.unwrap();
    let state = |id: &'static str| {
        let service = rig.service.clone();
        async move { service.get_snapshot(id, &root()).await.unwrap().status }
    };
    assert_eq!(state("snap-done").await.state, "Ready");
    let lost = state("snap-lost").await;
    assert_eq!(lost.state, "Failed");
    assert!(lost.message.unwrap().contains("restarted"));
    rig.service.pause(&source, None, &root()).await.unwrap();
}

#[tokio::test]
async fn a_fork_takes_one_snapshot_and_makes_each_sandbox_from_it() {
    let rig = rig().await;
    let source = rig
        .sandbox(serde_json::json!({"pausePolicy": {"snapshotType": "Rootfs"}}))
        .await;
    let forked = rig
        .service
        .fork(
            &source,
            ForkRequest {
                count: Some(3),
                metadata: Some(BTreeMap::from([("child".into(), "yes".into())])),
            },
            &root(),
        )
        .await
        .unwrap();
    assert_eq!(forked.items.len(), 3);
    assert_eq!(rig.fake.calls(Op::Commit), 1, "one snapshot for all");
    let image = format!("opensandbox-snapshots:{}", forked.snapshot_id);
    let source_spec = rig.spec_of(&source);
    for child in &forked.items {
        assert_eq!(child.status.state, "Running");
        let spec = rig.spec_of(&child.id);
        assert_eq!(spec.image, image);
        assert_eq!(spec.entrypoint, source_spec.entrypoint);
        assert_eq!(spec.resources, source_spec.resources);
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(spec.labels.get("team").map(String::as_str), Some("ml"));
        assert_eq!(spec.labels.get("child").map(String::as_str), Some("yes"));
        assert_ne!(
            spec.env.get("EXECD_ACCESS_TOKEN"),
            source_spec.env.get("EXECD_ACCESS_TOKEN")
        );
        let view = rig.service.get(&child.id, &root()).await.unwrap();
        assert_eq!(
            view.pause_policy.map(|p| p.snapshot_type),
            Some(PauseMode::Rootfs)
        );
        assert_eq!(view.timeout, Some(600));
    }
    let snap = rig
        .service
        .get_snapshot(&forked.snapshot_id, &root())
        .await
        .unwrap();
    assert_eq!(snap.status.state, "Ready");
    assert_eq!(snap.name.unwrap(), format!("fork of {source}"));
    assert!(rig
        .journal(&source)
        .await
        .iter()
        .any(|(kind, _)| kind == "Forked"));

    for count in [0, 21] {
        let e = rig
            .service
            .fork(
                &source,
                ForkRequest {
                    count: Some(count),
                    metadata: None,
                },
                &root(),
            )
            .await
            .unwrap_err();
        assert!(matches!(&e, Error::Invalid(m) if m.contains("count")), "{e:?}");
    }
    // A user's fork may not pass the quota (2 here).
    let bob = user("bob", Role::User);
    let mine = rig
        .service
        .create(request(serde_json::json!({})), &bob, None)
        .await
        .unwrap()
        .id;
    let e = rig
        .service
        .fork(
            &mine,
            ForkRequest {
                count: Some(2),
                metadata: None,
            },
            &bob,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden(Denial::Quota { .. })), "{e:?}");
}

/// §11.3: a snapshot outlives its source and cannot be deleted while sandboxes made from it
/// exist. A fork's snapshot is such a snapshot: kept while any of its sandboxes lives (409
/// `SNAPSHOT::IN_USE`), even after the source is gone, and deletable (its image removed)
/// once the last is deleted.
#[tokio::test]
async fn a_forks_snapshot_is_kept_while_its_sandboxes_live_and_deletable_after() {
    let rig = rig().await;
    let source = rig.sandbox(serde_json::json!({})).await;
    let forked = rig
        .service
        .fork(
            &source,
            ForkRequest {
                count: Some(2),
                metadata: None,
            },
            &root(),
        )
        .await
        .unwrap();
    let image = format!("opensandbox-snapshots:{}", forked.snapshot_id);
    rig.service.delete(&source, &root()).await.unwrap();
    for child in &forked.items {
        let e = rig
            .service
            .delete_snapshot(&forked.snapshot_id, &root())
            .await
            .unwrap_err();
        assert!(matches!(&e, Error::Conflict(Conflict::SnapshotInUse(_))), "{e:?}");
        assert!(rig.fake.has_image(&image), "kept while in use");
        let snap = rig
            .service
            .get_snapshot(&forked.snapshot_id, &root())
            .await
            .unwrap();
        assert_eq!(snap.status.state, "Ready", "a refused delete leaves it Ready");
        rig.service.delete(&child.id, &root()).await.unwrap();
    }
    rig.service
        .delete_snapshot(&forked.snapshot_id, &root())
        .await
        .unwrap();
    assert!(!rig.fake.has_image(&image), "the image goes with the snapshot");
    assert!(rig
        .service
        .get_snapshot(&forked.snapshot_id, &root())
        .await
        .is_err());
}

#[tokio::test]
async fn a_fork_whose_sandbox_fails_leaves_nothing_of_itself() {
    let rig = rig().await;
    let source = rig.sandbox(serde_json::json!({})).await;
    rig.fake
        .fail(Op::Create, 1, || RuntimeError::Rejected("no".into()));
    let e = rig
        .service
        .fork(
            &source,
            ForkRequest {
                count: Some(3),
                metadata: None,
            },
            &root(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Runtime(RuntimeError::Rejected(_))), "{e:?}");
    let ids: Vec<String> = rig.fake.sandboxes().values().map(|s| s.spec.id.clone()).collect();
    assert_eq!(ids, std::slice::from_ref(&source), "only the source is left");
    let page = SnapshotFilter {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    assert!(rig
        .service
        .list_snapshots(page, &root())
        .await
        .unwrap()
        .items
        .is_empty());
    assert_eq!(rig.fake.commits().len(), 1);
    assert!(!rig.fake.has_image(&rig.fake.commits()[0].1));
}

#[tokio::test]
async fn rootfs_pause_commits_removes_and_resume_makes_the_same_sandbox_again() {
    let rig = rig().await;
    let id = rig
        .sandbox(serde_json::json!({
            "pausePolicy": {"snapshotType": "Rootfs"},
            "volumes": [{"name": "work", "pvc": {"claimName": "work-1"}, "mountPath": "/work"}],
        }))
        .await;
    let before = rig.spec_of(&id);
    let token = rig.service.store.get(&id).await.unwrap().unwrap().token;
    rig.service.pause(&id, None, &root()).await.unwrap();
    assert!(!rig.has_sandbox(&id), "the container is gone while paused");
    assert_eq!(rig.state(&id).await, ("Paused".into(), Some("HIBERNATED".into())));
    let record = rig.service.store.get(&id).await.unwrap().unwrap();
    let image = record.hibernation.as_ref().unwrap().image.clone();
    assert!(image.starts_with(&format!("sandboxd-paused/{id}:")), "{image}");
    assert!(rig.fake.has_image(&image));
    assert_eq!(rig.fake.image_role(&image), Some(ImageRole::Paused));
    let e = rig
        .service
        .proxy_target(&id, 44772)
        .await
        .unwrap()
        .target
        .unwrap_err();
    assert!(matches!(&e, Error::Conflict(Conflict::NotRunning { state, .. }) if state == "Paused"));
    // Double pause.
    let e = rig.service.pause(&id, None, &root()).await.unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(Conflict::NotRunning { state, .. }) if state == "Paused"),
        "{e:?}"
    );
    let e = rig
        .service
        .pause(&id, Some(PauseMode::Freeze), &root())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict(Conflict::NotRunning { .. })), "{e:?}");

    rig.service.resume(&id, &root()).await.unwrap();
    assert_eq!(rig.state(&id).await.0, "Running");
    let after = rig.spec_of(&id);
    assert_eq!(after.image, image);
    assert_eq!(after.entrypoint, before.entrypoint);
    assert_eq!(after.env, before.env, "the same token and environment");
    assert_eq!(after.env.get("EXECD_ACCESS_TOKEN"), Some(&token));
    assert_eq!(after.labels, before.labels);
    assert_eq!(after.resources, before.resources);
    assert_eq!(
        after.mounts,
        [Mount::Volume {
            name: "work-1".into(),
            sub_path: None,
            mount_path: "/work".into(),
            read_only: false
        }]
    );
    assert_eq!(
        after.previous,
        record.hibernation.as_ref().map(|h| h.previous.clone())
    );
    assert!(rig.fake.has_image(&image), "the resumed sandbox runs from it");
    let e = rig.service.resume(&id, &root()).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(Conflict::NotPaused { .. })), "{e:?}");
    let journal = rig.journal(&id).await;
    let rootfs = Some("Rootfs".to_owned());
    assert!(
        journal.contains(&("Paused".into(), rootfs.clone())),
        "{journal:?}"
    );
    assert!(journal.contains(&("Resumed".into(), rootfs)), "{journal:?}");

    // A second pause commits anew; the first image goes once nothing runs from it.
    rig.service.pause(&id, None, &root()).await.unwrap();
    assert!(!rig.fake.has_image(&image));
    let second = rig
        .service
        .store
        .get(&id)
        .await
        .unwrap()
        .unwrap()
        .hibernation
        .unwrap()
        .image;
    assert_ne!(second, image);
    rig.service.delete(&id, &root()).await.unwrap();
    assert!(
        !rig.fake.has_image(&second),
        "a deleted paused sandbox leaves no image"
    );
}

#[tokio::test]
async fn a_pause_can_choose_its_mode_and_a_failed_commit_leaves_the_sandbox_running() {
    let rig = rig().await;
    let id = rig.sandbox(serde_json::json!({})).await;
    for _ in 0..5 {
        rig.fake.fail(Op::Commit, 1, || {
            RuntimeError::Transient("unable to freeze".into())
        });
    }
    let e = rig
        .service
        .pause(&id, Some(PauseMode::Rootfs), &root())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::FreezerGaveUp {
                verb: "pause",
                tries: 5
            }
        ),
        "{e:?}"
    );
    assert_eq!(rig.state(&id).await.0, "Running");
    assert!(rig.has_sandbox(&id));
    let record = rig.service.store.get(&id).await.unwrap().unwrap();
    assert_eq!((record.phase, record.hibernation), (Phase::Ready, None));
    // The next try goes through (after two transient give-ups).
    rig.fake.fail(Op::Commit, 2, || {
        RuntimeError::Transient("unable to freeze".into())
    });
    rig.service
        .pause(&id, Some(PauseMode::Rootfs), &root())
        .await
        .unwrap();
    assert_eq!(rig.state(&id).await.1.as_deref(), Some("HIBERNATED"));
    rig.service.resume(&id, &root()).await.unwrap();
    // The policy (Freeze) applies without a body.
    rig.service.pause(&id, None, &root()).await.unwrap();
    assert_eq!(
        rig.state(&id).await,
        ("Paused".into(), Some("CONTAINER_PAUSED".into()))
    );
    assert!(rig.has_sandbox(&id));
}

#[tokio::test]
async fn suspend_expiry_stops_the_clock_while_hibernated() {
    let rig = rig().await;
    let id = rig
        .sandbox(serde_json::json!({"pausePolicy": {"snapshotType": "Rootfs", "suspendExpiry": true}}))
        .await;
    let expires = rig
        .service
        .store
        .get(&id)
        .await
        .unwrap()
        .unwrap()
        .expires_at
        .unwrap();
    rig.service.pause(&id, None, &root()).await.unwrap();
    let record = rig.service.store.get(&id).await.unwrap().unwrap();
    assert_eq!(record.expires_at, None, "no expiry while hibernated");
    let left = record.hibernation.unwrap().suspended_ms.unwrap();
    assert!(left > 590_000 && left <= 600_000, "{left}");
    assert!(rig.service.get(&id, &root()).await.unwrap().expires_at.is_none());
    // A renew while hibernated sets what is left.
    let at = now_ms() + 3_600_000;
    rig.service
        .renew(
            &id,
            crate::wire::lifecycle::RenewExpiration {
                expires_at: crate::wire::time::format_ms(at),
            },
            &root(),
        )
        .await
        .unwrap();
    rig.service.resume(&id, &root()).await.unwrap();
    let resumed = rig
        .service
        .store
        .get(&id)
        .await
        .unwrap()
        .unwrap()
        .expires_at
        .unwrap();
    assert!(resumed > expires, "the clock ran on from the renewal");
    assert!((resumed - at).abs() < 5_000, "{resumed} vs {at}");
}

#[tokio::test]
async fn a_hibernated_sandbox_that_expires_leaves_no_image() {
    let rig = rig().await;
    let id = rig
        .sandbox(serde_json::json!({"pausePolicy": {"snapshotType": "Rootfs"}}))
        .await;
    rig.service.pause(&id, None, &root()).await.unwrap();
    let image = rig
        .service
        .store
        .get(&id)
        .await
        .unwrap()
        .unwrap()
        .hibernation
        .unwrap()
        .image;
    let mut record = rig.service.store.get(&id).await.unwrap().unwrap();
    record.expires_at = Some(now_ms() - 1);
    rig.service.store.update(&record).await.unwrap();
    assert!(rig.service.expire(&id).await);
    assert!(rig.service.store.get(&id).await.unwrap().is_none());
    assert!(!rig.fake.has_image(&image));
}

#[tokio::test]
async fn a_restart_keeps_hibernated_sandboxes_and_settles_interrupted_pauses() {
    let rig = rig().await;
    let hibernated = rig
        .sandbox(serde_json::json!({"pausePolicy": {"snapshotType": "Rootfs"}}))
        .await;
    rig.service.pause(&hibernated, None, &root()).await.unwrap();
    let frozen = rig.sandbox(serde_json::json!({})).await;
    rig.service.pause(&frozen, None, &root()).await.unwrap();
    // A Rootfs pause cut short before it removed the container, and a resume cut short.
    let committing = rig.sandbox(serde_json::json!({})).await;
    let mut record = rig.service.store.get(&committing).await.unwrap().unwrap();
    record.phase = Phase::Committing;
    record.hibernation = Some(crate::orchestrator::store::Hibernation {
        image: format!("sandboxd-paused/{committing}:1"),
        previous: record.instance.clone().unwrap(),
        suspended_ms: None,
        workspace_only: false,
    });
    rig.fake.add_image(&format!("sandboxd-paused/{committing}:1"));
    rig.service.store.update(&record).await.unwrap();
    let restoring = rig
        .sandbox(serde_json::json!({"pausePolicy": {"snapshotType": "Rootfs"}}))
        .await;
    rig.service.pause(&restoring, None, &root()).await.unwrap();
    let mut record = rig.service.store.get(&restoring).await.unwrap().unwrap();
    record.phase = Phase::Restoring;
    rig.service.store.update(&record).await.unwrap();
    rig.fake
        .plant(&restoring, crate::orchestrator::runtime::Observed::Running);

    let done = rig.service.reconcile().await.unwrap();
    assert_eq!(done.forgotten, 0, "{done:?}");
    assert_eq!(rig.state(&hibernated).await.1.as_deref(), Some("HIBERNATED"));
    assert_eq!(rig.state(&frozen).await.0, "Paused");
    assert_eq!(rig.state(&committing).await.0, "Running");
    assert!(!rig.fake.has_image(&format!("sandboxd-paused/{committing}:1")));
    assert_eq!(rig.state(&restoring).await.1.as_deref(), Some("HIBERNATED"));
    assert!(!rig.has_sandbox(&restoring), "the half-made container is removed");
    // Both modes resume after the restart.
    rig.service.resume(&hibernated, &root()).await.unwrap();
    rig.service.resume(&frozen, &root()).await.unwrap();
    rig.service.resume(&restoring, &root()).await.unwrap();
    for id in [&hibernated, &frozen, &restoring] {
        assert_eq!(rig.state(id).await.0, "Running", "{id}");
    }
}

#[tokio::test]
async fn a_rootfs_resume_that_fails_stays_paused_for_another_try() {
    let rig = rig().await;
    let id = rig
        .sandbox(serde_json::json!({"pausePolicy": {"snapshotType": "Rootfs"}}))
        .await;
    rig.service.pause(&id, None, &root()).await.unwrap();
    rig.fake
        .fail(Op::Create, 1, || RuntimeError::Unavailable("down".into()));
    let e = rig.service.resume(&id, &root()).await.unwrap_err();
    assert!(matches!(e, Error::Runtime(RuntimeError::Unavailable(_))), "{e:?}");
    assert_eq!(rig.state(&id).await.1.as_deref(), Some("HIBERNATED"));
    rig.service.resume(&id, &root()).await.unwrap();
    assert_eq!(rig.state(&id).await.0, "Running");
}
