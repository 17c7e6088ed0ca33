//! TLS client material read from PEM files: a CA to trust and an optional client identity
//! (certificate and key, for mutual TLS), loaded and checked when the settings load.
//!
//! The files' contents are kept, not just their paths, so that a reload that finds a changed
//! file sees a changed [`crate::MirrorConfig`] and restarts the mirrors concerned, and a file
//! that no longer loads rejects the reload like any other bad setting. Nothing here ever
//! prints a key: `Debug` shows paths only.
//!
//! Besides the material, this module holds the TLS handshake probe: zookeeper-client turns a
//! failed handshake into a silent `ConnectionLoss` and retries until the session timeout, so
//! the mirror performs one handshake of its own (with the same material) to say why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A PEM file as read. Compared by path and content; `Debug` shows the path only (the
/// content may be a private key).
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    path: PathBuf,
    text: String,
}

impl std::fmt::Debug for PemFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

impl PemFile {
    /// Reads the file; an unreadable or non-UTF-8 file is an error naming it.
    pub fn read(path: &Path) -> Result<PemFile, TlsFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TlsFileError::Read { path: path.to_owned(), source })?;
        Ok(PemFile { path: path.to_owned(), text })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A client certificate (chain) and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsIdentity {
    pub cert: PemFile,
    pub key: PemFile,
}

/// What a TLS client needs: the CA its servers' certificates must chain to (the only trust
/// anchors: no system store) and, for mutual TLS, its own identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PemFile,
    pub identity: Option<TlsIdentity>,
}

/// A TLS file that cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {why}", path.display())]
    Bad { path: PathBuf, why: String },
    #[error("the key {} does not belong to the certificate {}: {why}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf, why: String },
}

impl TlsFiles {
    /// Reads and checks the files: the CA holds at least one certificate, the client
    /// certificate parses and the key is its own.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<TlsFiles, TlsFileError> {
        let ca = PemFile::read(ca)?;
        let identity = match identity {
            Some((cert, key)) => Some(TlsIdentity { cert: PemFile::read(cert)?, key: PemFile::read(key)? }),
            None => None,
        };
        let files = TlsFiles { ca, identity };
        files.client_config()?;
        Ok(files)
    }

    /// Every file path, for the reload watcher.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.ca.path.clone()];
        if let Some(identity) = &self.identity {
            paths.extend([identity.cert.path.clone(), identity.key.path.clone()]);
        }
        paths
    }

    /// The rustls configuration these files make: server certificates must chain to the CA
    /// and name the host connected to.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsFileError> {
        let roots = self.roots()?;
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let (chain, key) = identity.parse()?;
                builder.with_client_auth_cert(chain, key).map_err(|e| TlsFileError::Mismatch {
                    cert: identity.cert.path.clone(),
                    key: identity.key.path.clone(),
                    why: e.to_string(),
                })?
            }
        };
        Ok(Arc::new(config))
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsFileError> {
        ca_roots(self.ca.text.as_bytes()).map_err(|problem| {
            let why = match problem {
                CaProblem::NotPem(e) => format!("not a PEM CA certificate: {e}"),
                CaProblem::Unusable(e) => format!("not a usable CA certificate: {e}"),
                CaProblem::Empty => "holds no CERTIFICATE block: a CA file is one or more PEM certificates".to_owned(),
            };
            TlsFileError::Bad { path: self.ca.path.clone(), why }
        })
    }

    /// The same material as zookeeper-client's options.
    pub fn zk_options(&self) -> Result<zookeeper_client::TlsOptions, TlsFileError> {
        let options = zookeeper_client::TlsOptions::new()
            .with_pem_ca(&self.ca.text)
            .map_err(|e| TlsFileError::Bad { path: self.ca.path.clone(), why: e.to_string() })?;
        match &self.identity {
            None => Ok(options),
            Some(identity) => {
                options.with_pem_identity(&identity.cert.text, &identity.key.text).map_err(|e| TlsFileError::Mismatch {
                    cert: identity.cert.path.clone(),
                    key: identity.key.path.clone(),
                    why: e.to_string(),
                })
            }
        }
    }

    /// Says which files were used, for messages: `CA ca.pem` or `CA ca.pem, client certificate
    /// client.pem`.
    pub fn describe(&self) -> String {
        match &self.identity {
            None => format!("CA {}", self.ca.path.display()),
            Some(identity) => {
                format!("CA {}, client certificate {}", self.ca.path.display(), identity.cert.path.display())
            }
        }
    }
}

impl TlsIdentity {
    fn parse(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsFileError> {
        let bad = |path: &PathBuf, why: String| TlsFileError::Bad { path: path.clone(), why };
        client_identity(self.cert.text.as_bytes(), self.key.text.as_bytes()).map_err(|problem| match problem {
            IdentityProblem::CertNotPem(e) => bad(&self.cert.path, format!("not a PEM certificate: {e}")),
            IdentityProblem::NoCertificate => bad(&self.cert.path, "holds no CERTIFICATE block".to_owned()),
            IdentityProblem::Key(why) => bad(&self.key.path, why),
            // A pair rustls cannot use is reported as building the client config reports it.
            IdentityProblem::Mismatch(why) | IdentityProblem::Unusable(why) => {
                TlsFileError::Mismatch { cert: self.cert.path.clone(), key: self.key.path.clone(), why }
            }
        })
    }
}

/// What is wrong with a CA file; each side words it with the file and setting it names.
pub(crate) enum CaProblem {
    NotPem(String),
    Unusable(String),
    Empty,
}

/// The trust anchors of a CA file (one or more PEM certificates): both sides' one reader.
pub(crate) fn ca_roots(pem: &[u8]) -> Result<rustls::RootCertStore, CaProblem> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| CaProblem::NotPem(e.to_string()))?;
        roots.add(cert).map_err(|e| CaProblem::Unusable(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(CaProblem::Empty);
    }
    Ok(roots)
}

/// What is wrong with a client identity (certificate and key).
pub(crate) enum IdentityProblem {
    CertNotPem(String),
    NoCertificate,
    /// The key does not load ([`private_key`]'s reason).
    Key(String),
    /// The key is not the one the certificate was issued for.
    Mismatch(String),
    /// The pair loads but rustls cannot use it (an unsupported key type, say).
    Unusable(String),
}

/// A client certificate chain and its key, checked as rustls checks them when it builds a
/// client config (the key loads and is the certificate's): both sides' one reader, used at
/// load so that a mismatch is a settings error naming both files, not a handshake failure.
pub(crate) fn client_identity(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), IdentityProblem> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityProblem::CertNotPem(e.to_string()))?;
    if chain.is_empty() {
        return Err(IdentityProblem::NoCertificate);
    }
    let key = private_key(key_pem).map_err(IdentityProblem::Key)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => IdentityProblem::Mismatch(e.to_string()),
        other => IdentityProblem::Unusable(other.to_string()),
    })?;
    Ok((chain, key))
}

/// The private key in a PEM text (PKCS#8, PKCS#1 RSA or SEC1 EC), both sides' one reader. An
/// encrypted key is said to be one: rustls cannot decrypt it, and "no key found" would send an
/// operator looking for the wrong mistake. The error never quotes the text.
pub(crate) fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err("the key is encrypted, which zkmirror cannot use: give it unencrypted, readable only by \
                    zkmirror (a systemd credential, a file of mode 0600)"
            .to_owned());
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no private key in it (expected -----BEGIN PRIVATE KEY----- or an RSA/EC key)".to_owned()
        }
        other => format!("not a PEM private key: {other}"),
    })
}

/// Performs one TLS handshake with `host:port` (then a four-letter word, so that a server that
/// refuses the client certificate after a TLS 1.3 handshake says so) and explains a failure.
/// `Ok` when the server answered over TLS.
pub async fn probe_handshake(
    config: Arc<rustls::ClientConfig>,
    files: &TlsFiles,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?} is not a host name: {e}"))?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut stream = connector.connect(name, tcp).await.map_err(|e| explain(&e, files))?;
        // A server that refuses the client's certificate does so after a TLS 1.3 client has
        // finished its handshake: the refusal is the answer to the first request.
        stream.write_all(b"isro").await.map_err(|e| explain(&e, files))?;
        let mut answer = [0u8; 64];
        stream.read(&mut answer).await.map_err(|e| explain(&e, files))?;
        Ok(())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no TLS handshake within {timeout:?}")),
    }
}

/// One line on why a handshake failed, naming the file to look at.
fn explain(error: &std::io::Error, files: &TlsFiles) -> String {
    let ca = files.ca.path.display();
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => format!(
                "the server closed the connection during the TLS handshake ({error}): is this its plain clientPort \
                 rather than its secureClientPort?"
            ),
            _ => format!("TLS handshake failed: {error}"),
        };
    };
    use rustls::CertificateError as C;
    match tls {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            format!("its certificate is not signed by the CA in {ca} ({tls}): wrong CA?")
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            format!("its certificate has expired ({tls})")
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            format!("its certificate is not valid yet ({tls}): check its notBefore and this machine's clock")
        }
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("hostname mismatch: {tls}")
        }
        rustls::Error::AlertReceived(alert) => match &files.identity {
            Some(identity) => format!(
                "the server refused the TLS session (alert {alert:?}): does it trust the client certificate {}?",
                identity.cert.path.display()
            ),
            None => format!(
                "the server refused the TLS session (alert {alert:?}): does it require a client certificate \
                 (--zk-tls-cert/--zk-tls-key)?"
            ),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the server does not speak TLS on this port ({tls}): is this its plain clientPort?")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// Whether `host:port` answers a TLS ClientHello with a TLS handshake: asked when a plain
/// session fails although the port accepts connections, to say "this port wants TLS" instead
/// of a timeout. No certificate is trusted and nothing is sent after the hello.
pub async fn speaks_tls(host: &str, port: u16, timeout: Duration) -> bool {
    let Ok(name) = ServerName::try_from(host.to_owned()) else {
        return false;
    };
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RefuseAll::new()))
        .with_no_client_auth();
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let result = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await;
        // Reaching the certificate check means the server answered with a TLS handshake.
        let error = result.err()?;
        let tls = error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())?;
        matches!(tls, rustls::Error::General(why) if why == RefuseAll::REASON).then_some(())
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(())))
}

/// A verifier that refuses every certificate: [`speaks_tls`] only needs to see one offered.
#[derive(Debug)]
struct RefuseAll {
    schemes: Vec<rustls::SignatureScheme>,
}

impl RefuseAll {
    const REASON: &'static str = "zkmirror: probing whether the port speaks TLS";

    fn new() -> RefuseAll {
        let schemes = rustls::crypto::CryptoProvider::get_default()
            .map(|p| p.signature_verification_algorithms.supported_schemes())
            .unwrap_or_else(|| {
                rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.supported_schemes()
            });
        RefuseAll { schemes }
    }
}

impl rustls::client::danger::ServerCertVerifier for RefuseAll {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(RefuseAll::REASON.to_owned()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(RefuseAll::REASON.to_owned()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(RefuseAll::REASON.to_owned()))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

#[cfg(test)]
mod key_tests {
    use super::private_key;

    #[test]
    fn an_encrypted_key_is_called_encrypted_and_never_quoted() {
        let pem = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let why = private_key(pem).expect_err("refused");
        assert!(why.contains("encrypted") && !why.contains("MIIF"), "{why}");
        let legacy = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert!(private_key(legacy).expect_err("refused").contains("encrypted"));
        assert!(private_key(b"").expect_err("refused").contains("no private key"));
    }
}
