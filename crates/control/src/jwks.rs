//! JWKS documents that policies name by URL (`jwks_url`): weft-control
//! fetches each (https verified against the public web roots, and the
//! provider's `jwks_ca_file` if it has one) when the mesh file changes
//! and again every `--jwks-refresh`, and keeps the last good document;
//! proxies get the keys with the policy and never fetch anything
//! themselves, and no request ever waits on a fetch.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, Empty, Limited};
use weft_mesh::MeshFile;

/// The largest JWKS document accepted.
pub const MAX_JWKS: usize = 1 << 20;
/// How long one fetch (connect, answer, body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The last good document of each URL.
#[derive(Debug, Default, Clone)]
pub struct JwksCache(Arc<Mutex<HashMap<String, String>>>);

impl JwksCache {
    pub fn get(&self, url: &str) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(url).cloned()
    }

    /// Fetches every URL `file`'s JWT providers name. A URL that fails
    /// keeps its last good document (logged); one that never had one is
    /// an error naming it. Whether any document changed.
    pub async fn refresh(&self, file: &MeshFile, base: &std::path::Path) -> Result<bool, String> {
        let urls: Vec<(String, String, Option<std::path::PathBuf>)> = file
            .policy
            .iter()
            .flat_map(|p| p.jwt.iter())
            .filter_map(|(name, p)| {
                let ca = p.jwks_ca_file.as_ref().map(|f| base.join(f));
                p.jwks_url.clone().map(|u| (name.to_string(), u, ca))
            })
            .collect();
        let mut changed = false;
        for (name, url, ca) in urls {
            match fetch(&url, ca.as_deref()).await {
                Ok(doc) => {
                    let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
                    if c.get(&url) != Some(&doc) {
                        tracing::info!(provider = %name, %url, bytes = doc.len(), "JWKS fetched");
                        c.insert(url, doc);
                        changed = true;
                    }
                }
                Err(e) if self.get(&url).is_some() => {
                    tracing::warn!(provider = %name, %url, error = %e, "cannot refresh the JWKS; keeping the last one");
                }
                Err(e) => return Err(format!("policy.jwt.{name}.jwks_url: {e}")),
            }
        }
        Ok(changed)
    }
}

/// GETs `url` (https:// or http://) and returns the body; https is
/// verified against the public web roots and `ca` (a PEM file), if given.
pub async fn fetch(url: &str, ca: Option<&std::path::Path>) -> Result<String, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(url, ca))
        .await
        .map_err(|_| format!("{url} did not answer within {FETCH_TIMEOUT:?}"))?
}

/// A TLS client trusting the public web roots and `ca`'s certificates.
fn tls_client(ca: Option<&std::path::Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let pem = std::fs::read_to_string(path).map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
        let certs = weft_identity::certs_from_pem(&pem).map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
        for c in certs {
            roots
                .add(rustls_pki_types::CertificateDer::from(c))
                .map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

async fn fetch_inner(url: &str, ca: Option<&std::path::Path>) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("`{url}`: an https:// or http:// URL")),
    };
    let host = uri.host().ok_or_else(|| format!("`{url}` has no host"))?;
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let mut send = if tls {
        let name =
            rustls_pki_types::ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
                .map_err(|e| format!("{url}: {e}"))?;
        let stream = tls_client(ca)?
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{url}: TLS: {e}"))?;
        handshake(hyper_util::rt::TokioIo::new(stream), url).await?
    } else {
        handshake(hyper_util::rt::TokioIo::new(tcp), url).await?
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = http::Request::get(path)
        .header(http::header::HOST, uri.authority().map_or(host, |a| a.as_str()))
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS)
        .collect()
        .await
        .map_err(|e| format!("{url}: {e} (at most {MAX_JWKS} bytes)"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: the document is not UTF-8"))
}

/// An HTTP/1.1 client connection over `io`, driven on its own task.
async fn handshake<T>(io: T, url: &str) -> Result<hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}
