//! `sandboxd`'s client subcommands against a real sandboxd on the Docker engine (the harness
//! of `sandboxd.rs`): create, ls, get, exec with its exit code, cp both ways, logs, events,
//! pause/resume, rm, tokens, `exec -it` on a pseudo-terminal, and the errors a person sees.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sandboxd::{setup, Sandboxd, RUN_LABEL};

/// `sandboxd ARGS...` as a client of `sbd` (its server and API key in the environment).
fn cli(sbd: &Sandboxd) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandboxd"));
    cmd.env("SANDBOXD_SERVER", &sbd.base)
        .env("SANDBOXD_API_KEY", &sbd.key)
        .env_remove("SANDBOXD_TOKEN")
        // No config file from whoever runs the tests.
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .env_remove("SANDBOXD_CONFIG");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run sandboxd")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs and asserts success; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

/// `create` of a sandbox tagged with the harness's run label; its id.
fn create(sbd: &Sandboxd, image: &str, options: &[&str], entrypoint: &[&str]) -> String {
    let label = format!("{RUN_LABEL}={}", sbd.run);
    let mut cmd = cli(sbd);
    cmd.args(["create", "-l", &label]).args(options).arg(image);
    if !entrypoint.is_empty() {
        cmd.arg("--").args(entrypoint);
    }
    let out = ok(&mut cmd);
    let id = out.trim().to_owned();
    assert_eq!(id.len(), 36, "create prints the id alone: {out:?}");
    id
}

/// Polls `f` until it returns `Some`, for at most `secs`.
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cli_create_ls_get_exec_cp_logs_pause_rm() {
    let Some((image, sbd)) = setup("busybox") else {
        return;
    };
    let id = create(
        &sbd,
        image,
        &["--cpu", "1", "--memory", "256Mi", "-e", "GREETING=hello"],
        &[
            "sh",
            "-c",
            "echo booted; while [ ! -e /tmp/go ]; do sleep 1; done; echo released; exec tail -f /dev/null",
        ],
    );

    // ls: a table with the id, filtered by metadata; -q gives ids only.
    let label = format!("{RUN_LABEL}={}", sbd.run);
    let table = ok(cli(&sbd).args(["ls", "-l", &label]));
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&id) && table.contains("Running"), "{table}");
    assert_eq!(ok(cli(&sbd).args(["ls", "-q", "-l", &label])).trim(), id);
    assert_eq!(
        ok(cli(&sbd).args(["ls", "-q", "-l", &label, "--state", "Paused"])).trim(),
        ""
    );

    // get: the API's JSON and YAML, and a human form.
    let got: Value = serde_json::from_str(&ok(cli(&sbd).args(["get", &id, "-o", "json"]))).unwrap();
    assert_eq!(got["status"]["state"], "Running");
    assert_eq!(got["entrypoint"][0], "sh");
    let yaml = ok(cli(&sbd).args(["get", &id, "-o", "yaml"]));
    assert!(
        yaml.contains(&format!("id: {id}")) && yaml.contains("state: Running"),
        "{yaml}"
    );
    let human = ok(cli(&sbd).args(["get", &id]));
    assert!(human.contains("State:") && human.contains("Running"), "{human}");

    // exec: output as it comes, the remote exit code as ours, the sandbox's env.
    let out = run(cli(&sbd).args(["exec", &id, "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi\n");
    assert_eq!(stderr(&out), "oops\n");
    assert_eq!(
        ok(cli(&sbd).args(["exec", &id, "--", "sh", "-c", "echo $GREETING"])),
        "hello\n"
    );
    let out = run(cli(&sbd).args(["exec", &id, "--", "no-such-program"]));
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out).contains("cannot start no-such-program"),
        "{}",
        stderr(&out)
    );

    // cp both ways, byte for byte, 3 MiB of every byte value; into a directory keeps the name.
    let dir = tempfile::tempdir().unwrap();
    let payload: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let local = dir.path().join("payload.bin");
    std::fs::write(&local, &payload).unwrap();
    let out = run(cli(&sbd).args(["cp", local.to_str().unwrap(), &format!("{id}:/tmp/")]));
    assert!(out.status.success(), "{}", stderr(&out));
    // Not a terminal: one plain line, no progress bar.
    assert_eq!(
        stderr(&out),
        format!("copied {} bytes to {id}:/tmp/payload.bin\n", payload.len())
    );
    assert_eq!(
        ok(cli(&sbd).args(["exec", &id, "--", "wc", "-c", "/tmp/payload.bin"]))
            .split_whitespace()
            .next(),
        Some(payload.len().to_string().as_str())
    );
    let back = dir.path().join("back.bin");
    ok(cli(&sbd).args(["cp", &format!("{id}:/tmp/payload.bin"), back.to_str().unwrap()]));
    assert!(std::fs::read(&back).unwrap() == payload, "the copy back differs");
    ok(cli(&sbd).args([
        "cp",
        &format!("{id}:/tmp/payload.bin"),
        dir.path().to_str().unwrap(),
    ]));
    assert!(std::fs::read(dir.path().join("payload.bin")).unwrap() == payload);
    let out = run(cli(&sbd).args(["cp", &format!("{id}:/tmp/missing"), back.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("FILE_NOT_FOUND"), "{}", stderr(&out));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("sandboxd-cp"))
        .collect();
    assert!(leftovers.is_empty(), "a failed download left {leftovers:?}");

    // logs and events.
    let logs = wait_for(10, "the entrypoint's output in logs", || {
        let logs = ok(cli(&sbd).args(["logs", &id]));
        logs.contains("booted").then_some(logs)
    });
    assert!(logs.contains("booted"));
    assert!(ok(cli(&sbd).args(["logs", &id, "--tail", "1"])).lines().count() <= 1);
    // logs -f: what is there, then new lines as they come, none twice.
    let mut follow = cli(&sbd)
        .args(["logs", "-f", &id])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let followed = Arc::new(Mutex::new(String::new()));
    let mut pipe = follow.stdout.take().unwrap();
    let sink = followed.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    // (execd's own log line naming the entrypoint says "booted" and "released" too: look
    // for whole lines.)
    let has_line = |line: &str| followed.lock().unwrap().lines().any(|l| l == line).then_some(());
    wait_for(10, "logs -f to print what was there", || has_line("booted"));
    ok(cli(&sbd).args(["exec", &id, "--", "touch", "/tmp/go"]));
    wait_for(20, "logs -f to print a new line", || has_line("released"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follow.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let status = wait_for(10, "logs -f to stop on Ctrl-C", || follow.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    let followed = followed.lock().unwrap().clone();
    let count = |line: &str| followed.lines().filter(|l| *l == line).count();
    assert_eq!((count("booted"), count("released")), (1, 1), "{followed}");

    let events = ok(cli(&sbd).args(["events", &id]));
    assert!(events.contains("create requested"), "{events}");

    // pause and resume.
    assert_eq!(ok(cli(&sbd).args(["pause", &id])).trim(), id);
    assert_eq!(
        ok(cli(&sbd).args(["ls", "-q", "-l", &label, "--state", "Paused"])).trim(),
        id
    );
    assert_eq!(ok(cli(&sbd).args(["resume", &id])).trim(), id);

    // rm of several: the missing one is reported by name, the real one goes, exit 1.
    let out = run(cli(&sbd).args(["rm", &id, "no-such-sandbox"]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).trim(), id);
    assert!(
        stderr(&out).contains("no-such-sandbox: SANDBOX::NOT_FOUND"),
        "{}",
        stderr(&out)
    );
    let out = run(cli(&sbd).args(["get", &id]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("SANDBOX::NOT_FOUND"), "{}", stderr(&out));
}

/// A process on the slave side of a fresh pseudo-terminal, its output collected by a thread.
struct OnPty {
    child: std::process::Child,
    master: std::fs::File,
    output: Arc<Mutex<Vec<u8>>>,
}

impl OnPty {
    fn spawn(mut cmd: Command, cols: u16, rows: u16) -> Self {
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pair = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave: OwnedFd = pair.slave;
        // SAFETY: between fork and exec the closure calls only async-signal-safe functions
        // (setsid, ioctl) and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                // A session of its own with the pty as its controlling terminal, as in a real
                // terminal: Ctrl-C would be SIGINT here were it not for raw mode, and a window
                // size change is SIGWINCH.
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave)
            .spawn()
            .expect("spawn on the pty");
        let master = std::fs::File::from(pair.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once every slave fd is closed (the child exited).
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            child,
            master,
            output,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn expect(&self, needle: &str) {
        wait_for(20, &format!("{needle:?} on the terminal"), || {
            self.text().contains(needle).then_some(())
        });
    }

    fn type_line(&mut self, line: &str) {
        self.master.write_all(format!("{line}\r").as_bytes()).unwrap();
    }

    /// Sets the terminal's size, as a window resize does (the kernel sends SIGWINCH).
    fn resize(&self, cols: u16, rows: u16) {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize`, which outlives the call, from our master fd.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    fn exit_code(&mut self) -> Option<i32> {
        let status = wait_for(20, "the CLI to exit", || self.child.try_wait().unwrap());
        status.code()
    }
}

#[test]
fn cli_exec_it_runs_a_shell_on_a_terminal() {
    let Some((image, sbd)) = setup("busybox") else {
        return;
    };
    let id = create(&sbd, image, &[], &[]);
    let mut cmd = cli(&sbd);
    cmd.args(["exec", "-it", &id]);
    let mut term = OnPty::spawn(cmd, 101, 33);
    // The local size reaches the remote terminal.
    term.type_line("stty size");
    term.expect("33 101");
    term.type_line("echo hi-$((1+1))");
    term.expect("hi-2");
    // A resize of the local window follows (SIGWINCH → a resize frame).
    term.resize(120, 40);
    let mut asked = 0;
    wait_for(20, "the remote terminal to take the new size", || {
        // Ask, wait for the answer, and ask again if the resize was not there yet.
        asked += 1;
        term.type_line(&format!("stty size; echo asked-$((0+{asked}))"));
        term.expect(&format!("asked-{asked}"));
        term.text().contains("40 120").then_some(())
    });
    // Ctrl-C reaches the remote foreground job, not this CLI.
    term.type_line("sleep 1000");
    wait_for(20, "sleep to run in the sandbox", || {
        let out = ok(cli(&sbd).args(["exec", &id, "--", "ps"]));
        out.contains("sleep 1000").then_some(())
    });
    term.master.write_all(b"\x03").unwrap();
    term.type_line("echo after-$((2+3))");
    term.expect("after-5");
    term.type_line("exit 5");
    assert_eq!(term.exit_code(), Some(5), "{}", term.text());
    // The CLI restored the terminal: canonical mode and echo are back.
    let restored = nix::sys::termios::tcgetattr(&term.master).expect("tcgetattr");
    let local = restored.local_flags;
    assert!(
        local.contains(nix::sys::termios::LocalFlags::ICANON)
            && local.contains(nix::sys::termios::LocalFlags::ECHO),
        "{local:?}"
    );
}

#[test]
fn cli_errors_name_the_cause_and_exit_non_zero() {
    // No server at all: a clear message, exit 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args(["ls", "--server", &format!("http://{closed}")])
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("sandboxd: cannot reach http://{closed}")),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");

    // A config file that does not parse is named.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "sever: typo\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args(["ls", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("config file") && stderr(&out).contains("sever"),
        "{}",
        stderr(&out)
    );

    // exec without a command is a usage error (2).
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args(["exec", "-i", "abc", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("-i needs -t"), "{}", stderr(&out));
}

#[test]
fn cli_credentials_keys_tokens_and_config_file() {
    let Some((_, sbd)) = setup("busybox") else { return };
    // A wrong key: the server's code and message.
    let out = run(cli(&sbd).args(["ls", "--api-key", "wrong"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("INVALID_API_KEY"), "{}", stderr(&out));
    let out = run(cli(&sbd)
        .env_remove("SANDBOXD_API_KEY")
        .args(["ls", "--token", "not-a-jwt"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("AUTH::INVALID_TOKEN"), "{}", stderr(&out));

    // A user token from `token create` (only the token on stdout) names its user.
    let token = ok(cli(&sbd).args(["token", "create", "alice", "--ttl", "600"]))
        .trim()
        .to_owned();
    let me: Value = serde_json::from_str(&ok(cli(&sbd)
        .env("SANDBOXD_TOKEN", &token)
        .args(["token", "current", "-o", "json"])))
    .unwrap();
    assert_eq!(
        (
            me["userId"].as_str(),
            me["role"].as_str(),
            me["authMethod"].as_str()
        ),
        (Some("alice"), Some("user"), Some("bearer"))
    );
    // Alice sees none of root's sandboxes (a fresh server: none at all).
    assert_eq!(
        ok(cli(&sbd).env("SANDBOXD_TOKEN", &token).args(["ls", "-o", "json"])).trim(),
        "[]"
    );

    // The same from a config file, and revocation.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, format!("server: {}\ntoken: {token}\n", sbd.base)).unwrap();
    let from_file = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandboxd"));
        cmd.args(args)
            .env("SANDBOXD_CONFIG", &config)
            .env_remove("SANDBOXD_SERVER")
            .env_remove("SANDBOXD_API_KEY")
            .env_remove("SANDBOXD_TOKEN");
        run(&mut cmd)
    };
    let current = from_file(&["token", "current"]);
    assert!(stdout(&current).contains("alice"), "{}", stderr(&current));
    let token_id = me["tokenId"].as_str().unwrap();
    assert_eq!(ok(cli(&sbd).args(["token", "revoke", token_id])).trim(), token_id);
    let out = from_file(&["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("AUTH::TOKEN_REVOKED"), "{}", stderr(&out));
}

#[test]
fn cli_help_and_completions() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?} --help");
        stdout(&out)
    };
    let top = help(&[]);
    for sub in [
        "serve",
        "ls",
        "create",
        "get",
        "rm",
        "logs",
        "events",
        "exec",
        "cp",
        "pause",
        "resume",
        "run",
        "template",
        "pool",
        "prepull",
        "token",
        "completion",
    ] {
        assert!(
            top.contains(&format!("  {sub} ")),
            "{sub} missing from --help:\n{top}"
        );
        let text = help(&[sub]);
        assert!(
            text.contains(&format!("Usage: sandboxd {sub}")),
            "{sub} --help:\n{text}"
        );
        if sub != "serve" && sub != "completion" {
            assert!(
                text.contains("--server <URL>") && text.contains("SANDBOXD_SERVER"),
                "{sub} --help lacks the connection flags:\n{text}"
            );
        }
    }
    assert!(help(&["exec"]).contains("--execd <URL>"));
    assert!(help(&["cp"]).contains("ID:PATH"));
    assert!(help(&["create"]).contains("--memory"));
    assert!(help(&["token", "create"]).contains("--role"));
    assert!(help(&["create"]).contains("--template <NAME[@VERSION]>"));
    assert!(help(&["template", "apply"]).contains("--strategy <STRATEGY>"));
    assert!(help(&["template", "apply"]).contains("create-only"));
    for sub in ["apply", "ls", "get", "versions", "rollback", "export", "rm"] {
        assert!(help(&["template", sub]).contains(&format!("Usage: sandboxd template {sub}")));
    }
    for sub in ["ls", "create", "get", "rm", "acquire", "release"] {
        assert!(help(&["pool", sub]).contains(&format!("Usage: sandboxd pool {sub}")));
    }
    assert!(help(&["pool", "create"]).contains("--buffer-min"));
    assert!(help(&["run"]).contains("--handler-file") && help(&["run"]).contains("124"));
    assert!(help(&["prepull"]).contains("--detach"));
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let script = stdout(&out);
        assert!(
            script.contains("sandboxd") && script.contains("exec"),
            "{shell}: {script}"
        );
    }
}

#[test]
fn cli_exec_straight_to_an_execd() {
    // A port-forward's view: an execd URL and its token, no sandboxd.
    let agent = crate::util::Agent::start_with(crate::util::Opts {
        token: Some("direct-token".into()),
        ..Default::default()
    });
    let direct = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandboxd"));
        cmd.args(["exec", "--execd", &agent.base])
            .args(extra)
            .env("XDG_CONFIG_HOME", "/nonexistent")
            // A user token in the environment is sandboxd's, never sent to an execd.
            .env("SANDBOXD_TOKEN", "not-for-execd")
            .env_remove("EXECD_ACCESS_TOKEN");
        cmd
    };
    let out = run(&mut direct(&[
        "--token",
        "direct-token",
        "--",
        "sh",
        "-c",
        "echo x; exit 4",
    ]));
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(4), "x\n"),
        "{}",
        stderr(&out)
    );
    let out = run(&mut direct(&["--", "true"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("(HTTP 401)"), "{}", stderr(&out));

    let mut term = OnPty::spawn(direct(&["-it", "--token", "direct-token"]), 80, 24);
    term.type_line("echo direct-$((3*3))");
    term.expect("direct-9");
    term.type_line("exit 7");
    assert_eq!(term.exit_code(), Some(7), "{}", term.text());
}

/// `create --template` of a sandbox tagged with the harness's run label; its id.
fn create_from_template(sbd: &Sandboxd, template: &str) -> String {
    let label = format!("{RUN_LABEL}={}", sbd.run);
    let out = ok(cli(sbd).args(["create", "-l", &label, "--template", template]));
    out.trim().to_owned()
}

fn template_yaml(name: &str, image: &str, greeting: &str) -> String {
    format!(
        "apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {{name: {name}, tags: [cli]}}\nspec:\n  image: {image}\n  \
         command: [tail, -f, /dev/null]\n  ttl: 600\n  env: {{GREETING: {greeting}}}\n"
    )
}

#[test]
fn cli_templates_apply_list_version_rollback_export_and_make_sandboxes() {
    let Some((image, sbd)) = setup("busybox") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tpl.yaml");
    let apply = |greeting: &str, extra: &[&str]| {
        std::fs::write(&file, template_yaml("cli-tpl", image, greeting)).unwrap();
        ok(cli(&sbd)
            .args(["template", "apply", "-f", file.to_str().unwrap()])
            .args(extra))
    };
    // A table row per item, by what happened to it.
    let created = apply("v1", &[]);
    assert!(created.starts_with("NAME "), "{created}");
    assert_eq!(
        row(&created, "cli-tpl").split_whitespace().collect::<Vec<_>>(),
        ["cli-tpl", "created", "1", "-"]
    );
    assert!(row(&apply("v1", &[]), "cli-tpl").contains("unchanged"));
    // A dry run reports the update and changes nothing.
    let dry = apply("v2", &["--dry-run"]);
    assert!(
        row(&dry, "cli-tpl").contains("updated") && dry.contains("dry run"),
        "{dry}"
    );
    let skipped = apply("v2", &["--strategy", "create-only"]);
    assert!(row(&skipped, "cli-tpl").contains("skipped"), "{skipped}");
    let updated = apply("v2", &[]);
    assert!(row(&updated, "cli-tpl").contains("1 → 2"), "{updated}");
    // JSON is the API's ImportResult.
    let result: Value = serde_json::from_str(&apply("v2", &["-o", "json"])).unwrap();
    assert_eq!(result["unchanged"][0]["version"], 2, "{result}");

    // ls, get (latest or @VERSION), versions.
    let table = ok(cli(&sbd).args(["template", "ls"]));
    assert!(
        table.starts_with("NAME ") && row(&table, "cli-tpl").contains(" 2 "),
        "{table}"
    );
    assert_eq!(
        ok(cli(&sbd).args(["template", "ls", "-q", "--tag", "cli"])),
        "cli-tpl\n"
    );
    assert_eq!(ok(cli(&sbd).args(["template", "ls", "-q", "--tag", "none"])), "");
    let latest: Value =
        serde_json::from_str(&ok(cli(&sbd).args(["template", "get", "cli-tpl", "-o", "json"]))).unwrap();
    assert_eq!(
        (
            latest["latestVersion"].as_u64(),
            latest["spec"]["env"]["GREETING"].as_str()
        ),
        (Some(2), Some("v2"))
    );
    let v1 = ok(cli(&sbd).args(["template", "get", "cli-tpl@1", "-o", "yaml"]));
    assert!(v1.contains("version: 1") && v1.contains("GREETING: v1"), "{v1}");
    assert!(ok(cli(&sbd).args(["template", "get", "cli-tpl"])).contains("Version:        2"));
    let versions = ok(cli(&sbd).args(["template", "versions", "cli-tpl"]));
    let rows: Vec<&str> = versions.lines().skip(1).collect();
    assert!(
        rows.len() == 2 && rows[0].starts_with("2 ") && rows[1].starts_with("1 "),
        "{versions}"
    );
    let out = run(cli(&sbd).args(["template", "get", "cli-tpl@9"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("TEMPLATE::VERSION_NOT_FOUND"),
        "{}",
        stderr(&out)
    );
    let out = run(cli(&sbd).args(["template", "get", "cli-tpl@x"]));
    assert_eq!(out.status.code(), Some(2), "a bad NAME@VERSION is a usage error");

    // Sandboxes from the latest and from @1, and a one-shot run in a fresh one.
    let sb2 = create_from_template(&sbd, "cli-tpl");
    assert_eq!(
        ok(cli(&sbd).args(["exec", &sb2, "--", "sh", "-c", "echo $GREETING"])),
        "v2\n"
    );
    let sb1 = create_from_template(&sbd, "cli-tpl@1");
    assert_eq!(
        ok(cli(&sbd).args(["exec", &sb1, "--", "sh", "-c", "echo $GREETING"])),
        "v1\n"
    );
    let got: Value = serde_json::from_str(&ok(cli(&sbd).args(["get", &sb1, "-o", "json"]))).unwrap();
    assert_eq!(got["templateVersion"], 1, "{got}");
    let out = run(cli(&sbd).args(["run", "--template", "cli-tpl@1", "--sh", "echo $GREETING; exit 4"]));
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(4), "v1\n"),
        "{}",
        stderr(&out)
    );

    // Rollback copies version 1's spec as version 3.
    let rolled = ok(cli(&sbd).args(["template", "rollback", "cli-tpl", "--to", "1"]));
    assert_eq!(rolled, "cli-tpl: version 3 has version 1's spec (was 2)\n");
    let latest: Value =
        serde_json::from_str(&ok(cli(&sbd).args(["template", "get", "cli-tpl", "-o", "json"]))).unwrap();
    assert_eq!(
        (
            latest["latestVersion"].as_u64(),
            latest["spec"]["env"]["GREETING"].as_str()
        ),
        (Some(3), Some("v1"))
    );

    // Export round-trips through rm and apply.
    let exported = ok(cli(&sbd).args(["template", "export", "cli-tpl"]));
    assert!(
        exported.contains("kind: Template") && exported.contains("GREETING: v1"),
        "{exported}"
    );
    let v2 = ok(cli(&sbd).args(["template", "export", "cli-tpl@2"]));
    assert!(v2.contains("GREETING: v2"), "{v2}");
    assert!(ok(cli(&sbd).args(["template", "export", "--all"])).contains("cli-tpl"));
    ok(cli(&sbd).args(["rm", &sb1, &sb2]));
    assert_eq!(ok(cli(&sbd).args(["template", "rm", "cli-tpl"])), "cli-tpl\n");
    assert_eq!(ok(cli(&sbd).args(["template", "ls", "-q"])), "");
    let mut from_stdin = cli(&sbd);
    from_stdin
        .args(["template", "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = from_stdin.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exported.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        row(&stdout(&out), "cli-tpl").contains("created"),
        "{}",
        stdout(&out)
    );

    // A document that does not read: the server's code and its line:column; a bad item: exit 1.
    std::fs::write(
        &file,
        "kind: Template\nmetadata: {name: x}\nspec:\n  image: a\n  startup_scirpt: b\n",
    )
    .unwrap();
    let out = run(cli(&sbd).args(["template", "apply", "-f", file.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("TEMPLATE::IMPORT_INVALID") && stderr(&out).contains("startup_scirpt"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&file, template_yaml("Bad_Name", image, "x")).unwrap();
    let out = run(cli(&sbd).args(["template", "apply", "-f", file.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        row(&stdout(&out), "Bad_Name").contains("failed"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("item 0 (Bad_Name)"), "{}", stderr(&out));
    let out = run(cli(&sbd).args(["template", "apply", "-f", "/nonexistent.yaml"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("reading /nonexistent.yaml"),
        "{}",
        stderr(&out)
    );
}

/// The table row that starts with `first`.
fn row<'a>(table: &'a str, first: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in:\n{table}"))
}

#[test]
fn cli_pools_create_acquire_release_and_rm() {
    let Some((image, sbd)) = setup("busybox") else {
        return;
    };
    let label = format!("{RUN_LABEL}={}", sbd.run);
    let created = ok(cli(&sbd).args([
        "pool",
        "create",
        "cli-pool",
        "--image",
        image,
        "-l",
        &label,
        "-e",
        "FROM_POOL=yes",
        "--buffer-min",
        "1",
        "--buffer-max",
        "1",
        "--pool-max",
        "3",
        "--memory",
        "128Mi",
    ]));
    assert_eq!(created, "cli-pool\n");
    let pool = wait_for(120, "a warm member", || {
        let pool: Value =
            serde_json::from_str(&ok(cli(&sbd).args(["pool", "get", "cli-pool", "-o", "json"]))).unwrap();
        (pool["status"]["available"] == 1).then_some(pool)
    });
    assert_eq!(pool["capacitySpec"]["poolMax"], 3, "{pool}");
    let table = ok(cli(&sbd).args(["pool", "ls"]));
    assert!(
        table.starts_with("NAME ") && row(&table, "cli-pool").contains(image),
        "{table}"
    );
    assert!(ok(cli(&sbd).args(["pool", "get", "cli-pool"])).contains("Members:"));

    // Acquire: a running sandbox with the pool's and the request's environment.
    let id = ok(cli(&sbd).args(["pool", "acquire", "cli-pool", "-e", "TASK=42", "-l", &label]))
        .trim()
        .to_owned();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(
        ok(cli(&sbd).args(["exec", &id, "--", "sh", "-c", "echo $FROM_POOL $TASK"])),
        "yes 42\n"
    );
    // A job in another member, released after it.
    let out = run(cli(&sbd).args(["run", "--pool", "cli-pool", "--sh", "echo $FROM_POOL-job"]));
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "yes-job\n"),
        "{}",
        stderr(&out)
    );

    assert_eq!(ok(cli(&sbd).args(["pool", "release", &id])), format!("{id}\n"));
    let got: Value = serde_json::from_str(&ok(cli(&sbd).args(["get", &id, "-o", "json"]))).unwrap();
    assert_eq!(got["status"]["state"], "Terminated", "{got}");
    let out = run(cli(&sbd).args(["pool", "release", &id]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("POOL::NOT_ALLOCATED"), "{}", stderr(&out));

    // Bad input is the server's 400, named; a missing pool is 404.
    let out = run(cli(&sbd).args([
        "pool",
        "create",
        "bad",
        "--image",
        image,
        "--buffer-min",
        "5",
        "--pool-max",
        "2",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("SANDBOX::INVALID_PARAMETER"),
        "{}",
        stderr(&out)
    );
    let out = run(cli(&sbd).args(["pool", "create", "x"]));
    assert_eq!(out.status.code(), Some(2), "--image or --template is required");

    assert_eq!(ok(cli(&sbd).args(["pool", "rm", "cli-pool"])), "cli-pool\n");
    let out = run(cli(&sbd).args(["pool", "get", "cli-pool"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("POOL::NOT_FOUND"), "{}", stderr(&out));
    assert_eq!(ok(cli(&sbd).args(["pool", "ls", "-o", "json"])).trim(), "[]");
}

#[test]
fn cli_run_waits_prints_the_result_and_propagates_the_exit_code() {
    let Some((image, sbd)) = setup("python") else {
        return;
    };
    let id = create(&sbd, image, &[], &[]);
    // A command: its output on our stdout and stderr, its exit code ours.
    let out = run(cli(&sbd).args(["run", &id, "--", "sh", "-c", "echo out; echo err >&2; exit 3"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert!(stderr(&out).starts_with("err\n"), "{}", stderr(&out));
    assert_eq!(
        ok(cli(&sbd).args(["run", &id, "-e", "A=7", "-w", "/tmp", "--sh", "echo $A $PWD"])),
        "7 /tmp\n"
    );
    // Code: the last expression is printed.
    assert_eq!(ok(cli(&sbd).args(["run", &id, "--code", "6 * 7"])), "42\n");
    // A handler: its result as JSON; an exception is exit 1 with its name.
    let dir = tempfile::tempdir().unwrap();
    let handler = dir.path().join("h.py");
    std::fs::write(&handler, "def handler(event):\n    if event.get('boom'):\n        raise ValueError('no')\n    return {'double': event['n'] * 2}\n").unwrap();
    let h = handler.to_str().unwrap();
    let result: Value = serde_json::from_str(&ok(cli(&sbd).args([
        "run",
        &id,
        "--handler-file",
        h,
        "--event",
        r#"{"n": 21}"#,
    ])))
    .unwrap();
    assert_eq!(result, serde_json::json!({"double": 42}));
    let out = run(cli(&sbd).args(["run", &id, "--handler-file", h, "--event", r#"{"boom": true}"#]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("EXECUTION::HANDLER_ERROR: ValueError: no"),
        "{}",
        stderr(&out)
    );
    // A timeout: 124, and why.
    let out = run(cli(&sbd).args(["run", &id, "--timeout", "1", "--", "sleep", "30"]));
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("TimedOut"), "{}", stderr(&out));
    // -o json is the stored Execution; -d returns its id at once, readable later.
    let json: Value =
        serde_json::from_str(&ok(cli(&sbd).args(["run", &id, "-o", "json", "--", "true"]))).unwrap();
    assert_eq!(
        (json["status"]["state"].as_str(), json["exitCode"].as_i64()),
        (Some("Succeeded"), Some(0)),
        "{json}"
    );
    let detached = ok(cli(&sbd).args(["run", "-d", &id, "--sh", "sleep 1; echo later"]))
        .trim()
        .to_owned();
    assert!(detached.starts_with("exec-"), "{detached}");
    // Ctrl-C cancels the job: 130.
    let mut child = cli(&sbd)
        .args(["run", &id, "--sh", "touch /tmp/started; sleep 300"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(20, "the job to run", || {
        run(cli(&sbd).args(["exec", &id, "--", "test", "-e", "/tmp/started"]))
            .status
            .success()
            .then_some(())
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let status = wait_for(30, "run to end on Ctrl-C", || child.try_wait().unwrap());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("cancelling exec-") && err.contains("Cancelled"),
        "{err}"
    );
    // Bad input: the server's 400 names it; a missing sandbox is 404; nothing to run is usage.
    let out = run(cli(&sbd).args(["run", &id, "--timeout", "0", "--", "true"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("SANDBOX::INVALID_PARAMETER"),
        "{}",
        stderr(&out)
    );
    let out = run(cli(&sbd).args(["run", "no-such-sandbox", "--", "true"]));
    assert!(stderr(&out).contains("SANDBOX::NOT_FOUND"), "{}", stderr(&out));
    assert_eq!(run(cli(&sbd).args(["run", &id])).status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prepull_shows_live_progress_on_a_terminal_and_lines_otherwise() {
    use crate::prepull::{image_present, registries, Forget, Valve, MIB, REGISTRY};
    if !registries() {
        return;
    }
    let _forget = Forget::now("prepull-cli");
    let sbd = crate::sandboxd::Sandboxd::start();
    // Not a terminal: plain lines, percent growing as the valve opens step by step.
    let valve = Valve::to(REGISTRY, 4 * MIB).await;
    let image = format!("127.0.0.1:{}/prepull-cli:1", valve.port);
    let mut child = cli(&sbd)
        .args(["prepull", &image])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let percent_lines = || -> Vec<u64> {
        lines
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains(": Pulling "))
            .filter_map(|l| l.split(": Pulling ").nth(1)?.split('%').next()?.parse().ok())
            .collect()
    };
    for step in 1..=3u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let seen = loop {
            let p = percent_lines();
            if p.len() as u64 >= step {
                break p;
            }
            if Instant::now() > deadline {
                let text = lines.lock().unwrap().clone();
                let task = ok(cli(&sbd).args(["prepull", "-d", &image, "-o", "json"]));
                panic!("no progress line {step} in:\n{text}\nthe task: {task}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        valve.allow(8 * MIB);
    }
    valve.allow(u64::MAX);
    let status = wait_for(120, "prepull to end", || child.try_wait().unwrap());
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success(), "{}", lines.lock().unwrap());
    assert!(
        out.starts_with("pp-") && out.trim_end().ends_with(&format!("{image} Completed")),
        "{out}"
    );
    assert!(
        !lines.lock().unwrap().contains('\x1b'),
        "no escape codes off a terminal"
    );

    // On a terminal: a progress bar that moves while the valve lets bytes through.
    drop(_forget);
    let _forget = Forget::now("prepull-cli");
    let valve = Valve::to(REGISTRY, 4 * MIB).await;
    let image = format!("127.0.0.1:{}/prepull-cli:1", valve.port);
    let mut cmd = cli(&sbd);
    cmd.args(["prepull", &image]);
    let mut term = OnPty::spawn(cmd, 120, 30);
    term.expect("Pulling");
    let bar = |t: &str| t.contains('[') && t.contains("MiB") && t.contains("layers");
    wait_for(30, "a progress bar", || bar(&term.text()).then_some(()));
    valve.allow(u64::MAX);
    assert_eq!(term.exit_code(), Some(0), "{}", term.text());
    assert!(term.text().contains("Completed"), "{}", term.text());
    assert!(image_present(&image));

    // Present now: Completed at once, and -o json is the task.
    let again: Value = serde_json::from_str(&ok(cli(&sbd).args(["prepull", &image, "-o", "json"]))).unwrap();
    assert_eq!(
        (
            again["status"]["state"].as_str(),
            again["status"]["reason"].as_str()
        ),
        (Some("Completed"), Some("ALREADY_PRESENT"))
    );
    let out = run(cli(&sbd).args(["prepull", "Not An Image"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("PREPULL::INVALID_IMAGE"),
        "{}",
        stderr(&out)
    );
}
