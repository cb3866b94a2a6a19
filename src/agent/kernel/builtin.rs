//! The built-in python backend: the image's `python3` running a driver script embedded in
//! execd, for images without Jupyter. Requests go to the driver's stdin as JSON lines; the
//! cell's stdout/stderr stream as raw chunks through a pump thread; results, errors and the end
//! of each cell come back as JSON lines on fd 3 (see `driver.py`).
//!
//! Issue 19: the driver reacts to SIGINT only inside a cell (elsewhere a KeyboardInterrupt
//! would kill it, e.g. while it waits for its next request), and says `started` once it is
//! inside; interrupts asked for before that are held back until it arrives.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{error_event, result_event, Interrupts, Outcome};
use crate::agent::env::EnvMap;
use crate::agent::now_ms;
use crate::agent::output::{controlled_pump, Control, CurrentJournal, Framing, Source};
use crate::agent::process::{self, Input, Output, Reaper, SpawnSpec};
use crate::agent::stream::{Journal, OutputKind};
use crate::wire::{EventType, StreamEvent};

/// The driver script, written to the state dir at start.
pub const DRIVER: &str = include_str!("driver.py");

enum DriverEvent {
    /// The driver is inside the cell: SIGINT now interrupts it.
    Started,
    /// The cell ended; `failed` if it reported an error.
    Done { failed: bool },
    /// The driver is gone (its fd 3 closed).
    Died,
}

/// A running driver process.
pub struct BuiltinPython {
    pid: i32,
    /// Request pipe; written off the async workers.
    requests: Arc<std::sync::Mutex<std::fs::File>>,
    current: Arc<CurrentJournal>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<DriverEvent>>,
    alive: Arc<AtomicBool>,
}

impl BuiltinPython {
    /// Starts `python3 -u <driver>` found on the environment's PATH.
    pub fn start(
        reaper: &Reaper,
        python: PathBuf,
        driver: &Path,
        mut env: EnvMap,
        cwd: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        env.entry("MPLBACKEND".into()).or_insert_with(|| "Agg".into());
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        let (ctrl_r, ctrl_w) = std::io::pipe()?;
        let child = reaper
            .spawn(SpawnSpec {
                env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
                cwd,
                stdin: Input::Pipe,
                stdout: Output::Pipe,
                stderr: Some(Output::Pipe),
                fd3: Some(ctrl_w.into()),
                ..SpawnSpec::new(python, vec!["python3".into(), "-u".into(), driver.into()])
            })
            .map_err(std::io::Error::other)?;
        let requests = std::fs::File::from(child.stdin.ok_or_else(|| std::io::Error::other("no stdin"))?);
        let sources = [
            (child.stdout, OutputKind::Stdout),
            (child.stderr, OutputKind::Stderr),
        ]
        .into_iter()
        .filter_map(|(fd, kind)| fd.map(|fd| Source { fd, kind }))
        .collect();
        let current: Arc<CurrentJournal> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::unbounded_channel();
        let (pump_current, pump_alive) = (Arc::clone(&current), Arc::clone(&alive));
        drop(child.exit); // the reaper still collects it; the pipes tell us when it is gone
        std::thread::Builder::new()
            .name(format!("python-{}", child.pid))
            .spawn(move || {
                let mut failed = false;
                controlled_pump(
                    sources,
                    ctrl_r.into(),
                    Framing::Chunks,
                    &pump_current,
                    |control, journal| match control {
                        Control::Line(line) => {
                            let Ok(msg) = serde_json::from_slice::<Value>(line) else {
                                return;
                            };
                            match msg["type"].as_str() {
                                Some("started") => {
                                    let _ = tx.send(DriverEvent::Started);
                                }
                                Some("done") => {
                                    let _ = tx.send(DriverEvent::Done {
                                        failed: std::mem::take(&mut failed),
                                    });
                                }
                                Some(kind) => {
                                    failed |= kind == "error";
                                    if let Some(j) = journal {
                                        for event in driver_events(&msg) {
                                            j.push(&event);
                                        }
                                    }
                                }
                                None => {}
                            }
                        }
                        Control::Closed => {
                            pump_alive.store(false, Ordering::SeqCst);
                            let _ = tx.send(DriverEvent::Died);
                        }
                    },
                )
            })?;
        Ok(Self {
            pid: child.pid,
            requests: Arc::new(std::sync::Mutex::new(requests)),
            current,
            events: tokio::sync::Mutex::new(rx),
            alive,
        })
    }

    /// Whether the driver is still running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Runs one cell, interrupting it once for every request in `interrupts`.
    pub async fn execute(&self, code: &str, journal: &Arc<Journal>, interrupts: &Interrupts) -> Outcome {
        let mut events = self.events.lock().await;
        while events.try_recv().is_ok() {}
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(journal));
        let line = format!("{}\n", serde_json::json!({ "code": code }));
        let requests = Arc::clone(&self.requests);
        let sent = tokio::task::spawn_blocking(move || {
            requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(line.as_bytes())
        })
        .await;
        let outcome = match sent {
            Ok(Ok(())) => {
                let (mut started, mut delivered) = (false, 0);
                loop {
                    let wanted = interrupts.requested();
                    if started && wanted > delivered {
                        delivered = wanted;
                        self.interrupt();
                    }
                    tokio::select! {
                        event = events.recv() => match event {
                            Some(DriverEvent::Started) => started = true,
                            Some(DriverEvent::Done { failed }) => break Outcome::Finished { failed },
                            Some(DriverEvent::Died) | None => break Outcome::Died,
                        },
                        _ = interrupts.more_than(wanted) => {}
                    }
                }
            }
            _ => Outcome::Died,
        };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        outcome
    }

    /// SIGINT: KeyboardInterrupt in the running cell (ignored between cells).
    fn interrupt(&self) {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGINT);
    }
}

impl Drop for BuiltinPython {
    fn drop(&mut self) {
        process::signal_group(self.pid, Signal::SIGKILL);
    }
}

/// The stream events for one driver message.
fn driver_events(msg: &Value) -> Vec<StreamEvent> {
    let ts = now_ms();
    match msg["type"].as_str() {
        Some("result") => {
            let mut events = Vec::new();
            if let Some(count) = msg["execution_count"].as_i64() {
                events.push(StreamEvent {
                    execution_count: Some(count),
                    ..StreamEvent::new(EventType::ExecutionCount, ts)
                });
            }
            events.push(result_event(&msg["data"], ts));
            events
        }
        Some("error") => vec![error_event(msg, ts)],
        _ => Vec::new(),
    }
}
