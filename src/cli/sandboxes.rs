//! The lifecycle subcommands: `ls`, `create`, `get`, `rm`, `pause`, `resume`, `logs`,
//! `events`, each one or a few calls to sandboxd's `/v1/sandboxes` routes.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::client::send;
use super::connect::Connection;
use super::error::CliError;
use super::output::{age, print_structured, spinner, table, write_stdout, Format, OutputArgs};
use crate::wire::lifecycle::{CreateSandboxResponse, DiagnosticContent, ListSandboxesResponse, Sandbox};
use crate::wire::time::{format_ms, now_ms};

/// `ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only sandboxes in this state (repeatable, OR; case-insensitive): Running, Paused,
    /// Pending, Terminated, Failed.
    #[arg(long, value_name = "STATE")]
    state: Vec<String>,
    /// Only sandboxes with this metadata (repeatable `KEY=VALUE`, AND).
    #[arg(short = 'l', long = "metadata", value_name = "KEY=VALUE", value_parser = key_value)]
    metadata: Vec<(String, String)>,
    /// Admins only: one owner's sandboxes (`*`: everyone's, the admin default).
    #[arg(long)]
    owner: Option<String>,
    /// Print only the ids, one a line.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    conn: Connection,
}

/// `create`.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "sandboxd create [OPTIONS] IMAGE [-- ENTRYPOINT...]\n       sandboxd create [OPTIONS] --template NAME[@VERSION] [-- ENTRYPOINT...]",
    after_help = "Examples:\n  sandboxd create python:3.12\n  sandboxd create --timeout 0 --cpu 1 --memory 512Mi -e A=1 -l team=ml busybox -- sleep 86400\n  sandboxd create --template python-ds@2 -e X=1   # the template's spec, with overrides"
)]
pub struct CreateArgs {
    /// The image (pulled when missing).
    #[arg(required_unless_present = "template", conflicts_with = "template")]
    image: Option<String>,
    /// Make it from a template (name or id), at its latest version or `@VERSION`; the flags
    /// below override the template's spec.
    #[arg(long, value_name = "NAME[@VERSION]")]
    template: Option<String>,
    /// The sandbox's main process [default: the template's command, else tail -f /dev/null].
    #[arg(last = true, value_name = "ENTRYPOINT")]
    entrypoint: Vec<String>,
    /// Seconds until the sandbox expires (at least 60); 0 keeps it until `rm`
    /// [default: the template's ttl, else 600].
    #[arg(long)]
    timeout: Option<u64>,
    /// A display name (not unique).
    #[arg(long = "name", value_name = "NAME")]
    display_name: Option<String>,
    /// CPU limit, a Kubernetes quantity (`1`, `500m`).
    #[arg(long)]
    cpu: Option<String>,
    /// Memory limit, a Kubernetes quantity (`512Mi`, `2Gi`).
    #[arg(long)]
    memory: Option<String>,
    /// Environment variable of the sandbox (repeatable `KEY=VALUE`).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Metadata label (repeatable `KEY=VALUE`).
    #[arg(short = 'l', long = "metadata", value_name = "KEY=VALUE", value_parser = key_value)]
    metadata: Vec<(String, String)>,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    conn: Connection,
}

/// `get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Sandbox ids.
    #[arg(required = true, value_name = "ID")]
    ids: Vec<String>,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    conn: Connection,
}

/// `rm`, `pause`, `resume`: one or more ids.
#[derive(Debug, clap::Args)]
pub struct IdsArgs {
    /// Sandbox ids.
    #[arg(required = true, value_name = "ID")]
    ids: Vec<String>,
    #[command(flatten)]
    conn: Connection,
}

/// `logs`, `events`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The sandbox id.
    id: String,
    /// Only the last N lines (1–10000).
    #[arg(long, value_name = "N")]
    tail: Option<u32>,
    /// Only lines since a duration back (`30s`, `10m`, `2h`, `1d`) or an RFC 3339 time
    /// (logs: to the second).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Keep printing new lines as they come (polls every second; Ctrl-C stops).
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    conn: Connection,
}

/// `KEY=VALUE` → `(KEY, VALUE)`.
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Lists sandboxes (every page unless the server has fewer).
pub async fn ls(args: LsArgs) -> Result<u8, CliError> {
    let client = args.conn.client()?;
    let mut items = Vec::new();
    for page in 1.. {
        let mut query: Vec<(&str, String)> = args.state.iter().map(|s| ("state", s.clone())).collect();
        if !args.metadata.is_empty() {
            let filter: Vec<String> = args.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            query.push(("metadata", filter.join("&")));
        }
        if let Some(owner) = &args.owner {
            query.push(("owner", owner.clone()));
        }
        query.push(("page", page.to_string()));
        query.push(("pageSize", "200".into()));
        let answer: ListSandboxesResponse = client
            .json(client.request(Method::GET, "/sandboxes").query(&query))
            .await?;
        let more = answer.pagination.has_next_page;
        items.extend(answer.items);
        if !more {
            break;
        }
    }
    if args.quiet {
        let ids: String = items.iter().map(|s| format!("{}\n", s.id)).collect();
        write_stdout(ids.as_bytes())?;
        return Ok(0);
    }
    match args.output.format {
        Format::Table => {
            let now = now_ms();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        s.image.as_ref().map_or("-".into(), |i| i.uri.clone()),
                        s.status.state.clone(),
                        age(&s.created_at, now),
                        s.expires_at.as_deref().map_or("never".into(), |e| expiry(e, now)),
                        metadata_text(s.metadata.as_ref()),
                    ]
                })
                .collect();
            write_stdout(table(&["ID", "IMAGE", "STATE", "AGE", "EXPIRES", "METADATA"], &rows).as_bytes())?;
        }
        format => print_structured(format, &items)?,
    }
    Ok(0)
}

/// Creates a sandbox and prints its id once create returns (execd answers inside).
pub async fn create(args: CreateArgs) -> Result<u8, CliError> {
    let client = args.conn.client()?;
    let mut body = json!({});
    let source = match (&args.template, &args.image) {
        (Some(template), _) => {
            let (name, version) = super::templates::name_at_version(template)?;
            body["templateId"] = json!(name);
            if let Some(v) = version {
                body["templateVersion"] = json!(v);
            }
            format!("template {template}")
        }
        (None, image) => {
            let image = image.clone().unwrap_or_default();
            body["image"] = json!({"uri": image});
            if args.entrypoint.is_empty() {
                body["entrypoint"] = json!(["tail", "-f", "/dev/null"]);
            }
            // Without a template, sandboxd's own default would be no expiry at all.
            body["timeout"] = json!(args.timeout.unwrap_or(600));
            image
        }
    };
    if !args.entrypoint.is_empty() {
        body["entrypoint"] = json!(args.entrypoint);
    }
    match args.timeout {
        Some(0) => body["timeout"] = Value::Null,
        Some(t) => body["timeout"] = json!(t),
        None => {}
    }
    if let Some(name) = args.display_name {
        body["name"] = json!(name);
    }
    let mut limits = BTreeMap::new();
    if let Some(cpu) = args.cpu {
        limits.insert("cpu", cpu);
    }
    if let Some(memory) = args.memory {
        limits.insert("memory", memory);
    }
    if !limits.is_empty() {
        body["resourceLimits"] = json!(limits);
    }
    if !args.env.is_empty() {
        body["env"] = json!(args.env.into_iter().collect::<BTreeMap<_, _>>());
    }
    if !args.metadata.is_empty() {
        body["metadata"] = json!(args.metadata.into_iter().collect::<BTreeMap<_, _>>());
    }
    let wait = spinner(format!("creating a sandbox from {source}"));
    let created: Result<CreateSandboxResponse, _> = client
        .json(client.request(Method::POST, "/sandboxes").json(&body))
        .await;
    wait.finish_and_clear();
    let created = created?;
    match args.output.format {
        Format::Table => write_stdout(format!("{}\n", created.id).as_bytes())?,
        format => print_structured(format, &created)?,
    }
    Ok(0)
}

/// Shows sandboxes; all are tried, and the failures are reported.
pub async fn get(args: GetArgs) -> Result<u8, CliError> {
    let client = args.conn.client()?;
    let mut found: Vec<Sandbox> = Vec::new();
    let mut failed = 0;
    for id in &args.ids {
        match client
            .json::<Sandbox>(client.request(Method::GET, &format!("/sandboxes/{id}")))
            .await
        {
            Ok(sandbox) => found.push(sandbox),
            Err(e) => {
                eprintln!("sandboxd: {id}: {}", e.report());
                failed += 1;
            }
        }
    }
    match args.output.format {
        Format::Table => {
            let now = now_ms();
            let text: Vec<String> = found.iter().map(|s| detail(s, now)).collect();
            write_stdout(text.join("\n").as_bytes())?;
        }
        format if args.ids.len() == 1 => {
            if let Some(one) = found.first() {
                print_structured(format, one)?;
            }
        }
        format => print_structured(format, &found)?,
    }
    partial(failed, args.ids.len())
}

/// Deletes sandboxes, printing each id deleted.
pub async fn rm(args: IdsArgs) -> Result<u8, CliError> {
    each(&args, Method::DELETE, |id| format!("/sandboxes/{id}")).await
}

/// `pause` or `resume`.
pub async fn act(args: IdsArgs, action: &'static str) -> Result<u8, CliError> {
    each(&args, Method::POST, |id| format!("/sandboxes/{id}/{action}")).await
}

/// One request per id; prints the id on success, the error otherwise, and goes on.
async fn each(args: &IdsArgs, method: Method, path: impl Fn(&str) -> String) -> Result<u8, CliError> {
    let client = args.conn.client()?;
    let mut failed = 0;
    for id in &args.ids {
        match send(client.request(method.clone(), &path(id))).await {
            Ok(_) => write_stdout(format!("{id}\n").as_bytes())?,
            Err(e) => {
                // Nothing else will be different for the next id.
                if matches!(e, CliError::Unreachable { .. }) {
                    return Err(e);
                }
                eprintln!("sandboxd: {id}: {}", e.report());
                failed += 1;
            }
        }
    }
    partial(failed, args.ids.len())
}

pub(super) fn partial(failed: usize, total: usize) -> Result<u8, CliError> {
    match failed {
        0 => Ok(0),
        // The one failure was reported already: just the exit code.
        1 if total == 1 => Ok(1),
        _ => Err(CliError::Partial { failed, total }),
    }
}

/// `logs` or `events`: the scoped JSON descriptor's text (or the plain text a server without
/// scopes answers), then with `-f` the new lines every second.
pub async fn diagnostics(args: LogsArgs, kind: &str) -> Result<u8, CliError> {
    let client = args.conn.client()?;
    let path = format!("/sandboxes/{}/diagnostics/{kind}", args.id);
    let fetch = |since: Option<String>, tail: Option<u32>| {
        let client = &client;
        let path = &path;
        async move {
            // The container's output as the program printed it; every event.
            let mut query = match kind {
                "logs" => vec![
                    ("scope", "container".to_owned()),
                    ("timestamps", "false".to_owned()),
                ],
                _ => vec![("scope", "all".to_owned())],
            };
            if let Some(tail) = tail {
                query.push(("tail", tail.to_string()));
            }
            if let Some(since) = since {
                query.push(("since", since));
            }
            let response = send(client.request(Method::GET, path).query(&query)).await?;
            let is_json = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if is_json {
                let content: DiagnosticContent = super::client::json(response).await?;
                return Ok::<_, CliError>(content.content);
            }
            response.text().await.map_err(|source| CliError::Transport {
                what: format!("reading {kind}"),
                source,
            })
        }
    };
    // The poll window starts a second before each request, so a line written while the
    // previous answer was on its way is still in the next one.
    let mut window_start = now_ms() - 1000;
    let mut last = fetch(args.since.clone(), args.tail).await?;
    write_stdout(last.as_bytes())?;
    if !args.follow {
        return Ok(0);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
        let since = format_ms(window_start);
        window_start = now_ms() - 1000;
        let text = fetch(Some(since), None).await?;
        write_stdout(new_lines(&last, &text).as_bytes())?;
        last = text;
    }
}

/// The lines of `next` that follow what `prev` already showed: the longest run of lines that
/// ends `prev` and starts `next` is the overlap of the two poll windows. (A program printing
/// the same lines over and over can lose some repeats here; `since` has whole seconds only.)
fn new_lines<'a>(prev: &str, next: &'a str) -> &'a str {
    let prev: Vec<&str> = prev.split_inclusive('\n').collect();
    let next_lines: Vec<&str> = next.split_inclusive('\n').collect();
    let most = prev.len().min(next_lines.len());
    let overlap = (0..=most)
        .rev()
        .find(|&k| prev[prev.len() - k..] == next_lines[..k])
        .unwrap_or(0);
    let skip: usize = next_lines[..overlap].iter().map(|l| l.len()).sum();
    &next[skip..]
}

fn expiry(at: &str, now: i64) -> String {
    match crate::wire::time::parse_ms(at) {
        Some(ms) if ms >= now => format!("in {}", age(at, now)),
        Some(_) => format!("{} ago", age(at, now)),
        None => at.to_owned(),
    }
}

fn metadata_text(metadata: Option<&BTreeMap<String, String>>) -> String {
    match metadata {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

/// `get`'s human form: one `Field: value` line each.
fn detail(s: &Sandbox, now: i64) -> String {
    let mut lines = vec![
        ("ID", s.id.clone()),
        ("Image", s.image.as_ref().map_or("-".into(), |i| i.uri.clone())),
        ("State", s.status.state.clone()),
    ];
    if let Some(reason) = &s.status.reason {
        lines.push(("Reason", reason.clone()));
    }
    if let Some(message) = &s.status.message {
        lines.push(("Message", message.clone()));
    }
    lines.push(("Entrypoint", s.entrypoint.join(" ")));
    lines.push((
        "Created",
        format!("{} ({} ago)", s.created_at, age(&s.created_at, now)),
    ));
    lines.push((
        "Expires",
        s.expires_at
            .as_deref()
            .map_or("never (manual cleanup)".into(), |e| {
                format!("{e} ({})", expiry(e, now))
            }),
    ));
    lines.push(("Metadata", metadata_text(s.metadata.as_ref())));
    if let Some(domain) = &s.business_domain {
        lines.push(("Business domain", domain.clone()));
    }
    lines
        .into_iter()
        .map(|(k, v)| format!("{:<16}{v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_prints_only_lines_past_the_overlap() {
        assert_eq!(new_lines("a\nb\n", "b\nc\n"), "c\n");
        assert_eq!(new_lines("a\nb\n", "a\nb\n"), "");
        assert_eq!(new_lines("a\n", "x\ny\n"), "x\ny\n");
        assert_eq!(new_lines("", "x\n"), "x\n");
    }

    #[test]
    fn key_values_need_a_key() {
        assert_eq!(key_value("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(key_value("=x").is_err());
        assert!(key_value("x").is_err());
    }
}
