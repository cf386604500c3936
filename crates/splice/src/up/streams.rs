//! Queued requests become streams while the endpoint's
//! SETTINGS_MAX_CONCURRENT_STREAMS allows, and each stream's request body
//! is written as the endpoint's windows allow.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Out, Queued, Stream, Up};
use crate::{CREDIT_BATCH, Open, STREAM_WINDOW, ToDown, frame, is_connection_specific};

impl Up {
    /// How many streams the endpoint allows at once.
    pub(super) fn limit(&self) -> usize {
        self.wire.peer.max_concurrent_streams.map_or(usize::MAX, |n| n as usize)
    }

    /// Opens queued requests while the endpoint allows more streams.
    pub(super) fn open_queued(&mut self) {
        while self.streams.len() < self.limit() && self.goaway.is_none() && !self.wire.output_full() {
            let Some(Queued { open, .. }) = self.queue.pop_front() else {
                break;
            };
            if open.reply.is_closed() {
                continue; // the client went away while it waited
            }
            let id = self.next_id;
            self.next_id += 2;
            let Open {
                key,
                reply,
                head,
                body,
                trailers,
                end,
            } = *open;
            let only_head = end && body.iter().all(Bytes::is_empty) && trailers.is_none();
            let head_request = crate::field(&head, b":method").is_some_and(|m| &m[..] == b"HEAD");
            let mut block = self.wire.wbuf_block();
            self.wire
                .enc
                .encode(head.iter().filter(|f| !is_connection_specific(&f.name)), &mut block);
            frame::put_headers(
                &mut self.wire.wbuf,
                id,
                &block,
                only_head,
                self.wire.peer.max_frame_size,
            );
            self.wire.return_block(block);
            let mut out = VecDeque::new();
            if !only_head {
                let n = body.len();
                for (i, b) in body.into_iter().enumerate() {
                    out.push_back(Out::Data(b, end && trailers.is_none() && i + 1 == n));
                }
                if let Some(t) = trailers {
                    out.push_back(Out::Trailers(t));
                } else if end && n == 0 {
                    out.push_back(Out::Data(Bytes::new(), true));
                }
            }
            self.streams.insert(
                id,
                Stream {
                    key,
                    reply,
                    send_window: i64::from(self.wire.peer.initial_window_size),
                    out,
                    request_done: only_head,
                    recv_window: i64::from(STREAM_WINDOW),
                    head_seen: false,
                    response_done: false,
                    credit: 0,
                    queued: false,
                    head_request,
                    body: Default::default(),
                },
            );
            self.by_key.insert(key, id);
            self.write_stream(id);
        }
    }

    /// Writes what a stream has queued, as far as the windows and the
    /// output buffer allow (see `Down::write_out`: the same rules).
    pub(super) fn write_stream(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        let max_frame = self.wire.peer.max_frame_size as usize;
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
                    let mut block = self.wire.wbuf_block();
                    self.wire
                        .enc
                        .encode(fields.iter().filter(|f| !is_connection_specific(&f.name)), &mut block);
                    frame::put_headers(&mut self.wire.wbuf, id, &block, true, self.wire.peer.max_frame_size);
                    self.wire.return_block(block);
                    s.request_done = true;
                }
                Out::Data(data, end) => {
                    let window = s.send_window.min(self.wire.conn_send).max(0) as usize;
                    if data.is_empty() {
                        if *end {
                            frame::put_data(&mut self.wire.wbuf, id, &[], true, max_frame as u32);
                            s.request_done = true;
                        }
                        s.out.pop_front();
                        continue;
                    }
                    if window == 0 {
                        break;
                    }
                    let n = data.len().min(window);
                    let chunk = data.split_to(n);
                    let last = data.is_empty() && *end;
                    frame::put_data(&mut self.wire.wbuf, id, &chunk, last, max_frame as u32);
                    s.send_window -= n as i64;
                    self.wire.conn_send -= n as i64;
                    wrote += n as u32;
                    if data.is_empty() {
                        if *end {
                            s.request_done = true;
                        }
                        s.out.pop_front();
                    }
                }
            }
        }
        if !s.out.is_empty() && s.send_window > 0 && !s.queued {
            s.queued = true;
            self.blocked.push_back(id);
        }
        s.credit += wrote;
        if s.credit >= CREDIT_BATCH {
            let credit = std::mem::take(&mut s.credit);
            let _ = s.reply.send(ToDown::Credit {
                stream: s.key.stream,
                credit,
            });
        }
        self.maybe_finish(id);
    }

    /// Removes a stream both sides have finished.
    pub(super) fn maybe_finish(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(|s| s.request_done && s.response_done)
            && let Some(s) = self.streams.remove(&id)
        {
            self.by_key.remove(&s.key);
            self.open_queued();
        }
    }

    /// Writes what held-back streams have queued, oldest first, while the
    /// connection window and the output buffer have room.
    pub(super) fn unblock(&mut self) {
        for _ in 0..self.blocked.len() {
            if self.wire.conn_send <= 0 || self.wire.output_full() {
                break;
            }
            let Some(id) = self.blocked.pop_front() else { break };
            if let Some(s) = self.streams.get_mut(&id) {
                s.queued = false;
                self.write_stream(id);
            }
        }
    }
}
