//! Mutual TLS between proxies: a client's outbound proxy connects to the
//! endpoint's inbound proxy over TLS when discovery names the endpoint's
//! identity, and each side checks the other's certificate. A relay between
//! the two records the bytes: no plaintext with TLS, plaintext without. A
//! server with the wrong identity, from another trust anchor or with an
//! expired certificate, and a client with no certificate, are refused,
//! counted, and reach no app.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_api::square::{Input, square_client::SquareClient};
use weft_demo::square::{self, SquareOptions};
use weft_test_support::{DiscoveryFile, Relay, TestProxy, contains, eventually, metric, process::ControlPlane};

const SVC: &str = "square.test:50051";
const SQUARE_ID: &str = "square.default.serviceaccount.identity.cluster.local";
const CLIENT_ID: &str = "client.default.serviceaccount.identity.cluster.local";

use weft_test_support::MeshIds as Ids;

/// The server side: an app named `name`, the CA and weft-control, and the
/// app's inbound proxy certified as `square`.
struct Server {
    app: square::SquareHandle,
    ids: Ids,
    disc: DiscoveryFile,
    cp: ControlPlane,
    inbound: TestProxy,
}

impl Server {
    async fn start(name: &str) -> Server {
        Server::start_with(name, &[]).await
    }

    /// The same, the inbound proxy with `extra` arguments.
    async fn start_with(name: &str, extra: &[&str]) -> Server {
        let app = square::spawn(SquareOptions::named(name)).await.unwrap();
        let ids = Ids::new();
        let disc = DiscoveryFile::new();
        let cp = ids.control_plane(&disc).await;
        let app_addr = app.addr.to_string();
        let mut args = vec!["--inbound-forward", app_addr.as_str()];
        args.extend_from_slice(extra);
        let inbound = ids.proxy(&cp, "square", &args).await;
        Server {
            app,
            ids,
            disc,
            cp,
            inbound,
        }
    }
}

fn mesh(endpoint: SocketAddr, identity: Option<&str>) -> String {
    match identity {
        Some(id) => {
            format!("services:\n  {SVC}:\n    endpoints:\n      - address: {endpoint}\n        identity: {id}\n")
        }
        None => format!("services:\n  {SVC}:\n    endpoints: [{endpoint}]\n"),
    }
}

/// A call through `client` that must fail with UNAVAILABLE (its endpoint
/// refused): the status.
async fn refused_call(client: &TestProxy) -> tonic::Status {
    let mut sq = SquareClient::new(client.channel(SVC).await);
    let mut req = tonic::Request::new(Input { value: 2 });
    req.set_timeout(Duration::from_secs(5));
    let err = sq.square(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    err
}

/// Waits for weft-control to serve the mesh file's one service.
async fn serving(cp: &ControlPlane) {
    eventually(
        "weft-control to serve the mesh file",
        Duration::from_secs(5),
        || async { cp.ready().await.contains("services: 1").then_some(()) },
    )
    .await;
}

fn tls_count(m: &str, direction: &str, result: &str) -> f64 {
    metric(
        m,
        "weft_tls_handshakes_total",
        &[("direction", direction), ("result", result)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_proxies_the_bytes_are_encrypted_and_without_an_identity_they_are_not() {
    let Server {
        app,
        ids,
        disc,
        cp,
        inbound,
    } = Server::start("square-secret-host").await;
    let relay = Relay::start(inbound.inbound).await;
    disc.write(&mesh(relay.addr, Some(SQUARE_ID)));
    serving(&cp).await;
    let client = ids.proxy(&cp, "client", &[]).await;

    let mut sq = SquareClient::new(client.channel(SVC).await);
    let out = eventually("a call over mutual TLS", Duration::from_secs(10), || {
        let mut sq = sq.clone();
        async move { sq.square(Input { value: 12_345 }).await.ok() }
    })
    .await
    .into_inner();
    assert_eq!(
        (out.result, out.hostname.as_str()),
        (12_345 * 12_345, "square-secret-host")
    );
    for _ in 0..20 {
        sq.square(Input { value: 7 }).await.unwrap();
    }
    let wire = relay.take();
    assert!(wire.len() > 1000, "the relay saw {} bytes", wire.len());
    assert!(
        !contains(&wire, b"square-secret-host"),
        "the answer's payload crossed in plaintext"
    );
    assert!(
        !contains(&wire, b"PRI * HTTP/2.0"),
        "the HTTP/2 preface crossed in plaintext"
    );
    assert!(tls_count(&client.metrics().await, "outbound", "ok") >= 1.0);
    assert!(tls_count(&inbound.metrics().await, "inbound", "ok") >= 1.0);
    // The app is told who called, as proven by the client's certificate.
    assert_eq!(app.stats().last_client_id, CLIENT_ID);

    // Without the identity in discovery: plain TCP, and the relay reads it
    // all. A client that claims an identity in the header is not believed:
    // the inbound proxy removes it.
    disc.write(&mesh(relay.addr, None));
    eventually("a plaintext call", Duration::from_secs(10), || {
        let mut sq = sq.clone();
        let relay = &relay;
        async move {
            let mut req = tonic::Request::new(Input { value: 3 });
            req.metadata_mut().insert(
                "l5d-client-id",
                "admin.default.serviceaccount.identity.cluster.local".parse().unwrap(),
            );
            sq.square(req).await.ok()?;
            contains(&relay.take(), b"square-secret-host").then_some(())
        }
    })
    .await;
    assert_eq!(app.stats().last_client_id, "", "a claimed identity reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_identity_is_refused_and_counted() {
    let Server {
        app,
        ids,
        disc,
        cp,
        inbound,
    } = Server::start("square-0").await;
    disc.write(&mesh(
        inbound.inbound,
        Some("other.default.serviceaccount.identity.cluster.local"),
    ));
    serving(&cp).await;
    let client = ids.proxy(&cp, "client", &[]).await;
    let err = refused_call(&client).await;
    assert!(err.message().contains("wrong_identity"), "{err:?}");
    assert!(tls_count(&client.metrics().await, "outbound", "wrong_identity") >= 1.0);
    assert_eq!(app.stats().calls, 0, "the app saw a call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_from_another_trust_anchor_is_refused() {
    let app = square::spawn(SquareOptions::named("square-0")).await.unwrap();
    let (ours, theirs) = (Ids::new(), Ids::new());
    let (disc, other_disc) = (DiscoveryFile::new(), DiscoveryFile::new());
    let cp = ours.control_plane(&disc).await;
    let other_cp = theirs.control_plane(&other_disc).await;
    // The server proxy is certified by another CA.
    let inbound = theirs
        .proxy(&other_cp, "square", &["--inbound-forward", &app.addr.to_string()])
        .await;
    disc.write(&mesh(inbound.inbound, Some(SQUARE_ID)));
    serving(&cp).await;
    let client = ours.proxy(&cp, "client", &[]).await;
    refused_call(&client).await;
    assert!(tls_count(&client.metrics().await, "outbound", "unknown_ca") >= 1.0);
    assert_eq!(app.stats().calls, 0, "the app saw a call");
}

/// A raw TLS client that trusts the mesh's anchors but shows no certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused_and_reaches_no_app() {
    let Server {
        app,
        ids,
        disc: _disc,
        cp: _cp,
        inbound,
    } = Server::start("square-0").await;
    let anchors =
        weft_identity::certs_from_pem(&std::fs::read_to_string(ids.dir.path().join("ca/anchors.pem")).unwrap())
            .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots.add(rustls_pki_types::CertificateDer::from(a)).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(inbound.inbound).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SQUARE_ID).unwrap();
    // TLS 1.3: the client's handshake completes before the server has
    // checked it; the refusal comes as an alert on the first read.
    let outcome = async {
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut b = [0u8; 64];
        s.read(&mut b).await
    };
    let r = tokio::time::timeout(Duration::from_secs(5), outcome).await.unwrap();
    assert!(
        !matches!(r, Ok(n) if n > 0),
        "the server answered a client with no certificate: {r:?}"
    );
    eventually("the refusal counted", Duration::from_secs(5), || async {
        (tls_count(&inbound.metrics().await, "inbound", "no_client_certificate") >= 1.0).then_some(())
    })
    .await;
    assert_eq!(app.stats().calls, 0);
}

/// A server whose certificate (right identity, right CA) has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let ids = Ids::new();
    let disc = DiscoveryFile::new();
    let cp = ids.control_plane(&disc).await;
    let client = ids.proxy(&cp, "client", &[]).await;
    // Sign an expired certificate for `square` with the CA's own issuer.
    let ca = ids.dir.path().join("ca");
    let issuer_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca.join("issuer.key")).unwrap()).unwrap();
    let issuer_pem = std::fs::read_to_string(ca.join("issuer.pem")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&issuer_pem, issuer_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![SQUARE_ID.to_string()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let issuer_der = weft_identity::certs_from_pem(&issuer_pem).unwrap().remove(0);
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), rustls_pki_types::CertificateDer::from(issuer_der)],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    disc.write(&mesh(addr, Some(SQUARE_ID)));
    serving(&cp).await;
    let err = refused_call(&client).await;
    let m = client.metrics().await;
    assert!(
        tls_count(&m, "outbound", "expired") >= 1.0,
        "{err:?} {}",
        m.lines()
            .filter(|l| l.contains("tls_handshakes"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A port marked `mtls: required` (`--inbound-mtls-required`): a plaintext
/// gRPC client is refused (counted, no call reaches the app); a proxy
/// with a certificate still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_requires_mtls_refuses_plaintext_and_takes_mtls() {
    let Server {
        app,
        ids,
        disc,
        cp,
        inbound,
    } = Server::start_with("square-0", &["--inbound-mtls-required", "all"]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", inbound.inbound))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut plain = SquareClient::new(channel);
    let mut req = tonic::Request::new(Input { value: 2 });
    req.set_timeout(Duration::from_secs(5));
    let err = plain.square(req).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "a plaintext call must fail as a closed connection: {err:?}"
    );
    eventually("the refusal counted", Duration::from_secs(5), || async {
        (tls_count(&inbound.metrics().await, "inbound", "plaintext_refused") >= 1.0).then_some(())
    })
    .await;
    assert_eq!(app.stats().calls, 0, "a plaintext call reached the app");

    disc.write(&mesh(inbound.inbound, Some(SQUARE_ID)));
    serving(&cp).await;
    let client = ids.proxy(&cp, "client", &[]).await;
    let sq = SquareClient::new(client.channel(SVC).await);
    let out = eventually("a call over mutual TLS", Duration::from_secs(10), || {
        let mut sq = sq.clone();
        async move { sq.square(Input { value: 9 }).await.ok() }
    })
    .await;
    assert_eq!(out.into_inner().result, 81);
    assert!(tls_count(&inbound.metrics().await, "inbound", "ok") >= 1.0);
}

/// The trust anchors a proxy's `/identity` lists (their fingerprints).
async fn anchors_of(proxy: &TestProxy) -> Vec<String> {
    let page = weft_test_support::http_get(proxy.admin, "/identity").await.unwrap().1;
    page.lines()
        .filter_map(|l| {
            l.split_once(" sha256:")
                .filter(|_| l.starts_with("  - "))
                .map(|(_, fp)| fp.to_string())
        })
        .collect()
}

/// weft-control's `/identity` (JSON).
async fn ca_status(cp: &ControlPlane) -> serde_json::Value {
    let (status, body) = weft_test_support::http_get(cp.admin, "/identity").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `weft identity rotate` under 200 calls/s over mutual TLS: each step
/// reaches both proxies, no call fails, and at the end both hold only the
/// new anchor; a proxy certified afterwards (by the new issuer) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_anchor_rotation_under_load_fails_no_call() {
    let Server {
        app: _app,
        ids,
        disc,
        cp,
        inbound,
    } = Server::start("square-0").await;
    disc.write(&mesh(inbound.inbound, Some(SQUARE_ID)));
    serving(&cp).await;
    let client = ids.proxy(&cp, "client", &[]).await;
    let channel = client.channel(SVC).await;
    let mut sq = SquareClient::new(channel.clone());
    eventually("a call over mutual TLS", Duration::from_secs(10), || {
        let mut sq = sq.clone();
        async move { sq.square(Input { value: 2 }).await.ok() }
    })
    .await;
    let old = anchors_of(&inbound).await;
    assert_eq!(old.len(), 1, "{old:?}");
    eventually("both proxies to watch the CA", Duration::from_secs(10), || async {
        let s = ca_status(&cp).await;
        (s["proxies"] == 2 && s["proxies_current"] == 2).then_some(())
    })
    .await;

    let load = weft_test_support::OpenLoad::start(channel, 200);
    let out = tokio::process::Command::new(weft_test_support::bin_path("weft"))
        .args(["identity", "rotate", "--control-admin", &cp.admin.to_string()])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for step in [
        "step bundle",
        "step reissue",
        "step drop",
        "proxies holding it: 2 of 2",
        "rotation done",
    ] {
        assert!(text.contains(step), "no `{step}` in:\n{text}");
    }
    // Calls keep going a moment on the rotated mesh.
    for _ in 0..20 {
        sq.square(Input { value: 3 }).await.unwrap();
    }
    let calls = load.finish().await;
    let failed: Vec<_> = calls.iter().filter_map(|c| c.result.as_ref().err()).collect();
    assert!(calls.len() >= 20, "only {} calls", calls.len());
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        calls.len(),
        failed.first()
    );

    let s = ca_status(&cp).await;
    assert_eq!(s["rotation"], "idle", "{s:#}");
    let new = anchors_of(&inbound).await;
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new, old, "the anchor did not change");
    assert_eq!(anchors_of(&client).await, new);
    assert_eq!(s["anchors"][0]["sha256"], new[0].as_str());

    // A proxy certified now (new issuer, new anchor only) is served.
    let fresh = ids.proxy(&cp, "client", &[]).await;
    let sq = SquareClient::new(fresh.channel(SVC).await);
    let out = eventually(
        "a call from a proxy certified after the rotation",
        Duration::from_secs(10),
        || {
            let mut sq = sq.clone();
            async move { sq.square(Input { value: 4 }).await.ok() }
        },
    )
    .await;
    assert_eq!(out.into_inner().result, 16);
}

/// An HTTP/1.1 app that answers each request with a secret and the
/// `l5d-client-id` header it got.
async fn http1_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        buf.drain(..end + 4);
                        let id = head
                            .lines()
                            .find_map(|l| l.strip_prefix("l5d-client-id:"))
                            .map_or("none", str::trim)
                            .to_string();
                        let body = format!("http1-secret-answer client-id={id}");
                        let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// HTTP/1.1 between two proxies goes over mutual TLS too (ALPN
/// `http/1.1`): the relay sees none of it, the app is told the client's
/// identity, and a claimed one from a plaintext client is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_between_proxies_is_encrypted_and_the_app_learns_the_client_identity() {
    let app = http1_app().await;
    let ids = Ids::new();
    let disc = DiscoveryFile::new();
    let cp = ids.control_plane(&disc).await;
    let inbound = ids.proxy(&cp, "square", &["--inbound-forward", &app.to_string()]).await;
    let relay = Relay::start(inbound.inbound).await;
    disc.write(&mesh(relay.addr, Some(SQUARE_ID)));
    serving(&cp).await;
    let client = ids.proxy(&cp, "client", &[]).await;
    let get = |addr: SocketAddr, extra: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /secret-path HTTP/1.1\r\nhost: {SVC}\r\n{extra}connection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&raw).to_string();
        text.starts_with("HTTP/1.1 200").then_some(text)
    };
    let answer = eventually("an HTTP/1.1 request over mutual TLS", Duration::from_secs(10), || {
        get(
            client.outbound,
            "l5d-client-id: admin.default.serviceaccount.identity.cluster.local\r\n",
        )
    })
    .await;
    assert!(answer.contains(&format!("client-id={CLIENT_ID}")), "{answer}");
    let wire = relay.take();
    assert!(wire.len() > 500, "the relay saw {} bytes", wire.len());
    assert!(
        !contains(&wire, b"http1-secret-answer"),
        "the answer crossed in plaintext"
    );
    assert!(
        !contains(&wire, b"/secret-path"),
        "the request path crossed in plaintext"
    );

    // Straight to the inbound, in plaintext, claiming an identity: removed.
    let answer = get(
        inbound.inbound,
        "l5d-client-id: admin.default.serviceaccount.identity.cluster.local\r\n",
    )
    .await
    .expect("a plaintext request to the inbound proxy");
    assert!(answer.contains("client-id=none"), "{answer}");
}

/// An app that speaks first (a banner), then echoes.
async fn banner_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(b"HELLO\n").await.is_ok() {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    addr
}

/// Opaque TCP from another proxy arrives as TLS with ALPN `weft.opaque`:
/// the inbound proxy terminates it (client certificate checked) and hands
/// the bytes to the app untouched, server-speaks-first included. (The
/// outbound side of opaque TCP is reached through transparent mode only,
/// whose service addresses the control plane does not serve yet: this test
/// plays the outbound proxy with a client certificate from the same CA.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_over_mutual_tls_reaches_the_app_byte_for_byte() {
    let app = banner_app().await;
    let ids = Ids::new();
    let disc = DiscoveryFile::new();
    let cp = ids.control_plane(&disc).await;
    let inbound = ids.proxy(&cp, "square", &["--inbound-forward", &app.to_string()]).await;
    let ca = weft_identity::Ca::load(&ids.dir.path().join("ca"), "cluster.local").unwrap();
    let (key, csr) = weft_identity::request().unwrap();
    let name = weft_identity::Name::new("cluster.local", "default", "client").unwrap();
    let issued = ca.issue(&csr, &name, Duration::from_secs(600)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for a in ca.anchors() {
        roots.add(rustls_pki_types::CertificateDer::from(a.clone())).unwrap();
    }
    let mut chain = vec![rustls_pki_types::CertificateDer::from(issued.leaf)];
    chain.extend(
        issued
            .intermediates
            .into_iter()
            .map(rustls_pki_types::CertificateDer::from),
    );
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            chain,
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"weft.opaque".to_vec()];
    let tcp = tokio::net::TcpStream::connect(inbound.inbound).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SQUARE_ID).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut banner = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"HELLO\n");
    // 1 MiB of binary, starting with what would look like HTTP.
    let mut data = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    data.extend((0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    let (mut r, mut w) = tokio::io::split(s);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(back == data, "{} bytes came back of {}", back.len(), data.len());
    let m = inbound.metrics().await;
    assert!(
        metric(&m, "weft_detect_total", &[("outcome", "tls_opaque")]) >= 1.0,
        "{m}"
    );
}

/// Each rotation step, taken by hand through weft-control's admin port,
/// leaves a mesh where new connections work both ways between a proxy
/// certified before the step and one certified after it; a step out of
/// order is refused (409) and names the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_each_rotation_step_new_connections_work_between_old_and_new_proxies() {
    let Server {
        app: _app,
        ids,
        disc,
        cp,
        inbound,
    } = Server::start("square-0").await;
    disc.write(&mesh(inbound.inbound, Some(SQUARE_ID)));
    serving(&cp).await;
    let (status, body) = weft_test_support::http_request(cp.admin, "POST", "/identity/rotate?step=drop")
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("next step: bundle"), "{body}");
    for step in ["bundle", "reissue", "drop"] {
        let (status, body) =
            weft_test_support::http_request(cp.admin, "POST", &format!("/identity/rotate?step={step}"))
                .await
                .unwrap();
        assert_eq!(status, 200, "{step}: {body}");
        let generation = ca_status(&cp).await["generation"].clone();
        eventually(
            &format!("every proxy to hold the `{step}` step"),
            Duration::from_secs(10),
            || async {
                let s = ca_status(&cp).await;
                (s["generation"] == generation && s["proxies"] == s["proxies_current"]).then_some(())
            },
        )
        .await;
        // A proxy certified now opens a new connection to the inbound one,
        // certified before this step (or re-certified by it).
        let fresh = ids.proxy(&cp, "client", &[]).await;
        let sq = SquareClient::new(fresh.channel(SVC).await);
        let out = eventually(&format!("a call after `{step}`"), Duration::from_secs(10), || {
            let mut sq = sq.clone();
            async move { sq.square(Input { value: 5 }).await.ok() }
        })
        .await;
        assert_eq!(out.into_inner().result, 25);
        assert!(
            tls_count(&fresh.metrics().await, "outbound", "ok") >= 1.0,
            "{step}: no new mutual TLS connection"
        );
    }
    assert_eq!(anchors_of(&inbound).await.len(), 1);
}
