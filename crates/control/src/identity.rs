//! The Identity service: a proxy sends its token and a CSR; the CA signs
//! the CSR's key into a short-lived certificate naming the identity the
//! token belongs to.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::{Request, Response, Status};
use weft_api::identity::{self as pb, identity_server::Identity};
use weft_identity::{Ca, Tokens};

use crate::metrics::{CertLabels, Metrics};

/// The longest CSR accepted (an ECDSA or RSA-4096 CSR is well under 4 KiB).
pub const MAX_CSR: usize = 16 << 10;

/// The Identity service over a CA and a tokens file.
pub struct IdentityService {
    pub ca: Arc<Ca>,
    /// Which token proves which identity; re-read when a token is unknown
    /// (at most every [`TOKENS_REREAD`]), so new workloads need no restart.
    pub tokens_file: PathBuf,
    pub lifetime: Duration,
    pub metrics: Arc<Metrics>,
    tokens: Mutex<(Tokens, Option<Instant>)>,
}

/// The least time between two readings of the tokens file.
const TOKENS_REREAD: Duration = Duration::from_millis(200);

impl IdentityService {
    pub fn new(ca: Arc<Ca>, tokens_file: PathBuf, lifetime: Duration, metrics: Arc<Metrics>) -> Self {
        IdentityService {
            ca,
            tokens_file,
            lifetime,
            metrics,
            tokens: Mutex::new((Tokens::default(), None)),
        }
    }

    fn name(&self, token: &str) -> Option<weft_identity::Name> {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.0.name(token, self.ca.trust_domain()) {
            return Some(n);
        }
        if t.1.is_none_or(|at| at.elapsed() >= TOKENS_REREAD) {
            t.1 = Some(Instant::now());
            match Tokens::read(&self.tokens_file) {
                Ok(read) => t.0 = read,
                Err(e) => tracing::warn!(error = %e, "cannot read the identity tokens; keeping the last ones"),
            }
        }
        t.0.name(token, self.ca.trust_domain())
    }

    fn count(&self, result: &'static str) {
        self.metrics.certificates.get_or_create(&CertLabels { result }).inc();
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(&self, req: Request<pb::CertifyRequest>) -> Result<Response<pb::CertifyResponse>, Status> {
        let peer = req.remote_addr();
        let req = req.into_inner();
        if req.csr.len() > MAX_CSR {
            self.count("bad_csr");
            return Err(Status::invalid_argument(format!("a CSR is at most {MAX_CSR} bytes")));
        }
        let Some(name) = self.name(&req.token) else {
            self.count("unknown_token");
            tracing::warn!(?peer, "a certificate was asked for with an unknown token");
            return Err(Status::unauthenticated("unknown identity token"));
        };
        let issued = match self.ca.issue(&req.csr, &name, self.lifetime) {
            Ok(i) => i,
            Err(weft_identity::IdentityError::Invalid(why)) => {
                self.count("bad_csr");
                return Err(Status::invalid_argument(why));
            }
            Err(e) => {
                self.count("error");
                tracing::error!(error = %e, identity = %name, "cannot issue a certificate");
                return Err(Status::internal("cannot issue a certificate"));
            }
        };
        self.count("issued");
        tracing::debug!(identity = %name, ?peer, "certificate issued");
        let not_after_unix_ms = issued
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(Response::new(pb::CertifyResponse {
            leaf: issued.leaf,
            intermediates: issued.intermediates,
            anchors: self.ca.anchors().to_vec(),
            not_after_unix_ms,
            identity: name.spiffe(),
        }))
    }
}
