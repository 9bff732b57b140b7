//! The platforms a cluster's nodes run, so warming fetches the matching children of a
//! multi-platform index and nothing else (a cluster of amd64 nodes has no use for s390x layers).

use k8s_openapi::api::core::v1::Node;

use crate::cmd::warm::Platform;

/// `os/arch` of a node: what the kubelet reports in `status.nodeInfo`, else the well-known
/// `kubernetes.io/os` and `kubernetes.io/arch` labels. `None` for a node that says neither.
pub fn of_node(node: &Node) -> Option<Platform> {
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    let labels = node.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str).filter(|v| !v.is_empty());
    let os =
        info.map(|i| i.operating_system.as_str()).filter(|v| !v.is_empty()).or_else(|| label("kubernetes.io/os"))?;
    let arch =
        info.map(|i| i.architecture.as_str()).filter(|v| !v.is_empty()).or_else(|| label("kubernetes.io/arch"))?;
    Platform::parse(&format!("{os}/{arch}")).ok()
}

/// The distinct platforms of `nodes`, sorted.
pub fn of_nodes<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<Platform> {
    let mut out: Vec<Platform> = Vec::new();
    for p in nodes.into_iter().filter_map(of_node) {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out.sort_by_key(ToString::to_string);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_info_first_then_labels_and_duplicates_dropped() {
        let nodes: Vec<Node> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "a"}, "status": {"nodeInfo": {"operatingSystem": "linux", "architecture": "arm64",
                "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "",
                "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""}}},
            {"metadata": {"name": "b", "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}},
            {"metadata": {"name": "c", "labels": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}}},
            {"metadata": {"name": "d"}}
        ]))
        .unwrap();
        let got: Vec<String> = of_nodes(&nodes).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["linux/amd64", "linux/arm64"]);
    }
}
