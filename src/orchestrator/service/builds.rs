//! Template builds (§7.6): a version whose spec has an `installCommand` is stored `Pending`
//! and queued here; the builder task (`run_builds`, one for the process) runs at most
//! `max_concurrent` builds at once, in the order queued, each inside it:
//!
//! 1. `Building`: a build container of the spec's image is created through the runtime's
//!    create path (execd injected, the spec's files written), labelled as a build so that
//!    nothing takes it for a sandbox, running [`BUILD_ENTRYPOINT`] rather than the template's
//!    own entrypoint.
//! 2. Once its execd answers, the install command runs through execd's `/command` (a shell,
//!    the spec's `env`, killed at the build timeout); its output becomes the build log.
//! 3. Exit 0: the container is committed to `sandboxd/tpl-<name>:v<version>` (entrypoint and
//!    command those of the base image) and the version is `Succeeded` with that image as
//!    `manifestRef`. Anything else is `Failed`, with a message naming the step (the exit code
//!    and the last of the output for a failed command).
//! 4. The build container is removed whatever happened.
//!
//! The log is capped at [`LOG_CAP`] (the tail is kept, after a line saying how much was
//! dropped); it is served from memory while the build runs and from the store afterwards.
//!
//! Restarts: a build never outlives its process. `recover_builds` removes the build containers
//! a previous process left, then queues every version still `Pending` or `Building` again:
//! a build depends only on its (immutable) spec, so running an interrupted one again is safe,
//! and no version stays `Pending` for good. A template deleted while its build is queued is
//! skipped; one deleted while it builds is not committed (or, deleted during the commit, has
//! the new image removed).
//!
//! Async; the in-memory state is behind std `Mutex`es, never held across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use tokio::sync::Notify;

use super::templates::{phase, spec_file};
use super::Service;
use crate::orchestrator::error::Error;
use crate::orchestrator::execd_client::{last_bytes, CommandEnd};
use crate::orchestrator::runtime::{
    ImageRole, Instance, Purpose, Resources, RuntimeError, SandboxSpec, EXECD_PORT,
};
use crate::orchestrator::store::{TemplateRow, VersionRow};
use crate::wire::RunCommandRequest;

/// Most bytes of a build log kept; beyond, the oldest output is dropped.
pub const LOG_CAP: usize = 1 << 20;
/// What a build container runs beside execd: anything that keeps it up until the install
/// command has run (the template's own entrypoint, a server perhaps, must not run during its
/// build). Upstream's default entrypoint, so an image that can run a template's default can
/// be built.
pub const BUILD_ENTRYPOINT: [&str; 3] = ["tail", "-f", "/dev/null"];
/// How much of the output a failure message carries.
const MESSAGE_OUTPUT: usize = 2048;
/// How long past the build timeout sandboxd waits for execd to report the kill.
const KILL_GRACE: Duration = Duration::from_secs(30);

/// What the builds are configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildSettings {
    /// Builds that run at once (`templates.maxConcurrentBuilds`); the rest wait `Pending`.
    pub max_concurrent: usize,
    /// How long an install command may run (`templates.buildTimeoutSeconds`).
    pub timeout: Duration,
}

impl Default for BuildSettings {
    fn default() -> Self {
        Self {
            max_concurrent: 1,
            timeout: Duration::from_secs(1800),
        }
    }
}

/// A version to build: (template id, version).
type BuildKey = (String, u32);

/// The queue and the logs of running builds.
pub(super) struct Builds {
    settings: BuildSettings,
    /// A std `Mutex`, never held across an `.await`.
    live: Mutex<Live>,
    /// Wakes the builder when a build is queued.
    queued: Notify,
}

#[derive(Default)]
struct Live {
    /// Oldest first.
    queue: VecDeque<BuildKey>,
    /// The logs of the builds running now, shared with the build that writes each.
    running: HashMap<BuildKey, Arc<Mutex<BuildLog>>>,
}

impl Builds {
    /// Builds as `settings` say.
    pub(super) fn new(settings: BuildSettings) -> Self {
        Self {
            settings: BuildSettings {
                max_concurrent: settings.max_concurrent.max(1),
                ..settings
            },
            live: Mutex::new(Live::default()),
            queued: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a build of `version` of the template `template_id` (once).
    pub(super) fn enqueue(&self, template_id: &str, version: u32) {
        let key = (template_id.to_owned(), version);
        let mut live = self.lock();
        if live.queue.contains(&key) || live.running.contains_key(&key) {
            return;
        }
        live.queue.push_back(key);
        drop(live);
        self.queued.notify_one();
    }

    /// The next queued build, now running with an empty log.
    fn start_next(&self) -> Option<(BuildKey, Arc<Mutex<BuildLog>>)> {
        let mut live = self.lock();
        let key = live.queue.pop_front()?;
        let log = Arc::new(Mutex::new(BuildLog::default()));
        live.running.insert(key.clone(), log.clone());
        Some((key, log))
    }

    fn finish(&self, key: &BuildKey) {
        self.lock().running.remove(key);
    }

    /// The log so far of a build that runs now.
    pub(super) fn live_log(&self, template_id: &str, version: u32) -> Option<String> {
        let log = self
            .lock()
            .running
            .get(&(template_id.to_owned(), version))
            .cloned()?;
        let text = lock_log(&log).render();
        Some(text)
    }
}

fn lock_log(log: &Mutex<BuildLog>) -> std::sync::MutexGuard<'_, BuildLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// A build's output, capped: at most [`LOG_CAP`] bytes of the tail are shown.
#[derive(Debug, Default)]
pub(super) struct BuildLog {
    /// Up to twice the cap, cut back to the cap when it gets there (so each byte is moved
    /// once at most, whatever the output).
    text: String,
    /// Bytes dropped from the front.
    dropped: usize,
}

impl BuildLog {
    /// Appends one line of output.
    pub(super) fn push_line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() >= 2 * LOG_CAP {
            self.cut_to(LOG_CAP);
        }
    }

    /// Drops the front so that at most `keep` bytes remain, at a character boundary.
    fn cut_to(&mut self, keep: usize) {
        let mut cut = self.text.len().saturating_sub(keep);
        while !self.text.is_char_boundary(cut) {
            cut += 1;
        }
        self.text.drain(..cut);
        self.dropped += cut;
    }

    /// The log as served: the last [`LOG_CAP`] bytes, after a line saying how much went.
    pub(super) fn render(&self) -> String {
        let tail = last_bytes(&self.text, LOG_CAP);
        let dropped = self.dropped + (self.text.len() - tail.len());
        if dropped == 0 {
            return tail.to_owned();
        }
        format!("[build log truncated: the first {dropped} bytes of output were dropped]\n{tail}")
    }

    /// The last of the output, for a failure message.
    fn last_output(&self) -> &str {
        last_bytes(self.text.trim_end(), MESSAGE_OUTPUT)
    }
}

/// Why a build failed: the version's `status.message`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BuildFailure(String);

impl Service {
    /// Start-up: removes the build containers a previous process left (none of its builds
    /// outlived it) and queues again every version whose build had not finished.
    pub async fn recover_builds(&self) -> Result<(), Error> {
        let left = self.runtime.builds().await?;
        for instance in &left {
            match self.runtime.remove(instance).await {
                Ok(()) => {
                    tracing::warn!(container = %instance.reference, "removed a build container left by a restart")
                }
                Err(e) => {
                    tracing::error!(container = %instance.reference, error = %e, "cannot remove a build container left by a restart")
                }
            }
        }
        let unfinished = self.store.unfinished_builds().await?;
        if !unfinished.is_empty() {
            tracing::info!(builds = ?unfinished, "template builds queued again after a restart");
        }
        for (template_id, version) in unfinished {
            self.builds.enqueue(&template_id, version);
        }
        Ok(())
    }

    /// Runs queued builds, at most `max_concurrent` at once. Runs until the process ends;
    /// every build runs inside it.
    pub async fn run_builds(&self) {
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < self.builds.settings.max_concurrent {
                match self.builds.start_next() {
                    Some((key, log)) => running.push(self.build(key, log)),
                    None => break,
                }
            }
            tokio::select! {
                Some(()) = running.next(), if !running.is_empty() => {}
                () = self.builds.queued.notified() => {}
            }
        }
    }

    /// One build, from `Pending` to its end.
    async fn build(&self, key: BuildKey, log: Arc<Mutex<BuildLog>>) {
        let (template_id, version) = &key;
        let found = match self.store.template(template_id).await {
            Ok(Some((row, _))) => match self.store.template_version(template_id, *version).await {
                Ok(Some(v)) => Ok(Some((row, v))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            },
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let (row, v) = match found {
            Ok(Some(found)) => found,
            Ok(None) => {
                tracing::info!(template = %template_id, version, "build skipped: the template was deleted");
                self.builds.finish(&key);
                return;
            }
            Err(e) => {
                tracing::error!(template = %template_id, version, error = %e, "cannot read a template to build");
                self.builds.finish(&key);
                return;
            }
        };
        if v.phase != phase::PENDING && v.phase != phase::BUILDING {
            self.builds.finish(&key);
            return;
        }
        let started = std::time::Instant::now();
        self.record_build(&row, *version, phase::BUILDING, None, None)
            .await;
        tracing::info!(template = %row.name, version, "template build started");
        let outcome = self.build_version(&row, &v, &log).await;
        let text = lock_log(&log).render();
        if let Err(e) = self.store.set_build_log(template_id, *version, text).await {
            tracing::error!(template = %row.name, version, error = %e, "cannot record a build log");
        }
        let ms = started.elapsed().as_millis();
        match outcome {
            Ok(image) => {
                self.record_build(&row, *version, phase::SUCCEEDED, Some(image.clone()), None)
                    .await;
                tracing::info!(template = %row.name, version, %image, ms, "template built");
                if !matches!(
                    self.store.template_version(template_id, *version).await,
                    Ok(Some(_))
                ) {
                    // Deleted while it built: nothing will ever use the image.
                    self.remove_built_image(&image).await;
                }
            }
            Err(BuildFailure(message)) => {
                tracing::warn!(template = %row.name, version, ms, %message, "template build failed");
                self.record_build(&row, *version, phase::FAILED, None, Some(message))
                    .await;
            }
        }
        self.builds.finish(&key);
    }

    /// Records a build's state; a store failure is logged (the build goes on).
    async fn record_build(
        &self,
        row: &TemplateRow,
        version: u32,
        phase: &str,
        manifest_ref: Option<String>,
        message: Option<String>,
    ) {
        if let Err(e) = self
            .store
            .set_build_state(&row.id, version, phase, manifest_ref, message)
            .await
        {
            tracing::error!(template = %row.name, version, phase, error = %e, "cannot record a build state");
        }
    }

    /// Steps 1–4: the built image's reference, or why there is none. The build container
    /// is removed whatever happened.
    async fn build_version(
        &self,
        row: &TemplateRow,
        v: &VersionRow,
        log: &Mutex<BuildLog>,
    ) -> Result<String, BuildFailure> {
        let files = v
            .spec
            .files
            .iter()
            .flatten()
            .map(spec_file)
            .collect::<Result<Vec<_>, Error>>()
            .map_err(|e| BuildFailure(e.to_string()))?;
        let mut token = [0u8; 24];
        getrandom::fill(&mut token).map_err(|e| BuildFailure(format!("no randomness: {e}")))?;
        let token = hex::encode(token);
        let mut suffix = [0u8; 4];
        getrandom::fill(&mut suffix).map_err(|e| BuildFailure(format!("no randomness: {e}")))?;
        let spec = SandboxSpec {
            id: format!("{}-v{}-{}", row.name, v.version, hex::encode(suffix)),
            image: v.spec.image.clone(),
            entrypoint: BUILD_ENTRYPOINT.map(String::from).to_vec(),
            // The token only: the spec's env goes to the install command, so that nothing of
            // the build's own environment is committed into the image.
            env: BTreeMap::from([("EXECD_ACCESS_TOKEN".to_owned(), token.clone())]),
            labels: BTreeMap::new(),
            expires_at: None,
            resources: Resources {
                pids: self.settings.pids_limit,
                ..Resources::default()
            },
            mounts: Vec::new(),
            isolation: false,
            files,
            purpose: Purpose::Build {
                template: row.name.clone(),
                version: v.version,
            },
            previous: None,
            start: true,
            image_auth: None,
            workspace: None,
            pool: None,
        };
        let instance = self
            .runtime
            .create(spec)
            .await
            .map_err(|e| runtime_failure("start the build container", &e))?;
        let built = self.install_and_commit(row, v, &instance, &token, log).await;
        if let Err(e) = self.runtime.remove(&instance).await {
            tracing::error!(container = %instance.reference, error = %e, "cannot remove a build container; the next start will");
        }
        built
    }

    /// Steps 2 and 3 in a running build container.
    async fn install_and_commit(
        &self,
        row: &TemplateRow,
        v: &VersionRow,
        instance: &Instance,
        token: &str,
        log: &Mutex<BuildLog>,
    ) -> Result<String, BuildFailure> {
        let execd = self
            .runtime
            .target(instance, EXECD_PORT)
            .ok_or_else(|| BuildFailure("the build container exited before execd started".into()))?;
        self.wait_ready(instance, &execd, token, false)
            .await
            .map_err(|e| BuildFailure(format!("the build container did not come up: {e}")))?;
        let timeout = self.builds.settings.timeout;
        let request = RunCommandRequest {
            command: v.spec.install_command.clone(),
            envs: v.spec.env.clone(),
            timeout: Some(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)),
            ..RunCommandRequest::default()
        };
        let run = self
            .execd
            .run_command(&execd, token, &request, |line| lock_log(log).push_line(line));
        let timed_out = || {
            BuildFailure(format!(
                "installCommand did not finish within {} s (templates.buildTimeoutSeconds)",
                timeout.as_secs()
            ))
        };
        match tokio::time::timeout(timeout + KILL_GRACE, run).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => return Err(BuildFailure(format!("lost the installCommand: {e}"))),
            Ok(Ok(CommandEnd::Completed)) => {}
            Ok(Ok(CommandEnd::Failed { traceback, .. }))
                if traceback.iter().any(|t| t.starts_with("timed out")) =>
            {
                return Err(timed_out())
            }
            Ok(Ok(CommandEnd::Failed { code, .. })) => {
                let log = lock_log(log);
                let output = log.last_output();
                let message = if output.is_empty() {
                    format!("installCommand exited with code {code} and printed nothing")
                } else {
                    format!("installCommand exited with code {code}; last output:\n{output}")
                };
                return Err(BuildFailure(message));
            }
        }
        // A template deleted meanwhile gets no image: the tag may already be a new template's
        // of the same name.
        if !matches!(self.store.template_version(&row.id, v.version).await, Ok(Some(_))) {
            return Err(BuildFailure("the template was deleted while it built".into()));
        }
        let image = format!("sandboxd/tpl-{}:v{}", row.name, v.version);
        self.runtime
            .commit(instance, &image, ImageRole::Template)
            .await
            .map_err(|e| runtime_failure("commit the build", &e))?;
        Ok(image)
    }

    /// Removes an image a build made, best effort: one a sandbox still runs is kept.
    pub(super) async fn remove_built_image(&self, image: &str) {
        match self.runtime.remove_image(image).await {
            Ok(()) => tracing::info!(%image, "built image removed"),
            Err(RuntimeError::Conflict(_)) => {
                tracing::info!(%image, "built image kept: a sandbox still uses it")
            }
            Err(e) => tracing::warn!(%image, error = %e, "cannot remove a built image"),
        }
    }
}

/// A runtime failure as a build's message: the user's to fix (an image that cannot be had, a
/// refused request) in the runtime's words; anything else says little, and the log has it.
fn runtime_failure(step: &str, e: &RuntimeError) -> BuildFailure {
    match e {
        RuntimeError::ImageNotFound(m) | RuntimeError::Rejected(m) => {
            BuildFailure(format!("cannot {step}: {m}"))
        }
        other => {
            tracing::error!(error = %other, step, "template build: the runtime failed");
            BuildFailure(format!(
                "the container runtime failed to {step}; sandboxd's log has the details"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_its_tail_and_says_what_it_dropped() {
        let mut log = BuildLog::default();
        log.push_line("first");
        assert_eq!(log.render(), "first\n");
        let line = "x".repeat(1023);
        for _ in 0..3 * 1024 {
            log.push_line(&line);
        }
        log.push_line("last");
        let shown = log.render();
        let (head, tail) = shown.split_once('\n').unwrap();
        assert!(head.starts_with("[build log truncated: the first "), "{head}");
        assert_eq!(tail.len(), LOG_CAP);
        assert!(tail.ends_with("last\n"));
        assert!(log.text.len() < 2 * LOG_CAP, "the buffer stays bounded");
        let dropped: usize = head
            .trim_start_matches("[build log truncated: the first ")
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            dropped + LOG_CAP,
            "first\n".len() + 3 * 1024 * 1024 + "last\n".len()
        );
        assert_eq!(log.last_output().len(), MESSAGE_OUTPUT);
    }
}
