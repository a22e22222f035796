//! A minimal async NBD client for tests: fixed newstyle, OPT_GO, simple replies, one request
//! at a time per connection. The `try_*` forms return every failure (the server's error reply
//! or a broken connection) so fault tests can count them; the plain forms panic when the
//! connection breaks and return only the server's errno, for tests that expect a healthy link.

use proto::nbd::{self, cflag, cmd, opt, rep};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Client {
    pub s: TcpStream,
    pub size: u64,
    pub flags: u16,
    pub next: u64,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server replied with this errno.
    Errno(u32),
    /// The connection broke or the reply was not NBD.
    Io(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Errno(e) => write!(f, "errno {e}"),
            Failure::Io(e) => write!(f, "connection: {e}"),
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A TCP connection to 127.0.0.1:`port`, from address `src` if given.
pub async fn try_connect_from(src: Option<&str>, port: u16) -> io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = src {
        sock.bind(
            format!("{ip}:0")
                .parse()
                .map_err(|_| bad("bad source ip"))?,
        )?;
    }
    let s = sock.connect(([127, 0, 0, 1], port).into()).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

pub async fn connect_from(src: Option<&str>, port: u16) -> TcpStream {
    try_connect_from(src, port).await.unwrap()
}

pub async fn try_option(s: &mut TcpStream, option: u32, data: &[u8]) -> io::Result<()> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&nbd::IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b).await
}

pub async fn option(s: &mut TcpStream, option: u32, data: &[u8]) {
    try_option(s, option, data).await.unwrap()
}

/// Reads one option reply: (type, data).
pub async fn try_option_reply(s: &mut TcpStream) -> io::Result<(u32, Vec<u8>)> {
    if s.read_u64().await? != nbd::REPLY_MAGIC {
        return Err(bad("option reply without the magic"));
    }
    let _opt = s.read_u32().await?;
    let t = s.read_u32().await?;
    let n = s.read_u32().await?;
    let mut d = vec![0u8; n as usize];
    s.read_exact(&mut d).await?;
    Ok((t, d))
}

pub async fn option_reply(s: &mut TcpStream) -> (u32, Vec<u8>) {
    try_option_reply(s).await.unwrap()
}

pub async fn try_greet(s: &mut TcpStream) -> io::Result<()> {
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await?;
    if &g[..16] != b"NBDMAGICIHAVEOPT" {
        return Err(bad("greeting without the magic"));
    }
    s.write_u32(nbd::CLIENT_FLAG_FIXED_NEWSTYLE | nbd::CLIENT_FLAG_NO_ZEROES)
        .await
}

pub async fn greet(s: &mut TcpStream) {
    try_greet(s).await.unwrap()
}

/// The data of OPT_GO for `name`, asking for no information.
pub fn go_data(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

impl Client {
    /// Handshake for `export`: Ok(Err(text)) when the server refuses the export.
    async fn handshake(
        src: Option<&str>,
        port: u16,
        export: &str,
    ) -> io::Result<Result<Client, String>> {
        let mut s = try_connect_from(src, port).await?;
        try_greet(&mut s).await?;
        try_option(&mut s, opt::GO, &go_data(export)).await?;
        let (mut size, mut flags) = (0, 0);
        loop {
            let (t, d) = try_option_reply(&mut s).await?;
            match t {
                rep::ACK => break,
                rep::INFO if d.len() >= 12 && d[..2] == [0, 0] => {
                    size = u64::from_be_bytes(d[2..10].try_into().unwrap());
                    flags = u16::from_be_bytes([d[10], d[11]]);
                }
                rep::INFO => {}
                _ => return Ok(Err(String::from_utf8_lossy(&d).into_owned())),
            }
        }
        Ok(Ok(Client {
            s,
            size,
            flags,
            next: 1,
        }))
    }

    /// Opens `export`; Err carries the server's error reply text. Panics if the connection
    /// fails.
    pub async fn open(src: Option<&str>, port: u16, export: &str) -> Result<Client, String> {
        Client::handshake(src, port, export).await.unwrap()
    }

    /// Opens `export`; Err carries the server's refusal or the connection error.
    pub async fn try_open(src: Option<&str>, port: u16, export: &str) -> Result<Client, String> {
        match Client::handshake(src, port, export).await {
            Ok(r) => r,
            Err(e) => Err(format!("connection: {e}")),
        }
    }

    /// Sends one request and waits for its simple reply: Ok(read data) or the failure.
    pub async fn try_req(
        &mut self,
        kind: u16,
        flags: u16,
        off: u64,
        len: u32,
        data: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        let io = |e: io::Error| Failure::Io(e.to_string());
        let r = nbd::Request {
            flags,
            kind,
            handle: self.next,
            offset: off,
            length: len,
        };
        self.next += 1;
        let mut b = Vec::with_capacity(nbd::REQUEST_SIZE + data.len());
        b.extend_from_slice(&r.encode());
        b.extend_from_slice(data);
        self.s.write_all(&b).await.map_err(io)?;
        if self.s.read_u32().await.map_err(io)? != nbd::SIMPLE_REPLY_MAGIC {
            return Err(Failure::Io("reply without the simple reply magic".into()));
        }
        let err = self.s.read_u32().await.map_err(io)?;
        let handle = self.s.read_u64().await.map_err(io)?;
        if handle != r.handle {
            return Err(Failure::Io(format!(
                "reply for handle {handle}, expected {}",
                r.handle
            )));
        }
        if err != 0 {
            return Err(Failure::Errno(err));
        }
        let mut out = vec![0u8; if kind == cmd::READ { len as usize } else { 0 }];
        self.s.read_exact(&mut out).await.map_err(io)?;
        Ok(out)
    }

    /// Sends one request and waits for its simple reply: Ok(read data) or Err(errno). Panics
    /// if the connection breaks.
    pub async fn req(
        &mut self,
        kind: u16,
        flags: u16,
        off: u64,
        len: u32,
        data: &[u8],
    ) -> Result<Vec<u8>, u32> {
        match self.try_req(kind, flags, off, len, data).await {
            Ok(d) => Ok(d),
            Err(Failure::Errno(e)) => Err(e),
            Err(f) => panic!("nbd request {kind} at {off}+{len}: {f}"),
        }
    }

    /// A FUA write: durable when acknowledged.
    pub async fn write(&mut self, off: u64, data: &[u8]) -> Result<(), u32> {
        self.req(cmd::WRITE, cflag::FUA, off, data.len() as u32, data)
            .await
            .map(|_| ())
    }

    /// A write without FUA: durable only once a FLUSH has returned.
    pub async fn write_cached(&mut self, off: u64, data: &[u8]) -> Result<(), u32> {
        self.req(cmd::WRITE, 0, off, data.len() as u32, data)
            .await
            .map(|_| ())
    }

    pub async fn try_write(&mut self, off: u64, data: &[u8], fua: bool) -> Result<(), Failure> {
        let flags = if fua { cflag::FUA } else { 0 };
        self.try_req(cmd::WRITE, flags, off, data.len() as u32, data)
            .await
            .map(|_| ())
    }

    pub async fn flush(&mut self) -> Result<(), u32> {
        self.req(cmd::FLUSH, 0, 0, 0, &[]).await.map(|_| ())
    }

    pub async fn try_flush(&mut self) -> Result<(), Failure> {
        self.try_req(cmd::FLUSH, 0, 0, 0, &[]).await.map(|_| ())
    }

    pub async fn read(&mut self, off: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.req(cmd::READ, 0, off, len, &[]).await
    }

    pub async fn try_read(&mut self, off: u64, len: u32) -> Result<Vec<u8>, Failure> {
        self.try_req(cmd::READ, 0, off, len, &[]).await
    }

    pub async fn disconnect(mut self) {
        let r = nbd::Request {
            flags: 0,
            kind: cmd::DISC,
            handle: 0,
            offset: 0,
            length: 0,
        };
        let _ = self.s.write_all(&r.encode()).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.s.read_to_end(&mut rest)).await;
    }
}
