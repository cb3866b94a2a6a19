//! A sandbox's persistent workspace on Kubernetes (`workspace.persistent`, design §16.2
//! "Pause"): the PersistentVolumeClaim `sbx-<id>-ws`, mounted at `/workspace`. It has no
//! `ownerReference` to the pod, so that it outlives it: a Rootfs pause deletes the pod and
//! keeps the claim, and the resume makes a pod with the same claim. It is deleted only with
//! the sandbox ([`Runtime::remove_workspace`](crate::orchestrator::runtime::Runtime)).
//!
//! The builders are pure (L0 tests below, L1 in `schema_tests.rs`); the two calls (create
//! unless it exists, delete unless gone) are async, on [`Kubernetes`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, PostParams};

use super::objects::Objects;
use super::{classify, gone_is_fine, Kubernetes};
use crate::orchestrator::runtime::{RuntimeError, SandboxSpec, WORKSPACE_DIR};

/// What a claim requests when `workspace.size` is not given.
pub const DEFAULT_SIZE: &str = "1Gi";
/// The pod's name for the claim's volume.
pub const VOLUME: &str = "workspace";

/// `sbx-<id>-ws`: the claim of sandbox `id`'s workspace.
pub fn claim_name(id: &str) -> String {
    format!("sbx-{id}-ws")
}

/// The claim of `spec`'s workspace (`None` without one): `ReadWriteOnce`, the size asked for
/// (bytes) or [`DEFAULT_SIZE`], the storage class when one is configured (else the cluster's
/// default), sandboxd's labels, and no owner.
pub fn claim(
    objects: &Objects,
    spec: &SandboxSpec,
    storage_class: Option<&str>,
) -> Option<PersistentVolumeClaim> {
    let workspace = spec.workspace?;
    let size = workspace
        .size_bytes
        .map_or_else(|| DEFAULT_SIZE.to_owned(), |b| b.to_string());
    Some(PersistentVolumeClaim {
        metadata: objects.meta(claim_name(&spec.id), spec),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), Quantity(size))])),
                ..Default::default()
            }),
            storage_class_name: storage_class.map(str::to_owned),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The pod's volume and the sandbox container's mount of `spec`'s workspace, if it has one.
pub fn volume(spec: &SandboxSpec) -> Option<(Volume, VolumeMount)> {
    spec.workspace?;
    Some((
        Volume {
            name: VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&spec.id),
                read_only: None,
            }),
            ..Default::default()
        },
        VolumeMount {
            name: VOLUME.into(),
            mount_path: WORKSPACE_DIR.into(),
            ..Default::default()
        },
    ))
}

impl Kubernetes {
    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.objects.namespace)
    }

    /// Creates `spec`'s workspace claim unless it exists (a Rootfs resume finds the one the
    /// sandbox had). Nothing without a workspace.
    pub(super) async fn ensure_workspace(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let Some(claim) = claim(&self.objects, spec, self.storage_class.as_deref()) else {
            return Ok(());
        };
        match self.claims().create(&PostParams::default(), &claim).await {
            Ok(_) => Ok(()),
            Err(e) => match classify("create the workspace claim", e) {
                RuntimeError::Conflict(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Deletes sandbox `id`'s workspace claim; already gone is fine.
    pub(super) async fn delete_workspace(&self, id: &str) -> Result<(), RuntimeError> {
        gone_is_fine(
            self.claims()
                .delete(&claim_name(id), &DeleteParams::default())
                .await
                .map(drop)
                .map_err(|e| classify("delete the workspace claim", e)),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::orchestrator::runtime::Workspace;

    fn spec(workspace: Option<Workspace>) -> SandboxSpec {
        SandboxSpec {
            workspace,
            ..SandboxSpec::for_test("abc", "python:3.12", &["sleep", "infinity"])
        }
    }

    #[test]
    fn the_claim_is_read_write_once_labelled_unowned_and_sized_as_asked() {
        let sized = spec(Some(Workspace {
            size_bytes: Some(10 << 30),
        }));
        let claim = serde_json::to_value(claim(&Objects::for_test(), &sized, Some("fast")).unwrap()).unwrap();
        assert_eq!(claim["metadata"]["name"], "sbx-abc-ws");
        assert_eq!(claim["metadata"]["namespace"], "sbx");
        assert_eq!(claim["metadata"]["labels"]["opensandbox.io/id"], "abc");
        assert_eq!(claim["metadata"]["labels"]["sandboxd.io/managed"], "true");
        assert_eq!(claim["metadata"]["labels"]["sandboxd.io/instance"], "inst1");
        // It must outlive the pod: no owner, ever.
        assert_eq!(claim["metadata"].get("ownerReferences"), None);
        assert_eq!(
            claim["spec"],
            json!({
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10737418240"}},
                "storageClassName": "fast",
            })
        );
    }

    #[test]
    fn without_a_size_or_class_the_claim_asks_1gi_of_the_default_class() {
        let claim = claim(&Objects::for_test(), &spec(Some(Workspace::default())), None).unwrap();
        let claim = serde_json::to_value(claim).unwrap();
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], DEFAULT_SIZE);
        assert_eq!(claim["spec"].get("storageClassName"), None);
    }

    #[test]
    fn no_workspace_no_claim_and_no_volume() {
        assert!(claim(&Objects::for_test(), &spec(None), Some("fast")).is_none());
        assert!(volume(&spec(None)).is_none());
        let pod = serde_json::to_value(Objects::for_test().pod(&spec(None)).unwrap()).unwrap();
        assert!(!pod.to_string().contains("sbx-abc-ws"));
    }

    #[test]
    fn the_pod_mounts_the_claim_at_workspace_in_the_sandbox_container_only() {
        let pod = Objects::for_test()
            .pod(&spec(Some(Workspace::default())))
            .unwrap();
        let pod: Value = serde_json::to_value(pod).unwrap();
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert!(volumes
            .contains(&json!({"name": "workspace", "persistentVolumeClaim": {"claimName": "sbx-abc-ws"}})));
        let sandbox = &pod["spec"]["containers"][0];
        assert_eq!(sandbox["name"], "sandbox");
        assert!(sandbox["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "workspace", "mountPath": "/workspace"})));
        let installer = &pod["spec"]["initContainers"][0];
        assert!(!installer.to_string().contains("/workspace"));
    }
}
