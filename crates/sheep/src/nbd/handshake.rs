//! The NBD newstyle fixed handshake: greeting, option haggling (EXPORT_NAME, GO, INFO, LIST,
//! STRUCTURED_REPLY, LIST/SET_META_CONTEXT for base:allocation), until the client picks an
//! export or leaves. Owns: the option phase of one connection. Never: opening VDIs or serving
//! data (the catalog answers what exists; transmission serves it).

use proto::nbd::{self, opt, rep, tflag, InfoRequest, MetaContextRequest, OptionHeader};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest option payload accepted; larger ones are refused unread and the connection closed.
const MAX_OPTION: u32 = 64 * 1024;
/// Options one connection may send before it is considered abusive.
const MAX_OPTIONS: usize = 1024;
/// Largest request (read or write) a client may send; advertised as the maximum block size.
pub const MAX_REQUEST: u32 = 32 << 20;
/// Id of the base:allocation metadata context.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// What an export looks like to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub read_only: bool,
    pub description: String,
}

/// The exports a server offers.
pub trait Catalog {
    /// An export by name, or why there is none (sent to the client).
    fn describe(
        &self,
        name: &str,
    ) -> impl std::future::Future<Output = Result<ExportInfo, String>> + Send;
    /// Every export: (name, description).
    fn list(&self) -> impl std::future::Future<Output = Vec<(String, String)>> + Send;
    /// The transmission flags to advertise for an export.
    fn flags(&self, info: &ExportInfo) -> u16;
}

/// The outcome of a handshake that reached the transmission phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub name: String,
    pub info: ExportInfo,
    pub structured: bool,
    pub base_allocation: bool,
}

async fn send<S: AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    reply: u32,
    data: &[u8],
) -> io::Result<()> {
    s.write_all(&nbd::option_reply(option, reply, data)).await
}

async fn send_err<S: AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    reply: u32,
    msg: &str,
) -> io::Result<()> {
    send(s, option, reply, msg.as_bytes()).await?;
    s.flush().await
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Runs the handshake. `Ok(None)`: the client aborted or left cleanly.
pub async fn negotiate<S, C>(s: &mut S, catalog: &C) -> io::Result<Option<Negotiated>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: Catalog,
{
    s.write_all(&nbd::server_greeting()).await?;
    s.flush().await?;
    let client_flags = s.read_u32().await?;
    if client_flags & !(nbd::CLIENT_FLAG_FIXED_NEWSTYLE | nbd::CLIENT_FLAG_NO_ZEROES) != 0 {
        return Err(bad(format!("unknown client flags {client_flags:#x}")));
    }
    let no_zeroes = client_flags & nbd::CLIENT_FLAG_NO_ZEROES != 0;
    let mut structured = false;
    let mut base_allocation = false;
    for _ in 0..MAX_OPTIONS {
        let mut hb = [0u8; nbd::OPTION_HEADER_SIZE];
        match s.read_exact(&mut hb).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let h = OptionHeader::decode(&hb);
        if h.magic != nbd::IHAVEOPT {
            return Err(bad("option without the IHAVEOPT magic"));
        }
        if h.length > MAX_OPTION {
            if h.option != opt::EXPORT_NAME {
                send_err(s, h.option, rep::ERR_TOO_BIG, "option data too large").await?;
            }
            return Err(bad(format!("option of {} bytes", h.length)));
        }
        let mut data = vec![0u8; h.length as usize];
        s.read_exact(&mut data).await?;
        match h.option {
            opt::EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let info = match catalog.describe(&name).await {
                    Ok(i) => i,
                    // No way to say why in this old option: the connection just closes.
                    Err(e) => return Err(bad(e)),
                };
                let flags = catalog.flags(&info);
                s.write_all(&nbd::export_name_reply(info.size, flags, no_zeroes))
                    .await?;
                s.flush().await?;
                return Ok(Some(Negotiated {
                    name,
                    info,
                    structured: false,
                    base_allocation: false,
                }));
            }
            opt::ABORT => {
                let _ = send_err(s, h.option, rep::ACK, "").await;
                return Ok(None);
            }
            opt::LIST => {
                if !data.is_empty() {
                    send_err(s, h.option, rep::ERR_INVALID, "LIST takes no data").await?;
                    continue;
                }
                for (name, desc) in catalog.list().await {
                    send(s, h.option, rep::SERVER, &nbd::rep_server(&name, &desc)).await?;
                }
                send_err(s, h.option, rep::ACK, "").await?;
            }
            opt::STARTTLS => {
                send_err(s, h.option, rep::ERR_UNSUP, "TLS is not supported").await?;
            }
            opt::INFO | opt::GO => {
                let req = match InfoRequest::decode(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        send_err(s, h.option, rep::ERR_INVALID, e.0).await?;
                        continue;
                    }
                };
                let info = match catalog.describe(&req.name).await {
                    Ok(i) => i,
                    Err(e) => {
                        send_err(s, h.option, rep::ERR_UNKNOWN, &e).await?;
                        continue;
                    }
                };
                let flags = catalog.flags(&info);
                send(s, h.option, rep::INFO, &nbd::info_export(info.size, flags)).await?;
                for r in &req.requests {
                    match *r {
                        nbd::info::NAME => {
                            let d = nbd::info_text(nbd::info::NAME, &req.name);
                            send(s, h.option, rep::INFO, &d).await?;
                        }
                        nbd::info::DESCRIPTION => {
                            let d = nbd::info_text(nbd::info::DESCRIPTION, &info.description);
                            send(s, h.option, rep::INFO, &d).await?;
                        }
                        _ => {}
                    }
                }
                let bs = nbd::info_block_size(1, 4096, MAX_REQUEST);
                send(s, h.option, rep::INFO, &bs).await?;
                send_err(s, h.option, rep::ACK, "").await?;
                if h.option == opt::GO {
                    return Ok(Some(Negotiated {
                        name: req.name,
                        info,
                        structured,
                        base_allocation: base_allocation && structured,
                    }));
                }
            }
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    send_err(
                        s,
                        h.option,
                        rep::ERR_INVALID,
                        "STRUCTURED_REPLY takes no data",
                    )
                    .await?;
                    continue;
                }
                structured = true;
                send_err(s, h.option, rep::ACK, "").await?;
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                let set = h.option == opt::SET_META_CONTEXT;
                if set && !structured {
                    let m = "structured replies must be negotiated first";
                    send_err(s, h.option, rep::ERR_INVALID, m).await?;
                    continue;
                }
                let req = match MetaContextRequest::decode(&data) {
                    Ok(r) => r,
                    Err(e) => {
                        send_err(s, h.option, rep::ERR_INVALID, e.0).await?;
                        continue;
                    }
                };
                if let Err(e) = catalog.describe(&req.name).await {
                    send_err(s, h.option, rep::ERR_UNKNOWN, &e).await?;
                    continue;
                }
                let wanted = if req.queries.is_empty() {
                    !set
                } else {
                    req.queries.iter().any(|q| {
                        q == nbd::BASE_ALLOCATION || (!set && (q == "base:" || q == "base"))
                    })
                };
                if set {
                    base_allocation = wanted;
                }
                if wanted {
                    let d = nbd::rep_meta_context(BASE_ALLOCATION_ID, nbd::BASE_ALLOCATION);
                    send(s, h.option, rep::META_CONTEXT, &d).await?;
                }
                send_err(s, h.option, rep::ACK, "").await?;
            }
            other => {
                let m = format!("option {other} is not supported");
                send_err(s, other, rep::ERR_UNSUP, &m).await?;
            }
        }
    }
    Err(bad("too many options"))
}

/// Fuzz driver: `data` as everything a client sends, against a catalog of one export. Runs
/// the real negotiation on an in-memory pipe; never hangs (the client side closes).
#[doc(hidden)]
pub fn fuzz_negotiate(data: &[u8]) {
    struct One;
    impl Catalog for One {
        async fn describe(&self, name: &str) -> Result<ExportInfo, String> {
            match name {
                "Bob" => Ok(ExportInfo {
                    size: 1 << 30,
                    read_only: false,
                    description: "VDI Bob".into(),
                }),
                _ => Err(format!("no export '{name}'")),
            }
        }
        async fn list(&self) -> Vec<(String, String)> {
            vec![("Bob".into(), "VDI Bob".into())]
        }
        fn flags(&self, _: &ExportInfo) -> u16 {
            tflag::HAS_FLAGS
        }
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let input = data.to_vec();
        let feeder = tokio::spawn(async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
        let _ = negotiate(&mut server, &One).await;
        drop(server);
        let _ = feeder.await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opt(option: u32, data: &[u8]) -> Vec<u8> {
        let mut b = nbd::IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn random_clients(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            fuzz_negotiate(&data);
        }

        #[test]
        fn random_options(opts in proptest::collection::vec((0u32..12, proptest::collection::vec(any::<u8>(), 0..40)), 0..8)) {
            let mut b = 3u32.to_be_bytes().to_vec();
            for (o, d) in &opts {
                b.extend(opt(*o, d));
            }
            fuzz_negotiate(&b);
        }
    }
}
