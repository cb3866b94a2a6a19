//! `workspace.persistent` on Docker: `/workspace` is the named volume `sandboxd-ws-<id>`,
//! which a Rootfs pause keeps as it keeps every volume (the rest of the filesystem is
//! committed as before, so both survive) and which goes with the sandbox.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::sandboxd::{docker, sandbox_body, setup};

fn volume_exists(name: &str) -> bool {
    !docker(&["volume", "ls", "-q", "--filter", &format!("name=^{name}$")]).is_empty()
}

#[tokio::test]
async fn issue18_a_persistent_workspace_on_docker_is_a_volume_kept_by_rootfs_and_removed_with_the_sandbox() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let mut body = sandbox_body(image, &["sleep", "100000"]);
    body["workspace"] = json!({"persistent": true});
    body["pausePolicy"] = json!({"snapshotType": "Rootfs"});
    let id = d.create(body).await["id"].as_str().unwrap().to_owned();
    let volume = format!("sandboxd-ws-{id}");
    assert!(volume_exists(&volume));
    let e = d.endpoint(&id, 44772, false).await;
    let (out, code) = e
        .run("echo kept > /workspace/f && echo also-kept > /root/outside && grep -c ' /workspace ' /proc/mounts")
        .await;
    assert_eq!(
        (out.as_str(), code),
        ("1\n", 0),
        "/workspace is a mount of its own"
    );

    let (status, err) = d.act(&id, "pause").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{err}");
    assert_eq!(d.state(&id).await, "Paused");
    assert!(volume_exists(&volume), "the volume stays while paused");
    let (status, err) = d.act(&id, "resume").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{err}");
    let e = d.endpoint(&id, 44772, false).await;
    assert_eq!(
        e.run("cat /workspace/f /root/outside").await,
        ("kept\nalso-kept\n".into(), 0),
        "Docker commits the rest of the filesystem and remounts the volume"
    );

    let (status, _) = d.json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!volume_exists(&volume), "the volume goes with the sandbox");
}
