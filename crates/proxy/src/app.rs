//! The one place where the parts meet: binds the listeners and starts the
//! proxy (discovery → routers → the inbound and outbound listeners, admin
//! beside them), then drains it on shutdown.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
};

use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};

use crate::{
    balance::BalanceParams,
    config::Config,
    core::Direction,
    discovery::{
        Discover, NoDiscovery,
        control::{ControlDiscovery, ControlMetrics},
        file::FileDiscovery,
    },
    drain,
    endpoint::ClientParams,
    inbound::Inbound,
    outbound::Outbound,
    route::Router,
    server::{self, ServerCtx, Side},
    telemetry::{
        Balancers,
        admin::{self, AdminState, BalancerCollector},
        metrics::Metrics,
    },
    transport::{LocalAddrs, OwnAddrs, SocketOptions},
};

/// The proxy's bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub outbound: Option<TcpListener>,
    pub inbound: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {role}: {source}")]
pub struct BindError {
    pub role: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

impl Listeners {
    /// Binds every listener the configuration enables.
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        async fn bind(role: &'static str, addr: Option<SocketAddr>) -> Result<Option<TcpListener>, BindError> {
            match addr {
                None => Ok(None),
                Some(addr) => {
                    TcpListener::bind(addr)
                        .await
                        .map(Some)
                        .map_err(|source| BindError { role, addr, source })
                }
            }
        }
        Ok(Listeners {
            outbound: bind("outbound", config.outbound_listen.addr()).await?,
            inbound: bind("inbound", config.inbound_listen.addr()).await?,
            admin: bind("admin", config.admin_listen.addr()).await?,
        })
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    pub outbound_addr: Option<SocketAddr>,
    pub inbound_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    shutdown: mpsc::UnboundedSender<()>,
    draining: tokio::sync::watch::Receiver<bool>,
    task: JoinHandle<bool>,
}

impl Proxy {
    /// Starts the proxy on the current tokio runtime. The admin server runs
    /// on `admin_runtime` when given (main gives it a thread of its own),
    /// else beside the data path.
    pub fn spawn(config: Config, listeners: Listeners, admin_runtime: Option<tokio::runtime::Handle>) -> Proxy {
        let (metrics, mut registry) = Metrics::new();
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        let (outbound_addr, inbound_addr, admin_addr) = (
            addr(&listeners.outbound),
            addr(&listeners.inbound),
            addr(&listeners.admin),
        );
        let own = OwnAddrs::new(
            [
                ("outbound", outbound_addr),
                ("inbound", inbound_addr),
                ("admin", admin_addr),
            ]
            .into_iter()
            .filter_map(|(role, a)| Some((role, a?)))
            .collect(),
            LocalAddrs::read(),
        );
        let identity = match (&config.identity_token_file, &config.control_plane) {
            (Some(token), Some(cp)) => Some(crate::identity::spawn(
                cp.clone(),
                token.clone(),
                metrics.identity.clone(),
            )),
            _ => None,
        };
        let policy = listeners.inbound.as_ref().map(|_| {
            // Fail closed only where a policy is awaited.
            let fail_closed = if config.policy_workload.is_some() {
                config.inbound_mtls_required.clone()
            } else {
                Default::default()
            };
            let p = crate::policy::Policy::new(
                config.inbound_default_policy,
                fail_closed,
                config.inbound_policy_port,
                metrics.authz.clone(),
            );
            if let (Some(w), Some(cp)) = (&config.policy_workload, &config.control_plane) {
                crate::policy::spawn_watch(cp.clone(), w.clone(), p.clone());
            }
            p
        });
        let (outbound, inbound, discovery) = routers(&config, &metrics, &own, identity.clone());
        let balancers = balancers(&outbound, &inbound);
        registry.register_collector(Box::new(BalancerCollector {
            balancers: balancers.clone(),
        }));

        let app_health = match (&config.app_health_check, config.inbound_forward) {
            (Some(service), Some(app)) => Some(crate::health::spawn(app, service.clone(), metrics.app_serving.clone())),
            _ => {
                metrics.app_serving.set(-1);
                None
            }
        };
        let (drain_signal, drain_watch) = drain::channel();
        let (shutdown_tx, shutdown_rx) = mpsc::unbounded_channel();
        let ready = Arc::new(AtomicBool::new(true));

        if let Some(l) = listeners.outbound {
            let side = Side::Outbound(Outbound {
                router: outbound.clone(),
            });
            let ctx = Arc::new(ServerCtx::new(
                side,
                outbound.clone(),
                metrics.clone(),
                &config,
                None,
                None,
            ));
            tokio::spawn(server::serve(l, ctx, drain_watch.clone()));
        }
        if let Some(l) = listeners.inbound {
            let side = Side::Inbound(Inbound {
                app: config.inbound_forward,
                own,
            });
            let ctx = Arc::new(ServerCtx::new(
                side,
                inbound.clone(),
                metrics.clone(),
                &config,
                identity.clone(),
                policy.clone(),
            ));
            tokio::spawn(server::serve(l, ctx, drain_watch.clone()));
        }
        drop(drain_watch);
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(l) = listeners.admin {
            let state = Arc::new(AdminState {
                registry,
                config_json: serde_json::to_string_pretty(&config.to_json()).unwrap_or_default() + "\n",
                balancers,
                token: config.admin_token.clone(),
                ready: ready.clone(),
                shutdown: shutdown_tx.clone(),
                details: Arc::new(move || discovery.status().unwrap_or_default()),
                app_health,
                identity,
                policy: policy.filter(|_| config.policy_workload.is_some()),
            });
            let fut = admin::serve(l, state, async move {
                let _ = admin_stopped.await;
            });
            match admin_runtime {
                Some(rt) => drop(rt.spawn(fut)),
                None => drop(tokio::spawn(fut)),
            }
        }

        let (draining_tx, draining) = tokio::sync::watch::channel(false);
        let stop = Stop {
            requested: shutdown_rx,
            draining: draining_tx,
            ready,
            drain: drain_signal,
            grace: config.shutdown_grace,
            admin: admin_stop,
        };
        // The routers (and their connections) live until the drain is over.
        let task = tokio::spawn(stop.run((outbound, inbound)));
        Proxy {
            outbound_addr,
            inbound_addr,
            admin_addr,
            shutdown: shutdown_tx,
            draining,
            task,
        }
    }

    /// Starts a drain (as SIGTERM does).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(());
    }

    /// Completes once a drain has started (by [`Proxy::shutdown`] or admin `/shutdown`).
    pub async fn closed(&self) {
        let mut rx = self.draining.clone();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Waits for the drain to finish; `true` when everything finished within
    /// the grace period.
    pub async fn wait(self) -> bool {
        self.task.await.unwrap_or(false)
    }
}

/// What the proxy does when asked to stop.
struct Stop {
    requested: mpsc::UnboundedReceiver<()>,
    draining: tokio::sync::watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    drain: drain::Signal,
    grace: std::time::Duration,
    admin: tokio::sync::oneshot::Sender<()>,
}

impl Stop {
    /// Waits for a shutdown request, then drains: readiness turns 503,
    /// listeners stop, connections finish (up to the grace period), admin
    /// stops last. `true` when everything finished in time.
    async fn run(mut self, keep: impl Send) -> bool {
        let _ = self.requested.recv().await;
        let _ = self.draining.send(true);
        tracing::info!(grace = ?self.grace, "draining: no new connections; in-flight requests may finish");
        self.ready.store(false, std::sync::atomic::Ordering::Relaxed);
        let clean = self.drain.drain(self.grace).await;
        if clean {
            tracing::info!("drained");
        } else {
            tracing::warn!("shutdown grace period passed with connections still open; closing them");
        }
        let _ = self.admin.send(());
        drop(keep);
        clean
    }
}

/// The outbound router (over discovery) and the inbound one (always the
/// local app: discovery plays no part).
fn routers(
    config: &Config,
    metrics: &Arc<Metrics>,
    own: &OwnAddrs,
    identity: Option<crate::identity::Identity>,
) -> (Arc<Router>, Arc<Router>, Arc<dyn Discover>) {
    let discovery: Arc<dyn Discover> = match (&config.discovery_file, &config.control_plane) {
        (Some(path), _) => {
            let m = metrics.clone();
            Arc::new(FileDiscovery::spawn(path.clone(), move |_| {
                m.discovery_errors.inc();
            }))
        }
        (None, Some(addr)) => Arc::new(ControlDiscovery::new(
            addr.clone(),
            config.workload.clone().unwrap_or_default(),
            ControlMetrics {
                connected: metrics.control_plane_connected.clone(),
                disconnects: metrics.control_plane_disconnects.clone(),
            },
        )),
        (None, None) => Arc::new(NoDiscovery),
    };
    let balance = BalanceParams {
        algorithm: config.balancer,
        decay: config.ewma_decay,
        accrual: weft_balance::Accrual {
            consecutive: config.accrual_failures,
            backoff_max: config.accrual_backoff_max.as_nanos() as u64,
            max_ejected: f64::from(config.max_ejected_percent) / 100.0,
            ..weft_balance::Accrual::default()
        },
        retry_budget: (
            f64::from(config.retry_budget_percent) / 100.0,
            f64::from(config.retry_min_per_second),
        ),
    };
    let client = Arc::new(ClientParams {
        connect_timeout: config.connect_timeout,
        max_header_bytes: config.max_header_bytes,
        fail_fast: config.fail_fast_timeout,
        metrics: metrics.clone(),
        engine: config.h2_engine,
        timeouts: server::timeouts(config, None),
        sockets: SocketOptions::from_config(config),
        http1_max_connections: config.http1_max_connections as usize,
        http1_idle_timeout: config.http1_idle_timeout,
        identity,
    });
    let idle = config.balancer_idle_timeout;
    let outbound = Router::new(discovery.clone(), own.clone(), balance.clone(), client.clone(), idle);
    let inbound = Router::new(Arc::new(NoDiscovery), own.clone(), balance, client, idle);
    (outbound, inbound, discovery)
}

/// Every balancer's state, read by admin and the metrics collector (which
/// do not keep the routers alive).
fn balancers(outbound: &Arc<Router>, inbound: &Arc<Router>) -> Balancers {
    let routers = [
        (Direction::Outbound, Arc::downgrade(outbound)),
        (Direction::Inbound, Arc::downgrade(inbound)),
    ];
    Arc::new(move || {
        routers
            .iter()
            .filter_map(|(dir, r)| Some((*dir, r.upgrade()?)))
            .flat_map(|(dir, r)| r.views().into_iter().map(move |v| (dir, v)))
            .collect()
    })
}
