//! `weft-control`: the control plane's binary.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use clap::Parser;
use weft_control::source::FileSource;

/// weft-control: serves discovery (`weft.destination.v1.Destination`) to
/// weft proxies, from a mesh file it watches (inotify): each proxy started
/// with `--control-plane ADDR` asks it for the services its clients call.
/// A change to the file that does not parse is refused (logged, counted in
/// `weft_control_source_refusals_total`, shown in /ready) and the last good
/// version keeps being served.
#[derive(Parser, Debug)]
#[command(name = "weft-control", version)]
struct Args {
    /// The mesh file: its `services` (name → endpoints) are served.
    #[arg(long, env = "WEFT_CONTROL_MESH_FILE")]
    mesh_file: PathBuf,
    /// Where the proxies connect (gRPC, plaintext for now: mTLS comes with
    /// the identity issue).
    #[arg(long, env = "WEFT_CONTROL_LISTEN", default_value = "127.0.0.1:8086")]
    listen: SocketAddr,
    /// Admin: /metrics, /ready (with details), /live. Read-only.
    #[arg(long, env = "WEFT_CONTROL_ADMIN_LISTEN", default_value = "127.0.0.1:9990")]
    admin_listen: SocketAddr,
    /// The CA's directory (anchors.pem, anchor.key, issuer.pem, issuer.key;
    /// keys 0600): turns on the Identity service. A new CA is made there
    /// when the directory has none (say so in the log); or put your own
    /// PEM files there.
    #[arg(long, env = "WEFT_CONTROL_IDENTITY_DIR", requires = "identity_tokens")]
    identity_dir: Option<PathBuf>,
    /// Which token proves which identity: YAML `TOKEN: {namespace: NS,
    /// service_account: SA}` (weft up writes it; 0600). Re-read when a
    /// proxy brings a token it does not know.
    #[arg(long, env = "WEFT_CONTROL_IDENTITY_TOKENS", requires = "identity_dir")]
    identity_tokens: Option<PathBuf>,
    /// The trust domain of the identities (`spiffe://<trust-domain>/...`).
    #[arg(long, env = "WEFT_CONTROL_TRUST_DOMAIN", default_value = weft_identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// How long an issued certificate is valid (proxies renew at 70 %): 24h, 1h, 10s.
    #[arg(long, env = "WEFT_CONTROL_CERT_LIFETIME", default_value = "24h", value_parser = parse_lifetime)]
    cert_lifetime: std::time::Duration,
    /// How often the JWKS documents that policies name by URL
    /// (`jwks_url`) are fetched again (a failed fetch keeps the last
    /// good keys): 5m, 30s (at most 1h).
    #[arg(long, env = "WEFT_CONTROL_JWKS_REFRESH", default_value = "5m", value_parser = weft_mesh::parse_timeout)]
    jwks_refresh: std::time::Duration,
    /// Log filter: error, warn, info, debug, trace.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let level: tracing::Level = match args.log.parse() {
        Ok(l) => l,
        Err(_) => {
            eprintln!(
                "weft-control: --log {}: use error, warn, info, debug or trace",
                args.log
            );
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-control: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-control: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `10s`, `30m`, `24h`: at least 5 s, at most a year.
fn parse_lifetime(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (write 10s, 30m or 24h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("`{s}`: the unit is s, m, h or d")),
    };
    if !(5..=366 * 86_400).contains(&secs) {
        return Err(format!("`{s}`: a certificate lives at least 5s and at most a year"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let source = FileSource::start(&args.mesh_file, args.jwks_refresh).await?;
    let identity = match (&args.identity_dir, &args.identity_tokens) {
        (Some(dir), Some(tokens)) => {
            let (ca, created) = weft_identity::Ca::load_or_create(dir, &args.trust_domain)
                .map_err(|e| anyhow::anyhow!("the CA in {} (--identity-dir): {e}", dir.display()))?;
            if created {
                tracing::info!(dir = %dir.display(), trust_domain = %args.trust_domain, "made a new CA (trust anchor and issuer)");
            }
            Some(weft_control::IdentityConfig {
                ca: Arc::new(ca),
                dir: Some(dir.clone()),
                tokens_file: tokens.clone(),
                lifetime: args.cert_lifetime,
            })
        }
        _ => None,
    };
    let grpc = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (--listen): {e}", args.listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (--admin-listen): {e}", args.admin_listen))?;
    tracing::info!(
        grpc = %grpc.local_addr()?,
        admin = %admin.local_addr()?,
        source = %args.mesh_file.display(),
        "weft-control serving"
    );
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping; proxies keep what they last knew and reconnect");
    };
    // Watches are endless streams: stop at the signal without waiting for them.
    tokio::select! {
        r = weft_control::serve(Arc::new(source), identity, grpc, admin, std::future::pending()) => r,
        () = shutdown => Ok(()),
    }
}
