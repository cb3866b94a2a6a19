//! Bash sessions: state carries over between runs, `exit N` ends only the run, timeouts and
//! deletion kill what the session started.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{eventually, kinds, marker, pids_matching, texts, Agent, Event, Opts};

async fn create(agent: &Agent, body: Option<Value>) -> String {
    let mut req = agent.post("/session");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let id = v["session_id"].as_str().unwrap().to_owned();
    assert!(uuid_like(&id), "session id is a UUID: {id}");
    id
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|&c| c == '-').count() == 4
}

async fn run(agent: &Agent, id: &str, body: Value) -> Vec<Event> {
    agent.stream(&format!("/session/{id}/run"), body).await
}

#[tokio::test]
async fn state_carries_over_and_survives_exit() {
    let agent = Agent::start();
    let id = create(&agent, None).await;
    let first = run(
        &agent,
        &id,
        json!({"command": "plain=p1; export EXP=e1; cd /tmp; greet() { echo hi $1; }; alias shout='echo LOUD'; set -o noglob"}),
    )
    .await;
    assert_eq!(kinds(&first), ["init", "execution_complete"]);
    assert_eq!(first[0].text(), id, "init carries the session id");

    let second = run(
        &agent,
        &id,
        json!({"command": "echo $plain $EXP; pwd; greet you; shout; echo *; bash -c 'echo child sees $EXP'"}),
    )
    .await;
    assert_eq!(
        texts(&second, "stdout"),
        ["p1 e1", "/tmp", "hi you", "LOUD", "*", "child sees e1"]
    );

    let exited = run(
        &agent,
        &id,
        json!({"command": "echo bye; exit 7; echo unreachable"}),
    )
    .await;
    assert_eq!(texts(&exited, "stdout"), ["bye"]);
    let err = &exited.last().unwrap().data["error"];
    assert_eq!(err["evalue"], "7");
    assert_eq!(err["ename"], "CommandExecError");

    let after = run(&agent, &id, json!({"command": "echo $plain; pwd; greet again"})).await;
    assert_eq!(texts(&after, "stdout"), ["p1", "/tmp", "hi again"]);
    assert_eq!(after.last().unwrap().kind(), "execution_complete");
}

#[tokio::test]
async fn stderr_is_merged_and_cwd_overrides() {
    let agent = Agent::start();
    let id = create(&agent, Some(json!({"cwd": "/"}))).await;
    let events = run(
        &agent,
        &id,
        json!({"command": "pwd; echo oops >&2; printf 'no newline'"}),
    )
    .await;
    assert_eq!(texts(&events, "stdout"), ["/", "oops", "no newline"]);
    assert!(texts(&events, "stderr").is_empty());
    let events = run(&agent, &id, json!({"command": "pwd", "cwd": "/tmp"})).await;
    assert_eq!(texts(&events, "stdout"), ["/tmp"]);
    let events = run(&agent, &id, json!({"command": "false"})).await;
    assert_eq!(events.last().unwrap().data["error"]["evalue"], "1");
}

#[tokio::test]
async fn timeout_kills_the_run_and_the_session_recovers() {
    let m = marker();
    let agent = Agent::start();
    let id = create(&agent, None).await;
    let events = run(
        &agent,
        &id,
        json!({"command": format!("sleep 6661.{m}"), "timeout": 300}),
    )
    .await;
    let err = &events.last().unwrap().data["error"];
    assert_eq!(err["evalue"], "-1");
    assert!(err["traceback"][0].as_str().unwrap().contains("timed out"));
    eventually(5, "sleeper killed", async || {
        pids_matching(&format!("sleep 6661.{m}")).is_empty().then_some(())
    })
    .await;
    let events = run(&agent, &id, json!({"command": "echo fresh"})).await;
    assert_eq!(texts(&events, "stdout"), ["fresh"]);
}

#[tokio::test]
async fn runs_are_serialized_in_order() {
    let agent = Agent::start();
    let id = create(&agent, None).await;
    let a = run(&agent, &id, json!({"command": "n=0"}));
    let b = run(&agent, &id, json!({"command": "sleep 0.2; n=$((n+1)); echo $n"}));
    let (_, b) = tokio::join!(a, b);
    assert_eq!(texts(&b, "stdout"), ["1"]);
}

#[tokio::test]
async fn delete_kills_everything_the_session_started() {
    let m = marker();
    let agent = Agent::start();
    let id = create(&agent, None).await;
    run(
        &agent,
        &id,
        json!({"command": format!("sleep 5551.{m} & sleep 5552.{m} &")}),
    )
    .await;
    // `&` returns before the child has exec'd `sleep`; wait until both are visible as sleeps.
    eventually(5, "both sleepers running", async || {
        (pids_matching(&format!(".{m}")).len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        agent
            .delete(&format!("/session/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    eventually(5, "session processes gone", async || {
        pids_matching(&format!(".{m}")).is_empty().then_some(())
    })
    .await;
    let again = agent.delete(&format!("/session/{id}")).send().await.unwrap();
    assert_eq!(again.status(), 404);
    assert_eq!(again.json::<Value>().await.unwrap()["code"], "CONTEXT_NOT_FOUND");
    let gone = agent
        .post(&format!("/session/{id}/run"))
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        gone.status(),
        500,
        "the contract answers an unknown session with a 500"
    );

    // DELETE /command?id=<session> closes a session too, as upstream does.
    let other = create(&agent, None).await;
    assert_eq!(
        agent
            .delete(&format!("/command?id={other}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        agent
            .delete(&format!("/session/{other}"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn sessions_see_execd_envs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envs");
    std::fs::write(&file, "FROM_FILE='yes it is'\n").unwrap();
    let agent = Agent::start_with(Opts {
        envs_file: Some(file),
        ..Opts::default()
    });
    let id = create(&agent, None).await;
    let events = run(&agent, &id, json!({"command": "echo $FROM_FILE"})).await;
    assert_eq!(texts(&events, "stdout"), ["yes it is"]);
}

#[tokio::test]
async fn bad_session_input() {
    let agent = Agent::start();
    let resp = agent
        .post("/session")
        .json(&json!({"cwd": "/no/such"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let id = create(&agent, None).await;
    for body in [
        json!({"command": ""}),
        json!({"command": "true", "timeout": -1}),
        json!({"command": "true", "cwd": "/nope"}),
        json!({"nocommand": 1}),
    ] {
        let resp = agent
            .post(&format!("/session/{id}/run"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        assert_eq!(
            resp.json::<Value>().await.unwrap()["code"],
            "INVALID_REQUEST_BODY"
        );
    }
    let resp = agent
        .post(&format!("/session/{id}/run"))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // The session still works.
    let events = tokio::time::timeout(
        Duration::from_secs(10),
        run(&agent, &id, json!({"command": "echo ok"})),
    )
    .await
    .unwrap();
    assert_eq!(texts(&events, "stdout"), ["ok"]);
}
