//! What one client connection remembers of its requests' routes: most
//! connections send every request to one target, so the routing lookup
//! (authority parsing, the router's map, the route metrics) is done once
//! per connection and target, not per request.

use std::sync::Arc;

use super::{Head, RequestPath};
use crate::{
    balance::Balancer,
    core::{ConnMeta, Target},
    error::ProxyError,
    telemetry::metrics::RouteMetrics,
};

/// Routes memoised per connection.
const MEMO_ROUTES: usize = 16;

/// A connection's route memo.
#[derive(Debug, Default)]
pub(crate) struct Memo(Option<Memoised>);

#[derive(Debug)]
struct Memoised {
    /// The raw authority the balancer was found for (`""` for a connection
    /// whose target is fixed).
    key: Box<str>,
    balancer: Arc<Balancer>,
    routes: Vec<(Box<str>, Arc<RouteMetrics>)>,
}

impl RequestPath {
    /// The balancer and route metrics of a request, from the connection's
    /// memo when the target and path were seen before on it.
    pub(super) fn resolve(
        &self,
        conn: &ConnMeta,
        memo: &mut Memo,
        head: &Head<'_>,
    ) -> Result<(Arc<Balancer>, Arc<RouteMetrics>), ProxyError> {
        let key = match conn.target {
            Target::Fixed(_) => Some(""),
            Target::Named => head.authority,
        };
        let direction = conn.direction.label();
        if let (Some(key), Some(m)) = (key, memo.0.as_mut())
            && &*m.key == key
            && !m.balancer.is_closed()
        {
            m.balancer.touch();
            let balancer = m.balancer.clone();
            if let Some((_, r)) = m.routes.iter().find(|(p, _)| &**p == head.path) {
                return Ok((balancer, r.clone()));
            }
            let route = self.metrics.route(direction, &balancer.label, head.path, head.grpc);
            if m.routes.len() < MEMO_ROUTES {
                m.routes.push((head.path.into(), route.clone()));
            }
            return Ok((balancer, route));
        }
        let dest = match &conn.target {
            Target::Fixed(dest) => dest.clone(),
            Target::Named => self.router.dest_for_authority(head.authority, head.scheme)?,
        };
        let balancer = self.router.balancer(&dest, conn.proto);
        let route = self.metrics.route(direction, &balancer.label, head.path, head.grpc);
        if let Some(key) = key {
            memo.0 = Some(Memoised {
                key: key.into(),
                balancer: balancer.clone(),
                routes: vec![(head.path.into(), route.clone())],
            });
        }
        Ok((balancer, route))
    }
}
