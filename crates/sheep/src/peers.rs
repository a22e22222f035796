//! The one peer client: every request this sheep sends to another sheep is built here, by a
//! named method, over one persistent pipelined connection per peer (reopened when it
//! breaks). Every request has a timeout, and every reply is checked here (its result, and
//! the length of its data), so callers get what they asked for or a result code: never a
//! short buffer, never a wait on a peer that stopped answering. A peer that leaves the
//! cluster is forgotten: requests waiting on it end at once. Each new connection first says
//! who this sheep is (HELLO_PEER: its address and the cluster's ctime): the other sheep
//! serves peer opcodes only on connections of its members.
//! Owns: the pool, the headers of peer requests, reply checks, timeouts. Never: deciding
//! where requests go or what to do when one fails.

use crate::cluster::state::LockHolder;
use bytes::Bytes;
use client::{ClientError, Connection, Response};
use proto::node::NodeId;
use proto::vdi_lock::LockRecord;
use proto::{flags, opcode, Header, Oid, SdResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// An object read, write, remove, or a small question.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// A sync of a peer's whole store, or a list of every object it has.
const LONG_TIMEOUT: Duration = Duration::from_secs(30);

/// What a peer write does with the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// It must exist.
    Overwrite,
    /// Created if absent, else written.
    Create,
    /// Created if absent, else left as it is (copy-on-write).
    CreateIfAbsent,
}

/// Bytes per page of an object list (a failpoint makes pages small in tests).
fn list_page() -> u32 {
    fail::fail_point!("peers::list_page", |v| v
        .and_then(|v| v.parse().ok())
        .unwrap_or(proto::frame::MAX_READ));
    proto::frame::MAX_READ
}

pub struct Peers {
    conns: Mutex<HashMap<NodeId, Arc<Connection>>>,
    /// Who this sheep says it is on each new connection: its id and the cluster's ctime.
    me: Mutex<(NodeId, u64)>,
    /// Bumped by `forget`: a request cut off by it is not sent again.
    forgotten: Mutex<HashMap<NodeId, u64>>,
    io_timeout: Duration,
    long_timeout: Duration,
}

impl Default for Peers {
    fn default() -> Self {
        Peers::with_timeouts(IO_TIMEOUT, LONG_TIMEOUT)
    }
}

fn ok(r: &Response) -> Result<(), SdResult> {
    match r.result() {
        SdResult::SUCCESS => Ok(()),
        e => Err(e),
    }
}

impl Peers {
    pub fn new() -> Peers {
        Peers::default()
    }

    /// A client whose requests time out after `io` (object I/O, questions) or `long` (store
    /// syncs, object lists).
    pub fn with_timeouts(io: Duration, long: Duration) -> Peers {
        Peers {
            conns: Mutex::default(),
            me: Mutex::new((NodeId::new([0, 0, 0, 0].into(), 0), 0)),
            forgotten: Mutex::default(),
            io_timeout: io,
            long_timeout: long,
        }
    }

    /// Sets who this sheep says it is on new connections: `nid`, of the cluster formatted at
    /// `ctime` (0: not formatted).
    pub fn identify(&self, nid: NodeId, ctime: u64) {
        *self.me.lock().unwrap_or_else(|e| e.into_inner()) = (nid, ctime);
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Arc<Connection>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn get(&self, nid: NodeId) -> Result<Arc<Connection>, SdResult> {
        if let Some(c) = self.pool().get(&nid) {
            if !c.is_broken() {
                return Ok(c.clone());
            }
        }
        let addr = nid.socket_addr();
        let (me, ctime) = *self.me.lock().unwrap_or_else(|e| e.into_inner());
        let open = async {
            let c = Connection::connect(addr).await?;
            let mut h = Header::request(opcode::HELLO_PEER);
            h.set_oid(ctime)
                .set_forw_addr(&me.addr)
                .set_forw_port(me.port);
            let r = c.request(h, Bytes::new()).await?;
            Ok::<_, ClientError>((c, r.result()))
        };
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
            Ok(Ok((c, SdResult::SUCCESS))) => Arc::new(c),
            Ok(Ok((_, refused))) => {
                tracing::warn!("peer {nid} refused this sheep ({me}): {}", refused.text());
                return Err(SdResult::NETWORK_ERROR);
            }
            Ok(Err(e)) => {
                tracing::debug!("peer {nid}: {e}");
                return Err(SdResult::NETWORK_ERROR);
            }
            Err(_) => return Err(SdResult::NETWORK_ERROR),
        };
        self.pool().insert(nid, conn.clone());
        Ok(conn)
    }

    /// Drops the connection to `nid` (it left the cluster): requests waiting on it fail now.
    pub fn forget(&self, nid: NodeId) {
        *self
            .forgotten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(nid)
            .or_default() += 1;
        if let Some(c) = self.pool().remove(&nid) {
            c.close();
        }
    }

    /// Sends one request to `nid` and waits at most `limit` for the answer; a broken
    /// connection is reopened once. A peer that does not answer in time is an error for this
    /// request (NETWORK_ERROR), and its connection is reopened for the next one.
    async fn call(
        &self,
        nid: NodeId,
        hdr: Header,
        payload: Bytes,
        limit: Duration,
    ) -> Result<Response, SdResult> {
        let generation = |p: &Peers| {
            let f = p.forgotten.lock().unwrap_or_else(|e| e.into_inner());
            f.get(&nid).copied().unwrap_or(0)
        };
        let start = generation(self);
        for attempt in 0..2 {
            if attempt > 0 && generation(self) != start {
                break;
            }
            let conn = self.get(nid).await?;
            match conn.request_within(hdr, payload.clone(), limit).await {
                Ok(r) => return Ok(r),
                Err(e @ ClientError::Timeout(_)) => {
                    tracing::warn!("peer {nid}: {e} (opcode {:#x})", hdr.opcode());
                    self.drop_conn(nid, &conn);
                    return Err(SdResult::NETWORK_ERROR);
                }
                Err(e) => {
                    tracing::debug!("peer {nid} (attempt {attempt}): {e}");
                    self.drop_conn(nid, &conn);
                }
            }
        }
        Err(SdResult::NETWORK_ERROR)
    }

    fn drop_conn(&self, nid: NodeId, conn: &Arc<Connection>) {
        let mut pool = self.pool();
        if pool.get(&nid).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            pool.remove(&nid);
        }
    }

    /// A read of exactly `len` bytes.
    async fn read_exact(
        &self,
        nid: NodeId,
        hdr: Header,
        len: usize,
        limit: Duration,
    ) -> Result<Vec<u8>, SdResult> {
        Ok(self.checked(nid, hdr, len, limit).await?.data)
    }

    /// A successful answer with exactly `len` bytes.
    async fn checked(
        &self,
        nid: NodeId,
        hdr: Header,
        len: usize,
        limit: Duration,
    ) -> Result<Response, SdResult> {
        let r = self.call(nid, hdr, Bytes::new(), limit).await?;
        ok(&r)?;
        if r.data.len() != len {
            tracing::warn!(
                "peer {nid}: {} bytes for a read of {len} (opcode {:#x})",
                r.data.len(),
                hdr.opcode()
            );
            return Err(SdResult::EIO);
        }
        Ok(r)
    }

    /// READ_PEER: `len` bytes at `offset` of `nid`'s current copy of `oid`.
    pub async fn read(
        &self,
        nid: NodeId,
        epoch: u32,
        oid: Oid,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, SdResult> {
        let mut h = Header::request(opcode::READ_PEER);
        h.set_epoch(epoch)
            .set_oid(oid.0)
            .set_obj_offset(offset)
            .set_data_length(len as u32);
        self.read_exact(nid, h, len, self.io_timeout).await
    }

    /// READ_PEER for recovery: of the copy tagged `tag` (current, or a stale epoch), with the
    /// version of the copy the bytes were read from and the id of its last write counted.
    pub async fn read_tagged(
        &self,
        nid: NodeId,
        epoch: u32,
        oid: Oid,
        tag: u32,
        offset: u64,
        len: usize,
    ) -> Result<(Vec<u8>, u64, u64), SdResult> {
        let mut h = Header::request(opcode::READ_PEER);
        h.set_epoch(epoch)
            .set_flags(flags::CMD_RECOVERY)
            .set_oid(oid.0)
            .set_tgt_epoch(tag)
            .set_obj_offset(offset)
            .set_data_length(len as u32);
        let r = self.checked(nid, h, len, self.io_timeout).await?;
        let (version, last) = (r.header.rsp_obj_version(), r.header.rsp_obj_last());
        Ok((r.data, version, last))
    }

    /// WRITE_PEER, or CREATE_AND_WRITE_PEER, of `data` at `offset`; durable on the peer
    /// before it answers with `sync`, else at its next flush. Returns the version of the
    /// peer's copy after the write.
    #[allow(clippy::too_many_arguments)]
    pub async fn write(
        &self,
        nid: NodeId,
        epoch: u32,
        oid: Oid,
        offset: u64,
        data: Bytes,
        kind: WriteKind,
        sync: bool,
        id: u64,
    ) -> Result<u64, SdResult> {
        let mut h = Header::request(match kind {
            WriteKind::Overwrite => opcode::WRITE_PEER,
            WriteKind::Create | WriteKind::CreateIfAbsent => opcode::CREATE_AND_WRITE_PEER,
        });
        if kind == WriteKind::CreateIfAbsent {
            h.add_flags(flags::CMD_EXCL);
        }
        if !sync {
            h.add_flags(flags::CMD_CACHE);
        }
        h.set_epoch(epoch)
            .set_oid(oid.0)
            .set_cow_oid(id)
            .set_obj_offset(offset)
            .set_data_length(data.len() as u32);
        if !data.is_empty() {
            h.add_flags(flags::CMD_WRITE);
        }
        let r = self.call(nid, h, data, self.io_timeout).await?;
        ok(&r)?;
        Ok(r.header.rsp_obj_version())
    }

    /// REMOVE_PEER: `nid`'s copies of `oid`, current and stale.
    pub async fn remove(&self, nid: NodeId, epoch: u32, oid: Oid) -> Result<(), SdResult> {
        let mut h = Header::request(opcode::REMOVE_PEER);
        h.set_epoch(epoch).set_oid(oid.0);
        ok(&self.call(nid, h, Bytes::new(), self.io_timeout).await?)
    }

    /// FLUSH_PEER: every write `nid` took is durable.
    pub async fn flush(&self, nid: NodeId, epoch: u32) -> Result<(), SdResult> {
        let mut h = Header::request(opcode::FLUSH_PEER);
        h.set_epoch(epoch);
        ok(&self.call(nid, h, Bytes::new(), self.long_timeout).await?)
    }

    /// OBJ_LIST_TAGGED: the best copy of every object `nid` has, with its tag and version.
    pub async fn list_tagged(
        &self,
        nid: NodeId,
        epoch: u32,
    ) -> Result<Vec<proto::objlist::Record>, SdResult> {
        // Page by page (a node may hold more objects than one answer carries): each page
        // has the copies of objects from `oid` on; a full page means there may be more.
        let page = list_page();
        let per_page = page as usize / proto::objlist::RECORD_SIZE;
        let mut all = Vec::new();
        let mut from = 0u64;
        loop {
            let mut h = Header::request(opcode::OBJ_LIST_TAGGED);
            h.set_epoch(epoch).set_oid(from).set_data_length(page);
            let r = self.call(nid, h, Bytes::new(), self.long_timeout).await?;
            ok(&r)?;
            let records = proto::objlist::decode(&r.data)
                .filter(|l| l.len() <= per_page && l.iter().all(|rec| rec.0 .0 >= from))
                .ok_or_else(|| {
                    tracing::warn!("peer {nid}: an object list page of {} bytes", r.data.len());
                    SdResult::EIO
                })?;
            let full = records.len() == per_page;
            let next = records.last().map(|rec| rec.0 .0.checked_add(1));
            all.extend(records);
            match next {
                Some(Some(n)) if full => from = n,
                _ => return Ok(all),
            }
        }
    }

    /// OBJ_TAG: the tag and version of `nid`'s best copy of `oid`, `None` if it has none.
    pub async fn tag(
        &self,
        nid: NodeId,
        epoch: u32,
        oid: Oid,
    ) -> Result<Option<(u32, u64)>, SdResult> {
        let mut h = Header::request(opcode::OBJ_TAG);
        h.set_epoch(epoch).set_oid(oid.0);
        let r = self.call(nid, h, Bytes::new(), self.io_timeout).await?;
        match r.result() {
            SdResult::SUCCESS => Ok(Some((
                r.header.rsp_obj_offset() as u32,
                r.header.rsp_obj_version(),
            ))),
            SdResult::NO_OBJ => Ok(None),
            e => Err(e),
        }
    }

    /// REPAIR_REPLICA: `nid` replaces its copy of `oid` with `from`'s current one.
    pub async fn repair(
        &self,
        nid: NodeId,
        epoch: u32,
        oid: Oid,
        from: NodeId,
    ) -> Result<(), SdResult> {
        let mut h = Header::request(opcode::REPAIR_REPLICA);
        h.set_epoch(epoch)
            .set_oid(oid.0)
            .set_forw_addr(&from.addr)
            .set_forw_port(from.port);
        ok(&self.call(nid, h, Bytes::new(), self.long_timeout).await?)
    }

    /// GET_EPOCH: the members of `epoch` in `nid`'s epoch log and the time it began; `None`
    /// if `nid` has no record of it.
    pub async fn epoch_log(
        &self,
        nid: NodeId,
        epoch: u32,
    ) -> Result<Option<(Vec<proto::SdNode>, u64)>, SdResult> {
        let mut h = Header::request(opcode::GET_EPOCH);
        let room = proto::SD_MAX_NODES * proto::node::SD_NODE_SIZE + 8;
        h.set_tgt_epoch(epoch).set_data_length(room as u32);
        let r = self.call(nid, h, Bytes::new(), self.io_timeout).await?;
        match r.result() {
            SdResult::SUCCESS => proto::node::decode_epoch_file(&r.data)
                .map(Some)
                .ok_or_else(|| {
                    tracing::warn!("peer {nid}: an epoch record of {} bytes", r.data.len());
                    SdResult::EIO
                }),
            SdResult::NO_TAG => Ok(None),
            e => Err(e),
        }
    }

    /// WAIT_APPLIED: `nid` has applied every cluster event up to `seq`.
    pub async fn wait_applied(&self, nid: NodeId, seq: u64) -> Result<(), SdResult> {
        let mut h = Header::request(opcode::WAIT_APPLIED);
        h.set_oid(seq);
        ok(&self
            .call(nid, h, Bytes::new(), Duration::from_secs(7))
            .await?)
    }

    /// DRAIN_VDI: `nid` applied event `seq` and has no write to `vid` in flight.
    pub async fn drain_vdi(&self, nid: NodeId, seq: u64, vid: u32) -> Result<(), SdResult> {
        let mut h = Header::request(opcode::DRAIN_VDI);
        h.set_oid(seq).set_tgt_epoch(vid);
        ok(&self.call(nid, h, Bytes::new(), self.long_timeout).await?)
    }

    /// NBD_HANDOVER: `nid`, the node of `from`, hands `from`'s writer lock of `vid` to `to`
    /// if `from` has flushed and stopped writing; VDI_LOCKED if it keeps it.
    pub async fn nbd_handover(
        &self,
        nid: NodeId,
        vid: u32,
        from: &LockHolder,
        to: &LockHolder,
    ) -> Result<(), SdResult> {
        let record = |h: &LockHolder| LockRecord {
            vid,
            shared: false,
            node: h.node.clone(),
            client: h.client.clone(),
        };
        let payload = LockRecord::encode_list(&[record(from), record(to)]);
        let mut h = Header::request(opcode::NBD_HANDOVER);
        h.set_tgt_epoch(vid)
            .add_flags(flags::CMD_WRITE)
            .set_data_length(payload.len() as u32);
        ok(&self
            .call(nid, h, Bytes::from(payload), self.io_timeout)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    //! The client against fake peers that speak the real codec over real sockets.
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A fake peer: answers every request with `answer(request) -> (result, data)`, or never
    /// when it returns None (the hello of a new connection always, with SUCCESS).
    async fn fake_peer(
        answer: impl Fn(&Header) -> Option<(SdResult, Vec<u8>)> + Send + 'static,
    ) -> NodeId {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut hb = [0u8; proto::HEADER_SIZE];
            while s.read_exact(&mut hb).await.is_ok() {
                let h = Header::from_bytes(&hb);
                if h.carries_payload() {
                    let mut p = vec![0u8; h.data_length() as usize];
                    s.read_exact(&mut p).await.unwrap();
                }
                let reply = if h.opcode() == opcode::HELLO_PEER {
                    Some((SdResult::SUCCESS, Vec::new()))
                } else {
                    answer(&h)
                };
                let Some((res, data)) = reply else {
                    continue;
                };
                let mut r = Header::response_to(&h, h.epoch(), res);
                r.set_data_length(data.len() as u32);
                s.write_all(r.as_bytes()).await.unwrap();
                s.write_all(&data).await.unwrap();
            }
        });
        NodeId::new("127.0.0.1".parse().unwrap(), port)
    }

    fn quick() -> Peers {
        Peers::with_timeouts(Duration::from_millis(300), Duration::from_millis(300))
    }

    #[tokio::test]
    async fn short_long_and_malformed_replies_are_errors() {
        let oid = Oid::data(proto::Vid(7), 1);
        let short =
            fake_peer(|h| Some((SdResult::SUCCESS, vec![1; h.data_length() as usize / 2]))).await;
        let p = quick();
        assert_eq!(p.read(short, 1, oid, 0, 4096).await, Err(SdResult::EIO));
        let long =
            fake_peer(|h| Some((SdResult::SUCCESS, vec![1; h.data_length() as usize + 1]))).await;
        assert_eq!(p.read(long, 1, oid, 0, 4096).await, Err(SdResult::EIO));
        let exact =
            fake_peer(|h| Some((SdResult::SUCCESS, vec![7; h.data_length() as usize]))).await;
        assert_eq!(p.read(exact, 1, oid, 0, 16).await, Ok(vec![7; 16]));
        let ragged = fake_peer(|_| Some((SdResult::SUCCESS, vec![0; 17]))).await;
        assert_eq!(p.list_tagged(ragged, 1).await, Err(SdResult::EIO));
        let old = fake_peer(|_| Some((SdResult::OLD_NODE_VER, Vec::new()))).await;
        assert_eq!(
            p.write(
                old,
                1,
                oid,
                0,
                Bytes::from_static(b"x"),
                WriteKind::Overwrite,
                true,
                7
            )
            .await,
            Err(SdResult::OLD_NODE_VER)
        );
        let none = fake_peer(|_| Some((SdResult::NO_OBJ, Vec::new()))).await;
        assert_eq!(p.tag(none, 1, oid).await, Ok(None));
    }

    #[tokio::test]
    async fn a_handover_request_names_the_vdi_the_holder_and_the_newcomer() {
        let asked = fake_peer(|h| {
            let ok = h.opcode() == opcode::NBD_HANDOVER
                && h.tgt_epoch() == 7
                && h.carries_payload()
                && h.data_length() as usize == 2 * proto::vdi_lock::LOCK_RECORD_SIZE;
            let r = if ok {
                SdResult::VDI_LOCKED
            } else {
                SdResult::INVALID_PARMS
            };
            Some((r, Vec::new()))
        })
        .await;
        let h = |node: &str, client: &str| LockHolder {
            node: node.into(),
            client: client.into(),
        };
        let (from, to) = (h("127.0.0.1:7000", "nbd a"), h("127.0.0.1:7001", "nbd b"));
        assert_eq!(
            quick().nbd_handover(asked, 7, &from, &to).await,
            Err(SdResult::VDI_LOCKED),
            "the holder's answer"
        );
    }

    #[tokio::test]
    async fn each_connection_says_who_this_sheep_is_and_a_refusal_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = NodeId::new("127.0.0.1".parse().unwrap(), l.local_addr().unwrap().port());
        let me = NodeId::new("127.0.0.1".parse().unwrap(), 7000);
        let seen = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut hb = [0u8; proto::HEADER_SIZE];
            s.read_exact(&mut hb).await.unwrap();
            let h = Header::from_bytes(&hb);
            let r = Header::response_to(&h, 1, SdResult::INVALID_CTIME);
            s.write_all(r.as_bytes()).await.unwrap();
            (h.opcode(), h.oid(), h.forw_addr(), h.forw_port())
        });
        let p = quick();
        p.identify(me, 0xabc);
        let oid = Oid::data(proto::Vid(7), 1);
        assert_eq!(
            p.read(peer, 1, oid, 0, 8).await,
            Err(SdResult::NETWORK_ERROR)
        );
        let (op, ctime, addr, port) = seen.await.unwrap();
        assert_eq!(
            (op, ctime, addr, port),
            (opcode::HELLO_PEER, 0xabc, me.addr, 7000)
        );
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_and_a_forgotten_one_ends_its_waits_at_once() {
        let oid = Oid::data(proto::Vid(7), 1);
        let silent = fake_peer(|_| None).await;
        let p = quick();
        let t = tokio::time::Instant::now();
        assert_eq!(
            p.read(silent, 1, oid, 0, 8).await,
            Err(SdResult::NETWORK_ERROR)
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        let silent = fake_peer(|_| None).await;
        let p = Arc::new(Peers::with_timeouts(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ));
        let p2 = p.clone();
        let waiting = tokio::spawn(async move { p2.read(silent, 1, oid, 0, 8).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.forget(silent);
        let r = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the wait ended with the forget")
            .unwrap();
        assert_eq!(r, Err(SdResult::NETWORK_ERROR));
    }
}
