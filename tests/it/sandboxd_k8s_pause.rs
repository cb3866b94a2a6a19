//! L3: a Rootfs pause on sandboxd's Kubernetes runtime, against OUR MODEL OF KUBERNETES
//! (`examples/fake_kube`, test-only), through sandboxd's HTTP API: a sandbox created with
//! `workspace.persistent` gets the claim `sbx-<id>-ws` at `/workspace` (a Docker volume in
//! the fake); a Rootfs pause deletes the pod and keeps the claim; the resume makes a pod with
//! the same claim, so a file in `/workspace` is there again and one outside it is not; the
//! delete removes the claim and its volume. Rootfs without a workspace is a 501.
//!
//! Built with `--features k8s`; runs whenever the Docker engine answers.

#![cfg(feature = "k8s")]

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::docker::docker_available;
use crate::fake_kube::FakeKube;
use crate::sandboxd::{docker, image, sandbox_body};
use crate::sandboxd_k8s::{gone, wait_running, Cluster};
use crate::util::{eventually, marker};

/// The Docker volume the fake's docklet holds claim `sbx-<id>-ws` in, if any.
fn claim_volume(fake: &FakeKube, id: &str) -> String {
    docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=fake-kube={}", fake.label),
        "--filter",
        &format!("label=fake-kube.claim=default.sbx-{id}-ws"),
    ])
}

#[tokio::test]
async fn issue18_rootfs_pause_on_kubernetes_keeps_the_workspace_claim_and_resume_remounts_it() {
    if !docker_available() {
        return;
    }
    let busybox = image("busybox");
    let cluster = Cluster::fake();
    let fake = cluster.fake.as_ref().expect("the fake");
    let client = fake.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let data = tempfile::tempdir().unwrap();
    let run = marker();
    let d = cluster.start_sandboxd(data.path(), &run);

    let mut body = sandbox_body(busybox, &["sleep", "100000"]);
    body["workspace"] = json!({"persistent": true, "size": "64Mi"});
    body["pausePolicy"] = json!({"snapshotType": "Rootfs"});
    let id = d.create(body).await["id"].as_str().unwrap().to_owned();
    wait_running(&d, &id).await;
    let claim = claims.get(&format!("sbx-{id}-ws")).await.unwrap();
    assert!(
        claim.metadata.owner_references.is_none(),
        "the claim outlives the pod"
    );
    let (_, info) = d.info(&id).await;
    assert_eq!(info["workspace"]["persistent"], true, "{info}");
    let first_pod = pods.get(&format!("sbx-{id}")).await.unwrap();

    let e = d.endpoint(&id, 44772, true).await;
    let (out, code) = e
        .run("echo kept > /workspace/f && echo lost > /root/outside && cat /workspace/f /root/outside")
        .await;
    assert_eq!((out.as_str(), code), ("kept\nlost\n", 0));

    // Pause: Paused, no pod, the claim and its volume kept.
    let (status, err) = d.act(&id, "pause").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{err}");
    let (_, info) = d.info(&id).await;
    assert_eq!(
        (
            info["status"]["state"].as_str(),
            info["status"]["reason"].as_str()
        ),
        (Some("Paused"), Some("HIBERNATED")),
        "{info}"
    );
    assert!(
        pods.get_opt(&format!("sbx-{id}")).await.unwrap().is_none(),
        "no pod while paused"
    );
    eventually(30, "the pod's containers to go", async || {
        cluster
            .pod_containers(&id)
            .unwrap_or_default()
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(claims.get_opt(&format!("sbx-{id}-ws")).await.unwrap().is_some());
    assert!(!claim_volume(&fake, &id).is_empty(), "the claim's volume stays");
    let (status, err) = d.act(&id, "pause").await;
    assert_eq!(status, StatusCode::CONFLICT, "a second pause: {err}");

    // Resume: a new pod (new uid and IP) on the same claim.
    let (status, err) = d.act(&id, "resume").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{err}");
    wait_running(&d, &id).await;
    let second_pod = pods.get(&format!("sbx-{id}")).await.unwrap();
    assert_ne!(second_pod.metadata.uid, first_pod.metadata.uid);
    // Endpoints are resolved again: the pod IP may have changed.
    let e = d.endpoint(&id, 44772, false).await;
    let (out, code) = e
        .run("cat /workspace/f; test -e /root/outside || echo gone")
        .await;
    assert_eq!(
        (out.as_str(), code),
        ("kept\ngone\n", 0),
        "/workspace survives; the rest of the filesystem starts from the image"
    );

    // Delete: the claim and its volume go with the sandbox.
    let (status, _) = d.json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    gone(&pods, &format!("sbx-{id}")).await;
    gone(&claims, &format!("sbx-{id}-ws")).await;
    eventually(60, "the claim's Docker volume to go", async || {
        claim_volume(&fake, &id).is_empty().then_some(())
    })
    .await;

    // Without a workspace: 501 naming the fix; the sandbox runs on.
    let plain = d.create(sandbox_body(busybox, &["sleep", "100000"])).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_running(&d, &plain).await;
    let (status, err) = d
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{plain}/pause"),
            Some(json!({"snapshotType": "Rootfs"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("\"workspace\": {\"persistent\": true}"),
        "{err}"
    );
    assert_eq!(d.state(&plain).await, "Running");
    assert!(claims
        .get_opt(&format!("sbx-{plain}-ws"))
        .await
        .unwrap()
        .is_none());

    // A bad workspace is a 400 with a catalogued code.
    let mut bad = sandbox_body(busybox, &["sleep", "100000"]);
    bad["workspace"] = json!({"persistent": true, "size": "lots"});
    let (status, err) = d.json(Method::POST, "/v1/sandboxes", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(err["code"].as_str().is_some(), "{err}");
}
