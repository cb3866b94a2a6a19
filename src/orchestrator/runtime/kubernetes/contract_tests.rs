//! L2, the request contract (design §16.6): the runtime over a kube client whose transport is
//! a `tower_test` mock, and a verifier in the test that asserts each request's method, path,
//! query, content type and body, and answers as an API server does (objects, or `Status`
//! bodies with the apiserver's codes and reasons). Proves the calls and the error mapping;
//! says nothing of a real server's semantics.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{json, Value};

use super::*;
use crate::orchestrator::runtime::SpecFile;

#[path = "workspace_contract_tests.rs"]
mod workspace;

pub(super) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
pub(super) type Reply = tower_test::mock::SendResponse<Response<Body>>;

pub(super) const NS: &str = "sbx";
const INSTANCE: &str = "inst1";

pub(super) fn runtime(create_timeout: Duration) -> (Kubernetes, Handle) {
    runtime_in(create_timeout, EndpointMode::PodIp)
}

fn runtime_in(create_timeout: Duration, endpoint_mode: EndpointMode) -> (Kubernetes, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    let settings = Settings {
        namespace: NS.into(),
        endpoint_mode,
        agent_image: "sandboxd/execd:test".into(),
        instance: INSTANCE.into(),
        create_timeout,
        storage_class: None,
    };
    (Kubernetes::new(client, settings), handle)
}

fn spec(id: &str) -> SandboxSpec {
    SandboxSpec {
        env: BTreeMap::from([("EXECD_ACCESS_TOKEN".into(), "tok-1".into())]),
        expires_at: Some(1_800_000_000_000),
        ..SandboxSpec::for_test(id, "python:3.12", &["sleep", "infinity"])
    }
}

/// One request the verifier took: what was asked, and how to answer.
pub(super) struct Asked {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) query: BTreeMap<String, String>,
    pub(super) content_type: Option<String>,
    pub(super) body: Value,
    pub(super) reply: Reply,
}

impl Asked {
    pub(super) fn answer(self, status: u16, body: Value) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.reply.send_response(response);
    }

    /// An apiserver `Status` failure.
    pub(super) fn fail(self, code: u16, reason: &str) {
        let message = format!("the server says {reason}");
        self.answer(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": message, "reason": reason, "code": code}),
        );
    }
}

pub(super) async fn next(handle: &mut Handle) -> Asked {
    let (request, reply) = tokio::time::timeout(Duration::from_secs(30), handle.next_request())
        .await
        .expect("the runtime made no further request")
        .expect("the client went away");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Asked {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect(),
        content_type: parts
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        body,
        reply,
    }
}

/// The next request, asserted to be `method path`.
async fn expect(handle: &mut Handle, method: Method, path: &str) -> Asked {
    let asked = next(handle).await;
    assert_eq!((&asked.method, asked.path.as_str()), (&method, path));
    asked
}

/// What the server stores of a created object: the body with a uid.
fn stored(mut body: Value, uid: &str) -> Value {
    body["metadata"]["uid"] = json!(uid);
    body
}

fn ready_pod(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": "u-1",
                     "labels": {"opensandbox.io/id": name.trim_start_matches("sbx-"),
                                "sandboxd.io/managed": "true", "sandboxd.io/instance": INSTANCE}},
        "spec": {"containers": [{"name": "sandbox", "image": "python:3.12"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "sandbox", "image": "python:3.12", "imageID": "",
                                          "ready": true, "restartCount": 0,
                                          "state": {"running": {}}}]}
    })
}

fn pending_pod(name: &str, waiting: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": "u-1"},
        "spec": {"containers": [{"name": "sandbox", "image": "nope:1"}]},
        "status": {"phase": "Pending"}
    });
    if let Some(reason) = waiting {
        pod["status"]["containerStatuses"] = json!([{"name": "sandbox", "image": "nope:1", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": "pull access denied"}}}]);
    }
    pod
}

/// A create without template files up to its wait: the Secret and the Pod stored, and the
/// Secret handed to the pod (`uid` u-1).
async fn created_without_files(handle: &mut Handle, id: &str) {
    let secret = expect(handle, Method::POST, "/api/v1/namespaces/sbx/secrets").await;
    let body = secret.body.clone();
    secret.answer(201, stored(body, "s-1"));
    let pod = expect(handle, Method::POST, "/api/v1/namespaces/sbx/pods").await;
    let body = pod.body.clone();
    pod.answer(201, stored(body, "u-1"));
    let path = format!("/api/v1/namespaces/sbx/secrets/sbx-{id}");
    expect(handle, Method::PATCH, &path).await.answer(
        200,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("sbx-{id}")}}),
    );
}

/// The four deletes of a removal, in order, each answered `answers[i]` (200, else 404); the
/// pod's at once (grace 0).
/// A remove's wait: the pod asked for until it is gone (answered 404 at once).
pub(super) async fn expect_pod_gone(handle: &mut Handle, id: &str) {
    expect(
        handle,
        Method::GET,
        &format!("/api/v1/namespaces/{NS}/pods/sbx-{id}"),
    )
    .await
    .fail(404, "NotFound");
}

async fn expect_deletes(handle: &mut Handle, id: &str, answers: [u16; 4]) {
    let paths = [
        format!("/api/v1/namespaces/{NS}/pods/sbx-{id}"),
        format!("/api/v1/namespaces/{NS}/secrets/sbx-{id}"),
        format!("/api/v1/namespaces/{NS}/configmaps/sbx-{id}-files"),
        format!("/api/v1/namespaces/{NS}/secrets/sbx-{id}-pull"),
    ];
    for (i, (path, code)) in paths.iter().zip(answers).enumerate() {
        let asked = expect(handle, Method::DELETE, path).await;
        if i == 0 {
            assert_eq!(asked.body["gracePeriodSeconds"], json!(0), "{}", asked.body);
        }
        if code == 200 {
            asked.answer(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            );
        } else {
            asked.fail(code, "NotFound");
        }
    }
}

#[tokio::test]
async fn create_makes_the_secret_files_and_pod_hands_them_to_the_pod_and_waits_for_ready() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let mut s = spec("abc");
    s.files = vec![SpecFile {
        path: "/etc/app.toml".into(),
        content: b"a = 1\n".to_vec(),
        mode: 0o644,
    }];
    let verifier = tokio::spawn(async move {
        let secret = expect(&mut handle, Method::POST, "/api/v1/namespaces/sbx/secrets").await;
        assert_eq!(secret.content_type.as_deref(), Some("application/json"));
        assert_eq!(secret.body["kind"], "Secret");
        assert_eq!(secret.body["metadata"]["name"], "sbx-abc");
        assert_eq!(secret.body["stringData"]["EXECD_ACCESS_TOKEN"], "tok-1");
        assert_eq!(
            secret.body["metadata"]["labels"]["sandboxd.io/instance"],
            INSTANCE
        );
        let body = secret.body.clone();
        secret.answer(201, stored(body, "s-1"));

        let files = expect(&mut handle, Method::POST, "/api/v1/namespaces/sbx/configmaps").await;
        assert_eq!(files.body["metadata"]["name"], "sbx-abc-files");
        assert_eq!(files.body["binaryData"]["f0"], "YSA9IDEK", "base64 of the file");
        let manifest: Value =
            serde_json::from_str(files.body["data"]["manifest.json"].as_str().unwrap()).unwrap();
        assert_eq!(
            manifest,
            json!([{"key": "f0", "path": "/etc/app.toml", "mode": 420}])
        );
        let body = files.body.clone();
        files.answer(201, stored(body, "c-1"));

        let pod = expect(&mut handle, Method::POST, "/api/v1/namespaces/sbx/pods").await;
        assert_eq!(pod.content_type.as_deref(), Some("application/json"));
        assert_eq!(pod.body["metadata"]["name"], "sbx-abc");
        assert_eq!(
            pod.body["spec"]["initContainers"][0]["image"],
            "sandboxd/execd:test"
        );
        assert!(
            !pod.body.to_string().contains("tok-1"),
            "the token is not in the pod spec"
        );
        let body = pod.body.clone();
        pod.answer(201, stored(body, "u-1"));

        for (path, kind) in [
            ("/api/v1/namespaces/sbx/secrets/sbx-abc", "Secret"),
            ("/api/v1/namespaces/sbx/configmaps/sbx-abc-files", "ConfigMap"),
        ] {
            let patch = expect(&mut handle, Method::PATCH, path).await;
            assert_eq!(
                patch.content_type.as_deref(),
                Some("application/merge-patch+json")
            );
            assert_eq!(
                patch.body,
                json!({"metadata": {"ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": "sbx-abc", "uid": "u-1"}]}})
            );
            patch.answer(
                200,
                json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": "x"}}),
            );
        }
        let get = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods/sbx-abc").await;
        get.answer(200, ready_pod("sbx-abc", "10.1.2.3"));
        handle
    });
    let instance = rt.create(s).await.unwrap();
    let _handle = verifier.await.unwrap();
    assert_eq!(instance.kind, RuntimeKind::Kubernetes);
    assert_eq!(instance.reference, "sbx-abc");
    let execd = rt.target(&instance, EXECD_PORT).unwrap();
    assert_eq!(execd.dial, Dial::Tcp("10.1.2.3:44772".parse().unwrap()));
    assert!(execd.execd);
    let app = rt.target(&instance, 8080).unwrap();
    assert_eq!((app.public.as_deref(), app.execd), (Some("10.1.2.3:8080"), false));
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_the_create_at_once_and_deletes_everything() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let verifier = tokio::spawn(async move {
        created_without_files(&mut handle, "img").await;
        let get = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods/sbx-img").await;
        get.answer(200, pending_pod("sbx-img", Some("ErrImagePull")));
        expect_deletes(&mut handle, "img", [200, 200, 404, 404]).await;
        handle
    });
    let e = rt.create(spec("img")).await.unwrap_err();
    let _handle = verifier.await.unwrap();
    match e {
        RuntimeError::ImageNotFound(m) => assert!(m.starts_with("IMAGE_PULL_FAILED: ErrImagePull"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_not_ready_in_time_is_deleted_and_the_create_says_pod_ready_timeout() {
    let (rt, mut handle) = runtime(Duration::from_secs(2));
    let verifier = tokio::spawn(async move {
        created_without_files(&mut handle, "slow").await;
        let mut gets = 0;
        loop {
            let asked = next(&mut handle).await;
            if asked.method == Method::DELETE {
                assert_eq!(asked.path, "/api/v1/namespaces/sbx/pods/sbx-slow");
                asked.answer(
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
                );
                break;
            }
            assert_eq!(asked.path, "/api/v1/namespaces/sbx/pods/sbx-slow");
            gets += 1;
            asked.answer(200, pending_pod("sbx-slow", Some("ContainerCreating")));
        }
        for _ in 0..3 {
            next(&mut handle).await.fail(404, "NotFound");
        }
        assert!(gets >= 2, "polled until the deadline ({gets} reads)");
        handle
    });
    let e = rt.create(spec("slow")).await.unwrap_err();
    let _handle = verifier.await.unwrap();
    // 504 KUBERNETES::POD_READY_TIMEOUT at the edge.
    match &e {
        RuntimeError::ReadyTimeout(m) => assert!(m.contains("pod sbx-slow was not Ready within 2 s"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// Issue 18: `image.auth` becomes the Secret `sbx-<id>-pull` (type dockerconfigjson), made
/// before the pod that names it in `imagePullSecrets`, then handed to the pod like the token's
/// Secret; GPUs and disk are the sandbox container's limits and requests.
#[tokio::test]
async fn issue18_a_private_image_gets_a_pull_secret_handed_to_the_pod() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let mut s = spec("priv");
    s.image = "ghcr.io/org/app:1".into();
    s.image_auth = Some(crate::orchestrator::runtime::RegistryAuth {
        username: "robot".into(),
        password: "s3cr3t".into(),
    });
    s.resources.gpu = Some(crate::orchestrator::runtime::Gpus::Count(1));
    s.resources.disk = Some(1 << 30);
    let verifier = tokio::spawn(async move {
        let token = expect(&mut handle, Method::POST, "/api/v1/namespaces/sbx/secrets").await;
        assert_eq!(token.body["metadata"]["name"], "sbx-priv");
        let body = token.body.clone();
        token.answer(201, stored(body, "s-1"));

        let pull = expect(&mut handle, Method::POST, "/api/v1/namespaces/sbx/secrets").await;
        assert_eq!(pull.body["metadata"]["name"], "sbx-priv-pull");
        assert_eq!(pull.body["type"], "kubernetes.io/dockerconfigjson");
        let config = pull.body["data"][".dockerconfigjson"].as_str().unwrap();
        let config: Value = serde_json::from_slice(
            &serde_json::from_value::<k8s_openapi::ByteString>(json!(config))
                .unwrap()
                .0,
        )
        .unwrap();
        assert_eq!(
            config,
            json!({"auths": {"ghcr.io": {"username": "robot", "password": "s3cr3t"}}})
        );
        let body = pull.body.clone();
        pull.answer(201, stored(body, "s-2"));

        let pod = expect(&mut handle, Method::POST, "/api/v1/namespaces/sbx/pods").await;
        assert_eq!(
            pod.body["spec"]["imagePullSecrets"],
            json!([{"name": "sbx-priv-pull"}])
        );
        let resources = &pod.body["spec"]["containers"][0]["resources"];
        let want = json!({"nvidia.com/gpu": "1", "ephemeral-storage": "1073741824"});
        assert_eq!((&resources["limits"], &resources["requests"]), (&want, &want));
        assert!(
            !pod.body.to_string().contains("s3cr3t"),
            "the password is not in the pod"
        );
        let body = pod.body.clone();
        pod.answer(201, stored(body, "u-1"));

        for name in ["sbx-priv", "sbx-priv-pull"] {
            let patch = expect(
                &mut handle,
                Method::PATCH,
                &format!("/api/v1/namespaces/sbx/secrets/{name}"),
            )
            .await;
            assert_eq!(
                patch.body,
                json!({"metadata": {"ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": "sbx-priv", "uid": "u-1"}]}})
            );
            patch.answer(
                200,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}),
            );
        }
        let get = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods/sbx-priv").await;
        get.answer(200, ready_pod("sbx-priv", "10.1.2.4"));
        handle
    });
    rt.create(s).await.unwrap();
    let _handle = verifier.await.unwrap();
}

#[tokio::test]
async fn a_pod_the_server_refuses_is_rejected_and_its_secret_deleted() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let verifier = tokio::spawn(async move {
        let secret = expect(&mut handle, Method::POST, "/api/v1/namespaces/sbx/secrets").await;
        let body = secret.body.clone();
        secret.answer(201, stored(body, "s-1"));
        expect(&mut handle, Method::POST, "/api/v1/namespaces/sbx/pods")
            .await
            .fail(422, "Invalid");
        expect_deletes(&mut handle, "bad", [404, 200, 404, 404]).await;
        handle
    });
    let e = rt.create(spec("bad")).await.unwrap_err();
    let _handle = verifier.await.unwrap();
    assert!(matches!(e, RuntimeError::Rejected(_)), "{e:?}");
}

#[tokio::test]
async fn a_name_clash_is_a_conflict_and_nothing_else_is_asked() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let verifier = tokio::spawn(async move {
        expect(&mut handle, Method::POST, "/api/v1/namespaces/sbx/secrets")
            .await
            .fail(409, "AlreadyExists");
        handle
    });
    let e = rt.create(spec("dup")).await.unwrap_err();
    let mut handle = verifier.await.unwrap();
    assert!(matches!(e, RuntimeError::Conflict(_)), "{e:?}");
    drop(rt);
    assert!(handle.next_request().await.is_none(), "no request after the 409");
}

#[tokio::test]
async fn start_removes_the_scheduling_gate_with_a_json_patch_and_waits() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let verifier = tokio::spawn(async move {
        let patch = expect(
            &mut handle,
            Method::PATCH,
            "/api/v1/namespaces/sbx/pods/sbx-later",
        )
        .await;
        assert_eq!(patch.content_type.as_deref(), Some("application/json-patch+json"));
        assert_eq!(
            patch.body,
            json!([{"op": "remove", "path": "/spec/schedulingGates"}])
        );
        patch.answer(200, pending_pod("sbx-later", None));
        expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods/sbx-later")
            .await
            .answer(200, ready_pod("sbx-later", "10.0.0.9"));
        handle
    });
    let gated = PodData::default().instance("sbx-later".into());
    assert!(rt.target(&gated, EXECD_PORT).is_none(), "no route before start");
    let started = rt.start(&gated).await.unwrap();
    let _handle = verifier.await.unwrap();
    assert_eq!(
        rt.target(&started, EXECD_PORT).unwrap().dial,
        Dial::Tcp("10.0.0.9:44772".parse().unwrap())
    );
}

#[tokio::test]
async fn remove_deletes_pod_secret_and_files_and_gone_is_fine() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let verifier = tokio::spawn(async move {
        expect_deletes(&mut handle, "old", [200, 404, 404, 404]).await;
        expect_pod_gone(&mut handle, "old").await;
        handle
    });
    rt.remove(&PodData::default().instance("sbx-old".into()))
        .await
        .unwrap();
    verifier.await.unwrap();
}

#[tokio::test]
async fn observe_all_lists_this_instances_pods_by_label() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let verifier = tokio::spawn(async move {
        let list = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods").await;
        assert_eq!(
            list.query.get("labelSelector").map(String::as_str),
            Some("sandboxd.io/managed=true,sandboxd.io/instance=inst1")
        );
        let mut unlabelled = ready_pod("sbx-x", "10.0.0.3");
        unlabelled["metadata"]["labels"] = json!({});
        list.answer(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"},
                   "items": [ready_pod("sbx-a", "10.0.0.1"), pending_pod("sbx-b", Some("ImagePullBackOff")), unlabelled]}),
        );
        handle
    });
    let all = rt.observe_all().await.unwrap();
    verifier.await.unwrap();
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        ["a"],
        "pods without an id label are not sandboxes"
    );
    let (instance, observed) = &all["a"];
    assert_eq!(observed, &Observed::Running);
    assert_eq!(PodData::of(instance).ip, Some("10.0.0.1".parse().unwrap()));
}

#[tokio::test]
async fn api_errors_are_classified() {
    type Wanted = fn(&Result<Observed, RuntimeError>) -> bool;
    let cases: [(u16, &str, Wanted); 7] = [
        (404, "NotFound", |r| matches!(r, Ok(Observed::Gone))),
        (409, "Conflict", |r| matches!(r, Err(RuntimeError::Conflict(_)))),
        (422, "Invalid", |r| matches!(r, Err(RuntimeError::Rejected(_)))),
        (429, "TooManyRequests", |r| {
            matches!(r, Err(RuntimeError::Transient(_)))
        }),
        (500, "InternalError", |r| {
            matches!(r, Err(RuntimeError::Transient(_)))
        }),
        (503, "ServiceUnavailable", |r| {
            matches!(r, Err(RuntimeError::Unavailable(_)))
        }),
        (403, "Forbidden", |r| {
            matches!(r, Err(RuntimeError::Engine { .. }))
        }),
    ];
    for (code, reason, want) in cases {
        let (rt, mut handle) = runtime(Duration::from_secs(60));
        let verifier = tokio::spawn(async move {
            expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods/sbx-e")
                .await
                .fail(code, reason);
        });
        let got = rt.observe(&PodData::default().instance("sbx-e".into())).await;
        verifier.await.unwrap();
        assert!(want(&got), "{code}: {got:?}");
    }
}

#[tokio::test]
async fn a_server_that_drops_the_connection_is_unavailable() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let verifier = tokio::spawn(async move {
        let asked = next(&mut handle).await;
        asked.reply.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
    });
    let got = rt.observe_all().await;
    verifier.await.unwrap();
    assert!(matches!(got, Err(RuntimeError::Unavailable(_))), "{got:?}");
}

#[tokio::test]
async fn the_event_stream_reports_changes_after_the_first_listing_and_relists_after_410() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let mut events = rt.events(None);
    let verifier = tokio::spawn(async move {
        let list = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods").await;
        assert_eq!(
            list.query.get("labelSelector").map(String::as_str),
            Some("sandboxd.io/managed=true,sandboxd.io/instance=inst1")
        );
        let mut starting = pending_pod("sbx-w", None);
        starting["metadata"]["labels"] = json!({"opensandbox.io/id": "w"});
        starting["metadata"]["resourceVersion"] = json!("5");
        list.answer(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": [starting]}),
        );
        // The watch from 5: the apiserver says the version is too old (410 in the stream).
        let watch = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods").await;
        assert_eq!(watch.query.get("watch").map(String::as_str), Some("true"));
        assert_eq!(watch.query.get("resourceVersion").map(String::as_str), Some("5"));
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "too old resource version: 5 (9)", "reason": "Expired", "code": 410}});
        let response = Response::builder()
            .status(200)
            .body(Body::from(format!("{gone}\n").into_bytes()))
            .unwrap();
        watch.reply.send_response(response);
        // The re-list shows the pod running: that is a change since the baseline.
        let relist = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods").await;
        assert!(!relist.query.contains_key("watch"), "{:?}", relist.query);
        let mut running = ready_pod("sbx-w", "10.0.0.7");
        running["metadata"]["labels"] = json!({"opensandbox.io/id": "w"});
        running["metadata"]["resourceVersion"] = json!("9");
        relist.answer(
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": [running]}),
        );
        handle
    });
    let first = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("an event")
        .expect("the stream goes on")
        .unwrap();
    let _handle = verifier.await.unwrap();
    assert_eq!(first.sandbox_id.as_deref(), Some("w"));
    assert_eq!(first.reference, "sbx-w");
    assert_eq!(first.kind, RuntimeEventKind::Started);
}

/// Port-forward mode: a target is a tunnel (no address for clients), and each connection
/// through it is a WebSocket upgrade of `pods/{name}/portforward?ports=P` offering
/// `v4.channel.k8s.io`; an API server that refuses it (403, RBAC) fails the connection with
/// its message.
#[cfg(feature = "k8s-portforward")]
#[tokio::test]
async fn port_forward_targets_are_tunnels_opened_by_a_portforward_upgrade() {
    let (rt, mut handle) = runtime_in(Duration::from_secs(60), EndpointMode::PortForward);
    let instance = PodData {
        uid: Some("u-1".into()),
        ip: Some("192.0.2.7".parse().unwrap()),
    }
    .instance("sbx-abc".into());
    let gated = PodData::default().instance("sbx-abc".into());
    assert!(
        rt.target(&gated, EXECD_PORT).is_none(),
        "no route before the pod has run"
    );

    for (port, execd) in [(EXECD_PORT, true), (8000, false)] {
        let target = rt.target(&instance, port).unwrap();
        assert_eq!(
            (target.public.as_deref(), target.execd, target.prefix.as_str()),
            (None, execd, "")
        );
        assert_eq!(target.authority(), format!("localhost:{port}"));
        let Dial::Tunnel(tunnel) = &target.dial else {
            panic!("not a tunnel: {target:?}");
        };
        assert_eq!(tunnel.port, port);
        let verifier = async {
            let (request, reply) = tokio::time::timeout(Duration::from_secs(30), handle.next_request())
                .await
                .expect("no portforward request")
                .expect("the client went away");
            assert_eq!(request.method(), Method::GET);
            assert_eq!(
                request.uri().path(),
                "/api/v1/namespaces/sbx/pods/sbx-abc/portforward"
            );
            let query: BTreeMap<String, String> =
                form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
                    .into_owned()
                    .filter(|(k, _)| !k.is_empty())
                    .collect();
            assert_eq!(query, BTreeMap::from([("ports".into(), port.to_string())]));
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_ascii_lowercase())
                    .unwrap_or_default()
            };
            assert_eq!(header("upgrade"), "websocket");
            assert!(
                header("connection").contains("upgrade"),
                "{:?}",
                request.headers()
            );
            assert!(
                header("sec-websocket-protocol")
                    .split(',')
                    .any(|p| p.trim() == "v4.channel.k8s.io"),
                "{:?}",
                request.headers()
            );
            assert!(!header("sec-websocket-key").is_empty());
            let asked = Asked {
                method: Method::GET,
                path: String::new(),
                query: BTreeMap::new(),
                content_type: None,
                body: Value::Null,
                reply,
            };
            asked.fail(403, "Forbidden");
        };
        let (opened, ()) = tokio::join!(tunnel.open(), verifier);
        let Err(e) = opened else {
            panic!("a refused port-forward opened");
        };
        let text = e.to_string();
        assert!(
            text.contains("port-forward to pod sbx-abc") && text.contains("Forbidden"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn the_events_of_a_sandbox_are_its_pods_events_listed_by_field_selector() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let verifier = tokio::spawn(async move {
        let list = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/events").await;
        assert_eq!(
            list.query.get("fieldSelector").map(String::as_str),
            Some("involvedObject.name=sbx-a,involvedObject.kind=Pod")
        );
        let event = |name: &str, reason: &str, at: &str| {
            json!({"metadata": {"name": name, "namespace": NS},
                   "involvedObject": {"kind": "Pod", "name": "sbx-a", "namespace": NS},
                   "reason": reason, "message": format!("{reason} message"), "type": "Normal", "count": 1,
                   "firstTimestamp": at, "lastTimestamp": at})
        };
        list.answer(
            200,
            json!({"apiVersion": "v1", "kind": "EventList", "metadata": {"resourceVersion": "3"},
                   "items": [event("sbx-a.2", "Started", "2026-01-01T00:00:03Z"),
                             event("sbx-a.1", "Scheduled", "2026-01-01T00:00:01Z")]}),
        );
        // A sandbox without an instance (its create failed): the pod name a create gives.
        let list = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/events").await;
        assert_eq!(
            list.query.get("fieldSelector").map(String::as_str),
            Some("involvedObject.name=sbx-b,involvedObject.kind=Pod")
        );
        list.fail(403, "Forbidden");
    });
    let instance = PodData::default().instance("sbx-a".into());
    let got = rt.object_events("a", Some(&instance)).await.unwrap();
    let reasons: Vec<&str> = got.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["Scheduled", "Started"], "oldest first: {got:?}");
    assert_eq!(got[0].message, "Scheduled message");
    let refused = rt.object_events("b", None).await;
    verifier.await.unwrap();
    assert!(matches!(refused, Err(RuntimeError::Engine { .. })), "{refused:?}");
}

/// `observe_all` answered without asking the server (a request would never be answered).
async fn from_the_store(rt: &Kubernetes) -> Vec<String> {
    let all = tokio::time::timeout(Duration::from_secs(5), rt.observe_all())
        .await
        .expect("observe_all asked the server instead of the store")
        .unwrap();
    all.into_keys().collect()
}

#[tokio::test]
async fn the_store_answers_once_synced_and_keeps_its_state_through_a_410_relist() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let mut events = rt.events(None);
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let consumer = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if tx.send(event.unwrap()).is_err() {
                return;
            }
        }
    });
    let labelled = |name: &str, rv: &str, pod: Value| {
        let mut pod = pod;
        pod["metadata"]["labels"] = json!({"opensandbox.io/id": name.trim_start_matches("sbx-")});
        pod["metadata"]["resourceVersion"] = json!(rv);
        pod
    };
    let list = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods").await;
    list.answer(
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5"},
               "items": [labelled("sbx-a", "4", ready_pod("sbx-a", "10.0.0.1")),
                         labelled("sbx-gone", "5", ready_pod("sbx-gone", "10.0.0.2"))]}),
    );
    // The watch from 5 means the listing is in the store: reads answer from it.
    let watch = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods").await;
    assert_eq!(watch.query.get("watch").map(String::as_str), Some("true"));
    assert_eq!(from_the_store(&rt).await, ["a", "gone"]);
    let observed = tokio::time::timeout(
        Duration::from_secs(5),
        rt.observe(&PodData::default().instance("sbx-a".into())),
    )
    .await
    .expect("observe asked the server instead of the store");
    assert_eq!(observed.unwrap(), Observed::Running);

    // 410: the watcher re-lists; until the new listing is complete, the old state stands.
    let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": "too old resource version: 5 (9)", "reason": "Expired", "code": 410}});
    watch.reply.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(format!("{gone}\n").into_bytes()))
            .unwrap(),
    );
    let relist = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods").await;
    assert!(!relist.query.contains_key("watch"), "{:?}", relist.query);
    assert_eq!(
        from_the_store(&rt).await,
        ["a", "gone"],
        "the re-list loses no state"
    );

    // The new listing: `gone` was deleted meanwhile, `b` created.
    relist.answer(
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"},
               "items": [labelled("sbx-a", "4", ready_pod("sbx-a", "10.0.0.1")),
                         labelled("sbx-b", "8", ready_pod("sbx-b", "10.0.0.3"))]}),
    );
    let _watch = expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods").await;
    assert_eq!(from_the_store(&rt).await, ["a", "b"]);
    let mut got = Vec::new();
    while got.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(30), heard.recv())
            .await
            .expect("the re-list's events")
            .expect("the stream goes on");
        got.push((event.reference, event.kind));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("sbx-b".to_owned(), RuntimeEventKind::Started),
            ("sbx-gone".to_owned(), RuntimeEventKind::Killed { signal: None }),
        ]
    );
    consumer.abort();
}
