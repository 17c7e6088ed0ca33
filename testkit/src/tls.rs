//! A throwaway certificate authority for TLS tests: a CA, a server certificate for the loopback
//! servers, a client certificate, and the broken certificates the bad-input tests need, all
//! generated at test time into a temporary directory. Nothing that can expire is committed.
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM, which rustls, OpenSSL (redis-server) and ZooKeeper's PEM
//! key store loader all read.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How a certificate should be made; the default is a valid one for `localhost` and 127.0.0.1.
#[derive(Clone, Debug)]
pub struct CertSpec {
    /// Subject alternative names (DNS names or IP addresses).
    pub names: Vec<String>,
    /// The subject's common name, which ZooKeeper's `x509` scheme takes as the client's id.
    pub common_name: String,
    /// Valid from/to (years); `None` keeps rcgen's wide default window.
    pub not_before_year: Option<i32>,
    pub not_after_year: Option<i32>,
}

impl CertSpec {
    /// A certificate valid for the loopback servers, named `common_name`.
    pub fn loopback(common_name: &str) -> CertSpec {
        CertSpec {
            names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            common_name: common_name.to_owned(),
            not_before_year: None,
            not_after_year: None,
        }
    }
}

/// A CA and what it issued, in a directory removed on drop.
pub struct Pki {
    dir: TempDir,
    ca_key: KeyPair,
    ca_params: CertificateParams,
    /// The CA certificate (PEM): what clients and servers trust.
    pub ca: PathBuf,
    /// The servers' certificate, for `localhost` and 127.0.0.1.
    pub server: CertFiles,
    /// A client identity (common name `zkmirror`) for mutual TLS.
    pub client: CertFiles,
}

impl Pki {
    /// Generates a new CA with a server and a client certificate.
    pub fn generate() -> Pki {
        Pki::generate_named("zkmirror test CA")
    }

    /// Like [`Pki::generate`], with the CA's common name given (two CAs in one test differ).
    pub fn generate_named(ca_name: &str) -> Pki {
        let dir = tempfile::Builder::new().prefix("zkmirror-pki-").tempdir().expect("temp dir for certificates");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let ca = dir.path().join("ca.pem");
        fs::write(&ca, ca_cert.pem()).expect("write CA");
        let placeholder = CertFiles { cert: PathBuf::new(), key: PathBuf::new() };
        let mut pki = Pki { dir, ca_key, ca_params, ca, server: placeholder.clone(), client: placeholder };
        pki.server = pki.issue("server", &CertSpec::loopback("localhost"));
        pki.client = pki.issue("client", &CertSpec::loopback("zkmirror"));
        pki
    }

    /// The directory holding every file (for files a test writes beside them).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a certificate signed by this CA, written as `NAME.pem` and `NAME.key`.
    pub fn issue(&self, name: &str, spec: &CertSpec) -> CertFiles {
        let key = KeyPair::generate().expect("certificate key");
        let mut params = CertificateParams::new(spec.names.clone()).expect("certificate names");
        params.distinguished_name.push(DnType::CommonName, spec.common_name.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if let Some(year) = spec.not_before_year {
            params.not_before = date_time_ymd(year, 1, 1);
        }
        if let Some(year) = spec.not_after_year {
            params.not_after = date_time_ymd(year, 1, 1);
        }
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("sign certificate");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        fs::write(&files.cert, cert.pem()).expect("write certificate");
        fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A key that belongs to no certificate here: paired with a certificate, a mismatch.
    pub fn stray_key(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.key"));
        fs::write(&path, KeyPair::generate().expect("stray key").serialize_pem()).expect("write stray key");
        path
    }
}

/// Like `servers::exchange`, over TLS: a readiness probe for a TLS server whatever certificate
/// it presents (expired, another CA's, another host's: the bad-input tests start such
/// servers), so the server's certificate is not verified here; `client` is presented when the
/// server requires one. Returns what the server sent until it closed or went quiet for a
/// second.
pub(crate) fn exchange_tls(
    addr: std::net::SocketAddr,
    client: Option<&CertFiles>,
    request: &[u8],
    read_until: impl Fn(&[u8]) -> bool,
) -> std::io::Result<String> {
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let config = match client {
        Some(files) => {
            let chain = rustls::pki_types::CertificateDer::pem_file_iter(&files.cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(std::io::Error::other)?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key).map_err(std::io::Error::other)?;
            builder.with_client_auth_cert(chain, key).map_err(std::io::Error::other)?
        }
        None => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let connection = rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let stream = crate::servers::short_lived(addr)?;
    crate::servers::converse(&mut rustls::StreamOwned::new(connection, stream), request, read_until)
}

use rustls::pki_types::pem::PemObject;

/// Accepts any server certificate (the probe's only; never zkmirror's), still checking the
/// handshake's signatures so that the connection is real TLS.
#[derive(Debug)]
struct AnyServer(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
