//! Template builds (`installCommand`) on the real Docker engine: the build runs in a container
//! of the base image with execd injected, its output is the build log, the committed image
//! `sandboxd/tpl-<name>:v<version>` is what sandboxes of the version run, and no build
//! container is left behind, whether the build succeeds, fails, or sandboxd dies during it.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::sandboxd::{docker, setup, Sandboxd};
use crate::util::{eventually, marker};

/// Removes what a test's template may have left (build containers, the built image),
/// whatever the test did.
struct Leftovers {
    name: String,
    image: String,
}

impl Leftovers {
    fn of(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: format!("sandboxd/tpl-{name}:v1"),
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for c in build_containers(&self.name) {
            docker(&["rm", "-f", &c]);
        }
        docker(&["rmi", "-f", &self.image]);
    }
}

/// Build containers of the template `name`: running, stopped or dead.
fn build_containers(name: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=sandboxd.io/role=template-build",
        "--filter",
        &format!("label=sandboxd.io/template={name}"),
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

fn image_exists(image: &str) -> bool {
    !docker(&["image", "inspect", "-f", "{{.Id}}", image]).is_empty()
}

async fn create_template(d: &Sandboxd, name: &str, spec: Value) -> Value {
    let body = json!({"name": name, "spec": spec});
    let (status, created) = d.json(Method::POST, "/v1/templates", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

/// Waits until version 1 of `name` has finished building; returns its status.
async fn finished(d: &Sandboxd, name: &str) -> Value {
    eventually(180, &format!("the build of {name} to finish"), async || {
        let (status, v) = d
            .json(Method::GET, &format!("/v1/templates/{name}/versions/1"), None)
            .await;
        assert_eq!(status, 200, "{v}");
        let phase = v["status"]["phase"].as_str().unwrap_or_default();
        matches!(phase, "Succeeded" | "Failed").then(|| v["status"].clone())
    })
    .await
}

async fn build_log(d: &Sandboxd, name: &str) -> String {
    let resp = d
        .req(Method::GET, &format!("/v1/templates/{name}/versions/1/build-log"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

#[tokio::test]
async fn an_install_command_is_built_into_the_image_sandboxes_of_the_template_run() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let name = format!("tb-{}", marker());
    let leftovers = Leftovers::of(&name);
    let built = leftovers.image.clone();
    let created = create_template(
        &d,
        &name,
        json!({
            "image": image,
            "installCommand": "echo built > /opt/marker && echo hello-from-build",
            "files": [{"path": "/etc/app/config", "content": "from-files\n"}],
        }),
    )
    .await;
    assert_eq!(created["status"]["phase"], "Pending", "{created}");

    let status = finished(&d, &name).await;
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert_eq!(status["manifestRef"], built.as_str(), "{status}");
    assert!(build_log(&d, &name).await.contains("hello-from-build"));
    assert!(image_exists(&built));
    assert_eq!(
        build_containers(&name),
        Vec::<String>::new(),
        "no build container left"
    );

    // The image runs the base's entrypoint and command, not execd's init, and keeps no token.
    let config = |format: &str| docker(&["image", "inspect", "-f", format, &built]);
    let base = |format: &str| docker(&["image", "inspect", "-f", format, image]);
    assert_eq!(config("{{json .Config.Cmd}}"), base("{{json .Config.Cmd}}"));
    assert!(
        matches!(config("{{json .Config.Entrypoint}}").as_str(), "null" | "[]"),
        "{}",
        config("{{json .Config.Entrypoint}}")
    );
    let env = config("{{json .Config.Env}}");
    assert!(
        env.contains("\"EXECD_ACCESS_TOKEN=\""),
        "the token is blanked: {env}"
    );
    assert_eq!(
        config("{{index .Config.Labels \"sandboxd.io/role\"}}"),
        "template-image"
    );

    let sandbox = d.create(json!({"templateId": name, "timeout": 600})).await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    assert_eq!(sandbox["templateVersion"], 1, "{sandbox}");
    let execd = d.endpoint(&id, 44772, true).await;
    assert_eq!(execd.run("cat /opt/marker").await, ("built\n".to_owned(), 0));
    assert_eq!(
        execd.run("cat /etc/app/config").await,
        ("from-files\n".to_owned(), 0)
    );
    // A container of the built image is a sandbox like any other (its own role label wins
    // over the image's), so listing and reconciling see it.
    let container = docker(&["ps", "-q", "--filter", &format!("label=opensandbox.io/id={id}")]);
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"sandboxd.io/role\"}}",
            &container
        ]),
        "sandbox"
    );
    assert_eq!(docker(&["inspect", "-f", "{{.Config.Image}}", &container]), built);
    assert_eq!(d.state(&id).await, "Running");

    // The image outlives a template delete while a sandbox runs it, and goes with the template
    // otherwise.
    let (status, _) = d.json(Method::DELETE, &format!("/v1/sandboxes/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = d
        .json(Method::DELETE, &format!("/v1/templates/{name}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        !image_exists(&built),
        "the built image is removed with its template"
    );
}

#[tokio::test]
async fn a_failing_install_command_fails_the_version_and_sandboxes_cannot_use_it() {
    let Some((image, d)) = setup("busybox") else {
        return;
    };
    let name = format!("tb-fail-{}", marker());
    let leftovers = Leftovers::of(&name);
    let built = leftovers.image.clone();
    create_template(
        &d,
        &name,
        json!({"image": image, "installCommand": "echo about to fail; exit 7"}),
    )
    .await;
    let status = finished(&d, &name).await;
    assert_eq!(status["phase"], "Failed", "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("exited with code 7"), "{message}");
    assert!(message.contains("about to fail"), "{message}");
    assert!(status.get("manifestRef").is_none_or(Value::is_null), "{status}");
    assert!(build_log(&d, &name).await.contains("about to fail"));
    assert!(!image_exists(&built));
    assert_eq!(
        build_containers(&name),
        Vec::<String>::new(),
        "no build container left"
    );

    let body = json!({"templateId": name, "timeout": 600, "metadata": {"execd-test-run": d.run}});
    let (status, err) = d.json(Method::POST, "/v1/sandboxes", Some(body)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "TEMPLATE::NOT_READY", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("exited with code 7"),
        "{err}"
    );
}

#[tokio::test]
async fn a_build_interrupted_by_a_crash_is_cleaned_up_and_run_again() {
    let Some((image, mut d)) = setup("busybox") else {
        return;
    };
    let name = format!("tb-crash-{}", marker());
    let leftovers = Leftovers::of(&name);
    let built = leftovers.image.clone();
    // The install command waits for a file that the test puts into the build container.
    create_template(
        &d,
        &name,
        json!({
            "image": image,
            "installCommand": "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo after-restart",
        }),
    )
    .await;
    let first = eventually(120, "the build container", async || build_containers(&name).pop()).await;
    eventually(30, "the version to be Building", async || {
        let (_, v) = d
            .json(Method::GET, &format!("/v1/templates/{name}/versions/1"), None)
            .await;
        (v["status"]["phase"] == "Building").then_some(())
    })
    .await;
    d.kill9();
    let restarted = Sandboxd::start_on(&d.data_dir, &d.run);
    let second = eventually(120, "a new build container", async || {
        build_containers(&name).into_iter().find(|c| *c != first)
    })
    .await;
    assert!(
        !build_containers(&name).contains(&first),
        "the build container of the dead process is removed at start"
    );
    // The new build waits for its file too; let it finish.
    eventually(30, "the file to be put in the build container", async || {
        let put = std::process::Command::new("docker")
            .args(["exec", &second, "touch", "/tmp/go"])
            .status()
            .ok()?;
        put.success().then_some(())
    })
    .await;
    let status = finished(&restarted, &name).await;
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert!(build_log(&restarted, &name).await.contains("after-restart"));
    assert!(image_exists(&built));
    assert_eq!(build_containers(&name), Vec::<String>::new());
}
