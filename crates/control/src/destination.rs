//! The Destination service: `Get(authority)` streams a service's endpoints,
//! a snapshot first and then adds and removes.

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;
use tonic::{Request, Response, Status};
use weft_api::destination::{self as pb, destination_server::Destination};
use weft_mesh::{Endpoint, Protocol};

use crate::{
    metrics::{Metrics, WatchGuard},
    source::ServiceEndpoints,
    store::{ServiceWatch, Store},
};

/// The longest authority a client may ask for.
pub const MAX_AUTHORITY: usize = 1024;

/// The Destination service over the store.
pub struct DestinationService {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub source: String,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::Update, Status>> + Send>>;

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = UpdateStream;

    async fn get(&self, req: Request<pb::GetDestination>) -> Result<Response<UpdateStream>, Status> {
        let req = req.into_inner();
        if req.authority.len() > MAX_AUTHORITY {
            return Err(Status::invalid_argument(format!(
                "authority longer than {MAX_AUTHORITY} bytes"
            )));
        }
        let Some((name, watch)) = self.store.subscribe(&req.authority) else {
            self.metrics.not_found.inc();
            tracing::debug!(authority = %req.authority, context = %req.context, "unknown service");
            return Err(Status::not_found(format!(
                "no service `{}` in {}",
                req.authority, self.source
            )));
        };
        tracing::debug!(authority = %req.authority, service = %name, context = %req.context, "watch opened");
        let state = Watch {
            rx: watch,
            sent: None,
            ended: false,
            _guard: self.metrics.watch_opened(),
            metrics: self.metrics.clone(),
        };
        Ok(Response::new(Box::pin(futures_util::stream::unfold(state, next))))
    }
}

struct Watch {
    rx: ServiceWatch,
    sent: Option<Arc<ServiceEndpoints>>,
    ended: bool,
    _guard: WatchGuard,
    metrics: Arc<Metrics>,
}

/// The next message for one watcher: a snapshot first, then what changed
/// since the last one it was sent.
async fn next(mut w: Watch) -> Option<(Result<pb::Update, Status>, Watch)> {
    if w.ended {
        return None;
    }
    loop {
        let current = w.rx.borrow_and_update().clone();
        let update = match (current, &w.sent) {
            (None, _) => {
                w.ended = true;
                return Some((Err(Status::not_found("the service is gone")), w));
            }
            (Some(svc), None) => {
                let u = snapshot(&svc);
                w.sent = Some(svc);
                Some(u)
            }
            (Some(svc), Some(prev)) => {
                let u = diff(prev, &svc);
                w.sent = Some(svc);
                u
            }
        };
        if let Some(u) = update {
            w.metrics.updates.inc();
            return Some((Ok(u), w));
        }
        if w.rx.changed().await.is_err() {
            return None;
        }
    }
}

fn snapshot(svc: &ServiceEndpoints) -> pb::Update {
    pb::Update {
        kind: Some(pb::update::Kind::Snapshot(pb::Snapshot {
            endpoints: svc.endpoints.values().map(to_pb).collect(),
            routes: svc.routes.iter().map(route_pb).collect(),
        })),
    }
}

/// Adds (new or changed endpoints) or removes; when both, or when the
/// routes changed, a snapshot.
fn diff(prev: &ServiceEndpoints, next: &ServiceEndpoints) -> Option<pb::Update> {
    if prev.routes != next.routes {
        return Some(snapshot(next));
    }
    let added: Vec<&Endpoint> = next
        .endpoints
        .iter()
        .filter(|(a, e)| prev.endpoints.get(a) != Some(e))
        .map(|(_, e)| e)
        .collect();
    let removed: Vec<String> = prev
        .endpoints
        .keys()
        .filter(|a| !next.endpoints.contains_key(a))
        .map(|a| a.to_string())
        .collect();
    let kind = match (added.is_empty(), removed.is_empty()) {
        (true, true) => return None,
        (false, true) => pb::update::Kind::Add(pb::Added {
            endpoints: added.into_iter().map(to_pb).collect(),
        }),
        (true, false) => pb::update::Kind::Remove(pb::Removed { addresses: removed }),
        (false, false) => return Some(snapshot(next)),
    };
    Some(pb::Update { kind: Some(kind) })
}

fn to_pb(e: &Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        address: e.address.to_string(),
        workload: e.display_name(),
        identity: e.identity.clone().unwrap_or_default(),
        protocol: match e.protocol {
            Protocol::Detect => pb::Protocol::Detect,
            Protocol::Grpc | Protocol::Http => pb::Protocol::Http,
            Protocol::Opaque => pb::Protocol::Opaque,
        } as i32,
        weight: e.weight,
    }
}

fn route_pb(r: &weft_mesh::Route) -> pb::Route {
    pb::Route {
        path: r.path.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
        retry_codes_set: r.retry_codes.is_some(),
        retry_codes: r.retry_codes.iter().flatten().map(|c| u32::from(c.0)).collect(),
        timeout_ms: r.timeout.map_or(0, |t| t.0.as_millis().max(1) as u64),
    }
}
