//! Workload identities: weft-control's CA certifies a proxy's key for the
//! identity its token proves; the proxy renews before expiry; a wrong token
//! is refused and counted; the Identity service only ever sees a CSR.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use weft_api::identity::{self as pb, identity_server::Identity};
use weft_test_support::{DiscoveryFile, TestProxy, eventually, metric, process::ControlPlane};

const SQUARE: &str = "spiffe://cluster.local/ns/default/sa/square";

/// A CA directory and a tokens file with one token for `default/square`.
struct Setup {
    dir: tempfile::TempDir,
    token: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let token = weft_identity::new_token();
        let mut tokens = weft_identity::Tokens::default();
        tokens.0.insert(
            token.clone(),
            weft_identity::TokenIdentity {
                namespace: "default".into(),
                service_account: "square".into(),
            },
        );
        tokens.write(&dir.path().join("tokens.yaml")).unwrap();
        std::fs::write(dir.path().join("square.token"), format!("{token}\n")).unwrap();
        std::fs::write(dir.path().join("wrong.token"), "not-a-token\n").unwrap();
        Setup { dir, token }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    async fn control_plane(&self, disc: &DiscoveryFile, lifetime: &str) -> ControlPlane {
        ControlPlane::start_with(
            &disc.path,
            &[
                "--identity-dir",
                &self.path("ca"),
                "--identity-tokens",
                &self.path("tokens.yaml"),
                "--cert-lifetime",
                lifetime,
            ],
        )
        .await
    }
}

async fn identity_page(proxy: &TestProxy) -> String {
    weft_test_support::http_get(proxy.admin, "/identity").await.unwrap().1
}

fn field<'a>(page: &'a str, name: &str) -> Option<&'a str> {
    page.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_is_certified_for_its_tokens_identity_and_renews_before_expiry() {
    let setup = Setup::new();
    let disc = DiscoveryFile::new();
    let cp = setup.control_plane(&disc, "6s").await;
    let proxy = TestProxy::start(&[
        "--control-plane",
        &cp.addr.to_string(),
        "--identity-token-file",
        &setup.path("square.token"),
    ])
    .await;

    let page = eventually("a certificate", Duration::from_secs(10), || async {
        let p = identity_page(&proxy).await;
        (field(&p, "identity") == Some(SQUARE)).then_some(p)
    })
    .await;
    assert_eq!(
        field(&page, "sans"),
        Some(format!("uri:{SQUARE}, dns:square.default.serviceaccount.identity.cluster.local").as_str()),
        "{page}"
    );
    assert_eq!(field(&page, "anchors"), Some("1"), "{page}");
    let first_expiry: u64 = field(&page, "not_after")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let first_at = std::time::Instant::now();

    // 6 s certificates are renewed at ~4.2 s: a newer one within 10 s.
    let renewed = eventually("a renewal before expiry", Duration::from_secs(10), || async {
        let p = identity_page(&proxy).await;
        let expiry: u64 = field(&p, "not_after")?.split(' ').next()?.parse().ok()?;
        (expiry > first_expiry).then_some(p)
    })
    .await;
    assert!(field(&renewed, "last_error").is_none(), "{renewed}");
    // At 70 % ± 5 % of 6 s: not at once, not in a loop.
    assert!(
        first_at.elapsed() >= Duration::from_secs(3),
        "renewed after {:?}: too early",
        first_at.elapsed()
    );
    assert_eq!(field(&renewed, "renewals"), Some("2"), "{renewed}");
    let m = proxy.metrics().await;
    assert!(metric(&m, "weft_identity_certified_total", &[]) >= 2.0, "{m}");
    let cpm = cp.metrics().await;
    assert!(
        metric(&cpm, "weft_control_certificates_total", &[("result", "issued")]) >= 2.0,
        "{cpm}"
    );
    // The CA's keys are the owner's only.
    use std::os::unix::fs::PermissionsExt;
    for f in ["anchor.key", "issuer.key"] {
        let mode = std::fs::metadata(setup.dir.path().join("ca").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_and_counted_and_readiness_says_so() {
    let setup = Setup::new();
    let disc = DiscoveryFile::new();
    let cp = setup.control_plane(&disc, "1h").await;
    let proxy = TestProxy::start(&[
        "--control-plane",
        &cp.addr.to_string(),
        "--identity-token-file",
        &setup.path("wrong.token"),
    ])
    .await;
    let page = eventually("the refusal", Duration::from_secs(10), || async {
        let p = identity_page(&proxy).await;
        field(&p, "last_error").is_some().then_some(p)
    })
    .await;
    assert!(page.contains("refused the token"), "{page}");
    assert!(page.contains("identity: none yet"), "{page}");
    let cpm = cp.metrics().await;
    assert!(
        metric(&cpm, "weft_control_certificates_total", &[("result", "unknown_token")]) >= 1.0,
        "{cpm}"
    );
    assert!(metric(&proxy.metrics().await, "weft_identity_certify_failures_total", &[]) >= 1.0);
    // Not ready (no certificate for meshed peers), and saying why; alive.
    let (status, body) = weft_test_support::http_get(proxy.admin, "/ready").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("waiting for the workload certificate"), "{body}");
    assert_eq!(weft_test_support::http_get(proxy.admin, "/live").await.unwrap().0, 200);
}

/// An Identity service that records what it is sent, in front of a real CA.
struct Recorder {
    inner: weft_control::identity::IdentityService,
    seen: Arc<Mutex<Vec<pb::CertifyRequest>>>,
    watches: Arc<Mutex<Vec<pb::WatchRequest>>>,
}

#[tonic::async_trait]
impl Identity for Recorder {
    async fn certify(
        &self,
        req: tonic::Request<pb::CertifyRequest>,
    ) -> Result<tonic::Response<pb::CertifyResponse>, tonic::Status> {
        self.seen.lock().unwrap().push(req.get_ref().clone());
        self.inner.certify(req).await
    }

    type WatchStream = <weft_control::identity::IdentityService as Identity>::WatchStream;

    async fn watch(
        &self,
        req: tonic::Request<pb::WatchRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        self.watches.lock().unwrap().push(req.get_ref().clone());
        self.inner.watch(req).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_service_only_ever_sees_a_csr_and_the_token() {
    use prost::Message;
    let setup = Setup::new();
    let (ca, _) = weft_identity::Ca::load_or_create(&setup.dir.path().join("ca"), "cluster.local").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watches = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder {
        inner: weft_control::identity::IdentityService::new(
            Arc::new(ca),
            None,
            setup.dir.path().join("tokens.yaml"),
            Duration::from_secs(3600),
            Arc::default(),
        ),
        seen: seen.clone(),
        watches: watches.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::identity_server::IdentityServer::new(recorder))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let proxy = TestProxy::start(&[
        "--control-plane",
        &addr.to_string(),
        "--identity-token-file",
        &setup.path("square.token"),
    ])
    .await;
    eventually("a certificate", Duration::from_secs(10), || async {
        (field(&identity_page(&proxy).await, "identity") == Some(SQUARE)).then_some(())
    })
    .await;
    eventually("the proxy to watch the CA", Duration::from_secs(10), || async {
        (!watches.lock().unwrap().is_empty()).then_some(())
    })
    .await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one request for one certificate");
    let req = &seen[0];
    assert_eq!(req.token, setup.token);
    // The message has two fields, token and CSR, and nothing else fits in
    // it: its encoding is theirs alone.
    assert_eq!(
        req.encoded_len(),
        pb::CertifyRequest {
            token: req.token.clone(),
            csr: req.csr.clone()
        }
        .encoded_len()
    );
    // The CSR is a PKCS #10 request with a valid signature: a public key
    // and a proof of holding its private key, never the key itself.
    use x509_parser::prelude::FromDer;
    let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&req.csr).unwrap();
    assert!(rest.is_empty());
    csr.verify_signature().unwrap();
    assert!(
        !req.csr.windows(11).any(|w| w == b"PRIVATE KEY"),
        "no PEM private key in the request"
    );
    // Its CA watch carries the token, a process id and a generation.
    let w = watches.lock().unwrap()[0].clone();
    assert_eq!(w.token, setup.token);
    assert!(!w.instance.is_empty() && w.instance.len() <= 64);
    assert_eq!(
        w.encoded_len(),
        pb::WatchRequest {
            token: w.token.clone(),
            instance: w.instance.clone(),
            installed: w.installed,
        }
        .encoded_len()
    );
}
