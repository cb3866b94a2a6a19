//! sandboxd's diagnostics on the real Docker engine (design §14): every scope of the
//! diagnostics routes, the event journal fed by the engine's events (exit codes, OOM kills),
//! the containers view with its ownership, and log follows.

use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::sandboxd::{as_bearer, mint, sandbox_body, setup, Sandboxd, RUN_LABEL};
use crate::util::eventually;

/// An entrypoint that prints, waits until `/tmp/go` exists, then runs `then`.
fn gated(then: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        // The pause lets the command that made /tmp/go answer before the sandbox ends.
        format!("echo waiting-for-go; while [ ! -f /tmp/go ]; do sleep 0.1; done; sleep 0.5; {then}"),
    ]
}

async fn create(d: &Sandboxd, image: &str, entrypoint: &[String], memory: &str) -> String {
    let argv: Vec<&str> = entrypoint.iter().map(String::as_str).collect();
    let mut body = sandbox_body(image, &argv);
    body["resourceLimits"]["memory"] = json!(memory);
    // No warm Jupyter kernel: only the entrypoint uses the memory.
    body["env"] = json!({"EXECD_KERNEL_POOL": "0"});
    d.create(body).await["id"].as_str().unwrap().to_owned()
}

/// Runs `command` in the sandbox through its execd (the server proxy).
async fn run(d: &Sandboxd, id: &str, command: &str) {
    let execd = d.endpoint(id, 44772, true).await;
    let (_, code) = execd.run(command).await;
    assert_eq!(code, 0, "{command}");
}

/// The sandbox's journal.
async fn journal(d: &Sandboxd, id: &str) -> Vec<Value> {
    let (status, page) = d
        .json(
            Method::GET,
            &format!("/v1/sandboxes/{id}/events?limit=1000"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

/// Waits until the journal has an event of `kind` from `source`; returns it.
async fn journalled(d: &Sandboxd, id: &str, kind: &str, source: &str) -> Value {
    eventually(30, &format!("a {kind} event from {source}"), async || {
        journal(d, id)
            .await
            .into_iter()
            .find(|e| e["type"] == kind && e["source"] == source)
    })
    .await
}

async fn diagnostic(d: &Sandboxd, id: &str, kind: &str, scope: &str) -> (StatusCode, Value) {
    d.json(
        Method::GET,
        &format!("/v1/sandboxes/{id}/diagnostics/{kind}?scope={scope}"),
        None,
    )
    .await
}

#[tokio::test]
async fn a_container_that_prints_then_exits_3_shows_its_output_and_exited_3() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let id = create(&d, image, &gated("echo printed-before-exit; exit 3"), "128Mi").await;
    run(&d, &id, "touch /tmp/go").await;

    let exited = journalled(&d, &id, "Exited", "docker").await;
    assert_eq!(exited["exitCode"], 3, "{exited}");
    assert_eq!(exited["reason"], "Error", "{exited}");
    let (status, events) = diagnostic(&d, &id, "events", "runtime").await;
    assert_eq!(status, 200, "{events}");
    let content = events["content"].as_str().unwrap();
    assert!(content.contains(" Exited(3) [docker] "), "{content}");
    assert!(content.contains(" Started [docker] "), "{content}");

    let (status, logs) = diagnostic(&d, &id, "logs", "container").await;
    assert_eq!(status, 200, "{logs}");
    let content = logs["content"].as_str().unwrap();
    assert!(content.contains("waiting-for-go\n"), "{content}");
    assert!(content.contains("printed-before-exit\n"), "{content}");
    // With timestamps: each line starts with one.
    let first = content.lines().next().unwrap();
    assert!(
        execd::wire::time::parse_ms(first.split(' ').next().unwrap()).is_some(),
        "{first}"
    );
    assert_eq!(
        logs["contentLength"].as_u64(),
        Some(content.len() as u64),
        "{logs}"
    );

    let (status, container) = d.json(Method::GET, &format!("/v1/containers/{id}"), None).await;
    assert_eq!(status, 200, "{container}");
    assert_eq!(
        (
            &container["state"],
            &container["exitCode"],
            &container["oomKilled"]
        ),
        (&json!("Exited"), &json!(3), &json!(false)),
        "{container}"
    );
    assert_eq!(container["sandboxId"], json!(id));
    assert_eq!(container["role"], "sandbox");
    assert_eq!(container["runtime"], "docker");
    assert!(
        container.get("usage").is_none(),
        "no usage of a stopped container: {container}"
    );
    let (status, by_status) = d
        .json(Method::GET, &format!("/v1/containers/{id}/status"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(by_status["id"], container["id"]);
    let resp = d
        .req(Method::GET, &format!("/v1/containers/{id}/logs?tail=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "printed-before-exit\n");
}

#[tokio::test]
async fn an_oom_killed_container_shows_oom_killed_in_its_events() {
    let Some((image, d)) = setup("python") else {
        return;
    };
    let id = create(
        &d,
        image,
        &gated("exec python3 -c 'b = bytearray(256 << 20); print(len(b))'"),
        "64Mi",
    )
    .await;
    run(&d, &id, "touch /tmp/go").await;
    let oom = journalled(&d, &id, "OOMKilled", "docker").await;
    assert_eq!(oom["reason"], "OOMKilled", "{oom}");
    let exited = journalled(&d, &id, "Exited", "docker").await;
    assert_eq!(exited["exitCode"], 137, "{exited}");
    let (status, events) = diagnostic(&d, &id, "events", "all").await;
    assert_eq!(status, 200, "{events}");
    assert!(
        events["content"]
            .as_str()
            .unwrap()
            .contains(" OOMKilled [docker] "),
        "{events}"
    );
    let (_, container) = d.json(Method::GET, &format!("/v1/containers/{id}"), None).await;
    assert_eq!(container["oomKilled"], true, "{container}");
    let (_, sandbox) = d.info(&id).await;
    assert_eq!(sandbox["status"]["state"], "Failed", "{sandbox}");
}

#[tokio::test]
async fn every_diagnostics_scope_answers_and_an_unknown_one_is_400() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let entrypoint = ["sh", "-c", "echo entrypoint-says-hello; exec sleep 100000"].map(String::from);
    let id = create(&d, image, &entrypoint, "128Mi").await;
    // The runtime's Started event reaches the journal through the engine's event stream.
    journalled(&d, &id, "Started", "docker").await;

    let content = async |kind: &str, scope: &str| {
        let (status, body) = diagnostic(&d, &id, kind, scope).await;
        assert_eq!(status, 200, "{kind}/{scope}: {body}");
        assert_eq!(
            (
                body["kind"].as_str(),
                body["scope"].as_str(),
                body["delivery"].as_str()
            ),
            (Some(kind), Some(scope), Some("inline"))
        );
        (body["content"].as_str().unwrap().to_owned(), body)
    };
    let (container, _) = eventually(10, "the entrypoint's output", async || {
        let got = content("logs", "container").await;
        got.0.contains("entrypoint-says-hello").then_some(got)
    })
    .await;
    assert!(
        !container.contains("execd ready"),
        "execd's own log is not the entrypoint's: {container}"
    );
    assert!(
        !container.starts_with("entrypoint-says-hello"),
        "timestamped: {container}"
    );
    let (status, raw) = d
        .json(
            Method::GET,
            &format!("/v1/sandboxes/{id}/diagnostics/logs?scope=container&timestamps=false"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{raw}");
    let raw = raw["content"].as_str().unwrap();
    assert!(raw.lines().any(|l| l == "entrypoint-says-hello"), "{raw}");
    let (lifecycle, _) = content("logs", "lifecycle").await;
    assert!(lifecycle.contains("sandbox running"), "{lifecycle}");
    let (process, body) = content("logs", "process").await;
    assert!(process.contains("execd ready"), "{process} {body}");
    assert!(body.get("warnings").is_none(), "{body}");
    let (all, _) = content("logs", "all").await;
    for header in ["=== container ===", "=== lifecycle ===", "=== process ==="] {
        assert!(all.contains(header), "{all}");
    }
    assert!(
        all.contains("entrypoint-says-hello") && all.contains("execd ready"),
        "{all}"
    );

    let (ours, _) = content("events", "lifecycle").await;
    assert!(ours.contains(" Created [sandboxd] create requested"), "{ours}");
    assert!(ours.contains(" Ready [sandboxd] running"), "{ours}");
    assert!(!ours.contains("[docker]"), "{ours}");
    let (runtime, _) = content("events", "runtime").await;
    assert!(runtime.contains(" Started [docker] "), "{runtime}");
    assert!(!runtime.contains("[sandboxd]"), "{runtime}");
    let (every, _) = content("events", "all").await;
    assert!(
        every.contains("[docker]") && every.contains("[sandboxd]"),
        "{every}"
    );
    let (tail, body) = d
        .json(
            Method::GET,
            &format!("/v1/sandboxes/{id}/diagnostics/events?scope=all&tail=1"),
            None,
        )
        .await;
    assert_eq!(tail, 200);
    assert_eq!(body["content"].as_str().unwrap().lines().count(), 1, "{body}");
    assert_eq!(body["truncated"], true);

    for (kind, scope, listed) in [
        ("logs", "runtime", "container, lifecycle, process, all"),
        ("logs", "network", "container, lifecycle, process, all"),
        ("events", "container", "lifecycle, runtime, all"),
        ("events", "process", "lifecycle, runtime, all"),
    ] {
        let (status, err) = diagnostic(&d, &id, kind, scope).await;
        assert_eq!(status, 400, "{kind}/{scope}: {err}");
        assert_eq!(err["code"], "DIAGNOSTICS_SCOPE_UNSUPPORTED", "{err}");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.ends_with(&format!("supported scopes: {listed}")),
            "{message}"
        );
    }
}

/// Reads `body` into `seen` until `seen` holds `needle` (30 s at most).
async fn read_until<S>(seen: &mut String, body: &mut S, needle: &str)
where
    S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
{
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while !seen.contains(needle) {
            let chunk = body.next().await.expect("the follow ended early").unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(found.is_ok(), "no {needle:?} in {seen:?}");
}

#[tokio::test]
async fn follows_deliver_what_comes_after_the_request() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let entrypoint = ["sh", "-c", "echo before-the-follow; exec sleep 100000"].map(String::from);
    let id = create(&d, image, &entrypoint, "128Mi").await;

    // The container's output: what is there, then a line printed after the request.
    let resp = d
        .req(Method::GET, &format!("/v1/containers/{id}/logs?follow=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    read_until(&mut seen, &mut body, "before-the-follow\n").await;
    run(&d, &id, "echo printed-after-the-request > /proc/1/fd/1").await;
    read_until(&mut seen, &mut body, "printed-after-the-request\n").await;

    // The journal as SSE: what is there, then events as they happen, until the delete.
    let resp = d
        .req(Method::GET, &format!("/v1/sandboxes/{id}/events?follow=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut events = resp.bytes_stream();
    let mut sse = String::new();
    read_until(&mut sse, &mut events, "\"type\":\"Ready\"").await;
    let (status, _) = d
        .json(Method::POST, &format!("/v1/sandboxes/{id}/pause"), None)
        .await;
    assert_eq!(status, 202);
    read_until(&mut sse, &mut events, "\"type\":\"Paused\",\"message\":\"paused").await;
    // Resumable: after the last id seen, only what followed it.
    let last_id: i64 = sse
        .lines()
        .filter_map(|l| l.strip_prefix("id: ")?.parse().ok())
        .max()
        .unwrap();
    let (status, later) = d
        .json(
            Method::GET,
            &format!("/v1/sandboxes/{id}/events?since={last_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(later["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["seq"].as_i64().unwrap() > last_id));
    let resumed = d
        .req(Method::GET, &format!("/v1/sandboxes/{id}/events"))
        .header("accept", "text/event-stream")
        .header("last-event-id", (last_id - 1).to_string())
        .send()
        .await
        .unwrap();
    let mut resumed = resumed.bytes_stream();
    let mut again = String::new();
    read_until(&mut again, &mut resumed, &format!("id: {last_id}\n")).await;
    assert!(!again.contains(&format!("id: {}\n", last_id - 1)), "{again}");

    let (status, _) = d.json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(status, 204);
    read_until(&mut sse, &mut events, "\"type\":\"Deleted\"").await;
    // The stream ends after the delete.
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = events.next().await {
            sse.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    })
    .await;
    assert!(
        rest.is_ok(),
        "the journal's stream did not end after Deleted: {sse}"
    );
    // The journal outlives the sandbox.
    let kept = journal(&d, &id).await;
    assert_eq!(kept.last().unwrap()["type"], "Deleted");
}

#[tokio::test]
async fn a_user_lists_only_their_own_containers() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let alice = mint(&d, "alice", "user").await;
    let bob = mint(&d, "bob", "user").await;
    let mut ids = Vec::new();
    for token in [&alice, &bob] {
        let mut body = sandbox_body(image, &["sleep", "3600"]);
        body["metadata"][RUN_LABEL] = json!(d.run);
        let (status, created, _) = as_bearer(&d, token, Method::POST, "/v1/sandboxes", Some(body)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let (hers, his) = (&ids[0], &ids[1]);

    let (status, list, _) = as_bearer(&d, &alice, Method::GET, "/v1/containers", None).await;
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["sandboxId"], json!(hers));
    assert_eq!(list["pagination"]["totalItems"], 1);
    let container_id = items[0]["id"].as_str().unwrap().to_owned();
    assert!(container_id.len() >= 12);

    // Her container by its id, with a usage sample while it runs.
    let (status, one, _) = as_bearer(
        &d,
        &alice,
        Method::GET,
        &format!("/v1/containers/{container_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["state"], "Running");
    assert!(one["usage"]["memoryBytes"].as_u64().unwrap() > 0, "{one}");
    assert_eq!(one["usage"]["memoryLimitBytes"], 512 << 20, "{one}");
    assert_eq!(one["resources"]["cpu"], "1", "{one}");

    // His is not found for her, by any of its names; the admin sees both.
    let (_, his_list, _) = as_bearer(&d, &bob, Method::GET, "/v1/containers", None).await;
    let his_container = his_list["items"][0]["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/v1/containers/{his}"),
        format!("/v1/containers/{his_container}"),
        format!("/v1/containers/{his_container}/logs"),
        format!("/v1/containers/{}", &his_container[..12]),
        format!("/v1/sandboxes/{his}/events"),
    ] {
        let (status, err, _) = as_bearer(&d, &alice, Method::GET, &path, None).await;
        assert_eq!(status, 404, "{path}: {err}");
    }
    let (status, err) = d.json(Method::GET, "/v1/containers/abc", None).await;
    assert_eq!(status, 400, "{err}");
    let (status, all) = d
        .json(Method::GET, "/v1/containers?state=running&pageSize=200", None)
        .await;
    assert_eq!(status, 200, "{all}");
    let sandboxes: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["sandboxId"].as_str())
        .collect();
    assert!(
        sandboxes.contains(&hers.as_str()) && sandboxes.contains(&his.as_str()),
        "{all}"
    );
}
