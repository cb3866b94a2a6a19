//! The image pull Secret of a sandbox whose create carried `image.auth` (design §16.2): a
//! `kubernetes.io/dockerconfigjson` Secret `sbx-<id>-pull` holding the credentials for the
//! image's registry, named by the pod's `imagePullSecrets`. Pure: no client, no I/O.
//!
//! The credentials exist only in this Secret (and the request that made it): they are never
//! logged, and the Secret goes with the pod (an `ownerReference`, as the token's Secret).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

use super::objects::Objects;
use crate::orchestrator::runtime::{RegistryAuth, RuntimeError, SandboxSpec};

/// The Secret type the kubelet reads registry credentials from.
pub const PULL_SECRET_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// Its one key.
pub const PULL_SECRET_KEY: &str = ".dockerconfigjson";
/// The key Docker Hub's credentials go under (what `kubectl create secret docker-registry`
/// writes by default, and what the kubelet matches `docker.io` images against).
pub const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// The pull Secret's name.
pub fn pull_secret_name(id: &str) -> String {
    format!("sbx-{id}-pull")
}

/// The registry an image reference pulls from, as Docker reads it: the first path component
/// when it has a `.` or a `:` or is `localhost`, else Docker Hub.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => DOCKER_HUB,
    }
}

/// `{"auths": {<registry>: {"username", "password"}}}` for `image`.
fn docker_config(image: &str, auth: &RegistryAuth) -> Result<Vec<u8>, RuntimeError> {
    let config = serde_json::json!({
        "auths": {
            registry_of(image): {"username": auth.username, "password": auth.password}
        }
    });
    serde_json::to_vec(&config).map_err(|e| RuntimeError::Engine {
        op: "encode the image pull secret",
        message: e.to_string(),
    })
}

impl Objects {
    /// The pull Secret of `spec`, `None` without `image_auth`.
    pub fn pull_secret(&self, spec: &SandboxSpec) -> Result<Option<Secret>, RuntimeError> {
        let Some(auth) = &spec.image_auth else {
            return Ok(None);
        };
        Ok(Some(Secret {
            metadata: ObjectMeta {
                name: Some(pull_secret_name(&spec.id)),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.system_labels(&spec.id)),
                ..Default::default()
            },
            type_: Some(PULL_SECRET_TYPE.into()),
            data: Some(BTreeMap::from([(
                PULL_SECRET_KEY.to_owned(),
                ByteString(docker_config(&spec.image, auth)?),
            )])),
            ..Default::default()
        }))
    }

    /// The pod's `imagePullSecrets`: the pull Secret when the spec has credentials.
    pub fn image_pull_secrets(spec: &SandboxSpec) -> Option<Vec<LocalObjectReference>> {
        spec.image_auth.as_ref().map(|_| {
            vec![LocalObjectReference {
                name: pull_secret_name(&spec.id),
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn spec(image: &str) -> SandboxSpec {
        SandboxSpec {
            image_auth: Some(RegistryAuth {
                username: "robot".into(),
                password: "s3cr3t".into(),
            }),
            ..SandboxSpec::for_test("abc", image, &["sleep", "1"])
        }
    }

    #[test]
    fn registries_are_read_as_docker_reads_them() {
        for (image, registry) in [
            ("python:3.12", DOCKER_HUB),
            ("library/python", DOCKER_HUB),
            ("someone/app:1", DOCKER_HUB),
            ("ghcr.io/org/app:1", "ghcr.io"),
            ("registry.local:5000/app", "registry.local:5000"),
            ("localhost/app", "localhost"),
            ("127.0.0.1:5001/prepull-auth:1", "127.0.0.1:5001"),
        ] {
            assert_eq!(registry_of(image), registry, "{image}");
        }
    }

    #[test]
    fn issue18_image_auth_becomes_a_dockerconfigjson_secret_the_pod_pulls_with() {
        let s = spec("ghcr.io/org/app:1");
        let secret = Objects::for_test().pull_secret(&s).unwrap().unwrap();
        let v = serde_json::to_value(&secret).unwrap();
        assert_eq!(v["metadata"]["name"], "sbx-abc-pull");
        assert_eq!(v["metadata"]["namespace"], "sbx");
        assert_eq!(v["metadata"]["labels"]["opensandbox.io/id"], "abc");
        assert_eq!(v["metadata"]["labels"]["sandboxd.io/instance"], "inst1");
        assert_eq!(v["type"], "kubernetes.io/dockerconfigjson");
        let config: Value = serde_json::from_slice(&secret.data.unwrap()[PULL_SECRET_KEY].0).unwrap();
        assert_eq!(
            config,
            json!({"auths": {"ghcr.io": {"username": "robot", "password": "s3cr3t"}}})
        );
        assert_eq!(
            serde_json::to_value(Objects::image_pull_secrets(&s)).unwrap(),
            json!([{"name": "sbx-abc-pull"}])
        );
        let pod = serde_json::to_value(Objects::for_test().pod(&s).unwrap()).unwrap();
        assert_eq!(pod["spec"]["imagePullSecrets"], json!([{"name": "sbx-abc-pull"}]));
        assert!(
            !pod.to_string().contains("s3cr3t") && !format!("{s:?}").contains("s3cr3t"),
            "the password is in the Secret only (and never in a Debug line)"
        );
    }

    #[test]
    fn no_auth_no_pull_secret() {
        let s = SandboxSpec::for_test("abc", "python:3.12", &["sleep", "1"]);
        assert!(Objects::for_test().pull_secret(&s).unwrap().is_none());
        assert!(Objects::image_pull_secrets(&s).is_none());
        let pod = serde_json::to_value(Objects::for_test().pod(&s).unwrap()).unwrap();
        assert!(pod["spec"].get("imagePullSecrets").is_none());
    }
}
