//! Code contexts on both backends: real ipykernel over ZeroMQ, and the built-in python driver.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{kinds, texts, Agent, Event, Opts};

fn venv_path() -> String {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin");
    assert!(
        std::path::Path::new(venv).join("python3").exists(),
        "{venv}/python3 missing: run scripts/setup.sh (it installs ipykernel)"
    );
    format!("{venv}:{}", std::env::var("PATH").unwrap_or_default())
}

/// An agent whose PATH has the test venv (ipykernel) first.
fn agent(jupyter: bool, pool: usize) -> Agent {
    let mut env = vec![
        ("PATH".into(), venv_path()),
        ("EXECD_KERNEL_POOL".into(), pool.to_string()),
    ];
    if !jupyter {
        env.push(("EXECD_NO_JUPYTER".into(), "1".into()));
    }
    Agent::start_with(Opts {
        env,
        ..Opts::default()
    })
}

async fn create(agent: &Agent, language: &str) -> String {
    let resp = agent
        .post("/code/context")
        .json(&json!({"language": language}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ctx: Value = resp.json().await.unwrap();
    assert_eq!(ctx["language"], language);
    ctx["id"].as_str().unwrap().to_owned()
}

async fn run(agent: &Agent, id: &str, code: &str) -> Vec<Event> {
    agent
        .stream("/code", json!({"context": {"id": id}, "code": code}))
        .await
}

fn stdout(events: &[Event]) -> String {
    texts(events, "stdout").concat()
}

fn results(events: &[Event]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e.kind() == "result")
        .map(|e| &e.data["results"])
        .collect()
}

fn last(events: &[Event]) -> &str {
    events.last().map(Event::kind).unwrap_or("")
}

async fn python_basics(agent: &Agent) {
    let id = create(agent, "python").await;
    let events = run(agent, &id, "print('a')\nprint('b')\nx = 2").await;
    assert_eq!(events[0].kind(), "init");
    assert_eq!(events[0].text(), id);
    assert_eq!(stdout(&events), "a\nb\n", "raw chunks keep their newlines");
    assert_eq!(last(&events), "execution_complete");

    let events = run(agent, &id, "x + 2").await;
    assert_eq!(results(&events)[0]["text"], "4");
    assert!(kinds(&events).contains(&"execution_count"));

    // Two contexts do not share state.
    let other = create(agent, "python").await;
    let events = run(agent, &other, "x").await;
    let err = events
        .iter()
        .find(|e| e.kind() == "error")
        .expect("NameError in the other context");
    assert_eq!(err.data["error"]["ename"], "NameError");
    assert_eq!(
        last(&events),
        "execution_complete",
        "complete follows an error on the code path"
    );

    // stderr is its own stream.
    let events = run(agent, &id, "import sys; sys.stderr.write('oops\\n')").await;
    assert_eq!(texts(&events, "stderr").concat(), "oops\n");

    // Default context per language: created lazily and reused.
    let a = agent
        .stream(
            "/code",
            json!({"context": {"language": "python"}, "code": "shared = 41"}),
        )
        .await;
    let b = agent
        .stream(
            "/code",
            json!({"context": {"language": "python"}, "code": "shared + 1"}),
        )
        .await;
    assert_eq!(a[0].text(), b[0].text());
    assert_eq!(results(&b)[0]["text"], "42");
}

async fn python_interrupt(agent: &Agent) {
    let id = create(agent, "python").await;
    run(agent, &id, "kept = 'still here'").await;
    let stream = {
        let req = agent
            .post("/code")
            .json(&json!({"context": {"id": id}, "code": "while True: pass"}));
        tokio::spawn(async move { crate::util::collect_sse(req.send().await.unwrap()).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    assert_eq!(
        agent
            .delete(&format!("/code?id={id}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let events = tokio::time::timeout(Duration::from_secs(5), stream)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "interrupted within 2 s"
    );
    let err = events
        .iter()
        .find(|e| e.kind() == "error")
        .expect("KeyboardInterrupt reported");
    assert_eq!(err.data["error"]["ename"], "KeyboardInterrupt");
    let events = run(agent, &id, "kept").await;
    assert_eq!(
        results(&events)[0]["text"],
        "'still here'",
        "context usable, state kept"
    );
}

async fn python_death_and_busy(agent: &Agent) {
    let id = create(agent, "python").await;
    run(agent, &id, "before = 1").await;
    let events = run(agent, &id, "import os; os._exit(1)").await;
    assert_eq!(last(&events), "error");
    assert_eq!(events.last().unwrap().data["error"]["ename"], "KernelDied");
    let events = run(agent, &id, "print('alive again')\nbefore").await;
    assert!(
        stdout(&events).contains("alive again"),
        "a fresh interpreter runs the next cell"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind() == "error" && e.data["error"]["ename"] == "NameError"),
        "state lost"
    );

    // One run at a time per context; runs in different contexts overlap.
    let other = create(agent, "python").await;
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        run(agent, &id, "import time; time.sleep(1.5); 'a'"),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            run(agent, &id, "'b'").await
        },
        run(agent, &other, "import time; time.sleep(1.5); 'c'"),
    );
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "different contexts run concurrently"
    );
    assert_eq!(results(&a)[0]["text"], "'a'");
    assert_eq!(results(&c)[0]["text"], "'c'");
    assert_eq!(kinds(&b), ["init", "error"]);
    assert_eq!(b[1].data["error"]["ename"], "ContextBusy");
}

#[tokio::test]
async fn jupyter_python_basics() {
    python_basics(&agent(true, 0)).await;
}

#[tokio::test]
async fn builtin_python_basics() {
    python_basics(&agent(false, 0)).await;
}

#[tokio::test]
async fn jupyter_interrupt() {
    python_interrupt(&agent(true, 0)).await;
}

#[tokio::test]
async fn builtin_interrupt() {
    python_interrupt(&agent(false, 0)).await;
}

#[tokio::test]
async fn jupyter_death_and_busy() {
    python_death_and_busy(&agent(true, 0)).await;
}

#[tokio::test]
async fn builtin_death_and_busy() {
    python_death_and_busy(&agent(false, 0)).await;
}

/// A 1x1 PNG.
const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

#[tokio::test]
async fn jupyter_rich_display() {
    let agent = agent(true, 0);
    let id = create(&agent, "python").await;
    let code = format!(
        "from IPython.display import HTML, Image, display\nimport base64\ndisplay(HTML('<b>bold</b>'))\ndisplay(Image(data=base64.b64decode('{PNG_B64}')))"
    );
    let events = run(&agent, &id, &code).await;
    let r = results(&events);
    assert_eq!(r.len(), 2, "display_data is forwarded, not dropped: {events:?}");
    assert_eq!(r[0]["text/html"], "<b>bold</b>");
    assert_eq!(r[1]["image/png"].as_str().unwrap().trim(), PNG_B64);
}

#[tokio::test]
async fn builtin_rich_display_and_figures() {
    let agent = agent(false, 0);
    let id = create(&agent, "python").await;
    let events = run(
        &agent,
        &id,
        "class H:\n    def _repr_html_(self): return '<i>h</i>'\ndisplay(H())\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
    )
    .await;
    let r = results(&events);
    assert_eq!(r[0]["text/html"], "<i>h</i>");
    let png = r
        .iter()
        .find_map(|b| b["image/png"].as_str())
        .expect("figure captured as image/png");
    assert!(png.starts_with("iVBORw0KGgo"), "base64 of a PNG");
    assert_eq!(last(&events), "execution_complete");
}

#[tokio::test]
async fn bash_context_keeps_cd_and_export() {
    let agent = agent(true, 0);
    let id = create(&agent, "bash").await;
    run(&agent, &id, "cd /tmp && export GREETING=hello").await;
    let events = run(&agent, &id, "pwd; echo $GREETING").await;
    assert_eq!(texts(&events, "stdout"), ["/tmp", "hello"]);
    // An empty language runs the code as a plain command.
    let events = agent
        .stream(
            "/code",
            json!({"context": {"language": ""}, "code": "echo as-command"}),
        )
        .await;
    assert_eq!(texts(&events, "stdout"), ["as-command"]);
}

#[tokio::test]
async fn list_get_delete_and_errors() {
    let agent = agent(false, 0);
    let langs: Value = agent
        .get("/code/languages")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = langs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["language"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"python") && names.contains(&"bash"), "{langs}");
    assert!(
        langs
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["backend"] == "builtin"),
        "EXECD_NO_JUPYTER honoured"
    );

    let a = create(&agent, "python").await;
    let b = create(&agent, "bash").await;
    let all: Vec<Value> = agent
        .get("/code/contexts")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let py: Vec<Value> = agent
        .get("/code/contexts?language=python")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(py.len(), 1);
    assert_eq!(py[0]["id"], a.as_str());
    let one: Value = agent
        .get(&format!("/code/contexts/{b}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["language"], "bash");

    let missing = agent.get("/code/contexts/nope").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["code"],
        "CONTEXT_NOT_FOUND"
    );
    let run_missing = agent
        .post("/code")
        .json(&json!({"context": {"id": "nope"}, "code": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        run_missing.status(),
        500,
        "the contract's answer for an unknown context on run"
    );

    assert_eq!(
        agent
            .delete("/code/contexts?language=python")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        agent
            .get(&format!("/code/contexts/{a}"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        agent
            .delete(&format!("/code/contexts/{b}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        agent
            .delete(&format!("/code/contexts/{b}"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        agent.delete("/code/contexts").send().await.unwrap().status(),
        400,
        "language is required"
    );

    let unknown = agent
        .post("/code/context")
        .json(&json!({"language": "cobol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    let msg = unknown.json::<Value>().await.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.contains("cobol") && msg.contains("python"),
        "names what is available: {msg}"
    );
    let empty = agent
        .post("/code")
        .json(&json!({"context": {"language": "python"}, "code": "  "}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 400);
    let bad = agent.post("/code").body("{").send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

/// Runs a cell printing 100 MB and returns execd's peak RSS (KiB) afterwards.
async fn huge_output(agent: &Agent, id: &str) -> u64 {
    // 100 MB of output in one cell.
    let resp = agent
        .post("/code")
        .json(&json!({"context": {"id": id}, "code": "import sys\nfor _ in range(1000):\n    sys.stdout.write('x' * 99999 + '\\n')"}))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut total = 0usize;
    let mut tail = Vec::new();
    use futures_util::StreamExt;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(120), body.next())
        .await
        .unwrap()
    {
        let chunk = chunk.unwrap();
        total += chunk.len();
        tail.extend_from_slice(&chunk);
        if tail.len() > 4096 {
            tail.drain(..tail.len() - 4096);
        }
    }
    assert!(total > 100_000_000, "all output arrived ({total} bytes)");
    assert!(String::from_utf8_lossy(&tail).contains("execution_complete"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn jupyter_huge_output_bounded_memory() {
    // ipykernel flushes on a timer, not by size, so 100 MB arrives as one or two messages of
    // up to 100 MB that execd must hold (frame + decoded text) while it forwards them: the peak
    // follows the kernel's largest message, not the total. Three cells (300 MB) must stay under
    // what holding even two of them would take.
    let agent = agent(true, 0);
    let id = create(&agent, "python").await;
    let mut peak = 0;
    for _ in 0..3 {
        peak = huge_output(&agent, &id).await;
    }
    assert!(
        peak < 450 * 1024,
        "peak bounded by the kernel's message size, not the total: {peak} KiB"
    );
}

#[tokio::test]
async fn builtin_huge_output_bounded_memory() {
    // The built-in driver's pipes are read in bounded chunks: the peak stays far below 100 MB.
    let agent = agent(false, 0);
    let id = create(&agent, "python").await;
    let hwm = huge_output(&agent, &id).await;
    assert!(hwm < 100 * 1024, "execd peak RSS stays bounded: {hwm} KiB");
}

#[tokio::test]
async fn warm_pool_hands_out_independent_kernels() {
    let agent = agent(true, 1);
    let warm = crate::util::eventually(60, "a warm kernel", async || {
        let langs: Value = agent
            .get("/code/languages")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let python = langs
            .as_array()?
            .iter()
            .find(|l| l["language"] == "python")?
            .clone();
        (python["warm"].as_u64()? >= 1).then_some(python["warm"].as_u64()?)
    })
    .await;
    assert_eq!(warm, 1);
    let a = create(&agent, "python").await;
    let b = create(&agent, "python").await;
    run(&agent, &a, "only_in_a = 1").await;
    let events = run(&agent, &b, "'only_in_a' in dir()").await;
    assert_eq!(results(&events)[0]["text"], "False");
}

/// A cell right after a failed one runs (ipykernel aborts it when asked to stop on errors).
#[tokio::test]
async fn jupyter_runs_the_cell_after_an_error() {
    let agent = agent(true, 0);
    let id = create(&agent, "python").await;
    for n in 0..15 {
        let failed = run(&agent, &id, "print('before')\n1/0").await;
        assert!(kinds(&failed).contains(&"error"), "{:?}", kinds(&failed));
        let next = run(&agent, &id, &format!("print({n} * 2)")).await;
        assert_eq!(
            stdout(&next),
            format!("{}\n", n * 2),
            "round {n}: {:?}",
            kinds(&next)
        );
        assert!(!kinds(&next).contains(&"error"), "round {n}: {:?}", kinds(&next));
    }
}

/// The issue-19 cell: ten seconds of printing unless it is interrupted.
const TEN_SECONDS: &str = "import time\nfor i in range(50):\n    print(i)\n    time.sleep(0.2)\n";

/// How long an interrupted or dead cell's stream may take to end. Far below the ten seconds
/// the cell runs when an interrupt is lost, so a lost interrupt fails here too.
const END_BOUND: Duration = Duration::from_secs(8);

/// A `/code` response read event by event, every read under a deadline.
struct LiveStream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    pending: String,
    events: Vec<Event>,
    ended: bool,
}

impl LiveStream {
    async fn start(agent: &Agent, id: &str, code: &str) -> Self {
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            agent
                .post("/code")
                .json(&json!({"context": {"id": id}, "code": code}))
                .send(),
        )
        .await
        .expect("POST /code answered in time")
        .unwrap();
        assert_eq!(resp.status(), 200);
        LiveStream {
            body: Box::pin(resp.bytes_stream()),
            pending: String::new(),
            events: Vec::new(),
            ended: false,
        }
    }

    /// Reads until an event satisfies `stop` (true) or the stream ends (false); panics with
    /// what arrived so far if `within` passes first.
    async fn read_until(&mut self, within: Duration, what: &str, stop: impl Fn(&Event) -> bool) -> bool {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + within;
        let mut checked = 0;
        loop {
            if self.events[checked..].iter().any(&stop) {
                return true;
            }
            checked = self.events.len();
            if self.ended {
                return false;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => panic!(
                    "no {what} within {within:?}; events so far: {:?}",
                    kinds(&self.events)
                ),
                Ok(None) => self.ended = true,
                Ok(Some(chunk)) => {
                    self.pending
                        .push_str(&String::from_utf8_lossy(&chunk.expect("read body")));
                    while let Some(at) = self.pending.find("\n\n") {
                        let block: String = self.pending.drain(..at + 2).collect();
                        self.events.extend(crate::util::parse_sse(&block));
                    }
                }
            }
        }
    }

    /// Reads to the end of the stream.
    async fn finish(mut self, within: Duration) -> Vec<Event> {
        self.read_until(within, "end of stream", |_| false).await;
        self.events
    }
}

/// Starts the ten-second cell, interrupts it `delay` after `init` arrives and returns its
/// events; the stream must end within [`END_BOUND`] of the interrupt.
async fn interrupt_after_init(agent: &Agent, id: &str, delay: Duration) -> Vec<Event> {
    let mut stream = LiveStream::start(agent, id, TEN_SECONDS).await;
    assert!(
        stream
            .read_until(Duration::from_secs(30), "init", |e| e.kind() == "init")
            .await,
        "the stream starts with init"
    );
    // Not a wait for a condition: this delay is the race under test (the interrupt lands at
    // every stage of the cell's start-up).
    tokio::time::sleep(delay).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        agent.delete(&format!("/code?id={id}")).send(),
    )
    .await
    .expect("DELETE /code answered in time")
    .unwrap();
    assert_eq!(resp.status(), 200);
    stream.finish(END_BOUND).await
}

/// Interrupts at 0, 1, … 50 ms after `init`, `rounds` times each, spread over `contexts`
/// contexts that run concurrently; every stream must end, interrupted, with `error`
/// (KeyboardInterrupt) and `execution_complete`, and every context must stay usable.
async fn interrupt_at_every_moment(agent: &Agent, contexts: usize, rounds: u64) {
    let mut ids = Vec::new();
    for _ in 0..contexts {
        ids.push(create(agent, "python").await);
    }
    let workers = ids.iter().enumerate().map(|(n, id)| async move {
        let delays = (0..rounds).flat_map(|_| 0..=50u64).skip(n).step_by(contexts);
        for delay in delays {
            let events = interrupt_after_init(agent, id, Duration::from_millis(delay)).await;
            // Output may trail the error (the kernel's stderr travels apart from its error
            // message); what ends the stream must be the interrupt's error, then complete.
            let ends: Vec<&Event> = events
                .iter()
                .filter(|e| !matches!(e.kind(), "stdout" | "stderr"))
                .collect();
            let tail: Vec<&str> = ends.iter().rev().take(2).rev().map(|e| e.kind()).collect();
            assert_eq!(
                tail,
                ["error", "execution_complete"],
                "interrupt {delay} ms after init: {:?}, ending {}, stderr {:?}",
                kinds(&events),
                events.last().map(|e| &e.data).unwrap_or(&Value::Null),
                texts(&events, "stderr")
            );
            let error = &ends[ends.len() - 2].data["error"];
            assert_eq!(
                error["ename"], "KeyboardInterrupt",
                "interrupt {delay} ms after init: {error}"
            );
        }
        // No interrupt is left over to hit the next cell.
        let events = tokio::time::timeout(END_BOUND, run(agent, id, "print('after')")).await;
        let events = events.expect("a cell after the interrupts ends in time");
        assert_eq!(stdout(&events), "after\n", "{:?}", kinds(&events));
        assert_eq!(last(&events), "execution_complete");
    });
    futures_util::future::join_all(workers).await;
}

#[tokio::test]
async fn issue19_jupyter_interrupt_at_any_moment_after_init() {
    interrupt_at_every_moment(&agent(true, 0), 3, 2).await;
}

#[tokio::test]
async fn issue19_builtin_interrupt_at_any_moment_after_init() {
    interrupt_at_every_moment(&agent(false, 0), 3, 2).await;
}

/// Kills the interpreter of a context in the middle of the ten-second cell: the stream must
/// end with a `KernelDied` error instead of waiting for a reply that never comes. The next
/// run restarts the interpreter; an interrupt sent right after its `init` (while the Jupyter
/// kernel is still starting) must end it too, and the run after that must work.
async fn kill_interpreter_mid_cell(agent: &Agent, needle: &str) {
    let id = create(agent, "python").await;
    let mut stream = LiveStream::start(agent, &id, TEN_SECONDS).await;
    assert!(
        stream
            .read_until(Duration::from_secs(30), "output", |e| e.kind() == "stdout")
            .await,
        "the cell runs"
    );
    let pids = crate::util::descendants_matching(agent.pid(), needle);
    assert_eq!(pids.len(), 1, "one interpreter ({needle}) under execd: {pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let events = stream.finish(END_BOUND).await;
    assert_eq!(last(&events), "error", "{:?}", kinds(&events));
    assert_eq!(events.last().unwrap().data["error"]["ename"], "KernelDied");
    let events = interrupt_after_init(agent, &id, Duration::ZERO).await;
    let tail: Vec<&str> = kinds(&events).into_iter().rev().take(2).rev().collect();
    assert_eq!(tail, ["error", "execution_complete"], "{:?}", kinds(&events));
    assert_eq!(
        events[events.len() - 2].data["error"]["ename"],
        "KeyboardInterrupt"
    );
    let events = tokio::time::timeout(Duration::from_secs(60), run(agent, &id, "print('again')"))
        .await
        .expect("the next cell ends in time");
    assert!(stdout(&events).contains("again"), "{:?}", kinds(&events));
    assert_eq!(last(&events), "execution_complete");
}

#[tokio::test]
async fn issue19_jupyter_killed_kernel_ends_the_stream() {
    kill_interpreter_mid_cell(&agent(true, 0), "ipykernel_launcher").await;
}

#[tokio::test]
async fn issue19_builtin_killed_driver_ends_the_stream() {
    kill_interpreter_mid_cell(&agent(false, 0), "driver.py").await;
}

/// An exception whose traceback IPython fails to format is published as plain stderr text
/// with no iopub `error`; the execute_reply still names it, and so must the stream. (An
/// interrupt landing in user code occasionally takes this path.)
#[tokio::test]
async fn issue19_jupyter_error_named_only_in_the_reply() {
    let agent = agent(true, 0);
    let id = create(&agent, "python").await;
    let events = run(
        &agent,
        &id,
        "class Boom(Exception):\n    def _render_traceback_(self):\n        raise RuntimeError('cannot render')\nraise Boom('x')",
    )
    .await;
    let tail: Vec<&str> = kinds(&events).into_iter().rev().take(2).rev().collect();
    assert_eq!(tail, ["error", "execution_complete"], "{:?}", kinds(&events));
    let error = &events[events.len() - 2].data["error"];
    assert_eq!(error["ename"], "Boom", "{error}");
    assert_eq!(error["evalue"], "x", "{error}");
}

/// IPython runs `pre_run_cell` callbacks under `except KeyboardInterrupt`, reports the
/// interrupt as an `error` and then runs the cell anyway: an interrupt that lands there must
/// be sent again, or the cell runs to its end.
#[tokio::test]
async fn issue19_jupyter_interrupt_swallowed_by_a_callback() {
    let agent = agent(true, 0);
    let id = create(&agent, "python").await;
    run(
        &agent,
        &id,
        "import time\nget_ipython().events.register('pre_run_cell', lambda info: time.sleep(0.5))",
    )
    .await;
    // The interrupt goes out when the kernel publishes execute_input, just before the
    // callback's half-second sleep.
    let events = interrupt_after_init(&agent, &id, Duration::ZERO).await;
    let tail: Vec<&str> = kinds(&events).into_iter().rev().take(2).rev().collect();
    assert_eq!(tail, ["error", "execution_complete"], "{:?}", kinds(&events));
    assert_eq!(
        events[events.len() - 2].data["error"]["ename"],
        "KeyboardInterrupt"
    );
}
