//! TLS for every veem connection: the one crate that builds rustls configurations and
//! certificates. It loads PEM files, makes the server's configuration (with optional client
//! certificates for host agents), the clients' (system roots plus a site CA, and a client
//! certificate where the peer asks for one), and `veem tls init`'s certificates. It never opens a
//! socket: the server, the agent and the client bring their own (the server hands its accepted
//! connections to [`Acceptor`]).
//!
//! Every configuration is built with the `ring` provider passed explicitly
//! (`builder_with_provider`), so nothing here depends on, or installs, a process-wide default.

mod site;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

pub use rustls;
pub use site::{init_site, SiteFiles, SiteSpec};
/// The stream of an accepted TLS connection.
pub use tokio_rustls::server::TlsStream;

/// What can go wrong loading TLS material or building a configuration from it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read PEM from {origin}")]
    Pem {
        origin: PemOrigin,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{origin} holds no PEM certificate")]
    NoCertificate { origin: PemOrigin },
    #[error("{origin} holds no PEM private key")]
    NoPrivateKey { origin: PemOrigin },
    #[error("the CA of {origin} holds a certificate that cannot be a trust anchor")]
    BadCa {
        origin: PemOrigin,
        #[source]
        source: rustls::Error,
    },
    #[error("the certificate and key do not make a TLS configuration")]
    Config(#[source] rustls::Error),
    #[error("the client CA {path} cannot verify client certificates")]
    ClientVerifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("cannot make a certificate")]
    Generate(#[source] rcgen::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} exists: the directory already holds a site CA; move it away to make a new site"
    )]
    SiteExists { path: PathBuf },
    #[error("{name:?} cannot name an agent: use letters, digits, '-', '_' and '.'")]
    BadAgentName { name: String },
}

/// Where PEM text came from: a file, or a field of a request or record (a site's `ca_pem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemOrigin {
    File(PathBuf),
    Field(&'static str),
}

impl std::fmt::Display for PemOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemOrigin::File(path) => write!(f, "{}", path.display()),
            PemOrigin::Field(field) => write!(f, "the {field} given"),
        }
    }
}

/// The crypto provider of every configuration veem builds (ring; never aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange; ring is
    // the workspace's choice all the same (aws-lc needs cmake and a C toolchain to build).
    #[allow(deprecated)]
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Every certificate of a PEM file, in order (a chain: the leaf first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let origin = PemOrigin::File(path.to_owned());
    let pem = |source| TlsError::Pem {
        origin: origin.clone(),
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    non_empty(certificates, origin)
}

/// Every certificate of PEM text, in order, the text being `origin`.
pub fn certificates_in(
    text: &str,
    origin: PemOrigin,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            origin: origin.clone(),
            source,
        })?;
    non_empty(certificates, origin)
}

fn non_empty(
    certificates: Vec<CertificateDer<'static>>,
    origin: PemOrigin,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { origin });
    }
    Ok(certificates)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|source| key_error(source, PemOrigin::File(path.to_owned())))
}

fn key_error(source: rustls::pki_types::pem::Error, origin: PemOrigin) -> TlsError {
    match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey { origin },
        source => TlsError::Pem { origin, source },
    }
}

/// A certificate chain and its private key: a server's, or a client's (an agent's, a peer
/// site's).
#[derive(Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads a PEM chain and its key; whether they belong together is checked when a
    /// configuration is built from them.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            chain: load_certificates(cert)?,
            key: load_private_key(key)?,
        })
    }

    /// A PEM chain and its key given as text (a site's `client_cert_pem` and `client_key_pem`).
    pub fn from_pem(cert: &str, key: &str) -> Result<Self, TlsError> {
        Ok(Self {
            chain: certificates_in(cert, PemOrigin::Field("client_cert_pem"))?,
            key: PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|source| key_error(source, PemOrigin::Field("client_key_pem")))?,
        })
    }
}

/// Trust anchors from a PEM file.
fn add_roots(
    certificates: Vec<CertificateDer<'static>>,
    origin: &PemOrigin,
    roots: &mut RootCertStore,
) -> Result<(), TlsError> {
    for certificate in certificates {
        roots.add(certificate).map_err(|source| TlsError::BadCa {
            origin: origin.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The server's configuration: `identity` presented to clients (HTTP/2 and HTTP/1.1 offered
/// by ALPN). With `client_ca`, a client may present a certificate, which must then be signed by
/// that CA (else the handshake fails); a client without one is still let in, since callers with
/// a bearer token have none.
pub fn server_config(
    identity: &Identity,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let origin = PemOrigin::File(path.to_owned());
            add_roots(load_certificates(path)?, &origin, &mut roots)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: path.to_owned(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The system's trust anchors, read once per process (reading them takes a while, and they do
/// not change under a running process). Unreadable ones are left out: a server they would have
/// vouched for fails its handshake with a clear "unknown issuer".
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            Arc::new(roots)
        })
        .clone()
}

/// A client's configuration: servers are verified against the system's roots plus the
/// certificates of `ca_file`; `identity`, when given, is presented to a server that asks for a
/// client certificate (a host agent's, a peer site's). No ALPN: the clients speak HTTP/1.1
/// (WebSockets need it).
pub fn client_config(
    ca_file: Option<&Path>,
    identity: Option<&Identity>,
) -> Result<ClientConfig, TlsError> {
    let ca = match ca_file {
        Some(path) => Some((load_certificates(path)?, PemOrigin::File(path.to_owned()))),
        None => None,
    };
    client_config_with(ca, identity)
}

/// [`client_config`] with the CA given as PEM text (a site's `ca_pem`).
pub fn client_config_pem(
    ca_pem: Option<&str>,
    identity: Option<&Identity>,
) -> Result<ClientConfig, TlsError> {
    let origin = PemOrigin::Field("ca_pem");
    let ca = match ca_pem {
        Some(text) => Some((certificates_in(text, origin.clone())?, origin)),
        None => None,
    };
    client_config_with(ca, identity)
}

fn client_config_with(
    ca: Option<(Vec<CertificateDer<'static>>, PemOrigin)>,
    identity: Option<&Identity>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::clone(&system_roots());
    if let Some((certificates, origin)) = ca {
        add_roots(certificates, &origin, &mut roots)?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots);
    match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(TlsError::Config),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A client certificate the server verified against its client CA during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    der: CertificateDer<'static>,
}

impl ClientCertificate {
    /// The SHA-256 of the certificate (hex), to name it in logs.
    pub fn fingerprint(&self) -> String {
        hex(&Sha256::digest(self.der.as_ref()))
    }

    /// Whether the certificate was made for `name`: its subject's common name or one of its DNS
    /// names is `name` (`veem tls init --agent h4` makes one whose common name is `h4`). A
    /// host agent may connect only under a name its certificate holds, so one host's
    /// certificate cannot pass for another host.
    pub fn is_for(&self, name: &str) -> bool {
        use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
        let Ok((_, certificate)) = X509Certificate::from_der(self.der.as_ref()) else {
            return false;
        };
        let common_name = certificate
            .subject()
            .iter_common_name()
            .any(|cn| cn.as_str() == Ok(name));
        let dns_name = certificate
            .subject_alternative_name()
            .ok()
            .flatten()
            .is_some_and(|san| {
                san.value
                    .general_names
                    .iter()
                    .any(|general| matches!(general, GeneralName::DNSName(dns) if *dns == name))
            });
        common_name || dns_name
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The server side of the handshake, for connections the server accepted itself.
#[derive(Clone)]
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl Acceptor {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            inner: tokio_rustls::TlsAcceptor::from(config),
        }
    }

    /// Completes the handshake on `io`; the client's certificate, when it presented one, was
    /// verified against the client CA (a certificate of another CA fails the handshake).
    pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: IO,
    ) -> std::io::Result<(TlsStream<IO>, Option<ClientCertificate>)> {
        let stream = self.inner.accept(io).await?;
        let client = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|der| ClientCertificate {
                der: der.clone().into_owned(),
            });
        Ok((stream, client))
    }
}

#[cfg(test)]
mod tests;
