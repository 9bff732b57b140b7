//! Build OCI image layouts in-process (no internet) and move them around with `skopeo`.
//!
//! Layers are reproducible gzip'd tars (sorted names, mtime 0, uid/gid 0, parent directories
//! added automatically, gzip header without name/mtime), so the same [`LayerSpec`]s always give
//! the same digests. Several images can share one layout directory under different tags.

use super::{http_request, run_output, sha256_digest};
use flate2::{write::GzEncoder, Compression};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// An Accept header value listing every manifest type above.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Files of one layer: (path inside the tar, contents). Paths are relative ("etc/x" or "/etc/x";
/// a leading "/" or "./" is stripped); parent directories are added automatically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerSpec {
    pub files: Vec<(String, Vec<u8>)>,
}

impl LayerSpec {
    /// A layer from (path, contents) pairs.
    pub fn new(files: &[(&str, &[u8])]) -> LayerSpec {
        LayerSpec { files: files.iter().map(|(p, c)| (p.to_string(), c.to_vec())).collect() }
    }

    /// A layer with a single file.
    pub fn file(path: &str, contents: impl Into<Vec<u8>>) -> LayerSpec {
        LayerSpec { files: vec![(path.to_string(), contents.into())] }
    }
}

/// One image manifest written into an OCI layout.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub layout: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name`) in the layout. For images built by
    /// [`build_index`] this is "<index tag>-<arch>".
    pub tag: String,
    pub arch: String,
    /// Digest of the **OCI** manifest (`manifest`). Pushing with [`Format::V2s2`] makes skopeo
    /// store a converted Docker schema 2 manifest with a *different* digest; ask the registry
    /// with [`manifest_digest_at`] for that one. Config and layer blobs are the same in both.
    pub manifest_digest: String,
    pub config_digest: String,
    /// Compressed (gzip) layer digests, in manifest order.
    pub layer_digests: Vec<String>,
    /// Compressed (gzip) layer bytes, in manifest order.
    pub layer_blobs: Vec<Vec<u8>>,
    /// Digests of the uncompressed tars (`rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
    pub config: Vec<u8>,
    /// The OCI manifest bytes as stored in the layout.
    pub manifest: Vec<u8>,
}

impl BuiltImage {
    /// Every blob digest of the image: config first, then layers.
    pub fn blob_digests(&self) -> Vec<String> {
        let mut v = vec![self.config_digest.clone()];
        v.extend(self.layer_digests.iter().cloned());
        v
    }

    /// Total size of the compressed layers.
    pub fn layers_size(&self) -> usize {
        self.layer_blobs.iter().map(Vec::len).sum()
    }
}

/// An OCI image index written into an OCI layout.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    pub layout: PathBuf,
    pub tag: String,
    pub index_digest: String,
    /// The index bytes as stored in the layout.
    pub index: Vec<u8>,
    /// Per-platform images, in the order given to [`build_index`].
    pub manifests: Vec<BuiltImage>,
}

/// Write a reproducible gzip'd layer tar; returns (tar, gz).
pub fn layer_tar_gz(spec: &LayerSpec) -> (Vec<u8>, Vec<u8>) {
    let mut entries: BTreeMap<String, Option<&[u8]>> = BTreeMap::new();
    for (path, contents) in &spec.files {
        let clean = path.trim_start_matches("./").trim_start_matches('/');
        assert!(!clean.is_empty() && !clean.ends_with('/'), "LayerSpec: bad file path {path:?}");
        let mut parent = Path::new(clean).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            let dir = entries.entry(p.to_string_lossy().into_owned()).or_insert(None);
            assert!(dir.is_none(), "LayerSpec: {p:?} is both a file and a directory");
            parent = p.parent();
        }
        let prev = entries.insert(clean.to_string(), Some(contents));
        assert!(prev.is_none(), "LayerSpec: duplicate path (or file over directory) {clean:?}");
    }
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match contents {
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data).expect("append file to layer tar");
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), std::io::empty())
                    .expect("append dir to layer tar");
            }
        }
    }
    let tar = builder.into_inner().expect("finish layer tar");
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip layer");
    let gz = gz.finish().expect("finish gzip");
    (tar, gz)
}

/// Store `data` as `blobs/sha256/<hex>` in the layout; returns its digest.
pub fn write_blob(layout: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let dir = layout.join("blobs").join("sha256");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(&digest["sha256:".len()..]);
    if !path.exists() {
        fs::write(&path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    digest
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// Add (or replace) the `tag` entry of the layout's index.json, creating `oci-layout` if needed.
fn tag_in_layout(layout: &Path, tag: &str, mut desc: Value) {
    fs::create_dir_all(layout).unwrap_or_else(|e| panic!("create {}: {e}", layout.display()));
    let marker = layout.join("oci-layout");
    if !marker.exists() {
        fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write oci-layout");
    }
    let index_path = layout.join("index.json");
    let mut index: Value = match fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b).expect("parse index.json"),
        Err(_) => json!({"schemaVersion": 2, "manifests": []}),
    };
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let manifests = index["manifests"].as_array_mut().expect("index.json has manifests");
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
    manifests.push(desc);
    fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).expect("write index.json");
}

/// Write the blobs of one image (layers, config, manifest) without tagging it.
fn write_image(dir: &Path, tag: &str, arch: &str, layers: &[LayerSpec]) -> BuiltImage {
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    let mut layer_blobs = Vec::new();
    let mut layer_descs = Vec::new();
    for spec in layers {
        let (tar, gz) = layer_tar_gz(spec);
        diff_ids.push(sha256_digest(&tar));
        let digest = write_blob(dir, &gz);
        layer_descs.push(descriptor(MT_OCI_LAYER_GZIP, &digest, gz.len()));
        layer_digests.push(digest);
        layer_blobs.push(gz);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| json!({"created_by": "ocicache test harness"})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let config_digest = write_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": descriptor(MT_OCI_CONFIG, &config_digest, config.len()),
        "layers": layer_descs,
    }))
    .unwrap();
    let manifest_digest = write_blob(dir, &manifest);
    BuiltImage {
        layout: dir.to_path_buf(),
        tag: tag.to_string(),
        arch: arch.to_string(),
        manifest_digest,
        config_digest,
        layer_digests,
        layer_blobs,
        diff_ids,
        config,
        manifest,
    }
}

/// Write a single-platform (linux/`arch`) OCI image into the layout at `dir` under `tag`.
/// The layout is created if needed; other tags already in it are kept (same tag is replaced).
pub fn build_image(dir: &Path, tag: &str, arch: &str, layers: &[LayerSpec]) -> BuiltImage {
    let img = write_image(dir, tag, arch, layers);
    tag_in_layout(dir, tag, descriptor(MT_OCI_MANIFEST, &img.manifest_digest, img.manifest.len()));
    img
}

/// Write an OCI image index with one linux/<arch> manifest per entry (e.g. amd64 + arm64) under
/// `tag`. Each platform image is also tagged "<tag>-<arch>" in the layout.
pub fn build_index(dir: &Path, tag: &str, images: &[(&str, Vec<LayerSpec>)]) -> BuiltIndex {
    let manifests: Vec<BuiltImage> =
        images.iter().map(|(arch, layers)| build_image(dir, &format!("{tag}-{arch}"), arch, layers)).collect();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": manifests.iter().map(|m| {
            let mut d = descriptor(MT_OCI_MANIFEST, &m.manifest_digest, m.manifest.len());
            d["platform"] = json!({"architecture": m.arch, "os": "linux"});
            d
        }).collect::<Vec<_>>(),
    }))
    .unwrap();
    let index_digest = write_blob(dir, &index);
    tag_in_layout(dir, tag, descriptor(MT_OCI_INDEX, &index_digest, index.len()));
    BuiltIndex { layout: dir.to_path_buf(), tag: tag.to_string(), index_digest, index, manifests }
}

/// Manifest format to push with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Keep the OCI manifest (digest = `BuiltImage::manifest_digest`).
    Oci,
    /// Let skopeo convert to Docker schema 2 (different manifest digest).
    V2s2,
}

fn skopeo_push(layout: &Path, tag: &str, dest: &str, args: &[&str], creds: Option<(&str, &str)>) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--dest-tls-verify=false"]).args(args);
    if let Some((u, p)) = creds {
        cmd.arg(format!("--dest-creds={u}:{p}"));
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display())).arg(format!("docker://{dest}"));
    let out = run_output(&mut cmd);
    super::assert_success(&out, &super::describe(&cmd));
}

/// Push one image: `skopeo copy [--format v2s2] oci:LAYOUT:TAG docker://DEST`
/// (`dest` = "127.0.0.1:PORT/repo:tag"). Panics with skopeo's output on failure.
pub fn push(layout: &Path, tag: &str, dest: &str, format: Format, creds: Option<(&str, &str)>) {
    let fmt: &[&str] = match format {
        Format::Oci => &["--format=oci"],
        Format::V2s2 => &["--format=v2s2"],
    };
    skopeo_push(layout, tag, dest, fmt, creds);
}

/// Push an index and all its platform images (`skopeo copy --all`), keeping the OCI index.
pub fn push_index(layout: &Path, tag: &str, dest: &str, creds: Option<(&str, &str)>) {
    skopeo_push(layout, tag, dest, &["--all"], creds);
}

/// Deterministic pseudo-random (incompressible) bytes (splitmix64 stream from `seed`).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `skopeo copy --src-tls-verify=false [extra...] SRC dir:DEST_DIR` (SRC like
/// "docker://127.0.0.1:PORT/repo:tag"; extra e.g. `--src-creds=u:p`). Does not panic on failure.
/// Blobs land in DEST_DIR/<hex> (no "sha256:" prefix) plus `manifest.json`.
pub fn skopeo_copy_to_dir(src: &str, dest_dir: &Path, extra: &[&str]) -> Output {
    run_output(
        Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .args(extra)
            .arg(src)
            .arg(format!("dir:{}", dest_dir.display())),
    )
}

/// `skopeo inspect --raw --tls-verify=false [extra...] SRC`. Does not panic on failure.
pub fn skopeo_inspect_raw(src: &str, extra: &[&str]) -> Output {
    run_output(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).args(extra).arg(src))
}

/// GET /v2/REPO/manifests/TAG from the registry at "127.0.0.1:PORT" with `Accept: accept`
/// (anonymous). Returns (sha256 digest of the body, Content-Type, body). Panics unless 200, or if
/// the registry's Docker-Content-Digest header disagrees with the body.
pub fn manifest_digest_at(registry_addr: &str, repo: &str, tag: &str, accept: &str) -> (String, String, Vec<u8>) {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let resp = http_request(registry_addr, "GET", &path, &[("Accept", accept)]);
    assert_eq!(
        resp.status,
        200,
        "GET http://{registry_addr}{path} (Accept: {accept}): {}",
        String::from_utf8_lossy(&resp.body)
    );
    let digest = sha256_digest(&resp.body);
    if let Some(header) = resp.header("docker-content-digest") {
        assert_eq!(header, digest, "Docker-Content-Digest vs body for {path}");
    }
    let content_type = resp.header("content-type").unwrap_or_default().to_string();
    (digest, content_type, resp.body)
}
