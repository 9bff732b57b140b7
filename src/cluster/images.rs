//! The image references of a pod spec, as the kubelet would hand them to containerd: every container,
//! init container and ephemeral container, normalised the way containerd's CRI plugin does
//! (`nginx` is `docker.io/library/nginx:latest`, a digest wins over a tag), duplicates dropped.
//! Workload kinds are reduced to the pod template they stamp out.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec};

use crate::cmd::warm::ImageRef;

/// An image field no registry client could pull. Reported, never fatal: one typo in one namespace
/// must not stop the rest of the cluster from being warmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidImage {
    /// `kind namespace/name container`, to find the object.
    pub object: String,
    pub reference: String,
    pub reason: String,
}

/// The images of one object, in the order of its containers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ObjectImages {
    pub images: Vec<ImageRef>,
    pub invalid: Vec<InvalidImage>,
}

/// The image fields of a pod spec: containers, then init containers, then ephemeral containers.
pub fn of_pod_spec(spec: &PodSpec, object: &str) -> ObjectImages {
    let containers = spec.containers.iter().map(|c| (c.name.as_str(), c.image.as_deref()));
    let init = spec.init_containers.iter().flatten().map(|c| (c.name.as_str(), c.image.as_deref()));
    let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| (c.name.as_str(), c.image.as_deref()));
    let mut out = ObjectImages::default();
    for (container, image) in containers.chain(init).chain(ephemeral) {
        // A container without an image is legal in a template a controller fills in later.
        let Some(raw) = image.map(str::trim).filter(|s| !s.is_empty()) else { continue };
        match ImageRef::parse(raw) {
            Ok(image) => {
                if !out.images.contains(&image) {
                    out.images.push(image);
                }
            }
            Err(e) => out.invalid.push(InvalidImage {
                object: format!("{object} {container}"),
                reference: raw.to_owned(),
                reason: format!("{e:#}"),
            }),
        }
    }
    out
}

/// A Kubernetes object kind whose pods the cluster runs: a pod itself or the pod template of a
/// workload controller.
pub trait Workload {
    /// The `kind` field, as the API spells it.
    const KIND: &'static str;
    fn pod_spec(&self) -> Option<&PodSpec>;
}

impl Workload for Pod {
    const KIND: &'static str = "Pod";
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()
    }
}

impl Workload for Deployment {
    const KIND: &'static str = "Deployment";
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl Workload for DaemonSet {
    const KIND: &'static str = "DaemonSet";
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl Workload for StatefulSet {
    const KIND: &'static str = "StatefulSet";
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl Workload for Job {
    const KIND: &'static str = "Job";
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }
}

impl Workload for CronJob {
    const KIND: &'static str = "CronJob";
    fn pod_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.job_template.spec.as_ref()?.template.spec.as_ref()
    }
}

/// `Kind namespace/name` (or `Kind name` for cluster-scoped objects), for messages and as the key
/// the watcher tracks an object's images under.
pub fn object_key<K: Workload + kube::ResourceExt>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{} {ns}/{}", K::KIND, obj.name_any()),
        None => format!("{} {}", K::KIND, obj.name_any()),
    }
}

/// The images of a workload object (none when it has no pod spec).
pub fn of_object<K: Workload + kube::ResourceExt>(obj: &K) -> ObjectImages {
    match obj.pod_spec() {
        Some(spec) => of_pod_spec(spec, &object_key(obj)),
        None => ObjectImages::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn every_container_list_is_read_normalised_and_deduplicated() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "containers": [
                    {"name": "app", "image": "nginx"},
                    {"name": "side", "image": "ghcr.io/org/side:1.2@sha256:0000000000000000000000000000000000000000000000000000000000000001"},
                    {"name": "dup", "image": "docker.io/library/nginx:latest"}
                ],
                "initContainers": [{"name": "init", "image": "registry.k8s.io/pause:3.9"}],
                "ephemeralContainers": [{"name": "debug", "image": "busybox:1.36"}]
            }
        }));
        let found = of_object(&p);
        let names: Vec<String> = found.images.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "docker.io/library/nginx:latest",
                "ghcr.io/org/side@sha256:0000000000000000000000000000000000000000000000000000000000000001",
                "registry.k8s.io/pause:3.9",
                "docker.io/library/busybox:1.36",
            ]
        );
        assert!(found.invalid.is_empty());
    }

    #[test]
    fn an_invalid_reference_is_reported_with_its_object_and_the_rest_kept() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "bad", "namespace": "ns"},
            "spec": {"containers": [
                {"name": "a", "image": "Upper/Case:1"},
                {"name": "b", "image": "alpine:3.20"},
                {"name": "c"}
            ]}
        }));
        let found = of_object(&p);
        assert_eq!(found.images.len(), 1);
        assert_eq!(found.invalid.len(), 1);
        assert_eq!(found.invalid[0].object, "Pod ns/bad a");
        assert_eq!(found.invalid[0].reference, "Upper/Case:1");
    }

    #[test]
    fn workload_templates_give_their_pod_spec() {
        let template = serde_json::json!({"spec": {"containers": [{"name": "c", "image": "quay.io/x/y:2"}]}});
        let selector = serde_json::json!({"matchLabels": {"a": "b"}});
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "namespace": "n"}, "spec": {"selector": selector, "template": template}
        }))
        .unwrap();
        let c: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "c", "namespace": "n"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}
        }))
        .unwrap();
        assert_eq!(of_object(&d).images[0].to_string(), "quay.io/x/y:2");
        assert_eq!(of_object(&c).images[0].to_string(), "quay.io/x/y:2");
        assert_eq!(object_key(&c), "CronJob n/c");
    }
}
