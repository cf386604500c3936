//! weft-load: a gRPC load generator for the square service.
//!
//! - **Open loop** (`rate`): calls start at a constant rate whatever happens
//!   to earlier ones, and each call's latency is measured from its
//!   *intended* start, so a stall that delays later calls is counted in full
//!   (no coordinated omission).
//! - **Closed loop** (`workers`): each worker sends a call as soon as its
//!   previous one finished; measures maximum throughput.
//! - **Streams**: opens N bidirectional streams and holds them (memory per
//!   stream).
//!
//! Calls go over `connections` HTTP/2 connections (default 1: the case a
//! Kubernetes Service pins to one pod). The client is hyper's HTTP/2 client
//! with a pre-encoded request, so that the generator spends as little CPU
//! per call as it can. Latencies go into an HDR histogram (µs).

mod client;
mod report;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use report::Recorder;
pub use report::{Summary, stderr_is_terminal};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: SocketAddr,
    /// `:authority` to send; defaults to the target address.
    pub authority: Option<String>,
    pub connections: usize,
    pub load: Load,
    pub duration: Duration,
    pub warmup: Duration,
    /// Per-call deadline (also sent as `grpc-timeout`).
    pub timeout: Duration,
    /// Show a progress line on stderr.
    pub progress: bool,
    /// The share of calls (0–1) sent to the service's slower method,
    /// `square.Square/Report`, drawn at random per call.
    pub mix: f64,
}

#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Calls per second, started on schedule.
    Open { rate: f64 },
    /// Workers, each with one call in flight.
    Closed { workers: usize },
    /// Open this many streams and hold them for the duration.
    Streams { streams: usize },
}

/// Runs the load and summarises it.
pub async fn run(opts: Options) -> anyhow::Result<Summary> {
    let authority = opts.authority.clone().unwrap_or_else(|| opts.target.to_string());
    let conns = client::connect_all(opts.target, opts.connections.max(1)).await?;
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let started = Instant::now();
    let measure_from = started + opts.warmup;
    let end = measure_from + opts.duration;
    let progress = opts
        .progress
        .then(|| tokio::spawn(report::progress(recorder.clone(), measure_from, end)));
    let run = Run {
        call: Arc::new(client::UnaryCall::new(&authority, opts.timeout)),
        conns,
        recorder: recorder.clone(),
        started,
        measure_from,
        end,
        mix: opts.mix,
    };
    let kind = match opts.load {
        Load::Open { rate } => {
            run.open_loop(rate, opts.timeout).await;
            format!("open loop, {rate} calls/s")
        }
        Load::Closed { workers } => {
            run.closed_loop(workers, opts.timeout + opts.duration + opts.warmup)
                .await;
            format!("closed loop, {workers} workers")
        }
        Load::Streams { streams } => {
            let held = client::open_streams(&run.conns, &authority, streams, opts.timeout, &recorder).await;
            eprintln!(
                "weft-load: {} of {streams} streams open; holding them for {:?}",
                held.len(),
                opts.duration
            );
            tokio::time::sleep(opts.duration).await;
            drop(held);
            format!("{streams} streams held")
        }
    };
    if let Some(p) = progress {
        p.abort();
        eprint!("\r\x1b[2K");
    }
    let measured = opts.duration.as_secs_f64();
    let r = report::lock(&recorder);
    Ok(r.summary(opts.target, opts.connections, &authority, kind, measured))
}

/// One run's calls: what every call needs, and when to measure.
struct Run {
    call: Arc<client::UnaryCall>,
    conns: Vec<client::Sender>,
    recorder: Arc<Mutex<Recorder>>,
    started: Instant,
    /// Calls intended (open loop) or sent (closed loop) before this are warm-up.
    measure_from: Instant,
    end: Instant,
    mix: f64,
}

impl Run {
    /// Calls at `rate` per second, each started on schedule whatever
    /// happens to the others; latency counts from the intended start.
    async fn open_loop(&self, rate: f64, timeout: Duration) {
        // A pacer thread keeps the schedule: tokio's timer ticks in whole
        // milliseconds, which would add up to 1 ms to every latency
        // measured from the intended start.
        let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let (tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
        let (start_std, end_std) = (self.started.into_std(), self.end.into_std());
        std::thread::spawn(move || {
            let mut i: u64 = 0;
            loop {
                let intended = start_std + interval.mul_f64(i as f64);
                if intended >= end_std {
                    return;
                }
                let now = std::time::Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                if tx.send((i, Instant::from_std(intended))).is_err() {
                    return;
                }
                i += 1;
            }
        });
        let mut tasks = tokio::task::JoinSet::new();
        // WEFT_LOAD_SLOW_MS=n: print each call slower than n ms (for
        // finding where a tail comes from).
        let slow_log = std::env::var("WEFT_LOAD_SLOW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        let (started, measure_from) = (self.started, self.measure_from);
        while let Some((i, intended)) = ticks.recv().await {
            let mut sender = self.conns[(i as usize) % self.conns.len()].clone();
            let (call, recorder) = (self.call.clone(), self.recorder.clone());
            let report = self.mix > 0.0 && fastrand::f64() < self.mix;
            tasks.spawn(async move {
                let result = call.send(&mut sender, report).await;
                if intended >= measure_from {
                    let took = intended.elapsed();
                    if slow_log.is_some_and(|t| took >= t) {
                        eprintln!("slow call: {took:?}, intended at +{:?}, {result:?}", intended - started);
                    }
                    report::lock(&recorder).record(took, result);
                }
            });
            // Reap finished calls now and then so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        drain(tasks, timeout).await;
    }

    /// `workers` calls in flight, each sent when the one before finished.
    async fn closed_loop(&self, workers: usize, timeout: Duration) {
        let mut tasks = tokio::task::JoinSet::new();
        let (measure_from, end, mix) = (self.measure_from, self.end, self.mix);
        for w in 0..workers.max(1) {
            let mut sender = self.conns[w % self.conns.len()].clone();
            let (call, recorder) = (self.call.clone(), self.recorder.clone());
            tasks.spawn(async move {
                while Instant::now() < end {
                    let sent = Instant::now();
                    let result = call.send(&mut sender, mix > 0.0 && fastrand::f64() < mix).await;
                    if sent >= measure_from {
                        report::lock(&recorder).record(sent.elapsed(), result);
                    }
                }
            });
        }
        drain(tasks, timeout).await;
    }
}

async fn drain(mut tasks: tokio::task::JoinSet<()>, timeout: Duration) {
    let _ = tokio::time::timeout(timeout + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}
