//! The square service: squares a number after an optional delay, fails a
//! chosen fraction of calls, and counts what it sees (calls, concurrency,
//! cancellations) so tests can check what reached the server. A square
//! server also serves the interop `TestService` (for streaming benchmarks).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use weft_api::square::{
    Behavior, Input, Output, Stats, StatsRequest,
    square_control_server::{SquareControl, SquareControlServer},
    square_server::{Square, SquareServer},
};

/// How a square replica is started.
#[derive(Clone, Debug)]
pub struct SquareOptions {
    /// The name it puts in every reply.
    pub name: String,
    pub behavior: Behavior,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; `None` for no limit.
    pub max_concurrent_streams: Option<u32>,
}

impl SquareOptions {
    pub fn named(name: impl Into<String>) -> Self {
        SquareOptions {
            name: name.into(),
            behavior: Behavior::default(),
            max_concurrent_streams: None,
        }
    }
}

/// What a replica has seen.
#[derive(Debug, Default)]
pub struct SquareStats {
    pub calls: AtomicU64,
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    pub cancelled: AtomicU64,
    /// The last call's `l5d-client-id`.
    pub last_client_id: std::sync::Mutex<String>,
}

impl SquareStats {
    pub fn snapshot(&self) -> Stats {
        Stats {
            calls: self.calls.load(Ordering::SeqCst),
            in_flight: self.in_flight.load(Ordering::SeqCst),
            max_in_flight: self.max_in_flight.load(Ordering::SeqCst),
            cancelled: self.cancelled.load(Ordering::SeqCst),
            last_client_id: self.last_client_id.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// The service implementation, shared by `Square` and `SquareControl`.
#[derive(Clone, Debug)]
pub struct SquareService {
    name: Arc<str>,
    behavior: Arc<Mutex<Behavior>>,
    pub stats: Arc<SquareStats>,
    /// grpc.health.v1, once serving.
    health: Arc<Mutex<Option<tonic_health::server::HealthReporter>>>,
}

impl SquareService {
    pub fn new(name: &str, behavior: Behavior) -> Self {
        SquareService {
            name: name.into(),
            behavior: Arc::new(Mutex::new(behavior)),
            stats: Arc::default(),
            health: Arc::default(),
        }
    }

    /// Sets the behaviour (its health status follows, on a task: call it
    /// within a tokio runtime).
    pub fn set_behavior(&self, b: Behavior) {
        *self.behavior.lock().unwrap_or_else(|e| e.into_inner()) = b;
        if let Some(h) = self.health.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            tokio::spawn(report_health(h, b.not_serving));
        }
    }

    fn behavior(&self) -> Behavior {
        *self.behavior.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts a call in flight; a call dropped before it finished was cancelled.
struct CallGuard {
    stats: Arc<SquareStats>,
    done: bool,
}

impl CallGuard {
    fn new(stats: &Arc<SquareStats>) -> Self {
        stats.calls.fetch_add(1, Ordering::SeqCst);
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        CallGuard {
            stats: stats.clone(),
            done: false,
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tonic::async_trait]
impl Square for SquareService {
    async fn square(&self, request: Request<Input>) -> Result<Response<Output>, Status> {
        self.answer(request, 0).await
    }

    async fn report(&self, request: Request<Input>) -> Result<Response<Output>, Status> {
        let extra = self.behavior().report_ms;
        self.answer(request, extra).await
    }
}

/// When the process started, for the phase of periodic stalls.
static STARTED: std::sync::LazyLock<std::time::Instant> = std::sync::LazyLock::new(std::time::Instant::now);

impl SquareService {
    async fn answer(&self, request: Request<Input>, extra_ms: u32) -> Result<Response<Output>, Status> {
        let mut guard = CallGuard::new(&self.stats);
        let client_id = request
            .metadata()
            .get("l5d-client-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        {
            let mut last = self.stats.last_client_id.lock().unwrap_or_else(|p| p.into_inner());
            if *last != client_id {
                *last = client_id.to_string();
            }
        }
        let b = self.behavior();
        if b.work_us > 0 {
            // CPU work on the server's thread: later calls queue behind it.
            let until = std::time::Instant::now() + Duration::from_micros(u64::from(b.work_us));
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        let jitter = if b.jitter_ms > 0 {
            fastrand::u32(0..=b.jitter_ms)
        } else {
            0
        };
        let slow = if b.slow_fraction > 0.0 && fastrand::f64() < b.slow_fraction {
            b.slow_ms
        } else {
            0
        };
        let delay =
            Duration::from_millis(u64::from(b.delay_ms) + u64::from(jitter) + u64::from(slow) + u64::from(extra_ms));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if b.stall_every_ms > 0 && b.stall_ms > 0 {
            let phase = STARTED.elapsed().as_millis() as u64 % u64::from(b.stall_every_ms);
            if phase < u64::from(b.stall_ms) {
                tokio::time::sleep(Duration::from_millis(u64::from(b.stall_ms) - phase)).await;
            }
        }
        guard.done = true;
        if b.error_rate > 0.0 && fastrand::f64() < b.error_rate {
            let code = tonic::Code::from_i32(i32::try_from(b.error_code).unwrap_or(2));
            return Err(Status::new(code, format!("{} failed this call on purpose", self.name)));
        }
        let value = request.into_inner().value;
        Ok(Response::new(Output {
            input: value,
            result: value.wrapping_mul(value),
            hostname: self.name.to_string(),
        }))
    }
}

#[tonic::async_trait]
impl SquareControl for SquareService {
    async fn set_behavior(&self, request: Request<Behavior>) -> Result<Response<Behavior>, Status> {
        let b = request.into_inner();
        validate(&b)?;
        self.set_behavior(b);
        Ok(Response::new(b))
    }

    async fn get_stats(&self, _: Request<StatsRequest>) -> Result<Response<Stats>, Status> {
        Ok(Response::new(self.stats.snapshot()))
    }
}

/// Checks a behaviour's values.
pub fn validate(b: &Behavior) -> Result<(), Status> {
    if !(0.0..=1.0).contains(&b.slow_fraction) {
        return Err(Status::invalid_argument(format!(
            "slow_fraction {} is not in [0, 1]",
            b.slow_fraction
        )));
    }
    if !(0.0..=1.0).contains(&b.error_rate) {
        return Err(Status::invalid_argument(format!(
            "error_rate {} is not in [0, 1]",
            b.error_rate
        )));
    }
    if b.work_us > 1_000_000 {
        return Err(Status::invalid_argument(format!(
            "work_us {} is over a second",
            b.work_us
        )));
    }
    if b.stall_ms > 0 && b.stall_ms >= b.stall_every_ms {
        return Err(Status::invalid_argument(format!(
            "stall_ms {} must be shorter than stall_every_ms {}",
            b.stall_ms, b.stall_every_ms
        )));
    }
    if b.error_rate > 0.0 && !(1..=16).contains(&b.error_code) {
        return Err(Status::invalid_argument(format!(
            "error_code {} is not a gRPC error code (1-16)",
            b.error_code
        )));
    }
    Ok(())
}

/// A running square replica.
#[derive(Debug)]
pub struct SquareHandle {
    pub addr: SocketAddr,
    pub service: SquareService,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl SquareHandle {
    pub fn stats(&self) -> Stats {
        self.service.stats.snapshot()
    }

    /// Stops the server gracefully (GOAWAY; calls in flight finish).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }

    /// Stops the server abruptly: its connections are dropped mid-call, as
    /// when a process is killed.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Sets grpc.health.v1's status for "" and `square.Square`.
async fn report_health(h: tonic_health::server::HealthReporter, not_serving: bool) {
    let status = if not_serving {
        tonic_health::ServingStatus::NotServing
    } else {
        tonic_health::ServingStatus::Serving
    };
    h.set_service_status("", status).await;
    h.set_service_status("square.Square", status).await;
}

/// Serves square on a bound listener until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: SquareService,
    max_concurrent_streams: Option<u32>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    report_health(health.clone(), service.behavior().not_serving).await;
    *service.health.lock().unwrap_or_else(|e| e.into_inner()) = Some(health);
    tonic::transport::Server::builder()
        .max_concurrent_streams(max_concurrent_streams)
        .tcp_nodelay(true)
        .add_service(health_svc)
        .add_service(SquareServer::new(service.clone()))
        .add_service(SquareControlServer::new(service))
        // The interop TestService too, so benchmarks can hold streams open.
        .add_service(
            weft_api::grpc_testing::test_service_server::TestServiceServer::new(
                crate::interop::TestServiceImpl::default(),
            )
            .max_decoding_message_size(crate::interop::MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(crate::incoming(listener), shutdown)
        .await
}

/// Starts a square replica on `127.0.0.1:0` in this process.
pub async fn spawn(opts: SquareOptions) -> std::io::Result<SquareHandle> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    spawn_on(listener, opts)
}

/// Starts a square replica on a bound listener in this process.
pub fn spawn_on(listener: TcpListener, opts: SquareOptions) -> std::io::Result<SquareHandle> {
    let addr = listener.local_addr()?;
    let service = SquareService::new(&opts.name, opts.behavior);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        service.clone(),
        opts.max_concurrent_streams,
        async move {
            let _ = rx.await;
        },
    ));
    Ok(SquareHandle {
        addr,
        service,
        shutdown: Some(tx),
        task,
    })
}
