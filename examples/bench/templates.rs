//! Figures of sandboxd's templates: a sandbox created from a template (env vars and a file in
//! its spec) up to its first finished command beside the same create from the plain image, the
//! two alternating on one sandboxd; and a YAML import of many templates in one request beside
//! as many single `POST /v1/templates`, with a re-import of the same document (all unchanged).
//!
//! Every sandboxd here has an API key (templates are written by admins) and its rate classes
//! off, so that a hundred creates in a row measure the store, not the limiter.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};

use crate::harness::{median, percentile_ms, Ctx, Row};
use crate::lifecycle::{command_true, ensure_image, Sandboxd, IMAGE};
use crate::Section;

const KEY: &str = "bench-key-0123456789";

/// Where the template's file lands, and what it holds.
const FILE_PATH: &str = "/etc/bench/motd";
const FILE_CONTENT: &str = "written from the template\n";

/// The sections of this area, in the order they run.
pub fn sections() -> Vec<Section> {
    vec![
        Section {
            name: "template-create",
            run: |ctx| Box::pin(template_create(ctx)),
        },
        Section {
            name: "template-import",
            run: |ctx| Box::pin(template_import(ctx)),
        },
    ]
}

/// A sandboxd with the API key and every rate class off, and a keep-alive client for it.
struct Api {
    sandboxd: Sandboxd,
    client: reqwest::Client,
}

impl Api {
    fn start(ctx: &Ctx) -> anyhow::Result<Self> {
        let args = [
            "--api-key",
            KEY,
            "--rate-create",
            "0",
            "--rate-exec",
            "0",
            "--rate-read",
            "0",
        ];
        Ok(Self {
            sandboxd: Sandboxd::start_with(ctx, &args)?,
            client: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.sandboxd.base))
            .header("OPEN-SANDBOX-API-KEY", KEY)
    }

    /// `POST path` with a JSON body; fails unless it answers `expected`.
    async fn post_json(&self, path: &str, body: &Value, expected: u16) -> anyhow::Result<Value> {
        let resp = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != expected {
            bail!("POST {path}: {status} {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {path}: not JSON: {text}"))
    }

    /// `POST /v1/templates/import?strategy=create-or-update` with a YAML body.
    async fn import(&self, yaml: &str) -> anyhow::Result<Value> {
        let path = "/v1/templates/import?strategy=create-or-update";
        let resp = self
            .request(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != 200 {
            bail!("POST {path}: {status} {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {path}: not JSON: {text}"))
    }

    /// `POST /v1/sandboxes` with `body`; the new sandbox's id.
    async fn create_sandbox(&self, body: &Value) -> anyhow::Result<String> {
        let created = self.post_json("/v1/sandboxes", body, 202).await?;
        Ok(created["id"].as_str().context("no id")?.to_owned())
    }

    /// The sandbox's direct execd endpoint and its access token.
    async fn endpoint(&self, id: &str) -> anyhow::Result<(String, String)> {
        let path = format!("/v1/sandboxes/{id}/endpoints/44772?use_server_proxy=false");
        let ep: Value = self
            .request(reqwest::Method::GET, &path)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = ep["headers"]["x-execd-access-token"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        Ok((
            format!("http://{}", ep["endpoint"].as_str().context("no endpoint")?),
            token,
        ))
    }

    async fn delete_sandbox(&self, id: &str) -> anyhow::Result<()> {
        self.request(reqwest::Method::DELETE, &format!("/v1/sandboxes/{id}"))
            .send()
            .await?;
        Ok(())
    }

    /// Create from `body`, then `true` through execd to the end of its stream; returns the
    /// time from the create request to that end, and the sandbox's id and endpoint.
    async fn create_then_true(&self, body: &Value) -> anyhow::Result<(Duration, String, (String, String))> {
        let started = Instant::now();
        let id = self.create_sandbox(body).await?;
        let (base, token) = self.endpoint(&id).await?;
        command_true(&self.client, &base, &token).await?;
        Ok((started.elapsed(), id, (base, token)))
    }
}

/// The stdout of `command` run through execd at `base`.
async fn command_stdout(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    command: &str,
) -> anyhow::Result<String> {
    let body = client
        .post(format!("{base}/command"))
        .header("X-EXECD-ACCESS-TOKEN", token)
        .json(&json!({ "command": command }))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut out = String::new();
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let event: Value = serde_json::from_str(data).with_context(|| format!("event {data:?}"))?;
        match event["type"].as_str() {
            Some("stdout") => {
                out.push_str(event["text"].as_str().unwrap_or_default());
                out.push('\n');
            }
            Some("error") => bail!("{command:?} failed: {data}"),
            _ => {}
        }
    }
    Ok(out)
}

/// The template's spec: the plain create's image, entrypoint and timeout, plus three env vars
/// and a file.
fn template_spec() -> Value {
    json!({
        "image": IMAGE,
        "command": ["sleep", "100000"],
        "ttl": 600,
        "env": {"BENCH_A": "alpha", "BENCH_B": "beta", "BENCH_C": "gamma"},
        "files": [{"path": FILE_PATH, "content": FILE_CONTENT, "mode": "0644"}],
    })
}

/// Create from a template → first finished command beside create from the plain image → first
/// finished command, alternating which goes first.
async fn template_create(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    ensure_image()?;
    let api = Api::start(ctx)?;
    api.post_json(
        "/v1/templates",
        &json!({"name": "bench-busybox", "spec": template_spec()}),
        201,
    )
    .await?;
    let from_template = json!({"templateId": "bench-busybox"});
    let plain = json!({"image": {"uri": IMAGE}, "entrypoint": ["sleep", "100000"], "timeout": 600});

    // One of each first, untimed: the first create of a sandboxd process injects the agent;
    // the template's sandbox also shows whether its env and file arrived.
    let (_, id, (base, token)) = api.create_then_true(&from_template).await?;
    let probe = format!("echo \"$BENCH_A $BENCH_B $BENCH_C\"; cat {FILE_PATH} 2>/dev/null || echo no-file");
    let seen = command_stdout(&api.client, &base, &token, &probe).await?;
    api.delete_sandbox(&id).await?;
    ensure!(
        seen.contains("alpha beta gamma"),
        "the template's env did not reach the sandbox: {seen:?}"
    );
    let file_written = seen.contains(FILE_CONTENT.trim_end());
    if !file_written {
        eprintln!("bench: template-create: the template's file {FILE_PATH} is not in the sandbox (spec.files not applied by this runtime)");
    }
    let (_, id, _) = api.create_then_true(&plain).await?;
    api.delete_sandbox(&id).await?;

    let runs = ctx.count(20);
    let (mut templated, mut bare) = (Vec::new(), Vec::new());
    for n in 0..runs {
        // Alternate, so that drift of the machine and the store's growth hit both alike.
        let order = if n % 2 == 0 {
            [(&from_template, true), (&plain, false)]
        } else {
            [(&plain, false), (&from_template, true)]
        };
        for (body, is_template) in order {
            let (took, id, _) = api.create_then_true(body).await?;
            api.delete_sandbox(&id).await?;
            if is_template {
                templated.push(took);
            } else {
                bare.push(took);
            }
        }
    }
    let (t50, b50) = (percentile_ms(&templated, 50.0), percentile_ms(&bare, 50.0));
    let (t95, b95) = (percentile_ms(&templated, 95.0), percentile_ms(&bare, 95.0));
    let what = if file_written {
        "3 env vars, 1 file"
    } else {
        "3 env vars; its 1 file is not written on Docker yet"
    };
    Ok(vec![
        Row::new(
            format!("create from a template ({what}) → first command done (busybox), p50 of {runs}"),
            t50,
            "ms",
        )
        .anchor(
            format!("create from the plain image → first command done, p50 of {runs}"),
            b50,
        ),
        Row::new("create from a template → first command done, p95", t95, "ms")
            .anchor("create from the plain image, p95", b95),
        Row::new(
            "context: what the template adds (p50 difference)",
            t50 - b50,
            "ms",
        ),
    ])
}

/// `count` template names for repeat `repeat` of side `side`.
fn names(side: &str, repeat: usize, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("bench-{side}-{repeat}-{i}")).collect()
}

/// The spec of the `i`th imported or created template (the same on both sides).
fn import_spec(i: usize) -> Value {
    json!({
        "image": IMAGE,
        "command": ["sleep", "100000"],
        "ttl": 600,
        "env": {"BENCH_INDEX": i.to_string()},
    })
}

/// One `kind: TemplateList` with a template per name, specs as [`import_spec`].
fn template_list(names: &[String]) -> String {
    let mut doc = String::from("apiVersion: sandboxd.io/v1\nkind: TemplateList\nitems:\n");
    for (i, name) in names.iter().enumerate() {
        let _ = write!(
            doc,
            "  - apiVersion: sandboxd.io/v1\n    kind: Template\n    metadata:\n      name: {name}\n    spec:\n      \
             image: {IMAGE}\n      command: [sleep, \"100000\"]\n      ttl: 600\n      env:\n        BENCH_INDEX: \"{i}\"\n"
        );
    }
    doc
}

/// The length of `result[key]`, which must be an array.
fn listed(result: &Value, key: &str) -> usize {
    result[key].as_array().map_or(0, Vec::len)
}

/// YAML import of `count` templates (one request) beside `count` single creates, then the
/// same document again; each repeat on a fresh sandboxd, alternating which side goes first.
async fn template_import(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let count = ctx.count(100);
    let repeats = ctx.count(5);
    let (mut imports, mut singles, mut reimports) = (Vec::new(), Vec::new(), Vec::new());
    for repeat in 0..repeats {
        let api = Api::start(ctx)?;
        // Warm the connection and the store's first write (a template neither side counts).
        api.post_json(
            "/v1/templates",
            &json!({"name": "bench-warm", "spec": import_spec(0)}),
            201,
        )
        .await?;
        let document = template_list(&names("imp", repeat, count));
        let one_by_one = names("one", repeat, count);
        for side in if repeat % 2 == 0 { [0, 1] } else { [1, 0] } {
            if side == 0 {
                let t = Instant::now();
                let result = api.import(&document).await?;
                imports.push(t.elapsed().as_secs_f64() * 1e3);
                ensure!(
                    listed(&result, "created") == count && listed(&result, "failed") == 0,
                    "import did not create {count}: {result}"
                );
            } else {
                let t = Instant::now();
                for (i, name) in one_by_one.iter().enumerate() {
                    api.post_json(
                        "/v1/templates",
                        &json!({"name": name, "spec": import_spec(i)}),
                        201,
                    )
                    .await?;
                }
                singles.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let t = Instant::now();
        let result = api.import(&document).await?;
        reimports.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(
            listed(&result, "unchanged") == count && listed(&result, "created") == 0,
            "re-import was not all unchanged: {result}"
        );
    }
    let (import, single, reimport) = (median(&imports), median(&singles), median(&reimports));
    Ok(vec![
        Row::new(
            format!("YAML import of {count} templates (one TemplateList, one request), median of {repeats}"),
            import,
            "ms",
        )
        .anchor(
            format!("{count} × `POST /v1/templates`, same specs, one after another"),
            single,
        ),
        Row::new(
            format!("re-import of the same document ({count} unchanged), median of {repeats}"),
            reimport,
            "ms",
        )
        .anchor("the first import", import),
    ])
}
