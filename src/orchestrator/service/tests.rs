//! The lifecycle service over the fake runtime: create cleanup at every step, reconciliation,
//! expiry, renew and pause, with no engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::orchestrator::auth::{AuthMethod, Role};
use crate::orchestrator::error::{Conflict, Denial};
use crate::orchestrator::runtime::fake::{Behaviour, FakeRuntime, Op};
use crate::orchestrator::runtime::{Observed, RuntimeError};
use crate::orchestrator::store::{Phase, StoreError};
use crate::wire::lifecycle::{CreateSandboxRequest, RenewExpiration};
use crate::wire::time::{format_ms, now_ms};

pub(super) struct Rig {
    pub(super) service: Arc<Service>,
    pub(super) fake: FakeRuntime,
    _dir: tempfile::TempDir,
}

pub(super) async fn rig() -> Rig {
    rig_with_timeout(Duration::from_secs(10)).await
}

async fn rig_with_timeout(ready_timeout: Duration) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::start().await;
    let service = Service::for_tests(dir.path(), &fake, "key", 86_400, ready_timeout);
    Rig {
        service,
        fake,
        _dir: dir,
    }
}

pub(super) fn root() -> Principal {
    Principal::root()
}

pub(super) fn user(id: &str, role: Role) -> Principal {
    Principal {
        id: id.into(),
        role,
        method: AuthMethod::Bearer,
        token_id: None,
        expires_at: None,
    }
}

pub(super) fn request(timeout: Option<u64>) -> CreateSandboxRequest {
    serde_json::from_value(serde_json::json!({
        "image": {"uri": "busybox"},
        "entrypoint": ["sleep", "infinity"],
        "timeout": timeout,
        "metadata": {"team": "ml"},
    }))
    .unwrap()
}

/// Waits (with a generous deadline) until `check` holds.
pub(super) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Rig {
    async fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .service
            .store
            .all()
            .await
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Ok(r) => r.id,
                Err(e) => e.id,
            })
            .collect();
        ids.sort();
        ids
    }

    fn live_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .fake
            .sandboxes()
            .values()
            .map(|s| s.spec.id.clone())
            .collect();
        ids.sort();
        ids
    }

    async fn assert_nothing_left(&self) {
        assert_eq!(self.ids().await, Vec::<String>::new(), "records left");
        assert_eq!(self.live_ids(), Vec::<String>::new(), "sandboxes left");
    }

    async fn sql(&self, text: String) {
        self.service
            .store
            .call(move |c| {
                c.execute_batch(&text)
                    .map_err(|source| StoreError::Sqlite { op: "test", source })
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn create_hands_the_runtime_a_neutral_spec_and_records_the_instance() {
    let rig = rig().await;
    let created = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap();
    assert_eq!(created.status.state, "Running");
    let sandboxes = rig.fake.sandboxes();
    let (reference, sandbox) = sandboxes.iter().next().unwrap();
    assert_eq!(sandbox.spec.id, created.id);
    assert_eq!(sandbox.spec.resources.pids, 99, "the default pids limit");
    assert_eq!(sandbox.spec.labels.get("team").map(String::as_str), Some("ml"));
    assert_eq!(sandbox.spec.env.get("OPENSANDBOX_ID"), Some(&created.id));
    let record = rig.service.store.get(&created.id).await.unwrap().unwrap();
    assert_eq!(record.phase, Phase::Ready);
    assert_eq!(record.instance.unwrap().reference, *reference);
    assert_eq!(sandbox.spec.env.get("EXECD_ACCESS_TOKEN"), Some(&record.token));
    assert_eq!(sandbox.spec.expires_at, record.expires_at);
}

#[tokio::test]
async fn a_sandbox_shows_its_name_owner_limits_timeout_and_env_and_lists_by_name() {
    let rig = rig().await;
    let alice = user("alice", Role::User);
    let mut req = request(Some(600));
    req.name = Some("My Sandbox".into());
    req.env = Some([("A".to_owned(), Some("1".to_owned())), ("B".to_owned(), None)].into());
    req.resource_limits = Some(
        [
            ("memory".to_owned(), serde_json::json!("256Mi")),
            ("cpu".to_owned(), serde_json::json!(0.5)),
        ]
        .into(),
    );
    let created = rig.service.create(req, &alice, None).await.unwrap();
    assert_eq!(created.name.as_deref(), Some("My Sandbox"));
    let got = rig.service.get(&created.id, &alice).await.unwrap();
    assert_eq!(got.name.as_deref(), Some("My Sandbox"));
    assert_eq!(got.owner.as_deref(), Some("alice"));
    assert_eq!(got.timeout, Some(600));
    assert_eq!(
        got.resource_limits.unwrap(),
        BTreeMap::from([
            ("cpu".to_owned(), "0.5".to_owned()),
            ("memory".to_owned(), "256Mi".to_owned())
        ])
    );
    let env = got.env.unwrap();
    assert_eq!(
        env,
        BTreeMap::from([("A".to_owned(), "1".to_owned())]),
        "null entries dropped, nothing of sandboxd's own"
    );
    let other = rig.service.create(request(None), &alice, None).await.unwrap();
    let unnamed = rig.service.get(&other.id, &alice).await.unwrap();
    assert_eq!((unnamed.name, unnamed.timeout, unnamed.env), (None, None, None));

    let by_name = |name: &str| ListFilter {
        page: 1,
        page_size: 20,
        name: Some(name.into()),
        ..Default::default()
    };
    let found = rig.service.list(by_name("My Sandbox"), &alice).await.unwrap();
    assert_eq!(
        found.items.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [created.id.as_str()]
    );
    assert!(
        rig.service
            .list(by_name("my sandbox"), &alice)
            .await
            .unwrap()
            .items
            .is_empty(),
        "exact match"
    );
    assert!(
        rig.service
            .list(by_name("My Sandbox"), &user("bob", Role::User))
            .await
            .unwrap()
            .items
            .is_empty(),
        "someone else's name finds nothing"
    );

    for (name, why) in [
        ("", "blank"),
        ("   ", "blank"),
        ("a\nb", "control"),
        (&"x".repeat(129)[..], "128"),
    ] {
        let mut req = request(None);
        req.name = Some(name.to_owned());
        let err = rig.service.create(req, &alice, None).await.unwrap_err();
        assert!(
            matches!(err, Error::Invalid(_)) && err.to_string().contains(why),
            "{name:?}: {err}"
        );
    }
    let mut req = request(None);
    req.name = Some("é".repeat(128));
    let carol = user("carol", Role::User);
    rig.service
        .create(req, &carol, None)
        .await
        .expect("128 characters, not bytes");
}

#[tokio::test]
async fn a_create_the_runtime_refuses_leaves_nothing() {
    let rig = rig().await;
    rig.fake.fail(Op::Create, 1, || RuntimeError::Engine {
        op: "create the container",
        message: "disk full".into(),
    });
    let e = rig
        .service
        .create(request(None), &root(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Runtime(RuntimeError::Engine { .. })), "{e:?}");
    rig.assert_nothing_left().await;

    rig.fake.fail(Op::Create, 1, || {
        RuntimeError::ImageNotFound("no such image".into())
    });
    let e = rig
        .service
        .create(request(None), &root(), None)
        .await
        .unwrap_err();
    assert!(e.is_client_error(), "{e:?}");
    rig.assert_nothing_left().await;
}

#[tokio::test]
async fn a_sandbox_that_exits_at_start_is_removed_and_its_output_reported() {
    let rig = rig().await;
    rig.fake.behave(Behaviour::Exits(3));
    let e = rig
        .service
        .create(request(None), &root(), None)
        .await
        .unwrap_err();
    let Error::StartFailed(message) = &e else {
        panic!("{e:?}");
    };
    assert!(message.contains("code 3"), "{message}");
    assert!(message.contains("output of fake-"), "{message}");
    rig.assert_nothing_left().await;
}

#[tokio::test]
async fn an_execd_that_never_answers_times_out_and_leaves_nothing() {
    let rig = rig_with_timeout(Duration::from_millis(300)).await;
    rig.fake.behave(Behaviour::Silent);
    let e = rig
        .service
        .create(request(None), &root(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::StartFailed(m) if m.contains("did not answer /ping")),
        "{e:?}"
    );
    rig.assert_nothing_left().await;
}

#[tokio::test]
async fn a_failed_cleanup_keeps_the_record_so_reconciliation_finishes_it() {
    let rig = rig().await;
    rig.fake.behave(Behaviour::Exits(1));
    rig.fake.fail(Op::Remove, 1, || {
        RuntimeError::Unavailable("engine restarting".into())
    });
    rig.service
        .create(request(None), &root(), None)
        .await
        .unwrap_err();
    assert_eq!(
        rig.ids().await.len(),
        1,
        "the record stays while its sandbox does"
    );
    assert_eq!(rig.live_ids().len(), 1);

    let done = rig.service.reconcile().await.unwrap();
    assert_eq!((done.removed, done.failed), (1, 0));
    rig.assert_nothing_left().await;
}

#[tokio::test]
async fn reconcile_adopts_forgets_removes_and_never_touches_what_it_cannot_classify() {
    let rig = rig().await;
    let running = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    let vanished = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    let expired = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    let half = rig.service.create(request(None), &root(), None).await.unwrap().id;
    let future = rig.service.create(request(None), &root(), None).await.unwrap().id;
    let corrupt = rig.service.create(request(None), &root(), None).await.unwrap().id;
    let strange = rig.service.create(request(None), &root(), None).await.unwrap().id;
    rig.fake.plant("orphan", Observed::Running);

    // The sandbox of `vanished` is gone behind sandboxd's back.
    let reference = rig
        .fake
        .sandboxes()
        .into_iter()
        .find(|(_, s)| s.spec.id == vanished)
        .unwrap()
        .0;
    rig.fake
        .remove(&crate::orchestrator::runtime::Instance {
            kind: crate::orchestrator::runtime::RuntimeKind::Fake,
            reference,
            data: String::new(),
        })
        .await
        .unwrap();
    rig.sql(format!(
        "UPDATE sandboxes SET expires_at = 1 WHERE id = '{expired}'"
    ))
    .await;
    rig.sql(format!(
        "UPDATE sandboxes SET phase = 'pending' WHERE id = '{half}'"
    ))
    .await;
    // A newer sandboxd's phase, and a damaged row: neither may be read as anything else.
    rig.sql(format!(
        "UPDATE sandboxes SET phase = 'hibernating' WHERE id = '{future}'"
    ))
    .await;
    rig.sql(format!(
        "UPDATE sandboxes SET entrypoint = '[' WHERE id = '{corrupt}'"
    ))
    .await;
    // A half-created record whose sandbox is in a state this build does not know.
    rig.sql(format!(
        "UPDATE sandboxes SET phase = 'pending' WHERE id = '{strange}'"
    ))
    .await;
    rig.fake.set_observed(
        &strange,
        Observed::Unknown("docker reports \"hibernating\"".into()),
    );

    let done = rig.service.reconcile().await.unwrap();
    assert_eq!(
        (
            done.adopted,
            done.forgotten,
            done.removed,
            done.left_alone,
            done.failed
        ),
        (1, 1, 3, 3, 0),
        "{done:?}"
    );
    let mut kept = vec![running.clone(), future.clone(), corrupt.clone(), strange.clone()];
    kept.sort();
    assert_eq!(rig.ids().await, kept, "records");
    assert_eq!(rig.live_ids(), kept, "sandboxes");
}

#[tokio::test]
async fn reconcile_fails_only_when_the_runtime_cannot_be_read() {
    let rig = rig().await;
    rig.service.create(request(None), &root(), None).await.unwrap();
    rig.fake.fail(Op::ObserveAll, 1, || {
        RuntimeError::Unavailable("no engine".into())
    });
    let e = rig.service.reconcile().await.unwrap_err();
    assert!(matches!(e, Error::Runtime(RuntimeError::Unavailable(_))), "{e:?}");
    assert_eq!(rig.ids().await.len(), 1, "nothing forgotten on a failed read");
    assert_eq!(rig.live_ids().len(), 1);
}

#[tokio::test]
async fn expiry_removes_a_sandbox_when_its_time_comes_and_skips_unreadable_rows() {
    let rig = rig().await;
    let doomed = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    let kept = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    let unreadable = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    rig.sql(format!(
        "UPDATE sandboxes SET expires_at = 1 WHERE id IN ('{doomed}', '{unreadable}');
         UPDATE sandboxes SET phase = 'hibernating' WHERE id = '{unreadable}'"
    ))
    .await;
    let task = tokio::spawn({
        let service = rig.service.clone();
        async move { service.run_expiry().await }
    });
    eventually("the expired sandbox is removed", || async {
        rig.service.store.get(&doomed).await.unwrap().is_none()
    })
    .await;
    task.abort();
    let mut left = vec![kept, unreadable];
    left.sort();
    assert_eq!(rig.live_ids(), left);
    assert_eq!(rig.ids().await, left);
}

#[tokio::test]
async fn renew_extends_only_what_has_an_expiry() {
    let rig = rig().await;
    let id = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    let later = now_ms() + 7_200_000;
    let renewed = rig
        .service
        .renew(
            &id,
            RenewExpiration {
                expires_at: format_ms(later),
            },
            &root(),
        )
        .await
        .unwrap();
    assert_eq!(renewed.expires_at, format_ms(later));
    let record = rig.service.store.get(&id).await.unwrap().unwrap();
    assert_eq!(record.expires_at, Some(later));

    let past = rig
        .service
        .renew(
            &id,
            RenewExpiration {
                expires_at: format_ms(now_ms() - 1000),
            },
            &root(),
        )
        .await
        .unwrap_err();
    assert!(matches!(past, Error::Invalid(_)), "{past:?}");
    let manual = rig.service.create(request(None), &root(), None).await.unwrap().id;
    let e = rig
        .service
        .renew(
            &manual,
            RenewExpiration {
                expires_at: format_ms(later),
            },
            &root(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Conflict(Conflict::NoExpiry(_))), "{e:?}");
    let e = rig
        .service
        .renew(
            "nope",
            RenewExpiration {
                expires_at: format_ms(later),
            },
            &root(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
}

#[tokio::test]
async fn pause_retries_the_freezer_and_resume_thaws() {
    let rig = rig().await;
    let id = rig.service.create(request(None), &root(), None).await.unwrap().id;
    rig.fake.fail(Op::Pause, 2, || {
        RuntimeError::Transient("unable to freeze".into())
    });
    rig.service.pause(&id, None, &root()).await.unwrap();
    assert_eq!(rig.fake.calls(Op::Pause), 3);
    assert_eq!(
        rig.service.get(&id, &root()).await.unwrap().status.state,
        "Paused"
    );
    let events = rig.service.store.events(&id).await.unwrap();
    assert!(
        events.iter().any(|e| e.message == "paused (after 3 tries)"),
        "{events:?}"
    );
    // The proxy refuses a paused sandbox from its record alone.
    let e = rig
        .service
        .proxy_target(&id, 44772)
        .await
        .unwrap()
        .target
        .unwrap_err();
    assert!(matches!(&e, Error::Conflict(Conflict::NotRunning { state, .. }) if state == "Paused"));

    let e = rig.service.pause(&id, None, &root()).await.unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(Conflict::NotRunning { state, .. }) if state == "Paused"),
        "{e:?}"
    );
    rig.service.resume(&id, &root()).await.unwrap();
    assert_eq!(
        rig.service.get(&id, &root()).await.unwrap().status.state,
        "Running"
    );
    let e = rig.service.resume(&id, &root()).await.unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(Conflict::NotPaused { state, .. }) if state == "Running"),
        "{e:?}"
    );
    assert!(rig.service.proxy_target(&id, 44772).await.unwrap().target.is_ok());
}

#[tokio::test]
async fn a_freezer_that_keeps_failing_leaves_the_sandbox_running() {
    let rig = rig().await;
    let id = rig.service.create(request(None), &root(), None).await.unwrap().id;
    rig.fake.fail(Op::Pause, 5, || {
        RuntimeError::Transient("unable to freeze".into())
    });
    let e = rig.service.pause(&id, None, &root()).await.unwrap_err();
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
    assert_eq!(
        rig.service.get(&id, &root()).await.unwrap().status.state,
        "Running"
    );
    let record = rig.service.store.get(&id).await.unwrap().unwrap();
    assert_eq!(record.phase, Phase::Ready);
}

#[tokio::test]
async fn a_pause_behind_sandboxds_back_reaches_the_proxy_at_the_next_read() {
    let rig = rig().await;
    let id = rig.service.create(request(None), &root(), None).await.unwrap().id;
    rig.fake.set_observed(&id, Observed::Paused);
    assert_eq!(
        rig.service.get(&id, &root()).await.unwrap().status.state,
        "Paused"
    );
    assert!(rig.service.proxy_target(&id, 8080).await.unwrap().target.is_err());
    rig.fake.set_observed(
        &id,
        Observed::Exited {
            code: Some(137),
            oom: true,
            message: None,
        },
    );
    let status = rig.service.get(&id, &root()).await.unwrap().status;
    assert_eq!(status.state, "Failed");
    assert!(status.message.unwrap().contains("memory limit"));
}

#[tokio::test]
async fn delete_removes_both_and_a_second_delete_is_not_found() {
    let rig = rig().await;
    let id = rig.service.create(request(None), &root(), None).await.unwrap().id;
    rig.service.delete(&id, &root()).await.unwrap();
    rig.assert_nothing_left().await;
    let e = rig.service.delete(&id, &root()).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
}

#[tokio::test]
async fn states_map_as_the_contract_says() {
    use super::sandboxes::status;
    let rig = rig().await;
    let id = rig.service.create(request(None), &root(), None).await.unwrap().id;
    let mut record = rig.service.store.get(&id).await.unwrap().unwrap();
    let state = |r: &crate::orchestrator::store::Record, o: Observed| status(r, &o).state;
    assert_eq!(state(&record, Observed::Running), "Running");
    assert_eq!(state(&record, Observed::Paused), "Paused");
    assert_eq!(state(&record, Observed::Starting), "Pending");
    assert_eq!(state(&record, Observed::Stopping), "Stopping");
    let exited = |code| Observed::Exited {
        code,
        oom: false,
        message: None,
    };
    assert_eq!(state(&record, exited(Some(0))), "Terminated");
    assert_eq!(state(&record, exited(Some(137))), "Failed");
    assert_eq!(state(&record, exited(None)), "Failed");
    assert_eq!(state(&record, Observed::Gone), "Failed");
    assert_eq!(state(&record, Observed::Unknown("?".into())), "Unknown");
    record.phase = Phase::Pending;
    assert_eq!(state(&record, Observed::Gone), "Pending");
}

#[tokio::test]
async fn someone_elses_sandbox_is_not_found_on_every_route() {
    let rig = rig().await;
    let alice = user("alice", Role::User);
    let bob = user("bob", Role::User);
    let id = rig
        .service
        .create(request(Some(600)), &alice, None)
        .await
        .unwrap()
        .id;
    let gone = |r: Result<(), Error>| matches!(r, Err(Error::NotFound { .. }));
    assert!(gone(rig.service.get(&id, &bob).await.map(drop)));
    assert!(gone(rig.service.pause(&id, None, &bob).await));
    assert!(gone(rig.service.resume(&id, &bob).await));
    assert!(gone(rig.service.delete(&id, &bob).await));
    assert!(gone(
        rig.service
            .patch_metadata(&id, serde_json::Map::new(), &bob)
            .await
            .map(drop)
    ));
    let later = RenewExpiration {
        expires_at: format_ms(now_ms() + 7_200_000),
    };
    assert!(gone(rig.service.renew(&id, later, &bob).await.map(drop)));
    assert!(gone(
        rig.service
            .endpoint(&id, "44772", false, None, &bob)
            .await
            .map(drop)
    ));
    assert!(gone(
        rig.service
            .diagnostics(
                &id,
                "events",
                &DiagnosticsQuery {
                    scope: Some("lifecycle".into()),
                    ..Default::default()
                },
                &bob
            )
            .await
            .map(drop)
    ));
    assert!(gone(
        rig.service
            .plain_diagnostics(&id, "logs", &DiagnosticsQuery::default(), &bob)
            .await
            .map(drop)
    ));
    let filter = || ListFilter {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    assert_eq!(rig.service.list(filter(), &bob).await.unwrap().items.len(), 0);
    assert_eq!(rig.service.list(filter(), &alice).await.unwrap().items.len(), 1);
    // Admins see every owner, and may filter by one; others may not ask for someone else's.
    assert_eq!(rig.service.list(filter(), &root()).await.unwrap().items.len(), 1);
    let only_bob = ListFilter {
        owner: Some("bob".into()),
        ..filter()
    };
    assert_eq!(
        rig.service
            .list(only_bob.clone(), &root())
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    assert!(matches!(
        rig.service.list(only_bob, &alice).await,
        Err(Error::Forbidden(_))
    ));
    // The owner still has it, untouched.
    assert_eq!(
        rig.service.get(&id, &alice).await.unwrap().status.state,
        "Running"
    );
    rig.service.delete(&id, &alice).await.unwrap();
}

#[tokio::test]
async fn a_user_at_its_quota_is_refused_and_admins_are_not_counted() {
    let rig = rig().await;
    let alice = user("alice", Role::User);
    for _ in 0..2 {
        rig.service.create(request(None), &alice, None).await.unwrap();
    }
    let e = rig.service.create(request(None), &alice, None).await.unwrap_err();
    assert!(matches!(e, Error::Forbidden(Denial::Quota { limit: 2 })), "{e:?}");
    assert_eq!(
        rig.live_ids().len(),
        2,
        "nothing was created for the refused request"
    );
    for _ in 0..3 {
        rig.service.create(request(None), &root(), None).await.unwrap();
    }
}

#[tokio::test]
async fn events_carry_the_request_id_they_were_caused_by() {
    let rig = rig().await;
    let id = REQUEST_ID
        .scope(
            "req-123".to_owned(),
            rig.service.create(request(None), &root(), None),
        )
        .await
        .unwrap()
        .id;
    let events = rig.service.store.events(&id).await.unwrap();
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e.request_id.as_deref() == Some("req-123")),
        "{events:?}"
    );
    let text = rig
        .service
        .plain_diagnostics(&id, "events", &DiagnosticsQuery::default(), &root())
        .await
        .unwrap();
    assert!(text.contains("(request req-123)"), "{text}");
}

#[tokio::test]
async fn tokens_are_minted_within_the_callers_rights_and_revoked_for_good() {
    use crate::wire::identity::CreateToken;
    let rig = rig().await;
    let mint = |user_id: &str, role: Option<&str>, ttl: Option<u64>| CreateToken {
        user_id: user_id.into(),
        role: role.map(str::to_owned),
        ttl_seconds: ttl,
    };
    let token = rig
        .service
        .mint_token(mint("alice", None, None), &root())
        .await
        .unwrap();
    assert_eq!(
        (token.role.as_str(), token.token_type.as_str()),
        ("user", "Bearer")
    );
    let alice = rig
        .service
        .authority()
        .resolve(None, Some(&token.access_token), now_ms())
        .unwrap();
    assert_eq!((alice.id.as_str(), alice.role), ("alice", Role::User));
    // A user mints for itself at or below its role, never for others or above.
    assert!(rig
        .service
        .mint_token(mint("alice", Some("viewer"), Some(60)), &alice)
        .await
        .is_ok());
    for (req, why) in [
        (mint("bob", None, None), "someone else"),
        (mint("alice", Some("admin"), None), "a higher role"),
    ] {
        let e = rig.service.mint_token(req, &alice).await.unwrap_err();
        assert!(matches!(e, Error::Forbidden(Denial::Mint(_))), "{why}: {e:?}");
    }
    for req in [
        mint("", None, None),
        mint(&"a".repeat(129), None, None),
        mint("a b", None, None),
        mint("alice", Some("root"), None),
        mint("alice", None, Some(59)),
        mint("alice", None, Some(604_801)),
    ] {
        let e = rig.service.mint_token(req, &root()).await.unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    }
    // Bob cannot revoke Alice's token (not found); Alice can.
    let bob = user("bob", Role::User);
    let e = rig.service.revoke_token(&token.token_id, &bob).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    rig.service.revoke_token(&token.token_id, &alice).await.unwrap();
    let refused = rig
        .service
        .authority()
        .resolve(None, Some(&token.access_token), now_ms());
    assert_eq!(
        refused,
        Err(crate::orchestrator::error::AuthFailure::TokenRevoked)
    );
    let revoked = rig.service.store.revoked_tokens(now_ms()).await.unwrap();
    assert_eq!(revoked.len(), 1, "the deny-list is in the store too");
}

#[tokio::test]
async fn the_sweep_removes_sandboxes_without_a_record_and_nothing_else() {
    let rig = rig().await;
    let kept = rig
        .service
        .create(request(Some(600)), &root(), None)
        .await
        .unwrap()
        .id;
    // A create the runtime finished after the sandboxd that asked for it died.
    rig.fake.plant("late", Observed::Starting);
    assert_eq!(rig.service.sweep_orphans().await.unwrap(), 1);
    let left: Vec<String> = rig.fake.sandboxes().into_values().map(|s| s.spec.id).collect();
    assert_eq!(left, std::slice::from_ref(&kept));
    assert_eq!(rig.service.sweep_orphans().await.unwrap(), 0);
    assert!(rig.service.get(&kept, &root()).await.is_ok());
}

// Startup gates: a pre-start hook and a readiness probe make create answer `Pending` at once;
// a startup task takes the sandbox on to `Running` or records why it failed.

use crate::orchestrator::spec::Plan;
use crate::wire::templates::{ExecProbe, HttpGetProbe, ReadinessProbe, TcpProbe};

/// A plan with a pre-start hook (when `pre_start`) and `readiness`.
fn gated_plan(pre_start: bool, readiness: Option<ReadinessProbe>) -> Plan {
    let mut body = serde_json::json!({
        "image": {"uri": "busybox"},
        "entrypoint": ["sleep", "infinity"],
        "timeout": 600,
    });
    if pre_start {
        body["lifecycle"] =
            serde_json::json!({"preStart": {"command": ["sh", "-c", "touch /ready"], "timeoutSeconds": 30}});
    }
    let req: CreateSandboxRequest = serde_json::from_value(body).unwrap();
    let limits = crate::orchestrator::spec::Limits {
        max_timeout: 86_400,
        allowed_host_paths: Vec::new(),
    };
    Plan {
        readiness,
        ..crate::orchestrator::spec::plan(req, &limits).unwrap()
    }
}

/// A probe tried every second that fails the sandbox after `threshold` failures.
fn probe(threshold: u64) -> ReadinessProbe {
    ReadinessProbe {
        period_seconds: Some(1),
        failure_threshold: Some(threshold),
        ..Default::default()
    }
}

impl Rig {
    /// `(state, reason, message)` of sandbox `id` as `GET` shows it.
    async fn status_of(&self, id: &str) -> (String, String, String) {
        let s = self.service.get(id, &root()).await.unwrap().status;
        (
            s.state,
            s.reason.unwrap_or_default(),
            s.message.unwrap_or_default(),
        )
    }

    /// Waits until `GET` shows sandbox `id` in `state` with `reason`; returns the message.
    async fn until_status(&self, id: &str, state: &str, reason: &str) -> String {
        eventually(&format!("{id} is {state} ({reason})"), || async {
            let (s, r, _) = self.status_of(id).await;
            s == state && r == reason
        })
        .await;
        self.status_of(id).await.2
    }

    async fn events_of(&self, id: &str) -> Vec<String> {
        let events = self.service.store.events(id).await.unwrap();
        events.into_iter().map(|e| e.message).collect()
    }
}

#[tokio::test]
async fn a_pre_start_sandbox_is_pending_at_once_and_running_when_its_hook_finishes() {
    let rig = rig().await;
    rig.fake.behave(Behaviour::Starting);
    let created = rig
        .service
        .create_from_plan(gated_plan(true, None), None, &root(), None)
        .await
        .unwrap();
    // Create did not wait for the hook, which has not finished.
    assert_eq!(created.status.state, "Pending");
    assert_eq!(created.status.reason.as_deref(), Some("PRE_START_RUNNING"));
    let id = created.id;
    let spec = rig.fake.sandboxes().into_values().next().unwrap().spec;
    let lifecycle: serde_json::Value = serde_json::from_str(&spec.env["OPENSANDBOX_LIFECYCLE"]).unwrap();
    assert_eq!(
        lifecycle,
        serde_json::json!({"preStart": {"command": ["sh", "-c", "touch /ready"], "timeoutSeconds": 30}})
    );
    assert_eq!(
        rig.status_of(&id).await,
        ("Pending".into(), "PRE_START_RUNNING".into(), String::new())
    );
    // Not Running yet: neither the server proxy nor pause will touch it.
    let route = rig.service.proxy_target(&id, 44772).await.unwrap();
    assert!(
        matches!(route.target, Err(Error::Conflict(Conflict::NotRunning { ref state, .. })) if state == "Pending")
    );
    assert!(matches!(
        rig.service.pause(&id, None, &root()).await,
        Err(Error::Conflict(_))
    ));

    rig.fake.finish_pre_start(&id);
    rig.until_status(&id, "Running", "CONTAINER_RUNNING").await;
    assert!(rig.service.proxy_target(&id, 44772).await.unwrap().target.is_ok());
    let events = rig.events_of(&id).await;
    for needle in [
        "the preStart hook runs",
        "preStart finished",
        "running: ready after",
    ] {
        assert!(events.iter().any(|e| e.contains(needle)), "{needle}: {events:?}");
    }
    assert_eq!(rig.service.startups.running(), Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_pre_start_is_recorded_with_execds_account_and_the_sandbox_kept() {
    let rig = rig().await;
    rig.fake.behave(Behaviour::Starting);
    let id = rig
        .service
        .create_from_plan(gated_plan(true, None), None, &root(), None)
        .await
        .unwrap()
        .id;
    // execd writes its account and exits with the hook's code.
    rig.fake.set_logs(
        &id,
        "listening on 0.0.0.0:44772\nstep 1\nexecd: preStart failed (exit 3): step 1\ncannot fetch the model\n",
    );
    rig.fake.set_observed(
        &id,
        Observed::Exited {
            code: Some(3),
            oom: false,
            message: None,
        },
    );
    let message = rig.until_status(&id, "Failed", "PRE_START_FAILED").await;
    assert_eq!(
        message,
        "preStart failed (exit 3): step 1\ncannot fetch the model"
    );
    // Kept for inspection: the record, the container, and the list shows the same.
    assert_eq!(rig.ids().await, [id.as_str()]);
    assert_eq!(rig.live_ids(), [id.as_str()]);
    let filter = ListFilter {
        states: vec!["failed".into()],
        page: 1,
        page_size: 10,
        ..Default::default()
    };
    let listed = rig.service.list(filter, &root()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].status.reason.as_deref(), Some("PRE_START_FAILED"));
    let events = rig.events_of(&id).await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("failed (PRE_START_FAILED): preStart failed (exit 3)")),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| e.starts_with("stopped (")),
        "one account of the failure: {events:?}"
    );
    // Deleting it removes both.
    rig.service.delete(&id, &root()).await.unwrap();
    rig.assert_nothing_left().await;
}

#[tokio::test]
async fn a_hook_that_fails_before_execd_is_seen_is_recorded_by_create_itself() {
    let rig = rig().await;
    rig.fake.behave(Behaviour::Exits(3));
    rig.fake
        .set_default_logs("listening on 0.0.0.0:44772\nexecd: preStart failed (exit 3): no network\n");
    let created = rig
        .service
        .create_from_plan(gated_plan(true, None), None, &root(), None)
        .await
        .unwrap();
    assert_eq!(created.status.state, "Failed");
    assert_eq!(created.status.reason.as_deref(), Some("PRE_START_FAILED"));
    assert_eq!(
        created.status.message.as_deref(),
        Some("preStart failed (exit 3): no network")
    );
    assert_eq!(rig.ids().await, [created.id.as_str()]);

    // A sandbox that ends without execd's account of a hook failed to start at all: the
    // create fails and leaves nothing, as without a hook.
    rig.service.delete(&created.id, &root()).await.unwrap();
    rig.fake
        .set_default_logs("execd: cannot listen on 0.0.0.0:44772\n");
    let e = rig
        .service
        .create_from_plan(gated_plan(true, None), None, &root(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::StartFailed(m) if m.contains("code 3")),
        "{e:?}"
    );
    rig.assert_nothing_left().await;
}

#[tokio::test]
async fn readiness_probes_of_each_kind_gate_running_until_the_application_is_ready() {
    let rig = rig().await;
    let kinds = [
        ReadinessProbe {
            exec: Some(ExecProbe {
                command: vec!["test".into(), "-e".into(), "/ready".into()],
            }),
            ..probe(30)
        },
        ReadinessProbe {
            http_get: Some(HttpGetProbe {
                port: 3000,
                path: Some("health".into()),
            }),
            ..probe(30)
        },
        ReadinessProbe {
            tcp_socket: Some(TcpProbe { port: 6379 }),
            ..probe(30)
        },
    ];
    for readiness in kinds {
        let created = rig
            .service
            .create_from_plan(gated_plan(false, Some(readiness.clone())), None, &root(), None)
            .await
            .unwrap();
        assert_eq!(
            (created.status.state.as_str(), created.status.reason.as_deref()),
            ("Pending", Some("READINESS_PROBE")),
            "{readiness:?}"
        );
        let id = created.id;
        assert_eq!(rig.status_of(&id).await.1, "READINESS_PROBE");
        rig.fake.set_app_ready(&id, true);
        rig.until_status(&id, "Running", "CONTAINER_RUNNING").await;
    }
}

#[tokio::test]
async fn a_readiness_probe_that_never_passes_fails_the_sandbox_after_its_threshold() {
    let rig = rig().await;
    let readiness = ReadinessProbe {
        tcp_socket: Some(TcpProbe { port: 6379 }),
        ..probe(2)
    };
    let id = rig
        .service
        .create_from_plan(gated_plan(false, Some(readiness)), None, &root(), None)
        .await
        .unwrap()
        .id;
    let message = rig.until_status(&id, "Failed", "READINESS_PROBE_FAILED").await;
    assert_eq!(
        message,
        "readiness probe tcpSocket :6379 failed 2 times in a row; last: nothing accepts connections on port 6379"
    );
    assert_eq!(rig.live_ids(), [id.as_str()], "the container is kept");
    let route = rig.service.proxy_target(&id, 44772).await.unwrap();
    assert!(
        matches!(route.target, Err(Error::Conflict(Conflict::NotRunning { ref state, .. })) if state == "Failed")
    );
}

#[tokio::test]
async fn a_hook_then_a_probe_pass_through_both_pending_reasons() {
    let rig = rig().await;
    rig.fake.behave(Behaviour::Starting);
    let readiness = ReadinessProbe {
        http_get: Some(HttpGetProbe {
            port: 3000,
            path: None,
        }),
        ..probe(30)
    };
    let id = rig
        .service
        .create_from_plan(gated_plan(true, Some(readiness)), None, &root(), None)
        .await
        .unwrap()
        .id;
    assert_eq!(rig.status_of(&id).await.1, "PRE_START_RUNNING");
    rig.fake.finish_pre_start(&id);
    rig.until_status(&id, "Pending", "READINESS_PROBE").await;
    rig.fake.set_app_ready(&id, true);
    rig.until_status(&id, "Running", "CONTAINER_RUNNING").await;
}

#[tokio::test]
async fn deleting_a_starting_sandbox_stops_its_startup_task() {
    let rig = rig().await;
    rig.fake.behave(Behaviour::Starting);
    let id = rig
        .service
        .create_from_plan(gated_plan(true, None), None, &root(), None)
        .await
        .unwrap()
        .id;
    assert_eq!(rig.service.startups.running(), [id.as_str()]);
    rig.service.delete(&id, &root()).await.unwrap();
    eventually("the startup task to stop", || async {
        rig.service.startups.running().is_empty()
    })
    .await;
    rig.assert_nothing_left().await;
}

#[tokio::test]
async fn a_restart_during_startup_marks_the_sandbox_interrupted_and_keeps_it() {
    let rig = rig().await;
    rig.fake.behave(Behaviour::Starting);
    let id = rig
        .service
        .create_from_plan(gated_plan(true, None), None, &root(), None)
        .await
        .unwrap()
        .id;
    // This sandboxd dies (its task with it); another starts on the same state.
    rig.service.startups.cancel(&id);
    let restarted = Service::for_tests(rig._dir.path(), &rig.fake, "key", 86_400, Duration::from_secs(10));
    let done = restarted.reconcile().await.unwrap();
    assert_eq!((done.adopted, done.removed), (1, 0), "{done:?}");
    let s = restarted.get(&id, &root()).await.unwrap().status;
    assert_eq!(
        (s.state.as_str(), s.reason.as_deref()),
        ("Failed", Some("STARTUP_INTERRUPTED"))
    );
    assert_eq!(rig.live_ids(), [id.as_str()]);
    // Another restart leaves the recorded outcome alone.
    let again = Service::for_tests(rig._dir.path(), &rig.fake, "key", 86_400, Duration::from_secs(10));
    assert_eq!(again.reconcile().await.unwrap().adopted, 1);
    let events = rig.events_of(&id).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.contains("STARTUP_INTERRUPTED"))
            .count(),
        1,
        "{events:?}"
    );
}

/// A create request with `extensions["sandboxd.autoStart"]="false"`.
fn awaiting_request() -> CreateSandboxRequest {
    serde_json::from_value(serde_json::json!({
        "image": {"uri": "busybox"},
        "entrypoint": ["sleep", "infinity"],
        "timeout": 600,
        "extensions": {"sandboxd.autoStart": "false"},
    }))
    .unwrap()
}

#[tokio::test]
async fn auto_start_false_creates_without_starting_until_start() {
    let rig = rig().await;
    let s = &rig.service;
    let created = s.create(awaiting_request(), &root(), None).await.unwrap();
    assert_eq!(created.status.state, "Pending");
    assert_eq!(created.status.reason.as_deref(), Some("AWAITING_START"));
    let spec = rig.fake.sandboxes().into_values().next().unwrap().spec;
    assert!(!spec.start, "the runtime was asked to create only");
    assert!(
        spec.env.contains_key("EXECD_ACCESS_TOKEN"),
        "execd is injected at create"
    );
    let shown = s.get(&created.id, &root()).await.unwrap().status;
    assert_eq!(
        (shown.state.as_str(), shown.reason.as_deref()),
        ("Pending", Some("AWAITING_START"))
    );
    // Not running: pause, executions and the proxy refuse it.
    let e = s.pause(&created.id, None, &root()).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(Conflict::NotRunning { .. })), "{e:?}");
    let route = s.proxy_target(&created.id, 44772).await.unwrap();
    assert!(route.target.is_err());
    // Someone else's is 404.
    let other = user("mallory", Role::User);
    assert!(matches!(
        s.start_sandbox(&created.id, &other).await.unwrap_err(),
        Error::NotFound { .. }
    ));

    let started = s.start_sandbox(&created.id, &root()).await.unwrap();
    assert_eq!(started.status.state, "Running");
    assert_eq!(s.get(&created.id, &root()).await.unwrap().status.state, "Running");
    let route = s.proxy_target(&created.id, 44772).await.unwrap();
    assert!(route.target.is_ok());
    // Twice: 409, naming the state.
    match s.start_sandbox(&created.id, &root()).await.unwrap_err() {
        Error::Conflict(Conflict::NotAwaitingStart { state, .. }) => assert_eq!(state, "Running"),
        other => panic!("expected 409, got {other:?}"),
    }
    let kinds: Vec<String> = s
        .store
        .events(&created.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.iter().filter(|k| *k == "Created").count() >= 1, "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("Ready"), "{kinds:?}");
    // A sandbox created normally is not awaiting start either.
    let plain = s.create(request(Some(600)), &root(), None).await.unwrap();
    assert!(matches!(
        s.start_sandbox(&plain.id, &root()).await.unwrap_err(),
        Error::Conflict(Conflict::NotAwaitingStart { .. })
    ));
}

#[tokio::test]
async fn concurrent_starts_start_once_and_a_failed_start_is_recorded() {
    let rig = rig_with_timeout(Duration::from_millis(300)).await;
    let s = &rig.service;
    let created = s.create(awaiting_request(), &root(), None).await.unwrap();
    let caller = root();
    let (a, b) = tokio::join!(
        s.start_sandbox(&created.id, &caller),
        s.start_sandbox(&created.id, &caller)
    );
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "exactly one start wins: {a:?} {b:?}"
    );
    let refused = if a.is_err() { a } else { b };
    assert!(matches!(
        refused.unwrap_err(),
        Error::Conflict(Conflict::NotAwaitingStart { .. })
    ));

    // A sandbox whose execd never answers once started: Failed, START_FAILED, kept.
    let silent = s.create(awaiting_request(), &root(), None).await.unwrap();
    rig.fake.behave(Behaviour::Silent);
    assert!(matches!(
        s.start_sandbox(&silent.id, &root()).await.unwrap_err(),
        Error::StartFailed(_)
    ));
    let status = s.get(&silent.id, &root()).await.unwrap().status;
    assert_eq!(
        (status.state.as_str(), status.reason.as_deref()),
        ("Failed", Some("START_FAILED"))
    );
    s.delete(&silent.id, &root()).await.unwrap();
}

#[tokio::test]
async fn a_sandbox_awaiting_start_stays_awaiting_across_a_restart() {
    let rig = rig().await;
    let created = rig
        .service
        .create(awaiting_request(), &root(), None)
        .await
        .unwrap();
    let restarted = Service::for_tests(rig._dir.path(), &rig.fake, "key", 86_400, Duration::from_secs(10));
    let done = restarted.reconcile().await.unwrap();
    assert_eq!((done.adopted, done.removed, done.forgotten), (1, 0, 0));
    let status = restarted.get(&created.id, &root()).await.unwrap().status;
    assert_eq!(
        (status.state.as_str(), status.reason.as_deref()),
        ("Pending", Some("AWAITING_START"))
    );
    let started = restarted.start_sandbox(&created.id, &root()).await.unwrap();
    assert_eq!(started.status.state, "Running");
}

#[tokio::test]
async fn auto_start_bad_values_and_gated_plans_are_refused() {
    let rig = rig().await;
    let s = &rig.service;
    let bad: CreateSandboxRequest = serde_json::from_value(serde_json::json!({
        "image": {"uri": "busybox"}, "entrypoint": ["sleep", "1"],
        "extensions": {"sandboxd.autoStart": "no"},
    }))
    .unwrap();
    assert!(
        matches!(s.create(bad, &root(), None).await.unwrap_err(), Error::Invalid(m) if m.contains("sandboxd.autoStart"))
    );
    let hooked: CreateSandboxRequest = serde_json::from_value(serde_json::json!({
        "image": {"uri": "busybox"}, "entrypoint": ["sleep", "1"],
        "lifecycle": {"preStart": {"command": ["true"]}},
        "extensions": {"sandboxd.autoStart": "false"},
    }))
    .unwrap();
    assert!(
        matches!(s.create(hooked, &root(), None).await.unwrap_err(), Error::Invalid(m) if m.contains("preStart"))
    );
    rig.assert_nothing_left().await;
}

#[tokio::test]
async fn rootfs_with_the_host_network_is_refused_at_create_and_at_pause() {
    let rig = rig().await;
    let s = &rig.service;
    rig.fake.set_host_network(true);
    let rootfs: CreateSandboxRequest = serde_json::from_value(serde_json::json!({
        "image": {"uri": "busybox"}, "entrypoint": ["sleep", "infinity"],
        "pausePolicy": {"snapshotType": "Rootfs"},
    }))
    .unwrap();
    match s.create(rootfs, &root(), None).await.unwrap_err() {
        Error::Invalid(m) => assert!(m.contains("Rootfs") && m.contains("host network"), "{m}"),
        other => panic!("expected 400, got {other:?}"),
    }
    rig.assert_nothing_left().await;
    let freeze = s.create(request(Some(600)), &root(), None).await.unwrap();
    let e = s
        .pause(
            &freeze.id,
            Some(crate::wire::lifecycle::PauseMode::Rootfs),
            &root(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Invalid(ref m) if m.contains("host network")),
        "{e:?}"
    );
    assert_eq!(s.get(&freeze.id, &root()).await.unwrap().status.state, "Running");
    s.pause(&freeze.id, None, &root()).await.unwrap();
}

/// Issue 18: a runtime without a freezer (Kubernetes) answers a Freeze pause 501 from its
/// capabilities, without asking the runtime, and the sandbox goes on running.
#[tokio::test]
async fn issue18_freeze_pause_without_a_freezer_is_unsupported() {
    let rig = rig().await;
    let s = &rig.service;
    rig.fake.set_freeze(false);
    let created = s.create(request(Some(600)), &root(), None).await.unwrap();
    for mode in [None, Some(crate::wire::lifecycle::PauseMode::Freeze)] {
        let e = s.pause(&created.id, mode, &root()).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Unsupported(crate::orchestrator::error::Feature::FreezePause)
            ),
            "{e:?}"
        );
    }
    assert_eq!(s.get(&created.id, &root()).await.unwrap().status.state, "Running");
}

#[tokio::test]
async fn plain_inspect_and_summary_diagnostics() {
    let rig = rig().await;
    let s = &rig.service;
    let created = s.create(request(Some(600)), &root(), None).await.unwrap();
    let q = DiagnosticsQuery::default();
    let inspect = s
        .plain_diagnostics(&created.id, "inspect", &q, &root())
        .await
        .unwrap();
    for line in [
        format!("sandbox: {}", created.id),
        "state: Running (CONTAINER_RUNNING)".into(),
        "image: busybox".into(),
        "containerState: Running".into(),
        "usage: cpu 1.5%".into(),
    ] {
        assert!(inspect.contains(&line), "{line:?} missing from:\n{inspect}");
    }
    rig.fake.set_logs(&created.id, "hello from the entrypoint\n");
    let summary = s
        .plain_diagnostics(&created.id, "summary", &q, &root())
        .await
        .unwrap();
    let (i, e, l) = (
        summary.find("=== inspect ===").unwrap(),
        summary.find("=== events ===").unwrap(),
        summary.find("=== logs ===").unwrap(),
    );
    assert!(i < e && e < l, "{summary}");
    assert!(summary[e..l].contains("Ready"), "{summary}");
    assert!(summary[l..].contains("hello from the entrypoint"), "{summary}");
    // An exited container says how it ended.
    rig.fake.set_observed(
        &created.id,
        Observed::Exited {
            code: Some(137),
            oom: true,
            message: None,
        },
    );
    let inspect = s
        .plain_diagnostics(&created.id, "inspect", &q, &root())
        .await
        .unwrap();
    assert!(
        inspect.contains("exitCode: 137") && inspect.contains("oomKilled: true"),
        "{inspect}"
    );
    // Plain only; someone else's is 404.
    let scoped = DiagnosticsQuery {
        scope: Some("all".into()),
        ..Default::default()
    };
    assert!(matches!(
        s.diagnostics(&created.id, "inspect", &scoped, &root()).await.unwrap_err(),
        Error::Invalid(m) if m.contains("scope")
    ));
    assert!(matches!(
        s.plain_diagnostics(&created.id, "summary", &q, &user("mallory", Role::User))
            .await
            .unwrap_err(),
        Error::NotFound { .. }
    ));
}

#[tokio::test]
async fn an_unfiltered_list_asks_the_runtime_only_about_its_page_and_lists_as_a_state_filtered_one() {
    let rig = rig().await;
    let mut created = Vec::new();
    for i in 0..5 {
        let mut req = request(Some(600));
        req.metadata = Some(BTreeMap::from([(
            "team".to_owned(),
            if i % 2 == 0 { "ml" } else { "web" }.to_owned(),
        )]));
        created.push(rig.service.create(req, &root(), None).await.unwrap().id);
    }
    let page = |page, page_size| ListFilter {
        page,
        page_size,
        ..Default::default()
    };
    let ids =
        |items: &[crate::wire::lifecycle::Sandbox]| items.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    // Every live state is asked for: the runtime's whole list, the order the reference.
    let all_running = ListFilter {
        states: vec!["Running".into()],
        ..page(1, 200)
    };
    let everything = rig.service.list(all_running, &root()).await.unwrap();
    assert_eq!(everything.items.len(), 5);
    let observe_all = rig.fake.calls(Op::ObserveAll);
    let mut paged = Vec::new();
    for n in 1..=3 {
        let listed = rig.service.list(page(n, 2), &root()).await.unwrap();
        assert_eq!(listed.pagination.total_items, 5);
        assert_eq!(listed.pagination.has_next_page, n < 3);
        let asked = rig.fake.observed_many().pop().unwrap();
        let mut expected: Vec<String> = ids(&listed.items)
            .iter()
            .map(|id| rig.fake.reference_of(id).unwrap())
            .collect();
        expected.sort();
        let mut asked_sorted = asked.clone();
        asked_sorted.sort();
        assert_eq!(
            asked_sorted, expected,
            "page {n} asks about its own instances only"
        );
        assert!(listed.items.iter().all(|s| s.status.state == "Running"));
        paged.extend(ids(&listed.items));
    }
    assert_eq!(paged, ids(&everything.items), "same order, same pages");
    assert_eq!(
        rig.fake.calls(Op::ObserveAll),
        observe_all,
        "no list of everything"
    );
    // Filters on the records are kept; a page past the end asks about nothing.
    let web = ListFilter {
        metadata: vec![("team".into(), "web".into())],
        ..page(1, 20)
    };
    let listed = rig.service.list(web, &root()).await.unwrap();
    let expected: Vec<String> = ids(&everything.items)
        .into_iter()
        .filter(|id| created.iter().position(|c| c == id).unwrap() % 2 == 1)
        .collect();
    assert_eq!(ids(&listed.items), expected);
    assert!(rig
        .service
        .list(page(9, 20), &root())
        .await
        .unwrap()
        .items
        .is_empty());
    assert_eq!(rig.fake.observed_many().pop().unwrap(), Vec::<String>::new());
    // What a page observes is noted (a pause made behind sandboxd's back), and only that.
    let last = everything.items[4].id.clone();
    rig.fake.set_observed(&last, Observed::Paused);
    rig.service.list(page(1, 2), &root()).await.unwrap();
    let record = rig.service.store.get(&last).await.unwrap().unwrap();
    assert_eq!(record.phase, Phase::Ready, "not on the page, not observed");
    let listed = rig.service.list(page(3, 2), &root()).await.unwrap();
    assert_eq!(listed.items[0].status.state, "Paused");
    let record = rig.service.store.get(&last).await.unwrap().unwrap();
    assert_eq!(record.phase, Phase::Paused);
}

/// Issue 18: GPUs and a disk limit reach the runtime only where its capabilities say so; a
/// runtime without them (Docker) answers 400 naming why, one that counts GPUs (Kubernetes)
/// refuses `"all"`; image credentials reach the runtime's create.
#[tokio::test]
async fn issue18_gpu_and_disk_limits_follow_the_runtimes_capabilities() {
    let rig = rig().await;
    let with = |limits: serde_json::Value| {
        let mut req = request(Some(600));
        req.resource_limits = Some(serde_json::from_value(limits).unwrap());
        req
    };
    let refused = |e: Error| {
        let api = crate::orchestrator::http::error::ApiError::from(&e);
        assert_eq!(
            (api.status.as_u16(), api.entry.code),
            (400, "SANDBOX::API_NOT_SUPPORTED"),
            "{e}"
        );
        e.to_string()
    };
    let s = &rig.service;
    let no_gpus = refused(
        s.create(with(serde_json::json!({"gpu": "1"})), &root(), None)
            .await
            .unwrap_err(),
    );
    assert!(
        no_gpus.contains("resourceLimits.gpu") && no_gpus.contains("no GPUs"),
        "{no_gpus}"
    );
    let no_disk = refused(
        s.create(with(serde_json::json!({"disk": "1Gi"})), &root(), None)
            .await
            .unwrap_err(),
    );
    assert!(no_disk.contains("resourceLimits.disk"), "{no_disk}");
    assert!(rig.fake.sandboxes().is_empty(), "nothing was started");

    rig.fake.offer_gpus_and_disk();
    let all = refused(
        s.create(with(serde_json::json!({"gpu": "all"})), &root(), None)
            .await
            .unwrap_err(),
    );
    assert!(all.contains("\"all\"") && all.contains("count"), "{all}");
    let mut req = with(serde_json::json!({"gpu": "2", "disk": "10Gi"}));
    req.image = Some(
        serde_json::from_value(
            serde_json::json!({"uri": "busybox", "auth": {"username": "robot", "password": "s3cr3t"}}),
        )
        .unwrap(),
    );
    let id = s.create(req, &root(), None).await.unwrap().id;
    let made = rig.fake.sandboxes();
    let spec = &made.values().find(|f| f.spec.id == id).unwrap().spec;
    assert_eq!(
        spec.resources.gpu,
        Some(crate::orchestrator::runtime::Gpus::Count(2))
    );
    assert_eq!(spec.resources.disk, Some(10 << 30));
    assert_eq!(
        spec.image_auth.as_ref().map(|a| a.username.as_str()),
        Some("robot")
    );
    let record = s.store.get(&id).await.unwrap().unwrap();
    assert!(!format!("{record:?}").contains("s3cr3t"), "never stored");
}
