//! Certificates made at test time (rcgen) for NBD over TLS, written as qemu and libnbd read
//! them: a server directory (ca-cert.pem, server-cert.pem, server-key.pem) and client
//! directories (ca-cert.pem, client-cert.pem, client-key.pem).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

type Ca = CertifiedIssuer<'static, KeyPair>;

fn params(sans: Vec<String>, cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(sans).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2040, 1, 1);
    p
}

fn new_ca(cn: &str) -> Ca {
    let mut p = params(Vec::new(), cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca")
}

/// (certificate, key) PEM of a server (localhost, 127.0.0.1) or client certificate by `ca`.
fn leaf(ca: &Ca, client: bool) -> (String, String) {
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

fn write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
}

/// The credential directories of one test, under a directory of its own.
pub struct Pki {
    /// `--nbd-tls-creds`: the server's certificate and key, and the CA clients must chain to.
    pub server: PathBuf,
    /// A client certificate of the server's CA (and that CA, to check the server).
    pub client: PathBuf,
    /// A client certificate of another CA; its ca-cert.pem holds both CAs (the server's, to
    /// check the server, and its own, as qemu checks its own certificate before connecting).
    pub stranger: PathBuf,
    /// The server's CA only: no client certificate.
    pub anonymous: PathBuf,
}

impl Pki {
    pub fn new(root: &Path) -> Pki {
        let ca = new_ca("sheepdog test CA");
        let other = new_ca("another CA");
        let (scert, skey) = leaf(&ca, false);
        let (ccert, ckey) = leaf(&ca, true);
        let (ocert, okey) = leaf(&other, true);
        let pki = Pki {
            server: root.join("server"),
            client: root.join("client"),
            stranger: root.join("stranger"),
            anonymous: root.join("anonymous"),
        };
        let ca_pem = ca.pem();
        write(
            &pki.server,
            &[
                ("ca-cert.pem", &ca_pem),
                ("server-cert.pem", &scert),
                ("server-key.pem", &skey),
            ],
        );
        write(
            &pki.client,
            &[
                ("ca-cert.pem", &ca_pem),
                ("client-cert.pem", &ccert),
                ("client-key.pem", &ckey),
            ],
        );
        let both = format!("{ca_pem}{}", other.pem());
        write(
            &pki.stranger,
            &[
                ("ca-cert.pem", &both),
                ("client-cert.pem", &ocert),
                ("client-key.pem", &okey),
            ],
        );
        write(&pki.anonymous, &[("ca-cert.pem", &ca_pem)]);
        pki
    }
}
