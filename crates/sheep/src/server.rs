//! Listeners and the per-connection loop of the Sheepdog protocol (TCP and the store's unix
//! socket). Reads 48-byte headers and payloads, checks versions and lengths, runs each request
//! as its own task (many in flight per connection, answers in completion order, matched by
//! id), and writes answers. Owns: framing and the connection lifecycle. Never: what an opcode
//! means (that is `ops`).

use crate::node::Node;
use crate::ops;
use bytes::Bytes;
use proto::{flags, frame, Header, HEADER_SIZE};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, Semaphore};

/// Numbers the unix-socket connections, which have no address to tell them apart.
static CONN_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Payload bytes reserved before they arrive.
const PREALLOC: usize = 4 << 20;

/// Requests one connection may have in flight; more wait for a slot (back-pressure).
const MAX_INFLIGHT: usize = 128;
/// Serves one client connection until it closes.
pub async fn serve_conn<S>(node: Arc<Node>, stream: S, client: String)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let client = Arc::new(ops::Client::new(client));
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<ops::Reply>(MAX_INFLIGHT);
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::with_capacity(256 * 1024, wr);
        while let Some(r) = rx.recv().await {
            let mut next = Some(r);
            while let Some(r) = next.take() {
                if w.write_all(r.header.as_bytes()).await.is_err()
                    || w.write_all(&r.data).await.is_err()
                {
                    return;
                }
                next = rx.try_recv().ok();
            }
            if w.flush().await.is_err() {
                return;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(MAX_INFLIGHT));
    loop {
        let mut hb = [0u8; HEADER_SIZE];
        if rd.read_exact(&mut hb).await.is_err() {
            break;
        }
        let req = Header::from_bytes(&hb);
        if let Err(refusal) = frame::check_request(&req) {
            tracing::debug!("refused {req:?}: {}", refusal.result.text());
            let rsp = Header::response_to(&req, node.epoch(), refusal.result);
            let _ = tx
                .send(ops::Reply {
                    header: rsp,
                    data: Vec::new(),
                })
                .await;
            if refusal.close {
                break;
            }
            continue;
        }
        let data = if req.carries_payload() {
            // Grown as the bytes arrive: a header that claims a large payload costs nothing
            // until the payload is really sent.
            let len = req.data_length() as usize;
            let mut buf = Vec::with_capacity(len.min(PREALLOC));
            match (&mut rd).take(len as u64).read_to_end(&mut buf).await {
                Ok(n) if n == len => {}
                _ => break,
            }
            Bytes::from(buf)
        } else {
            Bytes::new()
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let node = node.clone();
        let tx = tx.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut reply = ops::handle(&node, &client, &req, data).await;
            // Never more payload than asked for, and none for writes (QEMU's reading rules).
            if req.has_flag(flags::CMD_WRITE) {
                reply.data.clear();
            } else {
                reply.data.truncate(req.data_length() as usize);
            }
            reply.header.set_data_length(reply.data.len() as u32);
            let _ = tx.send(reply).await;
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
    // A client that goes away lets its VDIs go.
    let _ = slots.acquire_many(MAX_INFLIGHT as u32).await;
    ops::release_all(&node, &client).await;
}

/// Accepts TCP connections until the node stops.
pub async fn listen_tcp(node: Arc<Node>, listener: tokio::net::TcpListener) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(serve_conn(node.clone(), s, format!("sheepdog {peer}")));
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = node.stop.notified() => return,
        }
    }
}

/// Accepts connections on the store's unix socket (`sheepdog+unix://` clients).
pub async fn listen_unix(node: Arc<Node>, listener: tokio::net::UnixListener) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    let n = CONN_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::spawn(serve_conn(node.clone(), s, format!("sheepdog unix #{n}")));
                }
                Err(e) => {
                    tracing::warn!("accept (unix): {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = node.stop.notified() => return,
        }
    }
}
