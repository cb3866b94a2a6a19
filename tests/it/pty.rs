//! Interactive terminals over WebSocket against the real binary: bash on a real PTY, resize,
//! signals, exit codes, exact resume with `since`, one holder with takeover, observers, pipe
//! mode, a TUI, bad frames and auth.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use futures_util::{SinkExt, StreamExt};

use crate::util::{descendants_matching, eventually, Agent, Opts};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `path` on the agent, with its token if it has one.
pub async fn ws_connect(agent: &Agent, path: &str) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://127.0.0.1:{}{path}", agent.port)
        .into_client_request()
        .expect("ws request");
    if let Some(t) = &agent.token {
        req.headers_mut()
            .insert("X-EXECD-ACCESS-TOKEN", t.parse().expect("header"));
    }
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

/// The HTTP status and JSON body of a refused upgrade.
fn refusal(err: tungstenite::Error) -> (u16, Value) {
    match err {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (status, body)
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

async fn create(agent: &Agent, body: Value) -> String {
    let resp = agent.post("/pty").json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 201, "POST /pty {body}");
    let v: Value = resp.json().await.unwrap();
    let id = v["session_id"].as_str().expect("session_id").to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "session id is a uuid: {id}");
    id
}

async fn status(agent: &Agent, id: &str) -> Value {
    let resp = agent.get(&format!("/pty/{id}")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// What a terminal client has seen.
#[derive(Debug, PartialEq)]
enum Frame {
    Replay(u64, Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Json(Value),
    Close(Option<(u16, String)>),
}

/// A terminal client.
struct Term {
    ws: Ws,
    /// Every stdout byte received (live frames only).
    out: Vec<u8>,
    /// Every stderr byte received.
    err: Vec<u8>,
}

impl Term {
    async fn open(agent: &Agent, path: &str) -> (Self, Option<(u64, Vec<u8>)>, Value) {
        let ws = ws_connect(agent, path).await.expect("ws connect");
        let mut term = Term {
            ws,
            out: Vec::new(),
            err: Vec::new(),
        };
        let mut replay = None;
        let connected = loop {
            match term.frame().await {
                Frame::Replay(off, bytes) => {
                    assert!(replay.is_none(), "one replay frame at most");
                    replay = Some((off, bytes));
                }
                Frame::Json(v) => break v,
                other => panic!("expected replay or connected, got {other:?}"),
            }
        };
        assert_eq!(connected["type"], "connected", "{connected}");
        (term, replay, connected)
    }

    /// The next frame, within 20 s; stdout/stderr bytes are also recorded.
    async fn frame(&mut self) -> Frame {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no frame within 20 s; stdout so far: {:?}",
                        String::from_utf8_lossy(&self.out)
                    )
                })
                .expect("stream open")
                .expect("frame ok");
            return match msg {
                Message::Binary(b) => match b.first() {
                    Some(0x01) => {
                        self.out.extend_from_slice(&b[1..]);
                        Frame::Stdout(b[1..].to_vec())
                    }
                    Some(0x02) => {
                        self.err.extend_from_slice(&b[1..]);
                        Frame::Stderr(b[1..].to_vec())
                    }
                    Some(0x03) => {
                        assert!(b.len() >= 9, "replay frame has an offset");
                        let off = u64::from_be_bytes(b[1..9].try_into().unwrap());
                        Frame::Replay(off, b[9..].to_vec())
                    }
                    other => panic!("unexpected binary frame tag {other:?}"),
                },
                Message::Text(t) => Frame::Json(serde_json::from_str(t.as_str()).expect("json")),
                Message::Close(c) => {
                    Frame::Close(c.map(|c| (u16::from(c.code), c.reason.as_str().to_owned())))
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
        }
    }

    async fn stdin(&mut self, text: &str) {
        let mut frame = vec![0x00];
        frame.extend_from_slice(text.as_bytes());
        self.ws.send(Message::Binary(frame.into())).await.unwrap();
    }

    async fn json(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    /// Reads until stdout contains `needle` (after byte `from`); returns the stdout so far.
    async fn until(&mut self, needle: &str) -> String {
        self.until_after(0, needle).await
    }

    async fn until_after(&mut self, from: usize, needle: &str) -> String {
        loop {
            let text = String::from_utf8_lossy(&self.out[from.min(self.out.len())..]).into_owned();
            if text.contains(needle) {
                return text;
            }
            match self.frame().await {
                Frame::Stdout(_) | Frame::Stderr(_) => {}
                other => panic!(
                    "waiting for {needle:?}, got {other:?}; stdout so far: {:?}",
                    String::from_utf8_lossy(&self.out)
                ),
            }
        }
    }

    /// Reads until a JSON frame arrives, skipping output.
    async fn next_json(&mut self) -> Value {
        loop {
            match self.frame().await {
                Frame::Json(v) => return v,
                Frame::Stdout(_) | Frame::Stderr(_) => {}
                other => panic!("expected a JSON frame, got {other:?}"),
            }
        }
    }

    /// Reads until the close frame, skipping output.
    async fn until_close(&mut self) -> Option<(u16, String)> {
        loop {
            match self.frame().await {
                Frame::Close(c) => return c,
                Frame::Stdout(_) | Frame::Stderr(_) => {}
                other => panic!("expected close, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn interactive_bash_echoes() {
    let agent = Agent::start();
    let id = create(&agent, json!({})).await;
    let before = status(&agent, &id).await;
    assert_eq!(
        before["running"], false,
        "nothing runs before the first connection"
    );
    assert_eq!(before["output_offset"], 0);

    let (mut term, replay, connected) = Term::open(&agent, &format!("/pty/{id}/ws")).await;
    assert_eq!(replay, None);
    assert_eq!(connected["session_id"], id.as_str());
    assert_eq!(connected["mode"], "pty");
    term.stdin("tty; echo \"hello-$((6*7))\"\n").await;
    let out = term.until("hello-42").await;
    assert!(
        out.contains("/dev/pts/"),
        "the shell runs on a real terminal: {out:?}"
    );
    // The typed line is echoed by the terminal, as a human would see it.
    assert!(out.contains("echo \"hello-$((6*7))\""), "{out:?}");

    let after = status(&agent, &id).await;
    assert_eq!(after["running"], true);
    assert!(after["output_offset"].as_u64().unwrap() >= term.out.len() as u64 / 2);
}

#[tokio::test]
async fn stty_size_follows_create_and_resize() {
    let agent = Agent::start();
    let id = create(&agent, json!({"cols": 100, "rows": 30})).await;
    let (mut term, _, _) = Term::open(&agent, &format!("/pty/{id}/ws")).await;
    term.stdin("echo \"size=$(stty size)\"\n").await;
    term.until("size=30 100").await;

    term.json(json!({"type": "resize", "cols": 132, "rows": 43}))
        .await;
    let mark = term.out.len();
    term.stdin("echo \"size=$(stty size) cols=$(tput cols)\"\n").await;
    term.until_after(mark, "size=43 132 cols=132").await;
}

#[tokio::test]
async fn sigint_stops_a_foreground_sleep() {
    let agent = Agent::start();
    let id = create(&agent, json!({})).await;
    let (mut term, _, _) = Term::open(&agent, &format!("/pty/{id}/ws")).await;
    term.stdin("sleep 100.5\n").await;
    eventually(10, "sleep to start", async || {
        (!descendants_matching(agent.pid(), "sleep 100.5").is_empty()).then_some(())
    })
    .await;
    term.json(json!({"type": "signal", "signal": "SIGINT"})).await;
    let mark = term.out.len();
    term.stdin("echo \"back-$((2+3))\"\n").await;
    // The prompt comes back long before the 100 s sleep would end.
    term.until_after(mark, "back-5").await;
    eventually(5, "sleep to be gone", async || {
        descendants_matching(agent.pid(), "sleep 100.5")
            .is_empty()
            .then_some(())
    })
    .await;
    // The shell itself survived the interrupt.
    assert_eq!(status(&agent, &id).await["running"], true);
}

#[tokio::test]
async fn exit_frame_carries_the_shell_code_then_close_1000() {
    let agent = Agent::start();
    let id = create(&agent, json!({})).await;
    let (mut term, _, _) = Term::open(&agent, &format!("/pty/{id}/ws")).await;
    term.stdin("echo bye; exit 7\n").await;
    let exit = term.next_json().await;
    assert_eq!(exit, json!({"type": "exit", "exit_code": 7}));
    let close = term.until_close().await.expect("close frame");
    assert_eq!(close.0, 1000);
    assert!(String::from_utf8_lossy(&term.out).contains("bye"));
    let st = status(&agent, &id).await;
    assert_eq!(st["running"], false);
    assert_eq!(st["output_offset"].as_u64(), Some(term.out.len() as u64));

    // A later connection replays the output and learns the exit at once.
    let (mut late, replay, _) = Term::open(&agent, &format!("/pty/{id}/ws?observe=1")).await;
    assert_eq!(replay, Some((0, term.out.clone())));
    assert_eq!(late.next_json().await["exit_code"], 7);
}

#[tokio::test]
async fn command_in_pipe_mode_separates_stderr() {
    let agent = Agent::start();
    let id = create(
        &agent,
        json!({"command": "echo out-1; echo err-2 >&2; read line; echo \"got-$line\"; exit 3"}),
    )
    .await;
    let (mut term, _, connected) = Term::open(&agent, &format!("/pty/{id}/ws?pty=0")).await;
    assert_eq!(connected["mode"], "pipe");
    term.stdin("abc\n").await;
    let exit = term.next_json().await;
    assert_eq!(exit["exit_code"], 3);
    assert_eq!(String::from_utf8_lossy(&term.out), "out-1\ngot-abc\n");
    assert_eq!(String::from_utf8_lossy(&term.err), "err-2\n");
}

#[tokio::test]
async fn reconnect_with_since_loses_and_duplicates_nothing() {
    let agent = Agent::start();
    let id = create(&agent, json!({})).await;
    let (mut first, _, _) = Term::open(&agent, &format!("/pty/{id}/ws")).await;
    // Output keeps coming after the client leaves: a slow count (also noted in a file, so the
    // test can tell it went on), then a marker.
    let dir = tempfile::tempdir().unwrap();
    let progress = dir.path().join("progress");
    first
        .stdin(&format!(
            "for i in $(seq 1 400); do echo \"line-$i\"; echo $i > {}; sleep 0.002; done; echo 'DONE'-$((40+2))\n",
            progress.display()
        ))
        .await;
    first.until("line-3\r\n").await;
    let seen = first.out.clone();
    let printed = || {
        std::fs::read_to_string(&progress)
            .ok()
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    let before = printed();
    drop(first); // disconnect mid-stream
    eventually(10, "output to go on while disconnected", async || {
        (printed() > before + 20).then_some(())
    })
    .await;

    // Resume where the client left (taking over in case the server has not yet noticed that
    // the old connection is gone).
    let since = seen.len() as u64;
    let (mut second, replay, _) = Term::open(&agent, &format!("/pty/{id}/ws?since={since}&takeover=1")).await;
    let (offset, bytes) = replay.expect("replay of what was missed");
    assert_eq!(offset, since, "the replay starts exactly where the client left");
    assert!(!bytes.is_empty(), "output went on while disconnected");
    let mut all = seen.clone();
    all.extend_from_slice(&bytes);
    if !String::from_utf8_lossy(&all).contains("DONE-42") {
        second.until("DONE-42").await;
    }
    second.stdin("echo live-$((1+1))\n").await;
    second.until("live-2").await;
    all.extend_from_slice(&second.out);

    let text = String::from_utf8_lossy(&all);
    for i in 1..=400 {
        assert_eq!(
            text.matches(&format!("line-{i}\r\n")).count(),
            1,
            "line-{i} exactly once"
        );
    }
    // The ring holds everything (well under 1 MiB): what the client pieced together is
    // exactly its start, byte for byte.
    let (_observer, full, _) = Term::open(&agent, &format!("/pty/{id}/ws?observe=1&since=0")).await;
    let (zero, full) = full.expect("full replay");
    assert_eq!(zero, 0);
    assert!(
        full.starts_with(&all),
        "pieced-together output differs from the session's own record"
    );
}

#[tokio::test]
async fn one_holder_409_and_takeover_closes_the_old_one_with_4001() {
    let agent = Agent::start();
    let id = create(&agent, json!({})).await;
    let path = format!("/pty/{id}/ws");
    let (mut a, _, _) = Term::open(&agent, &path).await;
    a.stdin("echo from-a\n").await;
    a.until("from-a\r\n").await;

    let (code, body) = refusal(ws_connect(&agent, &path).await.expect_err("second holder"));
    assert_eq!(code, 409);
    assert_eq!(body["code"], "ALREADY_CONNECTED");

    let (mut b, replay, _) = Term::open(&agent, &format!("{path}?takeover=1")).await;
    assert!(replay.is_some(), "the new holder sees the history");
    let close = a.until_close().await.expect("close frame");
    assert_eq!(close, (4001, "TAKEN_OVER".to_owned()));

    b.stdin("echo from-b\n").await;
    b.until("from-b\r\n").await;
    // b holds now: another plain client is refused, until b leaves.
    let (code, _) = refusal(ws_connect(&agent, &path).await.expect_err("b holds"));
    assert_eq!(code, 409);
    drop(b);
    let mut c = eventually(10, "the slot to be free", async || {
        ws_connect(&agent, &path).await.ok()
    })
    .await;
    // Its first frames: the replay, then connected.
    let first = tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, Message::Binary(ref b) if b[0] == 0x03));
}

#[tokio::test]
async fn observers_watch_but_cannot_type() {
    let agent = Agent::start();
    let id = create(&agent, json!({})).await;
    let (mut holder, _, _) = Term::open(&agent, &format!("/pty/{id}/ws")).await;
    let (mut observer, _, _) = Term::open(&agent, &format!("/pty/{id}/ws?observe=1")).await;
    holder.stdin("echo seen-$((3*3))\n").await;
    holder.until("seen-9").await;
    observer.until("seen-9").await;

    observer.stdin("echo sneaky\n").await;
    let err = observer.next_json().await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "READ_ONLY");
    observer
        .json(json!({"type": "signal", "signal": "SIGKILL"}))
        .await;
    assert_eq!(observer.next_json().await["code"], "READ_ONLY");
    assert_eq!(status(&agent, &id).await["running"], true);
    // The observer may still ping.
    observer.json(json!({"type": "ping"})).await;
    assert_eq!(observer.next_json().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn a_tui_renders_and_quits() {
    let agent = Agent::start();
    let id = create(&agent, json!({"cols": 120, "rows": 40})).await;
    let (mut term, _, _) = Term::open(&agent, &format!("/pty/{id}/ws")).await;
    term.stdin("top -d 0.5\n").await;
    // The process table's header comes after the summary lines: wait for it.
    let screen = term.until("PID").await;
    // Full-screen output: cursor addressing and clearing escape sequences.
    assert!(screen.contains("\x1b["), "escape sequences: {screen:?}");
    assert!(screen.contains("load average"), "{screen:?}");
    let mark = term.out.len();
    term.stdin("q").await;
    // Typing ahead would go to top (which drops it on exit): wait until it is gone.
    eventually(10, "top to quit", async || {
        descendants_matching(agent.pid(), "top -d 0.5")
            .is_empty()
            .then_some(())
    })
    .await;
    term.stdin("echo quit-$((5+5))\n").await;
    term.until_after(mark, "quit-10").await;

    // `top -b -n1` formats for the terminal's width.
    let mark = term.out.len();
    term.stdin("top -b -n1 | head -3 | cut -c1-20; echo top-$((4+4))\n")
        .await;
    let out = term.until_after(mark, "top-8").await;
    assert!(out.contains("top - "), "{out:?}");
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_session_goes_on() {
    let agent = Agent::start();
    let id = create(&agent, json!({})).await;
    let (mut term, _, _) = Term::open(&agent, &format!("/pty/{id}/ws")).await;
    let bad: Vec<Message> = vec![
        Message::Text("not json".into()),
        Message::Text(json!({"type": "launch"}).to_string().into()),
        Message::Text(
            json!({"type": "resize", "cols": -3, "rows": 2})
                .to_string()
                .into(),
        ),
        Message::Text(json!({"type": "resize", "cols": 0, "rows": 2}).to_string().into()),
        Message::Text(json!({"type": "signal", "signal": "SIGNOPE"}).to_string().into()),
        Message::Binary(vec![0x07, b'x'].into()),
        Message::Binary(Vec::new().into()),
    ];
    for msg in bad {
        let shown = format!("{msg:?}");
        term.ws.send(msg).await.unwrap();
        let err = term.next_json().await;
        assert_eq!(err["type"], "error", "{shown}: {err}");
        assert_eq!(err["code"], "INVALID_FRAME", "{shown}: {err}");
        assert!(!err["error"].as_str().unwrap_or("").is_empty());
    }
    term.json(json!({"type": "ping"})).await;
    assert_eq!(term.next_json().await, json!({"type": "pong"}));
    term.json(json!({"type": "stdin", "data": "echo still-$((7*6))\n"}))
        .await;
    term.until("still-42").await;
}

#[tokio::test]
async fn unknown_sessions_are_404_before_the_upgrade() {
    let agent = Agent::start();
    let (code, body) = refusal(
        ws_connect(&agent, "/pty/00000000-0000-0000-0000-000000000000/ws")
            .await
            .expect_err("unknown session"),
    );
    assert_eq!(code, 404);
    assert_eq!(body["code"], "CONTEXT_NOT_FOUND");
    assert_eq!(agent.get("/pty/nope").send().await.unwrap().status(), 404);
    assert_eq!(agent.delete("/pty/nope").send().await.unwrap().status(), 404);
    // Bad options are refused before the upgrade too.
    let id = create(&agent, json!({})).await;
    let (code, _) = refusal(
        ws_connect(&agent, &format!("/pty/{id}/ws?since=minus-one"))
            .await
            .expect_err("bad since"),
    );
    assert_eq!(code, 400);
    let bad = agent.post("/pty").json(&json!({"cols": 0})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let bad = agent.post("/pty").body("{nope").send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn delete_kills_every_process_and_the_client_sees_the_exit() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("made/by/pty");
    let id = create(&agent, json!({"cwd": cwd.to_str().unwrap()})).await;
    assert!(cwd.is_dir(), "a missing cwd is created");
    let (mut term, _, _) = Term::open(&agent, &format!("/pty/{id}/ws")).await;
    term.stdin("pwd; sleep 102.5 & sleep 103.5\n").await;
    term.until(cwd.to_str().unwrap()).await;
    eventually(10, "both sleeps", async || {
        (descendants_matching(agent.pid(), "sleep 102.5").len()
            + descendants_matching(agent.pid(), "sleep 103.5").len()
            == 2)
            .then_some(())
    })
    .await;
    let resp = agent.delete(&format!("/pty/{id}")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let exit = term.next_json().await;
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["exit_code"], -1, "killed by a signal");
    assert_eq!(term.until_close().await.map(|c| c.0), Some(1000));
    eventually(10, "the background job to die too", async || {
        (descendants_matching(agent.pid(), "sleep 102.5").is_empty()
            && descendants_matching(agent.pid(), "sleep 103.5").is_empty())
        .then_some(())
    })
    .await;
    assert_eq!(
        agent.get(&format!("/pty/{id}")).send().await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn the_token_guards_the_terminal() {
    let agent = Agent::start_with(Opts {
        token: Some("pty-secret".into()),
        ..Opts::default()
    });
    let id = create(&agent, json!({})).await;
    let url = format!("ws://127.0.0.1:{}/pty/{id}/ws", agent.port);
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect_err("no token");
    assert_eq!(refusal(err).0, 401);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("X-EXECD-ACCESS-TOKEN", "wrong".parse().unwrap());
    assert_eq!(
        refusal(tokio_tungstenite::connect_async(req).await.expect_err("wrong")).0,
        401
    );
    let (mut term, _, _) = Term::open(&agent, &format!("/pty/{id}/ws")).await;
    term.stdin("echo ok-$((1+2))\n").await;
    term.until("ok-3").await;
}

#[tokio::test]
async fn a_client_that_falls_behind_learns_where_output_resumes() {
    let agent = Agent::start();
    // 48 MiB of output, far more than the 1 MiB ring plus the socket buffers, written while
    // the client does not read.
    let id = create(
        &agent,
        json!({"command": "head -c 50331648 /dev/zero | tr '\\0' x; echo; echo END-OF-FLOOD"}),
    )
    .await;
    let (mut term, _, _) = Term::open(&agent, &format!("/pty/{id}/ws?pty=0")).await;
    let total = eventually(60, "the flood to end", async || {
        let st = status(&agent, &id).await;
        (st["running"] == false).then(|| st["output_offset"].as_u64().unwrap())
    })
    .await;
    assert!(total > 48 << 20);

    // Now read everything: live frames continue from the previous one; a replay frame marks
    // a gap and says exactly where the output resumes.
    let (mut cursor, mut gaps) = (0u64, 0);
    let exit = loop {
        match term.frame().await {
            Frame::Stdout(b) => cursor += b.len() as u64,
            Frame::Replay(offset, b) => {
                assert!(
                    offset > cursor,
                    "a resume frame skips ahead: {offset} vs {cursor}"
                );
                gaps += 1;
                cursor = offset + b.len() as u64;
            }
            Frame::Json(v) => break v,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(exit["exit_code"], 0);
    assert!(gaps >= 1, "the slow client must have lost bytes");
    assert_eq!(cursor, total, "offsets add up to the session's output offset");
    assert!(String::from_utf8_lossy(&term.out).ends_with("END-OF-FLOOD\n"));
}

#[tokio::test]
async fn a_process_that_cannot_start_is_reported_on_the_socket() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("gone");
    let id = create(&agent, json!({"cwd": cwd.to_str().unwrap()})).await;
    std::fs::remove_dir(&cwd).unwrap();
    let mut ws = ws_connect(&agent, &format!("/pty/{id}/ws"))
        .await
        .expect("upgrade");
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let err: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "START_FAILED", "{err}");
    let close = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(close, Message::Close(Some(ref c)) if u16::from(c.code) == 1011));
    let st = status(&agent, &id).await;
    assert_eq!(st["running"], false);
    // The failed attempt does not keep the session held.
    std::fs::create_dir(&cwd).unwrap();
    let (mut term, _, _) = Term::open(&agent, &format!("/pty/{id}/ws")).await;
    term.stdin("echo retry-$((1+1))\n").await;
    term.until("retry-2").await;
}

#[tokio::test]
async fn failed_starts_never_race_the_reaper() {
    // A start that fails after fork (here: the cwd vanished) goes through std's fork path,
    // which waits for the failed child itself; the reaper must not steal that status (std
    // would panic and the client would get RUNTIME_ERROR instead of START_FAILED).
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..40 {
        let cwd = dir.path().join(format!("gone-{i}"));
        let id = create(&agent, json!({"cwd": cwd.to_str().unwrap()})).await;
        std::fs::remove_dir(&cwd).unwrap();
        let mut ws = ws_connect(&agent, &format!("/pty/{id}/ws"))
            .await
            .expect("upgrade");
        let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let err: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
        assert_eq!(err["code"], "START_FAILED", "attempt {i}: {err}");
    }
}
