//! Faults (issue 20, item 4): what execd and sandboxd promise when something dies or fills up.
//!
//! Already covered elsewhere, kept there: a client dropping a stream and resuming
//! (`replay.rs`), a full disk under an upload or an archive (`files.rs`,
//! `full_disk_is_507_and_leaves_nothing`), the Docker engine answering errors (the fake runtime
//! injecting them, `src/orchestrator/service/tests.rs`).

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;

use crate::files::{Part, BOUNDARY};
use crate::sandboxd::{containers_of, docker, sandbox_body, setup, Sandboxd, RUN_LABEL};
use crate::util::{eventually, Agent, Opts};

/// The plain-text events diagnostic of sandbox `id`.
async fn events_of(d: &Sandboxd, id: &str) -> String {
    let resp = d
        .req(Method::GET, &format!("/v1/sandboxes/{id}/diagnostics/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// The host pid of a sandbox's PID 1 (execd as init).
fn init_pid(id: &str) -> i32 {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &format!("sandbox-{id}")]);
    pid.parse()
        .unwrap_or_else(|_| panic!("no pid for sandbox-{id}: {pid:?}"))
}

#[tokio::test]
async fn execd_killed_in_a_sandbox_fails_it_with_a_reason_and_an_event() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let id = d.create(sandbox_body(image, &["sleep", "100000"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let execd = d.endpoint(&id, 44772, false).await;
    assert_eq!(execd.run("cat /proc/1/comm").await.0, "execd\n");

    // kill -9 of execd itself, from the host (inside its namespace PID 1 ignores SIGKILL).
    let pid = nix::unistd::Pid::from_raw(init_pid(&id));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let info = eventually(20, "the sandbox to stop running", async || {
        let (status, info) = d.info(&id).await;
        assert_eq!(status, 200, "{info}");
        (info["status"]["state"] != "Running").then_some(info)
    })
    .await;
    assert_eq!(info["status"]["state"], "Failed", "{info}");
    assert_eq!(info["status"]["reason"], "CONTAINER_EXITED_ERROR", "{info}");
    let message = info["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("137"), "the reason names the kill: {info}");
    let events = events_of(&d, &id).await;
    assert!(
        events.lines().any(|l| l.contains("stopped") && l.contains("137")),
        "the events diagnostic records the failure: {events}"
    );
    // Recorded once, however often it is read.
    d.info(&id).await;
    d.json(Method::GET, "/v1/sandboxes", None).await;
    let events = events_of(&d, &id).await;
    assert_eq!(events.matches("stopped").count(), 1, "{events}");
}

#[tokio::test]
async fn sandboxd_killed_during_concurrent_creates_leaves_no_orphan_after_restart() {
    let Some((image, mut d)) = setup("busybox") else {
        return;
    };
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let creates: Vec<_> = (0..10)
        .map(|_| {
            let mut body = sandbox_body(image, &["sleep", "100000"]);
            body["metadata"][RUN_LABEL] = json!(d.run);
            let request = d.req(Method::POST, "/v1/sandboxes").json(&body).send();
            let ready = ready.clone();
            tokio::spawn(async move {
                let status = request.await.map(|r| r.status());
                ready.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                status
            })
        })
        .collect();
    // Mid-flight: the first create has answered, most have not.
    eventually(60, "the first create to answer", async || {
        (ready.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    d.kill9();
    let mut answered = 0;
    for c in creates {
        if c.await.unwrap().is_ok_and(|s| s == 202) {
            answered += 1;
        }
    }
    eprintln!("creates answered 202 before the kill: {answered}/10");

    let d2 = Sandboxd::start_on(&d.data_dir, &d.run);
    let (status, listed) = d2.json(Method::GET, "/v1/sandboxes?pageSize=100", None).await;
    assert_eq!(status, 200, "{listed}");
    let records: BTreeSet<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(
                s["status"]["state"], "Running",
                "every record kept is adopted: {s}"
            );
            s["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(records.len() >= answered, "{answered} answered, {records:?} kept");
    // Docker may still finish a create the dead sandboxd asked for, after the restart's
    // reconciliation: sandboxd's periodic sweep (every 5 s) removes such a container.
    let labelled = || -> BTreeSet<String> {
        containers_of(&d.run)
            .iter()
            .map(|c| {
                docker(&[
                    "inspect",
                    "-f",
                    "{{index .Config.Labels \"opensandbox.io/id\"}} {{.State.Status}}",
                    c,
                ])
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let containers = loop {
        let seen = labelled();
        let ids: BTreeSet<String> = seen
            .iter()
            .map(|s| s.split(' ').next().unwrap().to_owned())
            .collect();
        if ids == records {
            break ids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "containers {seen:?} and records {records:?} disagree"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for id in &containers {
        let running = docker(&["inspect", "-f", "{{.State.Running}}", &format!("sandbox-{id}")]);
        assert_eq!(running, "true", "sandbox-{id}");
        let (out, _) = d2.endpoint(id, 44772, false).await.run("echo adopted").await;
        assert_eq!(out, "adopted\n", "sandbox {id} answers");
    }
    eprintln!(
        "after restart: {} adopted, {} removed, 0 orphans",
        records.len(),
        10 - records.len()
    );
}

#[tokio::test]
async fn an_oom_killed_sandbox_fails_with_the_oom_in_its_message() {
    let Some((image, d)) = setup("python") else {
        return;
    };
    // The entrypoint waits for a signal file, then allocates far past the limit.
    let mut body = sandbox_body(
        image,
        &[
            "sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.1; done; exec python3 -c \"x = b'a' * (512 << 20)\"",
        ],
    );
    body["resourceLimits"]["memory"] = json!("64Mi");
    let id = d.create(body).await["id"].as_str().unwrap().to_owned();
    let execd = d.endpoint(&id, 44772, false).await;
    assert_eq!(execd.run("touch /tmp/go").await.1, 0);
    let info = eventually(30, "the sandbox to be OOM-killed", async || {
        let (_, info) = d.info(&id).await;
        (info["status"]["state"] != "Running").then_some(info)
    })
    .await;
    assert_eq!(info["status"]["state"], "Failed", "{info}");
    let message = info["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("memory limit"),
        "the OOM kill is visible: {info}"
    );
    let oom = docker(&["inspect", "-f", "{{.State.OOMKilled}}", &format!("sandbox-{id}")]);
    assert_eq!(oom, "true", "Docker agrees");
    let events = events_of(&d, &id).await;
    assert!(
        events
            .lines()
            .any(|l| l.contains("stopped (Failed)") && l.contains("memory limit")),
        "the events diagnostic records the OOM kill: {events}"
    );
}

/// A tmpfs of `size` mounted over `dir` (this suite runs as root), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_state_dir_keeps_commands_running_and_every_event() {
    let logs = tempfile::tempdir().unwrap();
    let log_file = logs.path().join("execd.log");
    let agent = Agent::start_with(Opts {
        env: vec![("EXECD_LOG_FILE".into(), log_file.display().to_string())],
        ..Opts::default()
    });
    // The journals' directory becomes a tiny tmpfs, filled up.
    let journals = agent.state_dir.path().join("journals");
    let Some(_fs) = Tmpfs::mount(&journals, "256k") else {
        eprintln!("skipping: cannot mount a tmpfs (not root?)");
        return;
    };
    let filler = journals.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);

    // 3 MiB of output in 30 000 lines: more than a journal keeps in memory.
    let lines = 30_000;
    let events = agent
        .run(json!({"command": format!("seq 1 {lines} | sed 's/$/ xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx/'")}))
        .await;
    assert_eq!(events.last().unwrap().kind(), "execution_complete");
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "dense ids");
    let out: Vec<&str> = crate::util::texts(&events, "stdout");
    assert_eq!(out.len(), lines);
    for (i, line) in out.iter().enumerate() {
        assert!(line.starts_with(&format!("{} ", i + 1)), "line {i}: {line}");
    }
    // Commands still run, and the log says why the journal stayed in memory.
    let again = agent.run(json!({"command": "echo still-here"})).await;
    assert_eq!(crate::util::texts(&again, "stdout"), ["still-here"]);
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        log.contains("keeping it in memory") && log.contains("No space left on device"),
        "a clear error in the log: {log}"
    );
}

#[tokio::test]
async fn a_client_gone_mid_upload_leaves_the_old_file_and_no_partial_one() {
    use tokio::io::AsyncWriteExt;

    let agent = Agent::start_with(Opts {
        token: Some("fault-token".into()),
        ..Opts::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("data.bin");
    std::fs::write(&target, b"the old content").unwrap();
    let meta = json!({"path": target, "mode": 644}).to_string();
    // A multipart body announced as 64 MiB; 4 MiB of it is sent, then the connection drops.
    let mut head = crate::files::multipart(&[
        Part::Metadata {
            json: meta,
            filename: true,
        },
        Part::File {
            name: "data.bin",
            content: b"",
        },
    ]);
    // Keep the metadata part and the file part's headers, not its end.
    let file_head = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"");
    let cut = String::from_utf8_lossy(&head).find(&file_head).unwrap();
    let rest = String::from_utf8_lossy(&head[cut..]).into_owned();
    let end_of_headers = rest.find("\r\n\r\n").unwrap() + 4;
    head.truncate(cut + end_of_headers);
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", agent.port))
        .await
        .unwrap();
    let request = format!(
        "POST /files/upload HTTP/1.1\r\nHost: x\r\nX-EXECD-ACCESS-TOKEN: fault-token\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        head.len() + (64 << 20)
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    conn.write_all(&head).await.unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..4 {
        conn.write_all(&chunk).await.unwrap();
    }
    // The upload is under way: its temp file is beside the target.
    let names = || {
        let mut n: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    eventually(20, "the upload's temp file", async || {
        (names().len() > 1).then_some(())
    })
    .await;
    drop(conn);
    eventually(20, "the temp file to go", async || {
        (names() == ["data.bin"]).then_some(())
    })
    .await;
    assert_eq!(std::fs::read(&target).unwrap(), b"the old content");
    // execd carries on.
    let resp = agent.get("/ping").send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
