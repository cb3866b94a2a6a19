//! The event journal, diagnostics scopes and the containers view over the fake runtime.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

use super::tests::{eventually, request, rig, root, user};
use super::{ContainerFilter, DiagnosticsQuery, DiagnosticsSettings, Service};
use crate::orchestrator::auth::Role;
use crate::orchestrator::error::{Denial, Error, Kind};
use crate::orchestrator::lifecycle_log::LifecycleLogs;
use crate::orchestrator::runtime::fake::{FakeRuntime, Op};
use crate::orchestrator::runtime::{ObjectEvent, Observed, RuntimeError, RuntimeEvent, RuntimeEventKind};
use crate::wire::events::SandboxEvent;

fn kinds(events: &[SandboxEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

fn scoped(scope: &str) -> DiagnosticsQuery {
    DiagnosticsQuery {
        scope: Some(scope.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_journal_types_what_sandboxd_does_and_outlives_the_sandbox() {
    let rig = rig().await;
    let alice = user("alice", Role::User);
    let bob = user("bob", Role::User);
    let id = rig
        .service
        .create(request(Some(600)), &alice, None)
        .await
        .unwrap()
        .id;
    rig.service.pause(&id, None, &alice).await.unwrap();
    rig.service.resume(&id, &alice).await.unwrap();
    rig.service.delete(&id, &alice).await.unwrap();

    let page = rig.service.journal(&id, 0, 100, &alice).await.unwrap();
    assert_eq!(
        kinds(&page.items),
        ["Created", "Ready", "Paused", "Resumed", "Deleted"]
    );
    assert!(page.items.iter().all(|e| e.source == "sandboxd"), "{page:?}");
    assert!(page.items.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(page.next_since, page.items.last().unwrap().seq);

    let next = rig
        .service
        .journal(&id, page.items[1].seq, 2, &alice)
        .await
        .unwrap();
    assert_eq!(kinds(&next.items), ["Paused", "Resumed"]);
    assert_eq!(next.next_since, page.items[3].seq);
    let end = rig
        .service
        .journal(&id, page.next_since, 100, &alice)
        .await
        .unwrap();
    assert!(end.items.is_empty());
    assert_eq!(end.next_since, page.next_since);

    assert!(
        rig.service.journal(&id, 0, 100, &root()).await.is_ok(),
        "admins read any"
    );
    assert!(matches!(
        rig.service.journal(&id, 0, 100, &bob).await,
        Err(Error::NotFound {
            kind: Kind::Sandbox,
            ..
        })
    ));
    assert!(matches!(
        rig.service.journal("no-such", 0, 100, &root()).await,
        Err(Error::NotFound { .. })
    ));

    // A follower of a deleted sandbox's journal gets what is kept, then the end.
    let followed: Vec<SandboxEvent> = rig
        .service
        .follow_journal(&id, 0, &alice)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(followed, page.items);
}

#[tokio::test]
async fn a_follower_gets_events_as_they_come_and_ends_after_the_delete() {
    let rig = rig().await;
    let id = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    let first = rig.service.journal(&id, 0, 1, &root()).await.unwrap().items[0].seq;
    // Resumed after the first event (as with Last-Event-ID).
    let mut follow = rig.service.follow_journal(&id, first, &root()).await.unwrap();
    assert_eq!(follow.next().await.unwrap().kind, "Ready");
    let pausing = {
        let (service, id) = (rig.service.clone(), id.clone());
        tokio::spawn(async move { service.pause(&id, None, &root()).await })
    };
    assert_eq!(follow.next().await.unwrap().kind, "Paused");
    pausing.await.unwrap().unwrap();
    rig.service.delete(&id, &root()).await.unwrap();
    let rest: Vec<SandboxEvent> = follow.collect().await;
    assert_eq!(kinds(&rest), ["Deleted"]);
}

#[tokio::test]
async fn runtime_events_are_journalled_with_exit_codes_and_oom_kills() {
    let rig = rig().await;
    let exits = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    let ooms = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    let consumer = {
        let service = rig.service.clone();
        tokio::spawn(async move { service.run_runtime_events().await })
    };
    eventually("the consumer listens", || async { rig.fake.event_watchers() > 0 }).await;
    let event = |id: &str, at, kind| RuntimeEvent {
        sandbox_id: Some(id.to_owned()),
        reference: rig.fake.reference_of(id).unwrap(),
        at,
        kind,
    };
    rig.fake.set_observed(
        &exits,
        Observed::Exited {
            code: Some(3),
            oom: false,
            message: None,
        },
    );
    rig.fake
        .emit(event(&exits, 1_000, RuntimeEventKind::Died { code: Some(3) }));
    // Not a sandbox's container: nothing to journal.
    rig.fake.emit(RuntimeEvent {
        sandbox_id: None,
        ..event(&exits, 1_001, RuntimeEventKind::Started)
    });
    // An OOM kill the engine reported only through the container's state.
    rig.fake.set_observed(
        &ooms,
        Observed::Exited {
            code: Some(137),
            oom: true,
            message: None,
        },
    );
    rig.fake
        .emit(event(&ooms, 2_000, RuntimeEventKind::Died { code: Some(137) }));
    let last = |id: String| {
        let service = rig.service.clone();
        async move {
            let items = service.journal(&id, 0, 100, &root()).await.unwrap().items;
            items.last().map(|e| e.kind.clone())
        }
    };
    eventually("the exit is journalled", || async {
        last(exits.clone()).await.as_deref() == Some("Exited")
    })
    .await;
    eventually("the OOM kill is journalled", || async {
        last(ooms.clone()).await.as_deref() == Some("OOMKilled")
    })
    .await;
    let items = rig.service.journal(&exits, 0, 100, &root()).await.unwrap().items;
    let exited = items.last().unwrap();
    assert_eq!(
        (exited.exit_code, exited.reason.as_deref(), exited.source.as_str()),
        (Some(3), Some("Error"), "docker")
    );
    assert_eq!(kinds(&items), ["Created", "Ready", "Exited"]);
    let items = rig.service.journal(&ooms, 0, 100, &root()).await.unwrap().items;
    assert_eq!(kinds(&items), ["Created", "Ready", "Exited", "OOMKilled"]);
    // sandboxd's own account of the stop, once, however often the sandbox is read.
    for _ in 0..2 {
        rig.service.get(&exits, &root()).await.unwrap();
    }
    let items = rig.service.journal(&exits, 0, 100, &root()).await.unwrap().items;
    assert_eq!(kinds(&items), ["Created", "Ready", "Exited", "Exited"]);
    let ours = &items[3];
    assert_eq!(
        (ours.source.as_str(), ours.exit_code, ours.reason.as_deref()),
        ("sandboxd", Some(3), Some("CONTAINER_EXITED_ERROR"))
    );
    assert!(ours.message.starts_with("stopped (Failed): "), "{ours:?}");
    consumer.abort();
}

/// A service whose lifecycle rings are fed by a subscriber for this (current-thread) test.
async fn diagnosable(
    settings: DiagnosticsSettings,
) -> (Arc<Service>, FakeRuntime, Arc<LifecycleLogs>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::start().await;
    let logs = Arc::new(LifecycleLogs::default());
    let service = Service::for_diagnostics_tests(dir.path(), &fake, settings, logs.clone());
    (service, fake, logs, dir)
}

#[tokio::test]
async fn every_diagnostics_scope_answers_and_an_unknown_one_is_refused() {
    let (service, fake, logs, _dir) = diagnosable(DiagnosticsSettings::default()).await;
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(logs.layer()));
    let id = service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    fake.set_logs(&id, "hello\nworld\n");
    service
        .note_runtime_event(&RuntimeEvent {
            sandbox_id: Some(id.clone()),
            reference: fake.reference_of(&id).unwrap(),
            at: crate::wire::time::now_ms() + 1000,
            kind: RuntimeEventKind::Died { code: Some(3) },
        })
        .await;
    let get = |kind: &'static str, q: DiagnosticsQuery| {
        let (service, id) = (service.clone(), id.clone());
        async move { service.diagnostics(&id, kind, &q, &root()).await }
    };

    let container = get("logs", scoped("container")).await.unwrap();
    assert_eq!(container.content, "hello\nworld\n");
    assert_eq!(container.content_length, Some(12));
    assert!(container.warnings.is_empty());
    let lifecycle = get("logs", scoped("lifecycle")).await.unwrap();
    assert!(
        lifecycle.content.contains("sandbox running"),
        "{}",
        lifecycle.content
    );
    // The fake's execd has no files API: the section is empty, and says why.
    let process = get("logs", scoped("process")).await.unwrap();
    assert_eq!(process.content, "");
    assert!(
        process.warnings[0].starts_with("process: execd has not written"),
        "{process:?}"
    );
    let all = get("logs", scoped("all")).await.unwrap();
    let c = all.content.find("=== container ===\nhello\n").unwrap();
    let l = all.content.find("=== lifecycle ===\n").unwrap();
    let p = all.content.find("=== process ===\n").unwrap();
    assert!(c < l && l < p, "{}", all.content);
    assert_eq!(all.warnings.len(), 1, "{all:?}");

    let ours = get("events", scoped("lifecycle")).await.unwrap();
    assert!(
        ours.content.contains(" Created [sandboxd] create requested"),
        "{}",
        ours.content
    );
    assert!(!ours.content.contains("[docker]"), "{}", ours.content);
    let runtime = get("events", scoped("runtime")).await.unwrap();
    assert_eq!(runtime.content.lines().count(), 1, "{}", runtime.content);
    assert!(runtime
        .content
        .contains(" Exited(3) [docker] the container exited with code 3"));
    let every = get("events", scoped("all")).await.unwrap();
    let lines: Vec<&str> = every.content.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].contains("Created") && lines[2].contains("Exited(3)"),
        "{lines:?}"
    );
    assert!(!every.truncated);
    let last = get(
        "events",
        DiagnosticsQuery {
            scope: Some("all".into()),
            tail: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((last.content.lines().count(), last.truncated), (1, true));
    let later = get(
        "events",
        DiagnosticsQuery {
            scope: Some("lifecycle".into()),
            since: Some(crate::wire::time::now_ms() + 60_000),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(later.content, "");

    for (kind, scope, listed) in [
        ("logs", "runtime", "container, lifecycle, process, all"),
        ("events", "container", "lifecycle, runtime, all"),
        ("events", "network", "lifecycle, runtime, all"),
    ] {
        let e = get(kind, scoped(scope)).await.unwrap_err();
        assert!(
            matches!(e, Error::ScopeUnsupported { .. }),
            "{kind}/{scope}: {e:?}"
        );
        assert!(
            e.to_string().ends_with(&format!("supported scopes: {listed}")),
            "{e}"
        );
        assert!(e.to_string().contains(&format!("{scope:?}")), "{e}");
    }
    let plain = service
        .plain_diagnostics(&id, "events", &DiagnosticsQuery::default(), &root())
        .await
        .unwrap();
    assert_eq!(plain, every.content, "the plain events are every event");

    let (off, _fake, _logs, _dir2) = diagnosable(DiagnosticsSettings {
        enabled: false,
        ..Default::default()
    })
    .await;
    let id = off.create(request(Some(600)), &root(), None).await.unwrap().id;
    for kind in ["logs", "events"] {
        assert!(matches!(
            off.diagnostics(&id, kind, &scoped("all"), &root()).await,
            Err(Error::Forbidden(Denial::DiagnosticsDisabled))
        ));
        assert!(matches!(
            off.plain_diagnostics(&id, kind, &DiagnosticsQuery::default(), &root())
                .await,
            Err(Error::Forbidden(Denial::DiagnosticsDisabled))
        ));
    }
}

#[tokio::test]
async fn journals_of_deleted_sandboxes_are_swept_after_the_retention() {
    let (service, _fake, _logs, _dir) = diagnosable(DiagnosticsSettings {
        enabled: true,
        retention: Duration::ZERO,
    })
    .await;
    let gone = service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    let kept = service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    service.delete(&gone, &root()).await.unwrap();
    eventually("the deleted sandbox's journal is swept", || async {
        service.sweep_events().await.unwrap();
        service.journal(&gone, 0, 100, &root()).await.is_err()
    })
    .await;
    let live = service.journal(&kept, 0, 100, &root()).await.unwrap();
    assert_eq!(kinds(&live.items), ["Created", "Ready"]);
}

#[tokio::test]
async fn users_see_only_their_own_containers() {
    let rig = rig().await;
    let alice = user("alice", Role::User);
    let bob = user("bob", Role::User);
    let hers = rig
        .service
        .create(request(Some(600)), &alice, None)
        .await
        .unwrap()
        .id;
    let his = rig
        .service
        .create(request(Some(600)), &bob, None)
        .await
        .unwrap()
        .id;
    rig.service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap();
    let filter = || ContainerFilter {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    let list = rig.service.list_containers(filter(), &alice).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].sandbox_id.as_deref(), Some(hers.as_str()));
    assert_eq!(list.items[0].role, "sandbox");
    assert!(list.items[0].usage.is_none(), "lists carry no usage sample");
    assert_eq!(list.pagination.total_items, 1);
    assert_eq!(
        rig.service
            .list_containers(filter(), &root())
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let only_his = ContainerFilter {
        sandbox_id: Some(his.clone()),
        ..filter()
    };
    assert_eq!(
        rig.service
            .list_containers(only_his, &root())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let exited = ContainerFilter {
        state: Some("exited".into()),
        ..filter()
    };
    assert!(rig
        .service
        .list_containers(exited, &root())
        .await
        .unwrap()
        .items
        .is_empty());

    // By sandbox id or by the runtime's id; with a usage sample while running.
    let by_sandbox = rig.service.container(&hers, &alice).await.unwrap();
    assert_eq!(by_sandbox.state, "Running");
    assert_eq!(by_sandbox.usage.as_ref().map(|u| u.pids), Some(Some(2)));
    let reference = rig.fake.reference_of(&hers).unwrap();
    assert_eq!(
        rig.service.container(&reference, &alice).await.unwrap().id,
        reference
    );
    // Someone else's is not found, by either name.
    let his_reference = rig.fake.reference_of(&his).unwrap();
    for other in [his.as_str(), his_reference.as_str(), "fake-999"] {
        assert!(
            matches!(
                rig.service.container(other, &alice).await,
                Err(Error::NotFound {
                    kind: Kind::Container,
                    ..
                })
            ),
            "{other}"
        );
        assert!(rig
            .service
            .container_logs(other, Default::default(), &alice)
            .await
            .is_err());
    }
    assert!(rig.service.container(&his, &root()).await.is_ok());
    for bad in ["abc123", "", "a/b", "x y"] {
        assert!(
            matches!(rig.service.container(bad, &root()).await, Err(Error::Invalid(_))),
            "{bad:?}"
        );
    }
    let logs: Vec<_> = rig
        .service
        .container_logs(&hers, Default::default(), &alice)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(logs.len(), 1);
}

#[tokio::test]
async fn the_runtime_scope_adds_the_control_planes_events_by_time_and_survives_their_failure() {
    let (service, fake, _logs, _dir) = diagnosable(DiagnosticsSettings::default()).await;
    let id = service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    let now = crate::wire::time::now_ms();
    service
        .note_runtime_event(&RuntimeEvent {
            sandbox_id: Some(id.clone()),
            reference: fake.reference_of(&id).unwrap(),
            at: now + 1000,
            kind: RuntimeEventKind::Died { code: Some(3) },
        })
        .await;
    let event = |at: i64, severity: &str, reason: &str, message: &str, count: i32| ObjectEvent {
        at,
        severity: severity.into(),
        reason: reason.into(),
        message: message.into(),
        count,
    };
    fake.set_object_events(
        &id,
        vec![
            event(
                now + 500,
                "Normal",
                "Pulled",
                "Container image \"x\" already present on machine",
                1,
            ),
            event(
                now + 2000,
                "Warning",
                "Unhealthy",
                "Readiness probe failed: HTTP probe failed with statuscode: 503",
                3,
            ),
        ],
    );
    let get = |scope: &'static str| {
        let (service, id) = (service.clone(), id.clone());
        async move { service.diagnostics(&id, "events", &scoped(scope), &root()).await }
    };

    let runtime = get("runtime").await.unwrap();
    let lines: Vec<&str> = runtime.content.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].ends_with(" Pulled [fake Normal] Container image \"x\" already present on machine"),
        "{lines:?}"
    );
    assert!(lines[1].contains(" Exited(3) [docker] "), "{lines:?}");
    assert!(
        lines[2].ends_with(
            " Unhealthy [fake Warning] Readiness probe failed: HTTP probe failed with statuscode: 503 (x3)"
        ),
        "{lines:?}"
    );
    assert!(runtime.warnings.is_empty(), "{runtime:?}");
    let all = get("all").await.unwrap();
    assert!(all.content.contains(" Pulled [fake Normal]"), "{}", all.content);
    let ours = get("lifecycle").await.unwrap();
    assert!(!ours.content.contains("[fake "), "{}", ours.content);

    // The control plane cannot be asked: the journal's lines, and a warning saying so.
    fake.fail(Op::ObjectEvents, 1, || {
        RuntimeError::Unavailable("apiserver down".into())
    });
    let runtime = get("runtime").await.unwrap();
    assert_eq!(runtime.content.lines().count(), 1, "{}", runtime.content);
    assert_eq!(runtime.warnings.len(), 1, "{runtime:?}");
    assert!(
        runtime.warnings[0].contains("the runtime's events cannot be read: ")
            && runtime.warnings[0].contains("apiserver down"),
        "{runtime:?}"
    );
}
