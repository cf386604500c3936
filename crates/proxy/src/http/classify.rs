//! How an exchange ended, as the labels of `weft_responses_total`: gRPC
//! calls are judged by `grpc-status` (a 200 with status 14 is a failure),
//! plain HTTP by 5xx and by whether the response ended cleanly.

use super::Call;
use crate::{
    balance::InFlight,
    error::{ProxyError, code},
    telemetry::metrics::{Label, ResponseKey, grpc_code_label, status_label},
};

/// How a response stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The endpoint ended the stream, with the trailers' `grpc-status`, if any.
    Ended(Option<u16>),
    /// The endpoint reset the stream or its connection failed: the gRPC
    /// code the client sees.
    Failed(u16),
    /// The client went away first.
    Cancelled,
    /// The proxy ended a gRPC stream at its deadline.
    DeadlineExceeded,
}

thread_local! {
    /// The `endpoint` label of responses that reached no endpoint (one
    /// value per thread, so cached counters match it by pointer).
    static NO_ENDPOINT: Label = Label::from("");
}

/// Whether an answer's head says the endpoint failed the call: a gRPC
/// status in the head (trailers-only) that blames the server (by default
/// UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS, not application answers
/// such as NOT_FOUND: `--failure-codes`), or an HTTP 5xx.
pub(super) fn fails_endpoint(call: &Call, grpc_status: Option<u16>) -> bool {
    if call.grpc {
        grpc_status.is_some_and(|c| blames_server(call, c))
    } else {
        call.status >= 500
    }
}

fn blames_server(call: &Call, c: u16) -> bool {
    c < 32 && call.failure_codes & (1 << c) != 0
}

/// Whether the endpoint failed a call in a way its response head did not
/// already say: a reset or a broken connection, the deadline passing, or
/// a failing `grpc-status` in the trailers.
pub(super) fn failed_after_head(call: &Call, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Ended(Some(c)) => call.grpc && call.head_grpc_status.is_none() && blames_server(call, c),
        Outcome::Ended(None) | Outcome::Cancelled => false,
        Outcome::Failed(_) | Outcome::DeadlineExceeded => true,
    }
}

/// The labels of a response that came from an endpoint.
pub(super) fn response_key(call: &Call, pick: Option<&InFlight>, outcome: Outcome) -> ResponseKey {
    let (grpc_code, error, clean) = match outcome {
        Outcome::Ended(trailers) => (trailers.or(call.head_grpc_status), "", true),
        Outcome::Failed(c) => (Some(c), "stream_error", false),
        Outcome::Cancelled => (Some(code::CANCELLED), "cancelled", false),
        Outcome::DeadlineExceeded => (Some(code::DEADLINE_EXCEEDED), "deadline_exceeded", false),
    };
    let success = if call.grpc {
        grpc_code == Some(code::OK)
    } else {
        clean && call.status < 500
    };
    let endpoint = match pick {
        Some(p) => Label(p.endpoint().meta.name.clone()),
        None => NO_ENDPOINT.with(Clone::clone),
    };
    ResponseKey {
        endpoint,
        classification: if success { "success" } else { "failure" },
        status_code: status_label(call.status),
        grpc_code: if call.grpc {
            grpc_code.map_or("none", grpc_code_label)
        } else {
            ""
        },
        error,
    }
}

/// The labels of a response the proxy made itself.
pub(super) fn answer_key(grpc: bool, err: &ProxyError) -> ResponseKey {
    let status = if grpc { 200 } else { err.http_status().as_u16() };
    ResponseKey {
        endpoint: NO_ENDPOINT.with(Clone::clone),
        classification: "failure",
        status_code: status_label(status),
        grpc_code: if grpc { grpc_code_label(err.grpc_code()) } else { "" },
        error: err.label(),
    }
}
