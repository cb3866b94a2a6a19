//! Warm pools on the real Docker engine (§10): concurrent acquires against a small pool,
//! refill after release, a released sandbox's files gone from the next member, scale-down of
//! idle members only, allocated sandboxes surviving pool delete, a restart adopting members,
//! and the bad input of §10.
//!
//! Members carry the run label through the pool template's labels, so the harness removes
//! whatever a failed test leaves.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::docker::docker_available;
use crate::sandboxd::{containers_of, image, sandbox_body, Sandboxd, RUN_LABEL};
use crate::util::eventually;

/// Seconds an acquire may wait for a warming member in these tests (and the 429's
/// `Retry-After`).
const ACQUIRE_TIMEOUT: &str = "60";

/// A sandboxd whose `create` rate class is off (the load test's 50 acquires would spend it)
/// and whose acquires wait at most [`ACQUIRE_TIMEOUT`].
fn start() -> Option<(&'static str, Sandboxd, tempfile::TempDir)> {
    if !docker_available() {
        return None;
    }
    let image = image("busybox");
    let dir = tempfile::tempdir().unwrap();
    let d = Sandboxd::start_with(
        dir.path(),
        &crate::util::marker(),
        &["--rate-create", "0", "--pool-acquire-timeout", ACQUIRE_TIMEOUT],
    );
    Some((image, d, dir))
}

fn pool_body(d: &Sandboxd, name: &str, image: &str, cap: Value) -> Value {
    json!({
        "name": name,
        "template": {
            "metadata": {"labels": {RUN_LABEL: d.run}},
            "spec": {"containers": [{
                "name": "sandbox",
                "image": image,
                "command": ["tail", "-f", "/dev/null"],
                "env": [{"name": "FROM_POOL", "value": "yes"}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
            }]},
        },
        "capacitySpec": cap,
    })
}

async fn create_pool(d: &Sandboxd, body: Value) -> Value {
    let (status, pool) = d.json(Method::POST, "/v1/pools", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{pool}");
    pool
}

async fn pool_status(d: &Sandboxd, name: &str) -> Value {
    let (status, pool) = d.json(Method::GET, &format!("/v1/pools/{name}"), None).await;
    assert_eq!(status, 200, "{pool}");
    pool["status"].clone()
}

/// Waits until the pool has `available` idle members and none warming.
async fn wait_available(d: &Sandboxd, name: &str, available: u64) -> Value {
    eventually(
        180,
        &format!("{name} to have {available} available"),
        async || {
            let s = pool_status(d, name).await;
            (s["available"] == available && s["warming"] == 0).then_some(s)
        },
    )
    .await
}

/// `cat /etc/hostname` (the container's id) and `$OPENSANDBOX_ID` in the sandbox.
async fn identity(d: &Sandboxd, id: &str) -> (String, String) {
    let execd = d.endpoint(id, 44772, false).await;
    let (out, code) = execd
        .run("cat /etc/hostname; echo $OPENSANDBOX_ID $FROM_POOL")
        .await;
    assert_eq!(code, 0, "{out}");
    let mut lines = out.lines();
    (
        lines.next().unwrap_or_default().to_owned(),
        lines.next().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn fifty_concurrent_acquires_get_ten_members_once_and_a_release_refills_clean() {
    let Some((image, d, _dir)) = start() else {
        return;
    };
    create_pool(
        &d,
        pool_body(
            &d,
            "load",
            image,
            json!({"bufferMin": 1, "bufferMax": 5, "poolMin": 0, "poolMax": 10}),
        ),
    )
    .await;
    wait_available(&d, "load", 5).await;

    // Half through the acquire route, half through create with extensions.poolRef.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (req, body) = if i % 2 == 0 {
            (
                d.req(Method::POST, "/v1/pools/load/acquire"),
                json!({"metadata": {"n": i.to_string()}}),
            )
        } else {
            (
                d.req(Method::POST, "/v1/sandboxes"),
                json!({"extensions": {"poolRef": "load"}, "metadata": {"n": i.to_string()}}),
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
            201 | 202 => {
                assert_eq!(body["allocation"]["poolRef"], "load", "{body}");
                assert_eq!(body["status"]["state"], "Running", "{body}");
                ids.push(body["id"].as_str().unwrap().to_owned());
            }
            429 => {
                assert_eq!(body["code"], "POOL::CAPACITY_EXHAUSTED", "{body}");
                assert_eq!(retry.as_deref(), Some(ACQUIRE_TIMEOUT));
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ids.len(), refused), (10, 40));
    let s = pool_status(&d, "load").await;
    assert_eq!(
        (s["total"].as_u64(), s["allocated"].as_u64()),
        (Some(10), Some(10)),
        "{s}"
    );

    // Each a member of its own, told its new id through execd's env file.
    let mut hosts = BTreeSet::new();
    for id in &ids {
        let (host, env) = identity(&d, id).await;
        assert_eq!(env, format!("{id} yes"));
        assert!(hosts.insert(host), "a member was handed out twice");
    }
    // Listed as sandboxes; members are not.
    let (_, list) = d.json(Method::GET, "/v1/sandboxes?pageSize=200", None).await;
    let listed: BTreeSet<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect());

    // A file left in a released sandbox is gone from the next member.
    let first = &ids[0];
    let execd = d.endpoint(first, 44772, false).await;
    let (_, code) = execd.run("echo secret > /tmp/left-behind").await;
    assert_eq!(code, 0);
    let (status, _) = d
        .json(Method::POST, &format!("/v1/sandboxes/{first}/release"), None)
        .await;
    assert_eq!(status, 202);
    let (_, info) = d.info(first).await;
    assert_eq!(
        (&info["status"]["state"], &info["status"]["reason"]),
        (&json!("Terminated"), &json!("RELEASED")),
        "{info}"
    );
    let (status, again) = d
        .json(Method::POST, &format!("/v1/sandboxes/{first}/release"), None)
        .await;
    assert_eq!(
        (status.as_u16(), &again["code"]),
        (409, &json!("POOL::NOT_ALLOCATED"))
    );
    // Refilled (9 allocated, the freed slot warmed again), then handed out.
    wait_available(&d, "load", 1).await;
    let (status, next) = d
        .json(Method::POST, "/v1/pools/load/acquire", Some(json!({})))
        .await;
    assert_eq!(status, 201, "{next}");
    let next_id = next["id"].as_str().unwrap();
    let (host, _) = identity(&d, next_id).await;
    assert!(
        !hosts.contains(&host),
        "a recycled container was handed out again"
    );
    let execd = d.endpoint(next_id, 44772, false).await;
    let (out, _) = execd.run("cat /tmp/left-behind 2>/dev/null || echo clean").await;
    assert_eq!(out, "clean\n");

    // DELETE of a pooled sandbox releases it.
    let (status, _) = d
        .json(Method::DELETE, &format!("/v1/sandboxes/{}", ids[1]), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = d.info(&ids[1]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn put_scales_down_idle_only_and_allocated_sandboxes_survive_pool_delete_and_restart() {
    let Some((image, mut d, dir)) = start() else {
        return;
    };
    create_pool(
        &d,
        pool_body(
            &d,
            "shrink",
            image,
            json!({"bufferMin": 0, "bufferMax": 3, "poolMin": 0, "poolMax": 5}),
        ),
    )
    .await;
    wait_available(&d, "shrink", 3).await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let (status, sb) = d
            .json(
                Method::POST,
                "/v1/pools/shrink/acquire",
                Some(json!({"timeout": 600})),
            )
            .await;
        assert_eq!(status, 201, "{sb}");
        assert!(
            sb["expiresAt"].is_string(),
            "timeout is the allocation's expiry: {sb}"
        );
        kept.push(sb["id"].as_str().unwrap().to_owned());
    }
    let s = wait_available(&d, "shrink", 3).await;
    assert_eq!(s["total"], 5, "{s}");

    // A restart adopts members and pooled sandboxes alike.
    let before: BTreeSet<String> = containers_of(&d.run).into_iter().collect();
    let run = d.run.clone();
    d.stop();
    let restarted = Sandboxd::start_with(
        dir.path(),
        &run,
        &["--rate-create", "0", "--pool-acquire-timeout", ACQUIRE_TIMEOUT],
    );
    // The stopped one must not run its Drop, which removes the run's containers.
    std::mem::forget(std::mem::replace(&mut d, restarted));
    let s = wait_available(&d, "shrink", 3).await;
    assert_eq!(
        (s["total"].as_u64(), s["allocated"].as_u64()),
        (Some(5), Some(2)),
        "{s}"
    );
    let after: BTreeSet<String> = containers_of(&d.run).into_iter().collect();
    assert_eq!(before, after, "the restart kept every member");
    for id in &kept {
        assert_eq!(d.state(id).await, "Running");
    }

    let (status, pool) = d
        .json(
            Method::PUT,
            "/v1/pools/shrink",
            Some(json!({"capacitySpec": {"bufferMin": 0, "bufferMax": 0, "poolMin": 0, "poolMax": 2}})),
        )
        .await;
    assert_eq!(status, 200, "{pool}");
    assert_eq!(pool["status"]["revision"], "2");
    eventually(60, "idle members to be removed", async || {
        let s = pool_status(&d, "shrink").await;
        (s["total"] == 2 && s["available"] == 0 && containers_of(&d.run).len() == 2).then_some(())
    })
    .await;
    for id in &kept {
        let (_, env) = identity(&d, id).await;
        assert!(env.starts_with(id.as_str()), "{env}");
    }

    let (status, _) = d.json(Method::DELETE, "/v1/pools/shrink", None).await;
    assert_eq!(status, 204);
    let (status, err) = d.json(Method::GET, "/v1/pools/shrink", None).await;
    assert_eq!((status.as_u16(), &err["code"]), (404, &json!("POOL::NOT_FOUND")));
    for id in &kept {
        let (_, env) = identity(&d, id).await;
        assert!(
            env.starts_with(id.as_str()),
            "allocated sandboxes keep running: {env}"
        );
    }
    // A detached sandbox is deleted like any other.
    let (status, _) = d
        .json(Method::DELETE, &format!("/v1/sandboxes/{}", kept[0]), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(containers_of(&d.run).len(), 1);
}

#[tokio::test]
async fn pool_bad_input_gets_clear_errors() {
    let Some((image, d, _dir)) = start() else {
        return;
    };
    let cap = |min: u32, max: u32| json!({"bufferMin": min, "bufferMax": max, "poolMin": 0, "poolMax": 4});
    let expect = async |body: Value, status: u16, code: &str| {
        let (got, err) = d.json(Method::POST, "/v1/pools", Some(body.clone())).await;
        assert_eq!(
            (got.as_u16(), err["code"].as_str()),
            (status, Some(code)),
            "{body}: {err}"
        );
        err["message"].as_str().unwrap_or_default().to_owned()
    };
    let m = expect(
        pool_body(&d, "p1", image, cap(3, 2)),
        400,
        "SANDBOX::INVALID_PARAMETER",
    )
    .await;
    assert!(m.contains("bufferMin"), "{m}");
    let m = expect(
        pool_body(&d, "Upper", image, cap(0, 1)),
        400,
        "SANDBOX::INVALID_PARAMETER",
    )
    .await;
    assert!(m.contains("name"), "{m}");
    let mut both = pool_body(&d, "both", image, cap(0, 1));
    both["templateId"] = json!("tpl-x");
    let m = expect(both, 400, "SANDBOX::INVALID_PARAMETER").await;
    assert!(m.contains("templateId"), "{m}");
    let mut huge = pool_body(&d, "huge", image, cap(0, 1));
    huge["capacitySpec"]["poolMax"] = json!(1000);
    let m = expect(huge, 400, "SANDBOX::INVALID_PARAMETER").await;
    assert!(m.contains("poolMax"), "{m}");
    let (status, err) = d
        .json(Method::POST, "/v1/pools", Some(json!({"name": "x"})))
        .await;
    assert_eq!(status, 400, "{err}");

    // Unknown pools.
    for (method, path) in [
        (Method::GET, "/v1/pools/nope"),
        (Method::DELETE, "/v1/pools/nope"),
        (Method::POST, "/v1/pools/nope/acquire"),
    ] {
        let (status, err) = d.json(method, path, Some(json!({}))).await;
        assert_eq!(
            (status.as_u16(), &err["code"]),
            (404, &json!("POOL::NOT_FOUND")),
            "{path}"
        );
    }
    let (status, err) = d
        .json(
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"extensions": {"poolRef": "nope"}})),
        )
        .await;
    assert_eq!((status.as_u16(), &err["code"]), (404, &json!("POOL::NOT_FOUND")));
    for extra in [json!({"snapshotId": "s-1"}), json!({"templateId": "tpl-1"})] {
        let mut body = json!({"extensions": {"poolRef": "nope"}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, err) = d.json(Method::POST, "/v1/sandboxes", Some(body)).await;
        assert_eq!(
            (status.as_u16(), &err["code"]),
            (400, &json!("SANDBOX::INVALID_PARAMETER")),
            "{err}"
        );
    }

    // A template a pool uses cannot be deleted; a duplicate pool is a conflict.
    let (status, t) = d
        .json(
            Method::POST,
            "/v1/templates",
            Some(json!({"name": "pooled", "spec": {"image": image, "command": ["tail", "-f", "/dev/null"]}})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    let from_template = json!({"name": "tp", "templateId": "pooled",
        "capacitySpec": {"bufferMin": 0, "bufferMax": 0, "poolMin": 0, "poolMax": 1}});
    create_pool(&d, from_template.clone()).await;
    let (status, err) = d.json(Method::POST, "/v1/pools", Some(from_template)).await;
    assert_eq!(
        (status.as_u16(), &err["code"]),
        (409, &json!("POOL::ALREADY_EXISTS"))
    );
    let (status, err) = d.json(Method::DELETE, "/v1/templates/pooled", None).await;
    assert_eq!(
        (status.as_u16(), &err["code"]),
        (409, &json!("TEMPLATE::IN_USE")),
        "{err}"
    );

    // Release of a sandbox that is not from a pool.
    let plain = d.create(sandbox_body(image, &["tail", "-f", "/dev/null"])).await;
    let id = plain["id"].as_str().unwrap();
    let (status, err) = d
        .json(Method::POST, &format!("/v1/sandboxes/{id}/release"), None)
        .await;
    assert_eq!(
        (status.as_u16(), &err["code"]),
        (409, &json!("POOL::NOT_ALLOCATED"))
    );
}

#[tokio::test]
async fn a_resource_limits_override_on_acquire_changes_the_members_limits_live() {
    let Some((image, d, _dir)) = start() else {
        return;
    };
    create_pool(
        &d,
        pool_body(
            &d,
            "sized",
            image,
            json!({"bufferMin": 0, "bufferMax": 1, "poolMin": 0, "poolMax": 2}),
        ),
    )
    .await;
    wait_available(&d, "sized", 1).await;
    // §14.3: an idle member shows to an admin only, as a pool-member.
    let (status, listed) = d.json(Method::GET, "/v1/containers", None).await;
    assert_eq!(status, 200, "{listed}");
    let roles: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["pool-member"], "{listed}");
    let user = crate::sandboxd::mint(&d, "pool-user", "user").await;
    let (status, theirs, _) =
        crate::sandboxd::as_bearer(&d, &user, Method::GET, "/v1/containers", None).await;
    assert_eq!(status, 200, "{theirs}");
    assert_eq!(theirs["items"], json!([]), "{theirs}");
    let limits_of = |container: &str| {
        let out = crate::sandboxd::docker(&[
            "inspect",
            "--format",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
            container,
        ]);
        out.trim().to_owned()
    };
    let (status, sandbox) = d
        .json(
            Method::POST,
            "/v1/pools/sized/acquire",
            Some(json!({"resourceLimits": {"memory": "300Mi", "cpu": "1"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sandbox}");
    let id = sandbox["id"].as_str().unwrap();
    assert_eq!(
        sandbox["resourceLimits"],
        json!({"cpu": "1", "memory": "300Mi"}),
        "{sandbox}"
    );
    let (container, _) = identity(&d, id).await;
    assert_eq!(
        limits_of(&container),
        format!("{} 1000000000", 300 << 20),
        "docker inspect of {container}"
    );
    // The sandbox uses the new limit: the cgroup says so from inside.
    let execd = d.endpoint(id, 44772, false).await;
    let (out, code) = execd
        .run("cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
        .await;
    assert_eq!((out.trim(), code), (format!("{}", 300 << 20).as_str(), 0));

    // Bad values are 400 and take no member.
    wait_available(&d, "sized", 1).await;
    for (limits, code) in [
        (json!({"memory": "1Ki"}), "SANDBOX::INVALID_PARAMETER"),
        (json!({"cpu": "lots"}), "SANDBOX::INVALID_PARAMETER"),
        (json!({"scratch": "1Gi"}), "SANDBOX::INVALID_PARAMETER"),
        // Valid at create where the runtime offers it, never changed on a running member.
        (json!({"disk": "1Gi"}), "SANDBOX::API_NOT_SUPPORTED"),
    ] {
        let (status, body) = d
            .json(
                Method::POST,
                "/v1/pools/sized/acquire",
                Some(json!({"resourceLimits": limits})),
            )
            .await;
        assert_eq!(status, 400, "{limits}: {body}");
        assert_eq!(body["code"], code, "{body}");
    }
    assert_eq!(pool_status(&d, "sized").await["available"], 1);
}
