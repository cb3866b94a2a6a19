//! execd's log output: colour only on a terminal, `--log-format json` for collectors, and the
//! access token never written in either format, whatever the level.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::json;

/// Starts execd with `format` at trace level (every target), its stderr going to a file (not a
/// terminal), drives requests that carry, miss and misuse the token, and returns the log.
async fn log_of_a_busy_execd(format: &str) -> String {
    let token = "tok-SECRET-7f3a9c1e";
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_execd"))
        .args(["--host", "127.0.0.1", "--port", "0", "--log-format", format, "--state-dir"])
        .arg(dir.path())
        .env_remove("EXECD_LOG_FORMAT")
        .env("RUST_LOG", "trace")
        .env("EXECD_ACCESS_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = format!("http://{}", line.trim().strip_prefix("listening on ").unwrap());
    let client = reqwest::Client::new();

    let ok = client.get(format!("{base}/ping")).header("X-EXECD-ACCESS-TOKEN", token);
    assert_eq!(ok.send().await.unwrap().status(), 200);
    let wrong = client.get(format!("{base}/ping")).header("X-EXECD-ACCESS-TOKEN", "tok-WRONG-guess");
    assert_eq!(wrong.send().await.unwrap().status(), 401);
    // A command that fails, so its error is logged; the token is in execd's own environment.
    let run = client
        .post(format!("{base}/command"))
        .header("X-EXECD-ACCESS-TOKEN", token)
        .json(&json!({"command": "echo $EXECD_ACCESS_TOKEN; exit 3"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!run.contains(token), "the token is stripped from children: {run}");
    // A request that fails at the edge is logged with its message.
    let bad = client
        .post(format!("{base}/command"))
        .header("X-EXECD-ACCESS-TOKEN", token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // The proxy forwards to execd itself with the token.
    let proxied = client
        .get(format!("{base}/proxy/{}/ping", base.rsplit(':').next().unwrap()))
        .header("X-EXECD-ACCESS-TOKEN", token)
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);

    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("execd ready"), "the log was written: {text}");
    assert!(!text.contains(token), "the token appears in the {format} log:\n{text}");
    assert!(!text.contains("tok-WRONG-guess"), "a rejected token appears in the {format} log");
    assert!(!text.contains('\u{1b}'), "colour codes in a {format} log that is not a terminal");
    text
}

#[tokio::test]
async fn issue19_pretty_logs_have_no_colour_off_a_terminal_and_no_token() {
    let text = log_of_a_busy_execd("pretty").await;
    assert!(text.lines().any(|l| l.contains(" INFO ") && l.contains("execd ready")), "{text}");
}

#[tokio::test]
async fn issue19_json_logs_are_one_object_per_line_and_carry_no_token() {
    let text = log_of_a_busy_execd("json").await;
    let mut ready = false;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
        ready |= v["message"] == "execd ready";
    }
    assert!(ready, "{text}");
}

#[test]
fn issue19_unknown_log_format_is_refused_with_the_choices() {
    let out = Command::new(env!("CARGO_BIN_EXE_execd"))
        .args(["--log-format", "xml", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pretty") && err.contains("json"), "{err}");
}
