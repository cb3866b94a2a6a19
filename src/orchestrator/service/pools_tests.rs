//! Warm pools over the fake runtime: the reconciler's capacity rules, atomic acquire under
//! concurrency, release and recycling, members that die while idle, scale-down, pool delete,
//! and the bad input of §10.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::super::tests::{root, user};
use super::*;
use crate::orchestrator::auth::{Authority, Role};
use crate::orchestrator::runtime::fake::FakeRuntime;
use crate::orchestrator::runtime::Observed;
use crate::orchestrator::service::Settings;
use crate::orchestrator::spec::Limits;
use crate::orchestrator::store::Store;
use crate::wire::pools::{AcquireRequest, CreatePoolRequest, PoolCapacitySpec, UpdatePoolRequest};

struct Rig {
    service: Arc<Service>,
    fake: FakeRuntime,
    reconciler: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.reconciler.abort();
    }
}

/// A service over the fake runtime, its pool reconciler running, acquires waiting at most
/// `acquire_timeout`.
async fn rig(acquire_timeout: Duration) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::start().await;
    let keys = crate::orchestrator::auth::jwt::Keys::new(b"0123456789abcdef0123456789abcdef", &[]).unwrap();
    let settings = Settings {
        limits: Limits {
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
            acquire_timeout,
        },
    };
    let service = Arc::new(Service::new(
        Store::open(dir.path()).unwrap(),
        Arc::new(fake.clone()),
        Arc::new(Authority::new(Some("key".into()), keys, Vec::new())),
        settings,
    ));
    let reconciler = tokio::spawn(service.clone().run_pools());
    Rig {
        service,
        fake,
        reconciler,
        _dir: dir,
    }
}

fn capacity(buffer_min: u32, buffer_max: u32, pool_min: u32, pool_max: u32) -> PoolCapacitySpec {
    PoolCapacitySpec {
        buffer_max,
        buffer_min,
        pool_max,
        pool_min,
    }
}

fn pool_request(name: &str, cap: PoolCapacitySpec) -> CreatePoolRequest {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "template": {
            "metadata": {"labels": {"team": "pools"}},
            "spec": {"containers": [{
                "name": "sandbox",
                "image": "busybox",
                "command": ["sleep"],
                "args": ["infinity"],
                "env": [{"name": "FROM_POOL", "value": "1"}],
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
            }]},
        },
        "capacitySpec": cap,
    }))
    .unwrap()
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Rig {
    async fn status(&self, pool: &str) -> crate::wire::pools::PoolStatus {
        self.service.get_pool(pool).await.unwrap().status
    }

    async fn wait_available(&self, pool: &str, available: u32) {
        wait_for(&format!("{pool} has {available} available"), || async {
            let s = self.status(pool).await;
            s.available == available && s.warming == 0
        })
        .await;
    }

    async fn acquire(&self, pool: &str) -> Result<Sandbox, Error> {
        self.service
            .acquire_from_pool(pool, AcquireRequest::default(), &root())
            .await
    }

    /// Ids of the fake's sandboxes (pool members are labelled `pm-…`).
    fn members(&self) -> BTreeSet<String> {
        self.fake
            .sandboxes()
            .values()
            .map(|s| s.spec.id.clone())
            .collect()
    }
}

#[tokio::test]
async fn the_pool_warms_to_buffer_max_and_members_are_invisible_to_sandbox_routes() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    let created = s
        .create_pool(pool_request("warm", capacity(1, 3, 0, 5)), &root())
        .await
        .unwrap();
    assert_eq!(created.image, "busybox");
    rig.wait_available("warm", 3).await;
    let members = rig.members();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.starts_with("pm-")), "{members:?}");
    let spec = &rig.fake.sandboxes().values().next().unwrap().spec.clone();
    assert_eq!(spec.entrypoint, ["sleep", "infinity"]);
    assert_eq!(spec.env.get("FROM_POOL").map(String::as_str), Some("1"));
    assert_eq!(spec.labels.get("team").map(String::as_str), Some("pools"));
    assert_eq!(spec.resources.memory, Some(256 << 20));
    assert_eq!(spec.expires_at, None, "members never expire");

    // Neither listed nor swept as sandboxes.
    let list = s.list(ListFilterForTests::all(), &root()).await.unwrap();
    assert!(list.items.is_empty(), "{:?}", list.items);
    assert_eq!(s.sweep_orphans().await.unwrap(), 0);
    let done = s.reconcile().await.unwrap();
    assert_eq!(done.removed, 0, "{done:?}");
    assert_eq!(rig.members(), members);
}

/// A stand-in for the list filter of the sandbox routes.
struct ListFilterForTests;

impl ListFilterForTests {
    fn all() -> crate::orchestrator::service::ListFilter {
        crate::orchestrator::service::ListFilter {
            page: 1,
            page_size: 200,
            ..Default::default()
        }
    }
}

#[tokio::test]
async fn concurrent_acquires_get_each_member_once_and_the_rest_429() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("busy", capacity(0, 3, 0, 5)), &root())
        .await
        .unwrap();
    rig.wait_available("busy", 3).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let service = s.clone();
        tasks.spawn(async move {
            service
                .acquire_from_pool("busy", AcquireRequest::default(), &root())
                .await
        });
    }
    let (mut got, mut refused) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(sandbox) => got.push(sandbox),
            Err(Error::CapacityExhausted { pool, retry_after }) => {
                assert_eq!((pool.as_str(), retry_after), ("busy", 5));
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        (got.len(), refused),
        (5, 7),
        "{:#?} {:#?}",
        s.store.members().await.unwrap(),
        rig.status("busy").await
    );
    let mut instances = BTreeSet::new();
    for sandbox in &got {
        let record = s.store.get(&sandbox.id).await.unwrap().unwrap();
        assert!(
            instances.insert(record.instance.clone().unwrap().reference),
            "a member was handed out twice"
        );
        assert_eq!(
            sandbox
                .allocation
                .as_ref()
                .map(|a| (a.mode.as_str(), a.pool_ref.as_str(), a.state.as_str())),
            Some(("pool", "busy", "allocated"))
        );
        assert_eq!(sandbox.status.state, "Running");
    }
    let status = rig.status("busy").await;
    assert_eq!((status.total, status.allocated, status.available), (5, 5, 0));
    // Listed now: the acquired sandboxes, found in the runtime by their member's label.
    let list = s.list(ListFilterForTests::all(), &root()).await.unwrap();
    assert_eq!(list.items.len(), 5);
    assert!(
        list.items.iter().all(|i| i.status.state == "Running"),
        "{:?}",
        list.items
    );
}

#[tokio::test]
async fn acquire_writes_the_id_and_env_through_execd() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("env", capacity(0, 1, 0, 2)), &root())
        .await
        .unwrap();
    rig.wait_available("env", 1).await;
    let req: AcquireRequest = serde_json::from_value(serde_json::json!({
        "env": {"GREETING": "it's me", "PLAIN": "a b", "GONE": null},
        "metadata": {"k": "v"},
        "timeout": 120,
    }))
    .unwrap();
    let sandbox = s.acquire_from_pool("env", req, &root()).await.unwrap();
    assert!(sandbox.expires_at.is_some());
    let record = s.store.get(&sandbox.id).await.unwrap().unwrap();
    let fake = rig.fake.sandboxes();
    let member = &fake[&record.instance.unwrap().reference];
    let upload = String::from_utf8_lossy(&member.uploads[0]).into_owned();
    assert!(
        upload.contains(&format!("OPENSANDBOX_ID='{}'", sandbox.id)),
        "{upload}"
    );
    assert!(upload.contains("GREETING=\"it's me\""), "{upload}");
    assert!(upload.contains("PLAIN='a b'"), "{upload}");
    assert!(!upload.contains("GONE"), "{upload}");
    assert!(upload.contains(EXECD_ENVS_FILE), "{upload}");
}

#[tokio::test]
async fn release_removes_the_member_and_the_pool_refills() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("recycle", capacity(0, 2, 0, 4)), &root())
        .await
        .unwrap();
    rig.wait_available("recycle", 2).await;
    let sandbox = rig.acquire("recycle").await.unwrap();
    let record = s.store.get(&sandbox.id).await.unwrap().unwrap();
    let reference = record.instance.clone().unwrap().reference;
    rig.wait_available("recycle", 2).await;
    s.release(&sandbox.id, &root()).await.unwrap();
    assert!(
        !rig.fake.sandboxes().contains_key(&reference),
        "Delete recycling removes the container"
    );
    let after = s.get(&sandbox.id, &root()).await.unwrap();
    assert_eq!(
        (after.status.state.as_str(), after.status.reason.as_deref()),
        ("Terminated", Some("RELEASED"))
    );
    assert_eq!(after.allocation.unwrap().state, "released");
    let again = s.release(&sandbox.id, &root()).await.unwrap_err();
    assert!(
        matches!(again, Error::Conflict(Conflict::NotAllocated(_))),
        "{again}"
    );
    rig.wait_available("recycle", 2).await;
    let status = rig.status("recycle").await;
    assert_eq!((status.total, status.allocated), (2, 0));

    // DELETE on a pooled sandbox is a release, and it is gone.
    let other = rig.acquire("recycle").await.unwrap();
    s.delete(&other.id, &root()).await.unwrap();
    assert!(matches!(
        s.get(&other.id, &root()).await.unwrap_err(),
        Error::NotFound { .. }
    ));
    rig.wait_available("recycle", 2).await;
}

#[tokio::test]
async fn a_sandbox_not_from_a_pool_cannot_be_released() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    let req = serde_json::from_value(serde_json::json!({
        "image": {"uri": "busybox"}, "entrypoint": ["sleep", "infinity"],
    }))
    .unwrap();
    let created = s.create(req, &root(), None).await.unwrap();
    let err = s.release(&created.id, &root()).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(Conflict::NotAllocated(_))), "{err}");
}

#[tokio::test]
async fn an_idle_member_that_dies_is_replaced_and_never_handed_out() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("fragile", capacity(0, 1, 0, 1)), &root())
        .await
        .unwrap();
    rig.wait_available("fragile", 1).await;
    let dead = rig.members().into_iter().next().unwrap();
    rig.fake.set_observed(
        &dead,
        Observed::Exited {
            code: Some(137),
            oom: false,
            message: None,
        },
    );
    wait_for("the dead member is replaced", || async {
        let members = rig.members();
        !members.contains(&dead) && members.len() == 1 && rig.status("fragile").await.available == 1
    })
    .await;
    assert_eq!(rig.status("fragile").await.failed, 1);
    let sandbox = rig.acquire("fragile").await.unwrap();
    let record = s.store.get(&sandbox.id).await.unwrap().unwrap();
    assert_ne!(record.pool.unwrap().member, dead);
}

#[tokio::test]
async fn put_scales_down_idle_members_only() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("shrink", capacity(0, 3, 0, 5)), &root())
        .await
        .unwrap();
    rig.wait_available("shrink", 3).await;
    let a = rig.acquire("shrink").await.unwrap();
    let b = rig.acquire("shrink").await.unwrap();
    rig.wait_available("shrink", 3).await;
    assert_eq!(rig.status("shrink").await.total, 5);
    let updated = s
        .update_pool(
            "shrink",
            UpdatePoolRequest {
                capacity_spec: capacity(0, 0, 0, 2),
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.status.revision, "2");
    wait_for("idle members are scaled down", || async {
        let st = rig.status("shrink").await;
        // The row goes first, then the container.
        (st.total, st.available, st.allocated) == (2, 0, 2) && rig.fake.sandboxes().len() == 2
    })
    .await;
    for id in [&a.id, &b.id] {
        assert_eq!(s.get(id, &root()).await.unwrap().status.state, "Running");
    }
}

#[tokio::test]
async fn an_allocated_sandbox_survives_pool_delete() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("doomed", capacity(0, 2, 0, 3)), &root())
        .await
        .unwrap();
    rig.wait_available("doomed", 2).await;
    let kept = rig.acquire("doomed").await.unwrap();
    rig.wait_available("doomed", 2).await;
    s.delete_pool("doomed").await.unwrap();
    // Idle members go at once; one still warming goes when its warm-up sees the pool gone.
    wait_for("idle and warming members are removed", || async {
        s.pools.lock_warming().is_empty() && rig.fake.sandboxes().len() == 1
    })
    .await;
    assert_eq!(s.get(&kept.id, &root()).await.unwrap().status.state, "Running");
    assert!(matches!(
        s.get_pool("doomed").await.unwrap_err(),
        Error::NotFound { kind: Kind::Pool, .. }
    ));
    // A reconciler pass and a restart's recovery leave it alone.
    s.pools.poke.notify_one();
    assert_eq!(s.sweep_orphans().await.unwrap(), 0);
    assert_eq!(s.reconcile().await.unwrap().removed, 0);
    assert_eq!(rig.fake.sandboxes().len(), 1);
    // Deleting it removes its container.
    s.delete(&kept.id, &root()).await.unwrap();
    assert!(rig.fake.sandboxes().is_empty());
}

#[tokio::test]
async fn members_of_a_deleted_pool_left_behind_are_removed_and_stale_warming_ones_too() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    // A row of a pool that no longer exists, with its container, as a crash would leave.
    let instance = rig.fake.plant("pm-left", Observed::Running);
    s.store
        .insert_stray_member(&MemberRow {
            id: "pm-left".into(),
            pool: "gone".into(),
            state: MemberState::Idle,
            sandbox_id: None,
            instance: Some(instance),
            token: "t".into(),
            created_at: 1,
            ready_at: Some(1),
        })
        .await
        .unwrap();
    // A warming member nothing follows (sandboxd restarted mid warm-up).
    s.store
        .insert_stray_member(&MemberRow {
            id: "pm-stale".into(),
            pool: "gone".into(),
            state: MemberState::Warming,
            sandbox_id: None,
            instance: None,
            token: "t".into(),
            created_at: 2,
            ready_at: None,
        })
        .await
        .unwrap();
    s.pools.poke.notify_one();
    wait_for("left-behind members are removed", || async {
        rig.fake.sandboxes().is_empty() && s.store.members().await.unwrap().is_empty()
    })
    .await;
}

#[tokio::test]
async fn nothing_idle_and_no_room_is_429_at_once_and_a_warming_member_is_waited_for() {
    let rig = rig(Duration::from_secs(30)).await;
    let s = &rig.service;
    s.create_pool(pool_request("one", capacity(0, 1, 0, 1)), &root())
        .await
        .unwrap();
    rig.wait_available("one", 1).await;
    let first = rig.acquire("one").await.unwrap();
    // Full (total = poolMax, nothing warming): refused without waiting 30 s.
    let err = rig.acquire("one").await.unwrap_err();
    assert!(
        matches!(&err, Error::CapacityExhausted { retry_after: 30, .. }),
        "{err}"
    );
    // Released: the reconciler warms a replacement, and an acquire waiting for it gets it.
    let waiter = {
        let service = s.clone();
        tokio::spawn(async move {
            service
                .acquire_from_pool("one", AcquireRequest::default(), &root())
                .await
        })
    };
    s.release(&first.id, &root()).await.unwrap();
    let second = waiter.await.unwrap();
    // The waiter may have looked before the release (429: full) or after it (a member).
    if let Ok(sandbox) = second {
        assert_eq!(sandbox.status.state, "Running");
    } else {
        rig.wait_available("one", 1).await;
        rig.acquire("one").await.unwrap();
    }
}

#[tokio::test]
async fn acquire_through_create_with_pool_ref() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("sdk", capacity(0, 1, 0, 2)), &root())
        .await
        .unwrap();
    rig.wait_available("sdk", 1).await;
    let req = serde_json::from_value(serde_json::json!({
        "image": {"uri": "busybox"},
        "entrypoint": ["sleep", "infinity"],
        "resourceLimits": {"cpu": "1", "memory": "2Gi"},
        "timeout": 300,
        "extensions": {"poolRef": "sdk"},
    }))
    .unwrap();
    let created = s.create(req, &root(), None).await.unwrap();
    assert_eq!(created.status.state, "Running");
    assert_eq!(created.allocation.unwrap().pool_ref, "sdk");
    // "*" picks the pool by image.
    rig.wait_available("sdk", 1).await;
    let any = serde_json::from_value(serde_json::json!({
        "image": {"uri": "busybox"}, "extensions": {"poolRef": "*"},
    }))
    .unwrap();
    let picked = s.create(any, &root(), None).await.unwrap();
    assert_eq!(picked.allocation.unwrap().pool_ref, "sdk");
    let none = serde_json::from_value(serde_json::json!({
        "image": {"uri": "python"}, "extensions": {"poolRef": "*"},
    }))
    .unwrap();
    assert!(matches!(
        s.create(none, &root(), None).await.unwrap_err(),
        Error::NotFound { kind: Kind::Pool, .. }
    ));
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    let invalid = |e: Error| match e {
        Error::Invalid(m) => m,
        other => panic!("expected 400, got {other:?}"),
    };
    let m = invalid(
        s.create_pool(pool_request("p", capacity(3, 2, 0, 5)), &root())
            .await
            .unwrap_err(),
    );
    assert!(m.contains("bufferMin"), "{m}");
    let m = invalid(
        s.create_pool(pool_request("Upper", capacity(0, 1, 0, 1)), &root())
            .await
            .unwrap_err(),
    );
    assert!(m.contains("name"), "{m}");
    let m = invalid(
        s.create_pool(pool_request("big", capacity(0, 1, 0, 21)), &root())
            .await
            .unwrap_err(),
    );
    assert!(m.contains("poolMax"), "{m}");
    let m = invalid(
        s.create_pool(pool_request("min", capacity(0, 1, 3, 2)), &root())
            .await
            .unwrap_err(),
    );
    assert!(m.contains("poolMin"), "{m}");
    let mut both = pool_request("both", capacity(0, 1, 0, 1));
    both.template_id = Some("tpl-x".into());
    let m = invalid(s.create_pool(both, &root()).await.unwrap_err());
    assert!(m.contains("templateId"), "{m}");
    let mut neither = pool_request("neither", capacity(0, 1, 0, 1));
    neither.template = None;
    invalid(s.create_pool(neither, &root()).await.unwrap_err());
    let mut noop = pool_request("noop", capacity(0, 1, 0, 1));
    noop.recycle_strategy = Some(crate::wire::pools::RecycleStrategy {
        kind: RecycleType::Noop,
    });
    let m = invalid(s.create_pool(noop, &root()).await.unwrap_err());
    assert!(m.contains("dedicatedOwner"), "{m}");
    let mut no_image = pool_request("noimage", capacity(0, 1, 0, 1));
    no_image.template = Some(serde_json::json!({"spec": {"containers": [{"name": "x"}]}}));
    invalid(s.create_pool(no_image, &root()).await.unwrap_err());

    s.create_pool(pool_request("dup", capacity(0, 0, 0, 1)), &root())
        .await
        .unwrap();
    assert!(matches!(
        s.create_pool(pool_request("dup", capacity(0, 0, 0, 1)), &root())
            .await
            .unwrap_err(),
        Error::Conflict(Conflict::PoolExists(_))
    ));
    assert!(matches!(
        rig.acquire("nope").await.unwrap_err(),
        Error::NotFound { kind: Kind::Pool, .. }
    ));
    assert!(matches!(
        s.update_pool(
            "nope",
            UpdatePoolRequest {
                capacity_spec: capacity(0, 0, 0, 1)
            }
        )
        .await
        .unwrap_err(),
        Error::NotFound { kind: Kind::Pool, .. }
    ));
    assert!(matches!(
        s.delete_pool("nope").await.unwrap_err(),
        Error::NotFound { kind: Kind::Pool, .. }
    ));
    for extra in [
        serde_json::json!({"snapshotId": "snap-1"}),
        serde_json::json!({"templateId": "tpl-1"}),
    ] {
        let mut body = serde_json::json!({"extensions": {"poolRef": "dup"}});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let req = serde_json::from_value(body).unwrap();
        let m = invalid(s.create(req, &root(), None).await.unwrap_err());
        assert!(m.contains("poolRef"), "{m}");
    }
    // A user may acquire but not write pools (the route checks the role); a viewer neither.
    let viewer = user("v", Role::Viewer);
    assert!(viewer.require(crate::orchestrator::auth::Perm::Write).is_err());
}

#[tokio::test]
async fn a_template_a_pool_uses_cannot_be_deleted() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    let template = crate::wire::templates::CreateTemplateRequest {
        name: Some("base".into()),
        spec: Some(
            serde_json::from_value(serde_json::json!({"image": "busybox", "env": {"T": "1"}})).unwrap(),
        ),
        ..Default::default()
    };
    let t = s.create_template(template, &root()).await.unwrap();
    let req: CreatePoolRequest = serde_json::from_value(serde_json::json!({
        "name": "from-template",
        "templateId": "base",
        "capacitySpec": capacity(0, 1, 0, 1),
    }))
    .unwrap();
    let pool = s.create_pool(req, &root()).await.unwrap();
    assert_eq!(
        (pool.template_id.as_deref(), pool.template_version),
        (Some(t.template_id.as_str()), Some(1))
    );
    rig.wait_available("from-template", 1).await;
    let member = rig.fake.sandboxes().values().next().unwrap().spec.clone();
    assert_eq!(member.env.get("T").map(String::as_str), Some("1"));
    let err = s.delete_template("base", &root()).await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict(Conflict::TemplateInUse(_))),
        "{err}"
    );
    s.delete_pool("from-template").await.unwrap();
    s.delete_template("base", &root()).await.unwrap();
}

#[tokio::test]
async fn members_show_in_the_containers_view_and_their_events_in_the_sandbox_journal() {
    use crate::orchestrator::runtime::{RuntimeEvent, RuntimeEventKind};
    use crate::orchestrator::service::ContainerFilter;
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("view", capacity(0, 2, 0, 2)), &root())
        .await
        .unwrap();
    rig.wait_available("view", 2).await;
    let filter = || ContainerFilter {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    let idle = s.list_containers(filter(), &root()).await.unwrap().items;
    assert_eq!(idle.len(), 2);
    assert!(
        idle.iter().all(|c| c.role == "pool-member"
            && c.pool_ref.as_deref() == Some("view")
            && c.sandbox_id.is_none()),
        "{idle:?}"
    );
    let alice = user("alice", Role::User);
    assert!(
        s.list_containers(filter(), &alice)
            .await
            .unwrap()
            .items
            .is_empty(),
        "idle members are for admins only"
    );

    let sandbox = s
        .acquire_from_pool("view", AcquireRequest::default(), &alice)
        .await
        .unwrap();
    let hers = s.list_containers(filter(), &alice).await.unwrap().items;
    assert_eq!(hers.len(), 1, "{hers:?}");
    assert_eq!(
        (
            hers[0].role.as_str(),
            hers[0].sandbox_id.as_deref(),
            hers[0].pool_ref.as_deref()
        ),
        ("sandbox", Some(sandbox.id.as_str()), Some("view"))
    );
    assert_eq!(s.container(&sandbox.id, &alice).await.unwrap().id, hers[0].id);
    let in_pool = ContainerFilter {
        pool_ref: Some("view".into()),
        ..filter()
    };
    assert_eq!(s.list_containers(in_pool, &root()).await.unwrap().items.len(), 2);

    // The member's container is labelled with the member's id; its events are the sandbox's.
    let reference = hers[0].id.clone();
    let member = rig.fake.sandboxes()[&reference].spec.id.clone();
    assert_ne!(member, sandbox.id);
    s.note_runtime_event(&RuntimeEvent {
        sandbox_id: Some(member),
        reference,
        at: crate::wire::time::now_ms(),
        kind: RuntimeEventKind::Died { code: Some(1) },
    })
    .await;
    let journal = s.journal(&sandbox.id, 0, 100, &alice).await.unwrap().items;
    let kinds: Vec<&str> = journal.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["Allocated", "Exited"], "{journal:?}");
}

#[tokio::test]
async fn a_pooled_sandbox_pauses_with_freeze_and_snapshots_but_not_with_rootfs() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("pausing", capacity(0, 1, 0, 2)), &root())
        .await
        .unwrap();
    rig.wait_available("pausing", 1).await;
    let sandbox = rig.acquire("pausing").await.unwrap();
    let e = s
        .pause(
            &sandbox.id,
            Some(crate::wire::lifecycle::PauseMode::Rootfs),
            &root(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(Conflict::NotRestorable(m)) if m.contains("pool")),
        "{e:?}"
    );
    let snap = s
        .create_snapshot(&sandbox.id, Default::default(), &root())
        .await
        .unwrap();
    let id = snap.id.clone();
    wait_for("the pooled sandbox's snapshot is Ready", || {
        let (s, id) = (s.clone(), id.clone());
        async move { s.get_snapshot(&id, &root()).await.unwrap().status.state == "Ready" }
    })
    .await;
    s.pause(&sandbox.id, None, &root()).await.unwrap();
    assert_eq!(s.get(&sandbox.id, &root()).await.unwrap().status.state, "Paused");
    s.resume(&sandbox.id, &root()).await.unwrap();
}

#[tokio::test]
async fn a_resource_limits_override_is_applied_live_to_the_acquired_member() {
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("sized", capacity(0, 2, 0, 3)), &root())
        .await
        .unwrap();
    rig.wait_available("sized", 2).await;
    let req: AcquireRequest = serde_json::from_value(serde_json::json!({
        "resourceLimits": {"memory": "512Mi", "pids": "64"},
    }))
    .unwrap();
    let sandbox = s.acquire_from_pool("sized", req, &root()).await.unwrap();
    let record = s.store.get(&sandbox.id).await.unwrap().unwrap();
    let member = &rig.fake.sandboxes()[&record.instance.unwrap().reference];
    assert_eq!(member.spec.resources.memory, Some(512 << 20));
    assert_eq!(
        member.spec.resources.nano_cpus,
        Some(500_000_000),
        "the pool's cpu is kept"
    );
    assert_eq!(member.spec.resources.pids, 64);
    let shown = sandbox.resource_limits.unwrap();
    assert_eq!(shown["memory"], "512Mi");
    assert_eq!(shown["cpu"], "500m");
    // Through create with poolRef as well.
    let req = serde_json::from_value(serde_json::json!({
        "resourceLimits": {"cpu": "1"},
        "extensions": {"poolRef": "sized"},
    }))
    .unwrap();
    let created = s.create(req, &root(), None).await.unwrap();
    let record = s.store.get(&created.id).await.unwrap().unwrap();
    let member = &rig.fake.sandboxes()[&record.instance.unwrap().reference];
    assert_eq!(member.spec.resources.nano_cpus, Some(1_000_000_000));
    assert_eq!(member.spec.resources.memory, Some(256 << 20));

    // Bad values are 400 before any member is taken.
    rig.wait_available("sized", 1).await;
    let before = rig.status("sized").await.allocated;
    for (limits, field) in [
        (serde_json::json!({"memory": "1Ki"}), "6Mi"),
        (serde_json::json!({"cpu": "lots"}), "resourceLimits.cpu"),
        (serde_json::json!({"scratch": "1Gi"}), "unknown resource"),
        // Issue 18: GPUs and disk are valid at create, but not changed on a running member.
        (serde_json::json!({"disk": "1Gi"}), "running sandbox"),
        (serde_json::json!({"gpu": "1"}), "running sandbox"),
    ] {
        let req: AcquireRequest =
            serde_json::from_value(serde_json::json!({"resourceLimits": limits})).unwrap();
        match s.acquire_from_pool("sized", req, &root()).await.unwrap_err() {
            Error::Invalid(m) | Error::UnsupportedField(m) => assert!(m.contains(field), "{m}"),
            other => panic!("expected 400, got {other:?}"),
        }
    }
    assert_eq!(rig.status("sized").await.allocated, before);

    // A value the runtime refuses is the caller's 400; the member goes back (recycled).
    rig.fake
        .fail(crate::orchestrator::runtime::fake::Op::Resize, 1, || {
            crate::orchestrator::runtime::RuntimeError::Rejected(
                "Minimum memory limit can not be less than memory reservation limit".into(),
            )
        });
    let req: AcquireRequest =
        serde_json::from_value(serde_json::json!({"resourceLimits": {"memory": "64Mi"}})).unwrap();
    match s.acquire_from_pool("sized", req, &root()).await.unwrap_err() {
        Error::Invalid(m) => assert!(
            m.contains("resourceLimits") && m.contains("memory reservation"),
            "{m}"
        ),
        other => panic!("expected 400, got {other:?}"),
    }
    assert_eq!(
        rig.status("sized").await.allocated,
        before,
        "the refused member is not held"
    );
}

#[tokio::test]
async fn a_member_the_runtime_says_was_claimed_elsewhere_is_forgotten_and_the_next_handed_out() {
    use crate::orchestrator::runtime::fake::Op;
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("contested", capacity(0, 3, 0, 3)), &root())
        .await
        .unwrap();
    rig.wait_available("contested", 3).await;
    let before = rig.members();
    // The runtime refuses the first claim (another claimer, as a 422 on Kubernetes) and
    // finds the second member gone.
    rig.fake.fail(Op::Claim, 1, || {
        RuntimeError::Conflict("claimed by another".into())
    });
    rig.fake
        .fail(Op::Claim, 1, || RuntimeError::NotFound("sbx-pm-gone".into()));
    let sandbox = rig.acquire("contested").await.unwrap();
    let record = s.store.get(&sandbox.id).await.unwrap().unwrap();
    let link = record.pool.clone().unwrap();
    let members = s.readable_members().await.unwrap();
    let ids: BTreeSet<&str> = members.iter().map(|m| m.id.as_str()).collect();
    assert!(ids.contains(link.member.as_str()));
    // Two forgotten, neither removed from the runtime (not ours to remove); the third
    // handed out once.
    let refused: Vec<&String> = before.iter().filter(|m| !ids.contains(m.as_str())).collect();
    assert_eq!(refused.len(), 2, "{ids:?} {before:?}");
    for m in &refused {
        assert!(rig.members().contains(*m), "{m} was removed");
    }
    assert_eq!(
        s.store.all().await.unwrap().len(),
        1,
        "the refused claims left no sandbox record"
    );
    // The pool refills the two it lost.
    rig.wait_available("contested", 2).await;
}

#[tokio::test]
async fn a_claim_the_runtime_fails_for_another_reason_leaves_the_member_idle() {
    use crate::orchestrator::runtime::fake::Op;
    let rig = rig(Duration::from_secs(5)).await;
    let s = &rig.service;
    s.create_pool(pool_request("flaky", capacity(0, 1, 0, 1)), &root())
        .await
        .unwrap();
    rig.wait_available("flaky", 1).await;
    rig.fake.fail(Op::Claim, 1, || {
        RuntimeError::Unavailable("api server down".into())
    });
    let e = rig.acquire("flaky").await.unwrap_err();
    assert!(matches!(e, Error::Runtime(RuntimeError::Unavailable(_))), "{e:?}");
    assert!(s.store.all().await.unwrap().is_empty());
    let status = rig.status("flaky").await;
    assert_eq!((status.total, status.available, status.allocated), (1, 1, 0));
    rig.acquire("flaky").await.unwrap();
}
