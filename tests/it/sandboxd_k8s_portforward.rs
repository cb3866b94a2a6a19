//! L3: sandboxd `--runtime kubernetes --kube-endpoint-mode port-forward` against OUR MODEL OF
//! KUBERNETES started with `--unroutable-pod-ips`, so every pod IP it reports is in
//! 192.0.2.0/24 (TEST-NET-1, routed nowhere): whatever sandboxd reaches of a sandbox it reaches
//! through `pods/portforward` on the API server. Through sandboxd's HTTP API only: create
//! (its readiness wait pings execd), a command, files, a user port (python's http.server) and
//! execd's PTY WebSocket through the server proxy, an endpoint that is the server proxy even
//! when a direct one is asked for, a port nothing listens on (502), delete.
//!
//! Built with `--features k8s-portforward`; runs whenever the Docker engine answers.

#![cfg(feature = "k8s-portforward")]

use futures_util::{SinkExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::docker::docker_available;
use crate::fake_kube::{agent_image, FakeKube};
use crate::sandboxd::{image, sandbox_body};
use crate::sandboxd_k8s::start_on_kube;
use crate::util::{eventually, marker};

#[tokio::test]
async fn sandboxd_on_the_fake_kube_reaches_pods_only_through_port_forward() {
    if !docker_available() {
        return;
    }
    let python = image("python");
    let fake = FakeKube::start(&["--unroutable-pod-ips"]);
    let pods: Api<Pod> = Api::namespaced(fake.client().await, "default");
    let data = tempfile::tempdir().unwrap();
    let d = start_on_kube(
        data.path(),
        &marker(),
        &fake.kubeconfig,
        "default",
        agent_image(),
        &["--kube-endpoint-mode", "port-forward"],
    );

    // Create: answered only once sandboxd's ping went through the API server.
    let body = sandbox_body(
        python,
        &["python3", "-m", "http.server", "8000", "--directory", "/tmp"],
    );
    let id = d.create(body).await["id"].as_str().unwrap().to_owned();
    eventually(90, "the sandbox to be Running", async || {
        let state = d.state(&id).await;
        assert!(
            !matches!(state.as_str(), "Failed" | "Terminated"),
            "{:?}",
            d.info(&id).await
        );
        (state == "Running").then_some(())
    })
    .await;
    let pod = pods.get(&format!("sbx-{id}")).await.unwrap();
    let pod_ip = pod.status.unwrap().pod_ip.unwrap();
    assert!(
        pod_ip.starts_with("192.0.2."),
        "the fake reports an unroutable IP: {pod_ip}"
    );

    // Every endpoint is the server proxy, even when a direct one is asked for.
    for asked in [false, true] {
        let (status, ep) = d
            .json(
                Method::GET,
                &format!("/v1/sandboxes/{id}/endpoints/44772?use_server_proxy={asked}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{ep}");
        let endpoint = ep["endpoint"].as_str().unwrap();
        assert!(
            endpoint.ends_with(&format!("/v1/sandboxes/{id}/proxy/44772")),
            "use_server_proxy={asked}: {ep}"
        );
        assert!(!endpoint.contains("192.0.2."), "{ep}");
        assert!(ep["headers"]["x-execd-access-token"].is_string(), "{ep}");
    }

    // execd through the tunnel: a command and files.
    let e = d.endpoint(&id, 44772, false).await;
    let (out, code) = e.run("echo $OPENSANDBOX_ID").await;
    assert_eq!((out.as_str(), code), (format!("{id}\n").as_str(), 0));
    e.upload("/tmp/hello.txt", b"through the API server\n").await;
    let got = e
        .req(Method::GET, "/files/download?path=/tmp/hello.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"through the API server\n");

    // A user port: the python server, straight through its own tunnel (not execd's proxy).
    let app = d.endpoint(&id, 8000, false).await;
    assert!(
        app.base.ends_with(&format!("/v1/sandboxes/{id}/proxy/8000")),
        "{}",
        app.base
    );
    let page = eventually(30, "the http.server to answer", async || {
        let resp = d
            .req(Method::GET, &format!("/v1/sandboxes/{id}/proxy/8000/hello.txt"))
            .send()
            .await
            .unwrap();
        (resp.status() == 200).then_some(resp)
    })
    .await;
    assert!(
        page.headers()["server"].to_str().unwrap().contains("SimpleHTTP"),
        "{:?}",
        page.headers()
    );
    assert_eq!(page.text().await.unwrap(), "through the API server\n");

    // A port nothing listens on: the fake's error channel, told as unreachable.
    let resp = d
        .req(Method::GET, &format!("/v1/sandboxes/{id}/proxy/8001/"))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    assert!(text.contains("8001"), "{text}");

    // A WebSocket through the tunnel: execd's PTY, its upgrade relayed over port-forward.
    let (status, pty) = d
        .json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/proxy/44772/pty"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{pty}");
    let sid = pty["session_id"].as_str().unwrap_or_else(|| panic!("{pty}"));
    let ws_url = format!(
        "{}/v1/sandboxes/{id}/proxy/44772/pty/{sid}/ws",
        d.base.replacen("http://", "ws://", 1)
    );
    let mut request = ws_url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("OPEN-SANDBOX-API-KEY", d.key.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    // A stdin frame: 0x00, then the bytes.
    let mut stdin = vec![0x00];
    stdin.extend_from_slice(b"echo pf-$((6*7))\n");
    ws.send(Message::Binary(stdin.into())).await.unwrap();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(msg) = ws.next().await {
            if let Message::Binary(b) = msg.unwrap() {
                seen.extend_from_slice(&b[1.min(b.len())..]);
            }
            if memchr::memmem::find(&seen, b"pf-42").is_some() {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "the PTY's output: {:?}",
        String::from_utf8_lossy(&seen)
    );
    drop(ws);

    // Delete.
    let (status, _) = d.json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually(60, "the pod to be deleted", async || {
        pods.get_opt(&format!("sbx-{id}"))
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(d.info(&id).await.0, 404);
}
