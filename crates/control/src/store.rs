//! The store: the mesh a source gives, and one `watch` per service that
//! some proxy follows. A change of the mesh wakes only the watchers of the
//! services it changed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::watch;
use weft_mesh::ServiceName;

use crate::source::{Mesh, ServiceEndpoints};

/// A service as its watchers see it: its endpoints, or `None` once it is gone.
pub type ServiceWatch = watch::Receiver<Option<Arc<ServiceEndpoints>>>;

/// The current mesh and the watched services.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    mesh: Arc<Mesh>,
    watches: HashMap<ServiceName, watch::Sender<Option<Arc<ServiceEndpoints>>>>,
}

impl Store {
    pub fn new(mesh: Arc<Mesh>) -> Self {
        Store {
            inner: Mutex::new(Inner {
                mesh,
                watches: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mesh now.
    pub fn mesh(&self) -> Arc<Mesh> {
        self.lock().mesh.clone()
    }

    /// Makes `mesh` current: each watched service whose endpoints changed
    /// (or that is gone) wakes its watchers; the others sleep on.
    pub fn apply(&self, mesh: Arc<Mesh>) {
        let mut inner = self.lock();
        for (name, tx) in &inner.watches {
            let next = mesh.services.get(name).cloned();
            tx.send_if_modified(|cur| {
                if *cur == next {
                    false
                } else {
                    *cur = next;
                    true
                }
            });
        }
        inner.watches.retain(|_, tx| tx.receiver_count() > 0);
        inner.mesh = mesh;
    }

    /// Follows the service `authority` names (by name or virtual address),
    /// or `None` when no such service is known.
    pub fn subscribe(&self, authority: &str) -> Option<(ServiceName, ServiceWatch)> {
        let mut inner = self.lock();
        let name = inner.mesh.lookup(authority)?.clone();
        let current = inner.mesh.services.get(&name).cloned();
        let rx = inner
            .watches
            .entry(name.clone())
            .or_insert_with(|| watch::channel(current).0)
            .subscribe();
        Some((name, rx))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weft_mesh::Endpoint;

    use super::*;

    fn mesh(services: &[(&str, &[&str])]) -> Arc<Mesh> {
        let mut m = Mesh::default();
        for (name, eps) in services {
            let endpoints: BTreeMap<_, _> = eps
                .iter()
                .map(|a| {
                    let addr = a.parse().unwrap();
                    (addr, Endpoint::at(addr))
                })
                .collect();
            m.services.insert(
                ServiceName::parse(name).unwrap(),
                Arc::new(ServiceEndpoints {
                    endpoints,
                    routes: Vec::new(),
                }),
            );
        }
        Arc::new(m)
    }

    #[tokio::test]
    async fn only_the_changed_service_wakes_and_a_removed_one_ends() {
        let store = Store::new(mesh(&[("a:1", &["127.0.0.1:1"]), ("b:1", &["127.0.0.1:2"])]));
        assert!(store.subscribe("nope:1").is_none());
        let (_, mut a) = store.subscribe("A:1").unwrap();
        let (_, mut b) = store.subscribe("b:1").unwrap();
        a.borrow_and_update();
        b.borrow_and_update();
        store.apply(mesh(&[
            ("a:1", &["127.0.0.1:1", "127.0.0.1:3"]),
            ("b:1", &["127.0.0.1:2"]),
        ]));
        assert!(a.has_changed().unwrap());
        assert!(!b.has_changed().unwrap());
        assert_eq!(a.borrow_and_update().as_ref().unwrap().endpoints.len(), 2);
        store.apply(mesh(&[("b:1", &["127.0.0.1:2"])]));
        assert!(a.borrow_and_update().is_none());
        drop(a);
        store.apply(mesh(&[("b:1", &["127.0.0.1:2"])]));
        assert_eq!(store.lock().watches.len(), 1, "a watch nobody follows is dropped");
    }
}
