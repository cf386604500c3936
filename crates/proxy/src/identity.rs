//! The proxy's workload identity: a key made here that never leaves the
//! process, certified by weft-control's Identity service (only a CSR and
//! the workload's token go out), renewed at 70 % of each certificate's
//! lifetime (with jitter), retried with backoff while the control plane is
//! away; the current certificate is served until its replacement arrives.
//! Between renewals the proxy watches the CA's generation (`Identity/
//! Watch`): a trust-anchor rotation step changes it, and the proxy
//! certifies again at once, taking the new anchors and, once the new
//! issuer signs, a certificate from it.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use prost::Message;
use weft_api::identity as pb;

use crate::grpc_client::{self, CallEnd};

/// Renewal starts at this share of a certificate's lifetime ...
const RENEW_AT: f64 = 0.7;
/// ... give or take this share (so that a fleet does not renew at once).
const RENEW_JITTER: f64 = 0.05;
/// Retries after a failed renewal: from this, doubling ...
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// ... up to this.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// One Certify call (connect, handshake, answer) may take this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A certificate and its key, as TLS will serve it.
pub struct Certified {
    /// PKCS #8 (DER); kept in memory only.
    pub key: Vec<u8>,
    /// The leaf then the intermediates (DER).
    pub chain: Vec<Vec<u8>>,
    /// The trust anchors (DER).
    pub anchors: Vec<Vec<u8>>,
    pub info: weft_identity::CertInfo,
    /// The SPIFFE id it names.
    pub identity: String,
    /// The CA generation it came from (0 from a control plane that has none).
    pub generation: u64,
}

impl std::fmt::Debug for Certified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certified")
            .field("identity", &self.identity)
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

/// What admin and TLS read: the current certificate, if any, and how the
/// last attempt went.
#[derive(Debug, Default)]
pub struct IdentityState {
    pub current: Option<Arc<Certified>>,
    /// TLS configurations made from `current`.
    pub tls: Option<Arc<Tls>>,
    pub last_error: Option<String>,
    pub renewals: u64,
}

pub type Identity = Arc<RwLock<IdentityState>>;

/// Metrics of the identity.
#[derive(Clone, Debug, Default)]
pub struct IdentityMetrics {
    /// Unix time the current certificate expires (0: none yet).
    pub expiry: Gauge,
    pub renewed: Counter,
    pub failed: Counter,
}

/// Starts obtaining and renewing the identity from the control plane at
/// `control`, proving it with the token in `token_file` (read at each
/// attempt, so a rotated token is picked up).
pub fn spawn(control: String, token_file: PathBuf, metrics: IdentityMetrics) -> Identity {
    let state: Identity = Arc::default();
    let s = state.clone();
    tokio::spawn(async move {
        let mut retry = RETRY_FIRST;
        // This process, to the control plane (which generation it holds).
        let instance = format!("{:016x}", fastrand::u64(..));
        loop {
            // Watched until the next renewal after a success; after a
            // failure only the backoff runs (a CA that changed would
            // otherwise call for an attempt at once, again and again).
            let mut installed = None;
            let wait = match certify(&control, &token_file).await {
                Ok(c) => {
                    installed = Some(c.generation);
                    // Just issued: what is left is its lifetime (its
                    // not-before lies a minute back, for clock skew).
                    let left = c.info.not_after.duration_since(SystemTime::now()).unwrap_or_default();
                    tracing::info!(identity = %c.identity, expires_in = ?left, "certified");
                    metrics.renewed.inc();
                    metrics.expiry.set(
                        c.info
                            .not_after
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs() as i64),
                    );
                    let tls = match tls(&c) {
                        Ok(t) => Some(Arc::new(t)),
                        Err(e) => {
                            tracing::error!(error = %e, "the certificate cannot be used for TLS");
                            None
                        }
                    };
                    {
                        let mut st = s.write().unwrap_or_else(|p| p.into_inner());
                        st.current = Some(Arc::new(c));
                        if tls.is_some() {
                            st.tls = tls;
                        }
                        st.last_error = None;
                        st.renewals += 1;
                    }
                    retry = RETRY_FIRST;
                    let share = RENEW_AT + RENEW_JITTER * (2.0 * fastrand::f64() - 1.0);
                    left.mul_f64(share)
                }
                Err(e) => {
                    metrics.failed.inc();
                    let mut st = s.write().unwrap_or_else(|p| p.into_inner());
                    let has = st.current.is_some();
                    tracing::warn!(error = %e, retry_in = ?retry, serving_the_current = has, "cannot renew the identity");
                    st.last_error = Some(e);
                    let wait = retry.mul_f64(0.75 + 0.5 * fastrand::f64());
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            };
            match installed {
                Some(generation) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = ca_changed(&control, &token_file, &instance, generation) => {
                            tracing::info!("the CA changed (a trust-anchor rotation step): certifying again");
                        }
                    }
                }
                None => tokio::time::sleep(wait).await,
            }
        }
    });
    state
}

/// Returns once weft-control's CA generation differs from `installed`
/// (its Watch reopened with backoff while the control plane is away;
/// never, from a control plane without Watch).
async fn ca_changed(control: &str, token_file: &PathBuf, instance: &str, installed: u64) {
    let mut retry = RETRY_FIRST;
    loop {
        let failed = match watch_once(control, token_file, instance, installed).await {
            Ok(()) => return,
            Err(WatchEnd::Unsupported) => {
                tracing::debug!("weft-control has no Identity/Watch: renewals only");
                return std::future::pending().await;
            }
            Err(WatchEnd::Failed(e)) => e,
        };
        tracing::debug!(error = %failed, retry_in = ?retry, "the CA watch ended");
        tokio::time::sleep(retry.mul_f64(0.75 + 0.5 * fastrand::f64())).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

enum WatchEnd {
    Unsupported,
    Failed(String),
}

/// One Watch: `Ok` when a generation other than `installed` arrives.
async fn watch_once(control: &str, token_file: &PathBuf, instance: &str, installed: u64) -> Result<(), WatchEnd> {
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| WatchEnd::Failed(format!("the identity token {}: {e}", token_file.display())))?;
    let request = pb::WatchRequest {
        token: token.trim().to_string(),
        instance: instance.to_string(),
        installed,
    }
    .encode_to_vec();
    let failed = |e: String| WatchEnd::Failed(e);
    let send = tokio::time::timeout(CALL_TIMEOUT, connect(control))
        .await
        .map_err(|_| {
            failed(format!(
                "weft-control at {control} did not answer within {CALL_TIMEOUT:?}"
            ))
        })?
        .map_err(failed)?;
    let end = |e: CallEnd| match e {
        CallEnd::Status(12, _) => WatchEnd::Unsupported,
        CallEnd::Status(c, m) => WatchEnd::Failed(format!("weft-control answered {c}: {m}")),
        CallEnd::Broken { error, .. } => WatchEnd::Failed(format!("weft-control at {control}: {error}")),
    };
    let mut answers = grpc_client::call(&send, control, pb::WATCH_PATH, &request)
        .await
        .map_err(end)?;
    loop {
        let state = pb::CaState::decode(answers.next().await.map_err(end)?)
            .map_err(|e| failed(format!("an undecodable CA state: {e}")))?;
        if state.generation != installed {
            return Ok(());
        }
    }
}

/// One attempt: a new key and CSR, the token, the control plane's answer.
async fn certify(control: &str, token_file: &PathBuf) -> Result<Certified, String> {
    let token =
        std::fs::read_to_string(token_file).map_err(|e| format!("the identity token {}: {e}", token_file.display()))?;
    let (key, csr) = weft_identity::request().map_err(|e| format!("a new key: {e}"))?;
    let request = pb::CertifyRequest {
        token: token.trim().to_string(),
        csr,
    }
    .encode_to_vec();
    let answer = tokio::time::timeout(CALL_TIMEOUT, call(control, &request))
        .await
        .map_err(|_| format!("weft-control at {control} did not answer within {CALL_TIMEOUT:?}"))??;
    let r = pb::CertifyResponse::decode(answer).map_err(|e| format!("an undecodable answer: {e}"))?;
    let info = weft_identity::inspect(&r.leaf).map_err(|e| e.to_string())?;
    if info.public_key != key.public_key_raw() {
        return Err("the certificate is not for this proxy's key".into());
    }
    weft_identity::verify_chain(&r.leaf, &r.intermediates, &r.anchors)
        .map_err(|e| format!("the certificate does not chain to its anchors: {e}"))?;
    let mut chain = vec![r.leaf];
    chain.extend(r.intermediates);
    Ok(Certified {
        key: key.serialize_der(),
        chain,
        anchors: r.anchors,
        info,
        identity: r.identity,
        generation: r.generation,
    })
}

/// An HTTP/2 connection to the control plane.
async fn connect(control: &str) -> Result<h2::client::SendRequest<Bytes>, String> {
    grpc_client::connect(control, "weft-control").await
}

async fn call(control: &str, request: &[u8]) -> Result<Bytes, String> {
    let send = connect(control).await?;
    let authority = control;
    let end = |e: CallEnd| match e {
        CallEnd::Status(16, m) => format!("weft-control refused the token: {m}"),
        CallEnd::Status(12, _) => {
            format!("weft-control at {control} has no Identity service (start it with --identity-dir)")
        }
        CallEnd::Status(c, m) => format!("weft-control answered {c}: {m}"),
        CallEnd::Broken { error, .. } => format!("weft-control at {control}: {error}"),
    };
    let mut answers = grpc_client::call(&send, authority, pb::CERTIFY_PATH, request)
        .await
        .map_err(end)?;
    answers.next().await.map_err(end)
}

/// `/identity` on the admin port.
pub fn describe(id: &Identity) -> String {
    let st = id.read().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    match &st.current {
        None => out.push_str("identity: none yet\n"),
        Some(c) => {
            let left = c.info.not_after.duration_since(SystemTime::now()).unwrap_or_default();
            out.push_str(&format!("identity: {}\n", c.identity));
            out.push_str(&format!("subject: {}\n", c.info.subject));
            out.push_str(&format!("sans: {}\n", c.info.sans.join(", ")));
            out.push_str(&format!(
                "not_after: {} (in {} s)\n",
                c.info
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                left.as_secs()
            ));
            out.push_str(&format!("ca_generation: {}\n", c.generation));
            out.push_str(&format!("anchors: {}\n", c.anchors.len()));
            for a in &c.anchors {
                if let Ok(i) = weft_identity::inspect(a) {
                    out.push_str(&format!("  - {} sha256:{}\n", i.subject, weft_identity::fingerprint(a)));
                }
            }
            if let Some(issuer) = c.chain.get(1) {
                out.push_str(&format!("issuer: sha256:{}\n", weft_identity::fingerprint(issuer)));
            }
        }
    }
    out.push_str(&format!("renewals: {}\n", st.renewals));
    if let Some(e) = &st.last_error {
        out.push_str(&format!("last_error: {e}\n"));
    }
    out
}

// ===== TLS between proxies =====

/// The ALPN protocol ids a meshed connection may carry: HTTP/2, HTTP/1.1,
/// and opaque TCP (what follows is the app's own bytes: no detection).
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
pub const ALPN_OPAQUE: &[u8] = b"weft.opaque";

/// The TLS configurations made from the current certificate (TLS 1.3 only).
pub struct Tls {
    pub server: Arc<rustls::ServerConfig>,
    client_h2: Arc<rustls::ClientConfig>,
    client_http1: Arc<rustls::ClientConfig>,
    client_opaque: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

/// What a connection to an endpoint will carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carries {
    Http2,
    Http1,
    Opaque,
}

impl Tls {
    pub fn client(&self, carries: Carries) -> Arc<rustls::ClientConfig> {
        match carries {
            Carries::Http2 => self.client_h2.clone(),
            Carries::Http1 => self.client_http1.clone(),
            Carries::Opaque => self.client_opaque.clone(),
        }
    }
}

/// The crypto provider: ring (no C toolchain needed), or aws-lc-rs with
/// the `aws-lc` feature (measured against ring in bench/MTLS.md).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[cfg(feature = "aws-lc")]
    return Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    #[cfg(not(feature = "aws-lc"))]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server and client configurations for `c`: each side presents `c` and
/// verifies the other's certificate against `c`'s anchors.
pub fn tls(c: &Certified) -> Result<Tls, String> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    for a in &c.anchors {
        roots
            .add(CertificateDer::from(a.clone()))
            .map_err(|e| format!("a trust anchor: {e}"))?;
    }
    let roots = Arc::new(roots);
    let chain: Vec<CertificateDer<'static>> = c.chain.iter().map(|d| CertificateDer::from(d.clone())).collect();
    let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.clone()));
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key())
        .map_err(|e| format!("the certificate: {e}"))?;
    server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_OPAQUE.to_vec()];
    let client = |alpn: &[u8]| -> Result<Arc<rustls::ClientConfig>, String> {
        let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key())
            .map_err(|e| format!("the certificate: {e}"))?;
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    Ok(Tls {
        server: Arc::new(server),
        client_h2: client(ALPN_H2)?,
        client_http1: client(ALPN_HTTP1)?,
        client_opaque: client(ALPN_OPAQUE)?,
    })
}

/// The TLS configurations once the proxy has a certificate, waiting until
/// `until` at most (a proxy that just started is milliseconds from it).
pub async fn wait_tls(id: &Identity, until: tokio::time::Instant) -> Option<Arc<Tls>> {
    loop {
        if let Some(tls) = current_tls(id) {
            return Some(tls);
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The current TLS configurations, if the proxy has a certificate.
pub fn current_tls(id: &Identity) -> Option<Arc<Tls>> {
    id.read().unwrap_or_else(|p| p.into_inner()).tls.clone()
}

/// Why a handshake failed, as a bounded metric label.
pub fn handshake_failure(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(r) = e.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return if e.kind() == std::io::ErrorKind::TimedOut {
            "timeout"
        } else {
            "io"
        };
    };
    match r {
        Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => "unknown_ca",
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "wrong_identity",
        Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => "expired",
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::AlertReceived(_) => "refused_by_peer",
        _ => "other",
    }
}

/// The SPIFFE id of a TLS peer's certificate.
pub fn peer_identity(certs: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> Option<Arc<str>> {
    let leaf = certs?.first()?;
    let info = weft_identity::inspect(leaf).ok()?;
    info.spiffe().map(Into::into)
}
