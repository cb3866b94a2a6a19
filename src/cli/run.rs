//! `run`: an execution job (`/v1/sandboxes/{id}/executions`, or one-shot `/v1/executions` in a
//! sandbox made from a template or taken from a pool). Unlike `exec`, sandboxd runs it and
//! keeps its status and result, so `run` submits, waits for the end (`?wait=`, then the
//! result's long poll), and prints the result; the exit code is the job's.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::json;

use super::client::Client;
use super::connect::Connection;
use super::error::CliError;
use super::output::{print_structured, spinner, write_stdout, Format, OutputArgs};
use super::sandboxes::key_value;
use super::templates::name_at_version;
use crate::wire::executions::{Execution, ExecutionRequest, ExecutionResult, ExecutionState, MAX_WAIT};

/// `run`.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "sandboxd run [OPTIONS] ID -- COMMAND [ARG]...\n       sandboxd run [OPTIONS] (--template NAME[@VERSION] | --pool NAME) -- COMMAND [ARG]...\n       sandboxd run [OPTIONS] ID (--sh TEXT | --code CODE | --handler-file FILE [--event JSON])",
    after_help = "Examples:\n  sandboxd run 3f2c… -- python3 -c 'print(6*7)'           # prints 42\n  sandboxd run --template python-ds -- python3 -V            # in a fresh sandbox, deleted after\n  sandboxd run --pool py --sh 'pip list | wc -l'              # in a pool member, released after\n  sandboxd run 3f2c… --handler-file h.py --event '{\"n\": 2}'  # prints the handler's result\n  sandboxd run -d 3f2c… -- make test                          # prints the execution id\n\nThe exit code is the job's. A job that did not succeed and has no non-zero code of its own\nexits 124 when it TimedOut, 130 when Cancelled, 1 otherwise. Ctrl-C cancels the job."
)]
pub struct RunArgs {
    /// The sandbox to run in; leave it out with --template or --pool.
    #[arg(value_name = "ID", required_unless_present_any = ["template", "pool"])]
    sandbox: Option<String>,
    /// The command and its arguments (run without a shell).
    #[arg(last = true, value_name = "COMMAND")]
    argv: Vec<String>,
    /// Run in a new sandbox made from this template (deleted after the run).
    #[arg(long, value_name = "NAME[@VERSION]", conflicts_with_all = ["sandbox", "pool"])]
    template: Option<String>,
    /// Run in a member of this pool (released after the run).
    #[arg(long, value_name = "NAME", conflicts_with = "sandbox")]
    pool: Option<String>,
    /// Shell text to run (`sh -c`), instead of COMMAND.
    #[arg(long = "sh", value_name = "TEXT", conflicts_with_all = ["argv", "code", "handler_file"])]
    shell: Option<String>,
    /// Code to run in the language's default context; the last expression is printed.
    #[arg(long, value_name = "CODE", conflicts_with_all = ["argv", "handler_file"])]
    code: Option<String>,
    /// A file whose code defines `handler(event)`; its return value is printed as JSON.
    #[arg(long, value_name = "FILE", conflicts_with = "argv")]
    handler_file: Option<std::path::PathBuf>,
    /// The event passed to the handler (JSON).
    #[arg(long, value_name = "JSON", requires = "handler_file")]
    event: Option<String>,
    /// The handler's function name [default: handler].
    #[arg(long, value_name = "NAME", requires = "handler_file")]
    handler: Option<String>,
    /// The language of --code or --handler-file [default: python].
    #[arg(long)]
    language: Option<String>,
    /// Seconds the job may run, 1–3600 [server default: 30].
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Environment variable of the command (repeatable `KEY=VALUE`).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Working directory of the command.
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Run in an isolated session (its own namespaces and seccomp filter).
    #[arg(long)]
    isolated: bool,
    /// Submit, print the execution's id and return at once.
    #[arg(short, long)]
    detach: bool,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    conn: Connection,
}

/// Submits the job, waits for its end and prints it; the exit code is the job's.
pub async fn run(args: RunArgs) -> Result<u8, CliError> {
    let client = args.conn.client()?;
    let mut request = ExecutionRequest {
        timeout: args.timeout,
        cwd: args.workdir.clone(),
        isolated: args.isolated.then_some(true),
        language: args.language.clone(),
        ..ExecutionRequest::default()
    };
    if !args.env.is_empty() {
        request.envs = Some(args.env.iter().cloned().collect::<BTreeMap<_, _>>());
    }
    if let Some(file) = &args.handler_file {
        let code = std::fs::read_to_string(file)
            .map_err(|e| CliError::io(format!("reading {}", file.display()), e))?;
        let event = match &args.event {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| CliError::Usage(format!("--event is not JSON: {e}")))?,
            None => json!({}),
        };
        request.code = Some(code);
        request.event = Some(event);
        request.handler = args.handler.clone();
        request.language.get_or_insert_with(|| "python".into());
    } else if let Some(code) = &args.code {
        request.code = Some(code.clone());
        request.language.get_or_insert_with(|| "python".into());
    } else if let Some(shell) = &args.shell {
        request.command = Some(shell.clone());
    } else if !args.argv.is_empty() {
        request.argv = Some(args.argv.clone());
    } else {
        return Err(CliError::Usage(
            "nothing to run: give `-- COMMAND [ARG]...`, --sh, --code or --handler-file".into(),
        ));
    }
    let (path, what) = match (&args.sandbox, &args.template, &args.pool) {
        (Some(id), None, None) => (format!("/sandboxes/{id}/executions"), format!("sandbox {id}")),
        (None, Some(template), None) => {
            let (name, version) = name_at_version(template)?;
            request.template_id = Some(name.clone());
            request.template_version = version;
            (
                "/executions".to_owned(),
                format!("a sandbox of template {template}"),
            )
        }
        (None, None, Some(pool)) => {
            request.pool_ref = Some(json!(pool));
            ("/executions".to_owned(), format!("a member of pool {pool}"))
        }
        _ => {
            return Err(CliError::Usage(
                "give one of a sandbox ID, --template or --pool".into(),
            ))
        }
    };
    // No wait on the submit: the long poll that follows is where Ctrl-C cancels.
    let submit = client.request(Method::POST, &path).json(&request);
    let progress = spinner(format!("running in {what}"));
    let submitted: Result<Execution, _> = client.json(submit).await;
    let execution = match submitted {
        Ok(e) if args.detach => {
            progress.finish_and_clear();
            match args.output.format {
                Format::Table => write_stdout(format!("{}\n", e.id).as_bytes())?,
                format => print_structured(format, &e)?,
            }
            return Ok(0);
        }
        Ok(e) => wait_for_end(&client, e).await,
        Err(e) => Err(e),
    };
    progress.finish_and_clear();
    let execution = execution?;
    match args.output.format {
        Format::Table => print_output(&execution)?,
        format => print_structured(format, &execution)?,
    }
    Ok(exit_code(&execution))
}

/// Long-polls the result until the job ends, then reads the execution and puts the result's
/// output in it (the execution alone is without its output). Ctrl-C cancels the job, and the
/// wait goes on to its end, which then is `Cancelled`.
async fn wait_for_end(client: &Client, execution: Execution) -> Result<Execution, CliError> {
    let id = execution.id;
    let mut cancelled = false;
    let result: ExecutionResult = loop {
        let result = client.request(Method::GET, &format!("/executions/{id}/result"));
        let result = client.json::<ExecutionResult>(result.query(&[("wait", MAX_WAIT.to_string())]));
        tokio::select! {
            answer = result => match answer {
                Ok(result) => break result,
                // Still running after the wait: ask again.
                Err(CliError::Api { code, .. }) if code == "EXECUTION::NOT_FINISHED" => {}
                Err(e) => return Err(e),
            },
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                eprintln!("sandboxd: cancelling {id}");
                let cancel = client.request(Method::DELETE, &format!("/executions/{id}"));
                match super::client::send(cancel).await {
                    Ok(_) => {}
                    // It ended meanwhile.
                    Err(CliError::Api { code, .. }) if code == "EXECUTION::ALREADY_FINISHED" => {}
                    Err(e) => return Err(e),
                }
            }
        }
    };
    let mut execution: Execution = client
        .json(client.request(Method::GET, &format!("/executions/{id}")))
        .await?;
    execution.status = result.status;
    execution.exit_code = result.exit_code;
    execution.duration_ms = result.duration_ms;
    execution.output = Some(result.output);
    Ok(execution)
}

/// The job's output as a person reads it: stdout and the result on stdout; stderr, the error
/// and truncation notes on stderr.
fn print_output(execution: &Execution) -> Result<(), CliError> {
    let Some(output) = &execution.output else {
        return state_note(execution);
    };
    let mut out = output.stdout.clone();
    if let Some(text) = &output.text {
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    if let Some(result) = &output.result {
        let text = serde_json::to_string_pretty(result).unwrap_or_else(|_| result.to_string());
        out.push_str(&text);
        out.push('\n');
    }
    write_stdout(out.as_bytes())?;
    eprint!("{}", output.stderr);
    if output.stdout_truncated || output.stderr_truncated {
        eprintln!("sandboxd: the output was truncated; the stored result keeps only its end");
    }
    if let Some(error) = &output.error {
        let mut line = format!("sandboxd: {}", error.code);
        for part in [&error.name, &error.value, &error.message].into_iter().flatten() {
            line.push_str(": ");
            line.push_str(part);
        }
        eprintln!("{line}");
        for traceback in &error.traceback {
            eprintln!("  {traceback}");
        }
    }
    state_note(execution)
}

/// Says why on stderr when the job did not succeed and its output does not tell.
fn state_note(execution: &Execution) -> Result<(), CliError> {
    let status = &execution.status;
    if matches!(status.state, ExecutionState::Succeeded) {
        return Ok(());
    }
    let has_error = execution.output.as_ref().is_some_and(|o| o.error.is_some());
    if !has_error || !matches!(status.state, ExecutionState::Failed) {
        let mut line = format!("sandboxd: {} {}", execution.id, status.state.as_str());
        for part in [&status.reason, &status.message].into_iter().flatten() {
            line.push_str(": ");
            line.push_str(part);
        }
        eprintln!("{line}");
    }
    Ok(())
}

/// The job's exit code when it has one (clamped to 0–255), else one for its state: a job that
/// did not succeed never exits 0 (a handler's exception is `Failed` with exit code 0).
fn exit_code(execution: &Execution) -> u8 {
    let state = execution.status.state;
    match execution.exit_code {
        Some(code) if (0..=255).contains(&code) && (code != 0 || state == ExecutionState::Succeeded) => {
            code as u8
        }
        _ => match state {
            ExecutionState::Succeeded => 0,
            ExecutionState::TimedOut => 124,
            ExecutionState::Cancelled => 130,
            _ => 1,
        },
    }
}
