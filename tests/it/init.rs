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
