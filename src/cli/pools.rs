//! `pool ls|create|get|rm|acquire|release`: warm pools (`/v1/pools`), members kept started so
//! that an acquire hands out a running sandbox at once.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{json, Value};

use super::client::send;
use super::connect::Connection;
use super::error::CliError;
use super::output::{age, print_structured, spinner, table, write_stdout, Format, OutputArgs};
use super::sandboxes::{key_value, partial};
use super::templates::name_at_version;
use crate::wire::lifecycle::Sandbox;
use crate::wire::pools::{ListPoolsResponse, PoolResponse};
use crate::wire::time::now_ms;

/// `pool`.
#[derive(Debug, clap::Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    command: PoolCommand,
    #[command(flatten)]
    conn: Connection,
}

/// What becomes of a member after its release.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
enum Recycle {
    /// Remove it and warm a fresh one.
    #[default]
    Delete,
    /// Restart its container (its files are kept).
    Restart,
    /// Keep it as it is (needs --dedicated-owner).
    Noop,
}

#[derive(Debug, clap::Subcommand)]
enum PoolCommand {
    /// List pools with their member counts.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Create a pool of an image or a template; sandboxd starts warming members at once.
    #[command(
        after_help = "Examples:\n  sandboxd pool create py --image python:3.12 --buffer-min 2 --buffer-max 4 --pool-max 10\n  sandboxd pool create ds --template python-ds@2 --pool-min 1"
    )]
    Create {
        /// The pool's name (lowercase letters, digits and `-`).
        name: String,
        /// The members' image.
        #[arg(long, required_unless_present = "template", conflicts_with = "template")]
        image: Option<String>,
        /// The members' template, `NAME[@VERSION]` (default: its latest version).
        #[arg(long, value_name = "NAME[@VERSION]")]
        template: Option<String>,
        /// The members' main process, with --image [default: tail -f /dev/null].
        #[arg(last = true, value_name = "COMMAND", requires = "image")]
        command: Vec<String>,
        /// Idle members to keep at least.
        #[arg(long, default_value_t = 1)]
        buffer_min: u32,
        /// Idle members to keep at most.
        #[arg(long, default_value_t = 2)]
        buffer_max: u32,
        /// Members (idle and allocated) at least.
        #[arg(long, default_value_t = 0)]
        pool_min: u32,
        /// Members (idle and allocated) at most.
        #[arg(long, default_value_t = 10)]
        pool_max: u32,
        /// CPU limit of each member, with --image (`1`, `500m`).
        #[arg(long, requires = "image")]
        cpu: Option<String>,
        /// Memory limit of each member, with --image (`512Mi`).
        #[arg(long, requires = "image")]
        memory: Option<String>,
        /// Environment variable of each member, with --image (repeatable `KEY=VALUE`).
        #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = key_value, requires = "image")]
        env: Vec<(String, String)>,
        /// Label of each member, with --image (repeatable `KEY=VALUE`).
        #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = key_value, requires = "image")]
        labels: Vec<(String, String)>,
        /// What happens to a member after its release.
        #[arg(long, value_enum, default_value_t)]
        recycle: Recycle,
        /// A member stays with the first user who acquired it.
        #[arg(long)]
        dedicated_owner: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a pool: capacity and counts.
    #[command(visible_alias = "inspect")]
    Get {
        /// The pool's name.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete pools: idle members are removed; acquired sandboxes keep running, detached.
    #[command(visible_alias = "delete")]
    Rm {
        /// Pool names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Take a running sandbox from a pool and print its id (waits for a warming member).
    #[command(
        after_help = "Example:\n  id=$(sandboxd pool acquire py -e TASK=42) && sandboxd exec $id -- python -V"
    )]
    Acquire {
        /// The pool's name.
        name: String,
        /// Seconds until the sandbox expires (at least 60); 0 keeps it until released.
        #[arg(long)]
        timeout: Option<u64>,
        /// Environment variable added to the sandbox (repeatable `KEY=VALUE`).
        #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
        env: Vec<(String, String)>,
        /// Metadata label of the sandbox (repeatable `KEY=VALUE`).
        #[arg(short = 'l', long = "metadata", value_name = "KEY=VALUE", value_parser = key_value)]
        metadata: Vec<(String, String)>,
        /// A display name for the sandbox.
        #[arg(long = "name", value_name = "NAME")]
        display_name: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Give acquired sandboxes back to their pools (the pool's recycle strategy applies).
    Release {
        /// Sandbox ids.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

/// Runs a `pool` subcommand.
pub async fn pool(args: PoolArgs) -> Result<u8, CliError> {
    let client = args.conn.client()?;
    match args.command {
        PoolCommand::Ls { output } => {
            let answer: ListPoolsResponse = client.json(client.request(Method::GET, "/pools")).await?;
            match output.format {
                Format::Table => {
                    let now = now_ms();
                    let rows: Vec<Vec<String>> = answer
                        .items
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                source(p),
                                p.status.available.to_string(),
                                p.status.allocated.to_string(),
                                p.status.warming.to_string(),
                                p.status.failed.to_string(),
                                format!(
                                    "{}-{}/{}-{}",
                                    p.capacity_spec.buffer_min,
                                    p.capacity_spec.buffer_max,
                                    p.capacity_spec.pool_min,
                                    p.capacity_spec.pool_max
                                ),
                                age(&p.created_at, now),
                            ]
                        })
                        .collect();
                    let headers = [
                        "NAME",
                        "SOURCE",
                        "AVAILABLE",
                        "ALLOCATED",
                        "WARMING",
                        "FAILED",
                        "BUFFER/POOL",
                        "AGE",
                    ];
                    write_stdout(table(&headers, &rows).as_bytes())?;
                }
                format => print_structured(format, &answer.items)?,
            }
            Ok(0)
        }
        PoolCommand::Create {
            name,
            image,
            template,
            command,
            buffer_min,
            buffer_max,
            pool_min,
            pool_max,
            cpu,
            memory,
            env,
            labels,
            recycle,
            dedicated_owner,
            output,
        } => {
            let mut body = json!({
                "name": name,
                "capacitySpec": {
                    "bufferMin": buffer_min, "bufferMax": buffer_max,
                    "poolMin": pool_min, "poolMax": pool_max,
                },
                "recycleStrategy": {"type": match recycle {
                    Recycle::Delete => "Delete",
                    Recycle::Restart => "Restart",
                    Recycle::Noop => "Noop",
                }},
                "dedicatedOwner": dedicated_owner,
            });
            if let Some(template) = template {
                let (id, version) = name_at_version(&template)?;
                body["templateId"] = json!(id);
                if let Some(v) = version {
                    body["templateVersion"] = json!(v);
                }
            } else if let Some(image) = image {
                body["template"] = pod_template(image, command, cpu, memory, env, labels);
            }
            let pool: PoolResponse = client
                .json(client.request(Method::POST, "/pools").json(&body))
                .await?;
            match output.format {
                Format::Table => write_stdout(format!("{}\n", pool.name).as_bytes())?,
                format => print_structured(format, &pool)?,
            }
            Ok(0)
        }
        PoolCommand::Get { name, output } => {
            let path = format!("/pools/{}", segment(&name));
            let pool: PoolResponse = client.json(client.request(Method::GET, &path)).await?;
            match output.format {
                Format::Table => write_stdout(detail(&pool).as_bytes())?,
                format => print_structured(format, &pool)?,
            }
            Ok(0)
        }
        PoolCommand::Rm { names } => {
            each(&client, &names, Method::DELETE, |n| {
                format!("/pools/{}", segment(n))
            })
            .await
        }
        PoolCommand::Acquire {
            name,
            timeout,
            env,
            metadata,
            display_name,
            output,
        } => {
            let mut body = json!({});
            if let Some(timeout) = timeout {
                body["timeout"] = if timeout == 0 { Value::Null } else { json!(timeout) };
            }
            if !env.is_empty() {
                body["env"] = json!(env.into_iter().collect::<BTreeMap<_, _>>());
            }
            if !metadata.is_empty() {
                body["metadata"] = json!(metadata.into_iter().collect::<BTreeMap<_, _>>());
            }
            if let Some(n) = display_name {
                body["name"] = json!(n);
            }
            let wait = spinner(format!("acquiring a sandbox from pool {name}"));
            let path = format!("/pools/{}/acquire", segment(&name));
            let sandbox: Result<Sandbox, _> =
                client.json(client.request(Method::POST, &path).json(&body)).await;
            wait.finish_and_clear();
            let sandbox = sandbox?;
            match output.format {
                Format::Table => write_stdout(format!("{}\n", sandbox.id).as_bytes())?,
                format => print_structured(format, &sandbox)?,
            }
            Ok(0)
        }
        PoolCommand::Release { ids } => {
            each(&client, &ids, Method::POST, |id| {
                format!("/sandboxes/{}/release", segment(id))
            })
            .await
        }
    }
}

/// The first container of a pod template, as sandboxd reads it.
fn pod_template(
    image: String,
    command: Vec<String>,
    cpu: Option<String>,
    memory: Option<String>,
    env: Vec<(String, String)>,
    labels: Vec<(String, String)>,
) -> Value {
    let command = if command.is_empty() {
        vec!["tail".to_owned(), "-f".into(), "/dev/null".into()]
    } else {
        command
    };
    let mut container = json!({"name": "sandbox", "image": image, "command": command});
    let limits: BTreeMap<&str, String> = [("cpu", cpu), ("memory", memory)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    if !limits.is_empty() {
        container["resources"] = json!({"limits": limits});
    }
    if !env.is_empty() {
        let env: Vec<Value> = env
            .into_iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        container["env"] = json!(env);
    }
    let mut template = json!({"spec": {"containers": [container]}});
    if !labels.is_empty() {
        template["metadata"] = json!({"labels": labels.into_iter().collect::<BTreeMap<_, _>>()});
    }
    template
}

fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// What the members are made of: the image, or `template@version`.
fn source(p: &PoolResponse) -> String {
    match (&p.template_id, p.template_version) {
        (Some(t), Some(v)) => format!("{t}@{v}"),
        (Some(t), None) => t.clone(),
        _ => p.image.clone(),
    }
}

/// One request per name; prints the name on success, the error otherwise, and goes on.
async fn each(
    client: &super::client::Client,
    names: &[String],
    method: Method,
    path: impl Fn(&str) -> String,
) -> Result<u8, CliError> {
    let mut failed = 0;
    for name in names {
        match send(client.request(method.clone(), &path(name))).await {
            Ok(_) => write_stdout(format!("{name}\n").as_bytes())?,
            Err(e @ CliError::Unreachable { .. }) => return Err(e),
            Err(e) => {
                eprintln!("sandboxd: {name}: {}", e.report());
                failed += 1;
            }
        }
    }
    partial(failed, names.len())
}

/// `get`'s human form.
fn detail(p: &PoolResponse) -> String {
    let now = now_ms();
    let c = &p.capacity_spec;
    let s = &p.status;
    let mut fields = vec![("Name", p.name.clone()), ("Image", p.image.clone())];
    if let Some(t) = &p.template_id {
        let version = p.template_version.map_or(String::new(), |v| format!("@{v}"));
        fields.push(("Template", format!("{t}{version}")));
    }
    fields.extend([
        ("Buffer", format!("{}–{} idle", c.buffer_min, c.buffer_max)),
        ("Pool", format!("{}–{} members", c.pool_min, c.pool_max)),
        (
            "Members",
            format!(
                "{} total: {} available, {} allocated, {} warming, {} failed",
                s.total, s.available, s.allocated, s.warming, s.failed
            ),
        ),
        ("Recycle", format!("{:?}", p.recycle_strategy.kind)),
        ("Dedicated owner", p.dedicated_owner.to_string()),
        ("Revision", s.revision.clone()),
        (
            "Created",
            format!("{} ({} ago)", p.created_at, age(&p.created_at, now)),
        ),
    ]);
    if let Some(message) = &s.message {
        fields.push(("Message", message.clone()));
    }
    fields
        .into_iter()
        .map(|(k, v)| format!("{:<17}{v}\n", format!("{k}:")))
        .collect()
}
