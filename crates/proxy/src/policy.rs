//! Inbound authorization: every request (and every opaque connection) to
//! the app is checked against the workload's policy before a byte of it
//! goes on. The policy comes from weft-control's Policy service
//! (`--policy-workload`), which the proxy watches and swaps in whole at
//! each change: a request already let through is never touched, the next
//! one sees the new policy. While the control plane is away the last
//! policy stays in force; before the first one arrives the
//! `--inbound-default-policy` applies, except on ports that require mutual
//! TLS (`--inbound-mtls-required`), which deny (fail closed).

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use prost::Message;
use weft_api::policy as pb;
use weft_policy::{Authorizer, DefaultPolicy, Reason, Verdict};

use crate::{
    config::MtlsRequired,
    core::{Label, lock},
    grpc_client::{self, CallEnd},
};

/// The most distinct values of the `route` and `client_id` labels; the
/// rest are counted as `other` (a scanner must not grow memory).
pub const MAX_LABEL_VALUES: usize = 256;

const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Labels of `weft_inbound_authz_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// The server's name in the policy, or `default` (no server covers the port).
    pub server: Label,
    /// The gRPC method or HTTP path (`other` past the cap; `""` for opaque TCP).
    pub route: Label,
    /// `allow`, `deny`, or `audit` (allowed, but the policy would deny it).
    pub decision: &'static str,
    /// `authorized`, `default`, `unauthenticated`, `unauthorized`, `route`,
    /// `invalid_token`, `no_policy`.
    pub reason: &'static str,
    /// The client's mesh identity, `jwt:<provider>`, or `""` (unauthenticated).
    pub client_id: Label,
}

/// A label's distinct values, up to a cap.
#[derive(Debug, Default)]
struct Cap(Mutex<HashSet<Arc<str>>>);

impl Cap {
    fn label(&self, value: &str) -> Label {
        if value.is_empty() {
            return Label(Arc::from(""));
        }
        let mut seen = lock(&self.0);
        if let Some(v) = seen.get(value) {
            return Label(v.clone());
        }
        if seen.len() >= MAX_LABEL_VALUES {
            return Label(Arc::from("other"));
        }
        let v: Arc<str> = Arc::from(value);
        seen.insert(v.clone());
        Label(v)
    }
}

/// The authorization metrics.
#[derive(Debug, Default, Clone)]
pub struct AuthzMetrics {
    pub decisions: Family<AuthzLabels, Counter>,
    /// Policies received (and compiled) from the control plane.
    pub updates: Counter,
    /// Policies received that did not compile (the last good one kept).
    pub rejected: Counter,
    routes: Arc<Cap>,
    clients: Arc<Cap>,
    servers: Arc<Cap>,
}

/// The policy in force and where it came from.
pub struct Policy {
    current: RwLock<Arc<Authorizer>>,
    /// Whether a policy came from the control plane yet.
    received: AtomicBool,
    state: Mutex<State>,
    /// Ports that deny until the first policy arrives.
    fail_closed: MtlsRequired,
    /// The port the policy names for the app, when it is not the app's own.
    pub server_port: Option<u16>,
    metrics: AuthzMetrics,
    /// Audit and deny log lines, at most a few per second.
    log_budget: Mutex<(Instant, u32)>,
}

#[derive(Default)]
struct State {
    version: u64,
    at: Option<std::time::SystemTime>,
    last_error: Option<String>,
    json: Option<Arc<str>>,
}

/// What the request path knows of a request when it asks.
pub struct Ask<'a> {
    pub port: u16,
    pub client: IpAddr,
    pub identity: Option<&'a str>,
    /// Path and method; `None` for an opaque connection.
    pub route: Option<(&'a str, &'a str)>,
    /// The `authorization` header's value.
    pub authorization: Option<&'a str>,
}

/// A denial: what the client is told (the server and the reason, never
/// which identity would have been allowed).
#[derive(Debug, Clone)]
pub struct Denied {
    pub server: Arc<str>,
    pub reason: &'static str,
}

impl Policy {
    pub fn new(
        default: DefaultPolicy,
        fail_closed: MtlsRequired,
        server_port: Option<u16>,
        metrics: AuthzMetrics,
    ) -> Arc<Policy> {
        Arc::new(Policy {
            current: RwLock::new(Arc::new(Authorizer::fallback(default))),
            received: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            fail_closed,
            server_port,
            metrics,
            log_budget: Mutex::new((Instant::now(), 0)),
        })
    }

    /// Whether a policy came from the control plane yet.
    pub fn received(&self) -> bool {
        self.received.load(Ordering::Acquire)
    }

    /// Checks a request; `Err` when it must not reach the app. Counted,
    /// and (within a budget) logged when denied or audited.
    pub fn check(&self, ask: &Ask<'_>) -> Result<(), Denied> {
        let authz = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        let route_label = ask
            .route
            .map(|(p, _)| p.split_once('?').map_or(p, |(p, _)| p))
            .unwrap_or("");
        if !self.received.load(Ordering::Acquire) && self.fail_closed.covers(Some(ask.port)) {
            self.count(
                "default",
                route_label,
                Verdict::Deny,
                "no_policy",
                ask.identity.unwrap_or(""),
            );
            self.log(ask, "deny", "no_policy", "default", &authz);
            return Err(Denied {
                server: Arc::from("default"),
                reason: "no policy yet",
            });
        }
        let bearer = ask
            .authorization
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let decision = authz.check(&weft_policy::Request {
            port: ask.port,
            client: ask.client,
            identity: ask.identity,
            route: ask.route,
            bearer,
        });
        let jwt_label;
        let client = match (&decision.jwt, ask.identity) {
            (Some((provider, _)), _) => {
                jwt_label = format!("jwt:{provider}");
                jwt_label.as_str()
            }
            (None, Some(id)) => id,
            (None, None) => "",
        };
        self.count(
            decision.server,
            route_label,
            decision.verdict,
            decision.reason.as_str(),
            client,
        );
        match decision.verdict {
            Verdict::Allow => Ok(()),
            Verdict::Audit => {
                if decision.reason != Reason::Default {
                    self.log(ask, "audit", decision.reason.as_str(), decision.server, &authz);
                }
                Ok(())
            }
            Verdict::Deny => {
                self.log(ask, "deny", decision.reason.as_str(), decision.server, &authz);
                Err(Denied {
                    server: Arc::from(decision.server),
                    reason: match decision.reason {
                        Reason::Unauthenticated => "unauthenticated",
                        Reason::InvalidToken => "invalid token",
                        Reason::Route => "route not authorized",
                        Reason::Default => "denied by default",
                        Reason::Authorized | Reason::Unauthorized => "unauthorized",
                    },
                })
            }
        }
    }

    fn count(&self, server: &str, route: &str, verdict: Verdict, reason: &'static str, client: &str) {
        let labels = AuthzLabels {
            server: self.metrics.servers.label(server),
            route: self.metrics.routes.label(route),
            decision: verdict.as_str(),
            reason,
            client_id: self.metrics.clients.label(client),
        };
        self.metrics.decisions.get_or_create(&labels).inc();
    }

    /// Logs a denial (or what audit would deny) with who the server admits:
    /// the detail a client is never told.
    fn log(&self, ask: &Ask<'_>, decision: &str, reason: &str, server: &str, authz: &Authorizer) {
        {
            let mut b = lock(&self.log_budget);
            if b.0.elapsed() >= Duration::from_secs(1) {
                *b = (Instant::now(), 0);
            }
            b.1 += 1;
            if b.1 > 10 {
                return;
            }
        }
        tracing::info!(
            decision,
            reason,
            server,
            client = %ask.client,
            identity = ask.identity.unwrap_or("-"),
            route = ask.route.map_or("-", |(p, _)| p),
            admits = %authz.admits(server, 5),
            "authorization"
        );
    }

    /// Takes a policy from the control plane: compiled, then swapped in.
    fn install(&self, msg: &pb::WorkloadPolicy) -> Result<(), String> {
        let resolved: weft_policy::Resolved =
            serde_json::from_str(&msg.json).map_err(|e| format!("a policy that does not parse: {e}"))?;
        let authz = Authorizer::compile(&resolved)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(authz);
        self.received.store(true, Ordering::Release);
        let mut st = lock(&self.state);
        st.version = msg.version;
        st.at = Some(std::time::SystemTime::now());
        st.last_error = None;
        st.json = Some(Arc::from(msg.json.as_str()));
        Ok(())
    }

    /// `/policy` on the admin port.
    pub fn describe(&self) -> String {
        let authz = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        let st = lock(&self.state);
        let mut s = String::new();
        match st.at {
            None => s.push_str(&format!(
                "policy: none received yet; default {} applies{}\n",
                authz.default_policy(),
                if self.fail_closed.all || !self.fail_closed.ports.0.is_empty() {
                    " (ports requiring mTLS deny)"
                } else {
                    ""
                }
            )),
            Some(at) => s.push_str(&format!(
                "policy: workload {} version {:016x}, received {}s ago\ndefault: {}\nservers: {}\n",
                authz.workload(),
                st.version,
                at.elapsed().map_or(0, |d| d.as_secs()),
                authz.default_policy(),
                authz.server_names().collect::<Vec<_>>().join(", ")
            )),
        }
        if let Some(p) = self.server_port {
            s.push_str(&format!("server port: {p} (--inbound-policy-port)\n"));
        }
        if let Some(e) = &st.last_error {
            s.push_str(&format!("last error: {e}\n"));
        }
        if let Some(j) = &st.json {
            s.push_str(&format!("json: {j}\n"));
        }
        s
    }
}

/// Watches `workload`'s policy at `control` for the life of the process.
pub fn spawn_watch(control: String, workload: String, policy: Arc<Policy>) {
    tokio::spawn(async move {
        let mut retry = RETRY_FIRST;
        loop {
            match watch_once(&control, &workload, &policy).await {
                Ok(()) => retry = RETRY_FIRST,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "the policy watch ended; the last policy stays in force");
                    lock(&policy.state).last_error = Some(e);
                }
            }
            tokio::time::sleep(retry.mul_f64(0.75 + 0.5 * fastrand::f64())).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    });
}

async fn watch_once(control: &str, workload: &str, policy: &Policy) -> Result<(), String> {
    let send = tokio::time::timeout(CONNECT_TIMEOUT, grpc_client::connect(control, "weft-control"))
        .await
        .map_err(|_| format!("weft-control at {control} did not answer within {CONNECT_TIMEOUT:?}"))??;
    let request = pb::WatchPolicy {
        workload: workload.to_string(),
    }
    .encode_to_vec();
    let end = |e: CallEnd| match e {
        CallEnd::Status(12, _) => format!("weft-control at {control} has no Policy service"),
        CallEnd::Status(c, m) => format!("weft-control answered {c}: {m}"),
        CallEnd::Broken { error, .. } => format!("weft-control at {control}: {error}"),
    };
    let mut answers = grpc_client::call(&send, control, pb::WATCH_PATH, &request)
        .await
        .map_err(end)?;
    loop {
        let msg: Bytes = answers.next().await.map_err(end)?;
        let msg = pb::WorkloadPolicy::decode(msg).map_err(|e| format!("an undecodable policy: {e}"))?;
        match policy.install(&msg) {
            Ok(()) => {
                policy.metrics.updates.inc();
                tracing::info!(
                    workload,
                    version = format_args!("{:016x}", msg.version),
                    "policy applied"
                );
            }
            Err(e) => {
                policy.metrics.rejected.inc();
                tracing::error!(workload, error = %e, "a policy from the control plane was refused; the last one stays in force");
                lock(&policy.state).last_error = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(port: u16, identity: Option<&str>) -> Ask<'_> {
        Ask {
            port,
            client: "192.0.2.1".parse().unwrap(),
            identity,
            route: Some(("/square.Square/Square", "POST")),
            authorization: None,
        }
    }

    #[test]
    fn before_its_first_policy_a_port_that_requires_mtls_denies_and_others_follow_the_default() {
        let required: MtlsRequired = "50051".parse().unwrap();
        let p = Policy::new(
            DefaultPolicy::AllUnauthenticated,
            required,
            None,
            AuthzMetrics::default(),
        );
        let id = Some("client.default.serviceaccount.identity.cluster.local");
        let d = p.check(&ask(50051, id)).unwrap_err();
        assert_eq!(d.reason, "no policy yet");
        assert!(p.check(&ask(8080, None)).is_ok(), "the default elsewhere");
        assert!(p.describe().contains("none received yet"));
        // Once a policy arrives, it decides.
        let resolved = weft_policy::Resolved::resolve("square", None, &weft_policy::MeshPolicy::default(), |_, _| {
            Err(String::new())
        })
        .unwrap();
        let msg = pb::WorkloadPolicy {
            workload: "square".into(),
            json: serde_json::to_string(&resolved).unwrap(),
            version: 7,
        };
        p.install(&msg).unwrap();
        assert!(p.received());
        assert!(p.check(&ask(50051, id)).is_ok());
        // A policy that does not parse is refused; the last one stays.
        let bad = pb::WorkloadPolicy {
            json: "{\"servers\": 5}".into(),
            ..msg
        };
        assert!(p.install(&bad).is_err());
        assert!(p.check(&ask(50051, id)).is_ok());
        let m = &p.metrics;
        let deny = AuthzLabels {
            server: Label(Arc::from("default")),
            route: Label(Arc::from("/square.Square/Square")),
            decision: "deny",
            reason: "no_policy",
            client_id: Label(Arc::from("client.default.serviceaccount.identity.cluster.local")),
        };
        assert_eq!(m.decisions.get_or_create(&deny).get(), 1);
    }

    #[test]
    fn label_values_are_capped() {
        let cap = Cap::default();
        for i in 0..MAX_LABEL_VALUES {
            assert_eq!(&*cap.label(&format!("/r{i}")).0, format!("/r{i}"));
        }
        assert_eq!(&*cap.label("/one-too-many").0, "other");
        assert_eq!(&*cap.label("/r3").0, "/r3");
    }
}
