//! Create, read, list, delete, metadata, renew, endpoints and the server proxy's target, and
//! the contract's view of a sandbox.
//!
//! The store says which sandboxes exist and what sandboxd last did to them; the runtime says
//! what they are doing now. Every read merges the two, so a sandbox killed or removed behind
//! sandboxd's back shows up as `Failed`/`Terminated` at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use super::pools::POOL_REF;
use super::startup::{Gate, Started};
use super::Service;
use crate::auth::TOKEN_HEADER;
use crate::orchestrator::auth::{Principal, Role};
use crate::orchestrator::error::Denial;
use crate::orchestrator::error::{Conflict, Error};
use crate::orchestrator::execd_client::Ping;
use crate::orchestrator::runtime::{
    Gpus, Instance, Observed, Purpose, Resources, SandboxSpec, Target, EXECD_PORT,
};
use crate::orchestrator::spec::{self, Plan, AUTO_START_EXTENSION};
use crate::orchestrator::store::{EventType, Failure, Launch, NewEvent, Phase, Record, Source, TemplateRef};
use crate::wire::lifecycle::{
    CreateSandboxRequest, CreateSandboxResponse, Endpoint, ImageSpec, Lifecycle, ListSandboxesResponse,
    PauseMode, PausePolicy, RenewExpiration, Sandbox, SandboxAllocation, SandboxStatus, WorkspaceSpec,
    LIFECYCLE_ENV,
};
use crate::wire::time::{format_ms, now_ms, parse_ms};

/// The status reason of a sandbox created with `autoStart: false`, not yet started.
pub const AWAITING_START: &str = "AWAITING_START";
/// The failure reason of a sandbox that `POST /sandboxes/{id}/start` could not bring up.
pub const START_FAILED: &str = "START_FAILED";

/// Why a Rootfs pause is refused on a host-network runtime (design §11.1).
pub(super) const ROOTFS_HOST_NETWORK: &str = "pausePolicy Rootfs cannot be used with the host network mode \
     (sandboxd runs with --network host): a Rootfs pause removes the container and restores it behind \
     its published ports, which the host network has none of; use Freeze";

/// Probes of `/ping` between two looks at whether the sandbox has already exited.
const PINGS_PER_LOOK: u32 = 16;
/// Lines of output an error about a sandbox that did not come up carries.
const START_LOG_LINES: usize = 20;
/// The env file execd adds to every command's environment (`EXECD_ENVS`), unless the
/// request names another.
pub(super) const EXECD_ENVS_FILE: &str = "/tmp/opensandbox/.env";

/// The list filter of `GET /sandboxes`.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// States to keep (OR, case-insensitive); empty keeps all.
    pub states: Vec<String>,
    /// Metadata pairs that must all match.
    pub metadata: Vec<(String, String)>,
    /// 1-based page.
    pub page: u32,
    /// Items per page.
    pub page_size: u32,
    /// Only this owner's (admins only; others always see only their own).
    pub owner: Option<String>,
    /// Only this business domain's.
    pub business_domain: Option<String>,
    /// Only sandboxes with this display name.
    pub name: Option<String>,
}

/// How far a create got before it answered.
enum Provisioned {
    /// execd, at `execd`, answered `/ping`: with 200, or (gated creates) with 503 `STARTING`.
    Answered {
        /// What it answered.
        ping: Ping,
        /// Where it is.
        execd: Target,
    },
    /// The sandbox ended during its pre-start hook before execd was seen answering.
    Failed(Failure),
}

impl Service {
    /// `POST /sandboxes`: validates, has the runtime create and start the sandbox with execd
    /// injected, and returns once execd answers `/ping`. On any failure nothing is left behind.
    /// With a pre-start hook, see [`Service::create_from_plan`].
    pub async fn create(
        self: &Arc<Self>,
        req: CreateSandboxRequest,
        caller: &Principal,
        business_domain: Option<String>,
    ) -> Result<CreateSandboxResponse, Error> {
        if let Some(pool) = req.extensions.as_ref().and_then(|e| e.get(POOL_REF)) {
            let pool = pool.clone();
            return self.acquire_for_create(&pool, req, caller, business_domain).await;
        }
        let (req, template) = self.resolve_template(req, caller).await?;
        let (req, snapshot) = self.resolve_snapshot(req, caller).await?;
        let mut plan = spec::plan(req, &self.settings.limits)?;
        plan.snapshot_id = snapshot;
        if let Some(t) = &template {
            t.apply(&mut plan);
        }
        let template = template.map(|t| t.reference);
        self.create_from_plan(plan, template, caller, business_domain)
            .await
    }

    /// Creates a sandbox from a validated plan (a template adds files, a pre-start hook and a
    /// readiness probe to it), recording the template version it came from. Without hook or
    /// probe it returns `Running` once execd answers `/ping`. With either, it returns
    /// `Pending` as soon as execd answers at all (200, or 503 `STARTING` while the hook runs),
    /// and a startup task takes the sandbox on to `Running`, or to `Failed` with the reason
    /// recorded (`startup`); a hook that has already failed by then is recorded at once. A
    /// failure before that leaves nothing behind.
    pub async fn create_from_plan(
        self: &Arc<Self>,
        plan: Plan,
        template: Option<TemplateRef>,
        caller: &Principal,
        business_domain: Option<String>,
    ) -> Result<CreateSandboxResponse, Error> {
        if caller.role != Role::Admin {
            let limit = self.settings.max_sandboxes_per_user;
            if self.store.count_owned(&caller.id).await? >= limit {
                return Err(Error::Forbidden(Denial::Quota { limit }));
            }
        }
        self.check_resources(&plan.resources)?;
        if plan.isolation && !self.runtime.capabilities().isolation {
            return Err(Error::UnsupportedField(
                "isolation: sandboxd has no seccomp profile for isolated sessions".into(),
            ));
        }
        if plan.pause_policy.snapshot_type == PauseMode::Rootfs && self.runtime.capabilities().host_network {
            return Err(Error::invalid(ROOTFS_HOST_NETWORK));
        }
        let gate = Gate::of(&plan);
        if !plan.auto_start && gate.is_some() {
            return Err(Error::invalid(format!(
                "extensions.{AUTO_START_EXTENSION}=false cannot be combined with a preStart hook or a readiness probe"
            )));
        }
        let started = Instant::now();
        let now = now_ms();
        let mut token = [0u8; 24];
        getrandom::fill(&mut token).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        let mut record = Record {
            id: uuid::Uuid::new_v4().to_string(),
            instance: None,
            image: plan.image.clone(),
            entrypoint: plan.entrypoint.clone(),
            metadata: plan.metadata.clone(),
            extensions: plan.extensions.clone(),
            platform: plan.platform.clone(),
            token: hex::encode(token),
            created_at: now,
            expires_at: plan.timeout.map(|t| now + t as i64 * 1000),
            phase: Phase::Pending,
            transition_at: now,
            owner: caller.id.clone(),
            business_domain,
            template,
            failure: None,
            name: plan.name.clone(),
            resource_limits: plan.resource_limits.clone(),
            timeout: plan.timeout,
            env: plan.env.clone(),
            pool: None,
            snapshot_id: plan.snapshot_id.clone(),
            pause_policy: plan.pause_policy,
            launch: None,
            hibernation: None,
        };
        self.store.insert(&record).await?;
        if let Some(snapshot) = &plan.snapshot_id {
            // Recorded first, checked after: a snapshot delete either sees this sandbox, or
            // has already moved the snapshot on from Ready, which this sees.
            if let Err(e) = self.usable_snapshot(snapshot, caller).await {
                self.discard(&record).await;
                return Err(e);
            }
        }
        self.log_event(
            &record.id,
            EventType::Created,
            format!("create requested: image {}", plan.image),
        )
        .await;
        if !plan.auto_start {
            let span = tracing::info_span!("create", sandbox_id = %record.id);
            return match self.create_stopped(&mut record, plan).instrument(span).await {
                Ok(response) => Ok(response),
                Err(e) => {
                    tracing::warn!(sandbox = %record.id, error = %e, "create failed");
                    self.discard(&record).await;
                    Err(e)
                }
            };
        }
        // Every line logged while it is provisioned is the sandbox's (its lifecycle log).
        let span = tracing::info_span!("create", sandbox_id = %record.id);
        let provisioned = self
            .provision(&mut record, plan, gate.is_some())
            .instrument(span)
            .await;
        match provisioned {
            Ok(provisioned) => {
                let (phase, failure, execd) = match (&gate, provisioned) {
                    (_, Provisioned::Failed(failure)) => (Phase::PreStart, Some(failure), None),
                    (None, Provisioned::Answered { execd, .. }) => (Phase::Ready, None, Some(execd)),
                    (Some(gate), Provisioned::Answered { ping, execd }) => {
                        (gate.phase(ping), None, Some(execd))
                    }
                };
                record.phase = phase;
                record.failure = failure.clone();
                record.transition_at = now_ms();
                if !self.store.update(&record).await? {
                    // Deleted while it was starting.
                    self.discard(&record).await;
                    return Err(Error::Conflict(Conflict::DeletedWhileStarting(record.id)));
                }
                let ms = started.elapsed().as_millis();
                let (kind, reason, message) = started_event(phase, failure.as_ref(), ms);
                self.log_event_because(&record.id, kind, reason, message).await;
                if phase == Phase::Ready {
                    tracing::info!(sandbox = %record.id, image = %record.image, ms, "sandbox running");
                } else {
                    tracing::info!(sandbox = %record.id, image = %record.image, ms, ?phase, "sandbox pending");
                }
                if let (Some(gate), Some(instance), Some(execd)) = (gate, &record.instance, execd) {
                    if phase != Phase::Ready {
                        let sandbox = Started {
                            id: record.id.clone(),
                            instance: instance.clone(),
                            execd,
                            token: record.token.clone(),
                            since: started,
                        };
                        self.follow_startup(sandbox, gate, phase);
                    }
                }
                self.expiry_changed.notify_one();
                Ok(created_response(&record, &Observed::Running))
            }
            Err(e) => {
                tracing::warn!(sandbox = %record.id, error = %e, "create failed");
                self.discard(&record).await;
                Err(e)
            }
        }
    }

    /// Removes a sandbox's instance (if any) and its record. When the runtime cannot remove
    /// it, the record stays, so that reconciliation or expiry finds it again.
    pub(super) async fn discard(&self, record: &Record) {
        if let Some(instance) = &record.instance {
            if let Err(e) = self.runtime.remove(instance).await {
                tracing::error!(sandbox = %record.id, error = %e, "cannot remove the sandbox; reconciliation will retry");
                return;
            }
        }
        if let Err(e) = self.store.remove(&record.id).await {
            tracing::error!(sandbox = %record.id, error = %e, "cannot forget sandbox");
        }
        self.lifecycle.forget(&record.id);
        self.remove_leftovers(record).await;
    }

    /// Removes what a forgotten sandbox leaves beside its instance: the images Rootfs pauses
    /// committed it to (the one it is paused in, and the one its instance ran from after a
    /// resume) and its persistent workspace. Best effort (logged), since the sandbox is
    /// forgotten either way.
    pub(super) async fn remove_leftovers(&self, record: &Record) {
        let hibernated = record
            .hibernation
            .as_ref()
            .filter(|h| !h.workspace_only)
            .map(|h| &h.image);
        let resumed = record.launch.as_ref().and_then(|l| l.image.as_ref());
        for image in hibernated.into_iter().chain(resumed) {
            if let Err(e) = self.runtime.remove_image(image).await {
                tracing::warn!(sandbox = %record.id, %image, error = %e, "cannot remove a paused sandbox's image");
            }
        }
        if record.launch.as_ref().is_some_and(|l| l.workspace.is_some()) {
            if let Err(e) = self.runtime.remove_workspace(&record.id).await {
                tracing::warn!(sandbox = %record.id, error = %e, "cannot remove a sandbox's persistent workspace");
            }
        }
    }

    /// Refuses (400, naming why) the limits this runtime cannot apply: GPUs on a runtime
    /// without them, every GPU (`"all"`) where only a count can be asked for, a disk limit.
    fn check_resources(&self, resources: &Resources) -> Result<(), Error> {
        let can = self.runtime.capabilities();
        let runtime = self.runtime.kind().as_str();
        let refused = match resources.gpu {
            Some(_) if !can.gpus => Some(format!(
                "resourceLimits.gpu: the {runtime} runtime offers no GPUs to sandboxes"
            )),
            Some(Gpus::All) if !can.all_gpus => Some(format!(
                "resourceLimits.gpu: \"all\" is not supported by the {runtime} runtime, which asks for a \
                 number of GPUs; give a count such as \"1\""
            )),
            _ if resources.disk.is_some() && !can.disk => Some(format!(
                "resourceLimits.disk: the {runtime} runtime cannot limit a sandbox's disk"
            )),
            _ => None,
        };
        refused.map_or(Ok(()), |m| Err(Error::UnsupportedField(m)))
    }

    /// What the runtime is asked to create for a sandbox (or pool member) `id` whose execd
    /// takes `token`: the plan with execd's environment and the default process limit.
    pub(super) fn sandbox_spec(
        &self,
        id: &str,
        token: &str,
        expires_at: Option<i64>,
        plan: Plan,
    ) -> Result<SandboxSpec, Error> {
        self.check_resources(&plan.resources)?;
        let mut env = plan.env;
        // The 1.1.1 code interpreter probes `/dev/tcp/127.0.0.1/${JUPYTER_PORT:-44771}` before
        // it declares itself ready; execd is the code plane here, so point it at execd.
        env.entry("JUPYTER_PORT".into())
            .or_insert_with(|| EXECD_PORT.to_string());
        // The file execd adds to every command's environment, and that the 1.1.1 SDK's
        // `commands.set_env` appends to. Upstream keeps it in /opt/opensandbox, which here may
        // exist only as the mount point of the agent (root's, 0755), so it lives in a
        // directory any user can create.
        env.entry("EXECD_ENVS".into())
            .or_insert_with(|| EXECD_ENVS_FILE.into());
        env.insert("OPENSANDBOX_ID".into(), id.to_owned());
        // execd's own log goes to a file, so that the container's output is the entrypoint's
        // alone and the `process` diagnostic can read execd's (execd logs to stderr when it
        // cannot write there).
        env.insert("EXECD_LOG_FILE".into(), super::diagnostics::EXECD_LOG_FILE.into());
        env.insert("EXECD_ACCESS_TOKEN".into(), token.to_owned());
        if let Some(pre_start) = &plan.pre_start {
            let hooks = Lifecycle {
                pre_start: Some(pre_start.hook()),
            };
            let json = serde_json::to_string(&hooks)
                .map_err(|e| Error::Internal(format!("cannot encode {LIFECYCLE_ENV}: {e}")))?;
            env.insert(LIFECYCLE_ENV.into(), json);
        }
        let resources = Resources {
            pids: match plan.resources.pids {
                0 => self.settings.pids_limit,
                set => set,
            },
            ..plan.resources
        };
        Ok(SandboxSpec {
            id: id.to_owned(),
            image: plan.image,
            entrypoint: plan.entrypoint,
            env,
            labels: plan.metadata,
            expires_at,
            resources,
            mounts: plan.mounts,
            isolation: plan.isolation,
            files: plan.files,
            purpose: Purpose::Sandbox,
            previous: None,
            start: true,
            image_auth: plan.image_auth,
            workspace: plan.workspace,
            pool: None,
        })
    }

    /// Has the runtime create the sandbox (and start it, when `start`), and records its
    /// instance and launch.
    async fn instantiate(&self, record: &mut Record, plan: Plan, start: bool) -> Result<Instance, Error> {
        let mut spec = self.sandbox_spec(&record.id, &record.token, record.expires_at, plan)?;
        spec.start = start;
        record.launch = Some(Launch {
            env: spec.env.clone(),
            resources: spec.resources,
            mounts: spec.mounts.clone(),
            isolation: spec.isolation,
            image: None,
            workspace: spec.workspace,
        });
        let instance = self.runtime.create(spec).await?;
        record.instance = Some(instance.clone());
        self.store.update(record).await?;
        Ok(instance)
    }

    /// `autoStart: false`: the sandbox's container is created, execd injected, and left
    /// unstarted; the sandbox is `Pending` (`AWAITING_START`) until
    /// [`Service::start_sandbox`].
    async fn create_stopped(&self, record: &mut Record, plan: Plan) -> Result<CreateSandboxResponse, Error> {
        self.instantiate(record, plan, false).await?;
        record.phase = Phase::AwaitingStart;
        record.transition_at = now_ms();
        if !self.store.update(record).await? {
            return Err(Error::Conflict(Conflict::DeletedWhileStarting(record.id.clone())));
        }
        self.log_event_because(
            &record.id,
            EventType::Created,
            Some(AWAITING_START.into()),
            "created, not started (autoStart false)",
        )
        .await;
        tracing::info!(sandbox = %record.id, image = %record.image, "sandbox created, awaiting start");
        self.expiry_changed.notify_one();
        Ok(created_response(record, &Observed::Starting))
    }

    /// `POST /sandboxes/{id}/start`: starts a sandbox created with `autoStart: false` and
    /// answers once its execd does, as a create would. 409 when it is not awaiting start. A
    /// start that fails leaves the sandbox `Failed` (`START_FAILED`, with why) for its owner
    /// to read and delete.
    pub async fn start_sandbox(&self, id: &str, caller: &Principal) -> Result<Sandbox, Error> {
        let record = self.owned(id, caller).await?;
        let instance = match (&record.instance, record.phase) {
            (Some(i), Phase::AwaitingStart) if record.failure.is_none() => i.clone(),
            _ => {
                let observed = self.observed(&record).await?;
                return Err(Error::Conflict(Conflict::NotAwaitingStart {
                    id: id.to_owned(),
                    state: status(&record, &observed).state,
                }));
            }
        };
        let mut starting = record.clone();
        starting.phase = Phase::Pending;
        starting.transition_at = now_ms();
        if !self.store.update_from(&starting, Phase::AwaitingStart).await? {
            // Another start (or a delete) got there first.
            let state = match self.store.get(id).await? {
                Some(r) => status(&r, &Observed::Running).state,
                None => return Err(Error::no_sandbox(id)),
            };
            return Err(Error::Conflict(Conflict::NotAwaitingStart {
                id: id.to_owned(),
                state,
            }));
        }
        let started = Instant::now();
        let span = tracing::info_span!("start", sandbox_id = %id);
        let ready = async {
            let instance = self.runtime.start(&instance).await?;
            starting.instance = Some(instance.clone());
            if !self.store.update(&starting).await? {
                return Err(Error::Conflict(Conflict::DeletedWhileStarting(id.to_owned())));
            }
            self.execd_answers(&instance, &starting.token, false)
                .await
                .map(drop)
        }
        .instrument(span)
        .await;
        match ready {
            Ok(()) => {
                starting.phase = Phase::Ready;
                starting.transition_at = now_ms();
                if !self.store.update(&starting).await? {
                    return Err(Error::Conflict(Conflict::DeletedWhileStarting(id.to_owned())));
                }
                let ms = started.elapsed().as_millis();
                self.log_event(
                    id,
                    EventType::Ready,
                    format!("started on request: execd answered after {ms} ms"),
                )
                .await;
                tracing::info!(sandbox = id, ms, "sandbox started");
                Ok(view(&starting, &Observed::Running))
            }
            Err(Error::Conflict(Conflict::DeletedWhileStarting(id))) => {
                Err(Error::Conflict(Conflict::DeletedWhileStarting(id)))
            }
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "start failed");
                let failure = Failure {
                    reason: START_FAILED.into(),
                    message: e.to_string(),
                };
                self.fail_startup(id, failure).await;
                Err(e)
            }
        }
    }

    /// Creates and starts the sandbox and waits for its execd: until `/ping` answers 200, or
    /// when `gated` (a pre-start hook or readiness probe follows), until it answers at all.
    async fn provision(&self, record: &mut Record, plan: Plan, gated: bool) -> Result<Provisioned, Error> {
        let t = Instant::now();
        let instance = self.instantiate(record, plan, true).await?;
        let created = t.elapsed();
        let (ping, execd) = match self.execd_answers(&instance, &record.token, gated).await {
            Ok(answered) => answered,
            // A hook that failed fast ends the sandbox before execd is seen answering; that is
            // the sandbox's failure to record, not the create's.
            Err(e) if gated => match self.pre_start_account(&instance).await {
                Some(failure) => return Ok(Provisioned::Failed(failure)),
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        tracing::debug!(sandbox = %record.id, ?created, ready = ?t.elapsed(), "provisioned");
        Ok(Provisioned::Answered { ping, execd })
    }

    /// Waits until `instance`'s execd answers `/ping` ([`Service::wait_ready`]); its answer and
    /// where it listens. A sandbox that published no port has exited: the error says why.
    pub(super) async fn execd_answers(
        &self,
        instance: &Instance,
        token: &str,
        gated: bool,
    ) -> Result<(Ping, Target), Error> {
        match self.runtime.target(instance, EXECD_PORT) {
            Some(target) => self
                .wait_ready(instance, &target, token, gated)
                .await
                .map(|ping| (ping, target)),
            None => Err(self
                .exit_error(instance)
                .await?
                .unwrap_or_else(|| Error::StartFailed("the runtime published no port for execd".into()))),
        }
    }

    /// When the sandbox has already ended: an error with its exit code and last output.
    pub(super) async fn exit_error(&self, instance: &Instance) -> Result<Option<Error>, Error> {
        let code = match self.runtime.observe(instance).await? {
            Observed::Exited { code, .. } => code,
            Observed::Gone => {
                return Ok(Some(Error::StartFailed(
                    "the sandbox's container vanished while starting".into(),
                )))
            }
            _ => return Ok(None),
        };
        let logs = self.last_output(instance).await;
        Ok(Some(Error::StartFailed(format!(
            "the sandbox exited with code {} before execd answered; last output:\n{}",
            code.unwrap_or(-1),
            logs.trim_end()
        ))))
    }

    async fn last_output(&self, instance: &Instance) -> String {
        self.runtime
            .logs(instance, START_LOG_LINES, None)
            .await
            .unwrap_or_default()
    }

    /// Polls execd's `/ping` until it answers 200 (or, when `gated`, 503 `STARTING` too), the
    /// sandbox dies, or the deadline passes. Returns the answer.
    pub(super) async fn wait_ready(
        &self,
        instance: &Instance,
        target: &Target,
        token: &str,
        gated: bool,
    ) -> Result<Ping, Error> {
        let deadline = Instant::now() + self.settings.ready_timeout;
        let mut pause = Duration::from_millis(1);
        let mut attempts = 0u32;
        loop {
            match self.execd.ping(target, token).await {
                Ping::Ready => return Ok(Ping::Ready),
                Ping::Starting if gated => return Ok(Ping::Starting),
                Ping::Starting | Ping::NotYet => {}
            }
            attempts += 1;
            if attempts.is_multiple_of(PINGS_PER_LOOK) {
                if let Some(e) = self.exit_error(instance).await? {
                    return Err(e);
                }
            }
            if Instant::now() + pause > deadline {
                let logs = self.last_output(instance).await;
                return Err(Error::StartFailed(format!(
                    "execd did not answer /ping within {:?}; last output:\n{}",
                    self.settings.ready_timeout,
                    logs.trim_end()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// What the runtime says the sandbox is doing (`Gone` when it never got an instance).
    pub(super) async fn observed(&self, record: &Record) -> Result<Observed, Error> {
        Ok(match &record.instance {
            Some(i) => self.runtime.observe(i).await?,
            None => Observed::Gone,
        })
    }

    /// `GET /sandboxes/{id}`.
    pub async fn get(&self, id: &str, caller: &Principal) -> Result<Sandbox, Error> {
        let record = self.owned(id, caller).await?;
        let observed = self.observed(&record).await?;
        self.note_observed(&record, &observed).await;
        Ok(view(&record, &observed))
    }

    /// Keeps the record's phase in step with a pause or thaw the runtime reports and sandboxd
    /// did not make (`docker pause` by hand), so that the server proxy, which asks no runtime,
    /// knows about it from the next read on.
    /// Also records, once, that a sandbox sandboxd made has stopped (its entrypoint or execd
    /// died, it was OOM-killed or removed behind sandboxd's back), so that its events say so.
    pub(super) async fn note_observed(&self, record: &Record, observed: &Observed) {
        // Sandboxes still starting are their startup task's to account for.
        let started = matches!(record.phase, Phase::Ready | Phase::Paused);
        if started && matches!(observed, Observed::Exited { .. } | Observed::Gone) {
            self.note_stopped(record, observed).await;
        }
        let paused = *observed == Observed::Paused;
        let phase = match record.phase {
            Phase::Ready if paused => Phase::Paused,
            Phase::Paused if !paused => Phase::Ready,
            _ => return,
        };
        let mut changed = record.clone();
        changed.phase = phase;
        if let Err(e) = self.store.update(&changed).await {
            tracing::warn!(sandbox = %record.id, error = %e, "cannot record the observed phase");
        }
    }

    /// Journals sandboxd's own `Exited` (`stopped (<state>): <why>`, the contract's view) once;
    /// the runtime's `Exited` event, if it came, is the engine's.
    async fn note_stopped(&self, record: &Record, observed: &Observed) {
        match self.store.events(&record.id).await {
            Ok(events)
                if events.iter().any(|e| {
                    e.kind == EventType::Exited.as_str() && e.source == Source::Sandboxd.as_str()
                }) =>
            {
                return
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(sandbox = %record.id, error = %e, "cannot read events");
                return;
            }
        }
        let s = status(record, observed);
        let why = s
            .message
            .unwrap_or_else(|| "the container exited with code 0".to_owned());
        let exit_code = match observed {
            Observed::Exited { code, .. } => *code,
            _ => None,
        };
        let event = NewEvent {
            at: now_ms(),
            kind: EventType::Exited,
            reason: s.reason.clone(),
            message: format!("stopped ({}): {why}", s.state),
            source: Source::Sandboxd,
            exit_code,
            request_id: None,
        };
        self.append_event(&record.id, event).await;
    }

    /// `GET /sandboxes`: filtered, newest first, one page. Rows this build cannot read are
    /// left out (and logged), never guessed at.
    pub async fn list(&self, filter: ListFilter, caller: &Principal) -> Result<ListSandboxesResponse, Error> {
        let owner = match (caller.role, filter.owner.as_deref()) {
            (Role::Admin, None | Some("*")) => None,
            (Role::Admin, Some(owner)) => Some(owner.to_owned()),
            (_, None) => Some(caller.id.clone()),
            (_, Some(owner)) if owner == caller.id => Some(owner.to_owned()),
            (role, Some(_)) => {
                return Err(Error::Forbidden(Denial::Role {
                    role,
                    needed: Role::Admin,
                }))
            }
        };
        let mut records = Vec::new();
        for row in self.store.all().await? {
            match row {
                Ok(record)
                    if owner.as_ref().is_none_or(|o| *o == record.owner)
                        && filter
                            .business_domain
                            .as_ref()
                            .is_none_or(|d| record.business_domain.as_ref() == Some(d))
                        && filter
                            .name
                            .as_ref()
                            .is_none_or(|n| record.name.as_ref() == Some(n)) =>
                {
                    records.push(record)
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(sandbox = %e.id, error = %e.error, "unreadable sandbox row left out of the list")
                }
            }
        }
        records.retain(|r| filter.metadata.iter().all(|(k, v)| r.metadata.get(k) == Some(v)));
        let wanted: Vec<String> = filter.states.iter().map(|s| s.to_ascii_lowercase()).collect();
        if wanted.is_empty() {
            // No state filter: the page is known from the records alone, so the runtime is
            // asked only about its instances (the engine's list of every container is what
            // costs at hundreds of sandboxes).
            let (page, pagination) = super::paginate(records, filter.page, filter.page_size);
            let instances: Vec<Instance> = page.iter().filter_map(|r| r.instance.clone()).collect();
            let live = self.runtime.observe_many(&instances).await?;
            let items = self.observed_views(&page, &live).await;
            return Ok(ListSandboxesResponse { items, pagination });
        }
        // A state filter needs every sandbox's live state.
        let live = self.runtime.observe_all().await?;
        let matching: Vec<Sandbox> = self
            .observed_views(&records, &live)
            .await
            .into_iter()
            .filter(|s| wanted.contains(&s.status.state.to_ascii_lowercase()))
            .collect();
        let (items, pagination) = super::paginate(matching, filter.page, filter.page_size);
        Ok(ListSandboxesResponse { items, pagination })
    }

    /// The views of `records` by what `live` (by runtime key) says, each observation noted.
    async fn observed_views(
        &self,
        records: &[Record],
        live: &BTreeMap<String, (Instance, Observed)>,
    ) -> Vec<Sandbox> {
        let mut views = Vec::with_capacity(records.len());
        for r in records {
            let observed = live
                .get(r.runtime_key())
                .map_or(Observed::Gone, |(_, o)| o.clone());
            self.note_observed(r, &observed).await;
            views.push(view(r, &observed));
        }
        views
    }

    /// `DELETE /sandboxes/{id}`: kills and removes the sandbox, forgets it. A pool-backed
    /// sandbox is released to its pool (its member recycled) and forgotten.
    pub async fn delete(&self, id: &str, caller: &Principal) -> Result<(), Error> {
        let record = self.owned(id, caller).await?;
        if let Some(link) = &record.pool {
            let released = format!("deleted (its container released to pool {})", link.pool);
            self.log_event(id, EventType::Deleted, released).await;
            self.end_allocation(&record, false).await?;
            self.lifecycle.forget(id);
            tracing::info!(sandbox = id, "pooled sandbox deleted (released)");
            return Ok(());
        }
        self.startups.cancel(id);
        if let Some(instance) = &record.instance {
            self.runtime.remove(instance).await?;
        }
        // Before the record goes, so that a follower of the journal sees it.
        self.log_event(id, EventType::Deleted, "deleted").await;
        self.store.remove(id).await?;
        self.lifecycle.forget(id);
        self.remove_leftovers(&record).await;
        self.expiry_changed.notify_one();
        tracing::info!(sandbox = id, "sandbox deleted");
        Ok(())
    }

    /// `PATCH /sandboxes/{id}/metadata`: a JSON merge patch; null deletes a key.
    pub async fn patch_metadata(
        &self,
        id: &str,
        patch: serde_json::Map<String, serde_json::Value>,
        caller: &Principal,
    ) -> Result<Sandbox, Error> {
        let mut record = self.owned(id, caller).await?;
        for (k, v) in patch {
            match v {
                serde_json::Value::Null => {
                    record.metadata.remove(&k);
                }
                serde_json::Value::String(v) => {
                    spec::check_label(&k, &v)?;
                    record.metadata.insert(k, v);
                }
                other => {
                    return Err(Error::invalid(format!(
                        "metadata {k:?}: values must be strings or null, got {other}"
                    )))
                }
            }
        }
        if !self.store.update(&record).await? {
            return Err(Error::no_sandbox(id));
        }
        self.log_event(id, EventType::MetadataUpdated, "metadata updated")
            .await;
        self.get(id, caller).await
    }

    /// `POST /sandboxes/{id}/renew-expiration`.
    pub async fn renew(
        &self,
        id: &str,
        body: RenewExpiration,
        caller: &Principal,
    ) -> Result<RenewExpiration, Error> {
        let mut record = self.owned(id, caller).await?;
        let at = parse_ms(&body.expires_at).ok_or_else(|| {
            Error::invalid(format!(
                "expiresAt {:?} is not an RFC 3339 date-time",
                body.expires_at
            ))
        })?;
        if at <= now_ms() {
            return Err(Error::invalid(format!(
                "expiresAt {} is not in the future",
                body.expires_at
            )));
        }
        match &mut record.hibernation {
            // The clock is stopped while Rootfs-paused: the renewal is what is left at resume.
            Some(h) if h.suspended_ms.is_some() => h.suspended_ms = Some(at - now_ms()),
            _ if record.expires_at.is_none() => {
                return Err(Error::Conflict(Conflict::NoExpiry(id.to_owned())))
            }
            _ => record.expires_at = Some(at),
        }
        if !self.store.update(&record).await? {
            return Err(Error::no_sandbox(id));
        }
        self.expiry_changed.notify_one();
        self.log_event(
            id,
            EventType::Renewed,
            format!("expiry renewed to {}", format_ms(at)),
        )
        .await;
        Ok(RenewExpiration {
            expires_at: format_ms(at),
        })
    }

    /// `GET /sandboxes/{id}/endpoints/{port}`.
    pub async fn endpoint(
        &self,
        id: &str,
        port: &str,
        use_server_proxy: bool,
        expires: Option<&str>,
        caller: &Principal,
    ) -> Result<Endpoint, Error> {
        let record = self.owned(id, caller).await?;
        let port = spec::parse_port(port)?;
        if expires.is_some() {
            return Err(Error::UnsupportedField(
                "expires: signed endpoints need the Kubernetes gateway; the Docker runtime has none".into(),
            ));
        }
        let token_headers = || BTreeMap::from([(TOKEN_HEADER.to_owned(), record.token.clone())]);
        // A target clients cannot reach (Kubernetes port-forward: sandboxd itself tunnels
        // through the API server) is always behind the server proxy, whatever was asked.
        let direct = if use_server_proxy {
            None
        } else {
            let target = self.target(&record, port)?;
            target.public.clone().map(|public| (target, public))
        };
        let Some((target, public)) = direct else {
            let server = self
                .server_endpoint
                .get()
                .ok_or_else(|| Error::Internal("the server's own endpoint is not known yet".into()))?;
            return Ok(Endpoint {
                endpoint: format!("{server}/v1/sandboxes/{id}/proxy/{port}"),
                headers: token_headers(),
            });
        };
        // As upstream's Docker runtime: every port but 8080 goes through execd's `/proxy`,
        // execd's own included (`host:P/proxy/44772`; upstream's e2e asserts that form, and
        // every SDK appends its paths to the endpoint). The server proxy reaches 44772
        // directly (`target.prefix` is empty there).
        let path = if target.execd {
            format!("/proxy/{port}")
        } else {
            String::new()
        };
        Ok(Endpoint {
            endpoint: format!("{public}{path}"),
            headers: if target.execd {
                token_headers()
            } else {
                BTreeMap::new()
            },
        })
    }

    fn target(&self, record: &Record, port: u16) -> Result<Target, Error> {
        record
            .instance
            .as_ref()
            .and_then(|i| self.runtime.target(i, port))
            .ok_or_else(|| Error::Conflict(Conflict::NoRoute(record.id.clone())))
    }

    /// The sandbox's token and owner (for the caller to check the client's credential
    /// against), and where the server proxy sends requests for its `port`, or why it cannot:
    /// a sandbox that is starting or paused is refused at once from its record (a frozen
    /// container accepts the connection and never answers), without a round trip to the
    /// runtime. Only a sandbox that does not exist fails the whole call.
    pub async fn proxy_target(&self, id: &str, port: u16) -> Result<ProxyRoute, Error> {
        let record = self.record(id).await?;
        let not_running = |state: &str| {
            Error::Conflict(Conflict::NotRunning {
                id: id.to_owned(),
                state: state.to_owned(),
            })
        };
        let target = match record.phase {
            _ if record.failure.is_some() => Err(not_running("Failed")),
            Phase::Pending | Phase::PreStart | Phase::Probing | Phase::AwaitingStart => {
                Err(not_running("Pending"))
            }
            Phase::Paused | Phase::Hibernated => Err(not_running("Paused")),
            Phase::Released => Err(not_running("Terminated")),
            Phase::Committing => Err(not_running("Pausing")),
            Phase::Restoring => Err(not_running("Resuming")),
            Phase::Ready => self.target(&record, port),
        };
        Ok(ProxyRoute {
            token: record.token,
            owner: record.owner,
            target,
        })
    }

    /// Why the server proxy could not reach sandbox `id`, when the reason is its state: it
    /// has exited or vanished since sandboxd last looked. Asks the runtime, but only after a
    /// connection failed.
    pub async fn unreachable(&self, id: &str) -> Option<Error> {
        let record = self.store.get(id).await.ok()??;
        let observed = self.observed(&record).await.ok()?;
        self.note_observed(&record, &observed).await;
        let state = status(&record, &observed).state;
        (state != "Running").then(|| {
            Error::Conflict(Conflict::NotRunning {
                id: id.to_owned(),
                state,
            })
        })
    }
}

/// The event of a create that has answered: its type, reason and message.
fn started_event(phase: Phase, failure: Option<&Failure>, ms: u128) -> (EventType, Option<String>, String) {
    match (phase, failure) {
        (_, Some(f)) => (
            super::startup::failure_event(&f.reason),
            Some(f.reason.clone()),
            format!("failed ({}): {}", f.reason, f.message),
        ),
        (Phase::PreStart, None) => (
            EventType::Starting,
            None,
            format!("pending: execd answered after {ms} ms; the preStart hook runs"),
        ),
        (Phase::Probing, None) => (
            EventType::Starting,
            None,
            format!("pending: execd answered after {ms} ms; the readiness probe runs"),
        ),
        _ => (
            EventType::Ready,
            None,
            format!("running: execd answered after {ms} ms"),
        ),
    }
}

/// What the server proxy needs to know of a sandbox.
#[derive(Debug)]
pub struct ProxyRoute {
    /// The sandbox's execd token.
    pub token: String,
    /// Its owner.
    pub owner: String,
    /// Where to send the request, or why not.
    pub target: Result<Target, Error>,
}

/// The API view of a sandbox.
pub(super) fn view(record: &Record, observed: &Observed) -> Sandbox {
    Sandbox {
        id: record.id.clone(),
        image: record.snapshot_id.is_none().then(|| ImageSpec {
            uri: record.image.clone(),
            auth: None,
        }),
        snapshot_id: record.snapshot_id.clone(),
        platform: record.platform.clone(),
        status: status(record, observed),
        metadata: Some(record.metadata.clone()),
        entrypoint: record.entrypoint.clone(),
        expires_at: record.expires_at.map(format_ms),
        created_at: format_ms(record.created_at),
        extensions: Some(record.extensions.clone()).filter(|e| !e.is_empty()),
        business_domain: record.business_domain.clone(),
        template_id: record.template.as_ref().map(|t| t.id.clone()),
        template_name: record.template.as_ref().map(|t| t.name.clone()),
        template_version: record.template.as_ref().map(|t| t.version),
        name: record.name.clone(),
        owner: Some(record.owner.clone()),
        resource_limits: Some(record.resource_limits.clone()).filter(|l| !l.is_empty()),
        timeout: record.timeout,
        env: Some(record.env.clone()).filter(|e| !e.is_empty()),
        allocation: allocation(record),
        pause_policy: Some(record.pause_policy).filter(|p| *p != PausePolicy::default()),
        workspace: record
            .launch
            .as_ref()
            .and_then(|l| l.workspace)
            .map(|w| WorkspaceSpec {
                persistent: true,
                size: w.size_bytes.map(|b| b.to_string()),
            }),
    }
}

/// `allocation` of a pool-backed sandbox.
pub(super) fn allocation(record: &Record) -> Option<SandboxAllocation> {
    record.pool.as_ref().map(|p| SandboxAllocation {
        mode: "pool".into(),
        pool_ref: p.pool.clone(),
        state: if record.phase == Phase::Released {
            "released"
        } else {
            "allocated"
        }
        .into(),
    })
}

/// The runtime's state → the contract's sandbox state. The reasons keep the names clients
/// already see (`CONTAINER_*`). A failure sandboxd recorded (a pre-start hook or readiness
/// probe that failed) and a startup still in progress come from the record.
pub(super) fn status(record: &Record, observed: &Observed) -> SandboxStatus {
    let at = Some(format_ms(record.transition_at));
    let s = |state: &str, reason: &str, message: Option<String>| SandboxStatus {
        state: state.to_owned(),
        reason: Some(reason.to_owned()),
        message,
        last_transition_at: at.clone(),
    };
    if let Some(failure) = &record.failure {
        return s("Failed", &failure.reason, Some(failure.message.clone()));
    }
    match record.phase {
        Phase::Pending => return s("Pending", "SANDBOX_STARTING", None),
        Phase::AwaitingStart => {
            let message = "created with autoStart false: POST /v1/sandboxes/{id}/start starts it";
            return s("Pending", AWAITING_START, Some(message.into()));
        }
        Phase::PreStart => return s("Pending", "PRE_START_RUNNING", None),
        Phase::Probing => return s("Pending", "READINESS_PROBE", None),
        Phase::Released => return s("Terminated", "RELEASED", Some("released to its pool".into())),
        // A Rootfs pause and resume: the record is the truth (there may be no instance).
        Phase::Committing => return s("Pausing", "COMMITTING", None),
        Phase::Hibernated => {
            let message = "paused with Rootfs: the filesystem is kept, processes start afresh on resume";
            return s("Paused", "HIBERNATED", Some(message.into()));
        }
        Phase::Restoring => return s("Resuming", "RESTORING", None),
        Phase::Ready | Phase::Paused => {}
    }
    match observed {
        Observed::Running => s("Running", "CONTAINER_RUNNING", None),
        Observed::Paused => s("Paused", "CONTAINER_PAUSED", None),
        Observed::Starting => s("Pending", "CONTAINER_CREATED", None),
        Observed::Stopping => s("Stopping", "CONTAINER_REMOVING", None),
        Observed::Exited { code: Some(0), .. } => s("Terminated", "CONTAINER_EXITED", None),
        Observed::Exited { code, oom, message } => {
            let mut text = format!("the container exited with code {}", code.unwrap_or(-1));
            if *oom {
                text.push_str(" (killed for exceeding its memory limit)");
            }
            if let Some(e) = message {
                text.push_str(&format!(": {e}"));
            }
            s("Failed", "CONTAINER_EXITED_ERROR", Some(text))
        }
        Observed::Gone => s(
            "Failed",
            "CONTAINER_GONE",
            Some("the container was removed outside sandboxd".into()),
        ),
        Observed::Unknown(what) => s("Unknown", "CONTAINER_STATE_UNKNOWN", Some(what.clone())),
    }
}

/// The answer of a create: the record as `observed`.
fn created_response(record: &Record, observed: &Observed) -> CreateSandboxResponse {
    CreateSandboxResponse {
        id: record.id.clone(),
        status: status(record, observed),
        metadata: Some(record.metadata.clone()).filter(|m| !m.is_empty()),
        platform: record.platform.clone(),
        expires_at: record.expires_at.map(format_ms),
        created_at: format_ms(record.created_at),
        entrypoint: record.entrypoint.clone(),
        template_id: record.template.as_ref().map(|t| t.id.clone()),
        template_name: record.template.as_ref().map(|t| t.name.clone()),
        template_version: record.template.as_ref().map(|t| t.version),
        name: record.name.clone(),
        allocation: None,
    }
}
