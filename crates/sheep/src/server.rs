//! Listeners and the per-connection loop of the Sheepdog protocol (TCP and the store's unix
//! socket), and the limits every listener of this node applies (the NBD ones too). Reads
//! 48-byte headers, checks them (`proto::frame`) before any payload is read, reads payloads
//! as they arrive, runs each request as its own task (many in flight per connection, answers
//! in completion order, matched by id), and writes answers.
//! Owns: framing, the connection lifecycle and its limits (connections per listener, idle
//! time; requests and buffered bytes per connection and node-wide are `budget`'s). Never:
//! what an opcode means (`ops`).

use crate::budget::{Budget, Class, ConnLimits, Held, NodeBudget};
use crate::node::Node;
use crate::ops;
use bytes::Bytes;
use proto::{flags, frame, opcode, Header, HEADER_SIZE};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Numbers the unix-socket connections, which have no address to tell them apart.
static CONN_SEQ: AtomicU64 = AtomicU64::new(0);

/// Read-ahead of a connection (headers and small payloads come in one read).
const READ_BUFFER: usize = 64 << 10;
/// Replies gathered before they go to the socket.
const WRITE_BUFFER: usize = 64 << 10;
/// First piece of a payload's buffer; it grows as the bytes arrive, never past the payload.
const FIRST_PIECE: usize = 64 << 10;
/// Spare capacity a reply may keep; more is given back before the reply waits to be sent.
const SPARE: usize = 4096;

/// The limits of every listener and connection of this node (sheep's command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections one listener serves at once; one more is closed as soon as it is accepted.
    /// 0: no limit.
    pub max_connections: usize,
    /// A connection that has nothing in flight and sends no request for this long is closed,
    /// and so is one whose client takes none of a reply for this long. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Requests one connection may have taken and not yet answered on the wire (in flight or
    /// answered but not sent); at the limit the connection is not read from.
    pub max_requests: usize,
    /// Bytes one connection may hold for request payloads and replies not yet sent; at the
    /// limit the connection is not read from. A request larger than this waits until it is
    /// the connection's only one.
    pub conn_buffer: usize,
    /// Bytes all connections of the node together may hold for client requests (and as many
    /// for requests of other sheep): `budget`.
    pub max_buffered: usize,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_MAX_REQUESTS: usize = 128;
pub const DEFAULT_CONN_BUFFER: usize = 8 << 20;
pub use crate::budget::DEFAULT_MAX_BUFFERED;

impl Limits {
    /// The limits of one connection.
    pub fn conn(&self) -> ConnLimits {
        ConnLimits {
            max_requests: self.max_requests,
            max_bytes: self.conn_buffer,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: None,
            max_requests: DEFAULT_MAX_REQUESTS,
            conn_buffer: DEFAULT_CONN_BUFFER,
            max_buffered: DEFAULT_MAX_BUFFERED,
        }
    }
}

/// The connection count of one listener.
pub struct ConnLimit {
    what: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    /// Connections refused since the last log line, and when that line was written.
    refused: Mutex<(u64, Option<Instant>)>,
}

impl ConnLimit {
    pub fn new(what: &'static str, max: usize) -> Arc<ConnLimit> {
        let permits = if max == 0 {
            Semaphore::MAX_PERMITS
        } else {
            max
        };
        Arc::new(ConnLimit {
            what,
            max,
            slots: Arc::new(Semaphore::new(permits)),
            refused: Mutex::new((0, None)),
        })
    }

    /// A slot for a new connection from `peer`, held as long as it is served; `None` (and a
    /// log line, at most one a second) when the listener is full: close it.
    pub fn admit(&self, peer: &str) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        r.0 += 1;
        let due = r.1.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            let more = r.0 - 1;
            let more = if more > 0 {
                format!(" (and {more} more since the last report)")
            } else {
                String::new()
            };
            tracing::warn!(
                "{}: {} connections already, closing the one from {peer}{more} (--max-connections)",
                self.what,
                self.max
            );
            *r = (0, Some(Instant::now()));
        }
        None
    }
}

/// A reply on its way to the socket, with the budget it holds until it is written.
pub(crate) struct Answer {
    pub head: Vec<u8>,
    pub data: Vec<u8>,
    pub held: Held,
}

/// Gives back the spare capacity of a reply's buffer before it waits to be sent.
pub(crate) fn trim(data: &mut Vec<u8>) {
    if data.capacity() - data.len() > SPARE {
        data.shrink_to_fit();
    }
}

/// What the reader of a connection found while waiting for the next request.
pub(crate) enum Wait {
    /// Bytes of a request are there.
    Ready,
    /// The client closed the connection (or it broke).
    Closed,
    /// Nothing in flight and no request for the idle timeout.
    Idle,
    /// The writer is gone (the client stopped taking replies): stop.
    WriterGone,
}

/// Waits for the first byte of the next request. The idle timeout counts only while the
/// connection has nothing in flight and no reply waiting to be sent.
pub(crate) async fn wait_request<R, T>(
    rd: &mut BufReader<R>,
    idle: Option<Duration>,
    budget: &Budget,
    tx: &mpsc::Sender<T>,
) -> Wait
where
    R: AsyncRead + Unpin,
{
    loop {
        let tick = async {
            match idle {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = rd.fill_buf() => {
                return match r {
                    Ok(b) if !b.is_empty() => Wait::Ready,
                    _ => Wait::Closed,
                };
            }
            _ = tx.closed() => return Wait::WriterGone,
            _ = tick => {
                if !budget.busy() {
                    return Wait::Idle;
                }
            }
        }
    }
}

/// Reads a payload of `len` bytes into a buffer that grows as they arrive (a header that
/// claims a large payload costs nothing until the bytes are sent), never past `len`.
pub(crate) async fn read_payload<R: AsyncRead + Unpin>(
    rd: &mut R,
    len: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len.min(FIRST_PIECE));
    while buf.len() < len {
        if buf.len() == buf.capacity() {
            let grow = buf.capacity().max(FIRST_PIECE).min(len - buf.len());
            buf.reserve_exact(grow);
        }
        let room = (buf.capacity() - buf.len()).min(len - buf.len());
        let n = (&mut *rd).take(room as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf)
}

/// Reads and throws away `len` payload bytes (a refused request's), through a small buffer.
pub(crate) async fn skip<R: AsyncRead + Unpin>(rd: &mut R, len: u64) -> io::Result<()> {
    let n = tokio::io::copy(&mut (&mut *rd).take(len), &mut tokio::io::sink()).await?;
    if n < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// `read_exact` as an `io::Result<()>` (a header, once its first byte is there).
pub(crate) async fn read_all<R: AsyncRead + Unpin>(rd: &mut R, b: &mut [u8]) -> io::Result<()> {
    rd.read_exact(b).await.map(|_| ())
}

/// Runs `f`, given up after `limit` (a header begun and not finished, a reply not taken).
pub(crate) async fn within<F: Future<Output = io::Result<()>>>(
    limit: Option<Duration>,
    f: F,
) -> bool {
    match limit {
        None => f.await.is_ok(),
        Some(t) => matches!(tokio::time::timeout(t, f).await, Ok(Ok(()))),
    }
}

/// Writes answers as they come until every sender is gone, the socket breaks, or the client
/// takes none of an answer for `stall`. Each answer's budget is given back once it is written.
pub(crate) async fn write_answers<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Answer>,
    stall: Option<Duration>,
) {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER, wr);
    while let Some(a) = rx.recv().await {
        let mut next = Some(a);
        while let Some(Answer { head, data, held }) = next.take() {
            let sent = within(stall, async {
                w.write_all(&head).await?;
                w.write_all(&data).await
            })
            .await;
            if !sent {
                if stall.is_some() {
                    tracing::debug!("a client took no reply for {stall:?}, closing");
                }
                return;
            }
            // Written (into the socket, or the small write buffer): its budget goes back.
            drop((data, held));
            next = rx.try_recv().ok();
        }
        if !within(stall, w.flush()).await {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// TCP keepalive on an accepted connection, so that a client that vanished (its machine
/// died) gives its slot back: probes after 60 s of silence, closed after 6 unanswered.
pub(crate) fn keepalive(s: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, v: libc::c_int| {
        // SAFETY: setsockopt on a valid socket with a pointer to a live c_int and its size.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 6);
}

/// Serves one client connection until it closes.
pub async fn serve_conn<S>(
    node: Arc<Node>,
    stream: S,
    client: String,
    limits: Limits,
    buffers: Arc<NodeBudget>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let _counted = crate::metrics::connection(crate::metrics::Listener::Sheepdog);
    let name = client.clone();
    let client = Arc::new(ops::Client::new(client));
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
    let budget = Budget::new(limits.conn(), &buffers);
    let (tx, rx) = mpsc::channel::<Answer>(budget.max_requests as usize);
    let writer = tokio::spawn(write_answers(wr, rx, limits.idle_timeout));
    loop {
        match wait_request(&mut rd, limits.idle_timeout, &budget, &tx).await {
            Wait::Ready => {}
            Wait::Idle => {
                tracing::debug!("{name}: idle for {:?}, closing", limits.idle_timeout);
                break;
            }
            Wait::Closed | Wait::WriterGone => break,
        }
        let mut hb = [0u8; HEADER_SIZE];
        if !within(limits.idle_timeout, read_all(&mut rd, &mut hb)).await {
            break;
        }
        let req = Header::from_bytes(&hb);
        if let Err(refusal) = frame::check_request(&req) {
            tracing::debug!("refused {req:?}: {}", refusal.result.text());
            let held = tokio::select! {
                h = budget.take(0, Class::Client) => h,
                _ = tx.closed() => break,
            };
            if refusal.skip > 0 && skip(&mut rd, refusal.skip as u64).await.is_err() {
                break;
            }
            crate::metrics::Request::sheepdog(&req, 0).finish_sd(refusal.result, 0);
            let rsp = Header::response_to(&req, node.epoch(), refusal.result);
            let answer = Answer {
                head: rsp.as_bytes().to_vec(),
                data: Vec::new(),
                held,
            };
            if tx.send(answer).await.is_err() || refusal.close {
                break;
            }
            continue;
        }
        // A write holds its payload, a read the buffer it asked for, until the answer is
        // written; at the connection's limit, or the node's, the next header waits
        // (back-pressure).
        let class = if opcode::is_peer(req.opcode()) {
            Class::Peer
        } else {
            Class::Client
        };
        let mut held = tokio::select! {
            h = budget.take(req.data_length() as u64, class) => h,
            _ = tx.closed() => break,
        };
        let data = if req.carries_payload() {
            match read_payload(&mut rd, req.data_length() as usize).await {
                Ok(b) => Bytes::from(b),
                Err(_) => break,
            }
        } else {
            Bytes::new()
        };
        let node = node.clone();
        let tx = tx.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut reply = ops::handle(&node, &client, &req, data).await;
            // Never more payload than asked for, and none for writes (QEMU's reading rules).
            if req.has_flag(flags::CMD_WRITE) {
                reply.data = Vec::new();
            } else {
                reply.data.truncate(req.data_length() as usize);
                trim(&mut reply.data);
            }
            held.shrink_to(reply.data.capacity());
            reply.header.set_data_length(reply.data.len() as u32);
            let _ = tx
                .send(Answer {
                    head: reply.header.as_bytes().to_vec(),
                    data: reply.data,
                    held,
                })
                .await;
        });
    }
    drop(tx);
    let _ = writer.await;
    // A client that goes away lets its VDIs go, once no request of it can take one.
    budget.drained().await;
    ops::release_all(&node, &client).await;
}

/// Accepts TCP connections until the node stops.
pub async fn listen_tcp(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    limits: Limits,
    buffers: Arc<NodeBudget>,
) {
    let gate = ConnLimit::new("sheepdog port", limits.max_connections);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    let Some(slot) = gate.admit(&peer.to_string()) else {
                        drop(s);
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    keepalive(&s);
                    let (node, buffers) = (node.clone(), buffers.clone());
                    tokio::spawn(async move {
                        serve_conn(node, s, format!("sheepdog {peer}"), limits, buffers).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = node.stop.notified() => return,
        }
    }
}

/// Accepts connections on the store's unix socket (`sheepdog+unix://` clients).
pub async fn listen_unix(
    node: Arc<Node>,
    listener: tokio::net::UnixListener,
    limits: Limits,
    buffers: Arc<NodeBudget>,
) {
    let gate = ConnLimit::new("sheepdog unix socket", limits.max_connections);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    let n = CONN_SEQ.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = gate.admit(&format!("unix #{n}")) else {
                        drop(s);
                        continue;
                    };
                    let (node, buffers) = (node.clone(), buffers.clone());
                    tokio::spawn(async move {
                        let name = format!("sheepdog unix #{n}");
                        serve_conn(node, s, name, limits, buffers).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!("accept (unix): {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = node.stop.notified() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn payloads_grow_as_they_arrive() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let len = 3 * FIRST_PIECE + 17;
        let sent = (0..len).map(|i| i as u8).collect::<Vec<u8>>();
        let s = sent.clone();
        tokio::spawn(async move { a.write_all(&s).await });
        let mut b = b;
        let got = read_payload(&mut b, len).await.unwrap();
        assert_eq!(got, sent);
        assert!(got.capacity() <= len);
        // A claim larger than what comes is an error, with the little that came.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let _ = a.write_all(&[1u8; 100]).await;
        });
        assert!(read_payload(&mut b, 1 << 30).await.is_err());
    }
}
