//! The sandbox service: what each lifecycle route does, the mapping of Docker's container
//! states onto the contract's sandbox states, readiness, expiry and restart reconciliation.
//!
//! The store says which sandboxes exist and what sandboxd last did to them; the engine says
//! what their containers are doing now. Every read merges the two, so a container killed or
//! removed behind sandboxd's back shows up as `Failed`/`Terminated` at once. Async.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;

use super::docker::{self, ContainerSpec, Docker, DockerError, Live};
use super::error::Error;
use super::store::{Phase, Record, Store};
use super::validate::{self, Limits, Plan};
use crate::auth::TOKEN_HEADER;
use crate::wire::lifecycle::{
    CreateSandboxRequest, CreateSandboxResponse, DiagnosticContent, Endpoint, ImageSpec,
    ListSandboxesResponse, Pagination, RenewExpiration, Sandbox, SandboxStatus,
};
use crate::wire::time::{format_ms, now_ms, parse_ms};

/// Lines of container output the scoped logs diagnostic returns by default.
const LOG_LINES: usize = 2000;
/// Events the scoped events diagnostic returns by default: all that are kept.
const EVENT_LINES: usize = 10_000;
/// The deprecated plain-text diagnostics' defaults: upstream's Docker runtime's 100 lines of
/// logs and 50 events.
const PLAIN_LOG_LINES: usize = 100;
const PLAIN_EVENT_LINES: usize = 50;
/// Pauses between the tries of a freeze or thaw that the cgroup v1 freezer gave up on:
/// 5 tries in all, about 1.5 s of waiting (the design's "5 tries over about 2 s").
const FREEZER_BACKOFF: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// Settings the service needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Host address sandbox ports are published on.
    pub publish_ip: IpAddr,
    /// Host that endpoints advertise.
    pub public_host: String,
    /// Validation limits.
    pub limits: Limits,
    /// How long create waits for execd.
    pub ready_timeout: Duration,
    /// Default process limit.
    pub pids_limit: i64,
    /// Docker network mode.
    pub network: String,
    /// The seccomp profile (JSON) for sandboxes that ask for isolation; `None` refuses them.
    pub isolation_profile: Option<String>,
}

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
}

/// Where the server proxy sends a request for one sandbox port.
#[derive(Debug, Clone)]
pub struct ProxyTarget {
    /// Published host address to dial.
    pub addr: SocketAddr,
    /// Path prefix at the target (`/proxy/<port>` when execd relays it).
    pub prefix: String,
    /// The sandbox's execd token, when the target is execd (else it must not be sent).
    pub token: Option<String>,
}

/// The service.
pub struct Service {
    /// The state file.
    pub store: Store,
    docker: Docker,
    settings: Settings,
    /// `host:port` of sandboxd itself, for server-proxy endpoints (known once bound).
    server_endpoint: OnceLock<String>,
    /// Wakes the expiry task when an expiry changes.
    expiry_changed: Notify,
    ping: Client<HttpConnector, Empty<Bytes>>,
}

impl Service {
    /// A service over `store` and `docker`.
    pub fn new(store: Store, docker: Docker, settings: Settings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            store,
            docker,
            settings,
            server_endpoint: OnceLock::new(),
            expiry_changed: Notify::new(),
            ping: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector),
        }
    }

    /// Records the address sandboxd serves on (`host:port`, as clients should reach it).
    pub fn set_server_endpoint(&self, endpoint: String) {
        let _ = self.server_endpoint.set(endpoint);
    }

    /// The negotiated Docker API version.
    pub fn docker_api_version(&self) -> String {
        self.docker.api_version()
    }

    fn connect_ip(&self) -> IpAddr {
        if self.settings.publish_ip.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.settings.publish_ip
        }
    }

    fn record(&self, id: &str) -> Result<Record, Error> {
        self.store.get(id)?.ok_or_else(|| Error::not_found(id))
    }

    fn event(&self, id: &str, message: &str) {
        if let Err(e) = self.store.event(id, now_ms(), message) {
            tracing::warn!(sandbox = id, error = %e, "cannot record event");
        }
    }

    /// `POST /sandboxes`: validates, creates the container with execd injected, starts it and
    /// returns once execd answers `/ping`. On any failure nothing is left behind.
    pub async fn create(&self, req: CreateSandboxRequest) -> Result<CreateSandboxResponse, Error> {
        let plan = validate::plan(req, &self.settings.limits)?;
        let started = Instant::now();
        let now = now_ms();
        let mut token = [0u8; 24];
        getrandom::fill(&mut token).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
        let mut record = Record {
            id: uuid::Uuid::new_v4().to_string(),
            container: None,
            image: plan.image.clone(),
            entrypoint: plan.entrypoint.clone(),
            metadata: plan.metadata.clone(),
            extensions: plan.extensions.clone(),
            platform: plan.platform.clone(),
            token: hex::encode(token),
            created_at: now,
            expires_at: plan.timeout.map(|t| now + t as i64 * 1000),
            execd_port: None,
            http_port: None,
            phase: Phase::Pending,
            transition_at: now,
        };
        self.store.insert(&record)?;
        self.event(&record.id, &format!("create requested: image {}", plan.image));
        match self.provision(&mut record, plan).await {
            Ok(()) => {
                record.phase = Phase::Ready;
                record.transition_at = now_ms();
                if !self.store.update(&record)? {
                    // Deleted while it was starting.
                    self.discard(&record).await;
                    return Err(Error::conflict(format!(
                        "sandbox {} was deleted while starting",
                        record.id
                    )));
                }
                let ms = started.elapsed().as_millis();
                self.event(&record.id, &format!("running: execd answered after {ms} ms"));
                tracing::info!(sandbox = %record.id, image = %record.image, ms, "sandbox running");
                self.expiry_changed.notify_one();
                Ok(CreateSandboxResponse {
                    id: record.id.clone(),
                    status: status(&record, Some(&running())),
                    metadata: Some(record.metadata.clone()).filter(|m| !m.is_empty()),
                    platform: record.platform.clone(),
                    expires_at: record.expires_at.map(format_ms),
                    created_at: format_ms(record.created_at),
                    entrypoint: record.entrypoint.clone(),
                })
            }
            Err(e) => {
                tracing::warn!(sandbox = %record.id, code = e.code, message = %e.message, "create failed");
                self.discard(&record).await;
                Err(e)
            }
        }
    }

    /// Removes a sandbox's container (if any) and its record.
    async fn discard(&self, record: &Record) {
        if let Some(container) = &record.container {
            if let Err(e) = self.docker.remove(container).await {
                tracing::error!(sandbox = %record.id, error = %e, "cannot remove container; reconciliation will retry");
                return;
            }
        }
        if let Err(e) = self.store.remove(&record.id) {
            tracing::error!(sandbox = %record.id, error = %e, "cannot forget sandbox");
        }
    }

    async fn provision(&self, record: &mut Record, plan: Plan) -> Result<(), Error> {
        self.docker.ensure_image(&plan.image).await.map_err(|e| match e {
            DockerError::NotFound(m) => Error::new(StatusCode::BAD_REQUEST, "SANDBOX::IMAGE_NOT_FOUND", m),
            other => other.into(),
        })?;
        let agent = self.docker.ensure_agent(&plan.image).await?;
        let mut binds = plan.host_binds;
        for v in &plan.named_volumes {
            let mountpoint = self.docker.ensure_volume(&v.name).await?;
            let source = match &v.sub_path {
                Some(sub) => format!("{mountpoint}/{sub}"),
                None => v.name.clone(),
            };
            binds.push(format!(
                "{source}:{}{}",
                v.mount_path,
                if v.read_only { ":ro" } else { "" }
            ));
        }
        let mut labels: std::collections::HashMap<String, String> = plan.metadata.into_iter().collect();
        labels.insert(docker::LABEL_ID.into(), record.id.clone());
        labels.insert(docker::LABEL_INSTANCE.into(), self.store.instance.clone());
        match record.expires_at {
            Some(at) => labels.insert(docker::LABEL_EXPIRES.into(), format_ms(at)),
            None => labels.insert(docker::LABEL_MANUAL.into(), "true".into()),
        };
        let mut env = plan.env;
        // The 1.1.1 code interpreter probes `/dev/tcp/127.0.0.1/${JUPYTER_PORT:-44771}` before
        // it declares itself ready; execd is the code plane here, so point it at execd.
        env.entry("JUPYTER_PORT".into())
            .or_insert_with(|| docker::EXECD_PORT.to_string());
        // The file execd adds to every command's environment, and that the 1.1.1 SDK's
        // `commands.set_env` appends to. Upstream keeps it in /opt/opensandbox, which here may
        // exist only as the mount point of the agent (root's, 0755), so it lives in a
        // directory any user can create.
        env.entry("EXECD_ENVS".into())
            .or_insert_with(|| "/tmp/opensandbox/.env".into());
        let mut env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("OPENSANDBOX_ID={}", record.id));
        env.push(format!("EXECD_ACCESS_TOKEN={}", record.token));
        let isolation_seccomp = match plan.isolation {
            false => None,
            true => Some(self.settings.isolation_profile.clone().ok_or_else(|| {
                Error::unsupported("isolation: sandboxd has no seccomp profile for isolated sessions")
            })?),
        };
        let spec = ContainerSpec {
            name: format!("sandbox-{}", record.id),
            image: plan.image,
            entrypoint: plan.entrypoint,
            env,
            labels,
            publish_ip: Some(self.settings.publish_ip),
            memory: plan.memory,
            nano_cpus: plan.nano_cpus,
            pids_limit: plan.pids.unwrap_or(self.settings.pids_limit),
            binds,
            network: self.settings.network.clone(),
            isolation_seccomp,
        };
        let t = Instant::now();
        let container = self.docker.create(spec, &agent).await?;
        record.container = Some(container.clone());
        self.store.update(record)?;
        let created = t.elapsed();
        self.docker.start(&container).await?;
        let started = t.elapsed();
        let (execd_port, http_port) = self.docker.host_ports(&container).await?;
        record.execd_port = execd_port;
        record.http_port = http_port;
        self.store.update(record)?;
        let Some(port) = execd_port else {
            // An exited container has no published ports: say why it exited.
            return Err(match self.exit_error(&container).await? {
                Some(e) => e,
                None => Error::internal("docker published no port for execd"),
            });
        };
        self.wait_ready(&container, port, &record.token).await?;
        tracing::debug!(sandbox = %record.id, ?created, ?started, ready = ?t.elapsed(), "provisioned");
        Ok(())
    }

    /// When the container has already exited: an error with its exit code and last output.
    async fn exit_error(&self, container: &str) -> Result<Option<Error>, Error> {
        let Some(live) = self.docker.inspect(container).await? else {
            return Ok(Some(Error::internal(
                "the sandbox's container vanished while starting",
            )));
        };
        if live.status != "exited" && live.status != "dead" {
            return Ok(None);
        }
        let logs = self.docker.logs(container, 20, None).await.unwrap_or_default();
        Ok(Some(Error::internal(format!(
            "the sandbox exited with code {} before execd answered; last output:\n{}",
            live.exit_code.unwrap_or(-1),
            logs.trim_end()
        ))))
    }

    /// Polls execd's `/ping` until it answers 200, the container dies, or the deadline passes.
    async fn wait_ready(&self, container: &str, port: u16, token: &str) -> Result<(), Error> {
        let deadline = Instant::now() + self.settings.ready_timeout;
        let uri: hyper::Uri = format!("http://{}/ping", SocketAddr::new(self.connect_ip(), port))
            .parse()
            .map_err(|e| Error::internal(format!("bad ping uri: {e}")))?;
        let mut pause = Duration::from_millis(1);
        let mut attempts = 0u32;
        loop {
            let req = hyper::Request::get(uri.clone())
                .header(TOKEN_HEADER, token)
                .body(Empty::new())
                .map_err(|e| Error::internal(e.to_string()))?;
            let answer = tokio::time::timeout(Duration::from_secs(2), self.ping.request(req)).await;
            if let Ok(Ok(resp)) = &answer {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            attempts += 1;
            if attempts.is_multiple_of(16) {
                if let Some(e) = self.exit_error(container).await? {
                    return Err(e);
                }
            }
            if Instant::now() + pause > deadline {
                let logs = self.docker.logs(container, 20, None).await.unwrap_or_default();
                return Err(Error::internal(format!(
                    "execd did not answer /ping within {:?}; last output:\n{}",
                    self.settings.ready_timeout,
                    logs.trim_end()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// `GET /sandboxes/{id}`.
    pub async fn get(&self, id: &str) -> Result<Sandbox, Error> {
        let record = self.record(id)?;
        let live = match &record.container {
            Some(c) => self.docker.inspect(c).await?,
            None => None,
        };
        self.observe(&record, live.as_ref());
        Ok(view(&record, live.as_ref()))
    }

    /// Keeps the record's phase in step with a pause or thaw the engine reports and sandboxd
    /// did not make (`docker pause` by hand), so that the server proxy, which asks no engine,
    /// knows about it from the next read on.
    fn observe(&self, record: &Record, live: Option<&Live>) {
        let paused = live.is_some_and(|l| l.status == "paused");
        let phase = match record.phase {
            Phase::Ready if paused => Phase::Paused,
            Phase::Paused if !paused => Phase::Ready,
            _ => return,
        };
        let mut changed = record.clone();
        changed.phase = phase;
        if let Err(e) = self.store.update(&changed) {
            tracing::warn!(sandbox = %record.id, error = %e, "cannot record the observed phase");
        }
    }

    /// `GET /sandboxes`: filtered, newest first, one page.
    pub async fn list(&self, filter: ListFilter) -> Result<ListSandboxesResponse, Error> {
        let records = self.store.all()?;
        let live = self.docker.list(&self.store.instance).await?;
        let wanted: Vec<String> = filter.states.iter().map(|s| s.to_ascii_lowercase()).collect();
        for r in &records {
            self.observe(r, live.get(&r.id).map(|(_, l)| l));
        }
        let matching: Vec<Sandbox> = records
            .iter()
            .filter(|r| filter.metadata.iter().all(|(k, v)| r.metadata.get(k) == Some(v)))
            .map(|r| view(r, live.get(&r.id).map(|(_, l)| l)))
            .filter(|s| wanted.is_empty() || wanted.contains(&s.status.state.to_ascii_lowercase()))
            .collect();
        let total = matching.len() as u64;
        let size = u64::from(filter.page_size);
        let skip = u64::from(filter.page - 1) * size;
        let items = matching
            .into_iter()
            .skip(skip as usize)
            .take(size as usize)
            .collect();
        Ok(ListSandboxesResponse {
            items,
            pagination: Pagination {
                page: filter.page,
                page_size: filter.page_size,
                total_items: total,
                total_pages: total.div_ceil(size),
                has_next_page: skip + size < total,
            },
        })
    }

    /// `DELETE /sandboxes/{id}`: kills and removes the container, forgets the sandbox.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let record = self.record(id)?;
        if let Some(container) = &record.container {
            self.docker.remove(container).await?;
        }
        self.store.remove(id)?;
        self.expiry_changed.notify_one();
        tracing::info!(sandbox = id, "sandbox deleted");
        Ok(())
    }

    /// `PATCH /sandboxes/{id}/metadata`: a JSON merge patch; null deletes a key.
    pub async fn patch_metadata(
        &self,
        id: &str,
        patch: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Sandbox, Error> {
        let mut record = self.record(id)?;
        for (k, v) in patch {
            match v {
                serde_json::Value::Null => {
                    record.metadata.remove(&k);
                }
                serde_json::Value::String(v) => {
                    validate::check_label(&k, &v)?;
                    record.metadata.insert(k, v);
                }
                other => {
                    return Err(Error::invalid(format!(
                        "metadata {k:?}: values must be strings or null, got {other}"
                    )))
                }
            }
        }
        if !self.store.update(&record)? {
            return Err(Error::not_found(id));
        }
        self.event(id, "metadata updated");
        self.get(id).await
    }

    /// `POST /sandboxes/{id}/pause`: freezes a running sandbox. 409 when it is not running.
    pub async fn pause(&self, id: &str) -> Result<(), Error> {
        let (mut record, container) = self.freezer_target(id, "Running", Error::not_running).await?;
        let (result, tries) = retry_transient(|| self.docker.pause(&container), tokio::time::sleep).await;
        self.freezer_result(id, "pause", result, tries, Error::not_running)?;
        record.phase = Phase::Paused;
        record.transition_at = now_ms();
        self.store.update(&record)?;
        self.event(id, &with_tries("paused", tries));
        Ok(())
    }

    /// `POST /sandboxes/{id}/resume`: thaws a paused sandbox. 409 when it is not paused.
    pub async fn resume(&self, id: &str) -> Result<(), Error> {
        let (mut record, container) = self.freezer_target(id, "Paused", Error::not_paused).await?;
        let (result, tries) = retry_transient(|| self.docker.unpause(&container), tokio::time::sleep).await;
        self.freezer_result(id, "resume", result, tries, Error::not_paused)?;
        record.phase = Phase::Ready;
        record.transition_at = now_ms();
        self.store.update(&record)?;
        self.event(id, &with_tries("resumed", tries));
        Ok(())
    }

    /// The record and container of a sandbox that is in `wanted` state now (asked of the
    /// engine), or `refused(id, state)`.
    async fn freezer_target(
        &self,
        id: &str,
        wanted: &str,
        refused: fn(&str, &str) -> Error,
    ) -> Result<(Record, String), Error> {
        let record = self.record(id)?;
        let container = match (&record.container, record.phase) {
            (Some(c), Phase::Ready | Phase::Paused) => c.clone(),
            _ => return Err(refused(id, "Pending")),
        };
        let live = self.docker.inspect(&container).await?;
        let state = status(&record, live.as_ref()).state;
        if state != wanted {
            self.observe(&record, live.as_ref());
            return Err(refused(id, &state));
        }
        Ok((record, container))
    }

    /// Maps the outcome of a freeze or thaw: a freezer that kept giving up is a 500 (and an
    /// event; the sandbox stays as it was), an engine that says the state changed meanwhile
    /// is `refused`'s 409.
    fn freezer_result(
        &self,
        id: &str,
        verb: &str,
        result: Result<(), DockerError>,
        tries: usize,
        refused: fn(&str, &str) -> Error,
    ) -> Result<(), Error> {
        match result {
            Ok(()) => Ok(()),
            Err(DockerError::Transient(m)) => {
                let failed = format!("{verb} failed after {tries} tries");
                self.event(id, &format!("{failed}: {m}"));
                tracing::warn!(sandbox = id, error = %m, "{failed}");
                Err(Error::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "SANDBOX::INTERNAL_ERROR",
                    failed,
                ))
            }
            // The state changed between the check and the call.
            Err(DockerError::Conflict(m)) => Err(Error {
                message: format!("cannot {verb} sandbox {id}: {m}"),
                ..refused(id, "")
            }),
            Err(other) => Err(other.into()),
        }
    }

    /// `POST /sandboxes/{id}/renew-expiration`.
    pub async fn renew(&self, id: &str, body: RenewExpiration) -> Result<RenewExpiration, Error> {
        let mut record = self.record(id)?;
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
        if record.expires_at.is_none() {
            return Err(Error::conflict(format!(
                "sandbox {id} was created for manual cleanup and has no expiry to renew"
            )));
        }
        record.expires_at = Some(at);
        if !self.store.update(&record)? {
            return Err(Error::not_found(id));
        }
        self.expiry_changed.notify_one();
        self.event(id, &format!("expiry renewed to {}", format_ms(at)));
        Ok(RenewExpiration {
            expires_at: format_ms(at),
        })
    }

    /// `GET /sandboxes/{id}/endpoints/{port}`.
    pub fn endpoint(
        &self,
        id: &str,
        port: &str,
        use_server_proxy: bool,
        expires: Option<&str>,
    ) -> Result<Endpoint, Error> {
        let record = self.record(id)?;
        let port = parse_port(port)?;
        if expires.is_some() {
            return Err(Error::unsupported(
                "expires: signed endpoints need the Kubernetes gateway; the Docker runtime has none",
            ));
        }
        let token_headers = || BTreeMap::from([(TOKEN_HEADER.to_owned(), record.token.clone())]);
        if use_server_proxy {
            let server = self
                .server_endpoint
                .get()
                .ok_or_else(|| Error::internal("server endpoint unknown"))?;
            return Ok(Endpoint {
                endpoint: format!("{server}/v1/sandboxes/{id}/proxy/{port}"),
                headers: token_headers(),
            });
        }
        let route = route(&record, port)?;
        // As upstream's Docker runtime: every port but 8080 goes through execd's `/proxy`,
        // execd's own included (`host:P/proxy/44772`; upstream's e2e asserts that form, and
        // every SDK appends its paths to the endpoint). The server proxy reaches 44772
        // directly (`route.prefix` is empty there).
        let path = if route.execd {
            format!("/proxy/{port}")
        } else {
            String::new()
        };
        Ok(Endpoint {
            endpoint: format!("{}:{}{path}", self.settings.public_host, route.host_port),
            headers: if route.execd {
                token_headers()
            } else {
                BTreeMap::new()
            },
        })
    }

    /// Where the server proxy sends requests for `port` of sandbox `id`, and the sandbox's
    /// token (for the caller to check the client's credential against). A sandbox that is
    /// starting or paused is refused at once from its record (a frozen container accepts the
    /// connection and never answers), without a round trip to the engine.
    pub fn proxy_target(&self, id: &str, port: u16) -> Result<(ProxyTarget, String), Error> {
        let record = self.record(id)?;
        match record.phase {
            Phase::Pending => return Err(Error::not_running(id, "Pending")),
            Phase::Paused => return Err(Error::not_running(id, "Paused")),
            Phase::Ready => {}
        }
        let route = route(&record, port)?;
        let target = ProxyTarget {
            addr: SocketAddr::new(self.connect_ip(), route.host_port),
            prefix: route.prefix,
            token: route.execd.then(|| record.token.clone()),
        };
        Ok((target, record.token))
    }

    /// Why the server proxy could not reach sandbox `id`, when the reason is its state: the
    /// container has exited or vanished since sandboxd last looked. Asks the engine, but
    /// only after a connection failed.
    pub async fn unreachable(&self, id: &str) -> Option<Error> {
        let record = self.store.get(id).ok()??;
        let live = match &record.container {
            Some(c) => self.docker.inspect(c).await.ok()?,
            None => None,
        };
        self.observe(&record, live.as_ref());
        let state = status(&record, live.as_ref()).state;
        (state != "Running").then(|| Error::not_running(id, &state))
    }

    /// `GET /sandboxes/{id}/diagnostics/{logs|events}?scope=`: the last `tail` lines (by
    /// default all that are kept, or 2000 lines of logs) since `since` (epoch ms).
    pub async fn diagnostics(
        &self,
        id: &str,
        kind: &str,
        scope: &str,
        tail: Option<usize>,
        since: Option<i64>,
    ) -> Result<DiagnosticContent, Error> {
        let default = if kind == "logs" { LOG_LINES } else { EVENT_LINES };
        let (content, truncated) = self
            .diagnostic_text(id, kind, tail.unwrap_or(default), since)
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
    ) -> Result<String, Error> {
        let default = if kind == "logs" {
            PLAIN_LOG_LINES
        } else {
            PLAIN_EVENT_LINES
        };
        Ok(self
            .diagnostic_text(id, kind, tail.unwrap_or(default), since)
            .await?
            .0)
    }

    /// Logs (the container's output) or events (sandboxd's event log for the sandbox): the
    /// last `tail` lines at or after `since`, and whether earlier ones were left out.
    async fn diagnostic_text(
        &self,
        id: &str,
        kind: &str,
        tail: usize,
        since: Option<i64>,
    ) -> Result<(String, bool), Error> {
        let record = self.record(id)?;
        match kind {
            "logs" => match &record.container {
                Some(c) => {
                    // Docker takes whole seconds: round down, so nothing at `since` is lost.
                    let since = since.map(|ms| ms.div_euclid(1000));
                    let text = self.docker.logs(c, tail, since).await?;
                    let truncated = text.lines().count() >= tail;
                    Ok((text, truncated))
                }
                None => Ok((String::new(), false)),
            },
            "events" => {
                let events: Vec<(i64, String)> = self
                    .store
                    .events(id)?
                    .into_iter()
                    .filter(|(at, _)| since.is_none_or(|s| *at >= s))
                    .collect();
                let skip = events.len().saturating_sub(tail);
                let mut text = String::new();
                for (at, message) in &events[skip..] {
                    text.push_str(&format!("{} {message}\n", format_ms(*at)));
                }
                Ok((text, skip > 0))
            }
            other => Err(Error::not_found(&format!("{id}/diagnostics/{other}"))),
        }
    }

    /// At start: adopt sandboxes whose containers still exist, forget those whose containers
    /// vanished, remove expired ones, half-created ones and containers nobody owns.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let live = self.docker.list(&self.store.instance).await?;
        let now = now_ms();
        let (mut adopted, mut forgotten, mut removed) = (0, 0, 0);
        for record in self.store.all()? {
            let container = live
                .get(&record.id)
                .map(|(c, _)| c.clone())
                .or(record.container.clone());
            let exists = live.contains_key(&record.id);
            if !exists {
                self.store.remove(&record.id)?;
                forgotten += 1;
            } else if record.phase == Phase::Pending || record.expires_at.is_some_and(|t| t <= now) {
                if let Some(c) = container {
                    self.docker.remove(&c).await?;
                }
                self.store.remove(&record.id)?;
                removed += 1;
            } else {
                self.observe(&record, live.get(&record.id).map(|(_, l)| l));
                adopted += 1;
            }
        }
        for (id, (container, _)) in &live {
            if self.store.get(id)?.is_none() {
                self.docker.remove(container).await?;
                removed += 1;
            }
        }
        self.docker.prune_agent_volumes().await;
        tracing::info!(adopted, forgotten, removed, "reconciled with docker");
        self.expiry_changed.notify_one();
        Ok(())
    }

    /// Deletes sandboxes when they expire. Runs until the process ends.
    pub async fn run_expiry(&self) {
        loop {
            let now = now_ms();
            match self.store.expired(now) {
                Ok(ids) => {
                    for id in ids {
                        self.expire(&id).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read expiries"),
            }
            let wait = match self.store.next_expiry() {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(0, 60_000) as u64),
                _ => Duration::from_secs(60),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.expiry_changed.notified() => {}
            }
        }
    }

    async fn expire(&self, id: &str) {
        // Re-read: a renew may have moved it since the query.
        let Ok(Some(record)) = self.store.get(id) else {
            return;
        };
        if record.expires_at.is_none_or(|t| t > now_ms()) {
            return;
        }
        if let Some(container) = &record.container {
            if let Err(e) = self.docker.remove(container).await {
                tracing::error!(sandbox = id, error = %e, "cannot remove expired sandbox; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            }
        }
        let _ = self.store.remove(id);
        tracing::info!(sandbox = id, "sandbox expired and was removed");
    }
}

/// How a sandbox port is reached from the host.
struct Route {
    /// The published host port: execd's, or 8080's.
    host_port: u16,
    /// Path prefix there: `/proxy/<port>` when execd relays the port.
    prefix: String,
    /// Whether the target is execd (which needs the sandbox token).
    execd: bool,
}

/// 8080 is published itself; 44772 is execd; any other port goes through execd's `/proxy`.
fn route(record: &Record, port: u16) -> Result<Route, Error> {
    let unpublished = || {
        Error::conflict(format!(
            "sandbox {} has no published ports (not running)",
            record.id
        ))
    };
    let execd_port = || record.execd_port.ok_or_else(unpublished);
    Ok(match port {
        docker::HTTP_PORT => Route {
            host_port: record.http_port.ok_or_else(unpublished)?,
            prefix: String::new(),
            execd: false,
        },
        docker::EXECD_PORT => Route {
            host_port: execd_port()?,
            prefix: String::new(),
            execd: true,
        },
        other => Route {
            host_port: execd_port()?,
            prefix: format!("/proxy/{other}"),
            execd: true,
        },
    })
}

/// `1`..`65535`.
pub fn parse_port(text: &str) -> Result<u16, Error> {
    text.parse::<u16>()
        .ok()
        .filter(|&p| p != 0 && text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| Error::invalid(format!("port must be a number from 1 to 65535, got {text:?}")))
}

/// Runs `op` until it succeeds, fails for good, or has failed transiently
/// ([`DockerError::Transient`]) on each of its 5 tries, sleeping [`FREEZER_BACKOFF`] between
/// them (through `sleep`, so that tests need not wait). Returns the last outcome and the
/// number of tries.
async fn retry_transient<Op, Tried, Sleep, Slept>(
    mut op: Op,
    mut sleep: Sleep,
) -> (Result<(), DockerError>, usize)
where
    Op: FnMut() -> Tried,
    Tried: Future<Output = Result<(), DockerError>>,
    Sleep: FnMut(Duration) -> Slept,
    Slept: Future<Output = ()>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        let result = op().await;
        match (&result, FREEZER_BACKOFF.get(tries - 1)) {
            (Err(DockerError::Transient(m)), Some(&pause)) => {
                tracing::debug!(tries, error = %m, "transient freezer failure; retrying");
                sleep(pause).await;
            }
            _ => return (result, tries),
        }
    }
}

/// `paused`, or `paused (after 3 tries)`.
fn with_tries(what: &str, tries: usize) -> String {
    if tries == 1 {
        what.to_owned()
    } else {
        format!("{what} (after {tries} tries)")
    }
}

fn running() -> Live {
    Live {
        status: "running".into(),
        exit_code: None,
        oom_killed: false,
        error: None,
    }
}

/// The API view of a sandbox.
fn view(record: &Record, live: Option<&Live>) -> Sandbox {
    Sandbox {
        id: record.id.clone(),
        image: Some(ImageSpec {
            uri: record.image.clone(),
            auth: None,
        }),
        platform: record.platform.clone(),
        status: status(record, live),
        metadata: Some(record.metadata.clone()),
        entrypoint: record.entrypoint.clone(),
        expires_at: record.expires_at.map(format_ms),
        created_at: format_ms(record.created_at),
        extensions: Some(record.extensions.clone()).filter(|e| !e.is_empty()),
    }
}

/// Docker's container state → the contract's sandbox state.
fn status(record: &Record, live: Option<&Live>) -> SandboxStatus {
    let at = Some(format_ms(record.transition_at));
    let s = |state: &str, reason: &str, message: Option<String>| SandboxStatus {
        state: state.to_owned(),
        reason: Some(reason.to_owned()),
        message,
        last_transition_at: at.clone(),
    };
    if record.phase == Phase::Pending {
        return s("Pending", "SANDBOX_STARTING", None);
    }
    let Some(live) = live else {
        return s(
            "Failed",
            "CONTAINER_GONE",
            Some("the container was removed outside sandboxd".into()),
        );
    };
    match live.status.as_str() {
        "running" | "restarting" => s("Running", "CONTAINER_RUNNING", None),
        "paused" => s("Paused", "CONTAINER_PAUSED", None),
        "created" => s("Pending", "CONTAINER_CREATED", None),
        "removing" => s("Stopping", "CONTAINER_REMOVING", None),
        "exited" if live.exit_code == Some(0) => s("Terminated", "CONTAINER_EXITED", None),
        "exited" | "dead" => {
            let mut message = format!("the container exited with code {}", live.exit_code.unwrap_or(-1));
            if live.oom_killed {
                message.push_str(" (killed for exceeding its memory limit)");
            }
            if let Some(e) = &live.error {
                message.push_str(&format!(": {e}"));
            }
            s("Failed", "CONTAINER_EXITED_ERROR", Some(message))
        }
        other => s(
            "Unknown",
            "CONTAINER_STATE_UNKNOWN",
            Some(format!("docker reports {other:?}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(phase: Phase) -> Record {
        Record {
            id: "id".into(),
            container: Some("c".into()),
            image: "img".into(),
            entrypoint: vec!["x".into()],
            metadata: BTreeMap::new(),
            extensions: BTreeMap::new(),
            platform: None,
            token: "t".into(),
            created_at: 0,
            expires_at: None,
            execd_port: None,
            http_port: None,
            phase,
            transition_at: 0,
        }
    }

    fn live(status: &str, code: Option<i64>) -> Live {
        Live {
            status: status.into(),
            exit_code: code,
            oom_killed: false,
            error: None,
        }
    }

    #[test]
    fn docker_states_map_as_the_contract_says() {
        let ready = record(Phase::Ready);
        let state = |l: Option<Live>| status(&ready, l.as_ref()).state;
        assert_eq!(state(Some(live("running", None))), "Running");
        assert_eq!(state(Some(live("restarting", None))), "Running");
        assert_eq!(state(Some(live("paused", None))), "Paused");
        assert_eq!(state(Some(live("created", None))), "Pending");
        assert_eq!(state(Some(live("exited", Some(0)))), "Terminated");
        assert_eq!(state(Some(live("exited", Some(137)))), "Failed");
        assert_eq!(state(Some(live("dead", None))), "Failed");
        assert_eq!(state(None), "Failed");
        assert_eq!(status(&record(Phase::Pending), None).state, "Pending");
        let failed = status(&ready, Some(&live("exited", Some(137))));
        assert_eq!(failed.reason.as_deref(), Some("CONTAINER_EXITED_ERROR"));
        assert!(failed.message.unwrap().contains("137"));
    }

    /// Retries a pause that fails with `error` `failures` times and then succeeds; returns
    /// the outcome, the tries and the pauses slept between them.
    async fn retried(
        failures: usize,
        error: fn() -> DockerError,
    ) -> (Result<(), DockerError>, usize, Vec<u64>) {
        let mut calls = 0;
        let mut slept = Vec::new();
        let (result, tries) = retry_transient(
            || {
                calls += 1;
                let outcome = if calls <= failures { Err(error()) } else { Ok(()) };
                std::future::ready(outcome)
            },
            |pause: Duration| {
                slept.push(pause.as_millis() as u64);
                std::future::ready(())
            },
        )
        .await;
        assert_eq!(calls, tries);
        (result, tries, slept)
    }

    fn unable_to_freeze() -> DockerError {
        DockerError::Transient("OCI runtime pause failed: unable to freeze".into())
    }

    #[tokio::test]
    async fn issue19_a_transient_freeze_failure_is_retried_with_backoff() {
        let (result, tries, slept) = retried(2, unable_to_freeze).await;
        assert!(result.is_ok());
        assert_eq!((tries, slept), (3, vec![100, 200]));
    }

    #[tokio::test]
    async fn issue19_a_freeze_that_keeps_failing_gives_up_after_5_tries() {
        let (result, tries, slept) = retried(usize::MAX, unable_to_freeze).await;
        assert!(matches!(result, Err(DockerError::Transient(_))));
        assert_eq!((tries, slept), (5, vec![100, 200, 400, 800]));
    }

    #[tokio::test]
    async fn other_freezer_errors_are_not_retried() {
        let (result, tries, slept) =
            retried(usize::MAX, || DockerError::Engine("no such container".into())).await;
        assert!(matches!(result, Err(DockerError::Engine(_))));
        assert_eq!((tries, slept), (1, vec![]));
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("44772").unwrap(), 44772);
        for bad in ["0", "65536", "+80", "", "http"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }
}
