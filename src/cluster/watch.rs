//! The set of images the cluster uses right now, kept by list+watch of every workload kind and of
//! the nodes (`serve --warm-from-cluster`). An image is in use while at least one object references
//! it and leaves the set when the last one is deleted or changed to another image; a relist after a
//! lost watch replaces a kind's objects wholesale, so deletions missed meanwhile are not leaked.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde::de::DeserializeOwned;

use super::images::{self, InvalidImage, Workload};
use super::{platforms, MAX_IMAGES};
use crate::cmd::warm::{ImageRef, Platform};
use crate::metrics::Metrics;

/// Invalid image fields remembered for the status report; a broken template stamped into many
/// pods is one line to fix, not thousands to list.
const MAX_INVALID: usize = 100;

/// The kinds watched, for "has every kind been listed once".
const KINDS: [&str; 7] =
    [Pod::KIND, Deployment::KIND, DaemonSet::KIND, StatefulSet::KIND, Job::KIND, CronJob::KIND, "Node"];

/// Images in use and node platforms, shared by the watchers (writers), the warmer, `/status` and
/// the metrics (readers). Critical sections are map updates only.
pub struct ImagesInUse {
    inner: Mutex<Inner>,
    changed: tokio::sync::Notify,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Inner {
    /// Object key (`Kind ns/name`) -> the images it references.
    objects: HashMap<String, Vec<ImageRef>>,
    /// Image (normalised text) -> the reference and how many objects use it.
    images: BTreeMap<String, (ImageRef, usize)>,
    /// Objects of a kind seen since its watcher restarted, swapped in when the list is complete.
    relisting: HashMap<&'static str, HashMap<String, Vec<ImageRef>>>,
    nodes: HashMap<String, Platform>,
    /// The distinct platforms of `nodes`, sorted.
    platforms: Vec<Platform>,
    nodes_relisting: Option<HashMap<String, Platform>>,
    invalid: BTreeMap<String, InvalidImage>,
    listed: std::collections::HashSet<&'static str>,
    /// References not tracked because the set was full (since start).
    over_limit: u64,
    /// Bumped when the set of images or of platforms changes: pod churn that keeps the same
    /// images wakes nobody.
    generation: u64,
}

impl Inner {
    fn add_ref(&mut self, image: &ImageRef) {
        let key = image.to_string();
        if let Some((_, n)) = self.images.get_mut(&key) {
            *n += 1;
        } else if self.images.len() < MAX_IMAGES {
            self.images.insert(key, (image.clone(), 1));
            self.generation += 1;
        } else {
            if self.over_limit == 0 {
                tracing::warn!(limit = MAX_IMAGES, image = %key, "more images in use than tracked; not warming the rest");
            }
            self.over_limit += 1;
        }
    }

    fn drop_ref(&mut self, image: &ImageRef) {
        let key = image.to_string();
        if let Some((_, n)) = self.images.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.images.remove(&key);
                self.generation += 1;
            }
        }
    }

    fn set_object(&mut self, key: String, new: Vec<ImageRef>) {
        let old = self.objects.remove(&key).unwrap_or_default();
        for image in &new {
            self.add_ref(image);
        }
        for image in &old {
            self.drop_ref(image);
        }
        if !new.is_empty() {
            self.objects.insert(key, new);
        }
    }
}

impl ImagesInUse {
    pub fn new(metrics: Arc<Metrics>) -> Arc<ImagesInUse> {
        Arc::new(ImagesInUse { inner: Mutex::default(), changed: tokio::sync::Notify::new(), metrics })
    }

    fn update<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let (out, count, changed) = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let before = inner.generation;
            let out = f(&mut inner);
            (out, inner.images.len(), inner.generation != before)
        };
        self.metrics.cluster_images_in_use.set(count as i64);
        if changed {
            self.changed.notify_waiters();
        }
        out
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        f(&self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// An object was added or changed.
    pub fn apply(&self, key: String, found: images::ObjectImages) {
        self.update(|inner| {
            remember_invalid(inner, found.invalid);
            inner.set_object(key, found.images);
        });
    }

    /// An object was deleted.
    pub fn delete(&self, key: String) {
        self.update(|inner| inner.set_object(key, Vec::new()));
    }

    /// A kind's watcher (re)starts its list.
    pub fn relist_started(&self, kind: &'static str) {
        self.update(|inner| {
            inner.relisting.insert(kind, HashMap::new());
        });
    }

    /// An object of a relist in progress.
    pub fn relisted(&self, kind: &'static str, key: String, found: images::ObjectImages) {
        self.update(|inner| {
            remember_invalid(inner, found.invalid);
            inner.relisting.entry(kind).or_default().insert(key, found.images);
        });
    }

    /// A relist is complete: the kind's objects are exactly the ones it listed.
    pub fn relist_done(&self, kind: &'static str) {
        self.update(|inner| {
            let listed = inner.relisting.remove(kind).unwrap_or_default();
            let prefix = format!("{kind} ");
            let gone: Vec<String> =
                inner.objects.keys().filter(|k| k.starts_with(&prefix) && !listed.contains_key(*k)).cloned().collect();
            for key in gone {
                inner.set_object(key, Vec::new());
            }
            for (key, images) in listed {
                inner.set_object(key, images);
            }
            inner.listed.insert(kind);
        });
    }

    pub fn node(&self, event: Event<Node>) {
        self.update(|inner| match event {
            Event::Apply(n) => {
                let name = kube::ResourceExt::name_any(&n);
                match platforms::of_node(&n) {
                    Some(p) => inner.nodes.insert(name, p),
                    None => inner.nodes.remove(&name),
                };
            }
            Event::Delete(n) => {
                inner.nodes.remove(&kube::ResourceExt::name_any(&n));
            }
            Event::Init => inner.nodes_relisting = Some(HashMap::new()),
            Event::InitApply(n) => {
                if let Some(p) = platforms::of_node(&n) {
                    inner.nodes_relisting.get_or_insert_default().insert(kube::ResourceExt::name_any(&n), p);
                }
            }
            Event::InitDone => {
                inner.nodes = inner.nodes_relisting.take().unwrap_or_default();
                inner.listed.insert("Node");
            }
        });
        self.update(|inner| {
            let platforms = distinct(inner.nodes.values());
            if platforms != inner.platforms {
                inner.platforms = platforms;
                inner.generation += 1;
            }
        });
    }

    /// The images in use, sorted by name.
    pub fn images(&self) -> Vec<ImageRef> {
        self.read(|inner| inner.images.values().map(|(r, _)| r.clone()).collect())
    }

    /// Whether `image` (normalised text) is in use.
    pub fn contains(&self, image: &str) -> bool {
        self.read(|inner| inner.images.contains_key(image))
    }

    /// The distinct platforms of the nodes, sorted.
    pub fn platforms(&self) -> Vec<Platform> {
        self.read(|inner| inner.platforms.clone())
    }

    /// Invalid image fields seen (bounded).
    pub fn invalid(&self) -> Vec<InvalidImage> {
        self.read(|inner| inner.invalid.values().cloned().collect())
    }

    /// Whether every kind has been listed at least once (before that, the set is incomplete).
    pub fn synced(&self) -> bool {
        self.read(|inner| KINDS.iter().all(|k| inner.listed.contains(k)))
    }

    /// References not tracked because more than [`MAX_IMAGES`] images were in use.
    pub fn over_limit(&self) -> u64 {
        self.read(|inner| inner.over_limit)
    }

    /// Completes at the next change (register before reading the state, as with `Notify`).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

fn distinct<'a>(platforms: impl Iterator<Item = &'a Platform>) -> Vec<Platform> {
    let mut out: Vec<Platform> = Vec::new();
    for p in platforms {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out.sort_by_key(ToString::to_string);
    out
}

fn remember_invalid(inner: &mut Inner, invalid: Vec<InvalidImage>) {
    for i in invalid {
        if inner.invalid.len() >= MAX_INVALID && !inner.invalid.contains_key(&i.object) {
            continue;
        }
        if !inner.invalid.contains_key(&i.object) {
            tracing::warn!(object = %i.object, image = %i.reference, reason = %i.reason, "image reference cannot be warmed");
        }
        inner.invalid.insert(i.object.clone(), i);
    }
}

/// Starts one watcher per kind and one for the nodes; they run until the returned handles are
/// aborted, reconnecting with backoff when the API server is unreachable.
pub fn spawn(client: kube::Client, state: Arc<ImagesInUse>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(watch_kind::<Pod>(client.clone(), state.clone())),
        tokio::spawn(watch_kind::<Deployment>(client.clone(), state.clone())),
        tokio::spawn(watch_kind::<DaemonSet>(client.clone(), state.clone())),
        tokio::spawn(watch_kind::<StatefulSet>(client.clone(), state.clone())),
        tokio::spawn(watch_kind::<Job>(client.clone(), state.clone())),
        tokio::spawn(watch_kind::<CronJob>(client.clone(), state.clone())),
    ];
    tasks.push(tokio::spawn(async move {
        let stream = watcher::watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff();
        futures_util::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(e) => state.node(e),
                Err(e) => tracing::warn!(kind = "Node", error = %e, "watching the cluster failed; retrying"),
            }
        }
    }));
    tasks
}

async fn watch_kind<K>(client: kube::Client, state: Arc<ImagesInUse>)
where
    K: Workload + kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let stream = watcher::watcher(Api::<K>::all(client), watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(obj)) => state.apply(images::object_key(&obj), images::of_object(&obj)),
            Ok(Event::Delete(obj)) => state.delete(images::object_key(&obj)),
            Ok(Event::Init) => state.relist_started(K::KIND),
            Ok(Event::InitApply(obj)) => state.relisted(K::KIND, images::object_key(&obj), images::of_object(&obj)),
            Ok(Event::InitDone) => state.relist_done(K::KIND),
            Err(e) => tracing::warn!(kind = K::KIND, error = %e, "watching the cluster failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(names: &[&str]) -> images::ObjectImages {
        images::ObjectImages { images: names.iter().map(|n| ImageRef::parse(n).unwrap()).collect(), invalid: vec![] }
    }

    fn names(s: &ImagesInUse) -> Vec<String> {
        s.images().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_image_leaves_when_no_object_references_it_any_more() {
        let metrics = Arc::new(Metrics::new());
        let s = ImagesInUse::new(metrics.clone());
        s.apply("Pod a/one".into(), refs(&["alpine:1", "busybox:1"]));
        s.apply("Deployment a/d".into(), refs(&["alpine:1"]));
        assert_eq!(names(&s), ["docker.io/library/alpine:1", "docker.io/library/busybox:1"]);
        s.delete("Pod a/one".into());
        assert_eq!(names(&s), ["docker.io/library/alpine:1"], "the deployment still uses alpine");
        s.apply("Deployment a/d".into(), refs(&["alpine:2"]));
        assert_eq!(names(&s), ["docker.io/library/alpine:2"], "an image changed in place leaves too");
        assert!(metrics.render().contains("ocicache_cluster_images_in_use 1"));
    }

    #[test]
    fn a_relist_forgets_objects_deleted_while_the_watch_was_down() {
        let s = ImagesInUse::new(Arc::new(Metrics::new()));
        s.apply("Pod a/one".into(), refs(&["alpine:1"]));
        s.apply("Job a/j".into(), refs(&["busybox:1"]));
        s.relist_started("Pod");
        s.relisted("Pod", "Pod a/two".into(), refs(&["nginx:1"]));
        assert_eq!(names(&s).len(), 2, "nothing changes before the list is complete");
        s.relist_done("Pod");
        assert_eq!(names(&s), ["docker.io/library/busybox:1", "docker.io/library/nginx:1"]);
    }

    #[test]
    fn the_set_is_bounded() {
        let s = ImagesInUse::new(Arc::new(Metrics::new()));
        for i in 0..MAX_IMAGES + 5 {
            s.apply(format!("Pod a/p{i}"), refs(&[&format!("img:{i}")]));
        }
        assert_eq!(s.images().len(), MAX_IMAGES);
        assert_eq!(s.over_limit(), 5);
    }
}
