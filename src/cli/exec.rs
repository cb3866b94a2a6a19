//! `exec`: a command in a sandbox through its execd (`POST /command`, read as SSE: output
//! printed as it arrives, the exit code propagated), or with `-it` an interactive terminal
//! (`terminal.rs`). The execd is reached through sandboxd's server proxy, or straight with
//! `--execd URL` (a port-forward).

use reqwest::Method;

use super::client::{send, Execd};
use super::connect::Connection;
use super::error::CliError;
use super::output::write_stdout;
use super::sandboxes::key_value;
use crate::wire::{EventType, StreamEvent};

/// `exec`.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "sandboxd exec [OPTIONS] ID -- COMMAND [ARG]...\n       sandboxd exec -it [OPTIONS] ID [COMMAND]...\n       sandboxd exec -it --execd URL [--token T] [COMMAND]...",
    after_help = "Examples:\n  sandboxd exec 3f2c… -- sh -c 'echo hi; exit 3'    # prints hi, exits 3\n  sandboxd exec -it 3f2c…                           # a shell\n  sandboxd exec -it --execd http://127.0.0.1:44772 --token T   # straight to an execd"
)]
pub struct ExecArgs {
    /// Keep stdin attached (only together with -t: an interactive terminal).
    #[arg(short, long)]
    interactive: bool,
    /// Open a terminal (a PTY in the sandbox): raw mode here, resize and Ctrl-C passed on.
    #[arg(short, long)]
    tty: bool,
    /// Working directory of the command (`~` and `$VAR` expanded by execd).
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Environment variable of the command (repeatable `KEY=VALUE`; not with -t).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Talk to this execd directly (e.g. a port-forward) instead of through sandboxd; `--token`
    /// is then execd's access token [env: EXECD_ACCESS_TOKEN]. No sandbox id is given.
    #[arg(long, value_name = "URL")]
    execd: Option<String>,
    /// The sandbox id, then the command and its arguments (for -t: shell text, default a
    /// login shell).
    #[arg(
        value_name = "ID -- COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
    #[command(flatten)]
    conn: Connection,
}

/// Runs `exec`; the exit code is the remote command's.
pub async fn exec(args: ExecArgs) -> Result<u8, CliError> {
    if args.interactive && !args.tty {
        return Err(CliError::Usage(
            "-i needs -t: only interactive terminals take input (sandboxd exec -it ID)".into(),
        ));
    }
    // `ID -- COMMAND`: clap keeps a `--` that follows a positional in the trailing values.
    let mut positional = args.args.clone();
    if let Some(at) = positional.iter().position(|a| a == "--") {
        positional.remove(at);
    }
    let (execd, command) = match &args.execd {
        Some(url) => {
            let token = args
                .conn
                .explicit_token()
                .map(str::to_owned)
                .or_else(|| std::env::var("EXECD_ACCESS_TOKEN").ok());
            (Execd::direct(url, token.as_deref())?, positional)
        }
        None => {
            let Some((id, command)) = positional.split_first() else {
                return Err(CliError::Usage(
                    "which sandbox? sandboxd exec ID -- COMMAND".into(),
                ));
            };
            (args.conn.client()?.execd(id).await?, command.to_vec())
        }
    };
    if args.tty {
        if !args.env.is_empty() {
            return Err(CliError::Usage(
                "-e is not supported with -t (export it in the shell)".into(),
            ));
        }
        return super::terminal::run(&execd, &command, args.workdir.as_deref()).await;
    }
    if command.is_empty() {
        return Err(CliError::Usage(
            "what to run? sandboxd exec ID -- COMMAND (or -it for a shell)".into(),
        ));
    }
    run_command(&execd, command, args.workdir, args.env).await
}

/// `POST /command` with `argv`, output printed as it streams; Ctrl-C interrupts the remote
/// command (and the stream then ends with its exit).
async fn run_command(
    execd: &Execd,
    argv: Vec<String>,
    cwd: Option<String>,
    env: Vec<(String, String)>,
) -> Result<u8, CliError> {
    let mut body = serde_json::json!({ "argv": argv });
    if let Some(cwd) = cwd {
        body["cwd"] = cwd.into();
    }
    if !env.is_empty() {
        body["envs"] = serde_json::json!(env.into_iter().collect::<std::collections::BTreeMap<_, _>>());
    }
    let mut response = send(execd.request(Method::POST, "/command").json(&body)).await?;
    let mut buffer: Vec<u8> = Vec::new();
    let mut command_id: Option<String> = None;
    let mut interrupted = false;
    loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk.map_err(|source| CliError::Transport {
                what: "the command's output stream broke off".into(),
                source,
            })?,
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                if let Some(id) = &command_id {
                    // The stream goes on to the command's exit event.
                    let _ = send(execd.request(Method::DELETE, "/command").query(&[("id", id)])).await;
                }
                continue;
            }
        };
        let Some(chunk) = chunk else {
            return Err(CliError::Usage(
                "the command's output stream ended before its exit".into(),
            ));
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = find_event_end(&buffer) {
            let block: Vec<u8> = buffer.drain(..end).collect();
            let Some(event) = parse_event(&block) else {
                continue;
            };
            match event.kind {
                EventType::Init => command_id = event.text,
                EventType::Stdout => write_stdout(line(&event).as_bytes())?,
                EventType::Stderr => eprint!("{}", line(&event)),
                EventType::ExecutionComplete => return Ok(0),
                EventType::Error => return Ok(exit_code(&event)),
                _ => {}
            }
        }
    }
}

/// The end (past the blank line) of the first complete SSE event in `buf`.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\n\n").map(|i| i + 2)
}

/// The `data:` of one SSE event as a `StreamEvent`; comments and other fields are skipped.
fn parse_event(block: &[u8]) -> Option<StreamEvent> {
    let text = std::str::from_utf8(block).ok()?;
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data.join("\n")).ok()
}

/// An output event back as the line it was: execd sends one event per line, newline removed
/// (a blank line is `"\n"`).
fn line(event: &StreamEvent) -> String {
    match event.text.as_deref() {
        Some("\n") => "\n".into(),
        Some(text) => format!("{text}\n"),
        None => String::new(),
    }
}

/// The exit code of a failed command: its own, 128 + the signal that killed it (as a shell
/// reports it), or 1 for a failure to run at all (told on stderr).
fn exit_code(event: &StreamEvent) -> u8 {
    let Some(error) = &event.error else { return 1 };
    if error.ename == "CommandExecError" {
        // Beyond "exit status N" / "signal: …", execd explains (e.g. "cannot start …").
        for note in error
            .traceback
            .iter()
            .filter(|l| !l.starts_with("exit status ") && !l.starts_with("signal: "))
        {
            eprintln!("sandboxd: {note}");
        }
        if let Ok(code) = error.evalue.parse::<i64>() {
            if code >= 0 {
                return u8::try_from(code).unwrap_or(255);
            }
        }
        let how = error.traceback.first().map(String::as_str).unwrap_or_default();
        let signal = match how.strip_prefix("signal: ").unwrap_or(how) {
            "hangup" => 1,
            "interrupt" => 2,
            "quit" => 3,
            "killed" => 9,
            "segmentation fault" => 11,
            "terminated" => 15,
            _ => 127,
        };
        return 128 + signal;
    }
    eprintln!("sandboxd: {}: {}", error.ename, error.evalue);
    for line in &error.traceback {
        eprintln!("  {line}");
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_parse_and_lines_come_back() {
        let buf =
            b": keep-alive\n\nid: 2\ndata: {\"type\":\"stdout\",\"text\":\"hi\",\"timestamp\":1}\n\nid: 3";
        let first = find_event_end(buf).unwrap();
        assert!(parse_event(&buf[..first]).is_none());
        let rest = &buf[first..];
        let end = find_event_end(rest).unwrap();
        let event = parse_event(&rest[..end]).unwrap();
        assert_eq!(event.kind, EventType::Stdout);
        assert_eq!(line(&event), "hi\n");
        assert!(find_event_end(&rest[end..]).is_none());
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let error = |evalue: &str, traceback: &str| {
            StreamEvent::error("CommandExecError", evalue.into(), vec![traceback.into()], 0)
        };
        assert_eq!(exit_code(&error("3", "exit status 3")), 3);
        assert_eq!(exit_code(&error("-1", "signal: killed")), 137);
        assert_eq!(exit_code(&error("-1", "signal: interrupt")), 130);
    }
}
