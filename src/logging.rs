//! Logging set-up both binaries share: the output format (human text or JSON lines for log
//! collectors), colour only when a person is watching a terminal, and the sink (stderr or a
//! file). Filters are built by the callers; this module only assembles the subscriber.
//! Synchronous, called once at start.

use std::io::IsTerminal;
use std::path::Path;

use tracing::Subscriber;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event; coloured only when the sink is a terminal.
    #[default]
    Pretty,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `span`s), never coloured.
    Json,
}

/// Where log lines go.
pub enum Sink<'a> {
    /// Standard error.
    Stderr,
    /// Appended to this file (created when missing).
    File(&'a Path),
}

/// Another layer beside the output (sandboxd's per-sandbox lifecycle rings), with its own
/// filter.
pub type Extra = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Installs the global subscriber: `filter` chooses what is logged, and `guard` may veto an
/// event whatever the filter says (sandboxd uses it to keep secrets out of the log); `extra`
/// layers see every event their own filters let through. A file sink's missing directory is
/// created.
pub fn init<G>(
    format: LogFormat,
    sink: Sink<'_>,
    filter: Targets,
    guard: G,
    extra: Vec<Extra>,
) -> std::io::Result<()>
where
    G: Filter<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    match sink {
        Sink::Stderr => {
            let colour = std::io::stderr().is_terminal();
            install(format, colour, std::io::stderr, filter, guard, extra);
        }
        Sink::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            install(format, false, std::sync::Mutex::new(file), filter, guard, extra);
        }
    }
    Ok(())
}

fn install<W, G>(format: LogFormat, colour: bool, writer: W, filter: Targets, guard: G, mut extra: Vec<Extra>)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    G: Filter<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer);
    let layer: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync> = match format {
        LogFormat::Pretty => boxed(layer.with_ansi(colour), filter, guard),
        LogFormat::Json => boxed(
            layer
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_ansi(false),
            filter,
            guard,
        ),
    };
    extra.insert(0, layer);
    tracing_subscriber::registry().with(extra).init();
}

fn boxed<L, S, G>(layer: L, filter: Targets, guard: G) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'s> LookupSpan<'s>,
    L: Layer<S> + Send + Sync + 'static,
    G: Filter<S> + Send + Sync + 'static,
{
    Box::new(layer.with_filter(filter).with_filter(guard))
}
