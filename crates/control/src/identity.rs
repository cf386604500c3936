//! The Identity service: a proxy sends its token and a CSR; the CA signs
//! the CSR's key into a short-lived certificate naming the identity the
//! token belongs to. Proxies also watch the CA's generation, which a
//! trust-anchor rotation step changes ([`IdentityService::rotate`], driven
//! by `weft identity rotate` through the admin port); the service knows
//! which generation each proxy holds, so a rotation moves to its next step
//! only once every proxy has the last one.

use std::{
    collections::HashMap,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use weft_api::identity::{self as pb, identity_server::Identity};
use weft_identity::{Ca, Rotation, Step, Tokens};

use crate::metrics::{CertLabels, Metrics};

/// The longest CSR accepted (an ECDSA or RSA-4096 CSR is well under 4 KiB).
pub const MAX_CSR: usize = 16 << 10;

/// A proxy whose Watch ended is still counted this long (it reopens its
/// Watch after each certificate; one that is gone for good is dropped).
pub const WATCH_GRACE: Duration = Duration::from_secs(15);
/// The most proxies tracked at once (each has proved a token).
pub const MAX_PROXIES: usize = 100_000;

/// The Identity service over a CA and a tokens file.
pub struct IdentityService {
    ca: RwLock<Arc<Ca>>,
    /// The CA's directory (rotation steps are applied there).
    dir: Option<PathBuf>,
    /// Which token proves which identity; re-read when a token is unknown
    /// (at most every [`TOKENS_REREAD`]), so new workloads need no restart.
    pub tokens_file: PathBuf,
    pub lifetime: Duration,
    pub metrics: Arc<Metrics>,
    tokens: Mutex<(Tokens, Option<Instant>)>,
    generation: tokio::sync::watch::Sender<u64>,
    proxies: Arc<Mutex<HashMap<String, Watcher>>>,
    /// One rotation step at a time.
    rotating: Mutex<()>,
}

/// A proxy that watches the CA.
#[derive(Debug)]
struct Watcher {
    identity: String,
    installed: u64,
    open: u32,
    closed_at: Option<Instant>,
}

/// The least time between two readings of the tokens file.
const TOKENS_REREAD: Duration = Duration::from_millis(200);

impl IdentityService {
    /// The service over `ca`, kept in `dir` (`None`: a CA that cannot rotate).
    pub fn new(
        ca: Arc<Ca>,
        dir: Option<PathBuf>,
        tokens_file: PathBuf,
        lifetime: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        IdentityService {
            generation: tokio::sync::watch::Sender::new(ca.generation()),
            ca: RwLock::new(ca),
            dir,
            tokens_file,
            lifetime,
            metrics,
            tokens: Mutex::new((Tokens::default(), None)),
            proxies: Arc::default(),
            rotating: Mutex::new(()),
        }
    }

    /// The CA now.
    pub fn ca(&self) -> Arc<Ca> {
        self.ca.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies one rotation step to the CA's directory, then serves the CA
    /// it leaves (the proxies learn of it through their Watch).
    pub fn rotate(&self, step: Step) -> Result<(), String> {
        let _one = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.dir.as_ref().ok_or("this CA has no directory to rotate in")?;
        let ca = Ca::rotate(dir, self.ca().trust_domain(), step).map_err(|e| e.to_string())?;
        let generation = ca.generation();
        *self.ca.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ca);
        self.generation.send_replace(generation);
        tracing::info!(step = step.as_str(), generation, "trust-anchor rotation step applied");
        Ok(())
    }

    /// The CA and the proxies' progress, for `GET /identity` (JSON).
    pub fn status(&self) -> serde_json::Value {
        let ca = self.ca();
        let generation = ca.generation();
        let rotation = self
            .dir
            .as_ref()
            .map_or(Ok(Rotation::Idle), |d| Rotation::of(d))
            .map_or_else(|e| e.to_string(), |r| r.as_str().to_string());
        let anchors: Vec<serde_json::Value> = ca
            .anchors()
            .iter()
            .filter_map(|a| Some((weft_identity::inspect(a).ok()?, weft_identity::fingerprint(a))))
            .map(|(i, fp)| {
                serde_json::json!({
                    "subject": i.subject,
                    "sha256": fp,
                    "not_after_unix": i.not_after.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                })
            })
            .collect();
        let mut proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut proxies);
        let behind: Vec<&String> = proxies
            .iter()
            .filter(|(_, w)| w.installed != generation)
            .map(|(_, w)| &w.identity)
            .collect();
        serde_json::json!({
            "trust_domain": ca.trust_domain(),
            "generation": generation.to_string(),
            "rotation": rotation,
            "next_step": Step::after(Rotation::of_str(&rotation)).as_str(),
            "anchors": anchors,
            "proxies": proxies.len(),
            "proxies_current": proxies.len() - behind.len(),
            "behind": behind.iter().take(20).collect::<Vec<_>>(),
        })
    }

    fn name(&self, token: &str) -> Option<weft_identity::Name> {
        let ca = self.ca();
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.0.name(token, ca.trust_domain()) {
            return Some(n);
        }
        if t.1.is_none_or(|at| at.elapsed() >= TOKENS_REREAD) {
            t.1 = Some(Instant::now());
            match Tokens::read(&self.tokens_file) {
                Ok(read) => t.0 = read,
                Err(e) => tracing::warn!(error = %e, "cannot read the identity tokens; keeping the last ones"),
            }
        }
        t.0.name(token, ca.trust_domain())
    }

    fn count(&self, result: &'static str) {
        self.metrics.certificates.get_or_create(&CertLabels { result }).inc();
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(&self, req: Request<pb::CertifyRequest>) -> Result<Response<pb::CertifyResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        if req.csr.len() > MAX_CSR {
            self.count("bad_csr");
            return Err(Status::invalid_argument(format!("a CSR is at most {MAX_CSR} bytes")));
        }
        let Some(name) = self.name(&req.token) else {
            self.count("unknown_token");
            tracing::warn!(?peer, "a certificate was asked for with an unknown token");
            return Err(Status::unauthenticated("unknown identity token"));
        };
        let ca = self.ca();
        let issued = match ca.issue(&req.csr, &name, self.lifetime) {
            Ok(i) => i,
            Err(weft_identity::IdentityError::Invalid(why)) => {
                self.count("bad_csr");
                return Err(Status::invalid_argument(why));
            }
            Err(e) => {
                self.count("error");
                tracing::error!(error = %e, identity = %name, "cannot issue a certificate");
                return Err(Status::internal("cannot issue a certificate"));
            }
        };
        self.count("issued");
        tracing::debug!(identity = %name, ?peer, "certificate issued");
        let not_after_unix_ms = issued
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(Response::new(pb::CertifyResponse {
            leaf: issued.leaf,
            intermediates: issued.intermediates,
            anchors: ca.anchors().to_vec(),
            not_after_unix_ms,
            identity: name.spiffe(),
            generation: ca.generation(),
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::CaState, Status>> + Send>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let Some(name) = self.name(&req.token) else {
            return Err(Status::unauthenticated("unknown identity token"));
        };
        if req.instance.is_empty() || req.instance.len() > 64 {
            return Err(Status::invalid_argument("an instance id of 1 to 64 characters"));
        }
        {
            let mut proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
            if !proxies.contains_key(&req.instance) && proxies.len() >= MAX_PROXIES {
                prune(&mut proxies);
                if proxies.len() >= MAX_PROXIES {
                    return Err(Status::resource_exhausted("too many proxies watch this CA"));
                }
            }
            let w = proxies.entry(req.instance.clone()).or_insert(Watcher {
                identity: name.spiffe(),
                installed: 0,
                open: 0,
                closed_at: None,
            });
            w.installed = req.installed;
            w.open += 1;
            w.closed_at = None;
        }
        let stream = CaStream {
            generations: tokio_stream::wrappers::WatchStream::new(self.generation.subscribe()),
            _registration: Registration {
                proxies: self.proxies.clone(),
                instance: req.instance,
            },
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Drops watchers closed for longer than [`WATCH_GRACE`].
fn prune(proxies: &mut HashMap<String, Watcher>) {
    proxies.retain(|_, w| w.open > 0 || w.closed_at.is_none_or(|t| t.elapsed() < WATCH_GRACE));
}

/// A proxy's Watch: the generation now and at each change.
struct CaStream {
    generations: tokio_stream::wrappers::WatchStream<u64>,
    /// Held for its drop.
    _registration: Registration,
}

impl Stream for CaStream {
    type Item = Result<pb::CaState, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.generations)
            .poll_next(cx)
            .map(|g| g.map(|generation| Ok(pb::CaState { generation })))
    }
}

/// Marks the proxy's Watch closed when the stream is dropped.
struct Registration {
    proxies: Arc<Mutex<HashMap<String, Watcher>>>,
    instance: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = proxies.get_mut(&self.instance) {
            w.open = w.open.saturating_sub(1);
            if w.open == 0 {
                w.closed_at = Some(Instant::now());
            }
        }
    }
}
