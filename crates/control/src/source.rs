//! Sources: where the control plane learns the mesh. A source publishes the
//! whole mesh as it knows it ([`Mesh`]) on a `watch`; the store turns
//! changes into per-service updates. The mesh file is one source
//! ([`FileSource`]); Kubernetes (EndpointSlices, Services) is the next,
//! behind the same trait.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::{mpsc, watch};
use weft_mesh::{Endpoint, MeshError, MeshFile, ServiceName};

/// The mesh as a source knows it: services by name, virtual addresses,
/// and the workloads' authorization policies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mesh {
    pub services: HashMap<ServiceName, Arc<ServiceEndpoints>>,
    pub vips: HashMap<SocketAddr, ServiceName>,
    pub policies: Arc<Policies>,
}

/// Each workload's authorization policy, resolved (JWKS read), ready to
/// send; a workload with none gets the mesh's default.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Policies {
    pub mesh: weft_policy::MeshPolicy,
    pub workloads: BTreeMap<String, Arc<weft_policy::Resolved>>,
}

impl Policies {
    /// The policies a mesh file gives; JWKS files are read relative to
    /// `base` (the file's directory). An error names what is wrong.
    pub fn from_file(file: &MeshFile, base: &Path, jwks: &crate::jwks::JwksCache) -> Result<Self, String> {
        let mesh = file.policy.clone().unwrap_or_default();
        let mut workloads = BTreeMap::new();
        for (name, p) in file.workload_policies() {
            let resolved =
                weft_policy::Resolved::resolve(name.as_str(), Some(&p), &mesh, |_, provider| {
                    match &provider.jwks_url {
                        Some(url) => jwks.get(url).ok_or_else(|| format!("jwks_url {url}: not fetched")),
                        None => weft_policy::spec::read_jwks_file(base, provider),
                    }
                })
                .map_err(|e| e.to_string())?;
            workloads.insert(name.as_str().to_string(), Arc::new(resolved));
        }
        Ok(Policies { mesh, workloads })
    }

    /// `workload`'s policy: its own, or the mesh's default.
    pub fn for_workload(&self, workload: &str) -> Arc<weft_policy::Resolved> {
        if let Some(p) = self.workloads.get(workload) {
            return p.clone();
        }
        let resolved = weft_policy::Resolved::resolve(workload, None, &self.mesh, |_, _| Err(String::new()))
            .expect("a policy with no servers needs no keys");
        Arc::new(resolved)
    }
}

/// One service's endpoints, by address.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServiceEndpoints {
    pub endpoints: BTreeMap<SocketAddr, Endpoint>,
    pub routes: Vec<weft_mesh::Route>,
}

impl Mesh {
    /// The mesh a mesh file describes (JWKS files read relative to `base`).
    pub fn from_file_at(file: &MeshFile, base: &Path, jwks: &crate::jwks::JwksCache) -> Result<Self, String> {
        let mut mesh = Mesh::from_file(file);
        mesh.policies = Arc::new(Policies::from_file(file, base, jwks)?);
        Ok(mesh)
    }

    /// The mesh a mesh file's `services` describe (no policies).
    pub fn from_file(file: &MeshFile) -> Self {
        let mut mesh = Mesh::default();
        for (name, svc) in &file.services {
            let endpoints = svc.endpoints.iter().map(|e| (e.address, e.clone())).collect();
            mesh.services.insert(
                name.clone(),
                Arc::new(ServiceEndpoints {
                    endpoints,
                    routes: svc.routes.clone(),
                }),
            );
            for vip in &svc.addresses {
                mesh.vips.insert(*vip, name.clone());
            }
        }
        mesh
    }

    pub fn endpoint_count(&self) -> usize {
        self.services.values().map(|s| s.endpoints.len()).sum()
    }

    /// The service a client's authority means: by name, or by a virtual address.
    pub fn lookup(&self, authority: &str) -> Option<&ServiceName> {
        let name = ServiceName::parse(authority).ok()?;
        if let Some((k, _)) = self.services.get_key_value(&name) {
            return Some(k);
        }
        let addr: SocketAddr = authority.parse().ok()?;
        self.vips.get(&addr)
    }
}

/// What a source has to say about a refused change (for logs and metrics).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub message: String,
}

/// A source of the mesh.
pub trait Source: Send + Sync + 'static {
    /// For logs and /ready: what this source is (`file /path/to/mesh.yaml`).
    fn describe(&self) -> String;
    /// The mesh now and after every accepted change.
    fn watch(&self) -> watch::Receiver<Arc<Mesh>>;
    /// Changes refused (the last good mesh keeps being served).
    fn refusals(&self) -> watch::Receiver<Option<Refusal>>;
}

/// How long after a change event the file is read, so that the rest of a
/// burst (truncate, write, close) has landed.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(5);

/// The mesh file, watched with inotify (the `notify` crate). A version
/// that does not parse or validate is refused with its file, line and
/// field; the last good one keeps being served.
pub struct FileSource {
    path: PathBuf,
    mesh: watch::Receiver<Arc<Mesh>>,
    refusals: watch::Receiver<Option<Refusal>>,
    _watcher: notify::RecommendedWatcher,
}

impl FileSource {
    /// Reads `path` (an error if it is missing or invalid: the control plane
    /// does not start on a bad file) and watches it from then on. Must be
    /// called within a tokio runtime.
    pub async fn start(path: &Path, jwks_refresh: std::time::Duration) -> Result<Self, SourceError> {
        let path = std::path::absolute(path).map_err(|e| SourceError::Watch(format!("{}: {e}", path.display())))?;
        let text = std::fs::read_to_string(&path).map_err(|source| MeshError::Read {
            path: path.clone(),
            source,
        })?;
        let file = MeshFile::parse(&path, &text)?;
        if !file.workloads.is_empty() {
            tracing::info!(path = %path.display(), "the file's workloads are for `weft up`; serving its services and policies");
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let invalid = |message| MeshError::Invalid {
            path: path.clone(),
            message,
        };
        let jwks = crate::jwks::JwksCache::default();
        jwks.refresh(&file, &dir).await.map_err(invalid)?;
        let first = Mesh::from_file_at(&file, &dir, &jwks).map_err(invalid)?;
        let (mesh_tx, mesh) = watch::channel(Arc::new(first));
        let (refusal_tx, refusals) = watch::channel(None);

        // inotify on the directory, so that a file replaced by a rename
        // (editors, `weft up`) is seen as well as one written in place.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let _ = tx.send(event);
        })
        .map_err(|e| SourceError::Watch(e.to_string()))?;
        use notify::Watcher;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| SourceError::Watch(format!("{}: {e}", dir.display())))?;

        let watched = path.clone();
        let base = dir.clone();
        tokio::spawn(async move {
            let mut last_text = text;
            let mut last_good = file;
            let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + jwks_refresh, jwks_refresh);
            refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let event = tokio::select! {
                    e = rx.recv() => match e {
                        Some(e) => e,
                        None => break,
                    },
                    _ = refresh.tick() => {
                        // The JWKS by URL again: a provider's new keys reach
                        // the proxies with the policy.
                        if let Ok(true) = jwks.refresh(&last_good, &base).await
                            && let Ok(next) = Mesh::from_file_at(&last_good, &base, &jwks)
                        {
                            mesh_tx.send_if_modified(|cur| {
                                if **cur == next {
                                    false
                                } else {
                                    *cur = Arc::new(next);
                                    true
                                }
                            });
                        }
                        continue;
                    }
                };
                match event {
                    Ok(ev) if !ev.paths.iter().any(|p| p == &watched) => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "watching the mesh file"),
                }
                // Coalesce a burst of events (truncate, write, close, rename)
                // into one read, a moment after the first.
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
                let text = match std::fs::read_to_string(&watched) {
                    Ok(t) => t,
                    // Gone for a moment (being replaced): the rename's event follows.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        refuse(&refusal_tx, format!("cannot read {}: {e}", watched.display()));
                        continue;
                    }
                };
                // A file with nothing in it is one being rewritten in place
                // (truncated, not yet written): its next event brings the text.
                // An empty mesh is written `services: {}`.
                if text == last_text || text.is_empty() {
                    continue;
                }
                let parsed = match MeshFile::parse(&watched, &text) {
                    Ok(file) => match jwks.refresh(&file, &base).await {
                        Ok(_) => Mesh::from_file_at(&file, &base, &jwks)
                            .map(|m| (m, file))
                            .map_err(|e| format!("{}: {e}", watched.display())),
                        Err(e) => Err(format!("{}: {e}", watched.display())),
                    },
                    Err(e) => Err(e.to_string()),
                };
                match parsed {
                    Ok((next, file)) => {
                        last_good = file;
                        tracing::info!(
                            path = %watched.display(),
                            services = next.services.len(),
                            endpoints = next.endpoint_count(),
                            "mesh file changed"
                        );
                        mesh_tx.send_if_modified(|cur| {
                            if **cur == next {
                                false
                            } else {
                                *cur = Arc::new(next);
                                true
                            }
                        });
                        refusal_tx.send_replace(None);
                    }
                    Err(e) => refuse(&refusal_tx, e),
                }
                last_text = text;
            }
        });
        Ok(FileSource {
            path,
            mesh,
            refusals,
            _watcher: watcher,
        })
    }
}

fn refuse(tx: &watch::Sender<Option<Refusal>>, message: String) {
    tracing::warn!(error = %message, "mesh file change refused; serving the last good version");
    tx.send_replace(Some(Refusal { message }));
}

impl Source for FileSource {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
    fn watch(&self) -> watch::Receiver<Arc<Mesh>> {
        self.mesh.clone()
    }
    fn refusals(&self) -> watch::Receiver<Option<Refusal>> {
        self.refusals.clone()
    }
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Mesh(#[from] MeshError),
    #[error("cannot watch the mesh file: {0}")]
    Watch(String),
}
