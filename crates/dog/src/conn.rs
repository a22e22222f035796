//! Talking to sheep: one pipelined connection per node (requests may overlap, answers are
//! matched by id), requests built the original's way (payload => WRITE flag and
//! data_length = payload size; reads => data_length = the buffer size asked for), and
//! transport failures turned into the original's wording with exit code 2.
//! Owns: connections and addresses. Never: interpreting result codes (callers do).

use crate::error::{Fail, Res, EXIT_FAILURE, EXIT_SYSFAIL};
use crate::fmt;
use bytes::Bytes;
use client::{ClientError, Connection, Response};
use proto::{Header, NodeId};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// A connection to one sheep; cheap to clone and share between in-flight requests.
#[derive(Clone)]
pub struct Sheep {
    conn: Arc<Connection>,
    name: Arc<str>,
}

impl Sheep {
    /// Connects to `host` (IP address, "localhost" or a host name) on `port`.
    pub async fn connect(host: &str, port: u16) -> Res<Sheep> {
        let ip = resolve(host)
            .await
            .ok_or_else(|| Fail::new(EXIT_FAILURE, format!("Invalid ip address {host}")))?;
        Sheep::connect_to(SocketAddr::new(ip, port)).await
    }

    /// Connects to a cluster member as the node list names it.
    pub async fn connect_node(nid: &NodeId) -> Res<Sheep> {
        Sheep::connect_to(nid.socket_addr()).await
    }

    async fn connect_to(sa: SocketAddr) -> Res<Sheep> {
        let name = fmt::addr(&NodeId::new(sa.ip(), sa.port()).addr, sa.port());
        match Connection::connect(sa).await {
            Ok(c) => Ok(Sheep {
                conn: Arc::new(c),
                name: name.into(),
            }),
            Err(ClientError::Connect { source, .. }) => Err(Fail::new(
                EXIT_SYSFAIL,
                format!("failed to connect to {name}: {}", os_text(&source)),
            )),
            Err(e) => Err(Fail::new(
                EXIT_SYSFAIL,
                format!("failed to connect to {name}: {e}"),
            )),
        }
    }

    /// The node's address as the original prints it ("127.0.0.1:7000").
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lost(&self, e: ClientError) -> Fail {
        Fail::new(
            EXIT_SYSFAIL,
            format!("failed to communicate with {}: {e}", self.name),
        )
    }

    /// A request asking for up to `len` bytes back.
    pub async fn read(&self, hdr: Header, len: u32) -> Res<Response> {
        self.conn.read(hdr, len).await.map_err(|e| self.lost(e))
    }

    /// A request carrying `data` (WRITE flag and data_length set, even for no bytes).
    pub async fn write(&self, hdr: Header, data: Bytes) -> Res<Response> {
        self.conn.write(hdr, data).await.map_err(|e| self.lost(e))
    }

    /// The connection itself, for the request sequences of `client::volumes`.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// A failure of a `client::volumes` sequence: the sheep's refusal as `what: reason`
    /// with the original's exit code, a transport failure as exit 2.
    pub fn volume_failure(&self, what: &str, e: client::volumes::VolumeError) -> Fail {
        use client::volumes::VolumeError;
        match e {
            VolumeError::Refused { result, .. } => crate::error::failed(what, result, EXIT_FAILURE),
            VolumeError::Client(e) => self.lost(e),
            e @ VolumeError::TooLong { .. } => Fail::new(crate::error::EXIT_USAGE, e.to_string()),
            e @ VolumeError::ShortInode(_) => Fail::new(EXIT_FAILURE, format!("{what}: {e}")),
        }
    }

    /// A header-only request.
    pub async fn call(&self, hdr: Header) -> Res<Response> {
        self.read(hdr, 0).await
    }
}

async fn resolve(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    if host == "localhost" {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let mut addrs = tokio::net::lookup_host((host, 0)).await.ok()?;
    addrs.next().map(|a| a.ip())
}

/// An I/O error as C's `%m` prints it: "Connection refused", without " (os error 111)".
pub fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_without_rust_suffix() {
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(os_text(&e), "Connection refused");
    }

    #[tokio::test]
    async fn refused_connection_reads_like_the_original() {
        // Bind then drop a listener to get a port nothing listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let Err(f) = Sheep::connect("127.0.0.1", port).await else {
            panic!("connected to a closed port");
        };
        assert_eq!(
            f.msg,
            format!("failed to connect to 127.0.0.1:{port}: Connection refused")
        );
        assert_eq!(f.code, EXIT_SYSFAIL);
    }
}
