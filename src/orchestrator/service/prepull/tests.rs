//! Prepull tasks over the fake runtime: dedup, the concurrency cap, timeout, cancel,
//! progress, failures, ownership and template prepulls, with no engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;

use super::*;
use crate::orchestrator::auth::AuthMethod;
use crate::orchestrator::error::Denial;
use crate::orchestrator::runtime::fake::{FakeRuntime, PullStep};
use crate::orchestrator::runtime::{LayerStep, PullEvent};
use crate::orchestrator::store::{TemplateChange, TemplateRow, VersionRow};
use crate::wire::prepull::{PrepullAuth, PrepullPlatform};
use crate::wire::templates::TemplateSpec;

struct Rig {
    service: Arc<Service>,
    fake: FakeRuntime,
    scheduler: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.scheduler.abort();
    }
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::start().await;
    let service = Service::for_tests(dir.path(), &fake, "key", 86_400, Duration::from_secs(10));
    let scheduler = tokio::spawn({
        let service = service.clone();
        async move { service.run_prepulls().await }
    });
    Rig {
        service,
        fake,
        scheduler,
        _dir: dir,
    }
}

fn user(id: &str, role: Role) -> Principal {
    Principal {
        id: id.into(),
        role,
        method: AuthMethod::Bearer,
        token_id: None,
        expires_at: None,
    }
}

fn alice() -> Principal {
    user("alice", Role::User)
}

fn request(image: &str) -> CreatePrepullRequest {
    CreatePrepullRequest {
        image: image.into(),
        timeout: None,
        auth: None,
        platform: None,
    }
}

fn event(layer: &str, step: LayerStep) -> PullStep {
    PullStep::Event(PullEvent {
        layer: layer.into(),
        step,
    })
}

fn downloading(current: u64, total: u64) -> LayerStep {
    LayerStep::Downloading {
        current,
        total: Some(total),
    }
}

impl Rig {
    async fn create(&self, image: &str, caller: &Principal) -> (PrepullTask, bool) {
        self.service.create_prepull(request(image), caller).await.unwrap()
    }

    async fn get(&self, id: &str) -> PrepullTask {
        self.service.prepull_task(id, &Principal::root()).await.unwrap()
    }

    /// Polls the task (as root) until `check` holds; bounded by a number of looks rather
    /// than the clock, so that it also works with the clock paused.
    async fn until(&self, id: &str, what: &str, check: impl Fn(&PrepullTask) -> bool) -> PrepullTask {
        for _ in 0..4000 {
            let t = self.get(id).await;
            if check(&t) {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("task {id} never became {what}: {:?}", self.get(id).await);
    }

    async fn until_state(&self, id: &str, state: PrepullState) -> PrepullTask {
        self.until(id, state.as_str(), |t| t.status.state == state).await
    }
}

#[tokio::test]
async fn a_second_create_of_an_active_image_returns_the_same_task_and_pulls_once() {
    let rig = rig().await;
    rig.fake.script_pull(
        "img:1",
        vec![
            event("a", LayerStep::Known),
            PullStep::Wait,
            event("a", LayerStep::Done),
        ],
    );
    let (first, deduped) = rig.create("img:1", &alice()).await;
    assert!(!deduped);
    assert_eq!(first.status.state, PrepullState::Pending);
    assert!(first.id.starts_with("pp-"), "{}", first.id);
    let (again, deduped) = rig.create("img:1", &alice()).await;
    assert!(deduped);
    assert_eq!(again.id, first.id);
    rig.until_state(&first.id, PrepullState::Pulling).await;
    // Another user's active task is not shared with bob: he gets his own.
    let (bobs, deduped) = rig.create("img:1", &user("bob", Role::User)).await;
    assert!(!deduped);
    assert_ne!(bobs.id, first.id);
    // An admin sees alice's and gets it.
    let (roots, deduped) = rig.create("img:1", &Principal::root()).await;
    assert!(deduped);
    assert!([first.id.as_str(), bobs.id.as_str()].contains(&roots.id.as_str()));
    rig.fake.release_pull("img:1", 2);
    let done = rig.until_state(&first.id, PrepullState::Completed).await;
    rig.until_state(&bobs.id, PrepullState::Completed).await;
    assert_eq!((done.progress.percent, done.status.reason), (100.0, None));
    assert!(done.started_at.is_some() && done.completed_at.is_some());
    assert_eq!(rig.fake.pull_stats().started, ["img:1", "img:1"]);
    // Present now: a new task completes at once, without a pull.
    let (present, deduped) = rig.create("img:1", &alice()).await;
    assert!(!deduped);
    assert_ne!(present.id, first.id);
    assert_eq!(present.status.state, PrepullState::Completed);
    assert_eq!(present.status.reason.as_deref(), Some(ALREADY_PRESENT));
    assert_eq!(present.progress.percent, 100.0);
    assert_eq!(rig.fake.pull_stats().started.len(), 2);
}

#[tokio::test]
async fn at_most_two_pulls_run_at_once_and_the_rest_wait_pending() {
    let rig = rig().await;
    for image in ["a:1", "b:1", "c:1"] {
        rig.fake
            .script_pull(image, vec![event("l", LayerStep::Known), PullStep::Wait]);
    }
    let mut ids = Vec::new();
    for image in ["a:1", "b:1", "c:1"] {
        ids.push(rig.create(image, &alice()).await.0.id);
    }
    rig.until_state(&ids[0], PrepullState::Pulling).await;
    rig.until_state(&ids[1], PrepullState::Pulling).await;
    assert_eq!(rig.get(&ids[2]).await.status.state, PrepullState::Pending);
    assert_eq!(rig.fake.pull_stats().started, ["a:1", "b:1"]);
    rig.fake.release_pull("b:1", 1);
    rig.until_state(&ids[1], PrepullState::Completed).await;
    rig.until_state(&ids[2], PrepullState::Pulling).await;
    rig.fake.release_pull("a:1", 1);
    rig.fake.release_pull("c:1", 1);
    rig.until_state(&ids[0], PrepullState::Completed).await;
    rig.until_state(&ids[2], PrepullState::Completed).await;
    let stats = rig.fake.pull_stats();
    assert_eq!((stats.max_in_flight, stats.in_flight), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_pull_past_its_timeout_fails_with_timeout_and_is_stopped() {
    let rig = rig().await;
    rig.fake
        .script_pull("slow:1", vec![event("l", downloading(1, 100)), PullStep::Wait]);
    let mut req = request("slow:1");
    req.timeout = Some(60);
    let (t, _) = rig.service.create_prepull(req, &alice()).await.unwrap();
    assert_eq!(t.timeout, 60);
    let failed = rig.until_state(&t.id, PrepullState::Failed).await;
    assert_eq!(failed.status.reason.as_deref(), Some(TIMEOUT));
    assert!(failed.status.message.unwrap().contains("60 s"));
    let stats = rig.fake.pull_stats();
    assert_eq!(
        (stats.dropped, stats.in_flight),
        (1, 0),
        "the runtime's pull was dropped"
    );
    assert!(!rig.fake.has_image("slow:1"));
}

#[tokio::test]
async fn delete_cancels_a_pull_in_flight_and_its_watchers_see_cancelled() {
    let rig = rig().await;
    rig.fake.script_pull(
        "big:1",
        vec![
            event("l", LayerStep::Known),
            event("l", downloading(5, 100)),
            PullStep::Wait,
        ],
    );
    let (t, _) = rig.create("big:1", &alice()).await;
    rig.until(&t.id, "downloading", |t| t.progress.bytes_done == 5)
        .await;
    let mut events = rig.service.watch_prepull(&t.id, &alice()).await.unwrap();
    let first = events.next().await.unwrap();
    assert_eq!(first.task.status.state, PrepullState::Pulling);
    // Read-only callers may not cancel; others do not even see it.
    let viewer = user("alice", Role::Viewer);
    assert!(matches!(
        rig.service.delete_prepull(&t.id, &viewer).await,
        Err(Error::Forbidden(Denial::Role { .. }))
    ));
    assert!(matches!(
        rig.service.delete_prepull(&t.id, &user("bob", Role::User)).await,
        Err(Error::NotFound {
            kind: Kind::Prepull,
            ..
        })
    ));
    rig.service.delete_prepull(&t.id, &alice()).await.unwrap();
    let stats = rig.fake.pull_stats();
    assert_eq!(
        (stats.dropped, stats.in_flight),
        (1, 0),
        "the runtime's pull was dropped"
    );
    assert!(!rig.fake.has_image("big:1"));
    assert!(matches!(
        rig.service.prepull_task(&t.id, &alice()).await,
        Err(Error::NotFound {
            kind: Kind::Prepull,
            ..
        })
    ));
    let rest: Vec<PrepullSnapshot> = events.collect().await;
    let last = rest.last().expect("a final snapshot");
    assert_eq!(last.task.status.state, PrepullState::Cancelled);
    assert!(rest.windows(2).all(|w| w[0].seq < w[1].seq) && first.seq < rest[0].seq);
}

#[tokio::test]
async fn delete_of_a_queued_task_never_starts_its_pull_and_a_finished_one_is_just_removed() {
    let rig = rig().await;
    for image in ["a:1", "b:1", "c:1"] {
        rig.fake.script_pull(image, vec![PullStep::Wait]);
    }
    let mut ids = Vec::new();
    for image in ["a:1", "b:1", "c:1"] {
        ids.push(rig.create(image, &alice()).await.0.id);
    }
    rig.until_state(&ids[1], PrepullState::Pulling).await;
    assert_eq!(rig.get(&ids[2]).await.status.state, PrepullState::Pending);
    let mut events = rig.service.watch_prepull(&ids[2], &alice()).await.unwrap();
    assert_eq!(
        events.next().await.unwrap().task.status.state,
        PrepullState::Pending
    );
    rig.service.delete_prepull(&ids[2], &alice()).await.unwrap();
    let states: Vec<PrepullState> = events.map(|s| s.task.status.state).collect().await;
    assert_eq!(states, [PrepullState::Cancelled]);
    rig.fake.release_pull("a:1", 1);
    rig.until_state(&ids[0], PrepullState::Completed).await;
    rig.service.delete_prepull(&ids[0], &alice()).await.unwrap();
    rig.fake.release_pull("b:1", 1);
    rig.until_state(&ids[1], PrepullState::Completed).await;
    assert_eq!(rig.fake.pull_stats().started, ["a:1", "b:1"]);
    assert!(rig.fake.has_image("a:1"), "a delete never removes the image");
    // A finished task's events: its last state, then the end.
    let done: Vec<PrepullSnapshot> = rig
        .service
        .watch_prepull(&ids[1], &alice())
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].task.status.state, PrepullState::Completed);
}

#[tokio::test]
async fn progress_is_persisted_while_pulling_and_complete_at_the_end() {
    let rig = rig().await;
    rig.fake.script_pull(
        "p:1",
        vec![
            event("base", LayerStep::Present),
            event("a", LayerStep::Known),
            event("a", downloading(10, 200)),
            PullStep::Wait,
            event("a", downloading(150, 200)),
            PullStep::Wait,
            event("a", LayerStep::Done),
        ],
    );
    let (t, _) = rig.create("p:1", &alice()).await;
    let early = rig
        .until(&t.id, "10 bytes in", |t| t.progress.bytes_done == 10)
        .await;
    assert_eq!(early.status.state, PrepullState::Pulling);
    assert_eq!(
        (
            early.progress.layers_total,
            early.progress.layers_done,
            early.progress.bytes_total
        ),
        (2, 1, 200)
    );
    assert_eq!(early.progress.percent, 5.0);
    rig.fake.release_pull("p:1", 1);
    let later = rig
        .until(&t.id, "150 bytes in", |t| t.progress.bytes_done == 150)
        .await;
    assert_eq!(later.progress.percent, 75.0);
    rig.fake.release_pull("p:1", 1);
    let done = rig.until_state(&t.id, PrepullState::Completed).await;
    assert_eq!(
        (
            done.progress.layers_done,
            done.progress.bytes_done,
            done.progress.percent
        ),
        (2, 200, 100.0)
    );
}

#[tokio::test]
async fn pull_failures_become_reasons_and_the_runtimes_own_words_stay_in_the_log() {
    let rig = rig().await;
    let fail = |failure, message: &str| {
        vec![PullStep::Fail(PullError {
            failure,
            message: message.into(),
        })]
    };
    let cases = [
        (
            "missing:1",
            PullFailure::ImageNotFound,
            "manifest unknown",
            "IMAGE_NOT_FOUND",
            true,
        ),
        (
            "private:1",
            PullFailure::Unauthorized,
            "authentication required",
            "UNAUTHORIZED",
            true,
        ),
        (
            "far:1",
            PullFailure::RegistryUnreachable,
            "connection refused",
            "REGISTRY_UNREACHABLE",
            true,
        ),
        (
            "down:1",
            PullFailure::RuntimeUnavailable,
            "docker.sock: secret",
            "RUNTIME_UNAVAILABLE",
            false,
        ),
        (
            "odd:1",
            PullFailure::Failed,
            "thin pool: secret",
            "PULL_FAILED",
            false,
        ),
    ];
    for (image, failure, message, reason, shown) in cases {
        rig.fake.script_pull(image, fail(failure, message));
        let (t, _) = rig.create(image, &alice()).await;
        let failed = rig.until_state(&t.id, PrepullState::Failed).await;
        assert_eq!(failed.status.reason.as_deref(), Some(reason), "{image}");
        let said = failed.status.message.unwrap();
        assert_eq!(said.contains(message), shown, "{image}: {said}");
    }
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_stored() {
    let rig = rig().await;
    let refused = |req: CreatePrepullRequest| {
        let service = rig.service.clone();
        async move { service.create_prepull(req, &alice()).await.unwrap_err() }
    };
    assert!(matches!(
        refused(request("Bad Image")).await,
        Error::InvalidImage(_)
    ));
    assert!(matches!(
        refused(request(&"a".repeat(600))).await,
        Error::InvalidImage(_)
    ));
    for timeout in [0, 59, 3601] {
        let mut req = request("ok:1");
        req.timeout = Some(timeout);
        match refused(req).await {
            Error::Invalid(m) => assert!(m.contains("between 60 and 3600"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    let mut req = request("ok:1");
    req.platform = Some(PrepullPlatform {
        os: "Linux".into(),
        arch: "amd64".into(),
    });
    assert!(matches!(refused(req).await, Error::Invalid(m) if m.contains("platform.os")));
    let viewer = user("vera", Role::Viewer);
    assert!(matches!(
        rig.service.create_prepull(request("ok:1"), &viewer).await,
        Err(Error::Forbidden(Denial::Role { .. }))
    ));
    let listed = rig
        .service
        .list_prepulls(
            PrepullQuery {
                page: 1,
                page_size: 20,
                ..Default::default()
            },
            &Principal::root(),
        )
        .await
        .unwrap();
    assert!(listed.items.is_empty());
    assert!(rig.fake.pull_stats().started.is_empty());
}

#[tokio::test]
async fn credentials_and_platform_reach_the_runtime_only() {
    let rig = rig().await;
    let mut req = request("127.0.0.1:5001/secret:1");
    req.auth = Some(PrepullAuth {
        username: "u".into(),
        password: "hunter2".into(),
    });
    req.platform = Some(PrepullPlatform {
        os: "linux".into(),
        arch: "arm64".into(),
    });
    let (t, _) = rig.service.create_prepull(req, &alice()).await.unwrap();
    let done = rig.until_state(&t.id, PrepullState::Completed).await;
    assert!(!serde_json::to_string(&done).unwrap().contains("hunter2"));
    let stats = rig.fake.pull_stats();
    assert_eq!(
        stats.auth,
        [(
            "127.0.0.1:5001/secret:1".to_owned(),
            Some(RegistryAuth {
                username: "u".into(),
                password: "hunter2".into()
            })
        )]
    );
    let stored = rig
        .service
        .store
        .call(|c| {
            c.query_row("SELECT * FROM prepull_tasks", [], |r| {
                Ok(format!(
                    "{:?}",
                    (0..14)
                        .map(|i| r.get_ref(i).map(|v| format!("{v:?}")))
                        .collect::<Vec<_>>()
                ))
            })
            .map_err(|source| crate::orchestrator::store::StoreError::Sqlite { op: "test", source })
        })
        .await
        .unwrap();
    assert!(!stored.contains("hunter2"), "{stored}");
}

#[tokio::test]
async fn tasks_are_owner_scoped_and_listed_newest_first() {
    let rig = rig().await;
    let bob = user("bob", Role::User);
    let (a1, _) = rig.create("a:1", &alice()).await;
    let (b1, _) = rig.create("b:1", &bob).await;
    let (a2, _) = rig.create("busybox", &alice()).await;
    assert_eq!(a2.image, "busybox:latest");
    for id in [&a1.id, &b1.id, &a2.id] {
        rig.until_state(id, PrepullState::Completed).await;
    }
    assert!(matches!(
        rig.service.prepull_task(&a1.id, &bob).await,
        Err(Error::NotFound {
            kind: Kind::Prepull,
            ..
        })
    ));
    let viewer = user("alice", Role::Viewer);
    assert_eq!(rig.service.prepull_task(&a1.id, &viewer).await.unwrap().id, a1.id);
    let list = |query: PrepullQuery, caller: Principal| {
        let service = rig.service.clone();
        async move {
            let page = service.list_prepulls(query, &caller).await.unwrap();
            (
                page.items.into_iter().map(|t| t.id).collect::<Vec<_>>(),
                page.pagination,
            )
        }
    };
    let all = PrepullQuery {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    let (ids, _) = list(all.clone(), alice()).await;
    assert_eq!(ids, [a2.id.clone(), a1.id.clone()]);
    let (ids, _) = list(all.clone(), Principal::root()).await;
    assert_eq!(ids, [a2.id.clone(), b1.id.clone(), a1.id.clone()]);
    let (ids, _) = list(
        PrepullQuery {
            image: Some("busybox".into()),
            state: Some(PrepullState::Completed),
            ..all.clone()
        },
        alice(),
    )
    .await;
    assert_eq!(ids, [a2.id.as_str()]);
    let (ids, page) = list(
        PrepullQuery {
            page: 2,
            page_size: 1,
            ..all.clone()
        },
        alice(),
    )
    .await;
    assert_eq!(ids, [a1.id.as_str()]);
    assert_eq!(
        (page.total_items, page.total_pages, page.has_next_page),
        (2, 2, false)
    );
    assert!(matches!(
        rig.service
            .list_prepulls(
                PrepullQuery {
                    image: Some("Not Valid".into()),
                    ..all
                },
                &alice()
            )
            .await,
        Err(Error::InvalidImage(_))
    ));
}

fn template(name: &str, owner: &str, public: bool, image: &str) -> TemplateChange {
    TemplateChange::Create(
        TemplateRow {
            id: format!("tpl-{name}"),
            name: name.into(),
            display_name: None,
            description: None,
            tags: Vec::new(),
            author: owner.into(),
            is_public: public,
            metadata: BTreeMap::new(),
            publish: "local".into(),
            owner: owner.into(),
            latest_version: 1,
            created_at: 1,
            updated_at: 1,
        },
        VersionRow {
            version: 1,
            spec: TemplateSpec {
                image: image.into(),
                ..TemplateSpec::default()
            },
            changelog: None,
            created_at: 1,
            created_by: owner.into(),
            rolled_back_from: None,
            phase: "Succeeded".into(),
            manifest_ref: Some(image.into()),
            message: None,
        },
    )
}

#[tokio::test]
async fn a_template_prepull_pulls_its_image_if_the_caller_may_read_the_template() {
    let rig = rig().await;
    rig.service
        .store
        .apply_templates(vec![
            template("open", "alice", true, "python:3.11-slim"),
            template("closed", "alice", false, "127.0.0.1:5000/private:2"),
        ])
        .await
        .unwrap();
    let bob = user("bob", Role::User);
    let (t, _) = rig.service.prepull_template("open", &bob).await.unwrap();
    assert_eq!(t.image, "python:3.11-slim");
    assert_eq!(
        (t.template_id.as_deref(), t.template_version),
        (Some("tpl-open"), Some(1))
    );
    assert!(matches!(
        rig.service.prepull_template("tpl-closed", &bob).await,
        Err(Error::NotFound {
            kind: Kind::Template,
            ..
        })
    ));
    assert!(matches!(
        rig.service.prepull_template("nope", &alice()).await,
        Err(Error::NotFound {
            kind: Kind::Template,
            ..
        })
    ));
    let (mine, _) = rig.service.prepull_template("closed", &alice()).await.unwrap();
    assert_eq!(mine.image, "127.0.0.1:5000/private:2");
    let (roots, deduped) = rig
        .service
        .prepull_template("closed", &Principal::root())
        .await
        .unwrap();
    assert!(deduped || roots.status.reason.as_deref() == Some(ALREADY_PRESENT));
    rig.until_state(&t.id, PrepullState::Completed).await;
    let listed = rig
        .service
        .list_prepulls(
            PrepullQuery {
                template_id: Some("tpl-open".into()),
                page: 1,
                page_size: 20,
                ..Default::default()
            },
            &bob,
        )
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
}

#[tokio::test]
async fn tasks_left_unfinished_by_a_previous_process_fail_as_interrupted() {
    let rig = rig().await;
    let now = now_ms();
    let stale = PrepullRow {
        id: "pp-stale".into(),
        image: "img:1".into(),
        owner: "alice".into(),
        template: None,
        state: PrepullState::Pulling,
        reason: None,
        message: None,
        progress: PrepullProgress::default(),
        timeout: 600,
        created_at: now,
        started_at: Some(now),
        completed_at: None,
        transition_at: now,
    };
    rig.service.store.insert_prepull(&stale).await.unwrap();
    rig.service.recover_prepulls().await.unwrap();
    let t = rig.get("pp-stale").await;
    assert_eq!(t.status.state, PrepullState::Failed);
    assert_eq!(t.status.reason.as_deref(), Some(INTERRUPTED));
    // And a create of that image is a new task, not the dead one.
    let (fresh, deduped) = rig.create("img:1", &alice()).await;
    assert!(!deduped);
    assert_ne!(fresh.id, "pp-stale");
}
