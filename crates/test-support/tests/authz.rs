//! Authorization by identity, port and gRPC method: weft-control serves
//! each workload's policy from the mesh file, the inbound proxy checks
//! every request against it before the app sees a byte. Real proxies,
//! a real weft-control, real mTLS identities, a real square app.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_api::square::{Behavior, Input, square_client::SquareClient};
use weft_demo::square::{self, SquareOptions};
use weft_policy::jwt::testing::TestIssuer;
use weft_test_support::{
    DiscoveryFile, MeshIds, TestProxy, eventually, ids::identity, mesh::channel_via, metric, process::ControlPlane,
    python, require, workspace_root,
};

const SVC: &str = "square.test:50051";

/// `client` may call Square/Square (only); `admin` anything.
const POLICY: &str = r#"
policies:
  square:
    servers:
      grpc:
        port: 50051
        authorizations:
          client-squares:
            identities: [client.default.serviceaccount.identity.cluster.local]
            routes: [{grpc: square.Square/Square}]
          admins:
            identities: [spiffe://cluster.local/ns/default/sa/admin]
"#;

/// An app, weft-control with identities and a policy, the app's inbound
/// proxy enforcing `square`'s policy.
struct Mesh {
    app: square::SquareHandle,
    ids: MeshIds,
    disc: DiscoveryFile,
    cp: ControlPlane,
    inbound: TestProxy,
}

impl Mesh {
    async fn start(policy: &str) -> Mesh {
        Mesh::start_with(policy, SquareOptions::named("square-0"), &[]).await
    }

    async fn start_with(policy: &str, app: SquareOptions, extra: &[&str]) -> Mesh {
        Mesh::start_full(policy, app, extra, &[]).await
    }

    /// With flags for the inbound proxy (`extra`) and weft-control (`cp_extra`).
    async fn start_full(policy: &str, app: SquareOptions, extra: &[&str], cp_extra: &[&str]) -> Mesh {
        let app = square::spawn(app).await.unwrap();
        let ids = MeshIds::new();
        let disc = DiscoveryFile::new();
        disc.write(&format!("services: {{}}\n{policy}"));
        let cp = ids.control_plane_with(&disc, cp_extra).await;
        let app_addr = app.addr.to_string();
        let mut args = vec![
            "--inbound-forward",
            app_addr.as_str(),
            "--policy-workload",
            "square",
            // As under `weft up`: the app listens elsewhere than the port
            // the mesh (and its policy) names.
            "--inbound-policy-port",
            "50051",
        ];
        args.extend_from_slice(extra);
        let inbound = ids.proxy(&cp, "square", &args).await;
        let mesh = Mesh {
            app,
            ids,
            disc,
            cp,
            inbound,
        };
        mesh.set_policy(policy);
        eventually("the proxy's first policy", Duration::from_secs(10), || async {
            let page = mesh.policy_page().await;
            page.contains("policy: workload square").then_some(())
        })
        .await;
        eventually("weft-control to serve the service", Duration::from_secs(5), || async {
            mesh.cp.ready().await.contains("services: 1").then_some(())
        })
        .await;
        mesh
    }

    /// Rewrites the mesh file: the service (the inbound proxy, with its
    /// identity) and `policy`.
    fn set_policy(&self, policy: &str) {
        self.disc.write(&format!(
            "services:\n  {SVC}:\n    endpoints:\n      - address: {}\n        identity: {}\n{policy}",
            self.inbound.inbound,
            identity("square")
        ));
    }

    async fn policy_page(&self) -> String {
        weft_test_support::http_get(self.inbound.admin, "/policy")
            .await
            .map(|r| r.1)
            .unwrap_or_default()
    }

    /// A client proxy certified as `sa`, and a Square client through it.
    async fn client(&self, sa: &str) -> (TestProxy, SquareClient<tonic::transport::Channel>) {
        let p = self.ids.proxy(&self.cp, sa, &[]).await;
        let sq = SquareClient::new(p.channel(SVC).await);
        // The first call waits for discovery and the TLS connection.
        eventually("the client's first answer", Duration::from_secs(10), || {
            let mut sq = sq.clone();
            async move {
                match sq.square(Input { value: 1 }).await {
                    Ok(_) => Some(()),
                    Err(s) if s.code() == tonic::Code::PermissionDenied => Some(()),
                    Err(_) => None,
                }
            }
        })
        .await;
        (p, sq)
    }
}

fn authz(m: &str, labels: &[(&str, &str)]) -> f64 {
    metric(m, "weft_inbound_authz_total", labels)
}

async fn square_call(sq: &mut SquareClient<tonic::transport::Channel>) -> Result<i64, tonic::Status> {
    sq.square(Input { value: 9 }).await.map(|r| r.into_inner().result)
}

async fn report_call(sq: &mut SquareClient<tonic::transport::Channel>) -> Result<i64, tonic::Status> {
    sq.report(Input { value: 9 }).await.map(|r| r.into_inner().result)
}

/// A Square call straight to `sq`'s connection with `authorization: Bearer <token>`.
async fn bearer_call(
    sq: &SquareClient<tonic::transport::Channel>,
    token: Option<String>,
) -> Result<i64, tonic::Status> {
    let mut sq = sq.clone();
    let mut req = tonic::Request::new(Input { value: 3 });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    sq.square(req).await.map(|r| r.into_inner().result)
}

fn denied(r: Result<i64, tonic::Status>) -> tonic::Status {
    let s = r.expect_err("a denial");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_is_allowed_a_method_another_is_denied_and_both_are_counted() {
    let mesh = Mesh::start(POLICY).await;
    let (_c, mut client) = mesh.client("client").await;
    let (_o, mut other) = mesh.client("other").await;
    let (_a, mut admin) = mesh.client("admin").await;
    let calls_before = mesh.app.stats().calls;

    assert_eq!(square_call(&mut client).await.unwrap(), 81);
    // Another method of the same service: not for `client`.
    let s = denied(report_call(&mut client).await);
    assert!(
        s.message().contains("server grpc") && s.message().contains("route not authorized"),
        "{s:?}"
    );
    // Another identity: nothing.
    let s = denied(square_call(&mut other).await);
    assert!(s.message().contains("server grpc: unauthorized"), "{s:?}");
    assert!(
        !s.message().contains("client.default"),
        "the denial tells who would have been allowed: {s:?}"
    );
    // `admins` names a SPIFFE id: every method.
    assert_eq!(square_call(&mut admin).await.unwrap(), 81);
    assert_eq!(report_call(&mut admin).await.unwrap(), 81);
    // The app saw the allowed calls only.
    assert_eq!(mesh.app.stats().calls - calls_before, 3);

    let m = mesh.inbound.metrics().await;
    let client_id = identity("client");
    let other_id = identity("other");
    assert!(
        authz(
            &m,
            &[
                ("server", "grpc"),
                ("decision", "allow"),
                ("reason", "authorized"),
                ("client_id", &client_id),
                ("route", "/square.Square/Square")
            ]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        authz(
            &m,
            &[
                ("decision", "deny"),
                ("reason", "route"),
                ("client_id", &client_id),
                ("route", "/square.Square/Report")
            ]
        ) >= 1.0
    );
    assert!(
        authz(
            &m,
            &[
                ("decision", "deny"),
                ("reason", "unauthorized"),
                ("client_id", &other_id)
            ]
        ) >= 1.0
    );
    // A denial is the caller's doing: the client's proxy does not count it
    // against the endpoint, nor retry it.
    assert_eq!(mesh.app.stats().calls - calls_before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_callers_are_denied_on_an_all_authenticated_workload() {
    let mesh = Mesh::start("policies: {square: {default: all-authenticated}}\n").await;
    // Straight to the inbound proxy, plaintext: no identity.
    let mut plain = SquareClient::new(channel_via(mesh.inbound.inbound, SVC).await);
    let s = denied(square_call(&mut plain).await);
    assert!(s.message().contains("server default: unauthenticated"), "{s:?}");
    // Over mTLS, any mesh identity.
    let (_o, mut other) = mesh.client("other").await;
    assert_eq!(square_call(&mut other).await.unwrap(), 81);
    let m = mesh.inbound.metrics().await;
    assert!(
        authz(
            &m,
            &[
                ("server", "default"),
                ("decision", "deny"),
                ("reason", "unauthenticated"),
                ("client_id", "")
            ]
        ) >= 1.0
    );

    // HTTP/1.1 gets 403, and an opaque connection is closed.
    let (status, body) = weft_test_support::http_get(mesh.inbound.inbound, "/anything")
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    let mut tcp = tokio::net::TcpStream::connect(mesh.inbound.inbound).await.unwrap();
    tcp.write_all(b"\x00\x01 an opaque protocol that speaks first\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the connection is closed, not left open")
        .unwrap_or(0);
    assert_eq!(n, 0, "the opaque connection got bytes");
    eventually("the opaque denial counted", Duration::from_secs(5), || async {
        let m = mesh.inbound.metrics().await;
        (authz(&m, &[("decision", "deny"), ("route", "")]) >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_lets_through_what_it_would_deny_and_counts_it() {
    let mesh = Mesh::start(&POLICY.replace("port: 50051\n", "port: 50051\n        mode: audit\n")).await;
    let (_o, mut other) = mesh.client("other").await;
    assert_eq!(square_call(&mut other).await.unwrap(), 81);
    let m = mesh.inbound.metrics().await;
    assert!(
        authz(
            &m,
            &[
                ("decision", "audit"),
                ("reason", "unauthorized"),
                ("client_id", &identity("other"))
            ]
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(authz(&m, &[("decision", "deny")]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_from_outside_the_mesh_is_authorized_by_its_jwt() {
    let issuer = TestIssuer::new("key-1");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &issuer.jwks).unwrap();
    let policy = format!(
        r#"
policy:
  jwt:
    corp: {{issuer: "https://id.example.com", audiences: [square], jwks_file: "{}"}}
policies:
  square:
    servers:
      grpc:
        port: 50051
        authorizations:
          alice: {{jwt: [{{provider: corp, subjects: [alice]}}]}}
"#,
        jwks.display()
    );
    let mesh = Mesh::start(&policy).await;
    let plain = SquareClient::new(channel_via(mesh.inbound.inbound, SVC).await);
    let call = |token: Option<String>| bearer_call(&plain, token);
    let claims = |sub: &str| TestIssuer::claims("https://id.example.com", "square", sub);
    assert_eq!(call(Some(issuer.token(&claims("alice")))).await.unwrap(), 9);
    let s = denied(call(None).await);
    assert!(s.message().contains("unauthenticated"), "{s:?}");
    denied(call(Some(issuer.token(&claims("bob")))).await);
    let mut expired = claims("alice");
    expired["exp"] = serde_json::json!(1_000_000);
    let s = denied(call(Some(issuer.token(&expired))).await);
    assert!(s.message().contains("invalid token"), "{s:?}");
    denied(
        call(Some(issuer.token(&TestIssuer::claims(
            "https://evil.example.com",
            "square",
            "alice",
        ))))
        .await,
    );
    denied(
        call(Some(issuer.token(&TestIssuer::claims(
            "https://id.example.com",
            "billing",
            "alice",
        ))))
        .await,
    );
    denied(call(Some(TestIssuer::new("key-1").token(&claims("alice")))).await);
    denied(call(Some(TestIssuer::unsigned(&claims("alice")))).await);
    denied(call(Some(issuer.hmac_with_public_key(&claims("alice")))).await);
    let m = mesh.inbound.metrics().await;
    assert!(
        authz(&m, &[("decision", "allow"), ("client_id", "jwt:corp")]) >= 1.0,
        "{m}"
    );
    assert!(
        authz(&m, &[("decision", "deny"), ("reason", "invalid_token")]) >= 6.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_under_load_applies_within_a_second_and_fails_no_call_in_flight() {
    // Calls take 50 ms: at 200 calls/s about ten are in flight at any time.
    let mut opts = SquareOptions::named("square-0");
    opts.behavior = Behavior {
        delay_ms: 50,
        ..Default::default()
    };
    let mesh = Mesh::start_with(POLICY, opts, &[]).await;
    let (client_proxy, _) = mesh.client("client").await;
    let load = weft_test_support::OpenLoad::start(client_proxy.channel(SVC).await, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // `client` loses Square/Square: only admins remain.
    let revoked = Instant::now();
    mesh.set_policy(&POLICY.replace(
        "identities: [client.default.serviceaccount.identity.cluster.local]",
        "identities: [nobody.default.serviceaccount.identity.cluster.local]",
    ));
    eventually("a denial", Duration::from_secs(5), || async {
        let m = mesh.inbound.metrics().await;
        (authz(&m, &[("decision", "deny")]) >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restored = Instant::now();
    mesh.set_policy(POLICY);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let calls = load.finish().await;

    let mut first_denied = None;
    let mut first_allowed_again = None;
    for c in &calls {
        match &c.result {
            Ok(_) if c.started > restored => {
                first_allowed_again.get_or_insert(c.started);
            }
            Ok(_) => {}
            Err(s) => {
                assert_eq!(
                    s.code(),
                    tonic::Code::PermissionDenied,
                    "a call failed otherwise: {s:?}"
                );
                assert!(
                    c.started >= revoked,
                    "a call started before the change was denied ({:?} before it)",
                    revoked - c.started
                );
                first_denied.get_or_insert(c.started);
            }
        }
    }
    let took = first_denied.expect("no call was denied") - revoked;
    assert!(took < Duration::from_secs(1), "the revocation took {took:?}");
    // Every call that started a second after the change, and before the
    // policy was restored, was denied; a second after it, every call passed.
    for c in &calls {
        if c.started > revoked + Duration::from_secs(1) && c.started < restored {
            assert!(
                c.result.is_err(),
                "a call {:?} after the revocation passed",
                c.started - revoked
            );
        }
        if c.started > restored + Duration::from_secs(1) {
            assert!(
                c.result.is_ok(),
                "a call {:?} after the restore failed",
                c.started - restored
            );
        }
    }
    let back = first_allowed_again.expect("no call passed after the restore") - restored;
    assert!(back < Duration::from_secs(1), "the restore took {back:?}");
    let in_flight_at_change = calls
        .iter()
        .filter(|c| c.started < revoked && c.finished > revoked)
        .count();
    assert!(
        in_flight_at_change >= 3,
        "only {in_flight_at_change} calls were in flight at the change"
    );
    println!(
        "{} calls; revoked in {took:?}, restored in {back:?}; {in_flight_at_change} in flight at the change, none failed",
        calls.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_control_plane_down_or_a_bad_policy_the_last_policy_stays_in_force() {
    let mut mesh = Mesh::start(POLICY).await;
    let (_c, mut client) = mesh.client("client").await;
    let (_o, mut other) = mesh.client("other").await;

    // A policy naming a JWT provider that does not exist: refused by
    // weft-control with a clear message, and the proxy keeps the last.
    mesh.set_policy(&POLICY.replace(
        "identities: [spiffe://cluster.local/ns/default/sa/admin]",
        "jwt: [{provider: okta}]",
    ));
    eventually("weft-control to refuse the policy", Duration::from_secs(5), || async {
        let ready = mesh.cp.ready().await;
        ready.contains("`okta` is not a provider").then_some(())
    })
    .await;
    assert!(
        mesh.cp
            .ready()
            .await
            .contains("policies.square.servers.grpc.authorizations.admins.jwt[0].provider")
    );
    assert_eq!(square_call(&mut client).await.unwrap(), 81);
    denied(square_call(&mut other).await);

    // weft-control goes away: the same decisions, on connections old and new.
    mesh.cp.kill().await;
    eventually("the proxy to notice", Duration::from_secs(10), || async {
        mesh.policy_page().await.contains("last error").then_some(())
    })
    .await;
    assert_eq!(square_call(&mut client).await.unwrap(), 81);
    denied(square_call(&mut other).await);
    let mut fresh = SquareClient::new(channel_via(mesh.inbound.inbound, SVC).await);
    denied(square_call(&mut fresh).await);
    assert!(mesh.policy_page().await.contains("policy: workload square"));
}

/// A JWKS served over HTTPS by a server with a private CA, replaceable,
/// or failing (500).
struct JwksServer {
    addr: std::net::SocketAddr,
    doc: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// The CA that signed its certificate (PEM).
    ca_pem: String,
}

impl JwksServer {
    async fn start(doc: &str) -> JwksServer {
        // A private CA and a certificate for 127.0.0.1.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = std::sync::Arc::new(std::sync::Mutex::new(Some(doc.to_string())));
        let served = doc.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let doc = served.lock().unwrap().clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let answer = match doc {
                        Some(d) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{d}",
                            d.len()
                        ),
                        None => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_string(),
                    };
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        JwksServer {
            addr,
            doc,
            ca_pem: ca_cert.pem(),
        }
    }

    fn set(&self, doc: Option<&str>) {
        *self.doc.lock().unwrap() = doc.map(str::to_string);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_fetched_by_url_follow_the_providers_rotation_and_survive_its_outage() {
    let (old, new) = (TestIssuer::new("2026-old"), TestIssuer::new("2026-new"));
    let server = JwksServer::start(&old.jwks).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("provider-ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    // https: the provider's certificate is checked (the public roots do
    // not know its CA; its jwks_ca_file does).
    let url = format!("https://{}/.well-known/jwks.json", server.addr);
    let e = weft_control::jwks::fetch(&url, None).await.unwrap_err();
    assert!(e.contains("TLS"), "{e}");
    assert_eq!(weft_control::jwks::fetch(&url, Some(&ca)).await.unwrap(), old.jwks);
    let policy = format!(
        r#"
policy:
  jwt:
    corp: {{issuer: "https://id.example.com", audiences: [square], jwks_url: "https://{}/.well-known/jwks.json", jwks_ca_file: "{}"}}
policies:
  square:
    servers:
      grpc:
        port: 50051
        authorizations:
          people: {{jwt: [{{provider: corp}}]}}
"#,
        server.addr,
        ca.display()
    );
    let mesh = Mesh::start_full(
        &policy,
        SquareOptions::named("square-0"),
        &[],
        &["--jwks-refresh", "500ms"],
    )
    .await;
    let plain = SquareClient::new(channel_via(mesh.inbound.inbound, SVC).await);
    let call = |token: String| bearer_call(&plain, Some(token));
    let claims = TestIssuer::claims("https://id.example.com", "square", "alice");
    assert_eq!(call(old.token(&claims)).await.unwrap(), 9);
    denied(call(new.token(&claims)).await);
    // The provider rotates its keys: the new ones reach the proxy.
    server.set(Some(&new.jwks));
    eventually("the new key accepted", Duration::from_secs(10), || async {
        call(new.token(&claims)).await.ok()
    })
    .await;
    denied(call(old.token(&claims)).await);
    // The provider fails: the last keys stay.
    server.set(None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(call(new.token(&claims)).await.unwrap(), 9);
}

/// A second HTTP/2 and gRPC implementation from outside the mesh: Python
/// grpcio, plaintext to the inbound proxy, sees PERMISSION_DENIED with the
/// reason, and is let in by a valid token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_is_denied_with_the_reason_and_let_in_by_its_token() {
    let Some(py) = python() else {
        require(
            false,
            "the Python venv with grpcio (.venv; the README's test set-up makes it)",
        );
        return;
    };
    let issuer = TestIssuer::new("key-1");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &issuer.jwks).unwrap();
    let policy = format!(
        "policy: {{jwt: {{corp: {{issuer: \"https://id.example.com\", audiences: [square], jwks_file: \"{}\"}}}}}}\n\
         policies: {{square: {{servers: {{grpc: {{port: 50051, authorizations: {{alice: {{jwt: [{{provider: corp, subjects: [alice]}}]}}}}}}}}}}}}\n",
        jwks.display()
    );
    let mesh = Mesh::start(&policy).await;
    let call = |token: Option<String>| {
        let py = py.clone();
        let target = mesh.inbound.inbound.to_string();
        async move {
            let mut cmd = tokio::process::Command::new(py);
            cmd.arg(workspace_root().join("tests/python/square_call.py")).args([
                "--target",
                &target,
                "--authority",
                SVC,
            ]);
            if let Some(t) = token {
                cmd.args(["--token", &t]);
            }
            let out = cmd.output().await.expect("run the Python client");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("one JSON line")
        }
    };
    let out = call(None).await;
    assert_eq!(out["code"], "PERMISSION_DENIED", "{out}");
    let details = out["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("forbidden by the authorization policy: server grpc: unauthenticated"),
        "{out}"
    );
    let alice = issuer.token(&TestIssuer::claims("https://id.example.com", "square", "alice"));
    let out = call(Some(alice)).await;
    assert_eq!(
        (out["code"].as_str(), out["result"].as_i64()),
        (Some("OK"), Some(49)),
        "{out}"
    );
    assert_eq!(mesh.app.stats().calls, 1);
}
