//! The NBD newstyle fixed handshake: greeting, option haggling (EXPORT_NAME, GO, INFO, LIST,
//! STRUCTURED_REPLY, LIST/SET_META_CONTEXT for base:allocation, STARTTLS), until the client
//! picks an export or leaves. Owns: the option phase of one connection, and when it moves to
//! TLS. Never: opening VDIs or serving data (the catalog answers what exists; transmission
//! serves it), nor TLS itself (`tls` runs the session this module only starts).
//!
//! With TLS credentials the server is in the protocol's FORCEDTLS mode: before STARTTLS every
//! option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, and EXPORT_NAME (which cannot be
//! refused) closes the connection. STARTTLS is acknowledged, the TLS handshake runs on the
//! same stream, and haggling goes on inside TLS with no second greeting; nothing negotiated
//! before it counts. A second STARTTLS gets NBD_REP_ERR_INVALID. Without credentials STARTTLS
//! gets NBD_REP_ERR_UNSUP and no option ever gets ERR_TLS_REQD.

use super::tls::{Conn, NbdTls};
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

/// Runs the handshake; with `tls`, TLS is required and `s` is upgraded in place by STARTTLS.
/// `Ok(None)`: the client aborted or left cleanly.
pub async fn negotiate<S, C>(
    s: &mut Conn<S>,
    catalog: &C,
    tls: Option<&NbdTls>,
) -> io::Result<Option<Negotiated>>
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
    if tls.is_some() && client_flags & nbd::CLIENT_FLAG_FIXED_NEWSTYLE == 0 {
        // Such a client cannot send STARTTLS; the protocol would have us serve it in plain.
        return Err(bad("TLS is required and the client is not fixed newstyle"));
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
        if tls.is_some() && !s.is_tls() {
            match h.option {
                opt::STARTTLS | opt::ABORT => {}
                // No way to refuse this old option: the connection just closes.
                opt::EXPORT_NAME => return Err(bad("EXPORT_NAME before STARTTLS")),
                other => {
                    let m = "TLS is required: send STARTTLS first";
                    send_err(s, other, rep::ERR_TLS_REQD, m).await?;
                    continue;
                }
            }
        }
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
                let Some(tls) = tls else {
                    let m = "TLS is not configured on this server";
                    send_err(s, h.option, rep::ERR_UNSUP, m).await?;
                    continue;
                };
                if s.is_tls() {
                    let m = "TLS is already running";
                    send_err(s, h.option, rep::ERR_INVALID, m).await?;
                    continue;
                }
                if !data.is_empty() {
                    let m = "STARTTLS takes no data";
                    send_err(s, h.option, rep::ERR_INVALID, m).await?;
                    continue;
                }
                send_err(s, h.option, rep::ACK, "").await?;
                s.start_tls(tls).await?;
                structured = false;
                base_allocation = false;
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

/// A catalog of one export, Bob (fuzzing and tests).
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

/// Fuzz driver: `data` as everything a client sends, against a catalog of one export. Runs
/// the real negotiation on an in-memory pipe; never hangs (the client side closes).
#[doc(hidden)]
pub fn fuzz_negotiate(data: &[u8]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let input = data.to_vec();
        let feeder = tokio::spawn(async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
        let mut server = Conn::Plain(server);
        let _ = negotiate(&mut server, &One, None).await;
        drop(server);
        let _ = feeder.await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::tls::test_pki;
    use proptest::prelude::*;

    fn opt(option: u32, data: &[u8]) -> Vec<u8> {
        let mut b = nbd::IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        b
    }

    /// The client side of a handshake, over any stream (plain or TLS).
    async fn send_opt<S: AsyncWrite + Unpin>(s: &mut S, option: u32, data: &[u8]) {
        s.write_all(&opt(option, data)).await.unwrap();
        s.flush().await.unwrap();
    }

    /// One option reply: (option, type, data).
    async fn reply<S: AsyncRead + Unpin>(s: &mut S) -> (u32, u32, Vec<u8>) {
        assert_eq!(s.read_u64().await.unwrap(), nbd::REPLY_MAGIC);
        let o = s.read_u32().await.unwrap();
        let t = s.read_u32().await.unwrap();
        let mut d = vec![0u8; s.read_u32().await.unwrap() as usize];
        s.read_exact(&mut d).await.unwrap();
        (o, t, d)
    }

    /// Reads replies up to the final one (ACK or an error); returns its type.
    async fn final_reply<S: AsyncRead + Unpin>(s: &mut S, option: u32) -> u32 {
        loop {
            let (o, t, _) = reply(s).await;
            assert_eq!(o, option);
            if t == rep::ACK || t & (1 << 31) != 0 {
                return t;
            }
        }
    }

    async fn greeted(s: &mut tokio::io::DuplexStream) {
        let mut g = [0u8; 18];
        s.read_exact(&mut g).await.unwrap();
        assert_eq!(&g[..8], b"NBDMAGIC");
        s.write_u32(nbd::CLIENT_FLAG_FIXED_NEWSTYLE | nbd::CLIENT_FLAG_NO_ZEROES)
            .await
            .unwrap();
    }

    fn go(name: &str) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        d
    }

    type Served = tokio::task::JoinHandle<io::Result<Option<Negotiated>>>;

    /// A server negotiating on one end of an in-memory pipe; the client gets the other.
    fn serve(tls: Option<NbdTls>) -> (tokio::io::DuplexStream, Served) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let served = tokio::spawn(async move {
            let mut conn = Conn::Plain(server);
            negotiate(&mut conn, &One, tls.as_ref()).await
        });
        (client, served)
    }

    /// A TLS client trusting `ca`, presenting `cert` (PEM certificate, key) if given.
    fn connector(ca: &test_pki::Ca, cert: Option<(String, String)>) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match cert {
            Some((c, k)) => {
                let chain = vec![CertificateDer::from_pem_slice(c.as_bytes()).unwrap()];
                let key = PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap();
                b.with_client_auth_cert(chain, key).unwrap()
            }
            None => b.with_no_client_auth(),
        };
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    }

    fn server_tls(ca: &test_pki::Ca) -> (NbdTls, tempfile::TempDir) {
        let dir = test_pki::server_dir(ca, true);
        (NbdTls::load(dir.path()).unwrap(), dir)
    }

    fn localhost() -> rustls_pki_types::ServerName<'static> {
        rustls_pki_types::ServerName::try_from("localhost").unwrap()
    }

    #[tokio::test]
    async fn options_before_starttls_get_tls_reqd_and_export_name_closes() {
        let ca = test_pki::ca("test CA");
        let (tls, _dir) = server_tls(&ca);
        let (mut c, served) = serve(Some(tls));
        greeted(&mut c).await;
        for (o, d) in [
            (opt::LIST, Vec::new()),
            (opt::STRUCTURED_REPLY, Vec::new()),
            (opt::INFO, go("Bob")),
            (opt::GO, go("Bob")),
            (opt::LIST_META_CONTEXT, Vec::new()),
            (77, Vec::new()),
        ] {
            send_opt(&mut c, o, &d).await;
            assert_eq!(
                reply(&mut c).await,
                (
                    o,
                    rep::ERR_TLS_REQD,
                    b"TLS is required: send STARTTLS first".to_vec()
                ),
                "option {o}"
            );
        }
        // EXPORT_NAME cannot be refused: the server closes without a byte of export data.
        send_opt(&mut c, opt::EXPORT_NAME, b"Bob").await;
        assert!(served.await.unwrap().is_err());
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }

    #[tokio::test]
    async fn haggling_goes_on_inside_tls_and_a_second_starttls_is_invalid() {
        let ca = test_pki::ca("test CA");
        let (tls, _dir) = server_tls(&ca);
        let (mut c, served) = serve(Some(tls));
        greeted(&mut c).await;
        send_opt(&mut c, opt::STARTTLS, b"").await;
        assert_eq!(reply(&mut c).await, (opt::STARTTLS, rep::ACK, Vec::new()));
        let cert = test_pki::leaf(&ca, true);
        let mut t = connector(&ca, Some(cert))
            .connect(localhost(), c)
            .await
            .unwrap();
        // No second greeting: options go on at once, now inside TLS.
        send_opt(&mut t, opt::LIST, b"").await;
        let (_, first, d) = reply(&mut t).await;
        assert_eq!(first, rep::SERVER);
        assert_eq!(&d[4..7], b"Bob");
        assert_eq!(final_reply(&mut t, opt::LIST).await, rep::ACK);
        send_opt(&mut t, opt::STARTTLS, b"").await;
        assert_eq!(final_reply(&mut t, opt::STARTTLS).await, rep::ERR_INVALID);
        send_opt(&mut t, opt::STRUCTURED_REPLY, b"").await;
        assert_eq!(final_reply(&mut t, opt::STRUCTURED_REPLY).await, rep::ACK);
        send_opt(&mut t, opt::GO, &go("Bob")).await;
        assert_eq!(final_reply(&mut t, opt::GO).await, rep::ACK);
        let neg = served.await.unwrap().unwrap().unwrap();
        assert_eq!(neg.name, "Bob");
        assert!(neg.structured);
    }

    #[tokio::test]
    async fn starttls_without_credentials_is_unsupported() {
        let (mut c, served) = serve(None);
        greeted(&mut c).await;
        send_opt(&mut c, opt::STARTTLS, b"").await;
        assert_eq!(final_reply(&mut c, opt::STARTTLS).await, rep::ERR_UNSUP);
        send_opt(&mut c, opt::GO, &go("Bob")).await;
        assert_eq!(final_reply(&mut c, opt::GO).await, rep::ACK);
        assert!(served.await.unwrap().unwrap().is_some());
    }

    #[tokio::test]
    async fn clients_without_a_certificate_of_the_ca_are_refused() {
        let ca = test_pki::ca("test CA");
        let other = test_pki::ca("another CA");
        for cert in [None, Some(test_pki::leaf(&other, true))] {
            let (tls, _dir) = server_tls(&ca);
            let (mut c, served) = serve(Some(tls));
            greeted(&mut c).await;
            send_opt(&mut c, opt::STARTTLS, b"").await;
            assert_eq!(reply(&mut c).await.1, rep::ACK);
            let connected = connector(&ca, cert).connect(localhost(), c).await;
            // TLS 1.3: the client may finish before the server refuses its certificate.
            if let Ok(mut t) = connected {
                let _ = t.write_all(&opt(opt::LIST, b"")).await;
                let _ = t.flush().await;
                let mut b = [0u8; 1];
                assert!(!matches!(t.read(&mut b).await, Ok(n) if n > 0));
            }
            assert!(served.await.unwrap().is_err());
        }
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
