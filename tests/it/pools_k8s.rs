//! L3: warm pools on sandboxd's Kubernetes runtime (native mode, design §16.3) against OUR
//! MODEL OF KUBERNETES (`examples/fake_kube`, test-only: it applies JSON Patches, a failed
//! `test` op being 422 as on a real apiserver), whose docklet runs the pods as real Docker
//! containers. Through sandboxd's HTTP API and the fake's own API: member pods labelled with
//! their pool and state, 12 concurrent acquires against `poolMax` 4 (exactly 4 pods handed
//! out, once each; the rest 429 with `Retry-After`), a release deleting the pod and the
//! reconciler refilling, and a pod whose state label is flipped to `allocated` behind
//! sandboxd's back never handed out.
//!
//! Built with `--features k8s`; runs whenever the Docker engine answers.

#![cfg(feature = "k8s")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::Api;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::docker::docker_available;
use crate::fake_kube::{agent_image, FakeKube};
use crate::sandboxd::{image, Sandboxd};
use crate::sandboxd_k8s::start_on_kube;
use crate::util::{eventually, marker};

/// Seconds an acquire may wait for a warming member (and the 429's `Retry-After`). Refusals
/// do not wait for it: with every member allocated and `poolMax` reached, nothing can come.
const ACQUIRE_TIMEOUT: &str = "60";
const POOL: &str = "k8s-warm";

fn start_sandboxd(fake: &FakeKube, data_dir: &Path) -> Sandboxd {
    start_on_kube(
        data_dir,
        &marker(),
        &fake.kubeconfig,
        "default",
        agent_image(),
        &["--rate-create", "0", "--pool-acquire-timeout", ACQUIRE_TIMEOUT],
    )
}

async fn pool_status(d: &Sandboxd) -> Value {
    let (status, pool) = d.json(Method::GET, &format!("/v1/pools/{POOL}"), None).await;
    assert_eq!(status, 200, "{pool}");
    pool["status"].clone()
}

/// Waits until the pool has `available` idle members and none warming.
async fn wait_available(d: &Sandboxd, available: u64) -> Value {
    eventually(180, &format!("{available} members available"), async || {
        let s = pool_status(d).await;
        (s["available"] == available && s["warming"] == 0).then_some(s)
    })
    .await
}

/// The pool's member pods as the cluster shows them: name → labels.
async fn member_pods(pods: &Api<Pod>) -> BTreeMap<String, BTreeMap<String, String>> {
    pods.list(&ListParams::default().labels(&format!("sandboxd.io/pool={POOL}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            (
                p.metadata.name.unwrap_or_default(),
                p.metadata.labels.unwrap_or_default(),
            )
        })
        .collect()
}

/// The one pod labelled as sandbox `id`'s.
async fn pod_of(pods: &Api<Pod>, id: &str) -> String {
    let found = pods
        .list(&ListParams::default().labels(&format!("opensandbox.io/id={id}")))
        .await
        .unwrap()
        .items;
    assert_eq!(found.len(), 1, "pods labelled {id}: {found:?}");
    found[0].metadata.name.clone().unwrap()
}

fn state_of(labels: &BTreeMap<String, String>) -> &str {
    labels.get("sandboxd.io/pool-state").map_or("", String::as_str)
}

#[tokio::test]
async fn pools_on_the_fake_kube_claim_pods_by_label_once_each_and_refill() {
    if !docker_available() {
        return;
    }
    let busybox = image("busybox");
    let fake = FakeKube::start(&[]);
    let pods: Api<Pod> = Api::namespaced(fake.client().await, "default");
    let data = tempfile::tempdir().unwrap();
    let d = start_sandboxd(&fake, data.path());

    let (status, pool) = d
        .json(
            Method::POST,
            "/v1/pools",
            Some(json!({
                "name": POOL,
                "template": {"spec": {"containers": [{
                    "name": "sandbox", "image": busybox, "command": ["sleep", "100000"]}]}},
                "capacitySpec": {"bufferMin": 0, "bufferMax": 4, "poolMin": 0, "poolMax": 4},
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{pool}");
    wait_available(&d, 4).await;

    // The cluster shows the pool: four member pods, idle, each still its own.
    let members = member_pods(&pods).await;
    assert_eq!(members.len(), 4, "{members:?}");
    for (name, labels) in &members {
        assert_eq!(state_of(labels), "idle", "{name}: {labels:?}");
        assert_eq!(
            Some(name.as_str()),
            labels
                .get("opensandbox.io/id")
                .map(|id| format!("sbx-{id}"))
                .as_deref(),
            "{labels:?}"
        );
    }

    // 12 concurrent acquires, half through the acquire route, half through poolRef.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (req, body) = if i % 2 == 0 {
            (
                d.req(Method::POST, &format!("/v1/pools/{POOL}/acquire")),
                json!({}),
            )
        } else {
            (
                d.req(Method::POST, "/v1/sandboxes"),
                json!({"extensions": {"poolRef": POOL}}),
            )
        };
        tasks.spawn(async move {
            let resp = req.json(&body).send().await.expect("send");
            let status = resp.status();
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        });
    }
    let (mut ids, mut refused) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (status, retry, body) = r.unwrap();
        match status.as_u16() {
            201 | 202 => ids.push(body["id"].as_str().unwrap().to_owned()),
            429 => {
                assert_eq!(body["code"], "POOL::CAPACITY_EXHAUSTED", "{body}");
                assert_eq!(retry.as_deref(), Some(ACQUIRE_TIMEOUT));
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ids.len(), refused), (4, 8));

    // Each sandbox has a pod of its own, labelled allocated and with its id.
    let mut handed = BTreeSet::new();
    for id in &ids {
        let pod = pod_of(&pods, id).await;
        assert!(members.contains_key(&pod), "{pod} is no member");
        assert!(handed.insert(pod.clone()), "{pod} handed out twice");
        let (out, code) = d
            .endpoint(id, 44772, false)
            .await
            .run("echo $OPENSANDBOX_ID")
            .await;
        assert_eq!((out.trim(), code), (id.as_str(), 0));
    }
    let members = member_pods(&pods).await;
    assert!(
        members.values().all(|l| state_of(l) == "allocated"),
        "{members:?}"
    );
    let s = pool_status(&d).await;
    assert_eq!(
        (s["total"].as_u64(), s["allocated"].as_u64()),
        (Some(4), Some(4)),
        "{s}"
    );

    // A release deletes the pod; the reconciler warms a new one, idle.
    let released = &ids[0];
    let released_pod = pod_of(&pods, released).await;
    let (status, _) = d
        .json(Method::POST, &format!("/v1/sandboxes/{released}/release"), None)
        .await;
    assert_eq!(status, 202);
    eventually(60, "the released pod to be deleted", async || {
        pods.get_opt(&released_pod).await.unwrap().is_none().then_some(())
    })
    .await;
    wait_available(&d, 1).await;
    let idle: Vec<String> = member_pods(&pods)
        .await
        .into_iter()
        .filter(|(_, l)| state_of(l) == "idle")
        .map(|(name, _)| name)
        .collect();
    assert_eq!(idle.len(), 1, "{idle:?}");
    let flipped = &idle[0];
    assert!(!handed.contains(flipped));

    // Another claimer takes it behind sandboxd's back: the store still says idle, the pod
    // does not. The acquire's claim fails its test (422), the member is forgotten, and the
    // sandbox gets a member warmed after it.
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/metadata/labels/sandboxd.io~1pool-state", "value": "allocated"},
        {"op": "add", "path": "/metadata/labels/opensandbox.io~1id", "value": "someone-else"},
    ]))
    .unwrap();
    pods.patch(flipped, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .unwrap();
    let (status, got) = d
        .json(
            Method::POST,
            &format!("/v1/pools/{POOL}/acquire"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{got}");
    let got_id = got["id"].as_str().unwrap();
    let got_pod = pod_of(&pods, got_id).await;
    assert_ne!(&got_pod, flipped, "the pod claimed elsewhere was handed out");
    assert!(!handed.contains(&got_pod));
    if let Some(pod) = pods.get_opt(flipped).await.unwrap() {
        let labels = pod.metadata.labels.unwrap_or_default();
        assert_eq!(labels["opensandbox.io/id"], "someone-else", "{labels:?}");
    }
    let s = pool_status(&d).await;
    assert_eq!(
        (s["total"].as_u64(), s["allocated"].as_u64()),
        (Some(4), Some(4)),
        "{s}"
    );
    drop(d);
}
