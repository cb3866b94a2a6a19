//! Warm pool members on Kubernetes. L0: the labels of a member pod, the claim and idle
//! patches (their bodies, JSON-pointer escaping, and what they do to a pod when applied), and
//! the key a member pod is known by. L2 (design §16.6, `contract_tests` style): the runtime
//! over a `tower_test` mock asserting each PATCH's method, path, content type and body, the
//! error mapping (422 → `Conflict`), and the service's acquire over that runtime: a 422 on
//! the first idle member makes it claim the next one, and the first is forgotten, not
//! deleted.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use http::Method;
use serde_json::{json, Value};

use super::*;
use crate::orchestrator::runtime::kubernetes::PodData;
use crate::orchestrator::runtime::{Runtime as _, SandboxSpec};

use crate::orchestrator::runtime::kubernetes::contract_tests::{next, Asked, Handle, NS};

/// The runtime over a mock API server.
fn runtime() -> (Kubernetes, Handle) {
    crate::orchestrator::runtime::kubernetes::contract_tests::runtime(Duration::from_secs(60))
}

fn objects() -> objects::Objects {
    objects::Objects {
        namespace: NS.into(),
        agent_image: "sandboxd/execd:test".into(),
        instance: "inst1".into(),
    }
}

fn member_spec(id: &str, pool: &str) -> SandboxSpec {
    SandboxSpec {
        env: BTreeMap::from([("EXECD_ACCESS_TOKEN".into(), "tok-1".into())]),
        pool: Some(pool.into()),
        ..SandboxSpec::for_test(id, "python:3.12", &["sleep", "infinity"])
    }
}

/// A member pod as the API server stores it, in `state`, labelled with `id`.
fn member_pod(member: &str, state: &str, id: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("sbx-{member}"), "namespace": NS, "uid": "u-1",
                     "labels": {"opensandbox.io/id": id, "sandboxd.io/managed": "true",
                                "sandboxd.io/instance": "inst1", "sandboxd.io/pool": "warm",
                                "sandboxd.io/pool-state": state}},
        "spec": {"containers": [{"name": "sandbox", "image": "python:3.12"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.7",
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "sandbox", "image": "python:3.12", "imageID": "",
                                          "ready": true, "restartCount": 0, "state": {"running": {}}}]}
    })
}

fn labels(pod: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(pod["metadata"]["labels"].clone()).unwrap()
}

#[test]
fn a_member_pod_is_labelled_with_its_pool_and_warming() {
    let mut pod = objects().pod(&member_spec("pm-1", "warm")).unwrap();
    label_member(&mut pod, "warm");
    let pod = serde_json::to_value(&pod).unwrap();
    let l = labels(&pod);
    assert_eq!(l["sandboxd.io/pool"], "warm");
    assert_eq!(l["sandboxd.io/pool-state"], "warming");
    // Its own id until it is claimed; the instance and managed labels as on any pod.
    assert_eq!(l["opensandbox.io/id"], "pm-1");
    assert_eq!(l["sandboxd.io/instance"], "inst1");
    assert_eq!(pod["metadata"]["name"], "sbx-pm-1");
}

#[test]
fn a_long_pool_name_becomes_a_valid_distinct_label_value() {
    assert_eq!(pool_label("warm"), "warm");
    let exact = "a".repeat(63);
    assert_eq!(pool_label(&exact), exact);
    let (a, b) = (format!("{}-x", "p".repeat(70)), format!("{}-y", "p".repeat(70)));
    let (la, lb) = (pool_label(&a), pool_label(&b));
    assert_ne!(la, lb);
    for l in [&la, &lb] {
        assert_eq!(l.len(), 63, "{l}");
        assert!(l.starts_with(&"p".repeat(52)), "{l}");
        assert!(
            l.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && l.ends_with(|c: char| c.is_ascii_alphanumeric()),
            "{l}"
        );
    }
}

#[test]
fn the_claim_patch_tests_idle_then_allocates_and_labels_the_sandbox_with_escaped_keys() {
    assert_eq!(
        claim_patch("sb-1"),
        json!([
            {"op": "test", "path": "/metadata/labels/sandboxd.io~1pool-state", "value": "idle"},
            {"op": "replace", "path": "/metadata/labels/sandboxd.io~1pool-state", "value": "allocated"},
            {"op": "add", "path": "/metadata/labels/opensandbox.io~1id", "value": "sb-1"},
        ])
    );
    assert_eq!(
        idle_patch("pm-1"),
        json!([
            {"op": "replace", "path": "/metadata/labels/sandboxd.io~1pool-state", "value": "idle"},
            {"op": "add", "path": "/metadata/labels/opensandbox.io~1id", "value": "pm-1"},
        ])
    );
    assert_eq!(label_path("a~b/c"), "/metadata/labels/a~0b~1c");
}

#[test]
fn applied_the_claim_patch_takes_an_idle_pod_once_and_never_a_taken_one() {
    let apply = |pod: &mut Value, patch: Value| {
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        json_patch::patch(pod, &patch)
    };
    let mut pod = member_pod("pm-1", "idle", "pm-1");
    apply(&mut pod, claim_patch("sb-1")).unwrap();
    let l = labels(&pod);
    assert_eq!(
        (
            l["sandboxd.io/pool-state"].as_str(),
            l["opensandbox.io/id"].as_str()
        ),
        ("allocated", "sb-1")
    );
    // A second claimer's test fails, and nothing of its patch applies.
    let before = pod.clone();
    assert!(apply(&mut pod, claim_patch("sb-2")).is_err());
    assert_eq!(pod, before);
    // Warming is not claimable either.
    let mut warming = member_pod("pm-2", "warming", "pm-2");
    assert!(apply(&mut warming, claim_patch("sb-3")).is_err());
    // Back to idle (Noop), with its own id again: claimable.
    apply(&mut pod, idle_patch("pm-1")).unwrap();
    assert_eq!(labels(&pod)["opensandbox.io/id"], "pm-1");
    apply(&mut pod, claim_patch("sb-4")).unwrap();
}

#[test]
fn a_member_pod_is_known_by_its_member_id_before_and_after_its_claim() {
    let pod = |v: Value| -> Pod { serde_json::from_value(v).unwrap() };
    assert_eq!(
        key(&pod(member_pod("pm-1", "idle", "pm-1"))).as_deref(),
        Some("pm-1")
    );
    assert_eq!(
        key(&pod(member_pod("pm-1", "allocated", "sb-1"))).as_deref(),
        Some("pm-1")
    );
    let mut plain = member_pod("abc", "idle", "abc");
    plain["metadata"]["labels"] = json!({"opensandbox.io/id": "abc"});
    assert_eq!(key(&pod(plain)).as_deref(), Some("abc"));
}

// L2: the runtime over a mock API server.

/// The next request, asserted to be a JSON Patch of pod `sbx-<member>` with `body`.
async fn expect_patch(handle: &mut Handle, member: &str, body: Value) -> Asked {
    let asked = next(handle).await;
    assert_eq!(
        (&asked.method, asked.path.as_str()),
        (
            &Method::PATCH,
            format!("/api/v1/namespaces/{NS}/pods/sbx-{member}").as_str()
        )
    );
    assert_eq!(asked.content_type.as_deref(), Some("application/json-patch+json"));
    assert_eq!(asked.body, body);
    asked
}

fn instance(member: &str, ip: IpAddr) -> Instance {
    PodData {
        uid: Some("u-1".into()),
        ip: Some(ip),
    }
    .instance(format!("sbx-{member}"))
}

#[tokio::test]
async fn claim_patches_the_pod_and_maps_a_failed_test_to_conflict() {
    let (rt, mut handle) = runtime();
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    let verifier = tokio::spawn(async move {
        let asked = expect_patch(&mut handle, "pm-1", claim_patch("sb-1")).await;
        asked.answer(200, member_pod("pm-1", "allocated", "sb-1"));
        expect_patch(&mut handle, "pm-2", claim_patch("sb-1"))
            .await
            .fail(422, "Invalid");
        expect_patch(&mut handle, "pm-3", claim_patch("sb-1"))
            .await
            .fail(404, "NotFound");
        expect_patch(&mut handle, "pm-4", claim_patch("sb-1"))
            .await
            .fail(500, "InternalError");
        expect_patch(&mut handle, "pm-1", idle_patch("pm-1"))
            .await
            .answer(200, member_pod("pm-1", "idle", "pm-1"));
    });
    rt.claim(&instance("pm-1", ip), "sb-1").await.unwrap();
    let taken = rt.claim(&instance("pm-2", ip), "sb-1").await;
    assert!(matches!(taken, Err(RuntimeError::Conflict(_))), "{taken:?}");
    let gone = rt.claim(&instance("pm-3", ip), "sb-1").await;
    assert!(matches!(gone, Err(RuntimeError::NotFound(_))), "{gone:?}");
    let failing = rt.claim(&instance("pm-4", ip), "sb-1").await;
    assert!(matches!(failing, Err(RuntimeError::Transient(_))), "{failing:?}");
    rt.member_idle(&instance("pm-1", ip)).await.unwrap();
    verifier.await.unwrap();
}

#[tokio::test]
async fn a_member_is_created_labelled_and_listed_by_its_member_id_once_claimed() {
    let (rt, mut handle) = runtime();
    let verifier = tokio::spawn(async move {
        let secret = next(&mut handle).await;
        assert_eq!(secret.path, format!("/api/v1/namespaces/{NS}/secrets"));
        let body = secret.body.clone();
        secret.answer(201, body);
        let pod = next(&mut handle).await;
        assert_eq!(
            (&pod.method, pod.path.as_str()),
            (&Method::POST, format!("/api/v1/namespaces/{NS}/pods").as_str())
        );
        let l = labels(&pod.body);
        assert_eq!(
            (
                l["sandboxd.io/pool"].as_str(),
                l["sandboxd.io/pool-state"].as_str()
            ),
            ("warm", "warming"),
            "{}",
            pod.body
        );
        // Ends the create early: the labels were the point.
        pod.fail(403, "Forbidden");
        // The clean-up: pod, Secret, files ConfigMap and image pull Secret, all already gone.
        for _ in 0..4 {
            next(&mut handle).await.fail(404, "NotFound");
        }
        let list = next(&mut handle).await;
        assert_eq!(list.path, format!("/api/v1/namespaces/{NS}/pods"));
        list.answer(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                   "items": [member_pod("pm-1", "allocated", "sb-1")]}),
        );
    });
    assert!(rt.create(member_spec("pm-9", "warm")).await.is_err());
    let all = rt.observe_all().await.unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), ["pm-1"]);
    assert_eq!(all["pm-1"].0.reference, "sbx-pm-1");
    verifier.await.unwrap();
}

// L2: the service's acquire over the mocked runtime.

/// An HTTP server answering 200 to everything on `ip`:44772, execd's port, standing in for
/// the claimed member's execd (the env file the acquire writes). A loopback address of its
/// own (127.0.0.0/8 is all loopback on Linux), so no other test's port is taken.
async fn execd_stand_in() -> (IpAddr, tokio::task::JoinHandle<()>) {
    let seed = std::process::id();
    for attempt in 0..50u32 {
        let n = seed
            .wrapping_mul(2_654_435_761)
            .wrapping_add(attempt.wrapping_mul(97));
        let ip = IpAddr::V4(Ipv4Addr::new(
            127,
            1 + (n % 250) as u8,
            (n >> 8) as u8,
            1 + (n >> 16) as u8 % 250,
        ));
        if let Ok(listener) =
            tokio::net::TcpListener::bind(SocketAddr::new(ip, crate::orchestrator::runtime::EXECD_PORT)).await
        {
            let app = axum::Router::new().fallback(|| async { "{}" });
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            return (ip, server);
        }
    }
    panic!("no loopback address free for execd's port");
}

#[tokio::test]
async fn an_acquire_whose_first_claim_fails_its_test_takes_the_next_member_and_forgets_the_first() {
    use crate::orchestrator::auth::{Authority, Principal};
    use crate::orchestrator::service::{PoolSettings, Service, Settings as ServiceSettings};
    use crate::orchestrator::store::{MemberRow, MemberState, PoolRow, Store};
    use crate::wire::pools::{PoolCapacitySpec, RecycleType};

    let (ip, execd) = execd_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let pool = PoolRow {
        name: "warm".into(),
        owner: "root".into(),
        request: json!({"image": {"uri": "python:3.12"}, "entrypoint": ["sleep", "infinity"]}),
        image: "python:3.12".into(),
        capacity: PoolCapacitySpec {
            buffer_max: 2,
            buffer_min: 0,
            pool_max: 2,
            pool_min: 0,
        },
        recycle: RecycleType::Delete,
        dedicated_owner: false,
        template: None,
        revision: 1,
        created_at: 1,
    };
    assert!(store.insert_pool(&pool).await.unwrap());
    // pm-a ready first, so the store offers it first.
    for (member, ready) in [("pm-a", 10), ("pm-b", 20)] {
        let row = MemberRow {
            id: member.into(),
            pool: "warm".into(),
            state: MemberState::Warming,
            sandbox_id: None,
            instance: None,
            token: "tok".into(),
            created_at: 1,
            ready_at: None,
        };
        assert!(store.insert_member(&row).await.unwrap());
        assert!(store
            .set_member_instance(member, &instance(member, ip))
            .await
            .unwrap());
        assert!(store.member_ready(member, ready).await.unwrap());
    }
    let (rt, mut handle) = runtime();
    let keys = crate::orchestrator::auth::jwt::Keys::new(b"0123456789abcdef0123456789abcdef", &[]).unwrap();
    let settings = ServiceSettings {
        limits: crate::orchestrator::spec::Limits {
            max_timeout: 86_400,
            allowed_host_paths: Vec::new(),
        },
        ready_timeout: Duration::from_secs(10),
        pids_limit: 99,
        max_sandboxes_per_user: 100,
        builds: Default::default(),
        executions: Default::default(),
        pools: PoolSettings {
            max_members: 20,
            acquire_timeout: Duration::from_secs(5),
        },
    };
    // The service's store; the test reads the same state file through a second one.
    let view = Store::open(dir.path()).unwrap();
    let service = Arc::new(Service::new(
        store,
        Arc::new(rt),
        Arc::new(Authority::new(Some("key".into()), keys, Vec::new())),
        settings,
    ));

    let verifier = tokio::spawn(async move {
        // The first idle member: someone else claimed it (the test op failed).
        let first = next(&mut handle).await;
        assert_eq!(first.path, format!("/api/v1/namespaces/{NS}/pods/sbx-pm-a"));
        assert_eq!(first.content_type.as_deref(), Some("application/json-patch+json"));
        let sandbox = first.body[2]["value"].as_str().unwrap().to_owned();
        assert_eq!(first.body, claim_patch(&sandbox));
        first.fail(422, "Invalid");
        // Then the next one, for the same sandbox.
        expect_patch(&mut handle, "pm-b", claim_patch(&sandbox))
            .await
            .answer(200, member_pod("pm-b", "allocated", &sandbox));
        (sandbox, handle)
    });
    let sandbox = service
        .acquire_from_pool("warm", Default::default(), &Principal::root())
        .await
        .unwrap();
    let (claimed_for, mut handle) = verifier.await.unwrap();
    assert_eq!(sandbox.id, claimed_for);
    // No further call: pm-a's pod was neither deleted nor patched back (not ours any more).
    assert!(handle.next_request().now_or_never().is_none());
    let members: BTreeMap<String, MemberRow> = view
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.unwrap())
        .map(|m| (m.id.clone(), m))
        .collect();
    assert_eq!(members.keys().collect::<Vec<_>>(), ["pm-b"]);
    assert_eq!(members["pm-b"].state, MemberState::Allocated);
    assert_eq!(members["pm-b"].sandbox_id.as_deref(), Some(sandbox.id.as_str()));
    let record = view.get(&sandbox.id).await.unwrap().unwrap();
    assert_eq!(record.instance.unwrap().reference, "sbx-pm-b");
    execd.abort();
}
