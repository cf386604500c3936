//! `square-client`: calls square and prints one JSON line per reply.

use std::time::Duration;

use clap::Parser;
use futures_util::{StreamExt, stream};
use tonic::transport::Endpoint;
use weft_api::square::{Input, square_client::SquareClient};

/// Calls `square.Square/Square` for 1..=count over one HTTP/2 connection and
/// prints `{"input": n, "result": n², "hostname": "..."}` per reply (or
/// `{"input": n, "error": "...", "code": c}` per failure).
#[derive(Parser, Debug)]
#[command(name = "square-client", version)]
struct Args {
    /// Address to connect to (a square server, a proxy, a balancer).
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: String,
    /// :authority to send (how weft's explicit mode knows the service);
    /// defaults to --target.
    #[arg(long)]
    authority: Option<String>,
    /// Number of calls.
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Pause between calls, in milliseconds (per concurrent worker).
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Per-call deadline, in milliseconds (sent as grpc-timeout).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Print a per-hostname summary on stderr at the end.
    #[arg(long)]
    summary: bool,
    /// Instead of calling Square: set the target replica's added delay (ms)
    /// through SquareControl, print the new behaviour, and exit.
    #[arg(long)]
    set_delay_ms: Option<u32>,
    /// Instead of calling Square: set the target replica's whole behaviour
    /// as comma-separated `field=value` pairs (fields of `square.Behavior`:
    /// delay_ms, jitter_ms, error_rate, error_code, slow_fraction, slow_ms,
    /// work_us, stall_every_ms, stall_ms, report_ms; unnamed fields are 0),
    /// print it, and exit. An empty SPEC restores the default behaviour.
    #[arg(long, value_name = "SPEC", conflicts_with = "set_delay_ms")]
    set_behavior: Option<String>,
}

/// Parses `field=value,...` into a behaviour.
fn parse_behavior(spec: &str) -> anyhow::Result<weft_api::square::Behavior> {
    let mut b = weft_api::square::Behavior::default();
    for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("`{pair}`: write field=value"))?;
        let int = || -> anyhow::Result<u32> { v.parse().map_err(|e| anyhow::anyhow!("{k}={v}: {e}")) };
        let float = || -> anyhow::Result<f64> { v.parse().map_err(|e| anyhow::anyhow!("{k}={v}: {e}")) };
        match k {
            "delay_ms" => b.delay_ms = int()?,
            "jitter_ms" => b.jitter_ms = int()?,
            "error_rate" => b.error_rate = float()?,
            "error_code" => b.error_code = int()?,
            "slow_fraction" => b.slow_fraction = float()?,
            "slow_ms" => b.slow_ms = int()?,
            "work_us" => b.work_us = int()?,
            "stall_every_ms" => b.stall_every_ms = int()?,
            "stall_ms" => b.stall_ms = int()?,
            "report_ms" => b.report_ms = int()?,
            "not_serving" => b.not_serving = int()? != 0,
            other => anyhow::bail!(
                "unknown behaviour field `{other}` (delay_ms, jitter_ms, error_rate, error_code, slow_fraction, \
                 slow_ms, work_us, stall_every_ms, stall_ms, report_ms, not_serving)"
            ),
        }
    }
    Ok(b)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let authority = args.authority.clone().unwrap_or_else(|| args.target.clone());
    let channel = Endpoint::from_shared(format!("http://{}", args.target))?
        .origin(format!("http://{authority}").parse()?)
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", args.target))?;
    if let Some(delay_ms) = args.set_delay_ms {
        let behavior = weft_api::square::Behavior {
            delay_ms,
            ..Default::default()
        };
        let set = weft_api::square::square_control_client::SquareControlClient::new(channel)
            .set_behavior(behavior)
            .await?
            .into_inner();
        println!("{}", serde_json::json!({"delay_ms": set.delay_ms}));
        return Ok(());
    }
    if let Some(spec) = &args.set_behavior {
        let behavior = parse_behavior(spec)?;
        let set = weft_api::square::square_control_client::SquareControlClient::new(channel)
            .set_behavior(behavior)
            .await
            .map_err(|s| anyhow::anyhow!("{}: {}", args.target, s.message()))?
            .into_inner();
        println!("{set:?}");
        return Ok(());
    }
    let client = SquareClient::new(channel);
    let timeout = Duration::from_millis(args.timeout_ms);
    let interval = Duration::from_millis(args.interval_ms);
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    let mut failures = 0u64;
    let mut results = stream::iter(1..=args.count)
        .map(|n| {
            let mut client = client.clone();
            async move {
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                let mut req = tonic::Request::new(Input {
                    value: i64::try_from(n).unwrap_or(i64::MAX),
                });
                req.set_timeout(timeout);
                (n, client.square(req).await)
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    while let Some((n, result)) = results.next().await {
        match result {
            Ok(resp) => {
                let out = resp.into_inner();
                println!(
                    "{}",
                    serde_json::json!({"input": out.input, "result": out.result, "hostname": out.hostname})
                );
                *counts.entry(out.hostname).or_default() += 1;
            }
            Err(status) => {
                failures += 1;
                println!(
                    "{}",
                    serde_json::json!({"input": n, "error": status.message(), "code": status.code() as i32})
                );
            }
        }
    }
    if args.summary {
        let total = args.count.max(1) as f64;
        for (host, n) in &counts {
            eprintln!("{host:>20} {n:>6} {:>5.1}%", *n as f64 * 100.0 / total);
        }
        if failures > 0 {
            eprintln!(
                "{:>20} {failures:>6} {:>5.1}%",
                "(failed)",
                failures as f64 * 100.0 / total
            );
        }
    }
    Ok(())
}
