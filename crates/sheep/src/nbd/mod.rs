//! The NBD front end: listeners, the export catalog (every VDI, and every snapshot
//! read-only), and the session of one connection with its writer lock. Export names: `NAME`
//! is the working VDI, `NAME:ID` a snapshot by id, `NAME@TAG` a snapshot by tag. With TLS
//! credentials every listener (TCP and unix socket) requires TLS.
//! Owns: connection lifecycle and who may write. Never: object I/O (that is `volume`).

pub mod handshake;
pub mod tls;
pub mod transmission;

use crate::budget::NodeBudget;
use crate::cluster::state::{LockHolder, Message};
use crate::node::Node;
use crate::server::{ConnLimit, Limits};
use crate::vdi;
use crate::volume::Volume;
use handshake::{Catalog, ExportInfo};
use proto::nbd::tflag;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tls::{Conn, NbdTls};
use tokio::io::{AsyncRead, AsyncWrite};

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
    /// Connections holding each (VDI, client) writer lock on this node.
    writers: tokio::sync::Mutex<HashMap<(u32, String), usize>>,
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
        Arc::new(NbdServer {
            node,
            shared,
            limits,
            buffers,
            volumes: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
            writers: tokio::sync::Mutex::new(HashMap::new()),
            tls,
        })
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

    /// Takes the writer lock of `vid` for `client`, cluster-wide.
    async fn acquire(&self, vid: u32, name: &[u8], client: &str) -> Result<(), String> {
        let mut writers = self.writers.lock().await;
        let key = (vid, client.to_string());
        if let Some(n) = writers.get_mut(&key) {
            *n += 1;
            return Ok(());
        }
        let holder = self.holder(client);
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
                writers.insert(key, 1);
                Ok(())
            }
            Some((_, l)) => {
                let who: Vec<String> = l
                    .holders
                    .iter()
                    .map(|h| format!("{} through {}", h.client, h.node))
                    .collect();
                Err(format!(
                    "VDI {} is already open for writing by {}; start sheep with --nbd-shared to let several writers share it",
                    String::from_utf8_lossy(name),
                    who.join(", ")
                ))
            }
            None => Err("the VDI lock was not granted".into()),
        }
    }

    async fn release(&self, vid: u32, client: &str) {
        let mut writers = self.writers.lock().await;
        let key = (vid, client.to_string());
        match writers.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                writers.remove(&key);
                let holder = self.holder(client);
                if let Err(e) = self.node.notify(Message::Unlock { vid, holder }).await {
                    tracing::warn!("releasing the lock of {vid:x}: {e}");
                }
            }
            None => {}
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
        let session = Arc::new(Session {
            server: self.clone(),
            volume,
            client: client_name(peer),
            locked: tokio::sync::OnceCell::new(),
        });
        let (rd, wr) = tokio::io::split(stream);
        transmission::serve(rd, wr, session.clone(), neg, self.limits, &self.buffers).await;
        if let Some(&vid) = session.locked.get() {
            self.release(vid, &session.client).await;
        }
    }
}

/// One connection's view: the volume it serves and whether it holds the writer lock.
pub struct Session {
    server: Arc<NbdServer>,
    pub volume: Arc<Volume>,
    client: String,
    locked: tokio::sync::OnceCell<u32>,
}

impl Session {
    /// Takes the VDI's writer lock before the first write of this connection.
    pub async fn ensure_writer(&self) -> Result<(), String> {
        self.locked
            .get_or_try_init(|| async {
                let vid = self.volume.vid().await;
                self.server
                    .acquire(vid, self.volume.name(), &self.client)
                    .await
                    .map(|_| vid)
            })
            .await
            .map(|_| ())
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
