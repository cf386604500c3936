//! `weft-load`: see the crate docs, or `weft-load --help`.

use std::time::Duration;

use clap::Parser;
use weft_load::{Load, Options, run};

/// An open- and closed-loop gRPC load generator for the square service.
///
/// Open loop (--rate): calls start on schedule and latency is measured from
/// each call's intended start (no coordinated omission). Closed loop
/// (--workers): each worker keeps one call in flight (maximum throughput).
/// Streams (--streams): opens that many bidirectional streams and holds them.
///
/// Prints a summary; --json prints it as one JSON object on stdout.
#[derive(Parser, Debug)]
#[command(name = "weft-load", version, verbatim_doc_comment)]
struct Args {
    /// Address to connect to (a square server, a proxy, a balancer).
    #[arg(long)]
    target: std::net::SocketAddr,
    /// :authority to send (the service name, for weft's explicit mode).
    #[arg(long)]
    authority: Option<String>,
    /// HTTP/2 connections to spread calls over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Open loop: calls per second.
    #[arg(long, conflicts_with_all = ["workers", "streams"])]
    rate: Option<f64>,
    /// Closed loop: workers, each with one call in flight.
    #[arg(long, conflicts_with = "streams")]
    workers: Option<usize>,
    /// Open this many streams and hold them for --duration.
    #[arg(long)]
    streams: Option<usize>,
    /// Measured time, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured warm-up before it, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Per-call deadline in milliseconds (sent as grpc-timeout).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// The share of calls (0 to 1) sent to the service's slower method
    /// (`square.Square/Report`) instead of `Square`.
    #[arg(long, default_value_t = 0.0)]
    mix: f64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Progress line: auto (when stderr is a terminal), on, off.
    #[arg(long, default_value = "auto")]
    progress: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let load = match (args.rate, args.workers, args.streams) {
        (Some(rate), None, None) if rate > 0.0 => Load::Open { rate },
        (None, Some(workers), None) if workers > 0 => Load::Closed { workers },
        (None, None, Some(streams)) if streams > 0 => Load::Streams { streams },
        _ => {
            eprintln!("error: give exactly one of --rate N (> 0), --workers N or --streams N");
            return std::process::ExitCode::from(64);
        }
    };
    if !(0.0..=1.0).contains(&args.mix) {
        eprintln!("error: --mix is a share of calls, from 0 to 1");
        return std::process::ExitCode::from(64);
    }
    if !(args.duration > 0.0 && args.warmup >= 0.0) {
        eprintln!("error: --duration must be > 0 and --warmup >= 0 (seconds)");
        return std::process::ExitCode::from(64);
    }
    let opts = Options {
        target: args.target,
        authority: args.authority,
        connections: args.connections.max(1),
        load,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        progress: match args.progress.as_str() {
            "on" => true,
            "off" => false,
            _ => weft_load::stderr_is_terminal(),
        },
        mix: args.mix,
    };
    // One thread: the generator is pinned to one core by the bench runner.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(summary) => {
            if args.json {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            } else {
                print!("{}", summary.human());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
