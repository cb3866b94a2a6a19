//! Isolated sessions on the host: escape attempts from inside a session (each must fail), the
//! functional contract (overlay, persist, ro, background runs, idle GC, separation), and the
//! contract's bad-input table. The same checks run inside Docker in `isolated_docker.rs`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{collect_sse, eventually, marker, Agent, Event, Opts};

/// GETs `path` and parses the JSON answer.
async fn get_json(agent: &Agent, path: &str) -> Value {
    agent.get(path).send().await.unwrap().json().await.unwrap()
}

/// The `path` of every entry of a list answer.
fn paths(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect()
}

/// The Python interpreter used to make raw syscalls from inside a session.
const PY: &str = "/usr/bin/python3";

pub async fn create(agent: &Agent, body: Value) -> String {
    let resp = agent
        .post("/v1/isolated/session")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "create {body}: {v}");
    let id = v["session_id"].as_str().unwrap().to_owned();
    assert!(uuid_like(&id), "{id}");
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
    id
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|&c| c == '-').count() == 4
}

/// Runs `code` in the foreground; returns (combined output, events).
pub async fn run(agent: &Agent, sid: &str, code: &str) -> (String, Vec<Event>) {
    run_body(agent, sid, json!({ "code": code })).await
}

pub async fn run_body(agent: &Agent, sid: &str, body: Value) -> (String, Vec<Event>) {
    let resp = agent
        .post(&format!("/v1/isolated/session/{sid}/run"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "run {body}");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = collect_sse(resp).await;
    let out: String = events
        .iter()
        .filter(|e| e.kind() == "stdout" || e.kind() == "stderr")
        .map(|e| format!("{}\n", e.text().trim_end_matches('\n')))
        .collect();
    (out, events)
}

/// The exit code the SDK would infer: `error.evalue`, or 0 after `execution_complete`.
pub fn exit_code(events: &[Event]) -> i64 {
    let last = events.last().expect("events");
    match last.kind() {
        "execution_complete" => 0,
        "error" => last.data["error"]["evalue"].as_str().unwrap().parse().unwrap(),
        other => panic!("stream ended with {other}"),
    }
}

pub async fn delete(agent: &Agent, sid: &str) {
    let resp = agent
        .delete(&format!("/v1/isolated/session/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

pub async fn capabilities(agent: &Agent) -> Value {
    get_json(agent, "/v1/isolated/capabilities").await
}

fn workspace() -> tempfile::TempDir {
    // Not under the agent's state dir (masked in the jail), and on a real filesystem.
    tempfile::Builder::new()
        .prefix("iso-ws-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn ws_body(ws: &tempfile::TempDir) -> Value {
    json!({ "workspace": { "path": ws.path().to_str().unwrap() } })
}

/// Python that makes each raw syscall and prints `name errno` (0 when it succeeded).
fn syscalls_script() -> String {
    let calls = [
        ("mount", "165, b'none', b'/tmp', b'tmpfs', 0, 0"),
        ("unshare", "272, 0x10000000"),
        ("ptrace", "101, 16, 1, 0, 0"),
        ("bpf", "321, 0, 0, 0"),
        ("keyctl", "250, 0, 0, 0, 0"),
        ("setns", "308, 0, 0"),
        ("clone_newuser", "56, 0x10000000 | 17, 0, 0, 0, 0"),
        ("chroot", "161, b'/tmp'"),
        ("io_uring_setup", "425, 1, 0"),
    ];
    let mut py = String::from("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n");
    for (name, args) in calls {
        py.push_str(&format!(
            "r = libc.syscall({args})\nprint('{name}', ctypes.get_errno() if r == -1 else 0, flush=True)\nif r == 0 and '{name}' == 'clone_newuser': os._exit(0)\n"
        ));
    }
    py
}

#[tokio::test]
async fn capabilities_report_every_layer_truthfully() {
    let agent = Agent::start();
    let caps = capabilities(&agent).await;
    for key in [
        "available",
        "userns_available",
        "setpriv_available",
        "commit_supported",
        "diff_supported",
    ] {
        assert!(caps[key].is_boolean(), "{key}: {caps}");
    }
    assert_eq!(caps["isolator"], "execd");
    let h = &caps["hardening"];
    for layer in [
        "cap_drop",
        "seccomp",
        "landlock",
        "ebpf",
        "namespaces",
        "cgroups",
        "no_new_privs",
    ] {
        let state = h[layer]["state"]
            .as_str()
            .unwrap_or_else(|| panic!("{layer}: {caps}"));
        assert!(["active", "disabled", "degraded", "unsupported"].contains(&state));
        assert!(h[layer]["message"].is_string());
    }
    assert_eq!(h["init_mode"], "none");
    // On this host (root, namespaces allowed) the full jail is available.
    assert_eq!(caps["available"], true, "{caps}");
    assert_eq!(h["namespaces"]["state"], "active", "{caps}");
    assert_eq!(h["seccomp"]["state"], "active");
}

#[tokio::test]
async fn escape_network_share_net_false_cannot_reach_host_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let agent = Agent::start();
    let ws = workspace();
    let probe = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED || echo REFUSED; ip -o link 2>/dev/null | wc -l"
    );
    let isolated = create(
        &agent,
        json!({ "workspace": { "path": ws.path() }, "share_net": false }),
    )
    .await;
    let (out, _) = run(&agent, &isolated, &probe).await;
    assert!(out.contains("REFUSED") && !out.contains("CONNECTED"), "{out}");
    assert!(listener.accept().is_err(), "the host listener saw a connection");
    // Control: with share_net the same probe connects, so the test can tell the difference.
    let shared = create(
        &agent,
        json!({ "workspace": { "path": ws.path() }, "share_net": true }),
    )
    .await;
    let (out, _) = run(&agent, &shared, &probe).await;
    assert!(out.contains("CONNECTED"), "{out}");
}

#[tokio::test]
async fn escape_writes_outside_the_mounts_fail_and_overlay_writes_stay_in_the_upper() {
    let agent = Agent::start();
    let ws = workspace();
    let m = marker();
    let sid = create(&agent, ws_body(&ws)).await;
    let code = format!(
        "echo x > /etc/escape-{m} ; echo x > /root/escape-{m} ; echo x > /var/tmp/escape-{m} ; \
         echo inside > {ws}/f-{m} && echo WROTE; cat {ws}/f-{m}",
        ws = ws.path().display()
    );
    let (out, _) = run(&agent, &sid, &code).await;
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("WROTE\ninside"), "{out}");
    for p in [
        format!("/etc/escape-{m}"),
        format!("/root/escape-{m}"),
        format!("/var/tmp/escape-{m}"),
    ] {
        assert!(!std::path::Path::new(&p).exists(), "{p} escaped");
    }
    assert!(
        !ws.path().join(format!("f-{m}")).exists(),
        "overlay write reached the lower dir"
    );
    // The agent's state dir (uppers of every session, logs) is hidden.
    let (out, _) = run(
        &agent,
        &sid,
        &format!("ls -A {} 2>/dev/null | wc -l", agent.state_dir.path().display()),
    )
    .await;
    assert_eq!(out.trim(), "0", "state dir visible: {out}");
}

#[tokio::test]
async fn escape_secrets_never_reach_the_session() {
    let agent = Agent::start_with(Opts {
        token: Some("tok-sekrit-4242".into()),
        env: vec![
            ("MY_API_KEY".into(), "key-sekrit-4242".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "aws-sekrit-4242".into()),
            ("EXECD_ISOLATED_PIDS".into(), "256".into()),
            ("PLAIN_VALUE".into(), "visible".into()),
        ],
        ..Opts::default()
    });
    let ws = workspace();
    let sid = create(&agent, ws_body(&ws)).await;
    let (out, _) = run(
        &agent,
        &sid,
        "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '",
    )
    .await;
    assert!(!out.contains("sekrit"), "a secret leaked: {out}");
    assert!(!out.contains("EXECD_"), "execd's own config leaked: {out}");
    assert!(out.contains("PLAIN_VALUE=visible"), "{out}");
    // An explicit deny list strips exactly its keys.
    let sid = create(
        &agent,
        json!({ "workspace": { "path": ws.path() }, "profile": "balanced",
                "env_passthrough": { "mode": "deny", "keys": ["PLAIN_VALUE"] } }),
    )
    .await;
    let (out, _) = run(&agent, &sid, "env").await;
    assert!(
        !out.contains("PLAIN_VALUE") && out.contains("MY_API_KEY"),
        "{out}"
    );
    assert!(!out.contains("tok-sekrit"), "{out}");
}

#[tokio::test]
async fn escape_execd_and_host_processes_are_invisible_and_unsignalable() {
    let agent = Agent::start();
    let ws = workspace();
    let sid = create(&agent, ws_body(&ws)).await;
    let me = std::process::id();
    let pid = agent.pid();
    let code = format!(
        "ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo; kill -0 {pid} && echo SIGNALLED; kill -9 {me} && echo KILLED; \
         kill -9 1 && echo KILLED_INIT; echo done"
    );
    let (out, _) = run(&agent, &sid, &code).await;
    let pids: Vec<u32> = out
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.len() < 10, "the session sees many processes: {pids:?}");
    assert!(pids.contains(&1));
    assert!(!out.contains("SIGNALLED") && !out.contains("KILLED"), "{out}");
    assert!(out.contains("done"));
    // execd still answers, the test process is alive, the session still works.
    assert_eq!(agent.get("/ping").send().await.unwrap().status(), 200);
    let (out, _) = run(&agent, &sid, "echo alive").await;
    assert_eq!(out.trim(), "alive");
}

#[tokio::test]
async fn escape_dangerous_syscalls_are_refused() {
    let agent = Agent::start();
    let ws = workspace();
    let sid = create(&agent, ws_body(&ws)).await;
    let script = ws.path().join("sys.py");
    std::fs::write(&script, syscalls_script()).unwrap();
    let (out, _) = run(&agent, &sid, &format!("{PY} {}", script.display())).await;
    for name in [
        "mount",
        "unshare",
        "ptrace",
        "bpf",
        "keyctl",
        "setns",
        "clone_newuser",
        "chroot",
        "io_uring_setup",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {out}"));
        let errno: i32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_ne!(errno, 0, "{name} succeeded: {out}");
    }
    // The tools fail too.
    let (out, _) = run(&agent, &sid, "unshare -U true && echo UNSHARED; mount -t tmpfs x /mnt && echo MOUNTED; strace -f true >/dev/null 2>&1 && echo TRACED; echo end").await;
    assert!(
        !out.contains("UNSHARED") && !out.contains("MOUNTED") && !out.contains("TRACED"),
        "{out}"
    );
}

#[tokio::test]
async fn escape_setuid_binary_does_not_regain_privileges() {
    let agent = Agent::start();
    let ws = workspace();
    // A setuid-root copy of `id`, readable by the session's user.
    let suid = ws.path().join("suid-id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sid = create(
        &agent,
        json!({ "workspace": { "path": ws.path(), "mode": "rw" }, "uid": 1000, "gid": 1000 }),
    )
    .await;
    let (out, _) = run(
        &agent,
        &sid,
        &format!(
            "{} -u; {} -u; grep -E 'CapEff|CapBnd' /proc/self/status",
            suid.display(),
            "/usr/bin/id"
        ),
    )
    .await;
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1000"), "{out}");
    assert_eq!(lines.next(), Some("1000"), "{out}");
    assert!(
        out.contains("CapEff:\t0000000000000000") && out.contains("CapBnd:\t0000000000000000"),
        "{out}"
    );
}

/// Pings execd until `busy` has finished (at least once), each ping bounded by a deadline: the
/// test asks that execd keeps answering, `scripts/bench.sh` how fast.
async fn pings_answer_while(agent: &Agent, busy: impl Fn() -> bool) {
    loop {
        let resp = tokio::time::timeout(Duration::from_secs(5), agent.get("/ping").send())
            .await
            .expect("execd answers a ping within 5 s")
            .unwrap();
        assert_eq!(resp.status(), 200);
        if !busy() {
            return;
        }
        // Pace the pings over the busy time.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn escape_fork_bomb_and_memory_hog_are_contained_while_execd_answers() {
    let agent = Agent::start_with(Opts {
        env: vec![
            ("EXECD_ISOLATED_PIDS".into(), "64".into()),
            ("EXECD_ISOLATED_MEMORY_MB".into(), "64".into()),
            // Half a CPU: the spinning bomb must leave execd a core on a 2-core machine.
            ("EXECD_ISOLATED_CPU_MILLIS".into(), "500".into()),
        ],
        ..Opts::default()
    });
    let caps = capabilities(&agent).await;
    assert_eq!(caps["hardening"]["cgroups"]["state"], "active", "{caps}");
    let ws = workspace();
    let sid = create(&agent, ws_body(&ws)).await;
    let bomb = {
        let agent_url = agent.base.clone();
        let body =
            json!({ "code": "bomb() { bomb | bomb & }; bomb; sleep 3; echo survived", "timeout_seconds": 4 });
        let path = format!("/v1/isolated/session/{sid}/run");
        let client = agent.client.clone();
        tokio::spawn(async move {
            let resp = client
                .post(format!("{agent_url}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            collect_sse(resp).await
        })
    };
    // The bomb's shells carry its code as their command line.
    eventually(10, "the fork bomb to spread", async || {
        (crate::util::pids_matching("bomb | bomb").len() >= 16).then_some(())
    })
    .await;
    pings_answer_while(&agent, || !bomb.is_finished()).await;
    let events = bomb.await.unwrap();
    assert!(!events.is_empty());
    // The bomb hit pids.max: the host still forks freely (this test could spawn the agent).
    delete(&agent, &sid).await;

    let sid = create(&agent, ws_body(&ws)).await;
    let (out, events) = run(
        &agent,
        &sid,
        &format!("{PY} -c \"b = bytearray(256 << 20); print('ALLOCATED')\""),
    )
    .await;
    assert!(
        !out.contains("ALLOCATED"),
        "256 MiB allocated under a 64 MiB limit: {out}"
    );
    assert_ne!(exit_code(&events), 0);
    pings_answer_while(&agent, || false).await;
    let (out, _) = run(&agent, &sid, "echo still-here").await;
    assert_eq!(out.trim(), "still-here");
}

#[tokio::test]
async fn foreground_run_streams_like_command_and_reports_exit_codes() {
    let agent = Agent::start();
    let ws = workspace();
    let sid = create(&agent, ws_body(&ws)).await;
    let (out, events) = run_body(
        &agent,
        &sid,
        json!({ "code": "echo $A; echo err >&2; exit 3", "envs": { "A": "from-envs" } }),
    )
    .await;
    assert_eq!(events[0].kind(), "init");
    assert!(uuid_like(events[0].text()));
    assert_eq!(out, "from-envs\nerr\n");
    assert_eq!(exit_code(&events), 3);
    let (_, events) = run(&agent, &sid, "true").await;
    assert_eq!(exit_code(&events), 0);
    // The working directory is the first mount.
    let (out, _) = run(&agent, &sid, "pwd").await;
    assert_eq!(out.trim(), ws.path().to_str().unwrap());
}

#[tokio::test]
async fn timeout_interrupts_the_session_with_sigint() {
    let agent = Agent::start();
    let ws = workspace();
    let sid = create(&agent, ws_body(&ws)).await;
    // Without the timeout the run would take 30 s; the bound only keeps a failure short.
    let (_, events) = tokio::time::timeout(
        Duration::from_secs(20),
        run_body(
            &agent,
            &sid,
            json!({ "code": "trap 'echo got-sigint; exit 130' INT; sleep 30 & wait", "timeout_seconds": 1 }),
        ),
    )
    .await
    .expect("the timeout ends the run");
    assert_eq!(exit_code(&events), 130, "{events:?}");
    assert!(
        events.iter().any(|e| e.text().contains("got-sigint")),
        "{events:?}"
    );
}

#[tokio::test]
async fn background_run_logs_are_polled_to_completion_with_a_byte_cursor() {
    let agent = Agent::start();
    let ws = workspace();
    let sid = create(&agent, ws_body(&ws)).await;
    let resp = agent
        .post(&format!("/v1/isolated/session/{sid}/run"))
        .json(&json!({ "code": "for i in 1 2 3; do echo line-$i; sleep 0.2; done; exit 4", "background": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["session_id"], sid.as_str());
    let rid = v["run_id"].as_str().unwrap().to_owned();
    assert!(uuid_like(&rid) && v["started_at"].is_string());
    let status_path = format!("/v1/isolated/session/{sid}/runs/{rid}");
    let mut cursor = 0u64;
    let mut log = String::new();
    let status = eventually(10, "background run finished", async || {
        let q = if cursor == 0 {
            String::new()
        } else {
            format!("?cursor={cursor}")
        };
        let resp = agent.get(&format!("{status_path}/logs{q}")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let next: u64 = resp.headers()["execd-isolated-tail-cursor"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = resp.text().await.unwrap();
        assert_eq!(next, cursor + body.len() as u64);
        cursor = next;
        log.push_str(&body);
        let st: Value = get_json(&agent, &status_path).await;
        (st["running"] == false).then_some(st)
    })
    .await;
    // Drain what arrived between the last poll and the exit.
    let rest = agent
        .get(&format!("{status_path}/logs?cursor={cursor}"))
        .send()
        .await
        .unwrap();
    log.push_str(&rest.text().await.unwrap());
    assert_eq!(log, "line-1\nline-2\nline-3\n");
    assert_eq!(status["exit_code"], 4);
    assert!(status["finished_at"].is_string());
    // A cursor past the end is clamped; a bad one is a 400.
    let resp = agent
        .get(&format!("{status_path}/logs?cursor=999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["execd-isolated-tail-cursor"], "21");
    let resp = agent
        .get(&format!("{status_path}/logs?cursor=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn persist_false_discards_writes_and_ro_rejects_them() {
    let agent = Agent::start();
    let ws = workspace();
    let ro = workspace();
    std::fs::write(ro.path().join("keep"), "lower").unwrap();
    let sid = create(
        &agent,
        json!({ "overlays": [
            { "path": ws.path(), "mode": "overlay", "persist": false },
            { "path": ro.path(), "mode": "ro" } ] }),
    )
    .await;
    let (out, _) = run(
        &agent,
        &sid,
        &format!(
            "echo tmp > {ws}/t && cat {ws}/t; echo no > {ro}/keep || echo RO-REFUSED; cat {ro}/keep",
            ws = ws.path().display(),
            ro = ro.path().display()
        ),
    )
    .await;
    assert!(
        out.starts_with("tmp\n") && out.ends_with("RO-REFUSED\nlower\n"),
        "{out}"
    );
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!ws.path().join("t").exists());
    let state = agent.state_dir.path().join("isolated").join(&sid);
    delete(&agent, &sid).await;
    assert!(!state.exists(), "session directory left behind");
    assert_eq!(std::fs::read_to_string(ro.path().join("keep")).unwrap(), "lower");
}

#[tokio::test]
async fn two_sessions_see_neither_files_nor_processes_of_each_other() {
    let agent = Agent::start();
    let ws = workspace();
    let m = marker();
    let a = create(&agent, ws_body(&ws)).await;
    let b = create(&agent, ws_body(&ws)).await;
    run(
        &agent,
        &a,
        &format!("echo a > {}/only-a; (sleep 77{m} &) ; true", ws.path().display()),
    )
    .await;
    let (out, _) = run(
        &agent,
        &b,
        &format!("ls {}; pgrep -fc '^sleep 77{m}'", ws.path().display()),
    )
    .await;
    assert!(!out.contains("only-a"), "{out}");
    assert_eq!(out.lines().last(), Some("0"), "b sees a's process: {out}");
    let (out, _) = run(&agent, &a, &format!("cat {}/only-a", ws.path().display())).await;
    assert_eq!(out.trim(), "a");
    // Deleting a session kills its processes.
    assert!(!crate::util::pids_matching(&format!("sleep 77{m}")).is_empty());
    delete(&agent, &a).await;
    eventually(5, "a's sleeper gone", async || {
        crate::util::pids_matching(&format!("sleep 77{m}"))
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn sessions_are_listed_echoed_and_collected_when_idle() {
    let agent = Agent::start_with(Opts {
        env: vec![("EXECD_ISOLATED_GC_INTERVAL_MS".into(), "100".into())],
        ..Opts::default()
    });
    let ws = workspace();
    let list: Value = get_json(&agent, "/v1/isolated/sessions").await;
    assert_eq!(list, json!({ "sessions": [] }));
    let keep = create(
        &agent,
        json!({ "workspace": { "path": ws.path() }, "idle_timeout_seconds": 0, "uid_mode": "userns" }),
    )
    .await;
    let idle = create(
        &agent,
        json!({ "workspace": { "path": ws.path() }, "idle_timeout_seconds": 1 }),
    )
    .await;
    let st: Value = get_json(&agent, &format!("/v1/isolated/session/{keep}")).await;
    assert_eq!(st["status"], "active");
    assert_eq!(st["idle_timeout_seconds"], 0);
    assert_eq!(st["idle_remaining_seconds"], Value::Null);
    assert_eq!(st["uid_mode"], "userns");
    assert_eq!(st["profile"], "strict");
    assert_eq!(st["workspace"]["path"], ws.path().to_str().unwrap());
    assert_eq!(
        st["overlays"],
        json!([{ "path": ws.path(), "mode": "overlay", "persist": true }])
    );
    assert_eq!(st["last_run_at"], st["created_at"]);
    let list: Value = get_json(&agent, "/v1/isolated/sessions").await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    eventually(5, "idle session collected", async || {
        let r = agent
            .get(&format!("/v1/isolated/session/{idle}"))
            .send()
            .await
            .unwrap();
        (r.status() == 404).then_some(())
    })
    .await;
    let r = agent
        .get(&format!("/v1/isolated/session/{keep}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (out, _) = run(&agent, &keep, "id -u").await;
    assert_eq!(out.trim(), "0");
}

#[tokio::test]
async fn bad_input_gets_the_contracts_status_and_body() {
    let agent = Agent::start();
    let ws = workspace();
    let p = ws.path().to_str().unwrap();
    let many: Vec<Value> = (0..17).map(|i| json!({ "path": format!("{p}/m{i}") })).collect();
    let cases = [
        json!({}),
        json!({ "overlays": many }),
        json!({ "workspace": { "path": "relative" } }),
        json!({ "workspace": { "path": format!("{p}/") } }),
        json!({ "workspace": { "path": format!("{p}/../x") } }),
        json!({ "workspace": { "path": format!("{p}/./x") } }),
        json!({ "overlays": [{ "path": p }, { "path": p }] }),
        json!({ "overlays": [{ "path": p, "mode": "rw", "persist": true }] }),
        json!({ "workspace": { "path": p }, "extra_writable": ["/tmp"] }),
        json!({ "workspace": { "path": p }, "binds": [{ "source": "/etc" }] }),
        json!({ "workspace": { "path": p }, "idle_timeout_seconds": -1 }),
        json!({ "workspace": { "path": p }, "profile": "lenient" }),
        json!({ "workspace": { "path": p }, "uid_mode": "magic" }),
    ];
    for body in cases {
        let resp = agent
            .post("/v1/isolated/session")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["code"], "INVALID_REQUEST_BODY", "{body}: {v}");
        assert!(v["message"].is_string());
    }
    let resp = agent
        .post("/v1/isolated/session")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let unknown = "00000000-0000-0000-0000-000000000001";
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/isolated/session/{unknown}")),
        (reqwest::Method::DELETE, format!("/v1/isolated/session/{unknown}")),
        (
            reqwest::Method::GET,
            format!("/v1/isolated/session/{unknown}/runs/{unknown}"),
        ),
    ] {
        let resp = agent.req(method.clone(), &path).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{method} {path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["code"], "SESSION_NOT_FOUND");
    }
    let resp = agent
        .post(&format!("/v1/isolated/session/{unknown}/run"))
        .json(&json!({ "code": "true" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let sid = create(&agent, json!({ "overlays": [{ "path": p, "mode": "ro" }] })).await;
    for body in [
        json!({ "code": "   " }),
        json!({}),
        json!({ "code": "true", "timeout_seconds": -5 }),
        json!({ "code": "true", "background": true }),
        json!({ "code": "true", "envs": { "A=B": "x" } }),
    ] {
        let resp = agent
            .post(&format!("/v1/isolated/session/{sid}/run"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
    }
    let resp = agent
        .get(&format!("/v1/isolated/session/{sid}/runs/{unknown}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // Nothing broke: the session still runs code.
    let (out, _) = run(&agent, &sid, "echo ok").await;
    assert_eq!(out.trim(), "ok");
}

/// Entries of a diff: (path, kind) where kind is `f` file, `d` dir, `w` whiteout.
async fn diff_entries(agent: &Agent, sid: &str) -> Vec<(String, char)> {
    let resp = agent
        .get(&format!("/v1/isolated/session/{sid}/diff"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/gzip");
    let bytes = resp.bytes().await.unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        let kind = match h.entry_type() {
            tar::EntryType::Char
                if h.device_major().unwrap() == Some(0) && h.device_minor().unwrap() == Some(0) =>
            {
                'w'
            }
            tar::EntryType::Directory => 'd',
            _ => 'f',
        };
        out.push((
            entry
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned(),
            kind,
        ));
    }
    out.sort();
    out
}

async fn upload(agent: &Agent, sid: &str, path: &str, content: &str) -> reqwest::StatusCode {
    use crate::files::Part;
    let parts = [
        Part::Metadata {
            json: json!({ "path": path, "owner": null, "group": null, "mode": 644 }).to_string(),
            filename: true,
        },
        Part::File {
            name: path,
            content: content.as_bytes(),
        },
    ];
    crate::files::upload(agent, &format!("/v1/isolated/session/{sid}"), &parts)
        .await
        .status()
}

#[tokio::test]
async fn overlay_changes_are_invisible_below_until_commit_and_diff_lists_exactly_them() {
    let agent = Agent::start();
    let ws = workspace();
    let w = ws.path().to_str().unwrap().to_owned();
    std::fs::write(ws.path().join("keep"), "k").unwrap();
    std::fs::write(ws.path().join("edit"), "old").unwrap();
    std::fs::write(ws.path().join("gone"), "g").unwrap();
    std::fs::create_dir(ws.path().join("sub")).unwrap();
    std::fs::write(ws.path().join("sub/inner"), "i").unwrap();
    let sid = create(&agent, ws_body(&ws)).await;
    // Changes from inside a run, and through the files API.
    let (out, events) = run(
        &agent,
        &sid,
        "echo new > edit; rm gone; mkdir made; echo n > made/file; echo made",
    )
    .await;
    assert_eq!(exit_code(&events), 0, "{out}");
    assert_eq!(
        upload(&agent, &sid, &format!("{w}/sub/uploaded"), "up").await,
        200
    );
    let resp = agent
        .delete(&format!("/v1/isolated/session/{sid}/files?path={w}/keep"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The session sees the merged view, both in runs and through the API.
    let (out, _) = run(&agent, &sid, "ls; cat edit sub/uploaded").await;
    assert_eq!(out, "edit\nmade\nsub\nnew\nup\n");
    let list: Value = get_json(
        &agent,
        &format!("/v1/isolated/session/{sid}/directories/list?path={w}&depth=2"),
    )
    .await;
    let names: Vec<&str> = paths(&list);
    let expect: Vec<String> = ["edit", "made", "made/file", "sub", "sub/inner", "sub/uploaded"]
        .iter()
        .map(|n| format!("{w}/{n}"))
        .collect();
    assert_eq!(names, expect);
    let info: Value = get_json(
        &agent,
        &format!("/v1/isolated/session/{sid}/files/info?path={w}/edit"),
    )
    .await;
    assert_eq!(info[format!("{w}/edit")]["size"], 4);
    let resp = agent
        .get(&format!("/v1/isolated/session/{sid}/files/info?path={w}/gone"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body = agent
        .get(&format!(
            "/v1/isolated/session/{sid}/files/download?path={w}/sub/uploaded"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "up");
    // The lower is untouched.
    assert_eq!(std::fs::read_to_string(ws.path().join("edit")).unwrap(), "old");
    assert!(ws.path().join("gone").exists() && ws.path().join("keep").exists());
    assert!(!ws.path().join("made").exists() && !ws.path().join("sub/uploaded").exists());
    // The diff is exactly the changes.
    let rel = |n: &str| format!("{}/{n}", w.trim_start_matches('/'));
    let entries = diff_entries(&agent, &sid).await;
    let expect: Vec<(String, char)> = vec![
        (rel("edit"), 'f'),
        (rel("gone"), 'w'),
        (rel("keep"), 'w'),
        (rel("made"), 'd'),
        (rel("made/file"), 'f'),
        (rel("sub"), 'd'),
        (rel("sub/uploaded"), 'f'),
    ];
    assert_eq!(entries, expect);
    // Commit applies them to the lower; the session's view does not change.
    let resp = agent
        .post(&format!("/v1/isolated/session/{sid}/commit"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(std::fs::read_to_string(ws.path().join("edit")).unwrap(), "new\n");
    assert!(!ws.path().join("gone").exists() && !ws.path().join("keep").exists());
    assert_eq!(
        std::fs::read_to_string(ws.path().join("made/file")).unwrap(),
        "n\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("sub/uploaded")).unwrap(),
        "up"
    );
    assert_eq!(std::fs::read_to_string(ws.path().join("sub/inner")).unwrap(), "i");
    let leftovers: Vec<_> = std::fs::read_dir(ws.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".execd-commit"))
        .collect();
    assert!(leftovers.is_empty());
    let entries = diff_entries(&agent, &sid).await;
    assert!(entries.is_empty(), "{entries:?}");
    let (out, _) = run(&agent, &sid, "cat edit; ls").await;
    assert_eq!(out, "new\nedit\nmade\nsub\n");
}

#[tokio::test]
async fn files_api_refuses_writes_to_ro_and_ephemeral_mounts() {
    let agent = Agent::start();
    let ro = workspace();
    let tmp = workspace();
    std::fs::write(ro.path().join("f"), "lower").unwrap();
    let (r, t) = (ro.path().to_str().unwrap(), tmp.path().to_str().unwrap());
    let sid = create(
        &agent,
        json!({ "overlays": [{ "path": t, "persist": false }, { "path": r, "mode": "ro" }] }),
    )
    .await;
    assert_eq!(upload(&agent, &sid, &format!("{r}/new"), "x").await, 403);
    assert_eq!(upload(&agent, &sid, &format!("{t}/new"), "x").await, 403);
    let resp = agent
        .delete(&format!("/v1/isolated/session/{sid}/files?path={r}/f"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "PERMISSION_DENIED");
    let resp = agent
        .post(&format!("/v1/isolated/session/{sid}/directories"))
        .json(&json!({ format!("{r}/d"): { "mode": 755, "owner": null, "group": null } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = agent
        .post(&format!("/v1/isolated/session/{sid}/files/replace"))
        .json(&json!({ format!("{r}/f"): { "old": "lower", "new": "x" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Reads still work; paths outside the mounts or unclean are 400.
    let body = agent
        .get(&format!("/v1/isolated/session/{sid}/files/download?path={r}/f"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "lower");
    for bad in ["/etc/passwd", &format!("{r}/../x"), "relative"] {
        let resp = agent
            .get(&format!("/v1/isolated/session/{sid}/files/info?path={bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }
    let resp = agent
        .get(&format!("/v1/isolated/session/{sid}/files/info"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Nothing persisted: no diff, no commit.
    let resp = agent
        .get(&format!("/v1/isolated/session/{sid}/diff"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = agent
        .post(&format!("/v1/isolated/session/{sid}/commit"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(std::fs::read_to_string(ro.path().join("f")).unwrap(), "lower");
}

#[tokio::test]
async fn files_api_moves_replaces_and_searches_in_the_merged_view() {
    let agent = Agent::start();
    let ws = workspace();
    let w = ws.path().to_str().unwrap().to_owned();
    std::fs::write(ws.path().join("a.txt"), "hello world").unwrap();
    let sid = create(&agent, ws_body(&ws)).await;
    let resp = agent
        .post(&format!("/v1/isolated/session/{sid}/files/replace"))
        .json(&json!({ format!("{w}/a.txt"): { "old": "world", "new": "there" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v[format!("{w}/a.txt")]["replacedCount"], 1);
    let resp = agent
        .post(&format!("/v1/isolated/session/{sid}/files/mv"))
        .json(&json!([{ "src": format!("{w}/a.txt"), "dest": format!("{w}/b.txt") }]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let found: Value = get_json(
        &agent,
        &format!("/v1/isolated/session/{sid}/files/search?path={w}&pattern=*.txt"),
    )
    .await;
    let names: Vec<&str> = paths(&found);
    assert_eq!(names, [format!("{w}/b.txt")]);
    let (out, _) = run(&agent, &sid, "ls; cat b.txt").await;
    assert_eq!(out, "b.txt\nhello there\n");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("a.txt")).unwrap(),
        "hello world"
    );
}

#[tokio::test]
async fn a_client_that_goes_away_interrupts_its_foreground_run() {
    let agent = Agent::start();
    let ws = workspace();
    let w = ws.path().to_str().unwrap().to_owned();
    let sid = create(&agent, json!({ "workspace": { "path": w, "mode": "rw" } })).await;
    let mut resp = agent
        .post(&format!("/v1/isolated/session/{sid}/run"))
        .json(&json!({ "code": "trap 'echo interrupted > got-int; exit 130' INT; echo started; sleep 30 & wait" }))
        .send()
        .await
        .unwrap();
    // Read until the run has started, then hang up.
    let mut seen = String::new();
    while !seen.contains("started") {
        let chunk = resp.chunk().await.unwrap().expect("stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(resp);
    eventually(5, "the run to be interrupted", async || {
        ws.path().join("got-int").exists().then_some(())
    })
    .await;
}

/// An execd running as an unprivileged uid (1001), on a loopback port; killed on drop.
struct Unprivileged {
    child: std::process::Child,
    base: String,
    _state: tempfile::TempDir,
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn start_unprivileged() -> Unprivileged {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let state = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(state.path(), Some(1001), Some(1001)).unwrap();
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid", "1001", "--regid", "1001", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_execd"))
        .args(["--host", "127.0.0.1", "--port", "0", "--state-dir"])
        .arg(state.path())
        .env("RUST_LOG", "warn")
        .env_remove("EXECD_ACCESS_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    Unprivileged {
        child,
        base: format!("http://{addr}"),
        _state: state,
    }
}

#[tokio::test]
async fn an_unprivileged_execd_builds_the_full_jail_and_refuses_identity_switches() {
    let agent = start_unprivileged();
    let client = reqwest::Client::new();
    let caps: Value = client
        .get(format!("{}/v1/isolated/capabilities", agent.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(caps["available"], true, "{caps}");
    assert_eq!(caps["hardening"]["namespaces"]["state"], "active", "{caps}");
    let ws = tempfile::Builder::new()
        .prefix("iso-ws-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::os::unix::fs::chown(ws.path(), Some(1001), Some(1001)).unwrap();
    let create = |body: Value| {
        client
            .post(format!("{}/v1/isolated/session", agent.base))
            .json(&body)
            .send()
    };
    // Another identity needs root: 503 NOT_SUPPORTED, as the contract documents.
    let resp = create(json!({ "workspace": { "path": ws.path() }, "uid": 0 }))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "NOT_SUPPORTED");
    let resp = create(json!({ "workspace": { "path": ws.path() }, "share_net": false }))
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let sid = resp.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = client
        .post(format!("{}/v1/isolated/session/{sid}/run", agent.base))
        .json(&json!({ "code": "id -u; echo x > f && cat f; grep CapEff /proc/self/status; ls /proc | grep -cE '^[0-9]+$'" }))
        .send()
        .await
        .unwrap();
    let events = collect_sse(resp).await;
    let out: Vec<&str> = events
        .iter()
        .filter(|e| e.kind() == "stdout")
        .map(Event::text)
        .collect();
    assert_eq!(out[0], "1001");
    assert_eq!(out[1], "x");
    assert_eq!(out[2], "CapEff:\t0000000000000000");
    assert!(out[3].parse::<u32>().unwrap() < 8, "{out:?}");
    assert!(
        !ws.path().join("f").exists(),
        "overlay write reached the lower dir"
    );
}

#[tokio::test]
async fn a_jail_that_dies_on_its_own_marks_the_session_dead() {
    let agent = Agent::start();
    let ws = workspace();
    let sid = create(&agent, ws_body(&ws)).await;
    let jails: Vec<u32> = crate::util::children_of(agent.pid())
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__jail"))
        })
        .collect();
    assert_eq!(jails.len(), 1, "one jail per session");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(jails[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let state = eventually(5, "the session to be dead", async || {
        let st: Value = get_json(&agent, &format!("/v1/isolated/session/{sid}")).await;
        (st["status"] == "dead").then_some(st)
    })
    .await;
    assert_eq!(state["status"], "dead");
    let resp = agent
        .post(&format!("/v1/isolated/session/{sid}/run"))
        .json(&json!({ "code": "true" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    delete(&agent, &sid).await;
    let resp = agent
        .get(&format!("/v1/isolated/session/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}
