//! Warm pools on Kubernetes, native mode (design §16.3): what a member pod carries and the
//! patches that move it. The pool's definition, its counts and the member-to-sandbox mapping
//! live in sandboxd's store (service `pools`); the cluster shows each member pod's pool and
//! state as labels, `sandboxd.io/pool=<name>` and `sandboxd.io/pool-state=warming|idle|
//! allocated`: `warming` at create, `idle` once its execd answers, `allocated` at acquire.
//!
//! Allocation is a JSON Patch (`application/json-patch+json`) whose `test` op requires
//! `idle`, then `allocated` and the sandbox's `opensandbox.io/id`: the API server applies it
//! atomically, so a second claimer gets 422 and can never take the same pod. A member pod
//! keeps its own id in its name (`sbx-<member id>`), which is what the service knows it by
//! ([`key`]), before and after allocation.
//!
//! The builders are pure; the two calls are async.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use sha2::{Digest as _, Sha256};

use super::{classify, objects, Kubernetes};
use crate::orchestrator::runtime::{Instance, RuntimeError};

/// Label: the warm pool a member pod belongs to.
pub const LABEL_POOL: &str = "sandboxd.io/pool";
/// Label: the member's state, [`WARMING`], [`IDLE`] or [`ALLOCATED`].
pub const LABEL_POOL_STATE: &str = "sandboxd.io/pool-state";
/// Created; its execd has not answered yet.
pub const WARMING: &str = "warming";
/// Its execd answered: it may be claimed.
pub const IDLE: &str = "idle";
/// Claimed for a sandbox.
pub const ALLOCATED: &str = "allocated";
/// The longest label value Kubernetes takes.
const LABEL_VALUE_MAX: usize = 63;
/// How much of a long pool name its label keeps, before `-` and a hash.
const LONG_NAME_PREFIX: usize = 52;

/// The [`LABEL_POOL`] value of pool `name`: the name itself when it fits a label value (63
/// characters), else its first 52 characters, `-` and 10 hex digits of its SHA-256, so that
/// two long names sharing a prefix stay apart. Pool names are DNS-1123 (checked at create),
/// so the value is a valid label value either way.
pub fn pool_label(name: &str) -> String {
    if name.len() <= LABEL_VALUE_MAX {
        return name.to_owned();
    }
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    format!("{}-{}", &name[..LONG_NAME_PREFIX], &digest[..10])
}

/// Marks the pod built for a member of pool `pool`: its pool, and the state `warming`.
pub fn label_member(pod: &mut Pod, pool: &str) {
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(LABEL_POOL.to_owned(), pool_label(pool));
    labels.insert(LABEL_POOL_STATE.to_owned(), WARMING.to_owned());
}

/// The JSON pointer of label `key`: `~` and `/` escaped (RFC 6901), so
/// `sandboxd.io/pool-state` is `/metadata/labels/sandboxd.io~1pool-state`.
fn label_path(key: &str) -> String {
    format!("/metadata/labels/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// The JSON Patch that claims an idle member pod for sandbox `sandbox_id`: fails (422) unless
/// the pod is `idle` now; then `allocated`, and labelled with the sandbox's id (`add` replaces
/// the member's own).
pub fn claim_patch(sandbox_id: &str) -> serde_json::Value {
    serde_json::json!([
        { "op": "test", "path": label_path(LABEL_POOL_STATE), "value": IDLE },
        { "op": "replace", "path": label_path(LABEL_POOL_STATE), "value": ALLOCATED },
        { "op": "add", "path": label_path(objects::LABEL_ID), "value": sandbox_id },
    ])
}

/// The JSON Patch that makes member `member` idle: after its warm-up, or when an allocated
/// one is returned as it is (`Noop`), when its id label goes back to its own.
pub fn idle_patch(member: &str) -> serde_json::Value {
    serde_json::json!([
        { "op": "replace", "path": label_path(LABEL_POOL_STATE), "value": IDLE },
        { "op": "add", "path": label_path(objects::LABEL_ID), "value": member },
    ])
}

/// The id the service knows a pod by: a pool member's own id (its pod's name without `sbx-`,
/// fixed for the pod's life, while `opensandbox.io/id` moves to the sandbox it is allocated
/// to), else its `opensandbox.io/id`. As on Docker, where the member's label never changes.
pub fn key(pod: &Pod) -> Option<String> {
    let labels = pod.metadata.labels.as_ref()?;
    if labels.contains_key(LABEL_POOL) {
        let name = pod.metadata.name.as_deref()?;
        return Some(name.strip_prefix("sbx-").unwrap_or(name).to_owned());
    }
    labels.get(objects::LABEL_ID).cloned()
}

impl Kubernetes {
    /// [`claim_patch`] on the member's pod. 422 (the `test` failed: another claimer took it,
    /// or it is no member) is [`RuntimeError::Conflict`]; 404 is `NotFound`.
    pub(super) async fn claim_member(
        &self,
        instance: &Instance,
        sandbox_id: &str,
    ) -> Result<(), RuntimeError> {
        match self
            .patch_json(&instance.reference, claim_patch(sandbox_id))
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 422 => Err(RuntimeError::Conflict(format!(
                "pod {} is not an idle pool member any more (claimed by another): {}",
                instance.reference, s.message
            ))),
            other => other.map(drop).map_err(|e| classify("claim the pool member", e)),
        }
    }

    /// [`idle_patch`] on the member's pod.
    pub(super) async fn mark_member_idle(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let name = &instance.reference;
        let member = name.strip_prefix("sbx-").unwrap_or(name);
        self.patch_json(name, idle_patch(member))
            .await
            .map(drop)
            .map_err(|e| classify("mark the pool member idle", e))
    }

    async fn patch_json(&self, pod: &str, patch: serde_json::Value) -> Result<Pod, kube::Error> {
        let patch: json_patch::Patch = serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
        self.pods()
            .patch(pod, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
    }
}

#[cfg(test)]
#[path = "pools_tests.rs"]
mod tests;
