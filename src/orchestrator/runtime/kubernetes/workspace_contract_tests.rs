//! L2 for the persistent workspace: the claim is created before everything else (a 409 is
//! the claim a resume finds), never deleted by `remove` (a Rootfs pause), and deleted by
//! `remove_workspace` (gone is fine).

use super::*;
use crate::orchestrator::runtime::Workspace;

const CLAIMS: &str = "/api/v1/namespaces/sbx/persistentvolumeclaims";

fn with_workspace(id: &str) -> SandboxSpec {
    SandboxSpec {
        workspace: Some(Workspace {
            size_bytes: Some(2 << 30),
        }),
        ..spec(id)
    }
}

/// The rest of a create once the claim is answered: Secret, Pod, hand-over, one Ready read.
async fn rest_of_create(handle: &mut Handle, id: &str) {
    created_without_files(handle, id).await;
    let name = format!("sbx-{id}");
    expect(
        handle,
        Method::GET,
        &format!("/api/v1/namespaces/sbx/pods/{name}"),
    )
    .await
    .answer(200, ready_pod(&name, "10.0.0.9"));
}

#[tokio::test]
async fn a_create_with_a_workspace_makes_the_claim_first_and_the_pod_mounts_it() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let verifier = tokio::spawn(async move {
        let claim = expect(&mut handle, Method::POST, CLAIMS).await;
        assert_eq!(claim.content_type.as_deref(), Some("application/json"));
        assert_eq!(claim.body["kind"], "PersistentVolumeClaim");
        assert_eq!(claim.body["metadata"]["name"], "sbx-ws1-ws");
        assert_eq!(claim.body["metadata"].get("ownerReferences"), None);
        assert_eq!(claim.body["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(
            claim.body["spec"]["resources"]["requests"]["storage"],
            json!("2147483648")
        );
        let body = claim.body.clone();
        claim.answer(201, stored(body, "c-1"));
        let secret = expect(&mut handle, Method::POST, "/api/v1/namespaces/sbx/secrets").await;
        let body = secret.body.clone();
        secret.answer(201, stored(body, "s-1"));
        let pod = expect(&mut handle, Method::POST, "/api/v1/namespaces/sbx/pods").await;
        let volumes = pod.body["spec"]["volumes"].as_array().unwrap().clone();
        assert!(
            volumes.contains(
                &json!({"name": "workspace", "persistentVolumeClaim": {"claimName": "sbx-ws1-ws"}})
            ),
            "{volumes:?}"
        );
        let body = pod.body.clone();
        pod.answer(201, stored(body, "u-1"));
        expect(
            &mut handle,
            Method::PATCH,
            "/api/v1/namespaces/sbx/secrets/sbx-ws1",
        )
        .await
        .answer(
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sbx-ws1"}}),
        );
        expect(&mut handle, Method::GET, "/api/v1/namespaces/sbx/pods/sbx-ws1")
            .await
            .answer(200, ready_pod("sbx-ws1", "10.0.0.9"));
        handle
    });
    let instance = rt.create(with_workspace("ws1")).await.unwrap();
    verifier.await.unwrap();
    assert_eq!(instance.reference, "sbx-ws1");
}

#[tokio::test]
async fn a_resume_finds_the_claim_remove_keeps_it_and_remove_workspace_deletes_it() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let verifier = tokio::spawn(async move {
        // The resume's create: the claim is there already.
        expect(&mut handle, Method::POST, CLAIMS)
            .await
            .fail(409, "AlreadyExists");
        rest_of_create(&mut handle, "ws2").await;
        // A Rootfs pause's removal: pod, Secret, ConfigMap, and not the claim.
        expect_deletes(&mut handle, "ws2", [200, 200, 404, 404]).await;
        expect_pod_gone(&mut handle, "ws2").await;
        // The sandbox's delete, twice: the second finds it gone.
        let path = format!("{CLAIMS}/sbx-ws2-ws");
        expect(&mut handle, Method::DELETE, &path).await.answer(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
        );
        expect(&mut handle, Method::DELETE, &path)
            .await
            .fail(404, "NotFound");
        handle
    });
    let instance = rt.create(with_workspace("ws2")).await.unwrap();
    rt.remove(&instance).await.unwrap();
    rt.remove_workspace("ws2").await.unwrap();
    rt.remove_workspace("ws2").await.unwrap();
    let mut handle = verifier.await.unwrap();
    drop(rt);
    assert!(handle.next_request().await.is_none(), "nothing else asked");
}

#[tokio::test]
async fn a_claim_the_server_refuses_fails_the_create_before_anything_else_is_made() {
    let (rt, mut handle) = runtime(Duration::from_secs(60));
    let verifier = tokio::spawn(async move {
        expect(&mut handle, Method::POST, CLAIMS)
            .await
            .fail(403, "Forbidden");
        handle
    });
    let e = rt.create(with_workspace("ws3")).await.unwrap_err();
    let mut handle = verifier.await.unwrap();
    assert!(
        matches!(
            &e,
            RuntimeError::Engine {
                op: "create the workspace claim",
                ..
            }
        ),
        "{e:?}"
    );
    drop(rt);
    assert!(
        handle.next_request().await.is_none(),
        "no request after the refusal"
    );
}
