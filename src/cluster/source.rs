//! Where a one-pass warm learns what the cluster runs: one list of every workload kind and of the
//! nodes through the Kubernetes API (`warm --kubernetes`), or the same objects from a file as
//! `kubectl get pods,deployments,nodes -A -o json` (or `-o yaml`) prints them (`warm --from-file`),
//! for clusters the cache cannot reach or a list reviewed before an outage drill.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

use super::images::{self, InvalidImage, ObjectImages, Workload};
use super::platforms;
use crate::cmd::warm::{ImageRef, Platform};

/// Objects asked for per list request, as kubectl pages.
const PAGE: u32 = 500;
/// Nesting of `kind: List` inside `kind: List` accepted from a file.
const MAX_LIST_DEPTH: usize = 4;

/// What the cluster runs: each image once, in the order first seen, and the nodes' platforms.
#[derive(Debug, Default)]
pub struct Workloads {
    pub images: Vec<ImageRef>,
    pub invalid: Vec<InvalidImage>,
    pub platforms: Vec<Platform>,
    /// Objects read that can run pods.
    pub objects: usize,
}

impl Workloads {
    fn add(&mut self, found: ObjectImages) {
        self.objects += 1;
        for image in found.images {
            if !self.images.contains(&image) {
                self.images.push(image);
            }
        }
        self.invalid.extend(found.invalid);
    }
}

/// The workloads of the cluster (`kubernetes`) and of a file, merged; `None` when neither is asked.
pub async fn load(
    kubernetes: bool,
    file: Option<&std::path::Path>,
    kubeconfig: Option<&std::path::Path>,
) -> Result<Option<Workloads>, String> {
    let mut out: Option<Workloads> = None;
    if let Some(path) = file {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("cannot read --from-file {}: {e}", path.display()))?;
        out = Some(from_document(&text).map_err(|e| format!("--from-file {}: {e}", path.display()))?);
    }
    if kubernetes {
        let client = super::client(kubeconfig).await?;
        let listed = list_cluster(&client).await?;
        let merged = out.get_or_insert_with(Workloads::default);
        merged.objects += listed.objects;
        for image in listed.images {
            if !merged.images.contains(&image) {
                merged.images.push(image);
            }
        }
        merged.invalid.extend(listed.invalid);
        for p in listed.platforms {
            if !merged.platforms.contains(&p) {
                merged.platforms.push(p);
            }
        }
    }
    Ok(out)
}

/// Lists every workload kind across all namespaces, and the nodes.
pub async fn list_cluster(client: &kube::Client) -> Result<Workloads, String> {
    let mut out = Workloads::default();
    list_kind::<Pod>(client, &mut out).await?;
    list_kind::<Deployment>(client, &mut out).await?;
    list_kind::<DaemonSet>(client, &mut out).await?;
    list_kind::<StatefulSet>(client, &mut out).await?;
    list_kind::<Job>(client, &mut out).await?;
    list_kind::<CronJob>(client, &mut out).await?;
    let nodes: Vec<Node> = list_all(Api::all(client.clone()), "nodes").await?;
    out.platforms = platforms::of_nodes(&nodes);
    Ok(out)
}

async fn list_kind<K>(client: &kube::Client, out: &mut Workloads) -> Result<(), String>
where
    K: Workload + kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    for obj in list_all::<K>(Api::all(client.clone()), K::KIND).await? {
        out.add(images::of_object(&obj));
    }
    Ok(())
}

/// Every object of a kind, page by page.
async fn list_all<K>(api: Api<K>, what: &str) -> Result<Vec<K>, String>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await.map_err(|e| format!("cannot list {what}: {e}"))?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// Reads `kubectl get ... -o json` or `-o yaml` output (a `kind: List`, a typed list such as
/// `PodList`, a single object, or several YAML documents). Kinds that run no pods are skipped;
/// Node objects, if present, give the platforms.
pub fn from_document(text: &str) -> Result<Workloads, String> {
    let docs: Vec<serde_json::Value> = match serde_json::from_str(text) {
        Ok(v) => vec![v],
        Err(json_err) => {
            let mut docs = Vec::new();
            for doc in serde_yaml_ng::Deserializer::from_str(text) {
                let value = <serde_json::Value as serde::Deserialize>::deserialize(doc)
                    .map_err(|e| format!("neither JSON ({json_err}) nor YAML ({e})"))?;
                if !value.is_null() {
                    docs.push(value);
                }
            }
            docs
        }
    };
    let mut out = Workloads::default();
    let mut nodes = Vec::new();
    for doc in docs {
        read_object(doc, None, 0, &mut out, &mut nodes)?;
    }
    out.platforms = platforms::of_nodes(&nodes);
    Ok(out)
}

fn read_object(
    mut value: serde_json::Value,
    kind_hint: Option<&str>,
    depth: usize,
    out: &mut Workloads,
    nodes: &mut Vec<Node>,
) -> Result<(), String> {
    let kind = value.get("kind").and_then(|k| k.as_str()).or(kind_hint).unwrap_or_default().to_owned();
    let items = value.as_object_mut().and_then(|o| o.remove("items"));
    if let Some(serde_json::Value::Array(items)) = items {
        if depth >= MAX_LIST_DEPTH {
            return Err(format!("lists nested deeper than {MAX_LIST_DEPTH} levels"));
        }
        // API lists (`PodList`) leave `kind` out of their items; kubectl's `List` keeps it.
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        for item in items {
            read_object(item, item_kind, depth + 1, out, nodes)?;
        }
        return Ok(());
    }
    fn typed<K: DeserializeOwned>(v: serde_json::Value, kind: &str) -> Result<K, String> {
        serde_json::from_value(v).map_err(|e| format!("a {kind} object that does not parse: {e}"))
    }
    match kind.as_str() {
        "Pod" => out.add(images::of_object(&typed::<Pod>(value, &kind)?)),
        "Deployment" => out.add(images::of_object(&typed::<Deployment>(value, &kind)?)),
        "DaemonSet" => out.add(images::of_object(&typed::<DaemonSet>(value, &kind)?)),
        "StatefulSet" => out.add(images::of_object(&typed::<StatefulSet>(value, &kind)?)),
        "Job" => out.add(images::of_object(&typed::<Job>(value, &kind)?)),
        "CronJob" => out.add(images::of_object(&typed::<CronJob>(value, &kind)?)),
        "Node" => nodes.push(typed::<Node>(value, &kind)?),
        // Services, ConfigMaps... in a mixed `kubectl get all` dump run no pods of their own.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_list_without_item_kinds_and_multi_document_yaml_are_read() {
        let list = r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7"},
            "items":[{"metadata":{"name":"a","namespace":"n"},"spec":{"containers":[{"name":"c","image":"alpine:3.20"}]}}]}"#;
        let w = from_document(list).unwrap();
        assert_eq!(w.images.len(), 1);
        let yaml = "kind: Node\napiVersion: v1\nmetadata: {name: n1, labels: {kubernetes.io/os: linux, kubernetes.io/arch: arm64}}\n---\n\
                    kind: DaemonSet\napiVersion: apps/v1\nmetadata: {name: d, namespace: kube-system}\n\
                    spec:\n  selector: {matchLabels: {a: b}}\n  template:\n    spec:\n      containers: [{name: c, image: 'quay.io/a/b:1'}]\n\
                    ---\nkind: Service\napiVersion: v1\nmetadata: {name: s}\n";
        let w = from_document(yaml).unwrap();
        assert_eq!(w.images[0].to_string(), "quay.io/a/b:1");
        assert_eq!(w.platforms[0].to_string(), "linux/arm64");
        assert_eq!(w.objects, 1);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let e = from_document("{not json").unwrap_err();
        assert!(e.contains("neither JSON"), "{e}");
    }
}
