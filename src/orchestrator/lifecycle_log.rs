//! sandboxd's own log lines about each sandbox, for the `lifecycle` scope of the logs
//! diagnostic (design §14.1): a ring of the last [`LINES_KEPT`] lines per sandbox, fed by a
//! `tracing` layer. A line belongs to a sandbox when the event, or a span it is in, carries a
//! `sandbox_id` field (events' `sandbox` field counts too: most of sandboxd's lines name their
//! sandbox that way). Only sandboxd's own targets are kept, never the Docker client's (its
//! trace lines carry request bodies, and with them secrets).
//!
//! Synchronous: a std `Mutex` held for one push or one copy, never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Lines kept per sandbox.
pub const LINES_KEPT: usize = 1000;
/// Sandboxes whose lines are kept; the one that first logged longest ago goes first.
const SANDBOXES_KEPT: usize = 4096;
/// The longest line kept, bytes; a longer one is cut (a probe failure can carry 4 KiB of
/// output).
const MAX_LINE: usize = 2048;
/// The fields that name a sandbox.
const KEYS: [&str; 2] = ["sandbox_id", "sandbox"];

/// The rings, by sandbox id.
#[derive(Default)]
pub struct LifecycleLogs {
    /// Lines by sandbox, and sandbox ids in the order they last logged (for eviction); one
    /// lock, held for a push or a copy.
    rings: Mutex<Rings>,
}

#[derive(Default)]
struct Rings {
    lines: HashMap<String, VecDeque<String>>,
    order: VecDeque<String>,
}

impl LifecycleLogs {
    /// A layer that feeds these rings with debug lines and above of sandboxd's own targets.
    pub fn layer<S>(self: &Arc<Self>) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let targets = Targets::new().with_target("execd::orchestrator", Level::DEBUG);
        LifecycleLayer { logs: self.clone() }.with_filter(targets)
    }

    /// Appends `line` (cut to [`MAX_LINE`] bytes) to sandbox `id`'s ring.
    pub fn push(&self, id: &str, mut line: String) {
        if line.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push('…');
        }
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let Rings { lines, order } = &mut *rings;
        if !lines.contains_key(id) {
            if lines.len() >= SANDBOXES_KEPT {
                if let Some(oldest) = order.pop_front() {
                    lines.remove(&oldest);
                }
            }
            order.push_back(id.to_owned());
        }
        let ring = lines.entry(id.to_owned()).or_default();
        if ring.len() == LINES_KEPT {
            ring.pop_front();
        }
        ring.push_back(line);
    }

    /// Sandbox `id`'s lines, oldest first.
    pub fn lines(&self, id: &str) -> Vec<String> {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings
            .lines
            .get(id)
            .map(|ring| ring.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Drops sandbox `id`'s lines.
    pub fn forget(&self, id: &str) {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        if rings.lines.remove(id).is_some() {
            rings.order.retain(|s| s != id);
        }
    }
}

/// The layer; see the module docs.
struct LifecycleLayer {
    logs: Arc<LifecycleLogs>,
}

/// The sandbox a span is about, in its extensions.
struct SpanSandbox(String);

/// Collects an event's message, its sandbox and its other fields as `k=v`.
#[derive(Default)]
struct Line {
    message: String,
    sandbox: Option<String>,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Line {
    fn record(&mut self, field: &Field, value: String) {
        let name = field.name();
        if name == "message" {
            self.message = value;
        } else if KEYS.contains(&name) {
            self.sandbox.get_or_insert(value);
        } else {
            let _ = write!(self.fields, " {name}={value}");
        }
    }
}

/// Finds a sandbox id among a span's fields.
#[derive(Default)]
struct SandboxField(Option<String>);

impl Visit for SandboxField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if KEYS.contains(&field.name()) {
            self.0.get_or_insert_with(|| value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if KEYS.contains(&field.name()) {
            self.0.get_or_insert_with(|| format!("{value:?}"));
        }
    }
}

impl<S> Layer<S> for LifecycleLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut found = SandboxField::default();
        attrs.record(&mut found);
        if let (Some(sandbox), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().insert(SpanSandbox(sandbox));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut found = SandboxField::default();
        values.record(&mut found);
        if let (Some(sandbox), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().replace(SpanSandbox(sandbox));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let sandbox = line.sandbox.take().or_else(|| {
            ctx.event_scope(event)?
                .find_map(|span| span.extensions().get::<SpanSandbox>().map(|s| s.0.clone()))
        });
        let Some(sandbox) = sandbox else {
            return;
        };
        let at = crate::wire::time::format_ms(crate::wire::time::now_ms());
        let level = event.metadata().level();
        self.logs.push(
            &sandbox,
            format!("{at} {level:>5} {}{}", line.message, line.fields),
        );
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[test]
    fn lines_go_to_the_sandbox_their_event_or_span_names() {
        let logs = Arc::new(LifecycleLogs::default());
        let subscriber = tracing_subscriber::registry().with(logs.layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(sandbox = "s1", image = "busybox", "sandbox running");
            let span = tracing::info_span!("startup", sandbox_id = "s2");
            span.in_scope(|| {
                tracing::warn!(ms = 5, "probe failed");
                tracing::debug!("detail");
                tracing::trace!("too fine");
            });
            tracing::info!("about no sandbox");
        });
        let s1 = logs.lines("s1");
        assert_eq!(s1.len(), 1, "{s1:?}");
        assert!(s1[0].ends_with(" INFO sandbox running image=busybox"), "{s1:?}");
        let s2 = logs.lines("s2");
        assert_eq!(s2.len(), 2, "{s2:?}");
        assert!(s2[0].ends_with(" WARN probe failed ms=5"), "{s2:?}");
        assert!(s2[1].ends_with("DEBUG detail"), "{s2:?}");
        logs.forget("s2");
        assert!(logs.lines("s2").is_empty());
    }

    #[test]
    fn other_targets_are_not_kept() {
        let logs = Arc::new(LifecycleLogs::default());
        let subscriber = tracing_subscriber::registry().with(logs.layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "bollard::docker", sandbox = "s1", "request body with a token");
        });
        assert!(logs.lines("s1").is_empty());
    }

    #[test]
    fn a_ring_keeps_the_last_lines() {
        let logs = LifecycleLogs::default();
        for i in 0..LINES_KEPT + 5 {
            logs.push("s", format!("l{i}"));
        }
        let lines = logs.lines("s");
        assert_eq!(lines.len(), LINES_KEPT);
        assert_eq!(lines[0], "l5");
        logs.push("long", "é".repeat(MAX_LINE));
        let long = &logs.lines("long")[0];
        assert!(
            long.len() <= MAX_LINE + '…'.len_utf8() && long.ends_with('…'),
            "{}",
            long.len()
        );
    }
}
