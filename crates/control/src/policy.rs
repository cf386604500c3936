//! The Policy service: each inbound proxy watches its workload's
//! authorization policy; a change to the source reaches every watcher
//! within the source's own delay (a mesh file change: milliseconds).

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use weft_api::policy::{self as pb, policy_server::Policy};

use crate::{metrics::Metrics, source::Mesh};

/// The longest workload name a proxy may ask for.
pub const MAX_WORKLOAD: usize = 253;

/// The Policy service over the source's mesh.
pub struct PolicyService {
    pub mesh: watch::Receiver<Arc<Mesh>>,
    pub metrics: Arc<Metrics>,
}

type PolicyStream = Pin<Box<dyn Stream<Item = Result<pb::WorkloadPolicy, Status>> + Send>>;

/// One watcher: what it was sent last.
struct Watch {
    workload: String,
    rx: watch::Receiver<Arc<Mesh>>,
    sent: Option<String>,
    _guard: crate::metrics::WatchGuard,
}

/// The message for `workload` under `mesh`.
pub fn message(mesh: &Mesh, workload: &str) -> pb::WorkloadPolicy {
    let resolved = mesh.policies.for_workload(workload);
    let json = serde_json::to_string(&*resolved).expect("a policy serializes");
    let version = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        json.hash(&mut h);
        h.finish()
    };
    pb::WorkloadPolicy {
        workload: workload.to_string(),
        json,
        version,
    }
}

async fn next(mut w: Watch) -> Option<(Result<pb::WorkloadPolicy, Status>, Watch)> {
    loop {
        if w.sent.is_some() && w.rx.changed().await.is_err() {
            return None;
        }
        let msg = message(&w.rx.borrow_and_update(), &w.workload);
        if w.sent.as_deref() == Some(msg.json.as_str()) {
            continue;
        }
        tracing::debug!(workload = %w.workload, version = msg.version, "policy sent");
        w.sent = Some(msg.json.clone());
        return Some((Ok(msg), w));
    }
}

#[tonic::async_trait]
impl Policy for PolicyService {
    type WatchStream = PolicyStream;

    async fn watch(&self, req: Request<pb::WatchPolicy>) -> Result<Response<PolicyStream>, Status> {
        let req = req.into_inner();
        if req.workload.is_empty() || req.workload.len() > MAX_WORKLOAD {
            return Err(Status::invalid_argument(format!(
                "a workload name of 1 to {MAX_WORKLOAD} bytes"
            )));
        }
        tracing::debug!(workload = %req.workload, "policy watch opened");
        let w = Watch {
            workload: req.workload,
            rx: self.mesh.clone(),
            sent: None,
            _guard: self.metrics.policy_watch_opened(),
        };
        Ok(Response::new(Box::pin(futures_util::stream::unfold(w, next))))
    }
}
