//! Async client of the Sheepdog protocol.
//!
//! Owns: one TCP connection with many requests in flight, answers matched by id (they may come
//! back in any order). Used by `dog`, by the gateway for its persistent peer connections, and by
//! tests. Never: cluster logic, retries, or interpretation of result codes.

pub mod admin;
pub mod volumes;

use bytes::Bytes;
use proto::{Header, HEADER_SIZE};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};

/// Largest response payload accepted (the inode object is the largest normal answer).
pub const MAX_RESPONSE: u32 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
    #[error("response payload of {0} bytes is too large")]
    TooLarge(u32),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// A response: its header and payload.
#[derive(Debug)]
pub struct Response {
    pub header: Header,
    pub data: Vec<u8>,
}

impl Response {
    pub fn result(&self) -> proto::SdResult {
        self.header.sd_result()
    }
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Response>>>>;

/// A pipelined connection. Cheap to share (`Arc`); requests from many tasks go out on it
/// concurrently.
pub struct Connection {
    tx: mpsc::UnboundedSender<(Header, Bytes)>,
    pending: Pending,
    next_id: AtomicU32,
    broken: Arc<AtomicBool>,
    peer: SocketAddr,
    /// The read and write loops, stopped by `close`.
    tasks: [tokio::task::AbortHandle; 2],
}

impl Connection {
    pub async fn connect<A: ToSocketAddrs + std::fmt::Display>(
        addr: A,
    ) -> Result<Connection, ClientError> {
        let shown = addr.to_string();
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: shown,
                source,
            })?;
        Ok(Connection::from_stream(stream)?)
    }

    pub fn from_stream(stream: TcpStream) -> std::io::Result<Connection> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let (rd, wr) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let broken = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let w = tokio::spawn(write_loop(wr, rx, broken.clone())).abort_handle();
        let r = tokio::spawn(read_loop(rd, pending.clone(), broken.clone())).abort_handle();
        Ok(Connection {
            tx,
            pending,
            next_id: AtomicU32::new(1),
            broken,
            peer,
            tasks: [w, r],
        })
    }

    /// Closes the connection now: every request waiting on it gets `Closed` (a peer that
    /// stopped answering, or left the cluster, holds nobody).
    pub fn close(&self) {
        self.broken.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        lock(&self.pending).clear();
    }

    /// `request`, given up after `limit` (the answer, if it comes later, is dropped).
    pub async fn request_within(
        &self,
        hdr: Header,
        payload: Bytes,
        limit: std::time::Duration,
    ) -> Result<Response, ClientError> {
        // A request given up leaves nothing behind (its slot goes with its future), and its
        // id is never reused, so a late answer is dropped.
        tokio::time::timeout(limit, self.request(hdr, payload))
            .await
            .unwrap_or(Err(ClientError::Timeout(limit)))
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// True once the connection failed; callers holding a pool should reconnect.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Sends `hdr` (its id is replaced) with `payload` and waits for the matching answer.
    /// The WRITE flag and data_length are the caller's: for reads, data_length is the size of
    /// the buffer asked for and `payload` is empty.
    pub async fn request(&self, mut hdr: Header, payload: Bytes) -> Result<Response, ClientError> {
        if self.is_broken() {
            return Err(ClientError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        hdr.set_id(id);
        let (otx, orx) = oneshot::channel();
        lock(&self.pending).insert(id, otx);
        let _slot = Slot {
            pending: &self.pending,
            id,
        };
        if self.tx.send((hdr, payload)).is_err() {
            return Err(ClientError::Closed);
        }
        match orx.await {
            Ok(r) => Ok(r),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// A request carrying `payload` as its data (sets WRITE and data_length).
    pub async fn write(&self, mut hdr: Header, payload: Bytes) -> Result<Response, ClientError> {
        hdr.add_flags(proto::flags::CMD_WRITE);
        hdr.set_data_length(payload.len() as u32);
        self.request(hdr, payload).await
    }

    /// A request asking for up to `len` bytes back.
    pub async fn read(&self, mut hdr: Header, len: u32) -> Result<Response, ClientError> {
        hdr.set_data_length(len);
        self.request(hdr, Bytes::new()).await
    }
}

/// The pending entry of one request, removed when the request ends or is dropped.
struct Slot<'a> {
    pending: &'a Pending,
    id: u32,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn write_loop(
    wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<(Header, Bytes)>,
    broken: Arc<AtomicBool>,
) {
    let mut w = BufWriter::with_capacity(64 * 1024, wr);
    while let Some((hdr, payload)) = rx.recv().await {
        let mut item = Some((hdr, payload));
        // Write everything queued, then flush once.
        while let Some((h, p)) = item.take() {
            if w.write_all(h.as_bytes()).await.is_err() || w.write_all(&p).await.is_err() {
                broken.store(true, Ordering::Relaxed);
                return;
            }
            item = rx.try_recv().ok();
        }
        if w.flush().await.is_err() {
            broken.store(true, Ordering::Relaxed);
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn read_loop(mut rd: OwnedReadHalf, pending: Pending, broken: Arc<AtomicBool>) {
    while let Ok(resp) = read_response(&mut rd).await {
        let tx = lock(&pending).remove(&resp.header.id());
        if let Some(tx) = tx {
            let _ = tx.send(resp);
        }
    }
    broken.store(true, Ordering::Relaxed);
    // Dropping the senders wakes every waiter with Closed.
    lock(&pending).clear();
}

async fn read_response(rd: &mut OwnedReadHalf) -> Result<Response, ClientError> {
    let mut hb = [0u8; HEADER_SIZE];
    rd.read_exact(&mut hb).await?;
    let header = Header::from_bytes(&hb);
    let len = header.data_length();
    if len > MAX_RESPONSE {
        return Err(ClientError::TooLarge(len));
    }
    let mut data = vec![0u8; len as usize];
    rd.read_exact(&mut data).await?;
    Ok(Response { header, data })
}
