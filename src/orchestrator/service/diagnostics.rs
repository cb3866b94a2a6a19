//! `GET /sandboxes/{id}/diagnostics/{logs|events}` (design §14.1): upstream's routes with
//! every scope sandboxd can serve.
//!
//! | kind | scope | content |
//! |---|---|---|
//! | logs | `container` | the entrypoint's output from the runtime, with timestamps |
//! | logs | `lifecycle` | sandboxd's own log lines about the sandbox (the tracing rings) |
//! | logs | `process` | execd's own log, read through execd's files API |
//! | logs | `all` | the three, each under a header |
//! | events | `lifecycle` | the journal's events sandboxd recorded |
//! | events | `runtime` | the journal's events the runtime reported |
//! | events | `all` | both, by time |
//!
//! `tail` and `since` apply to every scope (to each section of `all`); content beyond 4 MiB
//! is cut from the front (`truncated`). A section that cannot be read is left empty with a
//! warning. The deprecated form without `scope` is the container's output (logs) or every
//! event (events), as plain text; `inspect` (the sandbox and its container as sandboxd and the
//! runtime see them now) and `summary` (inspect, the last events and the last lines of output,
//! each under a header) exist only in that form.

use super::events::event_line;
use super::Service;
use crate::orchestrator::auth::Principal;
use crate::orchestrator::error::{Denial, Error};
use crate::orchestrator::runtime::{Instance, LogQuery, ObjectEvent, EXECD_PORT};
use crate::orchestrator::store::{Event, Phase, Record};
use crate::wire::lifecycle::DiagnosticContent;
use crate::wire::time::{format_ms, parse_ms};

/// Where sandboxd has execd write its own log inside every sandbox (`EXECD_LOG_FILE`).
pub const EXECD_LOG_FILE: &str = "/tmp/opensandbox/execd.log";

/// Lines (per section) the scoped form returns by default.
const TAIL: usize = 1000;
/// The deprecated plain-text form's defaults: upstream's Docker runtime's 100 lines of logs
/// and 50 events.
const PLAIN_LOG_LINES: usize = 100;
const PLAIN_EVENT_LINES: usize = 50;
/// The most content one answer carries; more is cut from the front.
pub const MAX_CONTENT: usize = 4 << 20;

/// The kinds served only as the deprecated plain text.
const PLAIN_KINDS: &[&str] = &["inspect", "summary"];
/// The logs scopes.
const LOG_SCOPES: &[&str] = &["container", "lifecycle", "process", "all"];
/// The events scopes.
const EVENT_SCOPES: &[&str] = &["lifecycle", "runtime", "all"];

/// What a diagnostics request asks for besides the sandbox and kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiagnosticsQuery {
    /// The scope; `None` for the deprecated plain form.
    pub scope: Option<String>,
    /// The last this many lines (of each section).
    pub tail: Option<usize>,
    /// Lines at or after this time, epoch ms.
    pub since: Option<i64>,
    /// Whether the container's output carries timestamps (scoped default: yes; the plain
    /// form never).
    pub timestamps: Option<bool>,
}

/// One section's text and what happened making it.
#[derive(Default)]
struct Section {
    text: String,
    /// Lines were left out by `tail`.
    cut: bool,
    warning: Option<String>,
}

impl Section {
    fn of_lines(lines: Vec<String>, tail: usize) -> Self {
        let skip = lines.len().saturating_sub(tail);
        let mut text = String::new();
        for line in &lines[skip..] {
            text.push_str(line);
            text.push('\n');
        }
        Section {
            text,
            cut: skip > 0,
            warning: None,
        }
    }

    fn unavailable(warning: String) -> Self {
        Section {
            warning: Some(warning),
            ..Default::default()
        }
    }
}

impl Service {
    /// `GET /sandboxes/{id}/diagnostics/{kind}?scope=`: the JSON descriptor.
    pub async fn diagnostics(
        &self,
        id: &str,
        kind: &str,
        query: &DiagnosticsQuery,
        caller: &Principal,
    ) -> Result<DiagnosticContent, Error> {
        let scope = query.scope.as_deref().unwrap_or("all");
        let record = self.diagnosable(id, kind, caller).await?;
        if PLAIN_KINDS.contains(&kind) {
            return Err(Error::invalid(format!(
                "scope: /diagnostics/{kind} is plain text and takes no scope (scopes are for logs and events)"
            )));
        }
        let supported = if kind == "logs" { LOG_SCOPES } else { EVENT_SCOPES };
        if !supported.contains(&scope) {
            return Err(Error::ScopeUnsupported {
                kind: if kind == "logs" { "logs" } else { "events" },
                scope: scope.to_owned(),
                supported,
            });
        }
        let tail = query.tail.unwrap_or(TAIL);
        let sections: Vec<(&str, Section)> = if kind == "logs" {
            let wanted = match scope {
                "all" => vec!["container", "lifecycle", "process"],
                one => vec![one],
            };
            let mut sections = Vec::new();
            for section in wanted {
                let s = match section {
                    "container" => {
                        let stamped = query.timestamps.unwrap_or(true);
                        self.container_section(&record, tail, query.since, stamped).await
                    }
                    "lifecycle" => self.lifecycle_section(id, tail, query.since),
                    _ => self.process_section(&record, tail, query.since).await,
                };
                sections.push((section, s));
            }
            sections
        } else {
            vec![(
                scope,
                self.events_section(&record, scope, tail, query.since).await?,
            )]
        };
        let headed = kind == "logs" && scope == "all";
        let mut content = String::new();
        let (mut truncated, mut warnings) = (false, Vec::new());
        for (name, section) in sections {
            if headed {
                content.push_str(&format!("=== {name} ===\n"));
            }
            content.push_str(&section.text);
            truncated |= section.cut;
            warnings.extend(section.warning.map(|w| format!("{name}: {w}")));
        }
        truncated |= cut_front(&mut content, MAX_CONTENT);
        Ok(DiagnosticContent {
            sandbox_id: id.to_owned(),
            kind: kind.to_owned(),
            scope: scope.to_owned(),
            delivery: "inline".into(),
            content_type: "text/plain; charset=utf-8".into(),
            content_length: Some(content.len() as u64),
            content,
            truncated,
            warnings,
        })
    }

    /// The deprecated `GET /sandboxes/{id}/diagnostics/{kind}` without `scope`: the plain
    /// text, by default the last 100 lines of the container's output or 50 events.
    pub async fn plain_diagnostics(
        &self,
        id: &str,
        kind: &str,
        query: &DiagnosticsQuery,
        caller: &Principal,
    ) -> Result<String, Error> {
        let record = self.diagnosable(id, kind, caller).await?;
        let logs = |record: &Record| {
            let tail = query.tail.unwrap_or(PLAIN_LOG_LINES);
            let record = record.clone();
            async move {
                let section = self.container_section(&record, tail, query.since, false).await;
                match section.warning {
                    Some(w) if section.text.is_empty() => format!("({w})\n"),
                    _ => section.text,
                }
            }
        };
        let events = || async {
            let tail = query.tail.unwrap_or(PLAIN_EVENT_LINES);
            Ok::<_, Error>(self.events_section(&record, "all", tail, query.since).await?.text)
        };
        let mut text = match kind {
            "logs" => logs(&record).await,
            "events" => events().await?,
            "inspect" => self.inspect_text(&record).await,
            _ => format!(
                "=== inspect ===\n{}=== events ===\n{}=== logs ===\n{}",
                self.inspect_text(&record).await,
                events().await?,
                logs(&record).await
            ),
        };
        cut_front(&mut text, MAX_CONTENT);
        Ok(text)
    }

    /// The sandbox as sandboxd records it and its container as the runtime sees it now, one
    /// `key: value` per line.
    async fn inspect_text(&self, record: &Record) -> String {
        let observed = self.observed(record).await;
        let mut lines = vec![format!("sandbox: {}", record.id)];
        match &observed {
            Ok(observed) => {
                let status = super::sandboxes::status(record, observed);
                let mut state = format!("state: {}", status.state);
                if let Some(reason) = &status.reason {
                    state.push_str(&format!(" ({reason})"));
                }
                if let Some(message) = &status.message {
                    state.push_str(&format!(": {message}"));
                }
                lines.push(state);
            }
            Err(e) => lines.push(format!("state: unknown (the runtime could not be asked: {e})")),
        }
        if let Some(name) = &record.name {
            lines.push(format!("name: {name}"));
        }
        lines.push(format!("image: {}", record.image));
        if let Some(snapshot) = &record.snapshot_id {
            lines.push(format!("snapshot: {snapshot}"));
        }
        lines.push(format!("entrypoint: {}", record.entrypoint.join(" ")));
        lines.push(format!("owner: {}", record.owner));
        lines.push(format!("createdAt: {}", format_ms(record.created_at)));
        lines.push(format!(
            "expiresAt: {}",
            record
                .expires_at
                .map(format_ms)
                .unwrap_or_else(|| "none (manual cleanup)".into())
        ));
        lines.push(format!("pausePolicy: {:?}", record.pause_policy.snapshot_type));
        if let Some(pool) = &record.pool {
            lines.push(format!("pool: {}", pool.pool));
        }
        if !record.resource_limits.is_empty() {
            let limits: Vec<String> = record
                .resource_limits
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            lines.push(format!("resourceLimits: {}", limits.join(", ")));
        }
        match &record.instance {
            None => lines.push("container: none".into()),
            Some(instance) => {
                lines.push(format!(
                    "container: {} ({})",
                    instance.reference,
                    instance.kind.as_str()
                ));
                match self.runtime.container(&instance.reference).await {
                    Ok(Some(c)) => {
                        lines.push(format!(
                            "containerState: {}",
                            super::containers::state_name(&c.observed)
                        ));
                        if let crate::orchestrator::runtime::Observed::Exited { code, oom, message } =
                            &c.observed
                        {
                            lines.push(format!(
                                "exitCode: {}",
                                code.map_or("unknown".into(), |c| c.to_string())
                            ));
                            lines.push(format!("oomKilled: {oom}"));
                            if let Some(m) = message {
                                lines.push(format!("error: {m}"));
                            }
                        }
                        if let Some(ip) = &c.ip {
                            lines.push(format!("ip: {ip}"));
                        }
                        if let Some(at) = c.started_at {
                            lines.push(format!("startedAt: {}", format_ms(at)));
                        }
                        let r = c.resources;
                        lines.push(format!(
                            "limits: cpu={} memory={} pids={}",
                            r.nano_cpus
                                .map_or("unlimited".into(), |n| format!("{}", n as f64 / 1e9)),
                            r.memory.map_or("unlimited".into(), |m| m.to_string()),
                            r.pids
                        ));
                    }
                    Ok(None) => lines.push("containerState: gone".into()),
                    Err(e) => lines.push(format!("containerState: unknown ({e})")),
                }
                if let Ok(Some(u)) = self.runtime.usage(&instance.reference).await {
                    lines.push(format!(
                        "usage: cpu {:.1}%, memory {} of {} bytes, pids {}",
                        u.cpu_percent,
                        u.memory_bytes,
                        u.memory_limit_bytes.map_or("unlimited".into(), |l| l.to_string()),
                        u.pids.map_or("unknown".into(), |p| p.to_string())
                    ));
                }
            }
        }
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }

    /// The sandbox, when diagnostics are on, `kind` is one, and `caller` may see it.
    async fn diagnosable(&self, id: &str, kind: &str, caller: &Principal) -> Result<Record, Error> {
        if !self.diagnostics.enabled {
            return Err(Error::Forbidden(Denial::DiagnosticsDisabled));
        }
        let record = self.owned(id, caller).await?;
        if kind != "logs" && kind != "events" && !PLAIN_KINDS.contains(&kind) {
            return Err(Error::no_sandbox(&format!("{id}/diagnostics/{kind}")));
        }
        Ok(record)
    }

    /// The container's output (what the runtime kept).
    async fn container_section(
        &self,
        record: &Record,
        tail: usize,
        since: Option<i64>,
        timestamps: bool,
    ) -> Section {
        let Some(instance) = &record.instance else {
            return Section::unavailable("the sandbox has no container yet".into());
        };
        let query = LogQuery {
            tail: Some(tail),
            // Runtimes take whole seconds: round down, so nothing at `since` is lost.
            since: since.map(|ms| ms.div_euclid(1000)),
            timestamps,
            follow: false,
        };
        match self.collect_logs(instance, query).await {
            Ok(text) => {
                let cut = text.lines().count() >= tail;
                Section {
                    text,
                    cut,
                    warning: None,
                }
            }
            Err(e) => {
                tracing::warn!(sandbox = %record.id, error = %e, "cannot read the container's output");
                Section::unavailable("the runtime could not give the container's output".into())
            }
        }
    }

    /// A log stream read to its end, keeping the last [`MAX_CONTENT`] bytes.
    async fn collect_logs(&self, instance: &Instance, query: LogQuery) -> Result<String, Error> {
        use futures_util::StreamExt as _;
        let mut stream = self.runtime.log_stream(&instance.reference, query);
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
            if bytes.len() > 2 * MAX_CONTENT {
                bytes.drain(..bytes.len() - MAX_CONTENT);
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// sandboxd's own lines about the sandbox.
    fn lifecycle_section(&self, id: &str, tail: usize, since: Option<i64>) -> Section {
        Section::of_lines(since_filter(self.lifecycle.lines(id), since), tail)
    }

    /// execd's own log, from the file sandboxd told it to write.
    async fn process_section(&self, record: &Record, tail: usize, since: Option<i64>) -> Section {
        if record.phase == Phase::Paused {
            // A frozen execd accepts the connection and never answers.
            return Section::unavailable("execd's log is unavailable while the sandbox is paused".into());
        }
        let execd = record
            .instance
            .as_ref()
            .and_then(|i| self.runtime.target(i, EXECD_PORT));
        let Some(execd) = execd else {
            return Section::unavailable("execd's log is unavailable: the sandbox is not running".into());
        };
        match self.execd.read_tail(&execd, &record.token, EXECD_LOG_FILE).await {
            Ok(Some(bytes)) => {
                let text = String::from_utf8_lossy(&bytes);
                let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
                // A tail that starts mid-file starts mid-line.
                if bytes.len() >= crate::orchestrator::execd_client::MAX_READ && !lines.is_empty() {
                    lines.remove(0);
                }
                Section::of_lines(since_filter(lines, since), tail)
            }
            Ok(None) => Section::unavailable(format!(
                "execd has not written {EXECD_LOG_FILE} (a sandbox made by an older sandboxd logs to its output)"
            )),
            Err(e) => Section::unavailable(format!("execd's log cannot be read: {e}")),
        }
    }

    /// The journal, as lines: `lifecycle` (sandboxd's events), `runtime` (the runtime's) or
    /// `all`, by time. `runtime` and `all` include what the runtime's control plane recorded
    /// of the sandbox's container (Kubernetes Events), read now; when it cannot be read, the
    /// journal's lines come with a warning.
    async fn events_section(
        &self,
        record: &Record,
        scope: &str,
        tail: usize,
        since: Option<i64>,
    ) -> Result<Section, Error> {
        let id = record.id.as_str();
        let recent = |at: i64| since.is_none_or(|s| at >= s);
        let mut events: Vec<Event> = self
            .store
            .events(id)
            .await?
            .into_iter()
            .filter(|e| recent(e.at))
            .filter(|e| match scope {
                "lifecycle" => e.source == "sandboxd",
                "runtime" => e.source != "sandboxd",
                _ => true,
            })
            .collect();
        // The runtime's events carry the runtime's clock: order by time, then as recorded.
        events.sort_by_key(|e| (e.at, e.seq));
        let mut lines: Vec<(i64, String)> = events.iter().map(|e| (e.at, event_line(e))).collect();
        let mut warning = None;
        if scope != "lifecycle" {
            match self.runtime.object_events(id, record.instance.as_ref()).await {
                Ok(found) => lines.extend(
                    found
                        .iter()
                        .filter(|e| recent(e.at))
                        .map(|e| (e.at, object_event_line(self.runtime.kind().as_str(), e))),
                ),
                Err(e) => warning = Some(format!("the runtime's events cannot be read: {e}")),
            }
            // Stable: the journal's order is kept among equal times.
            lines.sort_by_key(|(at, _)| *at);
        }
        let mut section = Section::of_lines(lines.into_iter().map(|(_, line)| line).collect(), tail);
        section.warning = warning;
        Ok(section)
    }
}

/// One event of the runtime's control plane as a line, shaped like the journal's:
/// `<time> <Reason> [<runtime> <Normal|Warning>] <message>[ (x<count>)]`.
fn object_event_line(runtime: &str, e: &ObjectEvent) -> String {
    let mut line = format!(
        "{} {} [{runtime} {}] {}",
        format_ms(e.at),
        e.reason,
        e.severity,
        e.message
    );
    if e.count > 1 {
        line.push_str(&format!(" (x{})", e.count));
    }
    line
}

/// The lines at or after `since` (epoch ms), by the time each line starts with; a line
/// without one (a continuation) goes with the line before it.
fn since_filter(lines: Vec<String>, since: Option<i64>) -> Vec<String> {
    let Some(since) = since else {
        return lines;
    };
    let mut keep = false;
    lines
        .into_iter()
        .filter(|line| {
            let stamp = line.split_whitespace().next().and_then(parse_ms);
            if let Some(at) = stamp {
                keep = at >= since;
            }
            keep
        })
        .collect()
}

/// Cuts `text` to its last `max` bytes, at a line start; true when it cut.
fn cut_front(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let start = text[start..].find('\n').map_or(start, |n| start + n + 1);
    text.drain(..start);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_keeps_stamped_lines_and_their_continuations() {
        let lines = vec![
            "2026-03-25T10:00:00Z  INFO old".to_owned(),
            "  continued old".to_owned(),
            "2026-03-25T10:05:00.5Z  WARN new".to_owned(),
            "  continued new".to_owned(),
        ];
        let since = parse_ms("2026-03-25T10:01:00Z");
        assert_eq!(since_filter(lines.clone(), since), lines[2..].to_vec());
        assert_eq!(since_filter(lines.clone(), None), lines);
    }

    #[test]
    fn content_is_cut_at_a_line_from_the_front() {
        let mut text = "aaaa\nbbbb\ncccc\n".to_owned();
        assert!(!cut_front(&mut text, 100));
        assert!(cut_front(&mut text, 7));
        assert_eq!(text, "cccc\n");
        let mut one = "é".repeat(10);
        assert!(cut_front(&mut one, 5));
        assert!(one.len() <= 6);
    }
}
