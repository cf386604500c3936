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

async fn run(args: Args) -> anyhow::Result<()> {
    let source = FileSource::start(&args.mesh_file)?;
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
        r = weft_control::serve(Arc::new(source), grpc, admin, std::future::pending()) => r,
        () = shutdown => Ok(()),
    }
}
