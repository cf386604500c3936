//! weft-control, the control plane: it learns the mesh from a [`source`]
//! (the mesh file now, Kubernetes later), keeps it in a [`store`], and
//! streams each service's endpoints to the proxies that ask
//! ([`destination`], API `weft.destination.v1`), and each workload's
//! authorization policy to its inbound proxies ([`policy`], API
//! `weft.policy.v1`). With a CA it also signs the proxies' certificates
//! ([`identity`], API `weft.identity.v1`).

pub mod admin;
pub mod destination;
pub mod identity;
pub mod jwks;
pub mod metrics;
pub mod policy;
pub mod source;
pub mod store;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use weft_api::{destination::destination_server::DestinationServer, identity::identity_server::IdentityServer};

use crate::{metrics::Metrics, source::Source, store::Store};

/// How often an idle connection is pinged, and how long a ping may go
/// unanswered before the connection (and its watches) is dropped.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// The most concurrent streams (watches) one connection may open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 10_000;

/// What the Identity service needs.
pub struct IdentityConfig {
    pub ca: Arc<weft_identity::Ca>,
    /// Where the CA is kept (trust-anchor rotation steps are applied
    /// there); `None`: it cannot rotate.
    pub dir: Option<PathBuf>,
    /// Which token proves which identity ([`weft_identity::Tokens`]).
    pub tokens_file: PathBuf,
    /// How long the certificates it issues are valid.
    pub lifetime: Duration,
}

/// Serves `source` on `grpc` (Destination, and Identity when `identity`
/// is given) and `admin` until `shutdown`.
pub async fn serve(
    source: Arc<dyn Source>,
    identity: Option<IdentityConfig>,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let mut mesh = source.watch();
    let policy_mesh = mesh.clone();
    let store = Arc::new(Store::new(mesh.borrow_and_update().clone()));
    record(&metrics, &store);

    // Source → store.
    {
        let (store, metrics) = (store.clone(), metrics.clone());
        tokio::spawn(async move {
            while mesh.changed().await.is_ok() {
                let next = mesh.borrow_and_update().clone();
                store.apply(next);
                metrics.changes.inc();
                record(&metrics, &store);
            }
        });
    }
    let mut refusals = source.refusals();
    {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            while refusals.changed().await.is_ok() {
                if refusals.borrow_and_update().is_some() {
                    metrics.refusals.inc();
                }
            }
        });
    }

    let details = {
        let (store, source, refusals) = (store.clone(), source.clone(), source.refusals());
        move || {
            let mesh = store.mesh();
            let mut s = format!(
                "source: {}\nservices: {}\nendpoints: {}\n",
                source.describe(),
                mesh.services.len(),
                mesh.endpoint_count()
            );
            if let Some(r) = &*refusals.borrow() {
                s.push_str(&format!(
                    "last change refused (serving the last good version): {}\n",
                    r.message
                ));
            }
            s
        }
    };
    let identity = identity.map(|c| {
        Arc::new(identity::IdentityService::new(
            c.ca,
            c.dir,
            c.tokens_file,
            c.lifetime,
            metrics.clone(),
        ))
    });
    let admin_state = Arc::new(admin::AdminState {
        registry: metrics.registry(),
        details: Box::new(details),
        identity: identity.clone(),
    });
    tokio::spawn(admin::serve(admin, admin_state));

    let identity =
        identity.map(|svc| IdentityServer::from_arc(svc).max_decoding_message_size(identity::MAX_CSR + 1024));
    let metrics_for_policy = metrics.clone();
    let service = destination::DestinationService {
        store,
        metrics,
        source: source.describe(),
    };
    let policy = weft_api::policy::policy_server::PolicyServer::new(policy::PolicyService {
        mesh: policy_mesh,
        metrics: metrics_for_policy,
    });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .tcp_nodelay(true)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .add_service(DestinationServer::new(service))
        .add_service(policy)
        .add_optional_service(identity)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(grpc), shutdown)
        .await?;
    Ok(())
}

fn record(metrics: &Metrics, store: &Store) {
    let mesh = store.mesh();
    metrics.services.set(mesh.services.len() as i64);
    metrics.endpoints.set(mesh.endpoint_count() as i64);
}
