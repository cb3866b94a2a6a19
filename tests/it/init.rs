//! PID 1 mode: `execd init -- <entrypoint>` serves the API, reaps orphans, forwards signals,
//! and exits with the entrypoint's code.

use std::time::Duration;

use serde_json::json;

use crate::util::{children_of, eventually, pids_matching, texts, Agent, Opts};

fn init(args: &[&str]) -> Opts {
    let mut tail = vec!["init".to_owned(), "--".to_owned()];
    tail.extend(args.iter().map(|s| s.to_string()));
    Opts {
        tail,
        ..Opts::default()
    }
}

async fn wait_exit(agent: &mut Agent, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "execd did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn exits_with_the_entrypoint_code() {
    let mut agent = Agent::start_with(init(&["sh", "-c", "sleep 0.5; exit 7"]));
    assert_eq!(
        agent.get("/ping").send().await.unwrap().status(),
        200,
        "API served while the entrypoint runs"
    );
    assert_eq!(wait_exit(&mut agent, 10).await.code(), Some(7));
}

#[tokio::test]
async fn forwards_sigterm_and_reaps_orphans() {
    // The subshells exit at once, orphaning their sleepers, which execd (a subreaper) inherits.
    // Each sleeper leaves a file just before it exits.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut agent = Agent::start_with(init(&[
        "sh",
        "-c",
        &format!(
            "(sh -c 'sleep 0.2; touch {}' &); (sh -c 'sleep 0.3; touch {}' &); exec sleep 300",
            a.display(),
            b.display()
        ),
    ]));
    let pid = agent.pid();
    eventually(10, "both orphans to finish", async || {
        (a.exists() && b.exists()).then_some(())
    })
    .await;
    // Once they have exited, nothing of them is left: no live process (execd's own command
    // line names the files too), and no zombie.
    let needle = dir.path().display().to_string();
    eventually(5, "the orphans to be reaped", async || {
        let alive = pids_matching(&needle).into_iter().any(|p| p != pid);
        let zombies = children_of(pid).into_iter().filter(|(_, s)| *s == 'Z').count();
        (!alive && zombies == 0).then_some(())
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut agent, 10).await;
    assert_eq!(status.code(), Some(143), "128 + SIGTERM from the entrypoint");
}

#[tokio::test]
async fn as_real_pid1_in_a_pid_namespace() {
    // `unshare --pid --fork` makes execd PID 1 of a new namespace, as in a container.
    let mut opts = init(&["sh", "-c", "(sleep 0.1 &); (sleep 0.1 &); exec sleep 300"]);
    opts.wrapper = vec![
        "unshare".into(),
        "--pid".into(),
        "--fork".into(),
        "--mount-proc".into(),
        "--kill-child".into(),
    ];
    let agent = Agent::start_with(opts);
    let events = agent.run(json!({"command": "cat /proc/1/comm"})).await;
    assert_eq!(texts(&events, "stdout"), ["execd"]);
    let zombies = eventually(5, "orphans reaped by PID 1", async || {
        let events = agent
            .run(json!({"command": "grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l"}))
            .await;
        let n = texts(&events, "stdout").first().map(|s| s.trim().to_owned());
        (n.as_deref() == Some("0")).then_some(n)
    })
    .await;
    assert_eq!(zombies.as_deref(), Some("0"));
}

// The pre-start hook (`OPENSANDBOX_LIFECYCLE`'s `preStart`): it runs before the entrypoint while
// the API serves, `/ping` says 503 STARTING meanwhile, and a failure ends execd with an
// account on its stderr.

/// `OPENSANDBOX_LIFECYCLE` with a preStart of `argv` and `timeout` seconds.
fn lifecycle(argv: &[&str], timeout: u64) -> (String, String) {
    let hooks = json!({"preStart": {"command": argv, "timeoutSeconds": timeout}});
    ("OPENSANDBOX_LIFECYCLE".to_owned(), hooks.to_string())
}

#[tokio::test]
async fn the_pre_start_hook_runs_before_the_entrypoint_while_ping_says_starting() {
    let dir = tempfile::tempdir().unwrap();
    let (go, done, seen) = (
        dir.path().join("go"),
        dir.path().join("done"),
        dir.path().join("seen"),
    );
    // The hook waits for the test's word, so /ping is asked while it certainly runs.
    let hook = format!(
        "while [ ! -e {go} ]; do sleep 0.01; done; echo prepared > {done}",
        go = go.display(),
        done = done.display()
    );
    let entrypoint = format!("cat {} > {}; exec sleep 300", done.display(), seen.display());
    let mut opts = init(&["sh", "-c", &entrypoint]);
    opts.env.push(lifecycle(&["sh", "-c", &hook], 60));
    let agent = Agent::start_with(opts);

    let resp = agent.get("/ping").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"code": "STARTING", "message": "pre-start hook running"})
    );
    // The rest of the API serves meanwhile.
    let events = agent.run(json!({"command": "echo up"})).await;
    assert_eq!(texts(&events, "stdout"), ["up"]);
    assert!(!seen.exists(), "the entrypoint waits for the hook");

    std::fs::write(&go, "").unwrap();
    eventually(10, "/ping to answer 200", async || {
        (agent.get("/ping").send().await.ok()?.status() == 200).then_some(())
    })
    .await;
    let seen = eventually(10, "the entrypoint to start", async || {
        std::fs::read_to_string(&seen).ok().filter(|s| !s.is_empty())
    })
    .await;
    assert_eq!(
        seen, "prepared\n",
        "the entrypoint ran after the hook had finished"
    );
}

/// Runs `execd init` with a hook to its end; returns (exit code, stdout, stderr).
fn run_to_the_end(hook: &[&str], timeout: u64, entrypoint: &[&str]) -> (Option<i32>, String, String) {
    let state = tempfile::tempdir().unwrap();
    let (key, value) = lifecycle(hook, timeout);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_execd"))
        .args(["--host", "127.0.0.1", "--port", "0", "--state-dir"])
        .arg(state.path())
        .args(["init", "--"])
        .args(entrypoint)
        .env(key, value)
        .env("RUST_LOG", "warn")
        .env_remove("EXECD_ACCESS_TOKEN")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run execd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_failing_pre_start_hook_ends_execd_with_its_code_and_last_output() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let touch = format!("touch {}", ran.display());
    let (code, stdout, stderr) = run_to_the_end(
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
        60,
        &["sh", "-c", &touch],
    );
    assert_eq!(code, Some(3), "stderr: {stderr}");
    // Its own output reaches the container log as it goes, on the stream it was written to.
    assert!(stdout.contains("to-stdout"), "{stdout}");
    // And the account at the end carries it.
    let account = stderr
        .lines()
        .position(|l| l.starts_with("execd: preStart failed (exit 3): "))
        .unwrap_or_else(|| panic!("no account in {stderr:?}"));
    let account: Vec<&str> = stderr.lines().skip(account).collect();
    assert!(account.concat().contains("to-stdout"), "{account:?}");
    assert!(account.concat().contains("to-stderr"), "{account:?}");
    assert!(!ran.exists(), "the entrypoint never starts after a failed hook");

    let (code, _, stderr) = run_to_the_end(&["no-such-program-xyz"], 60, &["true"]);
    assert_eq!(code, Some(127));
    assert!(
        stderr.contains("execd: preStart failed: \"no-such-program-xyz\" not found"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_pre_start_hook_that_outlives_its_timeout_is_killed_with_its_group() {
    let marker = crate::util::marker();
    // A child of the hook in its process group; it must not outlive the kill.
    let hook = format!("echo waiting; sleep 300.{marker} & wait");
    let (code, _, stderr) = run_to_the_end(&["sh", "-c", &hook], 1, &["true"]);
    assert_eq!(code, Some(124), "{stderr}");
    assert!(
        stderr.contains("execd: preStart timed out after 1 s and was killed: waiting"),
        "{stderr}"
    );
    eventually(5, "the hook's processes to be gone", async || {
        pids_matching(&marker).is_empty().then_some(())
    })
    .await;
}

/// `execd install DIR`, as a Kubernetes init container runs it.
fn execd_install(dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_execd"))
        .arg("install")
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn install_copies_execd_into_a_new_directory_and_over_a_running_copy() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("opt/opensandbox");
    let out = execd_install(&dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let installed = dir.join("execd");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_execd")).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    // The installed copy runs; installing again while it runs replaces it (no ETXTBSY).
    let mut running = std::process::Command::new(&installed)
        .args(["--host", "127.0.0.1", "--port", "0", "--state-dir"])
        .arg(d.path().join("state"))
        .env_remove("EXECD_ACCESS_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(running.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    let again = execd_install(&dir);
    let _ = running.kill();
    let _ = running.wait();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temp file left");

    let file = d.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let failed = execd_install(&file.join("sub"));
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
}

#[tokio::test]
async fn init_places_seed_files_before_the_entrypoint_starts() {
    use std::os::unix::fs::PermissionsExt;
    let seed = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("a/b/hello.txt");
    let seen = root.path().join("seen");
    std::fs::write(seed.path().join("f0"), "hello seed").unwrap();
    let manifest = seed.path().join("manifest.json");
    std::fs::write(
        &manifest,
        json!([{"key": "f0", "path": target, "mode": 0o600}]).to_string(),
    )
    .unwrap();
    // The entrypoint copies the file at its very start: it must already be there.
    let script = format!("cat {} > {}; exec sleep 30", target.display(), seen.display());
    let agent = Agent::start_with(Opts {
        env: vec![("EXECD_SEED_FILES".into(), manifest.display().to_string())],
        ..init(&["sh", "-c", &script])
    });
    let copied = eventually(10, "the entrypoint to read the seed file", async || {
        std::fs::read_to_string(&seen).ok().filter(|s| !s.is_empty())
    })
    .await;
    assert_eq!(copied, "hello seed");
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    drop(agent);
}

#[test]
fn init_with_a_bad_seed_manifest_fails_before_the_entrypoint_naming_it() {
    let seed = tempfile::tempdir().unwrap();
    let marker = seed.path().join("entrypoint-ran");
    let manifest = seed.path().join("manifest.json");
    std::fs::write(&manifest, r#"[{"key":"f0","path":"relative/x"}]"#).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_execd"))
        .args(["--host", "127.0.0.1", "--port", "0", "--state-dir"])
        .arg(seed.path().join("state"))
        .env("EXECD_SEED_FILES", &manifest)
        .args(["init", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("manifest.json") && stderr.contains("not absolute"),
        "{stderr}"
    );
    assert!(!marker.exists(), "the entrypoint never started");
}
