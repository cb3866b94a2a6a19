//! Pause modes, snapshots and forks on the real Docker engine (design §11): seed 001's
//! `x = 42` through a Freeze pause, what a Rootfs pause keeps and what it does not, both
//! modes across a sandboxd restart, forks that diverge, and a snapshot's life from create to
//! delete. Images a test commits carry its run label (a commit keeps the container's labels)
//! and are removed when the test ends, whatever happens.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::sandboxd::{docker, sandbox_body, setup, Execd, Sandboxd, RUN_LABEL};
use crate::util::{eventually, parse_sse, texts};

/// Removes, on drop, the images and the named volume a test made.
struct Leftovers {
    run: String,
    volume: Option<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        // The run's containers first (the harness removes them later too): the engine keeps
        // an image a container still uses.
        for c in crate::sandboxd::containers_of(&self.run) {
            docker(&["rm", "-f", &c]);
        }
        // Children first: a second pass removes parents the first could not.
        for _ in 0..2 {
            let images = docker(&[
                "images",
                "-q",
                "--filter",
                &format!("label={RUN_LABEL}={}", self.run),
            ]);
            for image in images.lines() {
                docker(&["rmi", "-f", image]);
            }
        }
        if let Some(volume) = &self.volume {
            docker(&["volume", "rm", "-f", volume]);
        }
    }
}

fn leftovers(d: &Sandboxd) -> Leftovers {
    Leftovers {
        run: d.run.clone(),
        volume: None,
    }
}

fn image_exists(image: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Containers of sandbox `id`, whatever their state.
fn containers_of_sandbox(id: &str) -> String {
    docker(&["ps", "-aq", "--filter", &format!("label=opensandbox.io/id={id}")])
}

async fn create_id(d: &Sandboxd, body: Value) -> String {
    d.create(body).await["id"].as_str().unwrap().to_owned()
}

async fn post(d: &Sandboxd, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    d.json(Method::POST, path, body).await
}

async fn execd(d: &Sandboxd, id: &str) -> Execd {
    d.endpoint(id, 44772, false).await
}

/// Runs `code` in the default Python context; returns stdout and the error's name, if any.
async fn run_code(execd: &Execd, code: &str) -> (String, Option<String>) {
    let resp = execd
        .req(Method::POST, "/code")
        .json(&json!({"context": {"language": "python"}, "code": code}))
        .send()
        .await
        .expect("send code");
    assert_eq!(resp.status(), 200, "{code}");
    let events = parse_sse(&resp.text().await.unwrap());
    let error = events
        .iter()
        .find(|e| e.kind() == "error")
        .map(|e| e.data["error"]["ename"].as_str().unwrap_or("").to_owned());
    (texts(&events, "stdout").concat(), error)
}

async fn pause(d: &Sandboxd, id: &str, mode: Option<&str>) {
    let body = mode.map(|m| json!({"snapshotType": m}));
    let (status, body) = post(d, &format!("/v1/sandboxes/{id}/pause"), body).await;
    assert_eq!(status, 202, "pause {id}: {body}");
}

async fn resume(d: &Sandboxd, id: &str) {
    let (status, body) = post(d, &format!("/v1/sandboxes/{id}/resume"), None).await;
    assert_eq!(status, 202, "resume {id}: {body}");
    assert_eq!(d.state(id).await, "Running");
}

async fn status_of(d: &Sandboxd, id: &str) -> (String, String) {
    let (status, sb) = d.info(id).await;
    assert_eq!(status, 200, "{sb}");
    (
        sb["status"]["state"].as_str().unwrap().to_owned(),
        sb["status"]["reason"].as_str().unwrap_or("").to_owned(),
    )
}

/// Takes a snapshot of `id` and waits until it is Ready; returns its id.
async fn ready_snapshot(d: &Sandboxd, id: &str, name: &str) -> String {
    let (status, snap) = post(
        d,
        &format!("/v1/sandboxes/{id}/snapshots"),
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(status, 202, "{snap}");
    assert_eq!(snap["status"]["state"], "Creating", "{snap}");
    assert_eq!(snap["sandboxId"], id);
    let snap_id = snap["id"].as_str().unwrap().to_owned();
    eventually(120, "the snapshot is Ready", async || {
        let (status, s) = d
            .json(Method::GET, &format!("/v1/snapshots/{snap_id}"), None)
            .await;
        assert_eq!(status, 200, "{s}");
        match s["status"]["state"].as_str() {
            Some("Ready") => Some(()),
            Some("Creating") => None,
            other => panic!("snapshot {snap_id} is {other:?}: {s}"),
        }
    })
    .await;
    snap_id
}

#[tokio::test]
async fn seed001_x_42_survives_a_freeze_pause() {
    let Some((image, d)) = setup("python") else {
        return;
    };
    let _cleanup = leftovers(&d);
    let id = create_id(&d, sandbox_body(image, &["tail", "-f", "/dev/null"])).await;
    let before = execd(&d, &id).await;
    assert_eq!(run_code(&before, "x = 42").await, (String::new(), None));
    pause(&d, &id, None).await;
    assert_eq!(
        status_of(&d, &id).await,
        ("Paused".into(), "CONTAINER_PAUSED".into())
    );
    // A second pause is refused.
    let (status, body) = post(&d, &format!("/v1/sandboxes/{id}/pause"), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("DOCKER::SANDBOX_NOT_RUNNING"))
    );
    resume(&d, &id).await;
    let (status, body) = post(&d, &format!("/v1/sandboxes/{id}/resume"), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("DOCKER::SANDBOX_NOT_PAUSED"))
    );
    let after = execd(&d, &id).await;
    assert_eq!(run_code(&after, "print(x)").await, ("42\n".into(), None));
}

#[tokio::test]
async fn rootfs_pause_keeps_files_and_volumes_not_memory_and_frees_the_container() {
    let Some((image, d)) = setup("python") else {
        return;
    };
    let volume = format!("snapwork-{}", d.run);
    let _cleanup = Leftovers {
        run: d.run.clone(),
        volume: Some(volume.clone()),
    };
    let mut body = sandbox_body(image, &["tail", "-f", "/dev/null"]);
    body["pausePolicy"] = json!({"snapshotType": "Rootfs"});
    body["volumes"] = json!([{"name": "work", "pvc": {"claimName": volume}, "mountPath": "/data"}]);
    body["env"] = json!({"KEPT": "env-kept"});
    let id = create_id(&d, body).await;
    let (status, sb) = d.info(&id).await;
    assert_eq!(status, 200);
    assert_eq!(sb["pausePolicy"]["snapshotType"], "Rootfs", "{sb}");
    let e = execd(&d, &id).await;
    let site = "/usr/local/lib/python3/dist-packages/snaptest";
    let setup_files = format!(
        "mkdir -p /workspace {site} && echo kept > /workspace/file && echo 'V = 7' > {site}/__init__.py \
         && echo in-volume > /data/file"
    );
    assert_eq!(e.run(&setup_files).await.1, 0);
    assert_eq!(run_code(&e, "x = 42").await.1, None);
    let token = e.token.clone();

    pause(&d, &id, None).await;
    assert_eq!(status_of(&d, &id).await, ("Paused".into(), "HIBERNATED".into()));
    assert_eq!(
        containers_of_sandbox(&id),
        "",
        "the container is gone while paused"
    );
    let paused_images = docker(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        &format!("sandboxd-paused/{id}"),
    ]);
    assert_eq!(paused_images.lines().count(), 1, "{paused_images}");
    // Not running: the proxy and a second pause say so.
    let (status, body) = post(
        &d,
        &format!("/v1/sandboxes/{id}/pause"),
        Some(json!({"snapshotType": "Rootfs"})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("DOCKER::SANDBOX_NOT_RUNNING"))
    );

    resume(&d, &id).await;
    let e = execd(&d, &id).await;
    assert_eq!(e.token, token, "the same token");
    assert_eq!(
        e.run("cat /workspace/file /data/file").await,
        ("kept\nin-volume\n".into(), 0)
    );
    assert_eq!(e.run("echo $KEPT").await, ("env-kept\n".into(), 0));
    let python = "python3 -c 'import sys; sys.path.insert(0, \"/usr/local/lib/python3/dist-packages\"); import snaptest; print(snaptest.V)'";
    assert_eq!(e.run(python).await, ("7\n".into(), 0));
    // Process memory is not kept: the kernel started afresh.
    assert_eq!(run_code(&e, "print(x)").await.1.as_deref(), Some("NameError"));

    let (status, _) = d.json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(status, 204);
    let left = docker(&["images", "-q", &format!("sandboxd-paused/{id}")]);
    assert_eq!(left, "", "a deleted sandbox leaves no paused image");
}

#[tokio::test]
async fn both_pause_modes_resume_after_a_sandboxd_restart() {
    let Some((image, mut d)) = setup("busybox") else {
        return;
    };
    let _cleanup = leftovers(&d);
    let frozen = create_id(&d, sandbox_body(image, &["sleep", "infinity"])).await;
    let hibernated = create_id(&d, sandbox_body(image, &["sleep", "infinity"])).await;
    for id in [&frozen, &hibernated] {
        assert_eq!(execd(&d, id).await.run("echo before > /tmp/mark").await.1, 0);
    }
    pause(&d, &frozen, None).await;
    pause(&d, &hibernated, Some("Rootfs")).await;
    d.stop();
    let dir = d.data_dir.clone();
    let run = d.run.clone();
    let d2 = Sandboxd::start_on(&dir, &run);
    assert_eq!(status_of(&d2, &frozen).await.0, "Paused");
    assert_eq!(
        status_of(&d2, &hibernated).await,
        ("Paused".into(), "HIBERNATED".into())
    );
    resume(&d2, &frozen).await;
    resume(&d2, &hibernated).await;
    for id in [&frozen, &hibernated] {
        assert_eq!(
            execd(&d2, id).await.run("cat /tmp/mark").await,
            ("before\n".into(), 0),
            "{id}"
        );
    }
}

#[tokio::test]
async fn forked_sandboxes_start_from_the_parent_and_diverge() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let _cleanup = leftovers(&d);
    let parent = create_id(&d, sandbox_body(image, &["sleep", "infinity"])).await;
    let p = execd(&d, &parent).await;
    assert_eq!(
        p.run("mkdir -p /workspace && echo parent > /workspace/f").await.1,
        0
    );
    let (status, forked) = post(
        &d,
        &format!("/v1/sandboxes/{parent}/fork"),
        Some(json!({"count": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{forked}");
    let children: Vec<String> = forked["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(children.len(), 2);
    let (a, b) = (execd(&d, &children[0]).await, execd(&d, &children[1]).await);
    assert_eq!(a.run("cat /workspace/f").await, ("parent\n".into(), 0));
    assert_eq!(b.run("cat /workspace/f").await, ("parent\n".into(), 0));
    assert_eq!(a.run("echo a > /workspace/f").await.1, 0);
    assert_eq!(b.run("echo b > /workspace/f").await.1, 0);
    assert_eq!(a.run("cat /workspace/f").await.0, "a\n");
    assert_eq!(b.run("cat /workspace/f").await.0, "b\n");
    assert_eq!(
        p.run("cat /workspace/f").await.0,
        "parent\n",
        "the parent runs on unchanged"
    );
    let snap = forked["snapshotId"].as_str().unwrap();
    let (status, body) = d
        .json(Method::DELETE, &format!("/v1/snapshots/{snap}"), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("SNAPSHOT::IN_USE"))
    );
    let (status, body) = post(
        &d,
        &format!("/v1/sandboxes/{parent}/fork"),
        Some(json!({"count": 21})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("SANDBOX::INVALID_PARAMETER"))
    );
}

#[tokio::test]
async fn a_snapshot_is_ready_makes_sandboxes_and_is_deleted_once_unused() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let _cleanup = leftovers(&d);
    let source = create_id(&d, sandbox_body(image, &["sleep", "infinity"])).await;
    let s = execd(&d, &source).await;
    assert_eq!(
        s.run("mkdir -p /workspace && echo snap > /workspace/f").await.1,
        0
    );
    let snap = ready_snapshot(&d, &source, "before-change").await;
    let image_name = format!("opensandbox-snapshots:{snap}");
    assert!(image_exists(&image_name));
    assert_eq!(d.state(&source).await, "Running", "the source runs on");
    let (status, list) = d
        .json(
            Method::GET,
            &format!("/v1/snapshots?sandboxId={source}&state=Ready"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["items"][0]["name"], "before-change");

    // Create from it: no image, no entrypoint (the source's).
    let body = json!({"snapshotId": snap, "timeout": 600, "resourceLimits": {"cpu": "1", "memory": "256Mi"}});
    let child = create_id(&d, body).await;
    let (status, sb) = d.info(&child).await;
    assert_eq!(status, 200);
    assert_eq!(sb["snapshotId"], snap.as_str(), "{sb}");
    assert_eq!(sb["entrypoint"], json!(["sleep", "infinity"]));
    assert!(sb.get("image").is_none(), "{sb}");
    assert_eq!(
        execd(&d, &child).await.run("cat /workspace/f").await,
        ("snap\n".into(), 0)
    );

    let (status, body) = d
        .json(Method::DELETE, &format!("/v1/snapshots/{snap}"), None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("SNAPSHOT::IN_USE")),
        "{body}"
    );
    let both = json!({"snapshotId": snap, "image": {"uri": image}, "entrypoint": ["sh"], "resourceLimits": {"cpu": "1", "memory": "256Mi"}});
    let (status, body) = post(&d, "/v1/sandboxes", Some(both)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("SANDBOX::INVALID_PARAMETER")),
        "{body}"
    );
    let (status, _) = d
        .json(Method::DELETE, &format!("/v1/sandboxes/{child}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = d
        .json(Method::DELETE, &format!("/v1/snapshots/{snap}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(!image_exists(&image_name), "the image is gone with the snapshot");
    let (status, body) = d.json(Method::GET, &format!("/v1/snapshots/{snap}"), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("SNAPSHOT::NOT_FOUND"))
    );
    let missing = json!({"snapshotId": snap, "resourceLimits": {"cpu": "1", "memory": "256Mi"}});
    let (status, body) = post(&d, "/v1/sandboxes", Some(missing)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("SNAPSHOT::NOT_FOUND")),
        "{body}"
    );
}

/// §11.1: a Rootfs-paused sandbox expires on schedule (its clock runs while paused unless
/// `suspendExpiry`) and leaves no image or container behind; a pause of an unknown id is 404.
#[tokio::test]
async fn a_rootfs_paused_sandbox_expires_and_leaves_no_image() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let _cleanup = leftovers(&d);
    let id = create_id(&d, sandbox_body(image, &["sleep", "infinity"])).await;
    pause(&d, &id, Some("Rootfs")).await;
    let paused_images = || {
        docker(&[
            "images",
            "-q",
            "--filter",
            &format!("reference=sandboxd-paused/{id}"),
        ])
    };
    assert!(
        !paused_images().trim().is_empty(),
        "the Rootfs image exists while paused"
    );
    // Renewed to expire in two seconds.
    let at = execd::wire::time::now_ms() + 2_000;
    let (status, body) = post(
        &d,
        &format!("/v1/sandboxes/{id}/renew-expiration"),
        Some(json!({"expiresAt": execd::wire::time::format_ms(at)})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually(60, "the paused sandbox to expire", async || {
        (d.info(&id).await.0 == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_eq!(paused_images().trim(), "", "no paused image left");
    assert_eq!(containers_of_sandbox(&id).trim(), "", "no container left");
    let (status, body) = post(&d, "/v1/sandboxes/no-such-sandbox/pause", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
