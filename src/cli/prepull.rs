//! `prepull IMAGE` (or `--template NAME`): pull an image onto sandboxd's host ahead of the
//! sandboxes that need it, following the task's progress snapshots (`/v1/prepulls/{id}/events`)
//! as a progress bar on a terminal, or as plain lines otherwise.

use std::io::IsTerminal as _;

use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::json;

use super::client::{json, send, Client};
use super::connect::Connection;
use super::error::CliError;
use super::output::{print_structured, write_stdout, Format, OutputArgs};
use crate::wire::prepull::{PrepullState, PrepullTask};

/// `prepull`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  sandboxd prepull python:3.12\n  sandboxd prepull --template python-ds\n  sandboxd prepull -d busybox   # start it and print the task id"
)]
pub struct PrepullArgs {
    /// The image to pull (`busybox` is `busybox:latest`).
    #[arg(required_unless_present = "template", conflicts_with = "template")]
    image: Option<String>,
    /// Pull the image of a template's latest version instead (name or id).
    #[arg(long, value_name = "NAME")]
    template: Option<String>,
    /// Seconds the pull may take, 60–3600 [server default: 600].
    #[arg(long, value_name = "SECONDS", conflicts_with = "template")]
    timeout: Option<u64>,
    /// Start the pull, print the task's id and return at once.
    #[arg(short, long)]
    detach: bool,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    conn: Connection,
}

/// Starts (or joins) a prepull and follows it to its end; exit 1 unless it completed.
pub async fn prepull(args: PrepullArgs) -> Result<u8, CliError> {
    let client = args.conn.client()?;
    let request = match (&args.template, &args.image) {
        (Some(template), _) => {
            let id: String = form_urlencoded::byte_serialize(template.as_bytes()).collect();
            client.request(Method::POST, &format!("/templates/{id}/prepull"))
        }
        (None, image) => {
            let mut body = json!({"image": image});
            if let Some(t) = args.timeout {
                body["timeout"] = json!(t);
            }
            client.request(Method::POST, "/prepulls").json(&body)
        }
    };
    let task: PrepullTask = client.json(request).await?;
    if args.detach {
        match args.output.format {
            Format::Table => write_stdout(format!("{}\n", task.id).as_bytes())?,
            format => print_structured(format, &task)?,
        }
        return Ok(0);
    }
    let task = follow(&client, task).await?;
    match args.output.format {
        Format::Table => {
            let reason = task
                .status
                .reason
                .as_deref()
                .map_or(String::new(), |r| format!(" ({r})"));
            write_stdout(
                format!(
                    "{} {} {}{reason}\n",
                    task.id,
                    task.image,
                    task.status.state.as_str()
                )
                .as_bytes(),
            )?;
        }
        format => print_structured(format, &task)?,
    }
    if task.status.state == PrepullState::Completed {
        return Ok(0);
    }
    if let Some(message) = &task.status.message {
        eprintln!("sandboxd: {}: {message}", task.image);
    }
    Ok(1)
}

/// Follows the task's events to a final snapshot, showing each one; Ctrl-C stops following
/// (the pull goes on) and cancels nothing.
async fn follow(client: &Client, task: PrepullTask) -> Result<PrepullTask, CliError> {
    let mut view = View::new(&task);
    if task.status.state.is_final() {
        view.finish(&task);
        return Ok(task);
    }
    let path = format!("/prepulls/{}/events", task.id);
    let response = send(client.request(Method::GET, &path)).await?;
    let mut body = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    let mut last = task;
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            _ = tokio::signal::ctrl_c() => {
                view.abandon();
                eprintln!("sandboxd: stopped following; the pull goes on (task {})", last.id);
                return Ok(last);
            }
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|source| CliError::Transport {
            what: format!("reading the progress of {}", last.id),
            source,
        })?;
        buffer.extend(chunk.iter().copied().filter(|&b| b != b'\r'));
        while let Some(event) = next_event(&mut buffer) {
            let Some(data) = event_data(&event) else { continue };
            let snapshot: PrepullTask = serde_json::from_str(&data).map_err(|source| CliError::Decode {
                url: path.clone(),
                source,
            })?;
            view.show(&snapshot);
            last = snapshot;
            if last.status.state.is_final() {
                view.finish(&last);
                return Ok(last);
            }
        }
    }
    // The stream ended without a final snapshot (a server restart, say): ask once more.
    let task: PrepullTask =
        json(send(client.request(Method::GET, &format!("/prepulls/{}", last.id))).await?).await?;
    view.finish(&task);
    Ok(task)
}

/// Takes one complete SSE event (up to its blank line) off the front of `buffer`, which holds
/// the stream's bytes with the carriage returns left out.
fn next_event(buffer: &mut Vec<u8>) -> Option<String> {
    let end = buffer.windows(2).position(|w| w == b"\n\n")?;
    let event = String::from_utf8_lossy(&buffer[..end]).into_owned();
    buffer.drain(..end + 2);
    Some(event)
}

/// The `data:` lines of an event, joined; `None` for a comment or keep-alive.
fn event_data(event: &str) -> Option<String> {
    let data: Vec<&str> = event
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    (!data.is_empty()).then(|| data.join("\n"))
}

/// A progress bar on a terminal; otherwise a line on stderr at each state change and each
/// whole percent more (at most a line per snapshot: two a second).
enum View {
    Bar(ProgressBar),
    Lines {
        state: Option<PrepullState>,
        percent: Option<u64>,
    },
}

impl View {
    fn new(task: &PrepullTask) -> Self {
        if !std::io::stderr().is_terminal() {
            return View::Lines {
                state: None,
                percent: None,
            };
        }
        let bar = ProgressBar::new(task.progress.bytes_total.max(1)).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        View::Bar(bar)
    }

    fn show(&mut self, task: &PrepullTask) {
        let p = &task.progress;
        match self {
            View::Bar(bar) => {
                if p.bytes_total > 0 {
                    bar.set_length(p.bytes_total);
                }
                bar.set_position(p.bytes_done);
                bar.set_message(format!(
                    "{} {} {}/{} layers",
                    task.image,
                    task.status.state.as_str(),
                    p.layers_done,
                    p.layers_total
                ));
            }
            View::Lines { state, percent } => {
                let now = p.percent.clamp(0.0, 100.0).floor() as u64;
                if *state == Some(task.status.state) && *percent == Some(now) {
                    return;
                }
                *state = Some(task.status.state);
                *percent = Some(now);
                eprintln!("{}", line(task));
            }
        }
    }

    fn finish(&mut self, task: &PrepullTask) {
        match self {
            View::Bar(bar) => {
                if task.status.state == PrepullState::Completed {
                    bar.set_position(bar.length().unwrap_or(0));
                }
                bar.finish_and_clear();
            }
            View::Lines { .. } => self.show(task),
        }
    }

    fn abandon(&mut self) {
        if let View::Bar(bar) = self {
            bar.abandon();
        }
    }
}

/// `busybox:latest: Pulling 40% (12.0 MB of 30.0 MB, 1/2 layers)`.
fn line(task: &PrepullTask) -> String {
    let p = &task.progress;
    let mut text = format!("{}: {}", task.image, task.status.state.as_str());
    if p.bytes_total > 0 || task.status.state == PrepullState::Pulling {
        text.push_str(&format!(
            " {}% ({} of {}, {}/{} layers)",
            p.percent.clamp(0.0, 100.0).floor(),
            megabytes(p.bytes_done),
            megabytes(p.bytes_total),
            p.layers_done,
            p.layers_total
        ));
    }
    if let Some(reason) = &task.status.reason {
        text.push_str(&format!(" {reason}"));
    }
    text
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_and_keep_alives_skipped() {
        let mut buffer = b"id: 1\ndata: {\"a\":1}\n\n: keep-alive\n\nid: 2\ndata: x".to_vec();
        let first = next_event(&mut buffer).unwrap();
        assert_eq!(event_data(&first).as_deref(), Some("{\"a\":1}"));
        let second = next_event(&mut buffer).unwrap();
        assert_eq!(event_data(&second), None);
        assert!(next_event(&mut buffer).is_none(), "the third is not complete yet");
        buffer.extend_from_slice(b"\n\n");
        assert_eq!(
            event_data(&next_event(&mut buffer).unwrap()).as_deref(),
            Some("x")
        );
    }
}
