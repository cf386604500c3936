//! Client connections served by the splice engine (`weft-splice`): the
//! engine asks the request path through its `Dispatch` trait, implemented
//! here, and knows nothing else of the proxy.

use std::{future::Future, net::SocketAddr, sync::Arc};

use bytes::BytesMut;
use tokio::time::Instant;
use weft_splice::{Answer, Dispatch, End, Failure, Field, RequestHead, UpTx, down::Limits, grpc};

use super::{Call, Head, Memo, Outcome, RequestPath};
use crate::{
    balance::InFlight,
    core::{CLIENT_ID_HEADER, ConnMeta, Direction},
    error::ProxyError,
};

/// What the request path keeps per splice client connection.
pub(crate) struct SpliceConn {
    meta: ConnMeta,
    memo: Memo,
    /// Inbound: the client identity header every request gets (`None`
    /// without mutual TLS: the header is removed).
    client_id: Option<Field>,
}

/// Serves an HTTP/2 client connection with the splice engine until it
/// closes, or `drain` completes and its streams are done.
pub(crate) async fn serve(
    io: weft_splice::Io,
    prefix: BytesMut,
    meta: ConnMeta,
    path: Arc<RequestPath>,
    limits: Limits,
    drain: impl Future<Output = ()>,
) {
    let peer = meta.peer;
    let client_id = meta.client_id.as_ref().map(|id| Field {
        name: bytes::Bytes::from_static(CLIENT_ID_HEADER.as_bytes()),
        value: bytes::Bytes::copy_from_slice(id.as_bytes()),
        never_index: false,
    });
    let conn = SpliceConn {
        meta,
        memo: Memo::default(),
        client_id,
    };
    weft_splice::down::serve(io, prefix, peer, path, conn, limits, drain).await;
}

impl Dispatch for RequestPath {
    type Conn = SpliceConn;
    type Call = Call;
    type Pick = InFlight;
    type Error = ProxyError;

    fn open(&self, conn: &mut SpliceConn, head: &RequestHead<'_>, now: Instant) -> Result<Call, ProxyError> {
        let timeout = if head.grpc {
            head.grpc_timeout.and_then(grpc::parse_timeout)
        } else {
            None
        };
        let head = Head {
            authority: head.authority.and_then(|a| std::str::from_utf8(a).ok()),
            scheme: head.scheme.and_then(|s| std::str::from_utf8(s).ok()),
            path: std::str::from_utf8(head.path).unwrap_or("/"),
            grpc: head.grpc,
            timeout,
            method: std::str::from_utf8(head.method).unwrap_or(""),
            authorization: head.authorization.and_then(|a| std::str::from_utf8(a).ok()),
        };
        RequestPath::open(self, &conn.meta, &mut conn.memo, &head, now)
    }

    fn rewrite(&self, conn: &SpliceConn, fields: &mut Vec<Field>) {
        if conn.meta.direction != Direction::Inbound {
            return;
        }
        fields.retain(|f| f.name != CLIENT_ID_HEADER.as_bytes());
        fields.extend(conn.client_id.clone());
    }

    fn deadline(&self, call: &Call) -> Option<Instant> {
        call.deadline().map(|(at, _)| at)
    }

    fn waited(&self, call: &mut Call) -> Option<Instant> {
        RequestPath::routed_late(self, call)
    }

    fn pick_now(&self, call: &Call) -> Option<Result<InFlight, ProxyError>> {
        RequestPath::pick_now(self, call)
    }

    fn pick(&self, call: &Call) -> impl Future<Output = Result<InFlight, ProxyError>> + Send + 'static {
        RequestPath::pick(self, call)
    }

    fn connection(&self, pick: &InFlight) -> Option<UpTx> {
        pick.endpoint().splice_tx()
    }

    fn resend(&self, call: &mut Call) -> bool {
        call.resend()
    }

    fn error(&self, call: &Call, pick: Option<&InFlight>, failure: Failure) -> ProxyError {
        let endpoint = pick.map(|p| &p.endpoint().meta);
        match (failure, endpoint) {
            (Failure::NoConnection, Some(ep)) => ProxyError::Upstream {
                name: ep.name.clone(),
                addr: ep.addr,
                detail: "no connection".into(),
            },
            (Failure::NoConnection, None) => ProxyError::Unsent("no connection".into()),
            (Failure::Reset { code, .. }, Some(ep)) => ProxyError::UpstreamReset {
                name: ep.name.clone(),
                addr: ep.addr,
                reason: h2::Reason::from(code),
            },
            (Failure::Reset { detail, .. } | Failure::Unsent(detail), _) => ProxyError::Unsent(detail),
            (Failure::DeadlineExceeded, _) => {
                ProxyError::DeadlineExceeded(call.deadline().map(|(_, budget)| budget).unwrap_or_default())
            }
        }
    }

    fn responded(&self, call: &mut Call, pick: Option<&InFlight>, sent: Instant, head: &[Field]) {
        let status = field_u16(head, b":status").unwrap_or(0);
        let grpc_status = if call.grpc() {
            field_u16(head, b"grpc-status")
        } else {
            None
        };
        // A peer weft-proxy that shed the request for overload: a failure of
        // that endpoint (an overloaded app must not look fast).
        let shed = weft_splice::field(head, b"weft-proxy-error").is_some_and(|v| v.as_ref() == b"overloaded");
        RequestPath::responded(self, call, pick, sent, status, grpc_status, shed);
    }

    fn retry(&self, call: &mut Call, pick: Option<&InFlight>, sent: Instant, head: &[Field]) -> Option<u32> {
        RequestPath::retry(self, call, pick, sent, field_u16(head, b"grpc-status"))
    }

    fn finished(&self, call: Call, pick: Option<InFlight>, end: End<'_, ProxyError>) {
        let outcome = match end {
            End::Answered(err) => {
                return match pick {
                    Some(p) => self.answered_after_pick(call, p, err),
                    None => self.answered(call, err),
                };
            }
            End::Ended(status) => Outcome::Ended(status),
            End::Failed(code) => Outcome::Failed(code),
            End::Cancelled => Outcome::Cancelled,
            End::DeadlineExceeded => Outcome::DeadlineExceeded,
        };
        self.finish(call, pick, outcome);
    }

    fn connection_error(&self, conn: &SpliceConn, _peer: SocketAddr, reason: &'static str) {
        self.metrics().connection_error(conn.meta.direction.label(), reason);
    }
}

fn field_u16(fields: &[Field], name: &[u8]) -> Option<u16> {
    weft_splice::field(fields, name).and_then(|v| grpc::parse_status(v))
}

impl Answer for ProxyError {
    fn grpc_code(&self) -> u16 {
        ProxyError::grpc_code(self)
    }
    fn http_status(&self) -> u16 {
        ProxyError::http_status(self).as_u16()
    }
    fn label(&self) -> &'static str {
        ProxyError::label(self)
    }
}
