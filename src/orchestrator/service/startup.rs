//! Startup gates: a sandbox with a pre-start hook or a readiness probe is created `Pending`
//! as soon as its execd answers, and a startup task of this module follows it to `Running`
//! (phase `Ready`) or records why it failed (`Record.failure`, shown as `Failed` with that
//! reason; the record and the container are kept for inspection until deleted or expired).
//!
//! The phases say where a sandbox is: `PreStart` while execd's `/ping` answers 503
//! `STARTING`, `Probing` while the readiness probe runs. The task lives only in the sandboxd
//! that created the sandbox; start-up reconciliation marks a sandbox it finds in either phase
//! without a recorded outcome as failed with [`STARTUP_INTERRUPTED`], since neither the hook's
//! timeout nor the probe is stored. Async.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::{AbortHandle, JoinSet};
use tracing::Instrument as _;

use super::Service;
use crate::orchestrator::execd_client::{last_bytes, Ping, ProbeFailure};
use crate::orchestrator::runtime::{Instance, Observed, Target, EXECD_PORT};
use crate::orchestrator::spec::Plan;
use crate::orchestrator::store::{EventType, Failure, Phase, Record};
use crate::wire::templates::ReadinessProbe;
use crate::wire::time::now_ms;

/// The pre-start hook exited non-zero, timed out, or could not start.
pub const PRE_START_FAILED: &str = "PRE_START_FAILED";
/// The readiness probe failed `failureThreshold` times in a row (or the sandbox ended first).
pub const READINESS_PROBE_FAILED: &str = "READINESS_PROBE_FAILED";
/// sandboxd restarted before the sandbox's startup was over; its outcome is unknown.
pub const STARTUP_INTERRUPTED: &str = "STARTUP_INTERRUPTED";

/// How much of the sandbox's output a failure message carries.
const OUTPUT_KEPT: usize = 4096;
/// Lines of the container log searched for execd's account of a failed hook.
const LOG_LINES: usize = 1000;
/// How execd starts the line it leaves in the container log when the hook fails.
const PRE_START_MARKER: &str = "execd: preStart ";
/// The longest pause between two looks at a sandbox whose hook runs.
const MAX_POLL: Duration = Duration::from_millis(250);

/// What stands between a started sandbox and `Running`.
#[derive(Debug, Clone)]
pub(super) struct Gate {
    /// The pre-start hook's timeout, when there is a hook.
    pre_start: Option<Duration>,
    /// The readiness probe.
    readiness: Option<ReadinessProbe>,
}

impl Gate {
    /// The plan's gate; `None` when it has neither hook nor probe (create then waits for
    /// execd itself and answers `Running`, as it always has).
    pub(super) fn of(plan: &Plan) -> Option<Self> {
        let gate = Self {
            pre_start: plan
                .pre_start
                .as_ref()
                .map(|p| Duration::from_secs(p.timeout_seconds)),
            readiness: plan.readiness.clone(),
        };
        (gate.pre_start.is_some() || gate.readiness.is_some()).then_some(gate)
    }

    /// The phase of a sandbox whose execd answered `ping`.
    pub(super) fn phase(&self, ping: Ping) -> Phase {
        match ping {
            Ping::Starting => Phase::PreStart,
            Ping::Ready | Ping::NotYet if self.readiness.is_some() => Phase::Probing,
            Ping::Ready | Ping::NotYet => Phase::Ready,
        }
    }
}

/// The running startup tasks. Owned by the service: a task is aborted when its sandbox is
/// deleted or expires, and all of them when the service is dropped.
#[derive(Default)]
pub(super) struct Startups {
    /// Never held across `.await`.
    tasks: Mutex<(JoinSet<()>, HashMap<String, AbortHandle>)>,
}

impl Startups {
    fn spawn(&self, id: String, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let (set, by_id) = &mut *tasks;
        while set.try_join_next().is_some() {}
        by_id.retain(|_, handle| !handle.is_finished());
        let handle = set.spawn(task);
        by_id.insert(id, handle);
    }

    /// Stops the startup task of sandbox `id`, if one runs.
    pub(super) fn cancel(&self, id: &str) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = tasks.1.remove(id) {
            handle.abort();
        }
    }
}

#[cfg(test)]
impl Startups {
    /// The ids of sandboxes whose startup task still runs.
    pub(super) fn running(&self) -> Vec<String> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks
            .1
            .iter()
            .filter(|(_, handle)| !handle.is_finished())
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// What a startup task needs to know of its sandbox.
pub(super) struct Started {
    /// The sandbox id.
    pub(super) id: String,
    /// The runtime's handle on it.
    pub(super) instance: Instance,
    /// Where its execd is.
    pub(super) execd: Target,
    /// execd's token.
    pub(super) token: String,
    /// When the create began.
    pub(super) since: Instant,
}

/// The journal's type of a startup failure with `reason`.
pub(super) fn failure_event(reason: &str) -> EventType {
    match reason {
        PRE_START_FAILED => EventType::PreStartFailed,
        READINESS_PROBE_FAILED => EventType::ProbeFailed,
        _ => EventType::StartupFailed,
    }
}

impl Service {
    /// Follows a gated sandbox (phase `PreStart` or `Probing`) to `Ready` or a recorded
    /// failure, in a task of its own.
    pub(super) fn follow_startup(self: &Arc<Self>, sandbox: Started, gate: Gate, phase: Phase) {
        let service = Arc::clone(self);
        let id = sandbox.id.clone();
        let span = tracing::info_span!("startup", sandbox_id = %id);
        let task = async move {
            let outcome = service.run_startup(&sandbox, &gate, phase).await;
            let ms = sandbox.since.elapsed().as_millis();
            match outcome {
                Ok(()) => {
                    let ready = service
                        .settle(&sandbox.id, |r| {
                            r.phase = Phase::Ready;
                        })
                        .await;
                    if ready {
                        service
                            .log_event(
                                &sandbox.id,
                                EventType::Ready,
                                format!("running: ready after {ms} ms"),
                            )
                            .await;
                        tracing::info!(sandbox = %sandbox.id, ms, "sandbox running");
                    }
                }
                Err(failure) => service.fail_startup(&sandbox.id, failure).await,
            }
        };
        self.startups.spawn(id, task.instrument(span));
    }

    /// Records `failure` on sandbox `id` (kept, with its container, for inspection).
    pub(super) async fn fail_startup(&self, id: &str, failure: Failure) {
        let message = format!("failed ({}): {}", failure.reason, failure.message);
        let (kind, reason) = (failure_event(&failure.reason), failure.reason.clone());
        tracing::info!(sandbox = id, reason = %failure.reason, "sandbox startup failed");
        if self.settle(id, |r| r.failure = Some(failure)).await {
            self.log_event_because(id, kind, Some(reason), message).await;
        }
    }

    /// Re-reads sandbox `id`, applies `change`, marks the transition and writes it back.
    /// False when the sandbox is gone (deleted or expired meanwhile) or the store failed.
    async fn settle(&self, id: &str, change: impl FnOnce(&mut Record)) -> bool {
        let mut record = match self.store.get(id).await {
            Ok(Some(record)) => record,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(sandbox = id, error = %e, "cannot read a starting sandbox");
                return false;
            }
        };
        change(&mut record);
        record.transition_at = now_ms();
        match self.store.update(&record).await {
            Ok(updated) => updated,
            Err(e) => {
                tracing::error!(sandbox = id, error = %e, "cannot record a sandbox's startup");
                false
            }
        }
    }

    async fn run_startup(&self, sandbox: &Started, gate: &Gate, phase: Phase) -> Result<(), Failure> {
        if phase == Phase::PreStart {
            let limit = gate.pre_start.unwrap_or_default();
            self.wait_pre_start(sandbox, limit).await?;
            let ms = sandbox.since.elapsed().as_millis();
            self.log_event(
                &sandbox.id,
                EventType::PreStartSucceeded,
                format!("preStart finished after {ms} ms"),
            )
            .await;
            if gate.readiness.is_some() && !self.settle(&sandbox.id, |r| r.phase = Phase::Probing).await {
                return Ok(()); // gone; settling as Ready finds nothing either
            }
        }
        match &gate.readiness {
            Some(probe) => self.probe_until_ready(sandbox, probe).await,
            None => Ok(()),
        }
    }

    /// Waits until execd's `/ping` answers 200 (the hook succeeded and the entrypoint runs).
    /// The hook's own timeout is execd's to enforce; this deadline adds sandboxd's readiness
    /// timeout to it as a backstop.
    async fn wait_pre_start(&self, sandbox: &Started, limit: Duration) -> Result<(), Failure> {
        let deadline = Instant::now() + limit + self.settings.ready_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.execd.ping(&sandbox.execd, &sandbox.token).await {
                Ping::Ready => return Ok(()),
                Ping::Starting => {}
                // A hook that fails makes execd exit, so the sandbox stops answering.
                Ping::NotYet => {
                    if let Some(failure) = self.ended_during_pre_start(&sandbox.instance).await {
                        return Err(failure);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Failure {
                    reason: PRE_START_FAILED.into(),
                    message: format!("the preStart hook did not finish within {limit:?}"),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    /// The failure of a sandbox that has ended during its pre-start hook, or `None` while it
    /// runs.
    async fn ended_during_pre_start(&self, instance: &Instance) -> Option<Failure> {
        let code = match self.runtime.observe(instance).await {
            Ok(Observed::Exited { code, .. }) => code,
            Ok(Observed::Gone) => {
                return Some(Failure {
                    reason: PRE_START_FAILED.into(),
                    message: "the sandbox's container was removed during its preStart hook".into(),
                })
            }
            _ => return None,
        };
        let log = self
            .runtime
            .logs(instance, LOG_LINES, None)
            .await
            .unwrap_or_default();
        Some(Failure {
            reason: PRE_START_FAILED.into(),
            message: pre_start_message(&log, code),
        })
    }

    /// execd's account of a failed pre-start hook in the sandbox's log, as its failure; `None`
    /// when the log has none (the sandbox did not get as far as the hook).
    pub(super) async fn pre_start_account(&self, instance: &Instance) -> Option<Failure> {
        let log = self.runtime.logs(instance, LOG_LINES, None).await.ok()?;
        pre_start_account(&log).map(|message| Failure {
            reason: PRE_START_FAILED.into(),
            message,
        })
    }

    /// Runs the readiness probe until it passes, fails `failureThreshold` times in a row, or
    /// the sandbox ends. Defaults as Kubernetes': no initial delay, every 2 s, 1 s per try, 30
    /// failures.
    async fn probe_until_ready(&self, sandbox: &Started, probe: &ReadinessProbe) -> Result<(), Failure> {
        let seconds = |v: Option<u64>, default: u64| Duration::from_secs(v.unwrap_or(default).max(1));
        let period = seconds(probe.period_seconds, 2);
        let timeout = seconds(probe.timeout_seconds, 1);
        let threshold = probe.failure_threshold.unwrap_or(30).max(1);
        tokio::time::sleep(Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0))).await;
        let mut failures = 0;
        loop {
            let last = match self.probe_once(sandbox, probe, timeout).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            failures += 1;
            tracing::debug!(sandbox = %sandbox.id, failures, error = %last, "readiness probe failed");
            if failures >= threshold {
                return Err(Failure {
                    reason: READINESS_PROBE_FAILED.into(),
                    message: format!(
                        "readiness probe {} failed {failures} times in a row; last: {last}",
                        describe(probe)
                    ),
                });
            }
            // A sandbox that has ended will never pass.
            let code = match self.runtime.observe(&sandbox.instance).await {
                Ok(Observed::Exited { code, .. }) => Some(code.unwrap_or(-1)),
                Ok(Observed::Gone) => Some(-1),
                _ => None,
            };
            if let Some(code) = code {
                let log = self
                    .runtime
                    .logs(&sandbox.instance, LOG_LINES, None)
                    .await
                    .unwrap_or_default();
                return Err(Failure {
                    reason: READINESS_PROBE_FAILED.into(),
                    message: format!(
                        "the sandbox exited with code {code} before its readiness probe passed; last output:\n{}",
                        last_bytes(log.trim_end(), OUTPUT_KEPT)
                    ),
                });
            }
            tokio::time::sleep(period).await;
        }
    }

    /// One try of the probe, through execd.
    async fn probe_once(
        &self,
        sandbox: &Started,
        probe: &ReadinessProbe,
        timeout: Duration,
    ) -> Result<(), ProbeFailure> {
        let port_target = |port: u16| {
            self.runtime
                .target(&sandbox.instance, port)
                .ok_or_else(|| ProbeFailure::Unreachable(format!("the sandbox has no route to port {port}")))
        };
        let token = &sandbox.token;
        if let Some(exec) = &probe.exec {
            let execd = port_target(EXECD_PORT)?;
            self.execd.probe_exec(&execd, token, &exec.command, timeout).await
        } else if let Some(http) = &probe.http_get {
            let path = http.path.as_deref().unwrap_or("/");
            let path = if path.starts_with('/') {
                path.to_owned()
            } else {
                format!("/{path}")
            };
            self.execd
                .probe_http(&port_target(http.port)?, token, &path, timeout)
                .await
        } else if let Some(tcp) = &probe.tcp_socket {
            self.execd
                .probe_tcp(&port_target(tcp.port)?, token, tcp.port, timeout)
                .await
        } else {
            // A probe without a handler checks nothing (template validation refuses one).
            Ok(())
        }
    }
}

/// `exec [..]`, `httpGet :8080/health`, `tcpSocket :6379`.
fn describe(probe: &ReadinessProbe) -> String {
    if let Some(exec) = &probe.exec {
        format!("exec {:?}", exec.command)
    } else if let Some(http) = &probe.http_get {
        format!("httpGet :{}{}", http.port, http.path.as_deref().unwrap_or("/"))
    } else if let Some(tcp) = &probe.tcp_socket {
        format!("tcpSocket :{}", tcp.port)
    } else {
        "(none)".into()
    }
}

/// execd's own account of a failed pre-start hook, the last it left in the container log
/// (`preStart failed (exit 3): <the hook's last output>`), without its `execd: `.
fn pre_start_account(log: &str) -> Option<String> {
    let at = log.rfind(PRE_START_MARKER)?;
    let account = log[at + "execd: ".len()..].trim_end();
    // execd keeps the hook's last 4 KiB; the bound is for a log that says more.
    let (head, rest) = account.split_once(": ").unwrap_or((account, ""));
    Some(format!("{head}: {}", last_bytes(rest, OUTPUT_KEPT)))
}

/// The status message of a sandbox that ended during its pre-start hook: execd's account,
/// else the exit code and the log's last 4 KiB.
fn pre_start_message(log: &str, code: Option<i64>) -> String {
    pre_start_account(log).unwrap_or_else(|| {
        format!(
            "the sandbox exited with code {} during its preStart hook; last output:\n{}",
            code.unwrap_or(-1),
            last_bytes(log.trim_end(), OUTPUT_KEPT)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_of_a_failed_hook_is_execds_account_from_the_log() {
        let log = "listening on 0.0.0.0:44772\nstep 1\nboom\nexecd: preStart failed (exit 3): step 1\nboom\n";
        assert_eq!(
            pre_start_message(log, Some(3)),
            "preStart failed (exit 3): step 1\nboom"
        );
        let long = format!(
            "execd: preStart timed out after 5 s and was killed: {}",
            "x".repeat(9000)
        );
        let message = pre_start_message(&long, Some(124));
        assert!(message.starts_with("preStart timed out after 5 s and was killed: xxx"));
        assert!(message.len() < OUTPUT_KEPT + 100, "{}", message.len());
        // No account (execd itself could not start): the exit code and the log.
        assert_eq!(
            pre_start_message("execd: bad flag\n", Some(2)),
            "the sandbox exited with code 2 during its preStart hook; last output:\nexecd: bad flag"
        );
    }
}
