//! The benchmark harness behind `scripts/bench.sh`.
//!
//! Starts the real agent binary and measures each figure beside an anchor measured in the same
//! run (ratios, not absolute times, are what compares across machines), then prints a markdown
//! table on stdout; progress goes to stderr.
//!
//! ```text
//! bench [--agent PATH] [--sandboxd PATH] [--quick] [--list] [FILTER...]
//! ```
//!
//! Each area (one module) contributes named sections; a FILTER runs only the sections whose
//! `area/section` name contains it. To add figures for a new area, write a module with a
//! `sections()` function returning [`Section`]s that produce [`harness::Row`]s, and list it in
//! [`areas`].

mod code;
mod density;
mod executions;
mod files;
mod foundation;
mod harness;
mod isolated;
mod kube;
mod lifecycle;
mod limits;
mod pools;
mod prepull;
mod snapshots;
mod templates;
mod terminal;
mod upstream;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Instant;

use harness::{Ctx, Row};

/// A boxed future borrowing the context.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// A named group of figures within an area.
pub struct Section {
    /// Name within its area, e.g. `roundtrip`.
    pub name: &'static str,
    /// Measures and returns the rows.
    pub run: for<'a> fn(&'a Ctx) -> BoxFuture<'a, anyhow::Result<Vec<Row>>>,
}

/// Every area, in the order they run.
fn areas() -> Vec<(&'static str, Vec<Section>)> {
    vec![
        ("foundation", foundation::sections()),
        ("code", code::sections()),
        ("files", files::sections()),
        ("terminal", terminal::sections()),
        ("isolated", isolated::sections()),
        ("lifecycle", lifecycle::sections()),
        ("limits", limits::sections()),
        ("prepull", prepull::sections()),
        ("templates", templates::sections()),
        ("pools", pools::sections()),
        ("executions", executions::sections()),
        ("snapshots", snapshots::sections()),
        ("upstream", upstream::sections()),
        ("k8s", kube::sections()),
        ("density", density::sections()),
    ]
}

/// Sections that run only when a filter names them: they take minutes and fill the engine
/// with hundreds of sandboxes, so a bare `scripts/bench.sh` leaves them out.
const BY_NAME_ONLY: &[&str] = &["density/density"];

const USAGE: &str = "usage: bench [--agent PATH] [--sandboxd PATH] [--quick] [--list] [FILTER...]";

struct Args {
    agent: PathBuf,
    sandboxd: PathBuf,
    quick: bool,
    list: bool,
    filters: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        agent: PathBuf::from("target/x86_64-unknown-linux-musl/release/execd"),
        sandboxd: PathBuf::from("target/bench-tool/sandboxd"),
        quick: false,
        list: false,
        filters: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--agent" => args.agent = it.next().ok_or("--agent needs a path")?.into(),
            "--sandboxd" => args.sandboxd = it.next().ok_or("--sandboxd needs a path")?.into(),
            "--quick" => args.quick = true,
            "--list" => args.list = true,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown flag {s}\n{USAGE}")),
            s => args.filters.push(s.to_owned()),
        }
    }
    Ok(args)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Child mode for the code area's raw-ZMQ figure (see `code::raw_zmq_main`).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--raw-zmq") {
        let runs = argv.get(2).and_then(|n| n.parse().ok()).unwrap_or(200);
        return match std::thread::spawn(move || code::raw_zmq_main(runs)).join() {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => {
                eprintln!("raw-zmq: {e:#}");
                ExitCode::FAILURE
            }
            Err(_) => ExitCode::FAILURE,
        };
    }
    // Child mode for the limits area's memory figure (see `limits::memory_main`).
    if argv.get(1).map(String::as_str) == Some("--limiter-memory") {
        return limits::memory_main();
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let selected: Vec<(String, Section)> = areas()
        .into_iter()
        .flat_map(|(area, sections)| {
            sections
                .into_iter()
                .map(move |s| (format!("{area}/{}", s.name), s))
        })
        .filter(|(name, _)| {
            if args.filters.is_empty() {
                args.list || !BY_NAME_ONLY.contains(&name.as_str())
            } else {
                args.filters.iter().any(|f| name.contains(f.as_str()))
            }
        })
        .collect();
    if args.list {
        for (name, _) in &selected {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    if selected.is_empty() {
        eprintln!("bench: no section matches {:?} (see --list)", args.filters);
        return ExitCode::from(2);
    }
    if !args.agent.is_file() {
        eprintln!(
            "bench: no agent binary at {} (build it with scripts/build-agent.sh)",
            args.agent.display()
        );
        return ExitCode::from(2);
    }

    let ctx = Ctx {
        agent: args.agent,
        sandboxd: args.sandboxd,
        quick: args.quick,
    };
    println!("Machine: {}.", harness::machine_note());
    println!();
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for (name, section) in &selected {
        let t = Instant::now();
        eprintln!("bench: {name} …");
        match (section.run)(&ctx).await {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("bench: {name} failed: {e:#}");
                failed.push(format!("{name}: {e:#}"));
            }
        }
        eprintln!("bench: {name} took {:.1} s", t.elapsed().as_secs_f64());
    }
    print!("{}", harness::table(&rows));
    println!();
    let mut note = format!(
        "Took {:.0} s; at the end: {}. MB = 10^6 bytes.",
        started.elapsed().as_secs_f64(),
        harness::load_note()
    );
    if ctx.quick {
        note.push_str(" **Quick mode: reduced counts, not for the README.**");
    }
    println!("{note}");
    for f in &failed {
        println!("\n**Failed:** {f}");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
