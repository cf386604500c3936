//! What endpoint connections send back ([`ToDown`]), written to the client
//! as far as its flow-control windows allow, with request-side window
//! granted back to the client in batches.

use super::{Down, Out, Upstream};
use crate::{
    CREDIT_BATCH, Dispatch, End, Failure, Field, ToDown, ToUp,
    frame::{self, code},
    grpc, is_connection_specific,
};

impl<D: Dispatch> Down<D> {
    pub(super) fn on_message(&mut self, msg: ToDown) {
        match msg {
            ToDown::Head {
                stream,
                fields,
                end,
                credit,
            } => self.on_response_head(stream, fields, end, credit),
            ToDown::Data {
                stream,
                data,
                end,
                credit,
            } => {
                let Some(s) = self.streams.get_mut(&stream) else { return };
                s.credited(credit, &mut self.req_buffered);
                s.out_bytes += data.len();
                self.resp_buffered += data.len();
                s.out.push_back(Out::Data(data, end));
                self.write_out(stream);
                self.grant(stream);
            }
            ToDown::Trailers { stream, fields, credit } => {
                let Some(s) = self.streams.get_mut(&stream) else { return };
                s.credited(credit, &mut self.req_buffered);
                s.out.push_back(Out::Trailers(fields));
                self.write_out(stream);
            }
            ToDown::Credit { stream, credit } => {
                self.credited(stream, credit);
                self.grant(stream);
            }
            ToDown::Reset { stream, code, detail } => self.on_upstream_reset(stream, code, detail),
            ToDown::Bounce { stream, detail } => self.on_bounce(stream, detail),
            ToDown::Fail { stream, detail } => {
                let Some(s) = self.streams.get_mut(&stream) else { return };
                s.up = Upstream::Detached;
                let e = self.dispatch.error(&s.x.call, None, Failure::Unsent(detail));
                self.fail(stream, &e);
            }
        }
    }

    fn on_response_head(&mut self, stream: u32, fields: Vec<Field>, end: bool, credit: u32) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        s.credited(credit, &mut self.req_buffered);
        // A trailers-only failure of a request kept whole and complete (so
        // that the endpoint's stream is closed both ways), nothing of it
        // sent to the client yet: the layer above may send it again instead.
        if end && self.try_again(stream, &fields) {
            return;
        }
        let Some(s) = self.streams.get_mut(&stream) else { return };
        self.dispatch
            .responded(&mut s.x.call, s.x.pick.as_ref(), s.x.sent, &fields);
        s.head_sent = true;
        s.replay = None;
        self.encode_head(stream, &fields, end);
        self.scratch = fields;
        if end {
            self.finish(stream, End::Ended(None));
        } else {
            self.grant(stream);
        }
    }

    /// A gRPC failure of a request kept whole and complete (so that the
    /// endpoint's stream is closed both ways), nothing of it sent to the
    /// client yet: the layer above may send it again instead (`head` is the
    /// trailers-only answer). True when it went again.
    fn try_again(&mut self, stream: u32, head: &[Field]) -> bool {
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        if !(s.x.grpc && !s.head_sent && s.client_done) {
            return false;
        }
        let Some(r) = s.replay.as_mut() else { return false };
        let Some(attempts) = self.dispatch.retry(&mut s.x.call, s.x.pick.as_ref(), s.x.sent, head) else {
            return false;
        };
        s.x.pick = None;
        let mut again: Vec<Field> = r
            .head
            .iter()
            .filter(|f| f.name.as_ref() != b"grpc-previous-rpc-attempts")
            .cloned()
            .collect();
        again.push(Field::new("grpc-previous-rpc-attempts", attempts.to_string()));
        r.head = again.into();
        s.up = Upstream::Waiting(r.reopen(s.key, self.tx.clone(), s.client_done));
        self.dispatch_stream(stream, None);
        true
    }

    /// The endpoint reset the stream (or its connection ended under it).
    fn on_upstream_reset(&mut self, stream: u32, reason: u32, detail: String) {
        // The endpoint's connection broke before it answered: for gRPC that
        // is UNAVAILABLE, retried like an UNAVAILABLE answer.
        if reason == code::CONNECT_ERROR
            && self.try_again(
                stream,
                &[
                    Field::new("grpc-status", "14"),
                    Field::new("grpc-message", detail.clone()),
                ],
            )
        {
            return;
        }
        let Some(s) = self.streams.get_mut(&stream) else { return };
        s.up = Upstream::Detached;
        if !s.head_sent {
            tracing::debug!(stream, detail, "endpoint reset a stream before answering");
            let failure = Failure::Reset { code: reason, detail };
            let e = self.dispatch.error(&s.x.call, s.x.pick.as_ref(), failure);
            self.fail(stream, &e);
            return;
        }
        frame::put_rst(
            &mut self.wire.wbuf,
            stream,
            if reason == code::NO_ERROR || reason == code::CONNECT_ERROR {
                code::CANCEL
            } else {
                reason
            },
        );
        if let Some(s) = self.take_stream(stream) {
            let grpc_code = if reason == code::CANCEL {
                grpc::code::CANCELLED
            } else {
                grpc::code::UNAVAILABLE
            };
            self.record(s, End::Failed(grpc_code));
        }
    }

    /// The endpoint never processed the request: send it elsewhere if it
    /// may go again and was kept whole, else fail it.
    fn on_bounce(&mut self, stream: u32, detail: String) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        tracing::debug!(stream, detail, "the endpoint never processed the request");
        s.x.pick = None;
        match &s.replay {
            Some(r) if !s.head_sent && self.dispatch.resend(&mut s.x.call) => {
                s.up = Upstream::Waiting(r.reopen(s.key, self.tx.clone(), s.client_done));
                self.dispatch_stream(stream, None);
            }
            _ => {
                s.up = Upstream::Detached;
                let e = self.dispatch.error(&s.x.call, None, Failure::Unsent(detail));
                self.fail(stream, &e);
            }
        }
    }

    // ===== writing to the client =====

    pub(super) fn encode_head(&mut self, id: u32, fields: &[Field], end: bool) {
        let mut block = self.wire.wbuf_block();
        self.wire
            .enc
            .encode(fields.iter().filter(|f| !is_connection_specific(&f.name)), &mut block);
        frame::put_headers(&mut self.wire.wbuf, id, &block, end, self.wire.peer.max_frame_size);
        self.wire.return_block(block);
    }

    /// Writes a stream's queued response as far as the windows and the
    /// output buffer allow. A stream held back by the connection window or
    /// a full buffer waits in `blocked`; one held back by its own window is
    /// written again when the client grants it more.
    pub(super) fn write_out(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        let max_frame = self.wire.peer.max_frame_size;
        let mut ended = None;
        let mut wrote = 0u32;
        while let Some(out) = s.out.front_mut() {
            if self.wire.output_full() {
                break;
            }
            match out {
                Out::Trailers(_) => {
                    let Some(Out::Trailers(fields)) = s.out.pop_front() else {
                        break;
                    };
                    let status = crate::field(&fields, b"grpc-status").and_then(|v| grpc::parse_status(v));
                    let mut block = self.wire.wbuf_block();
                    self.wire
                        .enc
                        .encode(fields.iter().filter(|f| !is_connection_specific(&f.name)), &mut block);
                    frame::put_headers(&mut self.wire.wbuf, id, &block, true, max_frame);
                    self.wire.return_block(block);
                    self.scratch = fields;
                    ended = Some(status);
                    break;
                }
                Out::Data(data, end) => {
                    let window = s.send_window.min(self.wire.conn_send).max(0) as usize;
                    if data.is_empty() {
                        if *end {
                            frame::put_data(&mut self.wire.wbuf, id, &[], true, max_frame);
                            ended = Some(None);
                        }
                        s.out.pop_front();
                        if ended.is_some() {
                            break;
                        }
                        continue;
                    }
                    if window == 0 {
                        break;
                    }
                    let n = data.len().min(window);
                    let chunk = data.split_to(n);
                    let last = data.is_empty() && *end;
                    frame::put_data(&mut self.wire.wbuf, id, &chunk, last, max_frame);
                    s.send_window -= n as i64;
                    self.wire.conn_send -= n as i64;
                    wrote += n as u32;
                    if data.is_empty() {
                        s.out.pop_front();
                        if last {
                            ended = Some(None);
                            break;
                        }
                    }
                }
            }
        }
        s.out_bytes -= wrote as usize;
        self.resp_buffered = self.resp_buffered.saturating_sub(wrote as usize);
        if ended.is_none() && !s.out.is_empty() && s.send_window > 0 && !s.queued {
            s.queued = true;
            self.blocked.push_back(id);
        }
        s.up_credit += wrote;
        if s.up_credit >= CREDIT_BATCH && ended.is_none() {
            if let Upstream::Attached(up) = &s.up {
                let _ = up.send(ToUp::Credit {
                    key: s.key,
                    n: s.up_credit,
                });
            }
            s.up_credit = 0;
        }
        if let Some(trailers_status) = ended {
            self.finish(id, End::Ended(trailers_status));
        }
    }

    /// Returns request-side window to the client, in batches.
    pub(super) fn grant(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        if s.client_credit >= CREDIT_BATCH && !s.client_done {
            frame::put_window_update(&mut self.wire.wbuf, id, s.client_credit);
            s.recv_window += i64::from(s.client_credit);
            s.client_credit = 0;
        }
    }

    /// Writes what held-back streams have queued, oldest first, while the
    /// connection window and the output buffer have room: each call does
    /// work in proportion to what it writes (a stream that cannot go yet
    /// keeps its place).
    pub(super) fn unblock(&mut self) {
        for _ in 0..self.blocked.len() {
            if self.wire.conn_send <= 0 || self.wire.output_full() {
                break;
            }
            let Some(id) = self.blocked.pop_front() else { break };
            if let Some(s) = self.streams.get_mut(&id) {
                s.queued = false;
                self.write_out(id);
            }
        }
    }
}
