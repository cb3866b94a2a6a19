//! The Docker side of diagnostics: the engine's event stream for this sandboxd's containers,
//! the containers it manages (each one's role told by its labels), one-shot stats and log
//! streams. Part of the Docker runtime, the only bollard user; async.

use std::collections::HashMap;

use bollard::models::{ContainerInspectResponse, ContainerStatsResponse, ContainerSummary, EventMessage};
use bollard::query_parameters::{
    EventsOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder, StatsOptionsBuilder,
};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;

use super::{classify, observed, LABEL_ID, LABEL_INSTANCE, LABEL_ROLE, ROLE_BUILD, ROLE_SANDBOX};
use crate::orchestrator::runtime::{
    ContainerInfo, ContainerRole, LogQuery, Resources, RuntimeError, RuntimeEvent, RuntimeEventKind, Usage,
};
use crate::wire::time::{now_ms, parse_ms};

/// What each kind of container is for, by the value of its [`LABEL_ROLE`]. A container of
/// this instance with another value (or none, past a sandbox of an older sandboxd) is not
/// sandboxd's to show. A new kind of container is one line here.
const ROLES: &[(&str, ContainerRole)] = &[
    (ROLE_SANDBOX, ContainerRole::Sandbox),
    (ROLE_BUILD, ContainerRole::TemplateBuild),
];

/// The engine's events sandboxd records.
const ACTIONS: [&str; 6] = ["start", "die", "oom", "kill", "pause", "unpause"];

/// How many containers are inspected at once for a list.
const INSPECT_AT_ONCE: usize = 8;

/// The role of a container with `labels`, if it is one sandboxd shows.
fn role(labels: &HashMap<String, String>) -> Option<ContainerRole> {
    match labels.get(LABEL_ROLE) {
        Some(value) => ROLES.iter().find(|(v, _)| v == value).map(|&(_, role)| role),
        // Sandboxes made before roles were labelled.
        None => labels.contains_key(LABEL_ID).then_some(ContainerRole::Sandbox),
    }
}

/// The engine's `/events` for containers of `instance`, from `since` (epoch ms).
pub(super) fn events(
    api: bollard::Docker,
    instance: &str,
    since: Option<i64>,
) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        ("label".to_owned(), vec![format!("{LABEL_INSTANCE}={instance}")]),
        (
            "event".to_owned(),
            ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
        ),
    ]);
    let mut options = EventsOptionsBuilder::default().filters(&filters);
    let since = since.map(|ms| format!("{}.{:09}", ms.div_euclid(1000), ms.rem_euclid(1000) * 1_000_000));
    if let Some(since) = &since {
        options = options.since(since);
    }
    api.events(Some(options.build()))
        .filter_map(|item| {
            std::future::ready(match item {
                Ok(message) => runtime_event(&message).map(Ok),
                Err(e) => Some(Err(classify("read the engine's events", e))),
            })
        })
        .boxed()
}

/// An engine event → a [`RuntimeEvent`]; `None` for actions sandboxd does not record.
fn runtime_event(message: &EventMessage) -> Option<RuntimeEvent> {
    let actor = message.actor.as_ref()?;
    let attributes = actor.attributes.clone().unwrap_or_default();
    // `exec_die` and the like carry a suffix; only the container's own actions count.
    let kind = match message.action.as_deref()? {
        "start" => RuntimeEventKind::Started,
        "die" => RuntimeEventKind::Died {
            code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        },
        "oom" => RuntimeEventKind::Oom,
        "kill" => RuntimeEventKind::Killed {
            signal: attributes.get("signal").cloned(),
        },
        "pause" => RuntimeEventKind::Paused,
        "unpause" => RuntimeEventKind::Unpaused,
        _ => return None,
    };
    let at = match (message.time_nano, message.time) {
        (Some(nanos), _) if nanos > 0 => nanos / 1_000_000,
        (_, Some(secs)) => secs * 1000,
        _ => now_ms(),
    };
    Some(RuntimeEvent {
        sandbox_id: attributes.get(LABEL_ID).cloned(),
        reference: actor.id.clone()?,
        at,
        kind,
    })
}

/// The engine's list of every container (running or not) that `filters` select.
pub(super) async fn list(
    api: &bollard::Docker,
    filters: &HashMap<String, Vec<String>>,
) -> Result<Vec<ContainerSummary>, RuntimeError> {
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(filters)
        .build();
    api.list_containers(Some(options))
        .await
        .map_err(|e| classify("list containers", e))
}

/// Every container of `instance` that has a role, inspected.
pub(super) async fn containers(
    api: &bollard::Docker,
    instance: &str,
) -> Result<Vec<ContainerInfo>, RuntimeError> {
    let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_INSTANCE}={instance}")])]);
    let listed = list(api, &filters).await?;
    let ids: Vec<String> = listed
        .into_iter()
        .filter(|c| c.labels.as_ref().and_then(role).is_some())
        .filter_map(|c| c.id)
        .collect();
    let inspected: Vec<Result<Option<ContainerInfo>, RuntimeError>> = futures_util::stream::iter(ids)
        .map(|id| async move { container(api, instance, &id).await })
        .buffered(INSPECT_AT_ONCE)
        .collect()
        .await;
    let mut out = Vec::with_capacity(inspected.len());
    for one in inspected {
        // Removed between the list and the inspect: gone, not an error.
        if let Some(info) = one? {
            out.push(info);
        }
    }
    Ok(out)
}

/// One container by id or name, when it is one of `instance`'s with a role.
pub(super) async fn container(
    api: &bollard::Docker,
    instance: &str,
    reference: &str,
) -> Result<Option<ContainerInfo>, RuntimeError> {
    match api.inspect_container(reference, None).await {
        Ok(info) => Ok(container_info(info, instance)),
        Err(e) => match classify("inspect the container", e) {
            RuntimeError::NotFound(_) => Ok(None),
            other => Err(other),
        },
    }
}

/// An inspected container → [`ContainerInfo`], when it belongs to `instance` and has a role.
fn container_info(info: ContainerInspectResponse, instance: &str) -> Option<ContainerInfo> {
    let config = info.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    if labels.get(LABEL_INSTANCE).map(String::as_str) != Some(instance) {
        return None;
    }
    let role = role(&labels)?;
    let state = info.state.unwrap_or_default();
    let status = state.status.map(|s| s.to_string()).unwrap_or_default();
    let host = info.host_config.unwrap_or_default();
    let ip = info
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|networks| {
            networks
                .into_values()
                .find_map(|n| n.ip_address.filter(|ip| !ip.is_empty()))
        });
    let time = |t: Option<String>| t.as_deref().and_then(parse_ms).filter(|&ms| ms > 0);
    Some(ContainerInfo {
        reference: info.id?,
        name: info.name.unwrap_or_default().trim_start_matches('/').to_owned(),
        role,
        sandbox_id: labels.get(LABEL_ID).cloned(),
        image: config.image.unwrap_or_default(),
        observed: observed(
            &status,
            state.exit_code,
            state.oom_killed.unwrap_or(false),
            state.error.filter(|e| !e.is_empty()),
        ),
        ip,
        created_at: time(info.created).unwrap_or(0),
        started_at: time(state.started_at),
        resources: Resources {
            nano_cpus: host.nano_cpus.filter(|&n| n > 0),
            memory: host.memory.filter(|&m| m > 0),
            pids: host.pids_limit.unwrap_or(0),
            ..Resources::default()
        },
    })
}

/// One `stats` sample (`stream=false`: the engine waits for a second reading, so the CPU
/// delta is in the one answer). `None` for a container that is not running.
pub(super) async fn usage(api: &bollard::Docker, reference: &str) -> Result<Option<Usage>, RuntimeError> {
    let options = StatsOptionsBuilder::default()
        .stream(false)
        .one_shot(false)
        .build();
    let mut stats = api.stats(reference, Some(options));
    match stats.next().await {
        Some(Ok(sample)) => Ok(usage_of(&sample, now_ms())),
        Some(Err(e)) => match classify("read the container's stats", e) {
            RuntimeError::NotFound(_) | RuntimeError::Conflict(_) => Ok(None),
            other => Err(other),
        },
        None => Ok(None),
    }
}

/// A stats sample → [`Usage`], the way `docker stats` computes it; `None` when the sample is
/// empty (a stopped container).
fn usage_of(s: &ContainerStatsResponse, sampled_at: i64) -> Option<Usage> {
    let cpu = s.cpu_stats.as_ref()?;
    let memory = s.memory_stats.as_ref()?;
    let used = memory.usage?;
    let total = |c: &bollard::models::ContainerCpuStats| c.cpu_usage.as_ref().and_then(|u| u.total_usage);
    let pre = s.precpu_stats.as_ref();
    let cpu_delta = total(cpu)
        .zip(pre.and_then(total))
        .map(|(now, then)| now.saturating_sub(then));
    let system_delta = cpu
        .system_cpu_usage
        .zip(pre.and_then(|p| p.system_cpu_usage))
        .map(|(now, then)| now.saturating_sub(then));
    let cpus = cpu.online_cpus.map(u64::from).or_else(|| {
        cpu.cpu_usage
            .as_ref()
            .and_then(|u| u.percpu_usage.as_ref())
            .map(|p| p.len() as u64)
    });
    let cpu_percent = match (cpu_delta, system_delta, cpus) {
        (Some(c), Some(sys), Some(n)) if sys > 0 => c as f64 / sys as f64 * n as f64 * 100.0,
        _ => 0.0,
    };
    // Page cache the kernel can drop is not counted (cgroup v2: inactive_file; v1:
    // total_inactive_file), as `docker stats` does.
    let cache = memory
        .stats
        .as_ref()
        .and_then(|st| {
            st.get("inactive_file")
                .or_else(|| st.get("total_inactive_file"))
                .copied()
        })
        .unwrap_or(0);
    Some(Usage {
        cpu_percent: (cpu_percent * 100.0).round() / 100.0,
        memory_bytes: used.saturating_sub(cache),
        memory_limit_bytes: memory.limit.filter(|&l| l > 0),
        pids: s.pids_stats.as_ref().and_then(|p| p.current),
        sampled_at,
    })
}

/// The container's output, stdout and stderr interleaved.
pub(super) fn log_stream(
    api: &bollard::Docker,
    reference: &str,
    query: LogQuery,
) -> BoxStream<'static, Result<Bytes, RuntimeError>> {
    let tail = query.tail.map_or_else(|| "all".to_owned(), |t| t.to_string());
    let mut options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .follow(query.follow)
        .timestamps(query.timestamps)
        .tail(&tail);
    if let Some(since) = query.since {
        // The engine's parameter is 32-bit seconds; clamp rather than wrap.
        options = options.since(since.clamp(0, i64::from(i32::MAX)) as i32);
    }
    api.logs(reference, Some(options.build()))
        .map(|chunk| {
            chunk
                .map(|c| c.into_bytes())
                .map_err(|e| classify("read logs", e))
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use bollard::models::{
        ContainerConfig, ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats, ContainerPidsStats,
        ContainerState, EventActor, HostConfig,
    };

    use super::*;
    use crate::orchestrator::runtime::Observed;

    fn message(action: &str, attributes: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("c1".into()),
                attributes: Some(
                    attributes
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
            }),
            time: Some(1_700_000_000),
            time_nano: Some(1_700_000_000_123_456_789),
            ..Default::default()
        }
    }

    #[test]
    fn engine_events_become_runtime_events() {
        let die = runtime_event(&message("die", &[(LABEL_ID, "s1"), ("exitCode", "3")])).unwrap();
        assert_eq!(
            die,
            RuntimeEvent {
                sandbox_id: Some("s1".into()),
                reference: "c1".into(),
                at: 1_700_000_000_123,
                kind: RuntimeEventKind::Died { code: Some(3) },
            }
        );
        let kill = runtime_event(&message("kill", &[("signal", "9")])).unwrap();
        assert_eq!(
            (kill.sandbox_id, kill.kind),
            (
                None,
                RuntimeEventKind::Killed {
                    signal: Some("9".into())
                }
            )
        );
        for (action, kind) in [
            ("start", RuntimeEventKind::Started),
            ("oom", RuntimeEventKind::Oom),
            ("pause", RuntimeEventKind::Paused),
            ("unpause", RuntimeEventKind::Unpaused),
        ] {
            assert_eq!(runtime_event(&message(action, &[])).unwrap().kind, kind);
        }
        assert_eq!(runtime_event(&message("exec_die", &[])), None);
        assert_eq!(runtime_event(&message("destroy", &[])), None);
        let mut old = message("die", &[]);
        old.time_nano = None;
        assert_eq!(runtime_event(&old).unwrap().at, 1_700_000_000_000);
    }

    #[test]
    fn roles_come_from_labels_and_other_containers_are_not_shown() {
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(role(&labels(&[(LABEL_ID, "s1")])), Some(ContainerRole::Sandbox));
        assert_eq!(
            role(&labels(&[(LABEL_ID, "s1"), (LABEL_ROLE, ROLE_SANDBOX)])),
            Some(ContainerRole::Sandbox)
        );
        assert_eq!(
            role(&labels(&[
                (LABEL_ROLE, ROLE_BUILD),
                ("sandboxd.io/template", "t")
            ])),
            Some(ContainerRole::TemplateBuild)
        );
        // A container someone made by hand from a built image.
        assert_eq!(role(&labels(&[(LABEL_ROLE, "template-image")])), None);
        assert_eq!(role(&labels(&[("io.execd.sandboxd.agent", "filler")])), None);
        let inspected = |instance: &str| ContainerInspectResponse {
            id: Some("abc".into()),
            name: Some("/sandbox-s1".into()),
            config: Some(ContainerConfig {
                image: Some("busybox".into()),
                labels: Some(labels(&[(LABEL_ID, "s1"), (LABEL_INSTANCE, instance)])),
                ..Default::default()
            }),
            state: Some(ContainerState {
                status: Some(bollard::models::ContainerStateStatusEnum::EXITED),
                exit_code: Some(137),
                oom_killed: Some(true),
                started_at: Some("2026-03-25T10:01:13.5Z".into()),
                ..Default::default()
            }),
            created: Some("2026-03-25T10:01:12Z".into()),
            host_config: Some(HostConfig {
                memory: Some(64 << 20),
                nano_cpus: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let info = container_info(inspected("me"), "me").unwrap();
        assert_eq!(info.name, "sandbox-s1");
        assert_eq!(info.sandbox_id.as_deref(), Some("s1"));
        assert_eq!(
            info.observed,
            Observed::Exited {
                code: Some(137),
                oom: true,
                message: None
            }
        );
        assert_eq!(info.resources.memory, Some(64 << 20));
        assert_eq!(info.resources.nano_cpus, None);
        assert_eq!(info.started_at, parse_ms("2026-03-25T10:01:13.5Z"));
        assert!(container_info(inspected("someone-else"), "me").is_none());
    }

    #[test]
    fn usage_is_computed_as_docker_stats_does() {
        let cpu = |total, system| ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage {
                total_usage: Some(total),
                ..Default::default()
            }),
            system_cpu_usage: Some(system),
            online_cpus: Some(4),
            ..Default::default()
        };
        let sample = ContainerStatsResponse {
            cpu_stats: Some(cpu(3_000, 20_000)),
            precpu_stats: Some(cpu(1_000, 10_000)),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(10_000),
                limit: Some(64 << 20),
                stats: Some(HashMap::from([("inactive_file".to_owned(), 1_000)])),
                ..Default::default()
            }),
            pids_stats: Some(ContainerPidsStats {
                current: Some(3),
                limit: None,
            }),
            ..Default::default()
        };
        let u = usage_of(&sample, 5).unwrap();
        assert_eq!(u.cpu_percent, 80.0);
        assert_eq!(u.memory_bytes, 9_000);
        assert_eq!(u.memory_limit_bytes, Some(64 << 20));
        assert_eq!((u.pids, u.sampled_at), (Some(3), 5));
        assert!(usage_of(&ContainerStatsResponse::default(), 5).is_none());
    }
}
