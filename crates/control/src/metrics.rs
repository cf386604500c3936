//! weft-control's metrics (Prometheus text on the admin port).

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Labels of `weft_control_certificates_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// `issued`, or why not: `unknown_token`, `bad_csr`, `error`.
    pub result: &'static str,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Open Get streams.
    pub watches: Gauge,
    pub watches_opened: Counter,
    /// Updates sent to watchers (snapshots, adds, removes).
    pub updates: Counter,
    pub not_found: Counter,
    pub services: Gauge,
    pub endpoints: Gauge,
    /// Accepted source changes.
    pub changes: Counter,
    /// Refused source changes (the last good mesh kept).
    pub refusals: Counter,
    /// Identity.Certify answers.
    pub certificates: Family<CertLabels, Counter>,
    /// Open Policy.Watch streams.
    pub policy_watches: Gauge,
}

impl Metrics {
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("weft_control");
        r.register("watches", "Open Destination.Get streams", self.watches.clone());
        r.register(
            "watches_opened",
            "Destination.Get streams opened",
            self.watches_opened.clone(),
        );
        r.register(
            "updates",
            "Updates sent to watchers (snapshots, adds, removes)",
            self.updates.clone(),
        );
        r.register(
            "not_found",
            "Destination.Get for a service no source knows",
            self.not_found.clone(),
        );
        r.register("services", "Services the source knows", self.services.clone());
        r.register("endpoints", "Endpoints of all services", self.endpoints.clone());
        r.register(
            "source_changes",
            "Changes accepted from the source",
            self.changes.clone(),
        );
        r.register(
            "source_refusals",
            "Changes refused (parse or validation errors); the last good mesh is served",
            self.refusals.clone(),
        );
        r.register(
            "policy_watches",
            "Open Policy.Watch streams (inbound proxies watching their workload's policy)",
            self.policy_watches.clone(),
        );
        r.register(
            "certificates",
            "Identity.Certify answers: issued, or refused and why",
            self.certificates.clone(),
        );
        r
    }

    pub fn watch_opened(self: &Arc<Self>) -> WatchGuard {
        self.watches.inc();
        self.watches_opened.inc();
        WatchGuard(self.watches.clone())
    }

    pub fn policy_watch_opened(self: &Arc<Self>) -> WatchGuard {
        self.policy_watches.inc();
        WatchGuard(self.policy_watches.clone())
    }
}

/// Counts one open watch until dropped.
pub struct WatchGuard(Gauge);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
