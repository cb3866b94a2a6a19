//! Templates over the fake runtime: versions, rollback, visibility, and sandboxes made from a
//! template with overrides.

use std::collections::BTreeMap;

use super::tests::{rig, root, user};
use crate::orchestrator::auth::Role;
use crate::orchestrator::error::{Conflict, Error, Kind};
use crate::wire::lifecycle::CreateSandboxRequest;
use crate::wire::templates::{CreateTemplateRequest, RollbackRequest, TemplateSpec, UpdateTemplateRequest};

fn spec(value: serde_json::Value) -> TemplateSpec {
    serde_json::from_value(value).unwrap()
}

fn named(name: &str, spec: TemplateSpec) -> CreateTemplateRequest {
    CreateTemplateRequest {
        name: Some(name.into()),
        spec: Some(spec),
        ..CreateTemplateRequest::default()
    }
}

fn from_template(body: serde_json::Value) -> CreateSandboxRequest {
    serde_json::from_value(body).unwrap()
}

#[tokio::test]
async fn versions_are_made_only_when_the_spec_changes_and_rollback_appends() {
    let rig = rig().await;
    let s = &rig.service;
    let v1 = spec(serde_json::json!({"image": "busybox", "ttl": 600, "env": {"A": "1"}}));
    let t = s.create_template(named("ds", v1.clone()), &root()).await.unwrap();
    assert_eq!((t.latest_version, t.status.phase.as_str()), (1, "Succeeded"));
    assert_eq!(t.status.manifest_ref.as_deref(), Some("busybox"));
    assert_eq!((t.publish.as_str(), t.format.as_str()), ("local", "native"));

    let same = UpdateTemplateRequest {
        spec: Some(v1.clone()),
        description: Some("data science".into()),
        ..UpdateTemplateRequest::default()
    };
    let (t, created) = s.update_template("ds", same, &root()).await.unwrap();
    assert!(!created, "the same spec makes no version");
    assert_eq!(
        (t.latest_version, t.description.as_deref()),
        (1, Some("data science"))
    );

    let v2 = spec(serde_json::json!({"image": "busybox", "ttl": 900}));
    let change = UpdateTemplateRequest {
        spec: Some(v2.clone()),
        changelog: Some("longer".into()),
        ..UpdateTemplateRequest::default()
    };
    let (t, created) = s.update_template(&t.template_id, change, &root()).await.unwrap();
    assert!(created);
    assert_eq!((t.latest_version, t.spec.ttl), (2, Some(900)));

    let back = |target| RollbackRequest {
        target_version: target,
        changelog: None,
    };
    let r = s.rollback_template("ds", back(1), &root()).await.unwrap();
    assert_eq!(
        (r.from_version, r.target_version, r.new_version, r.version_created),
        (2, 1, 3, true)
    );
    assert_eq!(r.template.spec, v1, "version 3 is version 1's spec");
    let again = s.rollback_template("ds", back(3), &root()).await.unwrap();
    assert_eq!((again.new_version, again.version_created), (3, false));
    let missing = s.rollback_template("ds", back(9), &root()).await.unwrap_err();
    assert!(
        matches!(
            missing,
            Error::NotFound {
                kind: Kind::TemplateVersion,
                ..
            }
        ),
        "{missing}"
    );

    let history = s.template_versions("ds", 1, 20, &root()).await.unwrap();
    let numbers: Vec<u32> = history.items.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [3, 2, 1]);
    assert_eq!(history.items[0].rolled_back_from, Some(1));
    assert_eq!(s.template_version("ds", 2, &root()).await.unwrap().spec, v2);
    let err = s.create_template(named("ds", v2), &root()).await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict(Conflict::TemplateExists(_))),
        "{err}"
    );
}

#[tokio::test]
async fn private_templates_are_not_found_by_other_users() {
    let rig = rig().await;
    let s = &rig.service;
    let mut req = named("secret", spec(serde_json::json!({"image": "busybox"})));
    req.is_public = Some(false);
    req.author = Some("alice".into());
    s.create_template(req, &root()).await.unwrap();
    s.create_template(
        named("open", spec(serde_json::json!({"image": "busybox"}))),
        &root(),
    )
    .await
    .unwrap();
    let bob = user("bob", Role::User);
    let err = s.template("secret", &bob).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                kind: Kind::Template,
                ..
            }
        ),
        "{err}"
    );
    let err = s
        .create(
            from_template(serde_json::json!({"templateId": "secret"})),
            &bob,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotFound {
                kind: Kind::Template,
                ..
            }
        ),
        "{err}"
    );
    let alice = user("alice", Role::User);
    assert_eq!(s.template("secret", &alice).await.unwrap().name, "secret");
    let names = |list: crate::wire::templates::ListTemplatesResponse| {
        list.items.into_iter().map(|t| t.name).collect::<Vec<_>>()
    };
    let filter = || super::TemplateFilter {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    assert_eq!(names(s.list_templates(filter(), &bob).await.unwrap()), ["open"]);
    assert_eq!(
        names(s.list_templates(filter(), &root()).await.unwrap()),
        ["open", "secret"]
    );
    let search = super::TemplateFilter {
        search: Some("SEC".into()),
        ..filter()
    };
    assert_eq!(names(s.list_templates(search, &alice).await.unwrap()), ["secret"]);
}

#[tokio::test]
async fn a_sandbox_from_a_template_takes_its_spec_with_the_request_as_overrides() {
    let rig = rig().await;
    let s = &rig.service;
    let mut req = named(
        "web",
        spec(serde_json::json!({
            "image": "busybox", "command": ["sleep"], "args": ["infinity"], "ttl": 600,
            "env": {"A": "1", "B": "2"}, "resources": {"cpu": "1", "memory": "256Mi"},
            "files": [{"path": "/workspace/a.txt", "content": "aGk=", "encoding": "base64", "mode": "0600"}],
        })),
    );
    req.metadata = Some([("team".to_owned(), "web".to_owned())].into());
    s.create_template(req, &root()).await.unwrap();
    let update = UpdateTemplateRequest {
        spec: Some(spec(serde_json::json!({"image": "busybox:2", "ttl": 600}))),
        ..UpdateTemplateRequest::default()
    };
    s.update_template("web", update, &root()).await.unwrap();

    let created = s
        .create(
            from_template(serde_json::json!({
                "templateId": "web", "templateVersion": 1,
                "env": {"B": null, "C": "3"}, "resourceLimits": {"memory": "512Mi"},
                "metadata": {"run": "x"},
            })),
            &root(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(created.entrypoint, ["sleep", "infinity"]);
    assert_eq!(
        (created.template_name.as_deref(), created.template_version),
        (Some("web"), Some(1))
    );
    assert!(created.expires_at.is_some(), "the template's ttl is the timeout");
    let meta = created.metadata.clone().unwrap();
    assert_eq!((meta["team"].as_str(), meta["run"].as_str()), ("web", "x"));
    let live = rig.fake.sandboxes();
    let made = live.values().find(|f| f.spec.id == created.id).unwrap();
    assert_eq!(made.spec.image, "busybox");
    assert_eq!(made.spec.env.get("A").map(String::as_str), Some("1"));
    assert!(
        !made.spec.env.contains_key("B"),
        "a null override removes the key"
    );
    assert_eq!(made.spec.env.get("C").map(String::as_str), Some("3"));
    assert_eq!(
        made.spec.resources.memory,
        Some(512 << 20),
        "limits merge per key"
    );
    assert_eq!(made.spec.resources.nano_cpus, Some(1_000_000_000));
    assert_eq!(made.spec.files.len(), 1);
    assert_eq!(
        (made.spec.files[0].content.as_slice(), made.spec.files[0].mode),
        (&b"hi"[..], 0o600)
    );
    let got = s.get(&created.id, &root()).await.unwrap();
    assert_eq!(got.template_version, Some(1));
    assert_eq!(
        got.timeout,
        Some(600),
        "the template's ttl, as the sandbox's view shows it"
    );
    assert_eq!(
        got.resource_limits.unwrap(),
        BTreeMap::from([
            ("cpu".to_owned(), "1".to_owned()),
            ("memory".to_owned(), "512Mi".to_owned())
        ]),
        "the view shows the merged limits"
    );
    assert_eq!(
        got.env.unwrap(),
        BTreeMap::from([("A".to_owned(), "1".to_owned()), ("C".to_owned(), "3".to_owned())])
    );

    let latest = s
        .create(
            from_template(serde_json::json!({"templateId": "web"})),
            &root(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(latest.template_version, Some(2));
    let made = rig.fake.sandboxes();
    assert_eq!(
        made.values().find(|f| f.spec.id == latest.id).unwrap().spec.image,
        "busybox:2"
    );
}

#[tokio::test]
async fn bad_template_creates_are_refused_before_anything_runs() {
    let rig = rig().await;
    let s = &rig.service;
    s.create_template(
        named(
            "disk",
            spec(serde_json::json!({"image": "busybox", "resources": {"disk": "1Gi"}})),
        ),
        &root(),
    )
    .await
    .unwrap();
    let build = named(
        "built",
        spec(serde_json::json!({"image": "busybox", "installCommand": "true"})),
    );
    let pending = s.create_template(build, &root()).await.unwrap();
    assert_eq!(
        pending.status.phase, "Pending",
        "a build is queued (no builder runs here, so it stays queued)"
    );
    s.create_template(
        named("plain", spec(serde_json::json!({"image": "busybox"}))),
        &root(),
    )
    .await
    .unwrap();
    let admin = root();
    let create = |body| s.create(from_template(body), &admin, None);
    let cases = [
        (serde_json::json!({"templateId": "nope"}), "TEMPLATE::NOT_FOUND"),
        (
            serde_json::json!({"templateId": "plain", "templateVersion": 7}),
            "TEMPLATE::VERSION_NOT_FOUND",
        ),
        (
            serde_json::json!({"templateId": "plain", "image": {"uri": "x"}}),
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            serde_json::json!({"image": {"uri": "x"}, "entrypoint": ["x"], "templateVersion": 1}),
            "SANDBOX::INVALID_PARAMETER",
        ),
        (
            serde_json::json!({"templateId": "disk"}),
            "SANDBOX::API_NOT_SUPPORTED",
        ),
        (serde_json::json!({"templateId": "built"}), "TEMPLATE::NOT_READY"),
    ];
    for (body, code) in cases {
        let err = create(body.clone()).await.unwrap_err();
        let api = crate::orchestrator::http::error::ApiError::from(&err);
        assert_eq!(api.entry.code, code, "{body}: {err}");
    }
    assert!(rig.fake.sandboxes().is_empty(), "nothing was started");
    let mixed = CreateTemplateRequest {
        image: Some("busybox".into()),
        ..named("mixed", spec(serde_json::json!({"image": "busybox"})))
    };
    assert!(s
        .create_template(mixed, &root())
        .await
        .unwrap_err()
        .to_string()
        .contains("mixed"));
}

fn incoming(index: usize, name: &str, image: &str) -> super::Incoming {
    super::Incoming {
        index,
        name: name.into(),
        display_name: None,
        description: None,
        tags: None,
        author: None,
        is_public: None,
        spec: spec(serde_json::json!({"image": image})),
    }
}

fn options(strategy: super::Strategy) -> super::ImportOptions {
    super::ImportOptions {
        strategy,
        ..super::ImportOptions::default()
    }
}

#[tokio::test]
async fn every_import_strategy_against_new_same_and_changed_templates() {
    use super::Strategy::{CreateOnly, CreateOrUpdate, UpdateOnly};
    // For each strategy, one document over a server holding `same` (busybox) and `changed`
    // (busybox), importing `new`, `same` unchanged and `changed` with another image.
    let expected = [
        (
            CreateOnly,
            vec!["new"],
            vec![],
            vec![],
            vec![("same", "ALREADY_EXISTS"), ("changed", "ALREADY_EXISTS")],
        ),
        (
            UpdateOnly,
            vec![],
            vec![("changed", 1, 2)],
            vec!["same"],
            vec![("new", "NOT_FOUND")],
        ),
        (
            CreateOrUpdate,
            vec!["new"],
            vec![("changed", 1, 2)],
            vec!["same"],
            vec![],
        ),
    ];
    for (strategy, created, updated, unchanged, skipped) in expected {
        let rig = rig().await;
        let s = &rig.service;
        for name in ["same", "changed"] {
            s.create_template(
                named(name, spec(serde_json::json!({"image": "busybox"}))),
                &root(),
            )
            .await
            .unwrap();
        }
        let doc = vec![
            incoming(0, "new", "busybox"),
            incoming(1, "same", "busybox"),
            incoming(2, "changed", "busybox:2"),
        ];
        let r = s
            .import_templates(doc.clone(), vec![], options(strategy), &root())
            .await
            .unwrap();
        let names = |items: &[crate::wire::templates::ImportedItem]| {
            items.iter().map(|i| i.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&r.created), created, "{strategy:?} created");
        let ups: Vec<(String, u32, u32)> = r
            .updated
            .iter()
            .map(|i| (i.name.clone(), i.from_version.unwrap(), i.version))
            .collect();
        let want: Vec<(String, u32, u32)> = updated.iter().map(|(n, a, b)| (n.to_string(), *a, *b)).collect();
        assert_eq!(ups, want, "{strategy:?} updated");
        assert_eq!(names(&r.unchanged), unchanged, "{strategy:?} unchanged");
        let sk: Vec<(String, String)> = r
            .skipped
            .iter()
            .map(|i| (i.name.clone(), i.reason.clone()))
            .collect();
        let want: Vec<(String, String)> = skipped
            .iter()
            .map(|(n, r)| (n.to_string(), r.to_string()))
            .collect();
        assert_eq!(sk, want, "{strategy:?} skipped");
        assert!(r.failed.is_empty());
        // The same document again changes nothing.
        let again = s
            .import_templates(doc, vec![], options(strategy), &root())
            .await
            .unwrap();
        assert!(
            again.created.is_empty() && again.updated.is_empty(),
            "{strategy:?}: {again:?}"
        );
    }
}

#[tokio::test]
async fn imports_report_bad_items_and_dry_runs_and_atomic_failures_write_nothing() {
    let rig = rig().await;
    let s = &rig.service;
    let mut bad = incoming(1, "bad", "busybox");
    bad.spec.ttl = Some(5);
    let doc = vec![
        incoming(0, "good", "busybox"),
        bad,
        incoming(2, "Upper", "busybox"),
    ];

    let dry = super::ImportOptions {
        dry_run: true,
        ..super::ImportOptions::default()
    };
    let r = s
        .import_templates(doc.clone(), vec![], dry, &root())
        .await
        .unwrap();
    assert!(r.dry_run);
    assert_eq!(r.created.len(), 1);
    assert!(
        s.template("good", &root()).await.is_err(),
        "a dry run writes nothing"
    );

    let atomic = super::ImportOptions {
        atomic: true,
        ..super::ImportOptions::default()
    };
    let err = s
        .import_templates(doc.clone(), vec![], atomic, &root())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ImportInvalid(_)), "{err}");
    assert!(
        s.template("good", &root()).await.is_err(),
        "an atomic failure writes nothing"
    );

    let r = s
        .import_templates(doc, vec!["w".into()], super::ImportOptions::default(), &root())
        .await
        .unwrap();
    assert_eq!(r.created.len(), 1);
    let failed: Vec<(usize, &str)> = r.failed.iter().map(|f| (f.index, f.code.as_str())).collect();
    assert_eq!(
        failed,
        [(1, "TEMPLATE::INVALID_SPEC"), (2, "SANDBOX::INVALID_PARAMETER")]
    );
    assert!(
        r.failed[0].message.contains("spec.ttl"),
        "{}",
        r.failed[0].message
    );
    assert_eq!(r.warnings, ["w"]);
    assert!(s.template("good", &root()).await.is_ok());

    let twice = vec![incoming(0, "x", "busybox"), incoming(1, "x", "busybox")];
    let err = s
        .import_templates(twice, vec![], super::ImportOptions::default(), &root())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ImportInvalid(ref m) if m.contains("twice")),
        "{err}"
    );
}

/// Export → import into an empty server → export gives the same YAML, apart from the
/// version timestamps (which `allVersions` alone writes).
#[tokio::test]
async fn export_then_import_into_an_empty_server_exports_the_same_bytes() {
    let source = rig().await;
    let s = &source.service;
    let mut a = named(
        "alpha",
        spec(serde_json::json!({
            "image": "python:3.11-slim", "command": ["python"], "args": ["-m", "http.server"],
            "resources": {"cpu": "1", "memory": "1Gi"}, "ttl": 3600, "env": {"A": "1", "B": "two words"},
            "startupScript": "echo 'hi'\nmkdir -p /workspace", "startupTimeout": 120,
            "files": [{"path": "/workspace/req.txt", "content": "numpy\n", "mode": "0644"}],
            "readinessProbe": {"httpGet": {"port": 8000, "path": "/"}, "periodSeconds": 2, "failureThreshold": 30},
            "network": {"defaultAction": "deny", "egress": [{"action": "allow", "target": "example.org"}]},
            "language": "python", "languageVersion": "3.11",
        })),
    );
    a.display_name = Some("Alpha: the first".into());
    a.description = Some("yes\tno # not a comment".into());
    a.tags = Some(vec!["python".into(), "data".into()]);
    a.is_public = Some(false);
    s.create_template(a, &root()).await.unwrap();
    s.create_template(
        named("beta", spec(serde_json::json!({"image": "busybox"}))),
        &root(),
    )
    .await
    .unwrap();
    let all = || super::ExportSelection::Many {
        tag: None,
        names: vec![],
    };
    let first = s.export_templates(all(), false, &root()).await.unwrap();

    let target = rig().await;
    let t = &target.service;
    let document = crate::orchestrator::templates_yaml::parse(&first).unwrap();
    let result = t
        .import_templates(
            document.items,
            document.warnings,
            super::ImportOptions::default(),
            &root(),
        )
        .await
        .unwrap();
    assert_eq!(result.created.len(), 2, "{result:?}");
    let second = t.export_templates(all(), false, &root()).await.unwrap();
    assert_eq!(first, second);
    let one = |name: &str| super::ExportSelection::One {
        id_or_name: name.into(),
        version: None,
    };
    assert_eq!(
        s.export_templates(one("alpha"), false, &root()).await.unwrap(),
        t.export_templates(one("alpha"), false, &root()).await.unwrap()
    );
    let missing = super::ExportSelection::Many {
        tag: None,
        names: vec!["alpha".into(), "gamma".into()],
    };
    let err = t.export_templates(missing, false, &root()).await.unwrap_err();
    assert!(
        err.to_string().contains("gamma"),
        "an unknown name is named: {err}"
    );
}

#[tokio::test]
async fn auto_prepull_starts_one_task_per_image_of_the_applied_templates() {
    let rig = rig().await;
    let s = &rig.service;
    rig.fake.add_image("busybox");
    s.create_template(
        named("same", spec(serde_json::json!({"image": "busybox"}))),
        &root(),
    )
    .await
    .unwrap();
    let doc = vec![
        incoming(0, "a", "busybox"),
        incoming(1, "b", "busybox"),
        incoming(2, "same", "busybox"),
        incoming(3, "c", "alpine"),
    ];
    let opts = super::ImportOptions {
        auto_prepull: true,
        ..super::ImportOptions::default()
    };
    let r = s.import_templates(doc, vec![], opts, &root()).await.unwrap();
    assert_eq!(r.created.len(), 3);
    assert_eq!(
        r.prepull_tasks.len(),
        2,
        "one task per image of the created templates (an active pull is shared): {r:?}"
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let mut images = Vec::new();
    for id in &r.prepull_tasks {
        let task = s.prepull_task(id, &root()).await.unwrap();
        assert!(task.template_id.is_some());
        images.push(task.image);
    }
    images.sort();
    assert_eq!(images, ["alpine:latest", "busybox:latest"]);
}
