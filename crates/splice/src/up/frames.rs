//! Frames from the endpoint: the response head, data and trailers of each
//! stream go back to the client connection that sent its request; resets,
//! refusals and GOAWAY tell it whether the request may go elsewhere.

use bytes::Bytes;

use super::{Up, reason};
use crate::{
    ConnError, DownTx, ToDown,
    frame::{self, code, flag, kind},
    wire,
};

impl Up {
    pub(super) fn on_frame(&mut self, head: frame::Head, payload: Bytes) -> Result<(), ConnError> {
        if self.wire.partial.is_some() && head.kind != kind::CONTINUATION {
            return Err(ConnError::new(code::PROTOCOL_ERROR, "header block interrupted"));
        }
        let mut delta = 0i64;
        let conn_window = self.wire.conn_send;
        if self.wire.connection_frame(&head, &payload, &mut delta)? {
            if delta != 0 {
                for s in self.streams.values_mut() {
                    s.send_window += delta;
                }
            }
            if head.kind == kind::SETTINGS {
                self.open_queued();
            }
            // Only a larger window lets held-back data go (O(1) for a PING).
            if delta > 0 {
                let ids: Vec<u32> = self.streams.keys().copied().collect();
                for id in ids {
                    self.write_stream(id);
                }
            } else if self.wire.conn_send > conn_window {
                self.unblock();
            }
            return Ok(());
        }
        match head.kind {
            kind::HEADERS | kind::CONTINUATION => {
                let Some(block) = self.wire.header_block(&head, payload)? else {
                    return Ok(());
                };
                self.on_headers(block)
            }
            kind::DATA => self.on_data(&head, payload),
            kind::RST_STREAM => {
                let code = wire::rst_code(&payload)?;
                self.on_reset(head.stream, code);
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                let inc = wire::window_increment(&payload)?;
                if let Some(s) = self.streams.get_mut(&head.stream) {
                    s.send_window += i64::from(inc);
                    if s.send_window > frame::MAX_WINDOW {
                        frame::put_rst(&mut self.wire.wbuf, head.stream, code::FLOW_CONTROL_ERROR);
                    }
                    self.write_stream(head.stream);
                }
                Ok(())
            }
            kind::GOAWAY => self.on_goaway(&payload),
            kind::PUSH_PROMISE => Err(ConnError::new(code::PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")),
            _ => Ok(()), // unknown frame types are ignored
        }
    }

    /// The endpoint reset a stream: a refused one was never processed and
    /// may go elsewhere; any other reset reaches the client.
    fn on_reset(&mut self, id: u32, code: u32) {
        if let Some(s) = self.streams.remove(&id) {
            self.by_key.remove(&s.key);
            if code == code::REFUSED_STREAM && !s.head_seen {
                // Refused streams were not processed (RFC 9113 §8.7).
                self.bounce(&s.reply, s.key.stream, "the endpoint refused the stream");
                self.open_queued();
                return;
            }
            let detail = format!("endpoint {} reset the stream ({})", self.addr, reason(code));
            let _ = s.reply.send(ToDown::Reset {
                stream: s.key.stream,
                code,
                detail,
            });
            self.open_queued();
        }
    }

    /// The endpoint goes away: it takes no new streams, and those above its
    /// last stream id (and the queued ones) were never processed.
    fn on_goaway(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() < 8 {
            return Err(ConnError::new(code::FRAME_SIZE_ERROR, "GOAWAY size"));
        }
        let last = u32::from_be_bytes([payload[0] & 0x7f, payload[1], payload[2], payload[3]]);
        let error = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        tracing::debug!(
            addr = %self.addr,
            last,
            error = reason(error),
            debug = %String::from_utf8_lossy(&payload[8..]),
            "the endpoint sent GOAWAY"
        );
        self.goaway = Some(last);
        // New requests go elsewhere at once, and a replacement connection opens.
        self.go_away();
        // Streams above `last` were never processed: send them again elsewhere.
        let above: Vec<u32> = self.streams.keys().copied().filter(|id| *id > last).collect();
        for id in above {
            let Some(s) = self.streams.remove(&id) else { continue };
            self.by_key.remove(&s.key);
            if s.head_seen {
                // It answered a stream it says it never processed: the
                // request cannot go elsewhere (its response began).
                let _ = s.reply.send(ToDown::Reset {
                    stream: s.key.stream,
                    code: code::PROTOCOL_ERROR,
                    detail: format!("endpoint {} went away after answering", self.addr),
                });
            } else {
                // Above the GOAWAY's last stream: not processed.
                self.bounce(&s.reply, s.key.stream, "the endpoint is going away");
            }
        }
        while let Some(q) = self.queue.pop_front() {
            self.bounce(&q.open.reply, q.open.key.stream, "the endpoint is going away");
        }
        Ok(())
    }

    pub(super) fn on_headers(&mut self, block: wire::Partial) -> Result<(), ConnError> {
        let mut fields = std::mem::take(&mut self.scratch);
        fields.clear();
        let size = self
            .wire
            .dec
            .decode(&block.block, &mut fields, self.max_header_bytes as usize)
            .map_err(|e| ConnError::new(code::COMPRESSION_ERROR, e.to_string()))?;
        let well_formed = self.wire.dec.well_formed();
        let id = block.stream;
        let Some(s) = self.streams.get_mut(&id) else {
            self.scratch = fields;
            return Ok(()); // a stream we already reset: its headers are still decoded above
        };
        if size > self.max_header_bytes as usize {
            let detail = format!(
                "endpoint {} sent a {size}-byte header list (limit {})",
                self.addr, self.max_header_bytes
            );
            self.reject(id, code::INTERNAL_ERROR, detail);
            self.scratch = fields;
            return Ok(());
        }
        if !s.head_seen {
            let status =
                crate::field(&fields, b":status").and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok());
            match status {
                Some(100..=199) if !block.end_stream => {
                    self.scratch = fields;
                    return Ok(()); // informational: the final head follows
                }
                Some(_) => {}
                None => {
                    let detail = format!("endpoint {} sent a response without :status", self.addr);
                    self.reject(id, code::PROTOCOL_ERROR, detail);
                    self.scratch = fields;
                    return Ok(());
                }
            }
            let checked = crate::headers::check_response_head(&fields, well_formed).and_then(|()| {
                let no_body = s.head_request || matches!(status, Some(204 | 304));
                let cl = crate::headers::content_length(&fields)?;
                let mut body = crate::headers::BodyLength::expect(if no_body { None } else { cl });
                body.add(0, block.end_stream)?;
                Ok(body)
            });
            match checked {
                Ok(body) => s.body = body,
                Err(why) => {
                    let detail = format!("endpoint {} sent a malformed response: {why}", self.addr);
                    self.reject(id, code::PROTOCOL_ERROR, detail);
                    self.scratch = fields;
                    return Ok(());
                }
            }
            s.head_seen = true;
            s.response_done = block.end_stream;
            let credit = std::mem::take(&mut s.credit);
            let fields = std::mem::take(&mut fields);
            let _ = s.reply.send(ToDown::Head {
                stream: s.key.stream,
                fields,
                end: block.end_stream,
                credit,
            });
        } else {
            if !block.end_stream {
                return Err(ConnError::new(code::PROTOCOL_ERROR, "trailers without END_STREAM"));
            }
            if let Err(why) = crate::headers::check_trailers(&fields, well_formed).and_then(|()| s.body.add(0, true)) {
                let detail = format!("endpoint {} sent malformed trailers: {why}", self.addr);
                self.reject(id, code::PROTOCOL_ERROR, detail);
                self.scratch = fields;
                return Ok(());
            }
            s.response_done = true;
            let credit = std::mem::take(&mut s.credit);
            let fields = std::mem::take(&mut fields);
            let _ = s.reply.send(ToDown::Trailers {
                stream: s.key.stream,
                fields,
                credit,
            });
        }
        self.scratch = fields;
        self.maybe_finish(id);
        Ok(())
    }

    pub(super) fn on_data(&mut self, head: &frame::Head, payload: Bytes) -> Result<(), ConnError> {
        let len = head.len;
        self.wire.received(len)?;
        let range = frame::unpad(head, &payload).ok_or_else(|| ConnError::new(code::PROTOCOL_ERROR, "bad padding"))?;
        let Some(s) = self.streams.get_mut(&head.stream) else {
            return Ok(()); // a stream we reset; the connection window is already returned
        };
        let end = head.has(flag::END_STREAM);
        let malformed = if !s.head_seen || s.response_done {
            Some("DATA before the response head or after its end")
        } else {
            s.body.add(range.end - range.start, end).err()
        };
        if let Some(why) = malformed {
            // The stream is over on both sides: its slot is freed.
            let detail = format!("endpoint {} sent a malformed response: {why}", self.addr);
            self.reject(head.stream, code::PROTOCOL_ERROR, detail);
            return Ok(());
        }
        s.recv_window -= i64::from(len);
        if s.recv_window < 0 {
            return Err(ConnError::new(
                code::FLOW_CONTROL_ERROR,
                "the endpoint overran a stream window",
            ));
        }
        let padding = len - (range.end - range.start) as u32;
        if padding > 0 {
            s.recv_window += i64::from(padding);
            frame::put_window_update(&mut self.wire.wbuf, head.stream, padding);
        }
        s.response_done = end;
        let credit = std::mem::take(&mut s.credit);
        let data = payload.slice(range);
        let _ = s.reply.send(ToDown::Data {
            stream: s.key.stream,
            data,
            end,
            credit,
        });
        if end {
            self.maybe_finish(head.stream);
        }
        Ok(())
    }

    /// Ends a stream whose response is malformed: resets it on the endpoint
    /// and fails it on the client side.
    pub(super) fn reject(&mut self, id: u32, client_code: u32, detail: String) {
        frame::put_rst(&mut self.wire.wbuf, id, code::PROTOCOL_ERROR);
        if let Some(s) = self.streams.remove(&id) {
            self.by_key.remove(&s.key);
            let _ = s.reply.send(ToDown::Reset {
                stream: s.key.stream,
                code: client_code,
                detail,
            });
            self.open_queued();
        }
    }

    /// Tells a client connection that its request was never processed.
    pub(super) fn bounce(&self, reply: &DownTx, stream: u32, detail: &str) {
        let _ = reply.send(ToDown::Bounce {
            stream,
            detail: format!("{detail} ({})", self.addr),
        });
    }
}
