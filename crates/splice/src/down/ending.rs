//! How streams end: the proxy's own answers (gRPC trailers-only responses
//! or HTTP errors), gRPC deadlines enforced per connection with one timer,
//! and the record of every finished exchange for the layer above.

use std::cmp::Reverse;

use tokio::time::Instant;

use super::{Down, Stream, Upstream, cancel_upstream};
use crate::{Answer, Dispatch, End, Failure, Field, frame, frame::code, grpc};

impl<D: Dispatch> Down<D> {
    /// Answers a request with the proxy's own error and ends the stream.
    pub(super) fn fail(&mut self, id: u32, err: &D::Error) {
        let Some(mut s) = self.take_stream(id) else { return };
        cancel_upstream(&s);
        s.up = Upstream::Detached;
        let client_done = s.client_done;
        let grpc = s.x.grpc;
        if s.head_sent {
            // The response began: a second head would be malformed; the
            // client learns of the failure from a reset.
            frame::put_rst(&mut self.wire.wbuf, id, code::INTERNAL_ERROR);
            self.dispatch.finished(s.x.call, s.x.pick.take(), End::Answered(err));
            return;
        }
        self.answer(id, grpc, err);
        if !client_done {
            frame::put_rst(&mut self.wire.wbuf, id, code::NO_ERROR);
        }
        // With the endpoint it was on, if any: the dispatcher judges
        // whether the endpoint is to blame (a reset, the deadline).
        self.dispatch.finished(s.x.call, s.x.pick.take(), End::Answered(err));
    }

    /// Writes an error response (gRPC: trailers-only; HTTP: status and text).
    pub(super) fn answer(&mut self, id: u32, grpc: bool, err: &D::Error) {
        let message = format!("weft: {err}");
        if grpc {
            let f = [
                Field::new(":status", "200"),
                Field::new("content-type", "application/grpc"),
                Field::new("grpc-status", err.grpc_code().to_string()),
                Field::new("grpc-message", grpc::encode_message(&message)),
                Field::new("weft-proxy-error", err.label()),
            ];
            self.encode_head(id, &f, true);
        } else {
            let body = format!("{message}\n");
            let f = [
                Field::new(":status", err.http_status().to_string()),
                Field::new("content-type", "text/plain; charset=utf-8"),
                Field::new("content-length", body.len().to_string()),
                Field::new("weft-proxy-error", err.label()),
            ];
            self.encode_head(id, &f, false);
            frame::put_data(
                &mut self.wire.wbuf,
                id,
                body.as_bytes(),
                true,
                self.wire.peer.max_frame_size,
            );
        }
    }

    // ===== deadlines =====

    pub(super) fn arm(&mut self, at: Instant, id: u32) {
        // Entries of finished streams stay until they expire; when they
        // outnumber the live streams, drop them (a 10 s grpc-timeout at
        // thousands of calls a second would otherwise hold tens of
        // thousands of them).
        if self.deadlines.len() > 2 * self.streams.len() + 64 {
            let streams = &self.streams;
            self.deadlines.retain(|Reverse((_, id))| streams.contains_key(id));
        }
        self.deadlines.push(Reverse((at, id)));
        let earliest = self.deadlines.peek().map(|Reverse((t, _))| *t).unwrap_or(at);
        match self.timer.as_mut() {
            Some(t) if t.deadline() <= earliest => {}
            Some(t) => t.as_mut().reset(earliest),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(earliest))),
        }
    }

    /// Ends the streams whose deadline passed: before the response began,
    /// with the proxy's DEADLINE_EXCEEDED answer; during it, with
    /// `grpc-status: 4` trailers. Either way the endpoint's stream is reset.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = self.deadlines.peek().copied() {
            if at > now {
                self.timer = Some(Box::pin(tokio::time::sleep_until(at)));
                break;
            }
            self.deadlines.pop();
            let Some(s) = self.streams.get_mut(&id) else { continue };
            if s.x.deadline.is_none_or(|d| d > now) {
                continue;
            }
            // The endpoint learns that the call is over.
            cancel_upstream(s);
            s.up = Upstream::Detached;
            let err = self
                .dispatch
                .error(&s.x.call, s.x.pick.as_ref(), Failure::DeadlineExceeded);
            if !s.head_sent {
                self.fail(id, &err);
                continue;
            }
            self.resp_buffered = self.resp_buffered.saturating_sub(s.out_bytes);
            s.out_bytes = 0;
            s.out.clear();
            let msg = grpc::encode_message(&format!("weft: {err}"));
            let trailers = [Field::new("grpc-status", "4"), Field::new("grpc-message", msg)];
            let mut block = self.wire.wbuf_block();
            self.wire.enc.encode(&trailers, &mut block);
            frame::put_headers(&mut self.wire.wbuf, id, &block, true, self.wire.peer.max_frame_size);
            self.wire.return_block(block);
            if !s.client_done {
                frame::put_rst(&mut self.wire.wbuf, id, code::NO_ERROR);
            }
            if let Some(s) = self.take_stream(id) {
                self.record(s, End::DeadlineExceeded);
            }
        }
    }

    // ===== ending streams =====

    /// The response ended normally.
    pub(super) fn finish(&mut self, id: u32, end: End<'_, D::Error>) {
        let Some(s) = self.take_stream(id) else { return };
        self.allowance.earn();
        if !s.client_done {
            // The answer is complete; the client may stop sending.
            frame::put_rst(&mut self.wire.wbuf, id, code::NO_ERROR);
            cancel_upstream(&s);
        }
        self.record(s, end);
    }

    /// Tells the layer above how a stream ended.
    pub(super) fn record(&self, s: Stream<D>, end: End<'_, D::Error>) {
        self.dispatch.finished(s.x.call, s.x.pick, end);
    }
}
