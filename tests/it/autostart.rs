//! `autoStart: false` on the real Docker engine (design §15): the container is created with
//! execd injected and not started until `POST /v1/sandboxes/{id}/start`, across a sandboxd
//! restart too; and the plain `inspect` and `summary` diagnostics of a sandbox.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::sandboxd::{docker, sandbox_body, setup, Sandboxd};

/// A busybox sandbox created with `extensions["sandboxd.autoStart"]="false"`; its id.
async fn create_awaiting(d: &Sandboxd, image: &str) -> String {
    let mut body = sandbox_body(image, &["sleep", "infinity"]);
    body["extensions"] = json!({"sandboxd.autoStart": "false"});
    let created = d.create(body).await;
    assert_eq!(created["status"]["state"], "Pending", "{created}");
    assert_eq!(created["status"]["reason"], "AWAITING_START", "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// The engine's state of sandbox `id`'s container (`created`, `running`, …).
fn engine_state(id: &str) -> String {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=opensandbox.io/id={id}"),
        "--format",
        "{{.State}}",
    ])
    .trim()
    .to_owned()
}

async fn start(d: &Sandboxd, id: &str) -> (StatusCode, Value) {
    d.json(Method::POST, &format!("/v1/sandboxes/{id}/start"), None)
        .await
}

#[tokio::test]
async fn auto_start_false_waits_for_start_even_across_a_restart() {
    let Some((image, mut d)) = setup("busybox") else {
        return;
    };
    let id = create_awaiting(&d, image).await;
    assert_eq!(engine_state(&id), "created", "created, not started");
    let (status, info) = d.info(&id).await;
    assert_eq!(status, 200);
    assert_eq!(info["status"]["reason"], "AWAITING_START", "{info}");
    // Not running yet: no endpoint to reach, pause refused.
    let (status, body) = d
        .json(Method::POST, &format!("/v1/sandboxes/{id}/pause"), None)
        .await;
    assert_eq!(status, 409, "{body}");

    let (status, started) = start(&d, &id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["status"]["state"], "Running", "{started}");
    assert_eq!(engine_state(&id), "running");
    let execd = d.endpoint(&id, 44772, false).await;
    assert_eq!(execd.run("echo $OPENSANDBOX_ID").await, (format!("{id}\n"), 0));
    let (status, again) = start(&d, &id).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["code"], "SANDBOX::INVALID_STATE", "{again}");
    assert!(again["message"].as_str().unwrap().contains("Running"), "{again}");
    let (status, missing) = start(&d, "no-such-sandbox").await;
    assert_eq!(status, 404, "{missing}");

    // One still awaiting survives a restart of sandboxd, and starts after it.
    let waiting = create_awaiting(&d, image).await;
    d.stop();
    let d2 = Sandboxd::start_on(&d.data_dir.clone(), &d.run.clone());
    let (_, info) = d2.info(&waiting).await;
    assert_eq!(info["status"]["reason"], "AWAITING_START", "{info}");
    assert_eq!(engine_state(&waiting), "created");
    let (status, started) = start(&d2, &waiting).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let execd = d2.endpoint(&waiting, 44772, false).await;
    assert_eq!(execd.run("echo up").await, ("up\n".into(), 0));
}

#[tokio::test]
async fn plain_inspect_and_summary_describe_the_sandbox_and_its_container() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let created = d
        .create(sandbox_body(
            image,
            &["sh", "-c", "echo hello-from-entrypoint; sleep infinity"],
        ))
        .await;
    let id = created["id"].as_str().unwrap();
    let get = |kind: &'static str| {
        let d = &d;
        async move {
            let resp = d
                .req(Method::GET, &format!("/v1/sandboxes/{id}/diagnostics/{kind}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{kind}");
            assert_eq!(resp.headers()["deprecation"], "true");
            resp.text().await.unwrap()
        }
    };
    let inspect = get("inspect").await;
    for line in [
        format!("sandbox: {id}"),
        "state: Running".into(),
        "containerState: Running".into(),
        "limits: cpu=1 memory=536870912".into(),
        "usage: cpu ".into(),
    ] {
        assert!(inspect.contains(&line), "{line:?} missing from:\n{inspect}");
    }
    let summary = crate::util::eventually(30, "the entrypoint's output in the summary", async || {
        let s = get("summary").await;
        s.contains("hello-from-entrypoint").then_some(s)
    })
    .await;
    assert!(summary.starts_with("=== inspect ===\n"), "{summary}");
    assert!(
        summary.contains("=== events ===\n") && summary.contains("=== logs ===\n"),
        "{summary}"
    );
    let (status, body) = d
        .json(
            Method::GET,
            &format!("/v1/sandboxes/{id}/diagnostics/inspect?scope=all"),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
}
