//! The NBD transmission phase of one connection: reads requests, runs each as its own task
//! (many in flight, replies in completion order, matched by handle), and writes simple or
//! structured replies. Owns: request framing and reply encoding. Never: how bytes map onto
//! objects (that is `volume`) or who may write (that is the session's lock).

use super::handshake::{Negotiated, BASE_ALLOCATION_ID, MAX_REQUEST};
use super::Session;
use crate::budget::{Budget, Class, Held, NodeBudget};
use crate::server::{self, Answer, Limits, Wait};
use bytes::Bytes;
use proto::nbd::{self, cflag, chunk, cmd, errno, Request};
use proto::SdResult;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::mpsc;

/// Extents one BLOCK_STATUS reply may carry.
const MAX_EXTENTS: usize = 4096;

/// A reply: its header bytes and the data that follows them.
struct Reply {
    head: Vec<u8>,
    data: Vec<u8>,
}

/// An NBD error, with the text structured replies carry.
struct Failure {
    errno: u32,
    message: String,
}

fn fail(errno: u32, message: impl Into<String>) -> Failure {
    Failure {
        errno,
        message: message.into(),
    }
}

fn from_sd(r: SdResult) -> Failure {
    let e = match r {
        SdResult::READONLY | SdResult::VDI_LOCKED => errno::EPERM,
        SdResult::NO_SPACE | SdResult::FULL_VDI => errno::ENOSPC,
        SdResult::INVALID_PARMS => errno::EINVAL,
        SdResult::SHUTDOWN => errno::ESHUTDOWN,
        _ => errno::EIO,
    };
    fail(e, r.text())
}

/// Serves requests until the client disconnects, sends DISC, breaks the framing, or stays
/// idle (nothing in flight) for the idle timeout.
pub async fn serve<R, W>(
    rd: R,
    wr: W,
    session: Arc<Session>,
    neg: Negotiated,
    limits: Limits,
    buffers: &Arc<NodeBudget>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let budget = Budget::new(limits.conn(), buffers);
    let (tx, rx) = mpsc::channel::<Answer>(limits.max_requests.max(1));
    let writer = tokio::spawn(server::write_answers(wr, rx, limits.idle_timeout));
    let neg = Arc::new(neg);
    loop {
        match server::wait_request(&mut rd, limits.idle_timeout, &budget, &tx).await {
            Wait::Ready => {}
            Wait::Idle => {
                tracing::debug!(
                    "nbd {}: idle for {:?}, closing",
                    neg.name,
                    limits.idle_timeout
                );
                break;
            }
            Wait::Closed | Wait::WriterGone => break,
        }
        let mut b = [0u8; nbd::REQUEST_SIZE];
        if !server::within(limits.idle_timeout, server::read_all(&mut rd, &mut b)).await {
            break;
        }
        let Some(req) = Request::decode(&b) else {
            tracing::debug!("nbd: request without the magic, closing");
            break;
        };
        if req.kind == cmd::DISC {
            break;
        }
        // A write holds its payload, a read its data, until the reply is written; at the
        // connection's limit, or the node's, the next request waits (back-pressure).
        let bytes = match req.kind {
            cmd::WRITE | cmd::READ if req.length <= MAX_REQUEST => req.length as u64,
            _ => 0,
        };
        let mut held = tokio::select! {
            h = budget.take(bytes, Class::Client) => h,
            _ = tx.closed() => break,
        };
        let payload = if req.kind == cmd::WRITE {
            if req.length > MAX_REQUEST {
                // The payload cannot be skipped safely: refuse and close.
                let f = fail(errno::EOVERFLOW, "write larger than 32 MiB");
                let _ = tx
                    .send(answer(error_reply(&neg, req.handle, f), held))
                    .await;
                break;
            }
            // Allocated as the data arrives.
            match server::read_payload(&mut rd, req.length as usize).await {
                Ok(b) => Bytes::from(b),
                Err(_) => break,
            }
        } else {
            Bytes::new()
        };
        let (tx, session, neg) = (tx.clone(), session.clone(), neg.clone());
        tokio::spawn(async move {
            let counted = crate::metrics::Request::nbd(req.kind, req.length);
            let out = handle(&session, &neg, req, payload).await;
            counted.finish(out.as_ref().err().map(|f| errno::name(f.errno)), 0);
            let mut reply = match out {
                Ok(r) => r,
                Err(f) => error_reply(&neg, req.handle, f),
            };
            server::trim(&mut reply.data);
            held.shrink_to(reply.data.capacity());
            let _ = tx.send(answer(reply, held)).await;
        });
    }
    // Let requests already taken finish and their replies go out, then close.
    drop(tx);
    let _ = writer.await;
    budget.drained().await;
}

fn answer(r: Reply, held: Held) -> Answer {
    Answer {
        head: r.head,
        data: r.data,
        held,
    }
}

fn error_reply(neg: &Negotiated, handle: u64, f: Failure) -> Reply {
    if f.errno != errno::EINVAL {
        tracing::warn!("nbd {}: {}", neg.name, f.message);
    }
    let head = if neg.structured {
        nbd::error_chunk(handle, f.errno, &f.message)
    } else {
        nbd::simple_reply(handle, f.errno).to_vec()
    };
    Reply {
        head,
        data: Vec::new(),
    }
}

fn done(neg: &Negotiated, handle: u64) -> Reply {
    let head = if neg.structured {
        nbd::chunk_header(handle, chunk::FLAG_DONE, chunk::NONE, 0).to_vec()
    } else {
        nbd::simple_reply(handle, 0).to_vec()
    };
    Reply {
        head,
        data: Vec::new(),
    }
}

/// Checks a request's range against the export: `past_end` is the error past its end.
fn in_range(size: u64, req: &Request, past_end: u32) -> Result<(), Failure> {
    if req.length == 0 {
        return Err(fail(errno::EINVAL, "zero-length request"));
    }
    match req.offset.checked_add(req.length as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(fail(past_end, "request past the end of the export")),
    }
}

async fn handle(
    s: &Session,
    neg: &Negotiated,
    req: Request,
    payload: Bytes,
) -> Result<Reply, Failure> {
    let vol = &s.volume;
    let size = vol.size();
    match req.kind {
        cmd::READ => {
            if req.length > MAX_REQUEST {
                return Err(fail(errno::EOVERFLOW, "read larger than 32 MiB"));
            }
            in_range(size, &req, errno::EINVAL)?;
            let data = vol
                .read(req.offset, req.length as usize)
                .await
                .map_err(from_sd)?;
            let head = if neg.structured {
                let mut h = nbd::chunk_header(
                    req.handle,
                    chunk::FLAG_DONE,
                    chunk::OFFSET_DATA,
                    8 + req.length,
                )
                .to_vec();
                h.extend_from_slice(&req.offset.to_be_bytes());
                h
            } else {
                nbd::simple_reply(req.handle, 0).to_vec()
            };
            Ok(Reply { head, data })
        }
        cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES => {
            if vol.read_only() {
                return Err(fail(errno::EPERM, "the export is read-only (a snapshot)"));
            }
            in_range(size, &req, errno::ENOSPC)?;
            let _writing = s.begin_write().await.map_err(|m| fail(errno::EPERM, m))?;
            // FUA: durable on every copy before the reply; otherwise at the next FLUSH.
            let fua = req.flags & cflag::FUA != 0;
            let (off, len) = (req.offset, req.length as u64);
            let r = match req.kind {
                cmd::WRITE => vol.write(off, payload, fua).await,
                cmd::TRIM => vol.zero(off, len, false, fua).await,
                _ => {
                    let allocate = req.flags & cflag::NO_HOLE != 0;
                    vol.zero(off, len, allocate, fua).await
                }
            };
            r.map_err(from_sd)?;
            Ok(done(neg, req.handle))
        }
        // Every node syncs its store: all writes replied to so far, from any connection to
        // any node, are durable after this (which makes multi-conn safe).
        // A flush begun with none of this connection's writes in flight covers them all, which
        // lets the connection hand the writer lock over (live migration).
        cmd::FLUSH => {
            let mark = s.flush_begins();
            vol.flush().await.map_err(from_sd)?;
            if let Some(m) = mark {
                s.flushed(m);
            }
            Ok(done(neg, req.handle))
        }
        cmd::BLOCK_STATUS => {
            if !neg.base_allocation {
                return Err(fail(errno::EINVAL, "base:allocation was not negotiated"));
            }
            in_range(size, &req, errno::EINVAL)?;
            let max = if req.flags & cflag::REQ_ONE != 0 {
                1
            } else {
                MAX_EXTENTS
            };
            let extents: Vec<(u32, u32)> = vol
                .extents(req.offset, req.length as u64, max)
                .await
                .into_iter()
                .map(|(len, allocated)| {
                    let flags = if allocated {
                        0
                    } else {
                        nbd::STATE_HOLE | nbd::STATE_ZERO
                    };
                    (len as u32, flags)
                })
                .collect();
            let head =
                nbd::block_status_chunk(req.handle, chunk::FLAG_DONE, BASE_ALLOCATION_ID, &extents);
            Ok(Reply {
                head,
                data: Vec::new(),
            })
        }
        other => Err(fail(
            errno::EINVAL,
            format!("command {other} is not supported"),
        )),
    }
}
