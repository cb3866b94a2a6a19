//! The containers view (design §14.3, seed 004): every container sandboxd manages, whatever
//! its role (idle warm-pool members and template builds included), with its state, limits
//! and (for one container) a usage sample; and its output.
//! An admin sees them all; anyone else only the containers of their own sandboxes (someone
//! else's is not found, like a missing one).

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::Service;
use crate::orchestrator::auth::{Principal, Role};
use crate::orchestrator::error::{Error, Kind};
use crate::orchestrator::runtime::{ContainerInfo, ContainerRole, LogQuery, Observed, RuntimeError, Usage};
use crate::orchestrator::store::MemberRow;
use crate::wire::events::{
    ContainerInfo as WireContainer, ContainerResources, ContainerUsage, ListContainersResponse,
};
use crate::wire::time::format_ms;

/// The list filter of `GET /containers`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContainerFilter {
    /// Only containers in this state (case-insensitive).
    pub state: Option<String>,
    /// Only this pool's members (idle or allocated).
    pub pool_ref: Option<String>,
    /// Only this sandbox's.
    pub sandbox_id: Option<String>,
    /// 1-based page.
    pub page: u32,
    /// Items per page.
    pub page_size: u32,
}

/// The shortest container id accepted (a prefix shorter than Docker's short id is ambiguous).
const MIN_ID_LEN: usize = 12;

impl Service {
    /// `GET /containers`: the containers `caller` may see, newest first, one page.
    pub async fn list_containers(
        &self,
        filter: ContainerFilter,
        caller: &Principal,
    ) -> Result<ListContainersResponse, Error> {
        let owners = self.sandbox_owners().await?;
        let members = self.pool_members().await?;
        let mut containers: Vec<Pooled> = self
            .runtime
            .containers()
            .await?
            .into_iter()
            .map(|c| pooled(c, &members))
            .filter(|(c, _)| visible(c, &owners, caller))
            .filter(|(c, _)| filter.sandbox_id.is_none() || c.sandbox_id == filter.sandbox_id)
            .filter(|(_, pool)| filter.pool_ref.is_none() || *pool == filter.pool_ref)
            .filter(|(c, _)| {
                filter
                    .state
                    .as_deref()
                    .is_none_or(|s| state_name(&c.observed).eq_ignore_ascii_case(s))
            })
            .collect();
        containers.sort_by(|(a, _), (b, _)| {
            b.created_at
                .cmp(&a.created_at)
                .then(a.reference.cmp(&b.reference))
        });
        let kind = self.runtime.kind().as_str();
        let items = containers
            .iter()
            .map(|(c, pool)| wire(c, pool.clone(), kind, None))
            .collect();
        let (items, pagination) = super::paginate(items, filter.page, filter.page_size);
        Ok(ListContainersResponse { items, pagination })
    }

    /// `GET /containers/{id}`: one container, with a usage sample when it runs. `id` is a
    /// container id (at least 12 hex digits), a container name or a sandbox id.
    pub async fn container(&self, id: &str, caller: &Principal) -> Result<WireContainer, Error> {
        let (info, pool) = self.visible_container(id, caller).await?;
        let usage = match info.observed {
            Observed::Running => match self.runtime.usage(&info.reference).await {
                Ok(usage) => usage,
                Err(e) => {
                    tracing::warn!(container = %info.reference, error = %e, "cannot sample the container's usage");
                    None
                }
            },
            _ => None,
        };
        Ok(wire(&info, pool, self.runtime.kind().as_str(), usage))
    }

    /// `GET /containers/{id}/logs`: the container's output, as the runtime streams it.
    pub async fn container_logs(
        &self,
        id: &str,
        query: LogQuery,
        caller: &Principal,
    ) -> Result<BoxStream<'static, Result<Bytes, RuntimeError>>, Error> {
        let (info, _) = self.visible_container(id, caller).await?;
        Ok(self.runtime.log_stream(&info.reference, query))
    }

    /// The container `id` names, if `caller` may see it.
    async fn visible_container(&self, id: &str, caller: &Principal) -> Result<Pooled, Error> {
        let not_found = || Error::not_found(Kind::Container, id);
        if id.is_empty()
            || id.len() > 256
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(Error::invalid(format!(
                "containerId must be a container id, a container name or a sandbox id, got {id:?}"
            )));
        }
        // A sandbox id names its container.
        let reference = match self.store.get(id).await? {
            Some(record) => match record.instance {
                Some(instance) => instance.reference,
                None => return Err(not_found()),
            },
            None if id.len() < MIN_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                return Err(Error::invalid(format!(
                    "containerId {id:?} is too short: give at least {MIN_ID_LEN} hex digits of a container id"
                )))
            }
            None => id.to_owned(),
        };
        let info = self.runtime.container(&reference).await?.ok_or_else(not_found)?;
        let (info, pool) = pooled(info, &self.pool_members().await?);
        if visible(&info, &self.sandbox_owners().await?, caller) {
            Ok((info, pool))
        } else {
            Err(not_found())
        }
    }

    /// Every warm-pool member, by its id (the sandbox label on its container).
    async fn pool_members(&self) -> Result<BTreeMap<String, MemberRow>, Error> {
        Ok(self
            .store
            .members()
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .map(|m| (m.id.clone(), m))
            .collect())
    }

    /// Every sandbox's owner, by id.
    async fn sandbox_owners(&self) -> Result<BTreeMap<String, String>, Error> {
        Ok(self
            .store
            .all()
            .await?
            .into_iter()
            .filter_map(Result::ok)
            .map(|r| (r.id, r.owner))
            .collect())
    }
}

/// A container and the warm pool it belongs to, if any.
type Pooled = (ContainerInfo, Option<String>);

/// A warm pool's member is made as a sandbox labelled with its member id: while idle it is a
/// `pool-member`; once allocated, the sandbox it became (the mapping lives in the store).
fn pooled(mut c: ContainerInfo, members: &BTreeMap<String, MemberRow>) -> Pooled {
    let member = c.sandbox_id.as_ref().and_then(|id| members.get(id));
    let Some(member) = member.filter(|_| c.role == ContainerRole::Sandbox) else {
        return (c, None);
    };
    match &member.sandbox_id {
        Some(sandbox) => c.sandbox_id = Some(sandbox.clone()),
        None => {
            c.role = ContainerRole::PoolMember;
            c.sandbox_id = None;
        }
    }
    (c, Some(member.pool.clone()))
}

/// Whether `caller` sees container `c`: an admin every one; anyone else the containers of
/// sandboxes they own.
fn visible(c: &ContainerInfo, owners: &BTreeMap<String, String>, caller: &Principal) -> bool {
    if caller.role == Role::Admin {
        return true;
    }
    c.role == ContainerRole::Sandbox
        && c.sandbox_id
            .as_ref()
            .and_then(|id| owners.get(id))
            .is_some_and(|owner| caller.may_see(owner))
}

/// The state a container is listed with.
pub(super) fn state_name(o: &Observed) -> &'static str {
    match o {
        Observed::Starting => "Created",
        Observed::Running => "Running",
        Observed::Paused => "Paused",
        Observed::Stopping => "Removing",
        Observed::Exited { .. } | Observed::Gone => "Exited",
        Observed::Unknown(_) => "Unknown",
    }
}

/// A container on the wire.
fn wire(c: &ContainerInfo, pool_ref: Option<String>, runtime: &str, usage: Option<Usage>) -> WireContainer {
    let (exit_code, oom_killed) = match &c.observed {
        Observed::Exited { code, oom, .. } => (*code, Some(*oom)),
        _ => (None, None),
    };
    WireContainer {
        id: c.reference.clone(),
        name: c.name.clone(),
        runtime: runtime.to_owned(),
        sandbox_id: c.sandbox_id.clone(),
        pool_ref,
        role: c.role.as_str().to_owned(),
        image: c.image.clone(),
        state: state_name(&c.observed).to_owned(),
        exit_code,
        oom_killed,
        ip: c.ip.clone(),
        created_at: format_ms(c.created_at),
        started_at: c.started_at.map(format_ms),
        resources: ContainerResources {
            cpu: c.resources.nano_cpus.map(cpus),
            memory: c.resources.memory,
        },
        usage: usage.map(|u| ContainerUsage {
            cpu_percent: u.cpu_percent,
            memory_bytes: u.memory_bytes,
            memory_limit_bytes: u.memory_limit_bytes,
            pids: u.pids,
            sampled_at: format_ms(u.sampled_at),
        }),
    }
}

/// Billionths of a CPU → `"1.5"`.
fn cpus(nano: i64) -> String {
    let text = format!("{:.3}", nano as f64 / 1e9);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::auth::AuthMethod;

    #[test]
    fn builds_are_for_admins_and_sandboxes_for_their_owners() {
        let container = |role, sandbox_id: Option<&str>| ContainerInfo {
            reference: "c".into(),
            name: "n".into(),
            role,
            sandbox_id: sandbox_id.map(Into::into),
            image: "i".into(),
            observed: Observed::Running,
            ip: None,
            created_at: 0,
            started_at: None,
            resources: Default::default(),
        };
        let caller = |id: &str, role| Principal {
            id: id.into(),
            role,
            method: AuthMethod::Bearer,
            token_id: None,
            expires_at: None,
        };
        let owners = BTreeMap::from([("s1".to_owned(), "alice".to_owned())]);
        let (alice, bob, admin) = (
            caller("alice", Role::User),
            caller("bob", Role::User),
            Principal::root(),
        );
        let hers = container(ContainerRole::Sandbox, Some("s1"));
        let build = container(ContainerRole::TemplateBuild, None);
        let orphan = container(ContainerRole::Sandbox, Some("gone"));
        assert!(visible(&hers, &owners, &alice) && visible(&hers, &owners, &admin));
        assert!(!visible(&hers, &owners, &bob));
        assert!(visible(&build, &owners, &admin) && !visible(&build, &owners, &alice));
        assert!(visible(&orphan, &owners, &admin) && !visible(&orphan, &owners, &alice));
    }

    #[test]
    fn cpus_are_written_plainly() {
        assert_eq!(cpus(1_000_000_000), "1");
        assert_eq!(cpus(500_000_000), "0.5");
        assert_eq!(cpus(1_250_000_000), "1.25");
    }
}
