//! NBD over TLS (NBD_OPT_STARTTLS): the server credentials read from a directory laid out as
//! qemu's `tls-creds-x509` server endpoint, and the stream of one connection before and after
//! its upgrade. Owns: reading and checking the credentials (once, at start) and the TLS
//! session. Never: option logic (that is `handshake`, which decides when to upgrade) or
//! anything of the transmission phase, which runs unchanged over either kind of stream.
//!
//! The directory holds `server-cert.pem` (the certificate chain, leaf first), `server-key.pem`
//! (its private key: PKCS#8, PKCS#1 or SEC1) and optionally `ca-cert.pem`. As qemu's default
//! (`verify-peer=on`), when `ca-cert.pem` is present a client must present a certificate
//! signed by one of its CAs; without it, any client that completes the TLS handshake is served
//! (encryption without client authentication, qemu's `verify-peer=off`).

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The CA file: when present, clients must present a certificate it signed.
pub const CA_CERT: &str = "ca-cert.pem";
/// The server's certificate chain.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The server's private key.
pub const SERVER_KEY: &str = "server-key.pem";

/// Why the credentials directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // The causes are in the messages (not error sources): one line, printed once.
    #[error("{}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("{}: not PEM as expected: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: no certificate in it", path.display())]
    NoCert { path: PathBuf },
    #[error("{}: no private key in it", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: unusable CA certificate: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("{} and {} do not go together: {error}", cert.display(), key.display())]
    Keys {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// Server-side TLS of the NBD listeners, built once from the credentials directory.
#[derive(Clone)]
pub struct NbdTls {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Clients must present a certificate signed by the directory's CA.
    pub verify_peer: bool,
}

impl std::fmt::Debug for NbdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdTls")
            .field("verify_peer", &self.verify_peer)
            .finish_non_exhaustive()
    }
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(error) => TlsError::Read {
            path: path.to_path_buf(),
            error,
        },
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    // Opened first, so a missing file reads as such rather than as bad PEM.
    std::fs::metadata(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

impl NbdTls {
    /// Reads and checks the credentials in `dir` (see the module header for the layout).
    pub fn load(dir: &Path) -> Result<NbdTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_path = dir.join(SERVER_CERT);
        let key_path = dir.join(SERVER_KEY);
        let chain = certs(&cert_path)?;
        std::fs::metadata(&key_path).map_err(|error| TlsError::Read {
            path: key_path.clone(),
            error,
        })?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem_error(&key_path, e))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let ca_path = dir.join(CA_CERT);
        let verify_peer = ca_path.exists();
        let builder = if verify_peer {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(&ca_path)? {
                roots.add(c).map_err(|e| TlsError::Ca {
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Ca {
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|error| TlsError::Keys {
                cert: cert_path,
                key: key_path,
                error,
            })?;
        Ok(NbdTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            verify_peer,
        })
    }

    /// Runs the server side of the TLS handshake on `raw`.
    pub async fn accept<S>(&self, raw: S) -> io::Result<tokio_rustls::server::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.acceptor.accept(raw).await
    }
}

/// One connection's stream: plain until STARTTLS, then TLS over the same socket. The
/// handshake upgrades it in place; everything after reads and writes it without knowing which.
pub enum Conn<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
    /// A TLS handshake that failed took the plain stream: nothing can be sent any more.
    Broken,
}

impl<S> Conn<S> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Upgrades a plain stream to TLS (after the STARTTLS reply was flushed). On failure the
    /// connection is left broken: the client was told TLS starts, there is no way back.
    pub async fn start_tls(&mut self, tls: &NbdTls) -> io::Result<()> {
        match std::mem::replace(self, Conn::Broken) {
            Conn::Plain(raw) => {
                *self = Conn::Tls(Box::new(tls.accept(raw).await?));
                Ok(())
            }
            other => {
                *self = other;
                Err(io::Error::other("TLS is already running"))
            }
        }
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Broken => Poll::Ready(Err(broken())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Conn::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
            Conn::Broken => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Broken => Poll::Ready(Ok(())),
        }
    }
}

/// Certificates made at test time (rcgen): a CA, and server and client certificates it signs.
#[cfg(test)]
pub(crate) mod test_pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    pub type Ca = CertifiedIssuer<'static, KeyPair>;

    fn params(sans: Vec<String>, cn: &str) -> CertificateParams {
        let mut p = CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2040, 1, 1);
        p
    }

    pub fn ca(cn: &str) -> Ca {
        let mut p = params(Vec::new(), cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca")
    }

    /// (certificate PEM, key PEM) of a server (localhost, 127.0.0.1) or client certificate.
    pub fn leaf(ca: &Issuer<'_, KeyPair>, client: bool) -> (String, String) {
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut p = params(sans, if client { "client" } else { "localhost" });
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, ca).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// A server credentials directory signed by `ca` (with its ca-cert.pem if `verify`).
    pub fn server_dir(ca: &Ca, verify: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        let (cert, key) = leaf(ca, false);
        std::fs::write(d.path().join(super::SERVER_CERT), cert).expect("write");
        std::fs::write(d.path().join(super::SERVER_KEY), key).expect("write");
        if verify {
            std::fs::write(d.path().join(super::CA_CERT), ca.pem()).expect("write");
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::test_pki::*;
    use super::*;

    #[test]
    fn a_complete_directory_loads() {
        let ca = ca("test CA");
        assert!(
            NbdTls::load(server_dir(&ca, true).path())
                .unwrap()
                .verify_peer
        );
        assert!(
            !NbdTls::load(server_dir(&ca, false).path())
                .unwrap()
                .verify_peer
        );
    }

    #[test]
    fn bad_credentials_are_errors_not_panics() {
        let ca = ca("test CA");
        let d = server_dir(&ca, true);
        let missing = tempfile::tempdir().unwrap();
        let e = NbdTls::load(missing.path()).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert!(e.to_string().contains("server-cert.pem"), "{e}");

        std::fs::write(d.path().join(CA_CERT), "not a certificate").unwrap();
        let e = NbdTls::load(d.path()).unwrap_err();
        assert!(matches!(e, TlsError::NoCert { .. }), "{e}");

        let d = server_dir(&ca, false);
        std::fs::write(
            d.path().join(SERVER_KEY),
            "-----BEGIN PRIVATE KEY-----\n!!\n",
        )
        .unwrap();
        let e = NbdTls::load(d.path()).unwrap_err();
        assert!(
            matches!(e, TlsError::Pem { .. } | TlsError::NoKey { .. }),
            "{e}"
        );

        // The key of another certificate.
        let d = server_dir(&ca, false);
        let (_, other_key) = leaf(&ca, false);
        std::fs::write(d.path().join(SERVER_KEY), other_key).unwrap();
        let e = NbdTls::load(d.path()).unwrap_err();
        assert!(matches!(e, TlsError::Keys { .. }), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
