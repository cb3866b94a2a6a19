//! `GET /sandboxes/{id}/diagnostics/{logs|events}`: the sandbox's output (from the runtime)
//! and sandboxd's event log for it (from the store).

use super::Service;
use crate::orchestrator::auth::Principal;
use crate::orchestrator::error::Error;
use crate::orchestrator::store::Event;
use crate::wire::lifecycle::DiagnosticContent;
use crate::wire::time::format_ms;

/// Lines of output the scoped logs diagnostic returns by default.
const LOG_LINES: usize = 2000;
/// Events the scoped events diagnostic returns by default: all that are kept.
const EVENT_LINES: usize = 10_000;
/// The deprecated plain-text diagnostics' defaults: upstream's Docker runtime's 100 lines of
/// logs and 50 events.
const PLAIN_LOG_LINES: usize = 100;
const PLAIN_EVENT_LINES: usize = 50;

impl Service {
    /// `GET /sandboxes/{id}/diagnostics/{logs|events}?scope=`: the last `tail` lines (by
    /// default all that are kept, or 2000 lines of logs) since `since` (epoch ms).
    pub async fn diagnostics(
        &self,
        id: &str,
        kind: &str,
        scope: &str,
        tail: Option<usize>,
        since: Option<i64>,
        caller: &Principal,
    ) -> Result<DiagnosticContent, Error> {
        let default = if kind == "logs" { LOG_LINES } else { EVENT_LINES };
        let (content, truncated) = self
            .diagnostic_text(id, kind, tail.unwrap_or(default), since, caller)
            .await?;
        Ok(DiagnosticContent {
            sandbox_id: id.to_owned(),
            kind: kind.to_owned(),
            scope: scope.to_owned(),
            delivery: "inline".into(),
            content_type: "text/plain; charset=utf-8".into(),
            content,
            truncated,
        })
    }

    /// The deprecated `GET /sandboxes/{id}/diagnostics/{logs|events}` without `scope`: the
    /// plain text, by default the last 100 lines of logs or 50 events (upstream's Docker
    /// runtime's amounts).
    pub async fn plain_diagnostics(
        &self,
        id: &str,
        kind: &str,
        tail: Option<usize>,
        since: Option<i64>,
        caller: &Principal,
    ) -> Result<String, Error> {
        let default = if kind == "logs" {
            PLAIN_LOG_LINES
        } else {
            PLAIN_EVENT_LINES
        };
        Ok(self
            .diagnostic_text(id, kind, tail.unwrap_or(default), since, caller)
            .await?
            .0)
    }

    /// Logs (the sandbox's output) or events (sandboxd's event log for the sandbox): the
    /// last `tail` lines at or after `since`, and whether earlier ones were left out.
    async fn diagnostic_text(
        &self,
        id: &str,
        kind: &str,
        tail: usize,
        since: Option<i64>,
        caller: &Principal,
    ) -> Result<(String, bool), Error> {
        let record = self.owned(id, caller).await?;
        match kind {
            "logs" => match &record.instance {
                Some(instance) => {
                    // Runtimes take whole seconds: round down, so nothing at `since` is lost.
                    let since = since.map(|ms| ms.div_euclid(1000));
                    let text = self.runtime.logs(instance, tail, since).await?;
                    let truncated = text.lines().count() >= tail;
                    Ok((text, truncated))
                }
                None => Ok((String::new(), false)),
            },
            "events" => {
                let events: Vec<Event> = self
                    .store
                    .events(id)
                    .await?
                    .into_iter()
                    .filter(|e| since.is_none_or(|s| e.at >= s))
                    .collect();
                let skip = events.len().saturating_sub(tail);
                let mut text = String::new();
                for e in &events[skip..] {
                    text.push_str(&format!("{} {}", format_ms(e.at), e.message));
                    if let Some(id) = &e.request_id {
                        text.push_str(&format!(" (request {id})"));
                    }
                    text.push('\n');
                }
                Ok((text, skip > 0))
            }
            other => Err(Error::no_sandbox(&format!("{id}/diagnostics/{other}"))),
        }
    }
}
