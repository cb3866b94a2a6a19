//! Executions over the fake runtime and its scripted execd (`runtime::fake_execd`): the three
//! types end to end through the real execd client, failure mapping, timeout, cancel, a dropped
//! stream followed again without loss or duplicates, `Lost`, re-attachment after a restart,
//! validation and batches.

use std::time::Duration;

use futures_util::StreamExt as _;

use super::*;
use crate::orchestrator::auth::Role;
use crate::orchestrator::runtime::Runtime as _;
use crate::orchestrator::service::tests::{rig, root, user, Rig};
use crate::wire::executions::{BatchRequest, ExecutionType};

async fn sandbox(rig: &Rig, caller: &Principal) -> String {
    let request = serde_json::from_value(serde_json::json!({
        "image": {"uri": "busybox"},
        "entrypoint": ["sleep", "infinity"],
        "timeout": 600,
    }))
    .unwrap();
    rig.service.create(request, caller, None).await.unwrap().id
}

fn req(body: serde_json::Value) -> ExecutionRequest {
    serde_json::from_value(body).unwrap()
}

const WAIT: Option<Duration> = Some(Duration::from_secs(20));

/// Submits and waits for the end; the ended execution with its output.
async fn run(rig: &Rig, sandbox: &str, body: serde_json::Value) -> Execution {
    let (e, ended) = rig
        .service
        .submit_execution(sandbox, req(body), WAIT, &root())
        .await
        .unwrap();
    assert!(ended, "{e:?}");
    e
}

/// Waits (with a generous deadline) until the execution is in `state`.
async fn until_state(rig: &Rig, id: &str, state: ExecutionState) -> ExecutionRow {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let row = rig.service.store.execution(id).await.unwrap().unwrap();
        if row.state == state {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} stayed {:?}",
            row.state
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_seeds_handler_example_returns_its_event() {
    let rig = rig().await;
    let id = sandbox(&rig, &root()).await;
    let e = run(
        &rig,
        &id,
        serde_json::json!({
            "code": "def handler(event):\n    return {\"status\": \"ok\", \"data\": event}",
            "language": "python", "timeout": 30, "event": {"name": "Alice"}
        }),
    )
    .await;
    assert_eq!(e.kind, ExecutionType::Handler);
    assert_eq!(e.status.state, ExecutionState::Succeeded);
    let output = e.output.unwrap();
    assert_eq!(
        output.result,
        Some(serde_json::json!({"status": "ok", "data": {"name": "Alice"}}))
    );
    // The handler's print is output, never the result.
    assert_eq!(output.stdout, "{\"ok\": false}\n");
    let dir = runner::dir(&e.id);
    // The directory goes right after the end is recorded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rig.fake.execd().removed.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the directory was never removed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    {
        let execd = rig.fake.execd();
        let argv = execd.requests.last().unwrap().argv.clone().unwrap();
        assert_eq!(
            (argv[0].as_str(), argv[3].as_str(), argv[4].as_str()),
            ("python3", dir.as_str(), "handler")
        );
        assert_eq!(execd.removed, std::slice::from_ref(&dir));
        assert!(
            execd.files.keys().all(|p| !p.starts_with(&dir)),
            "the directory is removed"
        );
    }
    // The result route and the replayed events agree.
    let result = rig.service.execution_result(&e.id, None, &root()).await.unwrap();
    assert_eq!(result.output.result, output.result);
    let events: Vec<_> = rig
        .service
        .watch_execution(&e.id, 0, &root())
        .await
        .unwrap()
        .collect()
        .await;
    let kinds: Vec<_> = events.iter().map(|(_, e)| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventType::Init,
            EventType::Stdout,
            EventType::Result,
            EventType::ExecutionComplete
        ]
    );
    let after: Vec<_> = rig
        .service
        .watch_execution(&e.id, 2, &root())
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(
        after.first().map(|(n, _)| *n),
        Some(3),
        "Last-Event-ID resumes after it"
    );
}

#[tokio::test]
async fn handler_failures_map_to_their_codes() {
    let rig = rig().await;
    let id = sandbox(&rig, &root()).await;
    let e = run(
        &rig,
        &id,
        serde_json::json!({"code": "x", "handler": "boom", "event": {}}),
    )
    .await;
    assert_eq!(e.status.state, ExecutionState::Failed);
    assert_eq!(e.status.reason.as_deref(), Some("EXECUTION::HANDLER_ERROR"));
    let error = e.output.unwrap().error.unwrap();
    assert_eq!(
        (error.name.as_deref(), error.value.as_deref()),
        (Some("KeyError"), Some("'x'"))
    );
    assert!(!error.traceback.is_empty());
    let reference = rig.fake.reference_of(&id).unwrap();
    rig.fake.execd().no_interpreter.insert(reference);
    let e = run(&rig, &id, serde_json::json!({"code": "x", "event": {}})).await;
    assert_eq!(e.status.reason.as_deref(), Some("EXECUTION::RUNTIME_NOT_FOUND"));
    assert_eq!(e.exit_code, Some(127));
}

#[tokio::test]
async fn commands_and_code_report_exit_codes_text_and_errors() {
    let rig = rig().await;
    let id = sandbox(&rig, &root()).await;
    let e = run(&rig, &id, serde_json::json!({"command": "echo hello"})).await;
    assert_eq!(
        (e.status.state, e.exit_code),
        (ExecutionState::Succeeded, Some(0))
    );
    assert_eq!(e.output.unwrap().stdout, "hello\n");
    let e = run(&rig, &id, serde_json::json!({"command": "exit 3"})).await;
    assert_eq!((e.status.state, e.exit_code), (ExecutionState::Failed, Some(3)));
    assert_eq!(e.status.reason.as_deref(), Some("EXECUTION::COMMAND_FAILED"));
    let e = run(&rig, &id, serde_json::json!({"code": "2+2", "type": "code"})).await;
    assert_eq!(e.status.state, ExecutionState::Succeeded);
    assert_eq!(e.output.unwrap().text.as_deref(), Some("4"));
    let e = run(&rig, &id, serde_json::json!({"code": "raise", "type": "code"})).await;
    assert_eq!(e.status.reason.as_deref(), Some("EXECUTION::CODE_ERROR"));
    assert_eq!(
        e.output.unwrap().error.unwrap().name.as_deref(),
        Some("ValueError")
    );
}

#[tokio::test]
async fn a_timeout_interrupts_and_ends_timed_out() {
    let rig = rig().await;
    let id = sandbox(&rig, &root()).await;
    let e = run(&rig, &id, serde_json::json!({"command": "sleep", "timeout": 1})).await;
    assert_eq!(e.status.state, ExecutionState::TimedOut);
    assert_eq!(e.status.reason.as_deref(), Some("EXECUTION::TIMEOUT"));
    assert_eq!(e.output.unwrap().error.unwrap().code, "EXECUTION::TIMEOUT");
    assert_eq!(rig.fake.execd().interrupted.len(), 1);
}

#[tokio::test]
async fn a_cancel_interrupts_and_a_second_one_is_a_conflict() {
    let rig = rig().await;
    let id = sandbox(&rig, &root()).await;
    let (e, ended) = rig
        .service
        .submit_execution(&id, req(serde_json::json!({"command": "sleep"})), None, &root())
        .await
        .unwrap();
    assert!(!ended);
    let running = until_state(&rig, &e.id, ExecutionState::Running).await;
    assert!(matches!(
        rig.service.execution_result(&e.id, None, &root()).await,
        Err(Error::Conflict(Conflict::ExecutionNotFinished { state, .. })) if state == "Running"
    ));
    // Wait for execd's id, so that the interrupt has something to name.
    while rig
        .service
        .store
        .execution(&e.id)
        .await
        .unwrap()
        .unwrap()
        .execd_ref
        .is_none()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(running);
    rig.service.cancel_execution(&e.id, &root()).await.unwrap();
    let result = rig.service.execution_result(&e.id, WAIT, &root()).await.unwrap();
    assert_eq!(result.status.state, ExecutionState::Cancelled);
    assert!(matches!(
        rig.service.cancel_execution(&e.id, &root()).await,
        Err(Error::Conflict(Conflict::ExecutionFinished { .. }))
    ));
}

#[tokio::test]
async fn a_dropped_stream_is_followed_again_without_loss_or_duplicates() {
    let rig = rig().await;
    let id = sandbox(&rig, &root()).await;
    let e = run(&rig, &id, serde_json::json!({"command": "drop"})).await;
    assert_eq!(e.status.state, ExecutionState::Succeeded);
    assert_eq!(e.output.unwrap().stdout, "1\n2\n3\n4\n5\n");
}

#[tokio::test]
async fn a_killed_executor_is_lost_after_the_bound_and_not_before() {
    let rig = rig().await;
    let id = sandbox(&rig, &root()).await;
    let (e, _) = rig
        .service
        .submit_execution(&id, req(serde_json::json!({"command": "sleep"})), None, &root())
        .await
        .unwrap();
    while rig
        .service
        .store
        .execution(&e.id)
        .await
        .unwrap()
        .unwrap()
        .execd_ref
        .is_none()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = tokio::time::Instant::now();
    rig.fake.kill_execd(&id);
    let row = until_state(&rig, &e.id, ExecutionState::Lost).await;
    // lost_after is 1 s in the test settings.
    assert!(
        killed.elapsed() >= Duration::from_secs(1),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(row.reason.as_deref(), Some("EXECUTION::EXECUTOR_LOST"));
}

#[tokio::test]
async fn a_restarted_service_re_attaches_after_the_last_stored_event() {
    let rig = rig().await;
    let id = sandbox(&rig, &root()).await;
    let record = rig.service.store.get(&id).await.unwrap().unwrap();
    let target = rig
        .fake
        .target(
            record.instance.as_ref().unwrap(),
            crate::orchestrator::runtime::EXECD_PORT,
        )
        .unwrap();
    // A run the previous process started and read two events of (init, line 0).
    let request = crate::wire::RunCommandRequest {
        command: Some("lines 4".into()),
        ..Default::default()
    };
    let mut stream = rig
        .service
        .execd
        .start_command(&target, &record.token, &request)
        .await
        .unwrap();
    for _ in 0..2 {
        stream.next().await.unwrap().unwrap();
    }
    drop(stream);
    let job = validate(&req(serde_json::json!({"command": "lines 4"})), false).unwrap();
    let mut row = new_row(new_id(), "root", Some(id.clone()), &job, ExecutionState::Running);
    row.execd_ref = Some(format!("cmd-{}", rig.fake.execd().requests.len()));
    row.last_event_id = 2;
    row.output.stdout = "line 0\n".into();
    row.started_at = Some(now_ms());
    row.deadline_at = Some(now_ms() + 30_000);
    rig.service.store.insert_execution(&row).await.unwrap();
    rig.service.recover_executions().await.unwrap();
    let done = until_state(&rig, &row.id, ExecutionState::Succeeded).await;
    assert_eq!(done.output.stdout, "line 0\nline 1\nline 2\nline 3\n");
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_runs() {
    let rig = rig().await;
    let id = sandbox(&rig, &root()).await;
    let invalid = [
        serde_json::json!({}),
        serde_json::json!({"code": "x", "command": "y"}),
        serde_json::json!({"type": "command", "code": "x"}),
        serde_json::json!({"type": "code", "code": "x", "event": {}}),
        serde_json::json!({"code": "x", "handler": "not a name"}),
        serde_json::json!({"command": "x", "timeout": 0}),
        serde_json::json!({"command": "x", "timeout": 3601}),
        serde_json::json!({"code": "x", "event": {}, "contextId": "c"}),
        serde_json::json!({"command": "x", "contextId": "c"}),
        serde_json::json!({"command": "x", "templateId": "t"}),
        serde_json::json!({"argv": []}),
        serde_json::json!({"code": "1", "isolated": true}),
    ];
    for body in invalid {
        let e = rig
            .service
            .submit_execution(&id, req(body.clone()), None, &root())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{body}: {e:?}");
    }
    let e = rig
        .service
        .submit_execution(
            &id,
            req(serde_json::json!({"code": "x", "language": "ruby"})),
            None,
            &root(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnsupportedLanguage(_)), "{e:?}");
    let big = "x".repeat(MAX_PAYLOAD + 1);
    let e = rig
        .service
        .submit_execution(&id, req(serde_json::json!({"code": big})), None, &root())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
    // A sandbox made without isolated sessions cannot run an isolated job, alone or in a batch.
    let e = rig
        .service
        .submit_execution(
            &id,
            req(serde_json::json!({"command": "true", "isolated": true})),
            None,
            &root(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Conflict(Conflict::IsolationUnavailable)),
        "{e:?}"
    );
    let e = rig
        .service
        .submit_batch(
            &id,
            batch(serde_json::json!({"jobs": [{"id": "a", "command": "true"}, {"id": "b", "command": "true", "isolated": true}]})),
            None,
            &root(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Conflict(Conflict::IsolationUnavailable)),
        "{e:?}"
    );
    assert!(serde_json::from_value::<ExecutionRequest>(serde_json::json!({"comand": "x"})).is_err());
    // Someone else's sandbox is not found; a paused one is a conflict (and stays paused).
    let alice = user("alice", Role::User);
    let e = rig
        .service
        .submit_execution(&id, req(serde_json::json!({"command": "echo"})), None, &alice)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    rig.service.pause(&id, None, &root()).await.unwrap();
    let e = rig
        .service
        .submit_execution(&id, req(serde_json::json!({"command": "echo"})), None, &root())
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Conflict(Conflict::NotRunning { ref state, .. }) if state == "Paused"),
        "{e:?}"
    );
    assert!(rig.fake.execd().requests.is_empty(), "nothing ran");
    let listed = rig
        .service
        .list_executions(
            ExecutionQuery {
                page: 1,
                page_size: 20,
                ..Default::default()
            },
            &root(),
        )
        .await
        .unwrap();
    assert_eq!(listed.pagination.total_items, 0, "nothing was stored");
}

#[tokio::test]
async fn executions_are_the_owners_and_outlive_their_sandbox() {
    let rig = rig().await;
    let alice = user("alice", Role::User);
    let id = sandbox(&rig, &alice).await;
    let (e, _) = rig
        .service
        .submit_execution(&id, req(serde_json::json!({"command": "echo hi"})), WAIT, &alice)
        .await
        .unwrap();
    let bob = user("bob", Role::User);
    assert!(matches!(
        rig.service.execution(&e.id, &bob).await,
        Err(Error::NotFound {
            kind: Kind::Execution,
            ..
        })
    ));
    rig.service.delete(&id, &alice).await.unwrap();
    let kept = rig.service.execution_result(&e.id, None, &alice).await.unwrap();
    assert_eq!(kept.output.stdout, "hi\n");
    let mine = rig
        .service
        .list_executions(
            ExecutionQuery {
                sandbox_id: Some(id.clone()),
                page: 1,
                page_size: 20,
                ..Default::default()
            },
            &alice,
        )
        .await
        .unwrap();
    assert_eq!(mine.items.len(), 1);
    let theirs = rig
        .service
        .list_executions(
            ExecutionQuery {
                page: 1,
                page_size: 20,
                ..Default::default()
            },
            &bob,
        )
        .await
        .unwrap();
    assert!(theirs.items.is_empty());
}

fn batch(body: serde_json::Value) -> BatchRequest {
    serde_json::from_value(body).unwrap()
}

#[tokio::test]
async fn a_batch_runs_code_in_one_fresh_context_and_stops_on_error() {
    let rig = rig().await;
    let id = sandbox(&rig, &root()).await;
    let (summary, ended) = rig
        .service
        .submit_batch(
            &id,
            batch(serde_json::json!({"jobs": [
                {"id": "job-1", "code": "2+2", "timeout": 5},
                {"id": "job-2", "command": "echo ls", "timeout": 5},
                {"id": "job-3", "code": "x = 1", "timeout": 5}
            ]})),
            WAIT,
            &root(),
        )
        .await
        .unwrap();
    assert!(ended);
    assert_eq!(
        (summary.total, summary.succeeded, summary.failed, summary.pending),
        (3, 3, 0, 0)
    );
    let ids: Vec<_> = summary.results.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(ids, ["job-1", "job-2", "job-3"]);
    assert_eq!(summary.results[0].output.text.as_deref(), Some("4"));
    assert_eq!(
        rig.fake.execd().contexts.len(),
        1,
        "one fresh context for the batch's code jobs"
    );
    let again = rig
        .service
        .batch_summary(&summary.batch_id, &root())
        .await
        .unwrap();
    assert_eq!(again, summary);

    let (summary, _) = rig
        .service
        .submit_batch(
            &id,
            batch(serde_json::json!({"stopOnError": true, "jobs": [
                {"id": "a", "command": "echo a"},
                {"id": "b", "command": "exit 1"},
                {"id": "c", "command": "echo c"}
            ]})),
            WAIT,
            &root(),
        )
        .await
        .unwrap();
    let states: Vec<_> = summary.results.iter().map(|r| r.status.state).collect();
    assert_eq!(
        states,
        [
            ExecutionState::Succeeded,
            ExecutionState::Failed,
            ExecutionState::Cancelled
        ]
    );
    assert_eq!((summary.succeeded, summary.failed), (1, 2));
}

#[tokio::test]
async fn a_bad_batch_starts_nothing() {
    let rig = rig().await;
    let id = sandbox(&rig, &root()).await;
    let jobs: Vec<_> = (0..101)
        .map(|i| serde_json::json!({"id": format!("j{i}"), "command": "echo x"}))
        .collect();
    let e = rig
        .service
        .submit_batch(&id, batch(serde_json::json!({"jobs": jobs})), None, &root())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert!(rig.fake.execd().requests.is_empty());
    let (rows, total) = rig
        .service
        .store
        .executions(&ExecutionFilter {
            page: 1,
            page_size: 200,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((rows.len(), total), (0, 0));
}
