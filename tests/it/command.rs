//! `POST /command` and friends: events, exit codes, signals, timeouts, interrupts, background
//! runs with status and logs, environment precedence, identities, argv, stdin, bad input.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{eventually, kinds, marker, pids_matching, texts, Agent, Event, Opts};

/// Starts a streaming command and returns its id (from `init`) plus a task collecting the rest.
pub async fn open_stream(agent: &Agent, body: Value) -> (String, tokio::task::JoinHandle<Vec<Event>>) {
    let mut resp = agent.post("/command").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut buf = String::new();
    while !buf.contains("\n\n") {
        let chunk = resp.chunk().await.unwrap().expect("stream ended before init");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    let first = crate::util::parse_sse(&buf);
    assert_eq!(first[0].kind(), "init");
    let id = first[0].text().to_owned();
    let task = tokio::spawn(async move {
        while let Some(chunk) = resp.chunk().await.unwrap() {
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
        crate::util::parse_sse(&buf)
    });
    (id, task)
}

async fn status(agent: &Agent, id: &str) -> Value {
    let resp = agent.get(&format!("/command/status/{id}")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn wait_finished(agent: &Agent, id: &str) -> Value {
    eventually(10, "command to finish", async || {
        let s = status(agent, id).await;
        (s["running"] == false).then_some(s)
    })
    .await
}

fn error_of(events: &[Event]) -> &Value {
    &events.last().expect("events").data["error"]
}

#[tokio::test]
async fn echo_is_init_one_line_complete() {
    let agent = Agent::start();
    let events = agent.run(json!({"command": "echo hello"})).await;
    assert_eq!(kinds(&events), ["init", "stdout", "execution_complete"]);
    assert_eq!(
        events.iter().map(|e| e.id.unwrap()).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let id = events[0].text();
    assert_eq!(id.len(), 32);
    assert!(id
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(events[1].text(), "hello");
    // The status record exists for foreground commands too, with usage once finished.
    let s = wait_finished(&agent, id).await;
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["content"], "echo hello");
    assert!(s.get("error").is_none());
    assert!(s["usage"]["max_rss_kib"].as_u64().unwrap() > 0);
    assert!(s["finished_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn lines_blank_lines_and_terminators() {
    let agent = Agent::start();
    let events = agent
        .run(json!({"command": r"printf 'a\n\nb\n\n\nc\n'; printf 'x\r\ny\rz'"}))
        .await;
    assert_eq!(
        texts(&events, "stdout"),
        ["a", "\n", "b", "\n", "\n", "c", "x", "y", "z"]
    );
    let events = agent.run(json!({"command": "echo out; echo err >&2"})).await;
    assert_eq!(texts(&events, "stdout"), ["out"]);
    assert_eq!(texts(&events, "stderr"), ["err"]);
}

#[tokio::test]
async fn exit_codes_and_signals() {
    let agent = Agent::start();
    let events = agent.run(json!({"command": "echo before; exit 3"})).await;
    assert_eq!(
        kinds(&events),
        ["init", "stdout", "error"],
        "error and complete are exclusive"
    );
    let err = error_of(&events);
    assert_eq!(err["ename"], "CommandExecError");
    assert_eq!(err["evalue"], "3");
    assert_eq!(err["traceback"][0], "exit status 3");

    let events = agent.run(json!({"command": "kill -TERM $$"})).await;
    assert_eq!(error_of(&events)["evalue"], "-1");
    assert_eq!(error_of(&events)["traceback"][0], "signal: terminated");
    let s = status(&agent, events[0].text()).await;
    assert_eq!(s["exit_code"], -1);
    assert_eq!(s["error"], "signal: terminated");
}

#[tokio::test]
async fn timeout_kills_the_whole_tree() {
    let m = marker();
    let agent = Agent::start();
    // Without the timeout the run would take hours; the bound only keeps a failure short.
    let events = tokio::time::timeout(
        Duration::from_secs(30),
        agent.run(json!({
            "command": format!("sleep 7771.{m} & (sleep 7772.{m} &); sh -c 'sleep 7773.{m}' & sleep 7774.{m}"),
            "timeout": 400
        })),
    )
    .await
    .expect("the timeout ends the run");
    let err = error_of(&events);
    assert_eq!(err["evalue"], "-1");
    assert_eq!(err["traceback"][0], "signal: killed");
    eventually(5, "no sleeper survives the timeout", async || {
        pids_matching(&format!(".{m}")).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn interrupt_foreground_and_background() {
    let m = marker();
    let agent = Agent::start();
    let (id, rest) = open_stream(
        &agent,
        json!({"command": format!("echo started; sleep 9991.{m}")}),
    )
    .await;
    let resp = agent.delete(&format!("/command?id={id}")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let events = tokio::time::timeout(Duration::from_secs(5), rest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(events.last().unwrap().kind(), "error");
    assert_eq!(error_of(&events)["evalue"], "-1");

    // A shell that ignores SIGTERM survives it (its loop goes on, writing to the log) and is
    // killed by the SIGKILL after the grace.
    let events = agent
        .run(json!({
            "command": format!("trap 'echo got-term' TERM; while :; do sleep 0.0{m}; echo tick; done"),
            "background": true
        }))
        .await;
    let id = events[0].text().to_owned();
    // Only once the loop runs has the shell installed its trap. The trailing space matches
    // the sleep child's argv ("sleep\00.0…\0") and not the shell's own command line.
    eventually(5, "the loop to run", async || {
        (!pids_matching(&format!("sleep 0.0{m} ")).is_empty()).then_some(())
    })
    .await;
    agent.delete(&format!("/command?id={id}")).send().await.unwrap();
    let s = wait_finished(&agent, &id).await;
    let log = agent
        .get(&format!("/command/{id}/logs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let after_term = log
        .split_once("got-term\n")
        .map(|(_, rest)| rest)
        .expect("SIGTERM came first");
    assert!(
        after_term.contains("tick"),
        "the loop survived SIGTERM, so SIGKILL was not sent at once"
    );
    assert_eq!(s["exit_code"], -1);
    assert_eq!(s["error"], "signal: killed");
    eventually(5, "the loop's children gone", async || {
        pids_matching(&format!("sleep 0.0{m}")).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn background_status_and_log_cursor() {
    let agent = Agent::start();
    let events = agent
        .run(json!({"command": "echo one; echo two >&2; sleep 0.3; printf three", "background": true}))
        .await;
    assert_eq!(kinds(&events), ["init", "execution_complete"]);
    let id = events[0].text().to_owned();
    assert_eq!(status(&agent, &id).await["running"], true);

    let s = wait_finished(&agent, &id).await;
    assert_eq!(s["exit_code"], 0);
    let logs = |cursor: &str| {
        let req = agent.get(&format!("/command/{id}/logs?cursor={cursor}"));
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
            let next: u64 = resp.headers()["execd-commands-tail-cursor"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            (resp.text().await.unwrap(), next)
        }
    };
    let (all, end) = logs("0").await;
    assert_eq!(all, "one\ntwo\nthree");
    assert_eq!(end, all.len() as u64);
    let (tail, end2) = logs("4").await;
    assert_eq!(tail, "two\nthree");
    assert_eq!(end2, end);
    // Past EOF: clamped, so polling does not stall on a bogus offset.
    let (none, clamped) = logs("999999").await;
    assert_eq!(none, "");
    assert_eq!(clamped, end);
    let (from_junk, _) = logs("abc").await;
    assert_eq!(from_junk, all, "a non-numeric cursor reads from 0");
}

#[tokio::test]
async fn environment_precedence_and_envs_file_reread() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envs");
    std::fs::write(&file, "A=file\nB=file\nQ='quoted value'\n").unwrap();
    let agent = Agent::start_with(Opts {
        envs_file: Some(file.clone()),
        env: vec![
            ("A".into(), "daemon".into()),
            ("B".into(), "daemon".into()),
            ("C".into(), "daemon".into()),
        ],
        ..Opts::default()
    });
    let cmd = json!({"command": "echo $A $B $C; echo $Q; echo $EXECD_ENVS", "envs": {"B": "request"}});
    let events = agent.run(cmd.clone()).await;
    assert_eq!(
        texts(&events, "stdout"),
        ["file request daemon", "quoted value", file.to_str().unwrap()]
    );
    // Re-read on every command: what set_env appends is seen by the next command.
    std::fs::write(&file, "A=changed\n").unwrap();
    let events = agent.run(cmd).await;
    assert_eq!(texts(&events, "stdout")[0], "changed request daemon");
}

#[tokio::test]
async fn runs_as_uid_and_gid() {
    assert!(nix::unistd::geteuid().is_root(), "this suite runs as root");
    let agent = Agent::start();
    let events = agent.run(json!({"command": "id -u; id -g", "uid": 65534})).await;
    assert_eq!(texts(&events, "stdout"), ["65534", "65534"]);
    let events = agent
        .run(json!({"command": "id -u; id -g; id -G", "uid": 65534, "gid": 100}))
        .await;
    assert_eq!(texts(&events, "stdout"), ["65534", "100", "100"]);
    let events = agent
        .run(json!({"command": "touch /root/denied", "uid": 65534}))
        .await;
    assert_eq!(events.last().unwrap().kind(), "error");
}

#[tokio::test]
async fn argv_runs_without_a_shell() {
    let agent = Agent::start();
    let events = agent
        .run(json!({"argv": ["printf", "%s|", "a b", "$HOME", "c"]}))
        .await;
    assert_eq!(texts(&events, "stdout"), ["a b|$HOME|c|"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.sh"), "#!/bin/sh\necho relative $1\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(dir.path().join("s.sh"))
        .status()
        .unwrap();
    let events = agent
        .run(json!({"argv": ["./s.sh", "ok"], "cwd": dir.path()}))
        .await;
    assert_eq!(texts(&events, "stdout"), ["relative ok"]);
    let events = agent.run(json!({"argv": ["definitely-not-a-program-xyz"]})).await;
    assert_eq!(kinds(&events), ["init", "error"]);
    assert_eq!(error_of(&events)["evalue"], "127");
}

#[tokio::test]
async fn cwd_is_expanded() {
    let agent = Agent::start_with(Opts {
        env: vec![("WORKDIR".into(), "/tmp".into())],
        ..Opts::default()
    });
    let events = agent.run(json!({"command": "pwd", "cwd": "${WORKDIR}"})).await;
    assert_eq!(texts(&events, "stdout"), ["/tmp"]);
}

#[tokio::test]
async fn stdin_pipe() {
    let agent = Agent::start();
    let (id, rest) = open_stream(&agent, json!({"command": "cat; echo closed", "stdin": true})).await;
    let post = |q: &'static str, body: &'static str| {
        agent.post(&format!("/command/{id}/stdin{q}")).body(body).send()
    };
    assert_eq!(post("", "hello\nwor").await.unwrap().status(), 200);
    assert_eq!(post("?eof=true", "ld\n").await.unwrap().status(), 200);
    let events = tokio::time::timeout(Duration::from_secs(5), rest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(texts(&events, "stdout"), ["hello", "world", "closed"]);
    assert_eq!(events.last().unwrap().kind(), "execution_complete");
    // Closed now: further writes are a conflict, not a silent success.
    assert_eq!(post("", "late").await.unwrap().status(), 409);
}

#[tokio::test]
async fn big_output_arrives_complete_and_in_order() {
    let agent = Agent::start();
    let events = agent.run(json!({"command": "seq 1 200000"})).await;
    let lines = texts(&events, "stdout");
    assert_eq!(lines.len(), 200000);
    assert!(lines
        .iter()
        .enumerate()
        .all(|(i, l)| l.parse::<usize>() == Ok(i + 1)));
    assert_eq!(events.last().unwrap().kind(), "execution_complete");
}

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn bad_input_is_a_clear_error() {
    let agent = Agent::start();
    let post = |body: &str| {
        agent
            .post("/command")
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    expect_error(post("{not json").await.unwrap(), 400, "INVALID_REQUEST_BODY").await;
    expect_error(
        post(r#"{"command":"true","argv":["true"]}"#).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(post(r#"{"cwd":"/"}"#).await.unwrap(), 400, "INVALID_REQUEST_BODY").await;
    expect_error(post(r#"{"argv":[]}"#).await.unwrap(), 400, "INVALID_REQUEST_BODY").await;
    expect_error(
        post(r#"{"argv":[""]}"#).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        post(r#"{"argv":["echo","a\u0000b"]}"#).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        post(r#"{"command":"true","gid":0}"#).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        post(r#"{"command":"true","cwd":"/no/such/dir"}"#).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        post(r#"{"command":"true","cwd":"/etc/hostname"}"#).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        post(r#"{"command":"true","cwd":"$UNDEFINED_VAR_X"}"#)
            .await
            .unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        post(r#"{"command":"true","timeout":-5}"#).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        post(r#"{"command":"true","uid":-1}"#).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        post(r#"{"command":123}"#).await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    // Zero means "no timeout" in the contract (Go's omitempty), so it is accepted.
    let events = agent.run(json!({"command": "true", "timeout": 0})).await;
    assert_eq!(kinds(&events), ["init", "execution_complete"]);

    expect_error(
        agent.get("/command/status/nope").send().await.unwrap(),
        404,
        "INVALID_REQUEST_BODY",
    )
    .await;
    expect_error(
        agent.get("/command/nope/logs").send().await.unwrap(),
        400,
        "INVALID_REQUEST_BODY",
    )
    .await;
    let fg = agent.run(json!({"command": "true"})).await;
    let fg_logs = agent
        .get(&format!("/command/{}/logs", fg[0].text()))
        .send()
        .await
        .unwrap();
    expect_error(fg_logs, 400, "INVALID_REQUEST_BODY").await;
    expect_error(
        agent.delete("/command").send().await.unwrap(),
        400,
        "MISSING_QUERY",
    )
    .await;
    expect_error(
        agent.delete("/command?id=nope").send().await.unwrap(),
        500,
        "RUNTIME_ERROR",
    )
    .await;
    expect_error(
        agent.get("/command/nope/events").send().await.unwrap(),
        404,
        "COMMAND_NOT_FOUND",
    )
    .await;
    expect_error(
        agent.post("/command/nope/stdin").body("x").send().await.unwrap(),
        404,
        "COMMAND_NOT_FOUND",
    )
    .await;
    let no_stdin = agent
        .post(&format!("/command/{}/stdin", fg[0].text()))
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(no_stdin, 409, "CONFLICT").await;
    // Still healthy after all that.
    assert_eq!(agent.get("/ping").send().await.unwrap().status(), 200);
}
