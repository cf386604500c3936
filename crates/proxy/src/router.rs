//! Routing: which balancer serves a request, by its target.
//!
//! Balancers are created on first use, keyed by target and protocol, and
//! dropped after [`crate::config::Config::balancer_idle_timeout`] without
//! requests (their endpoint connections close with them).

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use crate::{
    balancer::{BalanceParams, Balancer, BalancerView},
    discovery::{Authority, Discover, EndpointMeta},
    endpoint::{ClientParams, Proto},
    metrics::lock,
};

/// Where a request or connection goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    /// A service known (or to be looked up) in discovery.
    Service(Authority),
    /// One fixed address: the local app (inbound), or an original destination
    /// that is not a service.
    Addr(SocketAddr),
}

/// The balancers of one direction (outbound or inbound).
pub struct Router {
    discovery: Arc<dyn Discover>,
    params: BalanceParams,
    client: Arc<ClientParams>,
    idle_timeout: Duration,
    balancers: std::sync::Mutex<HashMap<(Dest, Proto), Arc<Balancer>>>,
}

impl Router {
    pub fn new(
        discovery: Arc<dyn Discover>,
        params: BalanceParams,
        client: Arc<ClientParams>,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        let router = Arc::new(Router {
            discovery,
            params,
            client,
            idle_timeout,
            balancers: std::sync::Mutex::new(HashMap::new()),
        });
        tokio::spawn(evict_idle(Arc::downgrade(&router)));
        router
    }

    pub fn discovery(&self) -> &dyn Discover {
        &*self.discovery
    }

    /// The balancer for `dest`, created on first use.
    pub fn balancer(&self, dest: &Dest, proto: Proto) -> Arc<Balancer> {
        let mut map = lock(&self.balancers);
        if let Some(b) = map.get(&(dest.clone(), proto)) {
            b.touch();
            return b.clone();
        }
        let b = match dest {
            Dest::Service(authority) => Balancer::discovered(
                authority.clone(),
                proto,
                self.discovery.resolve(authority),
                self.params.clone(),
                self.client.clone(),
            ),
            Dest::Addr(addr) => Balancer::fixed(
                Authority::from(*addr),
                proto,
                &[EndpointMeta {
                    addr: *addr,
                    name: addr.to_string().into(),
                }],
                self.params.clone(),
                self.client.clone(),
            ),
        };
        b.touch();
        map.insert((dest.clone(), proto), b.clone());
        b
    }

    pub fn views(&self) -> Vec<BalancerView> {
        let balancers: Vec<Arc<Balancer>> = lock(&self.balancers).values().cloned().collect();
        let mut views: Vec<BalancerView> = balancers.iter().map(|b| b.view()).collect();
        views.sort_by(|a, b| (&a.target, a.protocol).cmp(&(&b.target, b.protocol)));
        views
    }

    fn evict(&self) {
        let mut map = lock(&self.balancers);
        map.retain(|_, b| {
            let keep = b.idle_for() < self.idle_timeout || b.in_flight() > 0;
            if !keep {
                tracing::debug!(target = %b.target, "dropping idle balancer");
                b.close();
            }
            keep
        });
    }
}

async fn evict_idle(router: std::sync::Weak<Router>) {
    let period = match router.upgrade() {
        Some(r) => (r.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        match router.upgrade() {
            Some(r) => r.evict(),
            None => return,
        }
    }
}
