//! `template apply|ls|get|versions|rollback|export|rm`: sandboxd's versioned templates
//! (`/v1/templates`), with YAML files as the way in (`apply -f`, the import route) and out
//! (`export`).

use std::io::Read as _;
use std::path::PathBuf;

use reqwest::Method;

use super::client::send;
use super::connect::Connection;
use super::error::CliError;
use super::output::{age, print_structured, table, write_stdout, Format, OutputArgs};
use crate::wire::templates::{
    ImportResult, ListTemplateVersionsResponse, ListTemplatesResponse, RollbackRequest, RollbackResult,
    Template, TemplateVersion,
};
use crate::wire::time::now_ms;

/// `template`.
#[derive(Debug, clap::Args)]
pub struct TemplateArgs {
    #[command(subcommand)]
    command: TemplateCommand,
    #[command(flatten)]
    conn: Connection,
}

/// How `apply` treats templates that exist or do not.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
enum Strategy {
    /// Create the new ones, update the existing ones (a version only when the spec changed).
    #[default]
    CreateOrUpdate,
    /// Create the new ones; existing ones are skipped.
    CreateOnly,
    /// Update the existing ones; new ones are skipped.
    UpdateOnly,
}

impl Strategy {
    fn as_str(self) -> &'static str {
        match self {
            Strategy::CreateOrUpdate => "create-or-update",
            Strategy::CreateOnly => "create-only",
            Strategy::UpdateOnly => "update-only",
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum TemplateCommand {
    /// Create or update templates from a YAML file (`kind: Template`, `kind: TemplateList`, or a
    /// `---` stream of them), as `template export` writes it.
    #[command(
        after_help = "Examples:\n  sandboxd template apply -f python-ds.yaml\n  sandboxd template export --all > all.yaml && sandboxd template apply -f all.yaml --strategy create-only\n  cat t.yaml | sandboxd template apply -f - --dry-run"
    )]
    Apply {
        /// The YAML file (`-` reads stdin).
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
        /// What to do with templates that exist already, or do not.
        #[arg(long, value_enum, default_value_t)]
        strategy: Strategy,
        /// Report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// All or nothing: if one item fails, apply none.
        #[arg(long)]
        atomic: bool,
        /// Start a prepull of each applied template's image.
        #[arg(long)]
        prepull: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List templates by name.
    #[command(visible_alias = "list")]
    Ls {
        /// Only templates with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only templates whose name, display name or description contains this
        /// (case-insensitive).
        #[arg(long)]
        search: Option<String>,
        /// Print only the names, one a line.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a template (its latest version), or one version with `NAME@VERSION`.
    Get {
        /// The template's name or id, optionally `@VERSION`.
        #[arg(value_name = "NAME[@VERSION]")]
        template: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List a template's versions, newest first.
    Versions {
        /// The template's name or id.
        #[arg(value_name = "NAME")]
        template: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Make an old version's spec the latest again (as a new version).
    #[command(after_help = "Example:\n  sandboxd template rollback python-ds --to 1")]
    Rollback {
        /// The template's name or id.
        #[arg(value_name = "NAME")]
        template: String,
        /// The version whose spec becomes the latest.
        #[arg(long = "to", value_name = "VERSION")]
        to: u32,
        /// Why, recorded with the new version.
        #[arg(long)]
        changelog: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print templates as YAML that `template apply -f` reads back (`-o` does not apply).
    #[command(
        after_help = "Examples:\n  sandboxd template export python-ds > python-ds.yaml\n  sandboxd template export python-ds@2\n  sandboxd template export --all --all-versions > backup.yaml"
    )]
    Export {
        /// Templates by name (`NAME@VERSION` for one version of a single template).
        #[arg(value_name = "NAME[@VERSION]", required_unless_present_any = ["all", "tag"])]
        templates: Vec<String>,
        /// Every template the caller may read.
        #[arg(long, conflicts_with = "templates")]
        all: bool,
        /// Every template with this tag.
        #[arg(long, conflicts_with = "templates")]
        tag: Option<String>,
        /// Add each template's version history.
        #[arg(long)]
        all_versions: bool,
    },
    /// Delete templates with all their versions (sandboxes made from them keep running).
    #[command(visible_alias = "delete")]
    Rm {
        /// Names or ids.
        #[arg(required = true, value_name = "NAME")]
        templates: Vec<String>,
    },
}

/// `NAME[@VERSION]` → (name, version).
pub fn name_at_version(text: &str) -> Result<(String, Option<u32>), CliError> {
    match text.rsplit_once('@') {
        None => Ok((text.to_owned(), None)),
        Some((name, version)) => match version.parse::<u32>() {
            Ok(v) if v >= 1 && !name.is_empty() => Ok((name.to_owned(), Some(v))),
            _ => Err(CliError::Usage(format!(
                "{text:?}: expected NAME or NAME@VERSION with VERSION an integer ≥ 1"
            ))),
        },
    }
}

/// Path segment: names are `[a-z0-9-]`, but an id or a typo must still make a valid URL.
fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Runs a `template` subcommand.
pub async fn template(args: TemplateArgs) -> Result<u8, CliError> {
    let client = args.conn.client()?;
    match args.command {
        TemplateCommand::Apply {
            file,
            strategy,
            dry_run,
            atomic,
            prepull,
            output,
        } => {
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| CliError::io("reading the templates from stdin", e))?;
                text
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| CliError::io(format!("reading {}", file.display()), e))?
            };
            let query = [
                ("strategy", strategy.as_str()),
                ("dryRun", if dry_run { "true" } else { "false" }),
                ("atomic", if atomic { "true" } else { "false" }),
                ("autoPrepull", if prepull { "true" } else { "false" }),
            ];
            let request = client
                .request(Method::POST, "/templates/import")
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/yaml")
                .body(text);
            let result: ImportResult = client.json(request).await?;
            for warning in &result.warnings {
                eprintln!("sandboxd: warning: {warning}");
            }
            match output.format {
                Format::Table => write_stdout(import_table(&result).as_bytes())?,
                format => print_structured(format, &result)?,
            }
            for failed in &result.failed {
                eprintln!(
                    "sandboxd: item {} ({}): {}: {}",
                    failed.index, failed.name, failed.code, failed.message
                );
            }
            Ok(u8::from(!result.failed.is_empty()))
        }
        TemplateCommand::Ls {
            tag,
            search,
            quiet,
            output,
        } => {
            let mut items = Vec::new();
            for page in 1.. {
                let mut query = vec![("page", page.to_string()), ("pageSize", "200".to_owned())];
                query.extend(tag.clone().map(|t| ("tag", t)));
                query.extend(search.clone().map(|s| ("search", s)));
                let answer: ListTemplatesResponse = client
                    .json(client.request(Method::GET, "/templates").query(&query))
                    .await?;
                items.extend(answer.items);
                if !answer.pagination.has_next_page {
                    break;
                }
            }
            if quiet {
                let names: String = items.iter().map(|t| format!("{}\n", t.name)).collect();
                return write_stdout(names.as_bytes()).map(|()| 0);
            }
            match output.format {
                Format::Table => {
                    let now = now_ms();
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                t.latest_version.to_string(),
                                t.status.phase.clone(),
                                t.spec.image.clone(),
                                dash(t.tags.join(",")),
                                age(&t.updated_at, now),
                            ]
                        })
                        .collect();
                    write_stdout(
                        table(&["NAME", "VERSION", "PHASE", "IMAGE", "TAGS", "UPDATED"], &rows).as_bytes(),
                    )?;
                }
                format => print_structured(format, &items)?,
            }
            Ok(0)
        }
        TemplateCommand::Get { template, output } => {
            let (name, version) = name_at_version(&template)?;
            match version {
                None => {
                    let t: Template = client
                        .json(client.request(Method::GET, &format!("/templates/{}", segment(&name))))
                        .await?;
                    match output.format {
                        Format::Table => write_stdout(template_detail(&t).as_bytes())?,
                        format => print_structured(format, &t)?,
                    }
                }
                Some(v) => {
                    let path = format!("/templates/{}/versions/{v}", segment(&name));
                    let version: TemplateVersion = client.json(client.request(Method::GET, &path)).await?;
                    match output.format {
                        Format::Table => write_stdout(version_detail(&name, &version).as_bytes())?,
                        format => print_structured(format, &version)?,
                    }
                }
            }
            Ok(0)
        }
        TemplateCommand::Versions { template, output } => {
            let mut items = Vec::new();
            for page in 1.. {
                let path = format!("/templates/{}/versions", segment(&template));
                let query = [("page", page.to_string()), ("pageSize", "200".to_owned())];
                let answer: ListTemplateVersionsResponse = client
                    .json(client.request(Method::GET, &path).query(&query))
                    .await?;
                items.extend(answer.items);
                if !answer.pagination.has_next_page {
                    break;
                }
            }
            match output.format {
                Format::Table => {
                    let now = now_ms();
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|v| {
                            let mut changelog = v.changelog.clone().unwrap_or_default();
                            if let Some(from) = v.rolled_back_from {
                                changelog = format!("(copy of {from}) {changelog}").trim_end().to_owned();
                            }
                            vec![
                                v.version.to_string(),
                                v.status.phase.clone(),
                                v.spec.image.clone(),
                                age(&v.created_at, now),
                                v.created_by.clone(),
                                dash(changelog),
                            ]
                        })
                        .collect();
                    write_stdout(
                        table(&["VERSION", "PHASE", "IMAGE", "AGE", "BY", "CHANGELOG"], &rows).as_bytes(),
                    )?;
                }
                format => print_structured(format, &items)?,
            }
            Ok(0)
        }
        TemplateCommand::Rollback {
            template,
            to,
            changelog,
            output,
        } => {
            let body = RollbackRequest {
                target_version: to,
                changelog,
            };
            let path = format!("/templates/{}/rollback", segment(&template));
            let result: RollbackResult = client
                .json(client.request(Method::POST, &path).json(&body))
                .await?;
            match output.format {
                Format::Table => {
                    let line = if result.version_created {
                        format!(
                            "{}: version {} has version {}'s spec (was {})\n",
                            result.name, result.new_version, result.target_version, result.from_version
                        )
                    } else {
                        format!(
                            "{}: unchanged, version {} already has version {}'s spec\n",
                            result.name, result.new_version, result.target_version
                        )
                    };
                    write_stdout(line.as_bytes())?;
                }
                format => print_structured(format, &result)?,
            }
            Ok(0)
        }
        TemplateCommand::Export {
            templates,
            all: _,
            tag,
            all_versions,
        } => {
            let all_versions = if all_versions { "true" } else { "false" };
            let request = match templates.as_slice() {
                [one] => {
                    let (name, version) = name_at_version(one)?;
                    let mut query = vec![("allVersions", all_versions.to_owned())];
                    query.extend(version.map(|v| ("version", v.to_string())));
                    client
                        .request(Method::GET, &format!("/templates/{}/export", segment(&name)))
                        .query(&query)
                }
                many => {
                    if let Some(bad) = many.iter().find(|n| n.contains('@')) {
                        return Err(CliError::Usage(format!(
                            "{bad}: NAME@VERSION exports one template; give it alone"
                        )));
                    }
                    let mut query = vec![("allVersions", all_versions.to_owned())];
                    if !many.is_empty() {
                        query.push(("names", many.join(",")));
                    }
                    query.extend(tag.map(|t| ("tag", t)));
                    client.request(Method::GET, "/templates/export").query(&query)
                }
            };
            let response = send(request).await?;
            let text = response.text().await.map_err(|source| CliError::Transport {
                what: "reading the export".into(),
                source,
            })?;
            write_stdout(text.as_bytes())?;
            Ok(0)
        }
        TemplateCommand::Rm { templates } => {
            let mut failed = 0;
            for name in &templates {
                match send(client.request(Method::DELETE, &format!("/templates/{}", segment(name)))).await {
                    Ok(_) => write_stdout(format!("{name}\n").as_bytes())?,
                    Err(e @ CliError::Unreachable { .. }) => return Err(e),
                    Err(e) => {
                        eprintln!("sandboxd: {name}: {}", e.report());
                        failed += 1;
                    }
                }
            }
            super::sandboxes::partial(failed, templates.len())
        }
    }
}

fn dash(text: String) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}

/// `apply`'s human form: one row per item, by what happened to it.
fn import_table(result: &ImportResult) -> String {
    let mut rows = Vec::new();
    for item in &result.created {
        rows.push(vec![
            item.name.clone(),
            "created".into(),
            item.version.to_string(),
            "-".into(),
        ]);
    }
    for item in &result.updated {
        let from = item.from_version.map_or(String::new(), |v| format!("{v} → "));
        rows.push(vec![
            item.name.clone(),
            "updated".into(),
            format!("{from}{}", item.version),
            "-".into(),
        ]);
    }
    for item in &result.unchanged {
        rows.push(vec![
            item.name.clone(),
            "unchanged".into(),
            item.version.to_string(),
            "-".into(),
        ]);
    }
    for item in &result.skipped {
        rows.push(vec![
            item.name.clone(),
            "skipped".into(),
            "-".into(),
            item.reason.clone(),
        ]);
    }
    for item in &result.failed {
        rows.push(vec![
            item.name.clone(),
            "failed".into(),
            "-".into(),
            item.code.clone(),
        ]);
    }
    let mut text = table(&["NAME", "RESULT", "VERSION", "DETAIL"], &rows);
    if result.dry_run {
        text.push_str("(dry run: nothing was changed)\n");
    }
    for task in &result.prepull_tasks {
        text.push_str(&format!("prepull started: {task}\n"));
    }
    text
}

fn lines(fields: Vec<(&str, String)>) -> String {
    fields
        .into_iter()
        .map(|(k, v)| format!("{:<16}{v}\n", format!("{k}:")))
        .collect()
}

/// `get`'s human form of a template.
fn template_detail(t: &Template) -> String {
    let now = now_ms();
    let mut fields = vec![
        ("Name", t.name.clone()),
        ("ID", t.template_id.clone()),
        ("Version", t.latest_version.to_string()),
        ("Phase", t.status.phase.clone()),
    ];
    if let Some(message) = &t.status.message {
        fields.push(("Message", message.clone()));
    }
    fields.push(("Image", t.spec.image.clone()));
    if let Some(built) = &t.status.manifest_ref {
        if *built != t.spec.image {
            fields.push(("Built image", built.clone()));
        }
    }
    fields.push(("Entrypoint", dash(t.entrypoint.join(" "))));
    if let Some(d) = &t.display_name {
        fields.push(("Display name", d.clone()));
    }
    if let Some(d) = &t.description {
        fields.push(("Description", d.clone()));
    }
    fields.push(("Tags", dash(t.tags.join(","))));
    fields.push(("Public", t.is_public.to_string()));
    fields.push(("Author", t.author.clone()));
    fields.push((
        "Updated",
        format!("{} ({} ago)", t.updated_at, age(&t.updated_at, now)),
    ));
    lines(fields)
}

/// `get NAME@VERSION`'s human form.
fn version_detail(name: &str, v: &TemplateVersion) -> String {
    let now = now_ms();
    let mut fields = vec![
        ("Name", name.to_owned()),
        ("Version", v.version.to_string()),
        ("Phase", v.status.phase.clone()),
    ];
    if let Some(message) = &v.status.message {
        fields.push(("Message", message.clone()));
    }
    fields.push(("Image", v.spec.image.clone()));
    if let Some(from) = v.rolled_back_from {
        fields.push(("Copy of", format!("version {from}")));
    }
    fields.push(("Changelog", dash(v.changelog.clone().unwrap_or_default())));
    fields.push((
        "Created",
        format!(
            "{} ({} ago) by {}",
            v.created_at,
            age(&v.created_at, now),
            v.created_by
        ),
    ));
    lines(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_an_optional_version() {
        assert_eq!(name_at_version("py").unwrap(), ("py".into(), None));
        assert_eq!(name_at_version("py@3").unwrap(), ("py".into(), Some(3)));
        for bad in ["py@", "py@0", "py@x", "@2"] {
            assert!(matches!(name_at_version(bad), Err(CliError::Usage(_))), "{bad}");
        }
    }
}
