//! The NBD front end: listeners, the export catalog (every VDI, and every snapshot
//! read-only), and the session of one connection with its writer lock. Export names: `NAME`
//! is the working VDI, `NAME:ID` a snapshot by id, `NAME@TAG` a snapshot by tag. With TLS
//! credentials every listener (TCP and unix socket) requires TLS.
//!
//! The writer lock: a client's first write takes the VDI's lock cluster-wide
//! (`Message::Lock`); its connections through this node share it. A writer that finds the lock
//! held by one client (through any node) asks that client's node to hand it over
//! (NBD_HANDOVER, through the peer client); that node grants it by the rule of `writers`
//! (the holder has no write in flight and flushed since its last write: the end of a live
//! migration), marks the holder's connections as no longer writers and broadcasts
//! `Message::Handover`, which takes effect only while the holder still holds the lock, in the
//! cluster's one order. Every change of the lock this node makes (take, hand over, release)
//! is serialised by `locking`, and no peer request is sent while it is held, so two nodes
//! asking each other never wait on each other.
//! Owns: connection lifecycle and who may write. Never: object I/O (that is `volume`).

pub mod handshake;
pub mod tls;
pub mod transmission;
pub mod writers;

use crate::budget::NodeBudget;
use crate::cluster::state::{LockHolder, Message};
use crate::node::Node;
use crate::server::{ConnLimit, Limits};
use crate::vdi;
use crate::volume::Volume;
use handshake::{Catalog, ExportInfo};
use proto::nbd::tflag;
use proto::SdResult;
use std::sync::{Arc, Mutex, Weak};
use tls::{Conn, NbdTls};
use tokio::io::{AsyncRead, AsyncWrite};
use writers::{ConnId, FlushMark, VolumeKey, WriterTable};

/// Time a client has to finish the handshake (qemu-nbd's default handshake limit).
const HANDSHAKE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How a connection's client is named in locks and in `dog vm list`.
fn client_name(peer: Option<std::net::SocketAddr>) -> String {
    match peer {
        Some(a) => format!("nbd {}", a.ip()),
        None => "nbd unix socket".to_string(),
    }
}

/// (VDI name, tag, snapshot id) of an export name.
pub fn parse_export(name: &str) -> Result<(String, String, u32), String> {
    let (vdi, tag, snapid) = if let Some((n, t)) = name.rsplit_once('@') {
        (n, t, 0)
    } else if let Some((n, id)) = name
        .rsplit_once(':')
        .filter(|(_, id)| !id.is_empty() && id.bytes().all(|c| c.is_ascii_digit()))
    {
        let id: u32 = id
            .parse()
            .map_err(|_| format!("bad snapshot id in '{name}'"))?;
        (n, "", id)
    } else {
        (name, "", 0)
    };
    if vdi.is_empty() {
        return Err("no export name given: exports are VDI names (NAME, NAME:ID, NAME@TAG)".into());
    }
    if vdi.len() >= proto::SD_MAX_VDI_LEN || tag.len() >= proto::SD_MAX_VDI_TAG_LEN {
        return Err(format!("export name '{name}' is too long"));
    }
    Ok((vdi.to_string(), tag.to_string(), snapid))
}

/// One node's NBD service, shared by its TCP and unix listeners.
pub struct NbdServer {
    node: Arc<Node>,
    /// Writers from different clients may share a VDI (qemu-nbd's --shared).
    shared: bool,
    /// Connections per listener, idle time, requests and bytes per connection.
    limits: Limits,
    /// Bytes all connections of the node may hold (shared with the Sheepdog listeners).
    buffers: Arc<NodeBudget>,
    /// Open volumes, so that connections to one VDI share one object table.
    volumes: Mutex<Vec<Weak<Volume>>>,
    /// Serialises the opening of volumes.
    opening: tokio::sync::Mutex<()>,
    /// Which connection holds which writer lock, and their writes and flushes.
    writers: Mutex<WriterTable>,
    /// Serialises this node's changes of writer locks (take, hand over, release).
    locking: tokio::sync::Mutex<()>,
    /// TLS credentials: when set, every connection must upgrade (STARTTLS) before anything.
    tls: Option<NbdTls>,
}

impl NbdServer {
    pub fn new(
        node: Arc<Node>,
        shared: bool,
        limits: Limits,
        buffers: Arc<NodeBudget>,
        tls: Option<NbdTls>,
    ) -> Arc<NbdServer> {
        let server = Arc::new(NbdServer {
            node,
            shared,
            limits,
            buffers,
            volumes: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
            writers: Mutex::new(WriterTable::default()),
            locking: tokio::sync::Mutex::new(()),
            tls,
        });
        // NBD_HANDOVER requests of other nodes reach this server through the node.
        let _ = server.node.nbd.set(Arc::downgrade(&server));
        server
    }

    /// The volume serving `export`: the one already open for that VDI on this node if any
    /// (connections to one VDI share its object table), else a new one.
    async fn open(&self, export: &str) -> Result<Arc<Volume>, String> {
        let (name, tag, snapid) = parse_export(export)?;
        let view = self.node.gate(false).map_err(|e| e.text().to_string())?;
        let h = vdi::find(&self.node, &view, name.as_bytes(), tag.as_bytes(), snapid)
            .await
            .map_err(|e| format!("{export}: {}", e.text()))?;
        let ro = h.is_snapshot();
        if let Some(v) = self.find_open(h.vdi_id, ro).await {
            return Ok(v);
        }
        let v = Arc::new(
            Volume::open(&self.node, name.as_bytes(), tag.as_bytes(), snapid)
                .await
                .map_err(|e| format!("{export}: {}", e.text()))?,
        );
        let _creating = self.opening.lock().await;
        if let Some(existing) = self.find_open(h.vdi_id, ro).await {
            return Ok(existing);
        }
        let mut open = self.lock_volumes();
        open.retain(|w| w.strong_count() > 0);
        open.push(Arc::downgrade(&v));
        Ok(v)
    }

    /// An open volume that addresses `vid` now (writable volumes follow their name across
    /// snapshots), read-only or not as asked.
    async fn find_open(&self, vid: u32, read_only: bool) -> Option<Arc<Volume>> {
        let open: Vec<Arc<Volume>> = self
            .lock_volumes()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for v in open {
            if v.read_only() == read_only && v.vid().await == vid {
                return Some(v);
            }
        }
        None
    }

    fn lock_volumes(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Volume>>> {
        self.volumes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn holder(&self, client: &str) -> LockHolder {
        LockHolder {
            node: self.node.me.nid.to_string(),
            client: client.to_string(),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, WriterTable> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the writer lock of the session's VDI, cluster-wide: shared with another
    /// connection of the same client here, granted by the cluster if free, or handed over by
    /// the node of the one client holding it if that client is done writing.
    async fn acquire(&self, s: &Session) -> Result<(), String> {
        let holder = self.holder(&s.client);
        let name = String::from_utf8_lossy(s.volume.name()).into_owned();
        let mut asked = false;
        for _ in 0..2 {
            let (vid, held_by) = {
                let _changing = self.locking.lock().await;
                {
                    let mut t = self.table();
                    if t.holds(s.id) || t.join_sibling(s.id) {
                        return Ok(());
                    }
                }
                let vid = s.volume.vid().await;
                let msg = Message::Lock {
                    vid,
                    holder: holder.clone(),
                    shared: self.shared,
                };
                self.node
                    .notify(msg)
                    .await
                    .map_err(|e| format!("cannot lock the VDI: {e}"))?;
                let view = self.node.view();
                let lock = view
                    .state
                    .locks
                    .iter()
                    .find(|(v, _)| view.state.descends(**v, vid));
                match lock {
                    Some((_, l)) if l.holders.contains(&holder) => {
                        self.table().grant(s.id, vid);
                        return Ok(());
                    }
                    // One exclusive holder: it may hand the lock over (asked once per write).
                    Some((&at, l)) if !l.shared && l.holders.len() == 1 && !asked => {
                        (at, l.holders[0].clone())
                    }
                    Some((_, l)) => return Err(refused(&name, &l.holders, None)),
                    None => return Err("the VDI lock was not granted".into()),
                }
            };
            // Not under `locking`: the holder's node may be asking this one at the same time.
            // Granted: the next round takes the lock, in the cluster's order after the handover.
            let r = self.ask_handover(vid, &held_by, &holder).await;
            if let Err(e) = r {
                return Err(refused(&name, std::slice::from_ref(&held_by), Some(e)));
            }
            asked = true;
        }
        Err(format!(
            "VDI {name} was handed over to this client and taken by another before it could write"
        ))
    }

    /// Asks the node of `from` to hand `from`'s lock of `vid` over to `to`.
    async fn ask_handover(
        &self,
        vid: u32,
        from: &LockHolder,
        to: &LockHolder,
    ) -> Result<(), SdResult> {
        if from.node == self.node.me.nid.to_string() {
            return self.hand_over(vid, &from.client, to).await;
        }
        let view = self.node.view();
        // A node that left took its clients' locks with it: nothing to ask.
        let member = view
            .state
            .members
            .iter()
            .find(|m| m.nid.to_string() == from.node)
            .ok_or(SdResult::NETWORK_ERROR)?;
        self.node
            .peers
            .nbd_handover(member.nid, vid, from, to)
            .await
    }

    /// NBD_HANDOVER, on the node of the holder: if `client`'s connections to `vid` here are
    /// done writing (`writers`), they stop being writers and the lock goes to `to`,
    /// cluster-wide; Ok once that is applied here. VDI_LOCKED if the holder keeps it.
    pub async fn hand_over(&self, vid: u32, client: &str, to: &LockHolder) -> Result<(), SdResult> {
        let _changing = self.locking.lock().await;
        let from = self.holder(client);
        let holds = |who: &LockHolder| {
            let view = self.node.view();
            let held = view
                .state
                .locks
                .iter()
                .any(|(v, l)| view.state.descends(*v, vid) && l.holders == [who.clone()]);
            held
        };
        // Asked again (the peer client resends a request whose connection broke): done.
        if holds(to) {
            return Ok(());
        }
        let Some(volume) = self.find_open(vid, false).await else {
            tracing::info!("nbd: {to:?} asked for the lock of {vid:x}: no writer of it here");
            return Err(SdResult::VDI_LOCKED);
        };
        let key = volume_key(&volume);
        let name = String::from_utf8_lossy(volume.name()).into_owned();
        if let Err(why) = self.table().hand_over(client, key) {
            tracing::info!(
                "nbd {name}: {} through {} asked for the writer lock; {client} keeps it: {why}",
                to.client,
                to.node
            );
            return Err(SdResult::VDI_LOCKED);
        }
        // From here on the old holder's connections are not writers: if the message below
        // is lost, their next write takes the lock again through the cluster (it comes after
        // this message, if that went out after all, in this node's order of messages).
        tracing::info!(
            "nbd {name}: {client} has flushed and stopped writing: handing the writer lock \
             over to {} through {}",
            to.client,
            to.node
        );
        // A test holds the decision open here: a write of the old holder meanwhile is refused.
        fail::fail_point!("nbd::handover");
        let msg = Message::Handover {
            vid,
            from,
            to: to.clone(),
        };
        if let Err(e) = self.node.notify(msg).await {
            tracing::warn!("nbd {name}: handing the writer lock over: {e}");
            return Err(SdResult::CLUSTER_ERROR);
        }
        if holds(to) {
            Ok(())
        } else {
            Err(SdResult::VDI_LOCKED)
        }
    }

    /// The session's connection closed: if it was the last of its client here holding the
    /// VDI's lock, the lock is released. A connection that lost the lock releases nothing,
    /// unless its client still holds the lock with no connection here holding it (a
    /// handover whose message failed).
    async fn release(&self, s: &Session) {
        let _changing = self.locking.lock().await;
        let held = self.table().close(s.id);
        if self.table().client_holds(&s.client, volume_key(&s.volume)) {
            return;
        }
        let holder = self.holder(&s.client);
        let vid = match held {
            Some(vid) => vid,
            None => {
                let current = s.volume.vid().await;
                let view = self.node.view();
                let stale =
                    view.state.locks.iter().any(|(v, l)| {
                        view.state.descends(*v, current) && l.holders.contains(&holder)
                    });
                if !stale || s.volume.read_only() {
                    return;
                }
                current
            }
        };
        if let Err(e) = self.node.notify(Message::Unlock { vid, holder }).await {
            tracing::warn!("releasing the lock of {vid:x}: {e}");
        }
    }

    /// Serves one NBD connection from handshake to close. The handshake limit covers the TLS
    /// handshake too; transmission runs over the stream as the handshake left it.
    pub async fn serve_conn<S>(self: Arc<Self>, stream: S, peer: Option<std::net::SocketAddr>)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let _counted = crate::metrics::connection(crate::metrics::Listener::Nbd);
        let mut stream = Conn::Plain(stream);
        let catalog = NodeCatalog { server: &self };
        let neg = tokio::time::timeout(
            HANDSHAKE_LIMIT,
            handshake::negotiate(&mut stream, &catalog, self.tls.as_ref()),
        );
        let neg = match neg.await {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!("nbd handshake: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("nbd handshake not finished in {HANDSHAKE_LIMIT:?}, closing");
                return;
            }
        };
        let volume = match self.open(&neg.name).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("nbd: {e}");
                return;
            }
        };
        let client = client_name(peer);
        let id = self.table().open(&client, volume_key(&volume));
        let session = Arc::new(Session {
            server: self.clone(),
            volume,
            client,
            id,
        });
        let (rd, wr) = tokio::io::split(stream);
        transmission::serve(rd, wr, session.clone(), neg, self.limits, &self.buffers).await;
        self.release(&session).await;
    }
}

fn volume_key(v: &Arc<Volume>) -> VolumeKey {
    Arc::as_ptr(v) as VolumeKey
}

/// The error text of a write refused because others hold the VDI.
/// `asked`: the answer of the holder's node to a handover request, if one was made.
fn refused(name: &str, holders: &[LockHolder], asked: Option<SdResult>) -> String {
    let who: Vec<String> = holders
        .iter()
        .map(|h| format!("{} through {}", h.client, h.node))
        .collect();
    let why = match asked {
        Some(SdResult::VDI_LOCKED) => {
            " and was not handed over: the writer is still writing or has not flushed since its \
             last write (a writer hands a VDI over once it has flushed and stopped, as qemu \
             does at the end of a migration)"
                .to_string()
        }
        Some(e) => format!(" and its node could not hand it over: {}", e.text()),
        None => String::new(),
    };
    format!(
        "VDI {name} is already open for writing by {}{why}; start sheep with --nbd-shared to let \
         several writers share it",
        who.join(", ")
    )
}

/// One connection's view: the volume it serves, and its entry in the writer table.
pub struct Session {
    server: Arc<NbdServer>,
    pub volume: Arc<Volume>,
    client: String,
    id: ConnId,
}

/// A write of a session that holds the writer lock, in flight until dropped.
pub struct Writing<'a> {
    session: &'a Session,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.session.server.table().end_write(self.session.id);
    }
}

impl Session {
    /// A write (WRITE, TRIM, WRITE_ZEROES) of this connection begins: it is counted in
    /// flight, and once this connection holds the VDI's writer lock (taken, shared or handed
    /// over if it does not), it may go on while the returned guard lives.
    pub async fn begin_write(&self) -> Result<Writing<'_>, String> {
        let holds = self.server.table().begin_write(self.id);
        let writing = Writing { session: self };
        if !holds {
            self.server.acquire(self).await?;
        }
        Ok(writing)
    }

    /// A FLUSH of this connection begins: what it covers, if no write of it is in flight.
    pub fn flush_begins(&self) -> Option<FlushMark> {
        self.server.table().flush_begins(self.id)
    }

    /// The FLUSH that began with `mark` completed.
    pub fn flushed(&self, mark: FlushMark) {
        self.server.table().flushed(self.id, mark)
    }
}

struct NodeCatalog<'a> {
    server: &'a NbdServer,
}

impl Catalog for NodeCatalog<'_> {
    async fn describe(&self, name: &str) -> Result<ExportInfo, String> {
        let node = &self.server.node;
        let (vdi_name, tag, snapid) = parse_export(name)?;
        let view = node.gate(false).map_err(|e| e.text().to_string())?;
        let h = vdi::find(node, &view, vdi_name.as_bytes(), tag.as_bytes(), snapid)
            .await
            .map_err(|e| format!("no export '{name}': {}", e.text()))?;
        Ok(ExportInfo {
            size: h.vdi_size,
            read_only: h.is_snapshot(),
            description: describe(&h),
        })
    }

    async fn list(&self) -> Vec<(String, String)> {
        let node = &self.server.node;
        let view = node.view();
        let mut out = Vec::new();
        for (&vid, info) in &view.state.vdis {
            if info.deleted {
                continue;
            }
            let Ok(h) = vdi::read_header(node, vid).await else {
                continue;
            };
            if h.name.is_empty() {
                continue;
            }
            let name = String::from_utf8_lossy(&h.name).into_owned();
            let export = if h.is_snapshot() {
                format!("{name}:{}", h.snap_id)
            } else {
                name
            };
            out.push((export, describe(&h)));
        }
        out.sort();
        out
    }

    fn flags(&self, info: &ExportInfo) -> u16 {
        let mut f = tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::SEND_DF;
        // Writes are on every copy when acknowledged, FLUSH syncs every node, and connections
        // to one VDI on this node share its object table: multi-conn is safe.
        f |= tflag::CAN_MULTI_CONN;
        if info.read_only {
            f |= tflag::READ_ONLY;
        } else {
            f |= tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES;
        }
        f
    }
}

fn describe(h: &proto::inode::InodeHeader) -> String {
    let name = String::from_utf8_lossy(&h.name);
    if h.is_snapshot() {
        let tag = String::from_utf8_lossy(&h.tag);
        if tag.is_empty() {
            format!("snapshot {} of {name} (read-only)", h.snap_id)
        } else {
            format!("snapshot {} '{tag}' of {name} (read-only)", h.snap_id)
        }
    } else {
        format!("VDI {name}")
    }
}

/// Accepts NBD connections on TCP until the node stops.
pub async fn listen_tcp(server: Arc<NbdServer>, listener: tokio::net::TcpListener) {
    let gate = ConnLimit::new("nbd port", server.limits.max_connections);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    let Some(slot) = gate.admit(&peer.to_string()) else {
                        drop(s);
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    crate::server::keepalive(&s);
                    let server = server.clone();
                    tokio::spawn(async move {
                        server.serve_conn(s, Some(peer)).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!("nbd accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = server.node.stop.notified() => return,
        }
    }
}

/// Accepts NBD connections on a unix socket until the node stops.
pub async fn listen_unix(server: Arc<NbdServer>, listener: tokio::net::UnixListener) {
    let gate = ConnLimit::new("nbd unix socket", server.limits.max_connections);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    seq += 1;
                    let Some(slot) = gate.admit(&format!("unix #{seq}")) else {
                        drop(s);
                        continue;
                    };
                    let server = server.clone();
                    tokio::spawn(async move {
                        server.serve_conn(s, None).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!("nbd accept (unix): {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = server.node.stop.notified() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names() {
        assert_eq!(parse_export("Bob"), Ok(("Bob".into(), "".into(), 0)));
        assert_eq!(parse_export("Bob:2"), Ok(("Bob".into(), "".into(), 2)));
        assert_eq!(
            parse_export("Bob@first"),
            Ok(("Bob".into(), "first".into(), 0))
        );
        assert_eq!(parse_export("a:b"), Ok(("a:b".into(), "".into(), 0)));
        assert!(parse_export("").is_err());
        assert!(parse_export(":1").is_err());
        assert!(parse_export(&"x".repeat(300)).is_err());
    }
}
