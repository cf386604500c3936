//! The mesh file: services, their endpoints and virtual addresses in one
//! YAML file (the `services` of the format `weft-mesh` defines, which
//! weft-control serves too), re-read when its content changes (checked
//! every 250 ms). A version with an error is rejected as a whole, with its
//! line and field, and the last good one keeps serving.
//!
//! ```yaml
//! services:
//!   square.demo:50051:                 # the authority clients use
//!     addresses: [10.96.0.10:50051]    # optional virtual IPs (transparent mode)
//!     endpoints:
//!       - 127.0.0.1:7001               # an address ...
//!       - address: 127.0.0.1:7002      # ... or an address with a name
//!         name: square-1
//! ```

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use weft_mesh::{MeshError, MeshFile};

use super::{Discover, EndpointMeta, Resolution};
use crate::core::{Authority, InvalidAuthority};

/// A parsed, validated discovery snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    services: HashMap<Authority, (Arc<[EndpointMeta]>, super::Routes)>,
    vips: HashMap<SocketAddr, Authority>,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Mesh(#[from] MeshError),
    #[error("{path}: service `{name}`: {source}")]
    Authority {
        path: PathBuf,
        name: String,
        source: InvalidAuthority,
    },
}

impl Snapshot {
    /// Parses the YAML text of a mesh discovery file (its `services`; the
    /// `workloads` are for `weft up`).
    pub fn parse(path: &std::path::Path, text: &str) -> Result<Self, FileError> {
        let file = MeshFile::parse(path, text)?;
        let mut snap = Snapshot::default();
        for (name, svc) in file.services {
            let authority = Authority::parse(name.as_str(), None).map_err(|source| FileError::Authority {
                path: path.into(),
                name: name.to_string(),
                source,
            })?;
            let endpoints: Arc<[EndpointMeta]> = svc
                .endpoints
                .iter()
                .map(|e| EndpointMeta {
                    addr: e.address,
                    name: e.display_name().into(),
                    identity: e.identity.as_deref().map(Into::into),
                })
                .collect();
            // weft-mesh refused any address claimed twice.
            for addr in svc.addresses {
                snap.vips.insert(addr, authority.clone());
            }
            snap.services
                .insert(authority, (endpoints, super::Routes::from_mesh(&svc.routes)));
        }
        Ok(snap)
    }

    fn resolution(&self, target: &Authority) -> Resolution {
        match self.services.get(target) {
            Some((eps, routes)) => Resolution::Endpoints(eps.clone(), routes.clone()),
            None => Resolution::Unknown,
        }
    }
}

/// The state shared by the file poller and the per-target watches.
#[derive(Clone, Debug)]
enum FileState {
    /// Never loaded; the reason says why.
    NotLoaded(Arc<str>),
    Loaded(Arc<Snapshot>),
}

/// Discovery from a YAML file, re-read when its content changes.
pub struct FileDiscovery {
    state: watch::Receiver<FileState>,
}

impl FileDiscovery {
    /// How often the file is checked for changes.
    pub const POLL: Duration = Duration::from_millis(250);

    /// Reads `path` now and then watches it from a background task; must be
    /// called within a tokio runtime. `on_error` is told of each rejected
    /// version of the file (the proxy counts them in a metric).
    pub fn spawn(path: PathBuf, on_error: impl Fn(&FileError) + Send + Sync + 'static) -> Self {
        let (first, mut last_text) = match load(&path) {
            Ok((snap, text)) => (FileState::Loaded(Arc::new(snap)), Some(text)),
            Err(e) => {
                tracing::warn!(error = %e, "discovery file not loaded; requests will wait for it");
                on_error(&e);
                (FileState::NotLoaded(e.to_string().into()), None)
            }
        };
        let (tx, rx) = watch::channel(first);
        tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Self::POLL) => {}
                    _ = tx.closed() => return,
                }
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => t,
                    Err(source) => {
                        let e = FileError::Read {
                            path: path.clone(),
                            source,
                        };
                        report(&e, &mut last_error, &on_error);
                        continue;
                    }
                };
                if last_text.as_deref() == Some(text.as_str()) {
                    continue;
                }
                match Snapshot::parse(&path, &text) {
                    Ok(snap) => {
                        tracing::info!(path = %path.display(), services = snap.services.len(), "discovery file loaded");
                        last_error = None;
                        last_text = Some(text);
                        tx.send_replace(FileState::Loaded(Arc::new(snap)));
                    }
                    Err(e) => {
                        report(&e, &mut last_error, &on_error);
                        // Remember the bad text so it is reported once, not every poll.
                        last_text = Some(text);
                        tx.send_if_modified(|state| match state {
                            FileState::NotLoaded(reason) => {
                                *reason = e.to_string().into();
                                true
                            }
                            FileState::Loaded(_) => false,
                        });
                    }
                }
            }
        });
        FileDiscovery { state: rx }
    }
}

fn load(path: &std::path::Path) -> Result<(Snapshot, String), FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.into(),
        source,
    })?;
    Ok((Snapshot::parse(path, &text)?, text))
}

fn report(e: &FileError, last: &mut Option<String>, on_error: &impl Fn(&FileError)) {
    let msg = e.to_string();
    if last.as_deref() != Some(msg.as_str()) {
        tracing::warn!(error = %msg, "discovery file rejected; keeping the last good version");
        on_error(e);
        *last = Some(msg);
    }
}

fn resolve_state(state: &FileState, target: &Authority) -> Resolution {
    match state {
        FileState::NotLoaded(reason) => Resolution::Pending(reason.clone()),
        FileState::Loaded(snap) => snap.resolution(target),
    }
}

impl Discover for FileDiscovery {
    fn resolve(&self, target: &Authority) -> watch::Receiver<Resolution> {
        let mut state = self.state.clone();
        let initial = resolve_state(&state.borrow_and_update(), target);
        let (tx, rx) = watch::channel(initial);
        let target = target.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = state.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
                let next = resolve_state(&state.borrow_and_update(), &target);
                tx.send_if_modified(|cur| {
                    if *cur == next {
                        false
                    } else {
                        *cur = next;
                        true
                    }
                });
            }
        });
        rx
    }

    fn service_at(&self, addr: SocketAddr) -> Option<Authority> {
        match &*self.state.borrow() {
            FileState::Loaded(snap) => snap.vips.get(&addr).cloned(),
            FileState::NotLoaded(_) => None,
        }
    }

    fn knows(&self, target: &Authority) -> bool {
        match &*self.state.borrow() {
            FileState::Loaded(snap) => snap.services.contains_key(target),
            FileState::NotLoaded(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Snapshot, FileError> {
        Snapshot::parse(std::path::Path::new("mesh.yaml"), text)
    }

    #[test]
    fn parses_both_endpoint_forms_and_vips() {
        let snap = parse(
            "services:\n  square.demo:50051:\n    addresses: [10.96.0.10:50051]\n    endpoints:\n      - 127.0.0.1:7001\n      - address: 127.0.0.1:7002\n        name: square-1\n",
        )
        .unwrap();
        let target = Authority::parse("square.demo:50051", None).unwrap();
        let Resolution::Endpoints(eps, _) = snap.resolution(&target) else {
            panic!("not resolved")
        };
        assert_eq!(eps.len(), 2);
        assert_eq!(&*eps[0].name, "127.0.0.1:7001");
        assert_eq!(&*eps[1].name, "square-1");
        assert_eq!(snap.vips.get(&"10.96.0.10:50051".parse().unwrap()), Some(&target));
        assert_eq!(
            snap.resolution(&Authority::parse("other:1", None).unwrap()),
            Resolution::Unknown
        );
    }

    #[test]
    fn typos_are_rejected_with_the_place() {
        let err = parse("services:\n  square.demo:50051:\n    endpionts: []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpionts"), "{err}");
        assert!(err.contains("mesh.yaml"), "{err}");
        let err = parse("services:\n  square.demo:\n    endpoints: []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no port"), "{err}");
        let err = parse("services:\n  a:1:\n    endpoints: [not-an-address]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mesh.yaml"), "{err}");
        let err = parse("services:\n  a:1:\n    addresses: [10.0.0.1:1]\n  b:1:\n    addresses: [10.0.0.1:1]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("claimed by both"), "{err}");
    }

    #[test]
    fn empty_file_is_an_empty_mesh() {
        assert_eq!(parse("").unwrap(), Snapshot::default());
    }

    #[tokio::test]
    async fn file_changes_reach_watchers_and_bad_versions_keep_the_last_good() {
        let dir = std::env::temp_dir().join(format!("weft-disc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.yaml");
        std::fs::write(&path, "services:\n  s:80:\n    endpoints: [127.0.0.1:1]\n").unwrap();
        let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = errors.clone();
        let disc = FileDiscovery::spawn(path.clone(), move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let target = Authority::parse("s:80", None).unwrap();
        let mut rx = disc.resolve(&target);
        assert!(matches!(&*rx.borrow(), Resolution::Endpoints(e, _) if e.len() == 1));

        std::fs::write(&path, "services:\n  s:80:\n    endpoints: [127.0.0.1:1, 127.0.0.1:2]\n").unwrap();
        tokio::time::timeout(Duration::from_secs(2), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(&*rx.borrow_and_update(), Resolution::Endpoints(e, _) if e.len() == 2));

        std::fs::write(&path, "services: [oops").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while errors.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "bad file never reported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(&*rx.borrow(), Resolution::Endpoints(e, _) if e.len() == 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
