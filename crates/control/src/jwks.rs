//! JWKS documents that policies name by URL (`jwks_url`, http:// only for
//! now): weft-control fetches each when the mesh file changes and again
//! every `--jwks-refresh`, and keeps the last good document; proxies get
//! the keys with the policy and never fetch anything themselves, and no
//! request ever waits on a fetch.

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
    pub async fn refresh(&self, file: &MeshFile) -> Result<bool, String> {
        let urls: Vec<(String, String)> = file
            .policy
            .iter()
            .flat_map(|p| p.jwt.iter())
            .filter_map(|(name, p)| p.jwks_url.clone().map(|u| (name.to_string(), u)))
            .collect();
        let mut changed = false;
        for (name, url) in urls {
            match fetch(&url).await {
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

/// GETs `url` (http://host[:port]/path) and returns the body.
pub async fn fetch(url: &str) -> Result<String, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(url))
        .await
        .map_err(|_| format!("{url} did not answer within {FETCH_TIMEOUT:?}"))?
}

async fn fetch_inner(url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{url}`: only http:// URLs are fetched for now"));
    }
    let host = uri.host().ok_or_else(|| format!("`{url}` has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
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
