//! The inbound proxy's health check of its app (`--app-health-check`):
//! `grpc.health.v1` Watch on the app's own port (Check every second where
//! Watch is not implemented; an app with no health service is taken as
//! serving). One check per pod, whatever the number of callers: the result
//! is this proxy's `/ready` (503 while the app says NOT_SERVING) and
//! `weft_app_serving`, which `weft up` (and the control plane's sources)
//! turn into "not an endpoint" for every caller.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message;
use weft_api::grpc_health::{self as pb, health_check_response::ServingStatus};

use crate::grpc_client::{self, CallEnd};

/// Not known yet (or no health service, or the app unreachable): serving is assumed.
pub const UNKNOWN: u8 = 0;
pub const SERVING: u8 = 1;
pub const NOT_SERVING: u8 = 2;

/// How often Check is asked where Watch is not implemented, and the wait
/// before reconnecting to the app.
const INTERVAL: Duration = Duration::from_secs(1);
/// How often an app without a health service is asked again.
const NO_SERVICE_RECHECK: Duration = Duration::from_secs(30);

/// The app's health as last heard, shared with admin.
pub type AppHealth = Arc<AtomicU8>;

/// Follows the health of the app at `app` (`service`: "" for the whole
/// server) for as long as the runtime runs.
pub fn spawn(app: SocketAddr, service: String, gauge: Gauge) -> AppHealth {
    let state: AppHealth = Arc::new(AtomicU8::new(UNKNOWN));
    let s = state.clone();
    tokio::spawn(async move {
        let set = |v: u8| {
            let was = s.swap(v, Ordering::Relaxed);
            gauge.set(match v {
                SERVING => 1,
                NOT_SERVING => 0,
                _ => -1,
            });
            if was != v {
                tracing::info!(app = %app, status = label(v), "the app's health");
            }
        };
        let request = pb::HealthCheckRequest { service }.encode_to_vec();
        // The proxy often starts before its app: try again soon, then each second.
        let mut wait = Duration::from_millis(50);
        loop {
            let Some(send) = dial(app).await else {
                set(UNKNOWN);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(INTERVAL);
                continue;
            };
            wait = Duration::from_millis(50);
            let authority = app.to_string();
            // Watch: answers as the status changes.
            match grpc_client::call(&send, &authority, pb::WATCH_PATH, &request).await {
                Ok(mut answers) => {
                    while let Ok(m) = answers.next().await {
                        if let Ok(r) = pb::HealthCheckResponse::decode(m) {
                            set(status(r.status));
                        }
                    }
                    set(UNKNOWN);
                    tokio::time::sleep(INTERVAL).await;
                    continue;
                }
                Err(CallEnd::Status(12, _)) => {} // no Watch: poll Check
                Err(_) => {
                    set(UNKNOWN);
                    tokio::time::sleep(INTERVAL).await;
                    continue;
                }
            }
            loop {
                match check(&send, &authority, &request).await {
                    Ok(v) => set(v),
                    Err(CallEnd::Status(12, _)) => {
                        // No health service at all: serving is assumed.
                        set(UNKNOWN);
                        tokio::time::sleep(NO_SERVICE_RECHECK).await;
                        break;
                    }
                    Err(_) => {
                        set(UNKNOWN);
                        break;
                    }
                }
                tokio::time::sleep(INTERVAL).await;
            }
        }
    });
    state
}

async fn check(send: &h2::client::SendRequest<Bytes>, authority: &str, request: &[u8]) -> Result<u8, CallEnd> {
    let mut answers = grpc_client::call(send, authority, pb::CHECK_PATH, request).await?;
    let m = answers.next().await?;
    pb::HealthCheckResponse::decode(m)
        .map(|r| status(r.status))
        .map_err(|e| CallEnd::Broken {
            error: e.to_string(),
            connection: false,
        })
}

fn status(s: i32) -> u8 {
    match ServingStatus::try_from(s) {
        Ok(ServingStatus::Serving) => SERVING,
        Ok(ServingStatus::NotServing | ServingStatus::ServiceUnknown) => NOT_SERVING,
        _ => UNKNOWN,
    }
}

pub fn label(v: u8) -> &'static str {
    match v {
        SERVING => "SERVING",
        NOT_SERVING => "NOT_SERVING",
        _ => "unknown",
    }
}

/// An HTTP/2 connection to the app, its driver on a task.
async fn dial(app: SocketAddr) -> Option<h2::client::SendRequest<Bytes>> {
    let tcp = tokio::time::timeout(INTERVAL, tokio::net::TcpStream::connect(app))
        .await
        .ok()?
        .ok()?;
    let _ = tcp.set_nodelay(true);
    let (send, driver) = h2::client::handshake(tcp).await.ok()?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
    Some(send)
}
