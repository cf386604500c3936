//! The request path: every HTTP request, whichever engine carries it
//! (weft's splice engine for HTTP/2, hyper for HTTP/1.1 and
//! `--h2-engine hyper`), goes the same way through here, so that what the
//! path gains (authorization, per-method telemetry, retries, failure
//! accrual) is added once:
//!
//! ```text
//!  open: target → balancer, route metrics (memoised per connection) → [authorize]
//!  pick: an endpoint now, or wait until the fail-fast timeout or the deadline
//!  send: by the engine; a request no endpoint processed may go again (Call::resend)
//!  responded / finish / answered: latency estimate, latency, outcome by grpc-status
//! ```
//!
//! - [`serve_splice`]: connections served by the splice engine, which asks
//!   this path through the `weft_splice::Dispatch` trait;
//! - [`serve_hyper`]: connections served by hyper (HTTP/1.1, and HTTP/2 with
//!   `--h2-engine hyper`);
//! - [`classify`]: how an exchange ended, as metric labels;
//! - [`memo`]: what a connection remembers of its requests' routes.

mod classify;
mod memo;
pub(crate) mod serve_hyper;
pub(crate) mod serve_splice;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

pub(crate) use classify::Outcome;
pub(crate) use memo::Memo;

use crate::{
    balance::{Balancer, Candidate, InFlight},
    core::ConnMeta,
    error::ProxyError,
    route::Router,
    telemetry::metrics::{Metrics, RouteMetrics},
};

/// A request is sent to at most this many endpoints that never processed it
/// (queued when a connection ended, refused, above a GOAWAY's last stream).
const MAX_ATTEMPTS: u8 = 4;

/// Retries of a retryable answer per request (so 3 attempts at most).
const MAX_RETRIES: u8 = 2;

/// What the path needs of a request head, whichever engine parsed it.
#[derive(Debug)]
pub(crate) struct Head<'a> {
    /// `:authority`, or the `Host` header.
    pub authority: Option<&'a str>,
    pub scheme: Option<&'a str>,
    pub path: &'a str,
    pub grpc: bool,
    /// The call's time budget (`grpc-timeout`), for gRPC requests.
    pub timeout: Option<Duration>,
    pub method: &'a str,
    /// The `authorization` header (a bearer token for the policy).
    pub authorization: Option<&'a str>,
}

/// The request path of one listener (inbound or outbound).
pub(crate) struct RequestPath {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    /// How long a request waits for a ready endpoint.
    fail_fast: Duration,
    /// The inbound side's concurrency limit (`--inbound-max-concurrency`).
    limit: Option<Arc<Limit>>,
    /// gRPC codes whose trailers-only answers are retried, bit `c` set for
    /// code `c`, unless a route says otherwise; `None`: this side never
    /// retries (inbound: its one endpoint is the app).
    retry_codes: Option<u32>,
    /// The gRPC codes that count as an endpoint's failure (a bit per code).
    failure_codes: u32,
    /// Inbound: the authorization policy every request is checked against.
    policy: Option<Arc<crate::policy::Policy>>,
}

/// At most `max` requests at once; the ones beyond are shed.
#[derive(Debug)]
pub(crate) struct Limit {
    max: usize,
    now: AtomicUsize,
}

/// One admitted request's place under a [`Limit`], given back when dropped.
#[derive(Debug)]
struct Permit(Arc<Limit>);

impl Limit {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Limit {
            max,
            now: AtomicUsize::new(0),
        })
    }

    fn admit(self: &Arc<Self>) -> Option<Permit> {
        self.now
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Permit(self.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request on its way, from routing to its last byte.
#[derive(Debug)]
pub(crate) struct Call {
    balancer: Arc<Balancer>,
    route: Arc<RouteMetrics>,
    start: Instant,
    grpc: bool,
    /// When the call must end, and its budget (for the message).
    deadline: Option<(Instant, Duration)>,
    /// Sends to endpoints that never processed the request.
    attempts: u8,
    /// The response's HTTP status (0 until it arrives).
    status: u16,
    /// A `grpc-status` in the response head (trailers-only responses).
    head_grpc_status: Option<u16>,
    /// Its place under the inbound concurrency limit, until the call ends.
    _permit: Option<Permit>,
    /// Retries of retryable answers so far.
    retries: u8,
    /// The endpoint that failed the last attempt: a retry goes elsewhere.
    avoid: Option<Arc<Candidate>>,
    /// The gRPC codes retried (a bit per code): the route's, else the proxy's.
    retry_codes: u32,
    /// The gRPC codes that count as the endpoint's failure (a bit per code).
    failure_codes: u32,
    /// The request's path while its route is not known (discovery had not
    /// answered when it arrived): looked up once it has an endpoint.
    unrouted: Option<Box<str>>,
}

impl Call {
    pub(crate) fn grpc(&self) -> bool {
        self.grpc
    }

    /// When the call must end, and its budget.
    pub(crate) fn deadline(&self) -> Option<(Instant, Duration)> {
        self.deadline
    }

    /// The request never reached an endpoint that processed it: whether it
    /// may go to another one (counting this attempt).
    pub(crate) fn resend(&mut self) -> bool {
        self.attempts += 1;
        self.attempts < MAX_ATTEMPTS
    }
}

impl RequestPath {
    pub(crate) fn new(
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        fail_fast: Duration,
        limit: Option<Arc<Limit>>,
        retry_codes: Option<u32>,
        failure_codes: u32,
        policy: Option<Arc<crate::policy::Policy>>,
    ) -> Self {
        RequestPath {
            router,
            metrics,
            fail_fast,
            limit,
            retry_codes,
            failure_codes,
            policy,
        }
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A request arrives: its route (the balancer for its target, and its
    /// metrics). A request that cannot be routed is counted as failed here
    /// and the error returned, for the engine to answer with.
    pub(crate) fn open(
        &self,
        conn: &ConnMeta,
        memo: &mut Memo,
        head: &Head<'_>,
        start: Instant,
    ) -> Result<Call, ProxyError> {
        let (balancer, route) = match self.resolve(conn, memo, head) {
            Ok(found) => found,
            Err(e) => return Err(self.refuse(conn, head.path, head.grpc, e, start)),
        };
        route.requests.inc();
        // Inbound authorization, before any byte goes on (and before
        // it takes a place under the concurrency limit).
        if let Some(authz) = &self.policy {
            let port = match &conn.target {
                crate::core::Target::Fixed(crate::core::Dest::Addr(a)) => Some(a.port()),
                _ => None,
            };
            let ask = crate::policy::Ask {
                port: authz.server_port.or(port).unwrap_or(0),
                client: conn.peer.ip(),
                identity: conn.client_id.as_deref(),
                route: Some((head.path, head.method)),
                authorization: head.authorization,
            };
            if let Err(denied) = authz.check(&ask) {
                let err = ProxyError::Forbidden {
                    server: denied.server,
                    reason: denied.reason,
                };
                self.record_answer(&route, head.grpc, &err, start);
                return Err(err);
            }
        }
        // Overload: shed before the app sees the request, with a code that
        // tells the caller's proxy to try another replica.
        let permit = match &self.limit {
            None => None,
            Some(limit) => match limit.admit() {
                Some(p) => Some(p),
                None => {
                    let err = ProxyError::Overloaded(limit.max);
                    self.record_answer(&route, head.grpc, &err, start);
                    return Err(err);
                }
            },
        };
        balancer.count_request();
        // The route's retries and timeout (a shorter grpc-timeout wins);
        // looked up once discovery answered, if it has not yet.
        let policy = balancer.route(head.path);
        let (retry_codes, timeout) = policy.unwrap_or_default();
        // The inbound side never retries (its one endpoint is the app).
        let retry_codes = self.retry_codes.map_or(0, |own| retry_codes.unwrap_or(own));
        let deadline = match (head.timeout, timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let unrouted = policy.is_none().then(|| Box::<str>::from(head.path));
        Ok(Call {
            retry_codes,
            failure_codes: self.failure_codes,
            unrouted,
            _permit: permit,
            retries: 0,
            avoid: None,
            balancer,
            route,
            start,
            grpc: head.grpc,
            deadline: deadline.map(|t| (start + t, t)),
            attempts: 0,
            status: 0,
            head_grpc_status: None,
        })
    }

    /// Counts a request that could not be routed (target `unknown`) and
    /// hands its error back.
    pub(crate) fn refuse(
        &self,
        conn: &ConnMeta,
        path: &str,
        grpc: bool,
        err: ProxyError,
        start: Instant,
    ) -> ProxyError {
        let target: Arc<str> = Arc::from("unknown");
        let route = self.metrics.route(conn.direction.label(), &target, path, grpc);
        route.requests.inc();
        self.record_answer(&route, grpc, &err, start);
        err
    }

    /// A call that waited for discovery got an endpoint: its route now (its
    /// retried codes, and a new deadline when the route's timeout is sooner).
    pub(crate) fn routed_late(&self, call: &mut Call) -> Option<Instant> {
        let path = call.unrouted.take()?;
        let (codes, timeout) = call.balancer.route(&path)?;
        // (The inbound side never retries, whatever a route says.)
        if let (Some(_), Some(codes)) = (self.retry_codes, codes) {
            call.retry_codes = codes;
        }
        let t = timeout?;
        if call.deadline.is_some_and(|(_, budget)| budget <= t) {
            return None;
        }
        call.deadline = Some((call.start + t, t));
        Some(call.start + t)
    }

    /// An endpoint for the call if one is ready now; `None`: wait with [`RequestPath::pick`].
    pub(crate) fn pick_now(&self, call: &Call) -> Option<Result<InFlight, ProxyError>> {
        call.balancer.pick_now(call.avoid.as_ref())
    }

    /// Waits for an endpoint, until the fail-fast timeout or the call's
    /// deadline, whichever comes first.
    pub(crate) fn pick(&self, call: &Call) -> impl Future<Output = Result<InFlight, ProxyError>> + Send + 'static {
        let balancer = call.balancer.clone();
        let mut until = call.start + self.fail_fast;
        if let Some((d, _)) = call.deadline {
            until = until.min(d);
        }
        let avoid = call.avoid.clone();
        async move { balancer.pick(until, avoid.as_ref()).await }
    }

    /// The response head arrived for a request sent at `sent`: the
    /// endpoint's latency score (or its failure count, when the head
    /// already says the call failed, or `shed`: the endpoint's proxy shed
    /// it for overload) and the route's latency take it in.
    pub(crate) fn responded(
        &self,
        call: &mut Call,
        pick: Option<&InFlight>,
        sent: Instant,
        status: u16,
        grpc_status: Option<u16>,
        shed: bool,
    ) {
        call.status = status;
        if call.grpc {
            call.head_grpc_status = grpc_status;
        }
        if let Some(p) = pick {
            p.answered(
                &call.route.baseline,
                sent,
                shed || classify::fails_endpoint(call, grpc_status),
            );
        }
        call.route.latency.observe(call.start.elapsed().as_secs_f64());
    }

    /// A trailers-only answer with `grpc_status` arrived for a request the
    /// engine can send again whole: retry it? Yes when the code is
    /// retryable, the request has retries left and its target's budget
    /// allows one; the endpoint is then charged as `responded` would have,
    /// and the answer is the attempts so far.
    pub(crate) fn retry(
        &self,
        call: &mut Call,
        pick: Option<&InFlight>,
        sent: Instant,
        grpc_status: Option<u16>,
    ) -> Option<u32> {
        let code = grpc_status?;
        if code >= 32 || call.retry_codes & (1 << code) == 0 {
            return None;
        }
        let result = if call.retries >= MAX_RETRIES {
            "attempts"
        } else if !call.balancer.may_retry() {
            "budget"
        } else {
            "sent"
        };
        self.metrics
            .retries
            .get_or_create(&crate::telemetry::metrics::RetryLabels {
                direction: call.route.labels.direction,
                target: call.route.labels.target.clone(),
                result,
            })
            .inc();
        if result != "sent" {
            return None;
        }
        if let Some(p) = pick {
            p.answered(&call.route.baseline, sent, classify::fails_endpoint(call, grpc_status));
            call.avoid = Some(p.candidate());
        }
        call.retries += 1;
        Some(u32::from(call.retries))
    }

    /// The exchange is over: its outcome is counted, a failure is charged
    /// to the endpoint, and the endpoint's pick released.
    pub(crate) fn finish(&self, call: Call, pick: Option<InFlight>, outcome: Outcome) {
        // A client that gives up as its own deadline passes (its timer runs
        // a little ahead of ours: it started before the request left) timed
        // the endpoint out: charged as the deadline, not a free cancellation.
        let outcome = match (outcome, call.deadline) {
            (Outcome::Cancelled, Some((at, budget)))
                if Instant::now() + (budget / 20).min(Duration::from_millis(50)) >= at =>
            {
                Outcome::DeadlineExceeded
            }
            (o, _) => o,
        };
        if let Some(p) = &pick
            && classify::failed_after_head(&call, outcome)
        {
            p.failed();
        }
        let key = classify::response_key(&call, pick.as_ref(), outcome);
        call.route.response(&self.metrics.responses, key);
    }

    /// The proxy answered a call it had sent to an endpoint with `err`
    /// (the endpoint reset it, its connection failed, or the call's
    /// deadline passed before it answered): the endpoint is charged a
    /// failure.
    pub(crate) fn answered_after_pick(&self, call: Call, pick: InFlight, err: &ProxyError) {
        if err.fault() == crate::error::Fault::Upstream || matches!(err, ProxyError::DeadlineExceeded(_)) {
            pick.failed();
        }
        self.answered(call, err);
    }

    /// The proxy answered the call with `err` itself.
    pub(crate) fn answered(&self, call: Call, err: &ProxyError) {
        self.record_answer(&call.route, call.grpc, err, call.start);
    }

    fn record_answer(&self, route: &RouteMetrics, grpc: bool, err: &ProxyError, start: Instant) {
        tracing::debug!(target = %route.labels.target, error = %err, fault = ?err.fault(), "request failed");
        route.latency.observe(start.elapsed().as_secs_f64());
        route.response(&self.metrics.responses, classify::answer_key(grpc, err));
    }
}
