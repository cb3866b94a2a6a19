//! Executions on the real Docker engine (§12–§13): the seed's handler example, handler
//! failures, prints beside results, coroutines, timeouts, an image without python, a caller
//! that leaves, batches (the seed's, stopOnError, concurrency, 101 jobs), `kill -9` of execd
//! and a sandboxd restart in the middle of a run.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::docker::docker_available;
use crate::sandboxd::{docker, image, sandbox_body, setup, Sandboxd};

/// A python sandbox (and its sandboxd), or `None` when Docker tests are skipped.
async fn python() -> Option<(Sandboxd, String)> {
    let (image, d) = setup("python")?;
    let created = d.create(sandbox_body(image, &["tail", "-f", "/dev/null"])).await;
    let id = created["id"].as_str().unwrap().to_owned();
    Some((d, id))
}

/// Submits with `?wait=60`; the answer must be 200 (ended).
async fn run(d: &Sandboxd, sandbox: &str, body: Value) -> Value {
    let (status, e) = d
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{sandbox}/executions?wait=60"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}: {e}");
    e
}

/// Polls `GET /v1/executions/{id}` until `done` holds.
async fn until(d: &Sandboxd, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, e) = d.json(Method::GET, &format!("/v1/executions/{id}"), None).await;
        assert_eq!(status, 200, "{e}");
        if done(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "{id} never {what}: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state(e: &Value) -> &str {
    e["status"]["state"].as_str().unwrap_or("")
}

#[tokio::test]
async fn the_seeds_handler_example_and_its_failures() {
    let Some((d, sb)) = python().await else { return };
    // Seed 004's curl example: submit, then status, then result.
    let (status, submitted) = d
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{sb}/executions"),
            Some(json!({
                "code": "def handler(event):\n    return {\"status\": \"ok\", \"data\": event}",
                "language": "python", "timeout": 30, "event": {"name": "Alice"}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    let id = submitted["id"].as_str().unwrap();
    assert!(id.starts_with("exec-"));
    assert_eq!(submitted["type"], "handler");
    until(&d, id, "ended", |e| state(e) == "Succeeded").await;
    let (status, by_seed_path) = d
        .json(Method::GET, &format!("/v1/executions/{id}/status"), None)
        .await;
    assert_eq!((status.as_u16(), state(&by_seed_path)), (200, "Succeeded"));
    let (status, result) = d
        .json(Method::GET, &format!("/v1/executions/{id}/result"), None)
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        result["result"],
        json!({"status": "ok", "data": {"name": "Alice"}})
    );
    assert_eq!(result["exitCode"], 0);

    // An exception: its name, value and traceback.
    let e = run(
        &d,
        &sb,
        json!({"code": "def handler(event):\n    return event['missing']\n", "event": {}}),
    )
    .await;
    assert_eq!(state(&e), "Failed", "{e}");
    assert_eq!(e["error"]["code"], "EXECUTION::HANDLER_ERROR");
    assert_eq!(e["error"]["name"], "KeyError");
    assert_eq!(e["error"]["value"], "'missing'");
    let traceback = e["error"]["traceback"].as_array().unwrap();
    assert!(
        traceback.iter().any(|l| l.as_str().unwrap().contains("KeyError")),
        "{e}"
    );

    // Prints never corrupt the result, even ones that look like it.
    let e = run(
        &d,
        &sb,
        json!({"code": "import sys\ndef handler(event):\n    print('{\"ok\": false, \"result\": 1}')\n    print('to stderr', file=sys.stderr)\n    return [1, 2]\n", "event": null}),
    )
    .await;
    assert_eq!((state(&e), &e["result"]), ("Succeeded", &json!([1, 2])), "{e}");
    assert_eq!(e["stdout"], "{\"ok\": false, \"result\": 1}\n");
    assert_eq!(e["stderr"], "to stderr\n");

    // A coroutine, with the context argument.
    let e = run(
        &d,
        &sb,
        json!({"code": "import asyncio\nasync def main(event, context):\n    await asyncio.sleep(0.01)\n    return {'n': event['n'] * 2, 'id': context['executionId']}\n",
               "handler": "main", "event": {"n": 21}}),
    )
    .await;
    assert_eq!(e["result"]["n"], 42, "{e}");
    assert_eq!(e["result"]["id"], e["id"]);

    // A missing handler, and a result that is not JSON.
    let e = run(&d, &sb, json!({"code": "x = 1\n", "event": {}})).await;
    assert_eq!(e["error"]["code"], "EXECUTION::HANDLER_NOT_FOUND", "{e}");
    let e = run(
        &d,
        &sb,
        json!({"code": "def handler(event):\n    return {1, 2}\n", "event": {}}),
    )
    .await;
    assert_eq!(e["error"]["code"], "EXECUTION::RESULT_NOT_SERIALIZABLE", "{e}");

    // The timeout: interrupted, TimedOut.
    let e = run(
        &d,
        &sb,
        json!({"code": "import time\ndef handler(event):\n    time.sleep(60)\n", "event": {}, "timeout": 1}),
    )
    .await;
    assert_eq!(state(&e), "TimedOut", "{e}");
    assert_eq!(e["status"]["reason"], "EXECUTION::TIMEOUT");

    // Commands and code: exit codes, stdout, the last expression's text.
    let e = run(
        &d,
        &sb,
        json!({"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]}),
    )
    .await;
    assert_eq!((state(&e), &e["exitCode"]), ("Failed", &json!(3)), "{e}");
    assert_eq!(
        (e["stdout"].as_str(), e["stderr"].as_str()),
        (Some("out\n"), Some("err\n"))
    );
    let e = run(&d, &sb, json!({"code": "21 * 2", "type": "code"})).await;
    assert_eq!((state(&e), e["text"].as_str()), ("Succeeded", Some("42")), "{e}");

    // A result before the end is 409 NOT_FINISHED naming the state.
    let (_, slow) = d
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{sb}/executions"),
            Some(json!({"command": "sleep 30"})),
        )
        .await;
    let slow = slow["id"].as_str().unwrap().to_owned();
    until(&d, &slow, "running", |e| state(e) == "Running").await;
    let (status, body) = d
        .json(Method::GET, &format!("/v1/executions/{slow}/result"), None)
        .await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (409, Some("EXECUTION::NOT_FINISHED"))
    );
    assert!(body["message"].as_str().unwrap().contains("Running"), "{body}");
    let (status, _) = d
        .json(Method::DELETE, &format!("/v1/executions/{slow}"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let e = until(&d, &slow, "cancelled", |e| state(e) != "Running").await;
    assert_eq!(state(&e), "Cancelled", "{e}");
    let (status, body) = d
        .json(Method::DELETE, &format!("/v1/executions/{slow}"), None)
        .await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (409, Some("EXECUTION::ALREADY_FINISHED"))
    );
}

#[tokio::test]
async fn an_image_without_python_is_runtime_not_found() {
    if !docker_available() {
        return;
    }
    let busybox = image("busybox");
    let d = Sandboxd::start();
    let created = d.create(sandbox_body(busybox, &["sleep", "600"])).await;
    let sb = created["id"].as_str().unwrap();
    let e = run(
        &d,
        sb,
        json!({"code": "def handler(event):\n    return 1\n", "event": {}}),
    )
    .await;
    assert_eq!(state(&e), "Failed", "{e}");
    assert_eq!(e["error"]["code"], "EXECUTION::RUNTIME_NOT_FOUND");
    assert_eq!(e["exitCode"], 127);
}

#[tokio::test]
async fn the_result_is_there_after_the_caller_left() {
    let Some((d, sb)) = python().await else { return };
    // The caller gives up 200 ms into a long wait: sandboxd runs on without it.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/v1/sandboxes/{sb}/executions?wait=60", d.base))
        .header("OPEN-SANDBOX-API-KEY", &d.key)
        .json(&json!({"command": "sleep 1; echo done"}))
        .send()
        .await;
    assert!(gone.is_err(), "the caller left before the answer");
    let (_, list) = d
        .json(Method::GET, &format!("/v1/executions?sandboxId={sb}"), None)
        .await;
    let id = list["items"][0]["id"].as_str().unwrap().to_owned();
    let (status, result) = d
        .json(Method::GET, &format!("/v1/executions/{id}/result?wait=30"), None)
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        (state(&result), result["stdout"].as_str()),
        ("Succeeded", Some("done\n"))
    );
    // Its events replay, resumable after an id.
    let resp = d
        .req(Method::GET, &format!("/v1/executions/{id}/events"))
        .header("Last-Event-ID", "1")
        .send()
        .await
        .unwrap();
    let events = crate::util::parse_sse(&resp.text().await.unwrap());
    assert_eq!(crate::util::kinds(&events), ["stdout", "execution_complete"]);
}

#[tokio::test]
async fn batches_the_seeds_example_stop_on_error_concurrency_and_limits() {
    let Some((d, sb)) = python().await else { return };
    let path = format!("/v1/sandboxes/{sb}/executions/batch?wait=60");
    // Seed 002's example (the adapter converts its ms to seconds).
    let (status, batch) = d
        .json(
            Method::POST,
            &path,
            Some(json!({"jobs": [
                {"id": "job-1", "code": "2+2", "timeout": 5},
                {"id": "job-2", "code": "3*3", "timeout": 5}
            ]})),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let texts: Vec<_> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["jobId"].as_str().unwrap(),
                r["text"].as_str().unwrap_or(""),
                r["success"].as_bool(),
            )
        })
        .collect();
    assert_eq!(texts, [("job-1", "4", Some(true)), ("job-2", "9", Some(true))]);
    let (status, again) = d
        .json(
            Method::GET,
            &format!("/v1/executions/batches/{}", batch["batchId"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!((status.as_u16(), &again["succeeded"]), (200, &json!(2)));
    // Code jobs share one fresh context: a later job sees an earlier definition.
    let (_, shared) = d
        .json(
            Method::POST,
            &path,
            Some(json!({"jobs": [{"id": "a", "code": "x = 20"}, {"id": "b", "code": "x + 22"}]})),
        )
        .await;
    assert_eq!(shared["results"][1]["text"], "42", "{shared}");

    // stopOnError: the third job never starts.
    let (_, stopped) = d
        .json(
            Method::POST,
            &path,
            Some(json!({"stopOnError": true, "jobs": [
                {"id": "1", "command": "true"}, {"id": "2", "command": "exit 1"}, {"id": "3", "command": "echo never"}
            ]})),
        )
        .await;
    let states: Vec<_> = stopped["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"]["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["Succeeded", "Failed", "Cancelled"], "{stopped}");

    // 4 × sleep 1 with concurrency 4 run together: every one starts before any ends.
    let (status, parallel) = d
        .json(
            Method::POST,
            &path,
            Some(json!({"concurrency": 4, "jobs": (1..=4).map(|i| json!({"id": format!("s{i}"), "command": "sleep 1"})).collect::<Vec<_>>()})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &parallel["succeeded"]),
        (200, &json!(4)),
        "{parallel}"
    );
    let times = |key: &str| -> Vec<String> {
        parallel["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[key].as_str().unwrap().to_owned())
            .collect()
    };
    let (started, finished) = (times("startedAt"), times("finishedAt"));
    let last_start = started.iter().max().unwrap();
    let first_end = finished.iter().min().unwrap();
    assert!(
        last_start < first_end,
        "they overlap: started {started:?}, finished {finished:?}"
    );

    // 101 jobs: 400, and nothing was created.
    let jobs: Vec<_> = (0..101)
        .map(|i| json!({"id": format!("j{i}"), "command": "true"}))
        .collect();
    let before = d
        .json(
            Method::GET,
            &format!("/v1/executions?sandboxId={sb}&pageSize=1"),
            None,
        )
        .await
        .1["pagination"]["totalItems"]
        .clone();
    let (status, body) = d.json(Method::POST, &path, Some(json!({"jobs": jobs}))).await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (400, Some("SANDBOX::INVALID_PARAMETER")),
        "{body}"
    );
    let after = d
        .json(
            Method::GET,
            &format!("/v1/executions?sandboxId={sb}&pageSize=1"),
            None,
        )
        .await
        .1["pagination"]["totalItems"]
        .clone();
    assert_eq!(before, after);
}

#[tokio::test]
async fn bad_requests_get_their_codes() {
    let Some((d, sb)) = python().await else { return };
    let path = format!("/v1/sandboxes/{sb}/executions");
    for (body, status, code) in [
        (
            json!({"code": "x", "command": "y"}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            json!({"type": "command", "code": "x"}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            json!({"type": "code", "code": "x", "event": {}}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            json!({"code": "x", "handler": "1bad"}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            json!({"command": "x", "timeout": 3601}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            json!({"command": "x", "contextId": "c"}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (json!({"comand": "x"}), 400, "SANDBOX::INVALID_PARAMETER"),
        (
            json!({"code": "x", "language": "cobol"}),
            400,
            "EXECUTION::UNSUPPORTED_LANGUAGE",
        ),
        (
            json!({"code": "x".repeat(1 << 20)}),
            413,
            "SANDBOX::PAYLOAD_TOO_LARGE",
        ),
    ] {
        let (got, answer) = d.json(Method::POST, &path, Some(body.clone())).await;
        assert_eq!(
            (got.as_u16(), answer["code"].as_str()),
            (status, Some(code)),
            "{answer}"
        );
    }
    let (got, answer) = d
        .json(
            Method::POST,
            "/v1/sandboxes/nope/executions",
            Some(json!({"command": "true"})),
        )
        .await;
    assert_eq!(
        (got.as_u16(), answer["code"].as_str()),
        (404, Some("SANDBOX::NOT_FOUND"))
    );
    let (got, answer) = d.json(Method::GET, "/v1/executions/exec-nope", None).await;
    assert_eq!(
        (got.as_u16(), answer["code"].as_str()),
        (404, Some("EXECUTION::NOT_FOUND"))
    );
    let (got, _) = d
        .json(Method::POST, &format!("/v1/sandboxes/{sb}/pause"), None)
        .await;
    assert_eq!(got, StatusCode::ACCEPTED);
    let (got, answer) = d
        .json(Method::POST, &path, Some(json!({"command": "true"})))
        .await;
    assert_eq!(
        (got.as_u16(), answer["code"].as_str()),
        (409, Some("DOCKER::SANDBOX_NOT_RUNNING")),
        "{answer}"
    );
    assert_eq!(d.state(&sb).await, "Paused", "not resumed");
}

#[tokio::test]
async fn a_killed_execd_is_lost_within_the_bound() {
    if !docker_available() {
        return;
    }
    let python = image("python");
    let data = tempfile::tempdir().unwrap();
    let d = Sandboxd::start_with(
        data.path(),
        &crate::util::marker(),
        &["--execution-lost-after", "3"],
    );
    let created = d.create(sandbox_body(python, &["tail", "-f", "/dev/null"])).await;
    let sb = created["id"].as_str().unwrap();
    let (_, e) = d
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{sb}/executions"),
            Some(json!({"command": "sleep 120", "timeout": 300})),
        )
        .await;
    let id = e["id"].as_str().unwrap().to_owned();
    until(&d, &id, "running", |e| state(e) == "Running").await;
    // execd is the container's init: kill -9 of it from the host ends the container.
    let container = crate::sandboxd::containers_of(&d.run).pop().unwrap();
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &container]);
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let e = until(&d, &id, "lost", |e| state(e) != "Running").await;
    assert_eq!(state(&e), "Lost", "{e}");
    assert_eq!(e["status"]["reason"], "EXECUTION::EXECUTOR_LOST");
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "{:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn a_restarted_sandboxd_re_attaches_and_the_output_is_complete() {
    if !docker_available() {
        return;
    }
    let python = image("python");
    let data = tempfile::tempdir().unwrap();
    let run_marker = crate::util::marker();
    let mut d = Sandboxd::start_on(data.path(), &run_marker);
    let created = d.create(sandbox_body(python, &["tail", "-f", "/dev/null"])).await;
    let sb = created["id"].as_str().unwrap().to_owned();
    let (_, e) = d
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{sb}/executions"),
            Some(json!({"command": "for i in 1 2 3 4 5 6 7 8; do echo line $i; sleep 0.4; done"})),
        )
        .await;
    let id = e["id"].as_str().unwrap().to_owned();
    // Some output is in (read live from the events), the run goes on.
    until(&d, &id, "running", |e| state(e) == "Running").await;
    let mut events = d
        .req(Method::GET, &format!("/v1/executions/{id}/events"))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("line 2") {
        let chunk = events.chunk().await.unwrap().expect("events before the end");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(events);
    d.kill9();
    let d = Sandboxd::start_on(data.path(), &run_marker);
    let (status, result) = d
        .json(Method::GET, &format!("/v1/executions/{id}/result?wait=30"), None)
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(state(&result), "Succeeded", "{result}");
    let expected: String = (1..=8).map(|i| format!("line {i}\n")).collect();
    assert_eq!(result["stdout"].as_str().unwrap(), expected);
}

#[tokio::test]
async fn a_one_shot_execution_makes_and_deletes_its_sandbox() {
    let Some((image, d)) = setup("python") else { return };
    let (status, t) = d
        .json(
            Method::POST,
            "/v1/templates",
            Some(json!({"name": "one-shot-py", "spec": {"image": image, "command": ["tail", "-f", "/dev/null"], "ttl": 600}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    let (status, e) = d
        .json(
            Method::POST,
            "/v1/executions?wait=60",
            Some(json!({"templateId": "one-shot-py", "code": "def handler(event):\n    return event['n'] + 1\n", "event": {"n": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!((state(&e), &e["result"]), ("Succeeded", &json!(2)));
    let sandbox = e["sandboxId"].as_str().expect("the sandbox it ran in");
    // Deleted after the run (the execution outlives it).
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.info(sandbox).await.0 != StatusCode::NOT_FOUND {
        assert!(Instant::now() < deadline, "the one-shot sandbox was not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = d
        .json(
            Method::GET,
            &format!("/v1/executions/{}", e["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200);
    for (body, code, want) in [
        (
            json!({"templateId": "no-such-template", "command": "true"}),
            404,
            "TEMPLATE::NOT_FOUND",
        ),
        (
            json!({"poolRef": {"name": "p"}, "command": "true"}),
            404,
            "POOL::NOT_FOUND",
        ),
        (
            json!({"poolRef": "p", "templateId": "one-shot-py", "command": "true"}),
            400,
            "SANDBOX::INVALID_PARAMETER",
        ),
        (json!({"command": "true"}), 400, "SANDBOX::INVALID_PARAMETER"),
    ] {
        let (status, answer) = d.json(Method::POST, "/v1/executions", Some(body)).await;
        assert_eq!(
            (status.as_u16(), answer["code"].as_str()),
            (code, Some(want)),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_one_shot_execution_from_a_pool_releases_its_member_and_a_full_pool_is_429() {
    if !docker_available() {
        return;
    }
    let python = image("python");
    let data = tempfile::tempdir().unwrap();
    let d = Sandboxd::start_with(
        data.path(),
        &crate::util::marker(),
        &["--pool-acquire-timeout", "1"],
    );
    let pool = json!({
        "name": "exec-pool",
        "template": {
            "metadata": {"labels": {crate::sandboxd::RUN_LABEL: d.run}},
            "spec": {"containers": [{"name": "sandbox", "image": python, "command": ["tail", "-f", "/dev/null"]}]},
        },
        "capacitySpec": {"bufferMin": 1, "bufferMax": 1, "poolMin": 1, "poolMax": 1},
    });
    let (status, body) = d.json(Method::POST, "/v1/pools", Some(pool)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let available = || async {
        let (_, p) = d.json(Method::GET, "/v1/pools/exec-pool", None).await;
        p["status"]["available"] == 1
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !available().await {
        assert!(Instant::now() < deadline, "the pool never warmed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, e) = d
        .json(
            Method::POST,
            "/v1/executions?wait=60",
            Some(json!({"poolRef": "exec-pool", "command": "echo pooled"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!((state(&e), e["stdout"].as_str()), ("Succeeded", Some("pooled\n")));
    // Released after the run: the pool has a member idle again.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !available().await {
        assert!(Instant::now() < deadline, "the member never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The only member busy: the next one-shot is 429 with Retry-After.
    let (status, busy) = d
        .json(
            Method::POST,
            "/v1/executions",
            Some(json!({"poolRef": {"name": "exec-pool"}, "command": "sleep 60"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{busy}");
    let resp = d
        .req(Method::POST, "/v1/executions")
        .json(&json!({"poolRef": "exec-pool", "command": "true"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "POOL::CAPACITY_EXHAUSTED");
    let (status, _) = d
        .json(
            Method::DELETE,
            &format!("/v1/executions/{}", busy["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn isolated_executions_run_in_a_jail_of_their_own() {
    let Some((image, d)) = setup("python") else { return };
    let mut body = sandbox_body(image, &["tail", "-f", "/dev/null"]);
    body["extensions"] = json!({"bootstrap.execd.isolation": "enable"});
    let sb = d.create(body).await["id"].as_str().unwrap().to_owned();

    // A command: its own hostname, the sandbox's files read-only, a private /tmp.
    let e = run(
        &d,
        &sb,
        json!({"command": "hostname; touch /etc/x 2>/dev/null && echo wrote || echo read-only; echo mine > /tmp/mine; cat /tmp/mine; echo $GREETING",
               "isolated": true, "envs": {"GREETING": "hi"}, "cwd": "/tmp"}),
    )
    .await;
    assert_eq!(state(&e), "Succeeded", "{e}");
    assert_eq!(e["stdout"], "sandbox\nread-only\nmine\nhi\n", "{e}");
    let outside = run(
        &d,
        &sb,
        json!({"command": "test -e /tmp/mine && echo leaked || echo clean; hostname"}),
    )
    .await;
    assert!(
        outside["stdout"].as_str().unwrap().starts_with("clean\n"),
        "{outside}"
    );
    assert_ne!(
        outside["stdout"], "clean\nsandbox\n",
        "the plain run is not jailed: {outside}"
    );

    // argv, quoted as given.
    let e = run(
        &d,
        &sb,
        json!({"argv": ["printf", "%s|", "a b", "it's"], "isolated": true}),
    )
    .await;
    // (execd's events carry whole lines, so the last one ends with a newline here too.)
    assert_eq!(e["stdout"], "a b|it's|\n", "{e}");

    // The seed's handler, isolated: the result comes back through its bound directory.
    let e = run(
        &d,
        &sb,
        json!({"code": "def handler(event):\n    print('noise')\n    return {\"status\": \"ok\", \"data\": event}",
               "event": {"name": "Alice"}, "isolated": true}),
    )
    .await;
    assert_eq!(state(&e), "Succeeded", "{e}");
    assert_eq!(
        e["result"],
        json!({"status": "ok", "data": {"name": "Alice"}}),
        "{e}"
    );
    assert_eq!(e["stdout"], "noise\n", "{e}");

    // A timeout ends the session, and with it the run.
    let e = run(
        &d,
        &sb,
        json!({"code": "import time\ndef handler(event):\n    time.sleep(600)", "event": {}, "isolated": true, "timeout": 1}),
    )
    .await;
    assert_eq!(state(&e), "TimedOut", "{e}");

    // Every run's session is gone once it ended.
    let execd = d.endpoint(&sb, 44772, false).await;
    let sessions: Value = execd
        .req(Method::GET, "/v1/isolated/sessions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sessions["sessions"], json!([]), "{sessions}");

    // Code runs in a context, which a session has not; a sandbox without the extension says why.
    let (status, err) = d
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{sb}/executions"),
            Some(json!({"code": "1 + 1", "isolated": true})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let plain = d.create(sandbox_body(image, &["tail", "-f", "/dev/null"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, err) = d
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{plain}/executions"),
            Some(json!({"command": "true", "isolated": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "EXECUTION::ISOLATION_UNAVAILABLE", "{err}");
}

/// The host's node (a Debian package on every machine this project builds on), bound into a
/// python sandbox read-only: the JavaScript runner end to end. Without it, the same handler
/// is `EXECUTION::RUNTIME_NOT_FOUND`.
#[tokio::test]
async fn a_javascript_handler_runs_where_node_is() {
    if !docker_available() {
        return;
    }
    let node = std::fs::canonicalize(
        String::from_utf8(
            std::process::Command::new("sh")
                .args(["-c", "command -v node"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim(),
    )
    .expect("node is needed on this host");
    let node = node.to_str().unwrap();
    let data = tempfile::tempdir().unwrap();
    let d = Sandboxd::start_with(
        data.path(),
        &format!("js-{}", std::process::id()),
        &["--allow-host-path", node],
    );
    let handler = json!({
        "language": "javascript",
        "code": "exports.handler = async (event, context) => {\n  console.log('side');\n  return {status: 'ok', data: event, via: context.sandboxId.length > 0};\n};",
        "event": {"name": "Alice"},
    });
    let mut body = sandbox_body(image("python"), &["tail", "-f", "/dev/null"]);
    body["volumes"] = json!([{"name": "node", "host": {"path": node}, "mountPath": "/usr/local/bin/node", "readOnly": true}]);
    let with = d.create(body).await["id"].as_str().unwrap().to_owned();
    let e = run(&d, &with, handler.clone()).await;
    assert_eq!(state(&e), "Succeeded", "{e}");
    assert_eq!(
        e["result"],
        json!({"status": "ok", "data": {"name": "Alice"}, "via": true}),
        "{e}"
    );
    assert_eq!(e["stdout"], "side\n", "{e}");

    let without = d
        .create(sandbox_body(image("python"), &["tail", "-f", "/dev/null"]))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = run(&d, &without, handler).await;
    assert_eq!(state(&e), "Failed", "{e}");
    assert_eq!(e["status"]["reason"], "EXECUTION::RUNTIME_NOT_FOUND", "{e}");
}
