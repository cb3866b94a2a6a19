//! The reflector store of this sandboxd's pods (design §16.2): the one pod watcher (the
//! runtime's event stream) writes every change into it before the journal hears of it, and
//! `observe`, `observe_all` and `containers` answer from it once it holds a complete listing
//! instead of asking the API server each time. Synchronous; no I/O here.
//!
//! When it is not trusted, readers list (or get) as before: before the watcher's first
//! listing is complete, after a watch failure other than 410 until the next complete listing,
//! and when no watcher runs. A 410 keeps it trusted: the watcher re-lists and the reflector
//! swaps the new listing in whole, so its state is never lost meanwhile. Pods this process
//! created and the watcher has not reported yet are listed in `unseen`, so a reader always
//! sees its own creates.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;

/// The store of the running watcher, and what is known to be missing from it.
#[derive(Default)]
pub(super) struct PodCache {
    /// The store of the watcher that runs now (the latest event stream opened); `None` when
    /// none does. A std mutex: held only to clone or swap the handle, never across `.await`.
    feed: Mutex<Option<Feed>>,
    /// Pods this process created that the watcher has not reported yet.
    unseen: Mutex<BTreeSet<String>>,
    /// Numbers the feeds, so that a stream dropped late does not retire a newer one.
    next: AtomicU64,
}

#[derive(Clone)]
struct Feed {
    id: u64,
    store: Store<Pod>,
    /// Whether `store` holds a complete listing that is being kept up to date.
    trusted: Arc<AtomicBool>,
}

/// What a trusted store says: its pods, and the pods known to be missing from it.
pub(super) struct Snapshot {
    pub pods: Vec<Arc<Pod>>,
    pub unseen: Vec<String>,
}

/// The watcher's end of a feed: notes what the watcher says, and retires the feed when the
/// event stream is dropped.
pub(super) struct Feeder {
    cache: Arc<PodCache>,
    id: u64,
    trusted: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is one assignment or set operation: a panic cannot leave it torn.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PodCache {
    /// A new store for a watcher that starts now, replacing any other.
    pub(super) fn feed(self: &Arc<Self>) -> (Writer<Pod>, Feeder) {
        let (store, writer) = reflector::store();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let trusted = Arc::new(AtomicBool::new(false));
        *lock(&self.feed) = Some(Feed {
            id,
            store,
            trusted: Arc::clone(&trusted),
        });
        let feeder = Feeder {
            cache: Arc::clone(self),
            id,
            trusted,
        };
        (writer, feeder)
    }

    /// Pod `name` was just created by this process.
    pub(super) fn created(&self, name: &str) {
        lock(&self.unseen).insert(name.to_owned());
    }

    /// Pod `name` does not exist (a get said 404).
    pub(super) fn forget(&self, name: &str) {
        lock(&self.unseen).remove(name);
    }

    fn trusted(&self) -> Option<Store<Pod>> {
        let feed = lock(&self.feed).clone()?;
        feed.trusted.load(Ordering::Acquire).then_some(feed.store)
    }

    /// The pods, when the store is trusted.
    pub(super) fn snapshot(&self) -> Option<Snapshot> {
        let store = self.trusted()?;
        let pods = store.state();
        let unseen = lock(&self.unseen)
            .iter()
            .filter(|name| {
                !pods
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(name.as_str()))
            })
            .cloned()
            .collect();
        Some(Snapshot { pods, unseen })
    }

    /// Pod `name` in namespace `ns`, when the store is trusted and holds it (`None` also when
    /// it does not: the caller asks the API server).
    pub(super) fn get(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        self.trusted()?.get(&ObjectRef::new(name).within(ns))
    }
}

impl Feeder {
    /// Notes one item of the watcher's stream, after the reflector applied it.
    pub(super) fn note(&self, item: &Result<watcher::Event<Pod>, watcher::Error>) {
        match item {
            Ok(watcher::Event::InitDone) => {
                // Everything listed is now in the store; created pods the listing missed
                // were deleted since (or will come as an Apply).
                self.trusted.store(true, Ordering::Release);
            }
            Ok(watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)) => {
                if let Some(name) = &pod.metadata.name {
                    self.cache.forget(name);
                }
            }
            Ok(watcher::Event::Init | watcher::Event::Delete(_)) => {}
            // The watch expired: the watcher re-lists and the reflector keeps the old state
            // until the new listing replaces it whole.
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {}
            // The server cannot be reached or refused: what the store holds may be stale.
            Err(_) => self.trusted.store(false, Ordering::Release),
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        let mut feed = lock(&self.cache.feed);
        if feed.as_ref().is_some_and(|f| f.id == self.id) {
            *feed = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "sbx"}})).unwrap()
    }

    #[test]
    fn trusted_from_the_first_complete_listing_until_a_failure_other_than_410() {
        let cache = Arc::new(PodCache::default());
        assert!(cache.snapshot().is_none(), "no watcher");
        let (mut writer, feeder) = cache.feed();
        cache.created("sbx-new");
        for event in [watcher::Event::Init, watcher::Event::InitApply(pod("sbx-a"))] {
            writer.apply_watcher_event(&event);
            feeder.note(&Ok(event));
        }
        assert!(cache.snapshot().is_none(), "listing incomplete");
        writer.apply_watcher_event(&watcher::Event::InitDone);
        feeder.note(&Ok(watcher::Event::InitDone));
        let snap = cache.snapshot().expect("trusted");
        assert_eq!(snap.pods.len(), 1);
        assert_eq!(snap.unseen, ["sbx-new"]);
        assert!(cache.get("sbx", "sbx-a").is_some());

        let gone = kube::core::Status::failure("too old resource version", "Expired").with_code(410);
        feeder.note(&Err(watcher::Error::WatchError(Box::new(gone))));
        assert!(cache.snapshot().is_some(), "a 410 keeps the store");
        let refused = kube::core::Status::failure("forbidden", "Forbidden").with_code(403);
        feeder.note(&Err(watcher::Error::WatchError(Box::new(refused))));
        assert!(cache.snapshot().is_none(), "any other failure does not");

        drop(feeder);
        assert!(lock(&cache.feed).is_none(), "the stream's end retires its feed");
    }
}
