//! A new request on a client connection: its head is checked, the layer
//! above routes it ([`Dispatch::open`]) and picks an endpoint, and the
//! request goes to that endpoint's connection; trailers follow it there.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Down, Exchange, Stream, Upstream};
use crate::{
    ConnError, Dispatch, Failure, Field, RequestHead, StreamKey, ToUp,
    frame::{self, code},
    grpc, headers, is_connection_specific, wire,
};

/// Decoded header lists are kept in a reused buffer of up to this many
/// fields; a bigger one is released after use.
const SCRATCH_KEPT: usize = 128;

impl<D: Dispatch> Down<D> {
    pub(super) fn on_headers(&mut self, block: wire::Partial) -> Result<(), ConnError> {
        let id = block.stream;
        let mut fields = std::mem::take(&mut self.scratch);
        fields.clear();
        let limit = self.limits.max_header_bytes as usize;
        let size = self
            .wire
            .dec
            .decode(&block.block, &mut fields, limit)
            .map_err(|e| ConnError::new(code::COMPRESSION_ERROR, e.to_string()))?;
        if size / 4 > limit {
            // Over four times the limit we advertise: no client sends that
            // by mistake. It is an HPACK bomb (a few bytes that stand for
            // megabytes), and answering each with 431 would let its sender
            // keep the proxy busy at no cost of its own.
            return Err(ConnError::new(
                code::ENHANCE_YOUR_CALM,
                format!("a header list of {size} bytes (limit {limit})"),
            )
            .labelled("http_headers_too_large"));
        }
        let result = if id <= self.last_stream {
            self.on_trailers(id, block.end_stream, size, &mut fields)
        } else {
            self.on_request(id, block.end_stream, size, &mut fields)
        };
        fields.clear();
        if fields.capacity() > SCRATCH_KEPT {
            fields = Vec::new();
        }
        self.scratch = fields;
        result
    }

    /// Trailers of a request already open.
    fn on_trailers(
        &mut self,
        id: u32,
        end_stream: bool,
        size: usize,
        fields: &mut Vec<Field>,
    ) -> Result<(), ConnError> {
        let Some(s) = self.streams.get_mut(&id) else {
            return if id % 2 == 1 {
                Ok(())
            } else {
                Err(ConnError::new(code::PROTOCOL_ERROR, "even stream id"))
            };
        };
        if s.client_done || !end_stream {
            self.reset_stream(id, code::PROTOCOL_ERROR);
            return Ok(());
        }
        if size > self.limits.max_header_bytes as usize {
            // Bounded like the head: a few bytes of references may stand
            // for megabytes once re-encoded towards the endpoint.
            self.reset_stream(id, code::PROTOCOL_ERROR);
            self.dispatch
                .connection_error(&self.conn, self.peer, "http_headers_too_large");
            return Ok(());
        }
        if let Err(why) =
            headers::check_trailers(fields, self.wire.dec.well_formed()).and_then(|()| s.body.add(0, true))
        {
            tracing::debug!(peer = %self.peer, why, "malformed request trailers");
            self.reset_stream(id, code::PROTOCOL_ERROR);
            return Ok(());
        }
        s.client_done = true;
        let trailers = std::mem::take(fields);
        if let Some(r) = s.replay.as_mut() {
            r.trailers = Some(trailers.clone());
        }
        match &mut s.up {
            Upstream::Attached(up) => {
                let _ = up.send(ToUp::Trailers {
                    key: s.key,
                    fields: trailers,
                });
            }
            Upstream::Waiting(open) => {
                open.trailers = Some(trailers);
                open.end = true;
            }
            Upstream::Detached => {}
        }
        Ok(())
    }

    /// A new stream: check, route, and send the request on its way.
    fn on_request(&mut self, id: u32, end: bool, size: usize, fields: &mut Vec<Field>) -> Result<(), ConnError> {
        if id.is_multiple_of(2) {
            return Err(ConnError::new(
                code::PROTOCOL_ERROR,
                "a client opened an even stream id",
            ));
        }
        self.last_stream = id;
        if self.goaway_sent || self.streams.len() >= self.limits.max_concurrent_streams as usize {
            self.spend_control()?;
            frame::put_rst(&mut self.wire.wbuf, id, code::REFUSED_STREAM);
            return Ok(());
        }
        let start = Instant::now();
        if size > self.limits.max_header_bytes as usize {
            let f = [
                Field::new(":status", "431"),
                Field::new("weft-proxy-error", "headers_too_large"),
            ];
            self.encode_head(id, &f, true);
            if !end {
                frame::put_rst(&mut self.wire.wbuf, id, code::NO_ERROR);
            }
            self.dispatch
                .connection_error(&self.conn, self.peer, "http_headers_too_large");
            return Ok(());
        }
        let checked = validate_request(fields, self.wire.dec.well_formed()).and_then(|head| {
            let mut body = headers::BodyLength::expect(headers::content_length(fields)?);
            body.add(0, end)?;
            Ok((head, body))
        });
        let (head, body) = match checked {
            Ok(r) => r,
            Err(why) => {
                tracing::debug!(peer = %self.peer, why, "malformed request");
                frame::put_rst(&mut self.wire.wbuf, id, code::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        let grpc = head.grpc;
        let call = match self.dispatch.open(&mut self.conn, &head, start) {
            Ok(c) => c,
            Err(e) => {
                self.answer(id, grpc, &e);
                if !end {
                    frame::put_rst(&mut self.wire.wbuf, id, code::NO_ERROR);
                }
                return Ok(());
            }
        };
        let deadline = self.dispatch.deadline(&call);
        if let Some(at) = deadline {
            self.arm(at, id);
        }
        let key = StreamKey {
            conn: self.id,
            stream: id,
        };
        self.dispatch.rewrite(&self.conn, fields);
        let head: Arc<[Field]> = fields.drain(..).collect();
        let x = Exchange {
            call,
            pick: None,
            grpc,
            sent: start,
            deadline,
        };
        let mut stream = Stream::new(
            key,
            self.tx.clone(),
            head,
            end,
            self.wire.peer.initial_window_size,
            x,
            self.replay_held.clone(),
        );
        stream.body = body;
        self.streams.insert(id, stream);
        self.dispatch_stream(id, None);
        Ok(())
    }

    /// Sends a waiting request to an endpoint: `picked` if the layer above
    /// has answered already, else it is asked now (and, when no endpoint is
    /// ready, a task waits for one).
    pub(super) fn dispatch_stream(&mut self, id: u32, picked: Option<D::Pick>) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        let pick = match picked {
            Some(p) => p,
            None => match self.dispatch.pick_now(&s.x.call) {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    self.fail(id, &e);
                    return;
                }
                None => {
                    let wait = self.dispatch.pick(&s.x.call);
                    let tx = self
                        .picks
                        .get_or_insert_with(tokio::sync::mpsc::unbounded_channel)
                        .0
                        .clone();
                    tokio::spawn(async move {
                        let result = wait.await;
                        let _ = tx.send((id, result));
                    });
                    return;
                }
            },
        };
        let Some(up) = self.dispatch.connection(&pick) else {
            // Picked, but its connection just went away: try again.
            if self.dispatch.resend(&mut s.x.call) {
                self.dispatch_stream(id, None);
            } else {
                let e = self.dispatch.error(&s.x.call, Some(&pick), Failure::NoConnection);
                self.fail(id, &e);
            }
            return;
        };
        let Upstream::Waiting(open) = std::mem::replace(&mut s.up, Upstream::Attached(up.clone())) else {
            return;
        };
        s.x.sent = Instant::now();
        s.x.pick = Some(pick);
        if let Err(tokio::sync::mpsc::error::SendError(ToUp::Open(open))) = up.send(ToUp::Open(open)) {
            // The connection ended between the pick and the send.
            s.up = Upstream::Waiting(open);
            s.x.pick = None;
            if self.dispatch.resend(&mut s.x.call) {
                self.dispatch_stream(id, None);
            } else {
                let why = Failure::Unsent("every endpoint connection closed under the request".into());
                let e = self.dispatch.error(&s.x.call, None, why);
                self.fail(id, &e);
            }
        }
    }

    /// The layer above answered a request that had to wait for an endpoint.
    pub(super) fn on_picked(&mut self, stream: u32, result: Result<D::Pick, D::Error>) {
        if !self.streams.contains_key(&stream) {
            return;
        }
        match result {
            Ok(p) => {
                if let Some(s) = self.streams.get_mut(&stream)
                    && let Some(at) = self.dispatch.waited(&mut s.x.call)
                    && s.x.deadline.is_none_or(|d| at < d)
                {
                    s.x.deadline = Some(at);
                    self.arm(at, stream);
                }
                self.dispatch_stream(stream, Some(p))
            }
            Err(e) => self.fail(stream, &e),
        }
    }
}

/// Checks a request head (RFC 9113 §8.3) and picks out what routing needs.
/// `well_formed`: its fields are known to pass [`headers::check_field`] (the
/// decoder checked them).
fn validate_request(fields: &[Field], well_formed: bool) -> Result<RequestHead<'_>, &'static str> {
    let (mut method, mut scheme, mut path, mut authority, mut host) = (None, None, None, None, None);
    let (mut content_type, mut grpc_timeout, mut authorization) = (None, None, None);
    let mut regular = false;
    for f in fields {
        let name = &f.name[..];
        if name.first() == Some(&b':') {
            if regular {
                return Err("pseudo-header after a regular header");
            }
            let slot = match name {
                b":method" => &mut method,
                b":scheme" => &mut scheme,
                b":path" => &mut path,
                b":authority" => &mut authority,
                _ => return Err("unknown or response pseudo-header"),
            };
            if slot.replace(&f.value[..]).is_some() {
                return Err("repeated pseudo-header");
            }
            if !well_formed {
                headers::check_field(f)?;
            }
            continue;
        }
        regular = true;
        if !well_formed {
            headers::check_field(f)?;
        }
        match name {
            b"content-type" => content_type = Some(&f.value[..]),
            b"grpc-timeout" => grpc_timeout = Some(&f.value[..]),
            b"authorization" => authorization = Some(&f.value[..]),
            b"host" => host = Some(&f.value[..]),
            b"te" if &f.value[..] != b"trailers" => return Err("te other than trailers"),
            n if is_connection_specific(n) => return Err("connection-specific header"),
            _ => {}
        }
    }
    let method = method.ok_or("no :method")?;
    if method == b"CONNECT" {
        return Err("CONNECT is not proxied");
    }
    let path = path.filter(|p| !p.is_empty()).ok_or("no :path")?;
    if scheme.is_none() {
        return Err("no :scheme");
    }
    Ok(RequestHead {
        authority: authority.or(host),
        scheme,
        path,
        grpc: content_type.is_some_and(grpc::is_grpc),
        grpc_timeout,
        method,
        authorization,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: &'static str, v: &'static str) -> Field {
        Field::new(n, v)
    }

    #[test]
    fn requests_are_validated() {
        let ok = [
            f(":method", "POST"),
            f(":scheme", "http"),
            f(":path", "/a/b"),
            f(":authority", "svc:80"),
            f("te", "trailers"),
        ];
        let r = validate_request(&ok, true).unwrap();
        assert_eq!(r.authority, Some(&b"svc:80"[..]));
        let bad: &[(&[Field], &str)] = &[
            (&[f(":method", "GET"), f(":scheme", "http")], "no :path"),
            (
                &[
                    f(":method", "GET"),
                    f(":path", "/"),
                    f(":scheme", "http"),
                    f("Upper", "x"),
                ],
                "header name with uppercase, whitespace or control characters",
            ),
            (
                &[f(":method", "GET"), f("x", "1"), f(":path", "/"), f(":scheme", "http")],
                "pseudo-header after a regular header",
            ),
            (
                &[
                    f(":method", "GET"),
                    f(":path", "/"),
                    f(":scheme", "http"),
                    f("connection", "close"),
                ],
                "connection-specific header",
            ),
            (
                &[
                    f(":method", "GET"),
                    f(":path", "/"),
                    f(":scheme", "http"),
                    f("te", "gzip"),
                ],
                "te other than trailers",
            ),
            (&[f(":status", "200")], "unknown or response pseudo-header"),
            (&[f(":method", "GET"), f(":method", "GET")], "repeated pseudo-header"),
        ];
        for (fields, why) in bad {
            assert_eq!(validate_request(fields, false).err(), Some(*why));
        }
    }
}
