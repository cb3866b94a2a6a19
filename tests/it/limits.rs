//! Issue 20, item 6: what execd tolerates from its clients. Slow or half-sent requests are
//! closed before authentication, without cutting long streams or slow uploads that keep
//! sending; bash sessions and code contexts are capped and reaped when idle; client mistakes
//! are 4xx answers; without a token execd keeps to loopback unless told otherwise.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{eventually, kinds, texts, Agent, Opts};

const TOKEN: &str = "limits-token";

fn agent_with(env: &[(&str, &str)]) -> Agent {
    Agent::start_with(Opts {
        token: Some(TOKEN.into()),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Opts::default()
    })
}

/// A raw connection that sends `head` and then nothing more.
async fn half_sent(port: u16, head: String) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("write");
    tcp
}

/// Reads until the server closes the connection (or resets it); returns what it sent.
async fn read_until_closed(mut tcp: TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn issue20_slowloris_connections_are_closed_and_ping_still_answers() {
    let agent = agent_with(&[
        ("EXECD_HEADER_READ_TIMEOUT_MS", "1500"),
        ("EXECD_BODY_IDLE_TIMEOUT_MS", "1500"),
    ]);
    let mut conns = Vec::new();
    // Partial headers: no blank line ever comes.
    for i in 0..100 {
        let head = format!("POST /command HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: 1\r\n");
        conns.push(("partial headers", half_sent(agent.port, head).await));
    }
    // Complete headers and a body that never arrives, with the token (the handler waits for
    // the body) and without it (rejected before anything reads the body).
    for i in 0..100 {
        let auth = if i % 2 == 0 {
            format!("X-EXECD-ACCESS-TOKEN: {TOKEN}\r\n")
        } else {
            String::new()
        };
        let head = format!(
            "POST /command HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n{{\"command\":"
        );
        conns.push(("body never sent", half_sent(agent.port, head).await));
    }
    // 200 connections hang; the server still answers others at once.
    let ping = agent
        .get("/ping")
        .send()
        .await
        .expect("ping during the slowloris");
    assert_eq!(ping.status(), 200);

    // Every one of them is closed by the server; none is left waiting.
    let closing = conns.into_iter().map(|(what, tcp)| async move {
        let sent = tokio::time::timeout(Duration::from_secs(30), read_until_closed(tcp))
            .await
            .unwrap_or_else(|_| panic!("{what}: the server kept the connection open"));
        (what, sent)
    });
    let closed = futures_util::future::join_all(closing).await;
    let timeouts = closed
        .iter()
        .filter(|(_, sent)| sent.starts_with("HTTP/1.1 408"))
        .count();
    // The 50 authenticated bodies were waited for, then answered 408.
    assert_eq!(
        timeouts,
        50,
        "{:?}",
        closed.iter().map(|(_, s)| s.lines().next()).collect::<Vec<_>>()
    );
    assert!(
        closed.iter().any(|(_, sent)| sent.contains("REQUEST_TIMEOUT")),
        "the 408 names its code"
    );
    assert_eq!(agent.get("/ping").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn issue20_long_streams_and_slow_but_steady_bodies_are_never_cut() {
    let agent = agent_with(&[
        ("EXECD_HEADER_READ_TIMEOUT_MS", "300"),
        ("EXECD_BODY_IDLE_TIMEOUT_MS", "300"),
    ]);
    // An SSE stream that stays quiet for longer than both timeouts.
    let events = agent.run(json!({"command": "sleep 1.2; echo still-here"})).await;
    assert_eq!(texts(&events, "stdout"), ["still-here"], "{:?}", kinds(&events));
    assert!(
        kinds(&events).contains(&"execution_complete"),
        "{:?}",
        kinds(&events)
    );

    // A request body trickling in for longer than the idle timeout, never idle that long.
    let body = r#"{"command": "echo trickled"}"#.as_bytes().to_vec();
    let chunks: Vec<Vec<u8>> = body.chunks(3).map(<[u8]>::to_vec).collect();
    let stream = futures_util::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>(chunk)
    });
    let resp = agent
        .post("/command")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let events = crate::util::collect_sse(resp).await;
    assert_eq!(texts(&events, "stdout"), ["trickled"]);
}

async fn create_session(agent: &Agent) -> reqwest::Response {
    agent.post("/session").json(&json!({})).send().await.unwrap()
}

async fn create_context(agent: &Agent, language: &str) -> reqwest::Response {
    agent
        .post("/code/context")
        .json(&json!({"language": language}))
        .send()
        .await
        .unwrap()
}

async fn expect_too_many(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 429, "{what}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "TOO_MANY_SESSIONS", "{what}: {body}");
}

async fn id_of(resp: reqwest::Response, field: &str) -> String {
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body[field].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn issue20_sessions_and_contexts_are_capped() {
    let agent = agent_with(&[
        ("EXECD_MAX_SESSIONS", "2"),
        ("EXECD_MAX_CONTEXTS", "2"),
        ("EXECD_NO_JUPYTER", "1"),
        ("EXECD_KERNEL_POOL", "0"),
    ]);
    let first = id_of(create_session(&agent).await, "session_id").await;
    id_of(create_session(&agent).await, "session_id").await;
    expect_too_many(create_session(&agent).await, "third session").await;
    // Deleting one makes room again.
    let del = agent.delete(&format!("/session/{first}")).send().await.unwrap();
    assert_eq!(del.status(), 200);
    id_of(create_session(&agent).await, "session_id").await;

    // Contexts have their own cap; a bash context's shell is not a client session.
    let ctx = id_of(create_context(&agent, "bash").await, "id").await;
    id_of(create_context(&agent, "bash").await, "id").await;
    expect_too_many(create_context(&agent, "bash").await, "third context").await;
    // A run naming a language whose default context would be a third one is refused too.
    let run = agent
        .post("/code")
        .json(&json!({"context": {"language": "bash"}, "code": "echo hi"}))
        .send()
        .await
        .unwrap();
    expect_too_many(run, "a default context beyond the cap").await;
    let del = agent
        .delete(&format!("/code/contexts/{ctx}"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    id_of(create_context(&agent, "bash").await, "id").await;
}

#[tokio::test]
async fn issue20_idle_sessions_and_contexts_are_reaped_but_never_mid_run() {
    let agent = agent_with(&[
        ("EXECD_SESSION_IDLE_TIMEOUT_MS", "400"),
        ("EXECD_NO_JUPYTER", "1"),
        ("EXECD_KERNEL_POOL", "0"),
    ]);
    // A session whose run lasts longer than the idle timeout finishes it.
    let session = id_of(create_session(&agent).await, "session_id").await;
    let events = agent
        .stream(
            &format!("/session/{session}/run"),
            json!({"command": "sleep 1.2; echo survived"}),
        )
        .await;
    assert_eq!(texts(&events, "stdout"), ["survived"], "{:?}", kinds(&events));
    // Then, unused, it goes: its directory (and shell) with it.
    let dir = agent.state_dir.path().join("sessions").join(&session);
    assert!(dir.exists(), "the session's shell ran in {}", dir.display());
    eventually(10, "the idle session to be deleted", async || {
        (!dir.exists()).then_some(())
    })
    .await;
    let run = agent
        .post(&format!("/session/{session}/run"))
        .json(&json!({"command": "true"}))
        .send()
        .await
        .unwrap();
    let body: Value = run.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("not found"), "{body}");

    // The same for a code context.
    let ctx = id_of(create_context(&agent, "bash").await, "id").await;
    let events = agent
        .stream(
            "/code",
            json!({"context": {"id": ctx}, "code": "sleep 1.2; echo survived"}),
        )
        .await;
    assert_eq!(texts(&events, "stdout"), ["survived"], "{:?}", kinds(&events));
    eventually(10, "the idle context to be deleted", async || {
        let resp = agent.get(&format!("/code/contexts/{ctx}")).send().await.unwrap();
        (resp.status() == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn issue20_idle_python_contexts_are_reaped() {
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(_) = python else {
        eprintln!("skipped: no python3");
        return;
    };
    let agent = agent_with(&[
        ("EXECD_SESSION_IDLE_TIMEOUT_MS", "400"),
        ("EXECD_NO_JUPYTER", "1"),
        ("EXECD_KERNEL_POOL", "0"),
    ]);
    let ctx = id_of(create_context(&agent, "python").await, "id").await;
    let events = agent
        .stream(
            "/code",
            json!({"context": {"id": ctx}, "code": "import time; time.sleep(1.2); print('survived')"}),
        )
        .await;
    assert!(
        texts(&events, "stdout").concat().contains("survived"),
        "{:?}",
        kinds(&events)
    );
    eventually(10, "the idle context to be deleted", async || {
        let resp = agent.get(&format!("/code/contexts/{ctx}")).send().await.unwrap();
        (resp.status() == 404).then_some(())
    })
    .await;
}

#[tokio::test]
async fn issue20_client_mistakes_are_4xx_not_500() {
    let agent = agent_with(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let expect = async |resp: reqwest::Response, status: u16, code: &str| {
        assert_eq!(resp.status(), status, "{code}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], code, "{body}");
    };
    // Downloading a directory.
    let resp = agent
        .get("/files/download")
        .query(&[("path", &path)])
        .send()
        .await
        .unwrap();
    expect(resp, 400, "IS_A_DIRECTORY").await;
    // Uploading onto a directory.
    let boundary = "limits-boundary";
    let meta = json!({"path": path}).to_string();
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"metadata\"\r\n\
         Content-Type: application/json\r\n\r\n{meta}\r\n--{boundary}\r\nContent-Disposition: form-data; \
         name=\"file\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n--{boundary}--\r\n"
    );
    let resp = agent
        .post("/files/upload")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    expect(resp, 400, "IS_A_DIRECTORY").await;
    // Removing a directory with DELETE /files stays the contract's 500.
    let resp = agent
        .delete("/files")
        .query(&[("path", &path)])
        .send()
        .await
        .unwrap();
    expect(resp, 500, "RUNTIME_ERROR").await;
    // A JSON body over the limit (last: the server closes a connection whose body it refused
    // to read, and the client's pool may not know yet).
    let huge = json!({"command": "true", "envs": {"X": "y".repeat(3 << 20)}});
    let resp = agent.post("/command").json(&huge).send().await.unwrap();
    expect(resp, 413, "PAYLOAD_TOO_LARGE").await;
}

/// `POST /files/replace` without `verbose` answers an empty body, as upstream does, now with
/// the content type its document names.
#[tokio::test]
async fn issue20_plain_replace_answers_what_its_document_says() {
    let agent = agent_with(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, "old").unwrap();
    let body = json!({ file.to_str().unwrap(): {"old": "old", "new": "new"} });
    let resp = agent.post("/files/replace").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(resp.text().await.unwrap(), "");
    let resp = agent
        .post("/files/replace?verbose=true")
        .json(&json!({ file.to_str().unwrap(): {"old": "new", "new": "newer"} }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let counts: Value = resp.json().await.unwrap();
    assert_eq!(counts[file.to_str().unwrap()]["replacedCount"], 1);
}

/// Starts execd with `args` and no host or token from the environment; returns the address
/// it listens on and what it logged up to the first warning (or the end of its log).
fn listen_address(token: Option<&str>, tail: &[&str]) -> (String, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_execd"));
    cmd.args(["--port", "0", "--state-dir"])
        .arg(state.path())
        .env_remove("EXECD_HOST")
        .env_remove("EXECD_ACCESS_TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("EXECD_ACCESS_TOKEN", t);
    }
    cmd.args(tail);
    let mut child = cmd.spawn().expect("spawn execd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or(&line)
        .to_owned();
    // Stopped now, so the log ends (the warning comes before the listening line). SIGTERM:
    // in init mode execd passes it to the entrypoint, whose end closes the log pipe too.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    (addr, log)
}

#[test]
fn issue20_without_a_token_execd_listens_on_loopback_unless_told_otherwise() {
    let (addr, log) = listen_address(None, &[]);
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert!(!log.contains("NO ACCESS TOKEN"), "{log}");
    // With a token: every interface, as before.
    let (addr, _) = listen_address(Some("t"), &[]);
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    // Told explicitly: obeyed, with a loud warning.
    let (addr, log) = listen_address(None, &["--host", "0.0.0.0"]);
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    assert!(log.contains("NO ACCESS TOKEN"), "{log}");
    // A container's init: the orchestrator publishes the port and must reach execd.
    let (addr, log) = listen_address(None, &["init", "--", "true"]);
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    assert!(log.contains("NO ACCESS TOKEN"), "{log}");
}
