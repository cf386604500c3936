//! Routing: which balancer serves a request, by its destination.
//!
//! A destination is a service (looked up in discovery) or one address.
//! Requests that name their target (explicit mode) are resolved here
//! ([`Router::dest_for_authority`]); an IP address that discovery lists as a
//! service's virtual IP means that service ([`Router::dest_at`]).
//!
//! Balancers are created on first use, keyed by destination and protocol,
//! and dropped after `--balancer-idle-timeout` without requests (their
//! endpoint connections close with them).

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use crate::{
    balance::{BalanceParams, Balancer},
    core::{Authority, Dest, Proto, lock},
    discovery::{Discover, EndpointMeta},
    endpoint::ClientParams,
    error::ProxyError,
    telemetry::BalancerView,
    transport::OwnAddrs,
};

/// The balancers of one direction (outbound or inbound).
pub(crate) struct Router {
    discovery: Arc<dyn Discover>,
    /// The proxy's own listeners: a destination that reaches one is a loop.
    own: OwnAddrs,
    params: BalanceParams,
    client: Arc<ClientParams>,
    idle_timeout: Duration,
    balancers: std::sync::Mutex<HashMap<(Dest, Proto), Arc<Balancer>>>,
}

impl Router {
    /// A router; its idle balancers are evicted by a task on the current runtime.
    pub(crate) fn new(
        discovery: Arc<dyn Discover>,
        own: OwnAddrs,
        params: BalanceParams,
        client: Arc<ClientParams>,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        let router = Arc::new(Router {
            discovery,
            own,
            params,
            client,
            idle_timeout,
            balancers: std::sync::Mutex::new(HashMap::new()),
        });
        tokio::spawn(evict_idle(Arc::downgrade(&router)));
        router
    }

    /// Where traffic to `addr` goes: the service whose virtual IP it is, or
    /// the address itself.
    pub(crate) fn dest_at(&self, addr: SocketAddr) -> Dest {
        match self.discovery.service_at(addr) {
            Some(svc) => Dest::Service(svc),
            None => Dest::Addr(addr),
        }
    }

    /// Which of the proxy's own listeners a connection to `addr` would reach.
    pub(crate) fn own_listener(&self, addr: SocketAddr) -> Option<&'static str> {
        self.own.listener_at(addr)
    }

    /// Where a request that names its target (`:authority` or `Host`) goes:
    /// a service discovery knows by that name (an `IP:port` name included),
    /// the service whose virtual IP it is, or that address itself, unless
    /// the address is one of the proxy's own listeners (a loop).
    pub(crate) fn dest_for_authority(&self, authority: Option<&str>, scheme: Option<&str>) -> Result<Dest, ProxyError> {
        let raw = authority.ok_or_else(|| ProxyError::NoTarget("no :authority or Host header".into()))?;
        let default_port = if scheme == Some("https") { 443 } else { 80 };
        let authority = Authority::parse(raw, Some(default_port)).map_err(|e| ProxyError::NoTarget(e.to_string()))?;
        let Some(addr) = authority.socket_addr() else {
            return Ok(Dest::Service(authority));
        };
        if self.discovery.knows(&authority) {
            return Ok(Dest::Service(authority));
        }
        match self.dest_at(addr) {
            Dest::Addr(addr) => match self.own.listener_at(addr) {
                Some(listener) => Err(ProxyError::Loop { target: addr, listener }),
                None => Ok(Dest::Addr(addr)),
            },
            service => Ok(service),
        }
    }

    /// The balancer for `dest`, created on first use.
    pub(crate) fn balancer(&self, dest: &Dest, proto: Proto) -> Arc<Balancer> {
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
                    identity: None,
                }],
                self.params.clone(),
                self.client.clone(),
            ),
        };
        b.touch();
        map.insert((dest.clone(), proto), b.clone());
        b
    }

    /// Every balancer's state, for admin and metrics.
    pub(crate) fn views(&self) -> Vec<BalancerView> {
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

#[cfg(test)]
mod tests;
