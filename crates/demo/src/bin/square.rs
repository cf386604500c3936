//! `square`: the demo gRPC server. Squares numbers and names itself in every
//! reply, so you can see which replica answered.

use clap::Parser;
use weft_api::square::Behavior;
use weft_demo::square::{SquareService, serve, validate};

/// The square demo server: `Square(Input{value}) → Output{input, result, hostname}`,
/// plus grpc.health.v1 and `SquareControl` (change behaviour at run time).
#[derive(Parser, Debug)]
#[command(name = "square", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    /// Name put in every reply (default: this machine's hostname).
    #[arg(long)]
    name: Option<String>,
    /// Added delay before each reply, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u32,
    /// Extra random delay in [0, jitter] milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u32,
    /// Fraction of calls, in [0, 1], that fail with --error-code.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// gRPC status code (1-16) of failed calls.
    #[arg(long, default_value_t = 14)]
    error_code: u32,
    /// Fraction of calls, in [0, 1], that take --slow-ms more.
    #[arg(long, default_value_t = 0.0)]
    slow_fraction: f64,
    /// Extra delay of the --slow-fraction calls, in milliseconds.
    #[arg(long, default_value_t = 0)]
    slow_ms: u32,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS this server announces (default: none).
    #[arg(long)]
    max_concurrent_streams: Option<u32>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).init();
    let args = Args::parse();
    let behavior = Behavior {
        delay_ms: args.delay_ms,
        jitter_ms: args.jitter_ms,
        error_rate: args.error_rate,
        error_code: args.error_code,
        slow_fraction: args.slow_fraction,
        slow_ms: args.slow_ms,
        ..Default::default()
    };
    if let Err(status) = validate(&behavior) {
        eprintln!("error: {}", status.message());
        std::process::exit(64);
    }
    let name = args.name.unwrap_or_else(weft_demo::hostname);
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            std::process::exit(69);
        }
    };
    eprintln!("square {name} listening on {}", listener.local_addr()?);
    let service = SquareService::new(&name, behavior);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    serve(listener, service, args.max_concurrent_streams, shutdown).await?;
    Ok(())
}
