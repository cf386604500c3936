//! weft-handshake: new mutual-TLS connections, as fast as a listener takes
//! them, for the benchmark's handshake rate. Each connection does a full
//! TLS 1.3 handshake (no resumption) with a client certificate and ALPN
//! `h2`, sends the HTTP/2 preface and waits for the server's first frame
//! (so the server has verified the client and started HTTP/2), then closes.
//! Prints a JSON summary: `{"handshakes": N, "per_sec": R, "errors": E}`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Opens mTLS connections to a listener for a while and counts them.
#[derive(Parser, Debug)]
#[command(name = "weft-handshake")]
struct Args {
    /// The TLS listener (an inbound proxy).
    #[arg(long)]
    target: SocketAddr,
    /// The trust anchors the server's certificate must chain to (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// The client's certificate chain (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// The client's private key (PEM, PKCS#8).
    #[arg(long)]
    key: PathBuf,
    /// The name the server's certificate must carry (a DNS SAN).
    #[arg(long)]
    server_name: String,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

fn config(args: &Args) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&args.ca).context("--ca")? {
        roots.add(c.context("--ca")?)?;
    }
    let chain = CertificateDer::pem_file_iter(&args.cert)
        .context("--cert")?
        .collect::<Result<Vec<_>, _>>()
        .context("--cert")?;
    let key = PrivateKeyDer::from_pem_file(&args.key).context("--key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    c.alpn_protocols = vec![b"h2".to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(c))
}

/// One connection: handshake, preface, the server's first frame header.
async fn one(
    target: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    name: &ServerName<'static>,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name.clone(), tcp).await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await?;
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).await?;
    anyhow::ensure!(head[3] == 4, "the server's first frame is not SETTINGS");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let connector = tokio_rustls::TlsConnector::from(config(&args)?);
    let name = ServerName::try_from(args.server_name.clone()).context("--server-name")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.duration);
    rt.block_on(async {
        let tasks: Vec<_> = (0..args.concurrency.max(1))
            .map(|_| {
                let (connector, name) = (connector.clone(), name.clone());
                let (done, errors, first_error) = (done.clone(), errors.clone(), first_error.clone());
                tokio::spawn(async move {
                    while Instant::now() < until {
                        match tokio::time::timeout(Duration::from_secs(5), one(args.target, &connector, &name)).await {
                            Ok(Ok(())) => {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            failed => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                let why = match failed {
                                    Ok(Err(e)) => format!("{e:#}"),
                                    _ => "no answer within 5 s".into(),
                                };
                                first_error.lock().unwrap().get_or_insert(why);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    if let Some(e) = first_error.lock().unwrap().as_ref() {
        eprintln!("weft-handshake: first error: {e}");
    }
    println!(
        "{}",
        serde_json::json!({
            "handshakes": n,
            "per_sec": n as f64 / secs,
            "errors": errors.load(Ordering::Relaxed),
        })
    );
    Ok(())
}
