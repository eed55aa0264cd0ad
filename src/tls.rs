//! TLS termination: building a rustls `ServerConfig` from the files on disk, and the handle that
//! every handshake reads it through.
//!
//! The whole configuration (server chain and key, client CA bundle, CRLs) is built as one unit and
//! published by swapping an `Arc`: rustls fixes CRLs inside the client verifier, so any change to trust
//! material needs a new `ServerConfig` anyway, and a connection keeps the configuration it started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use serde::Serialize;

use crate::certinfo::CertInfo;
use crate::config::{ClientAuth, TlsSettings};

/// Why the TLS configuration could not be built. Each names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: cannot read {path}: {reason}")]
    Read { setting: &'static str, path: PathBuf, reason: String },
    #[error("{setting}: {path} holds no PEM {what}")]
    Empty { setting: &'static str, path: PathBuf, what: &'static str },
    #[error("key: {key} does not belong to the first certificate in {cert} ({reason})")]
    KeyMismatch { cert: PathBuf, key: PathBuf, reason: String },
    #[error("client_ca: {path}: certificate {index} is not a usable CA certificate ({reason})")]
    BadCa { path: PathBuf, index: usize, reason: String },
    #[error("{setting}: {reason}")]
    Verifier { setting: &'static str, reason: String },
}

/// The crypto provider chosen at build time (cargo feature `aws-lc-rs`, the default, or `ring`).
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    return Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return Arc::new(rustls::crypto::ring::default_provider());
    #[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
    compile_error!("enable the cargo feature aws-lc-rs or ring");
}

/// The certificates in force, described for `/certs`, the expiry metrics and the logs.
#[derive(Debug, Clone, Serialize)]
pub struct Certificates {
    /// RFC 3339, UTC.
    pub loaded_at: String,
    pub server_chain: Vec<CertInfo>,
    pub client_ca: Vec<CertInfo>,
}

/// A complete, validated TLS configuration and what it was built from.
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    pub certificates: Arc<Certificates>,
}

/// Reads every file named by `settings` once and builds a complete server configuration
/// (TLS 1.2 and 1.3), with a description of its certificates.
pub fn load(settings: &TlsSettings) -> Result<Loaded, TlsError> {
    let provider = provider();
    let chain = read_certs("cert", &settings.cert)?;
    let server_chain = chain.iter().filter_map(|c| CertInfo::from_der(c)).collect();
    let mut client_ca = Vec::new();
    let key =
        PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| pem_error("key", &settings.key, "private key", e))?;

    let verifier = match settings.client_auth {
        ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
        auth => {
            let ca_path = settings.client_ca.as_deref().ok_or(TlsError::Verifier {
                setting: "client_ca",
                reason: "client certificates are asked for but no client_ca bundle is set".into(),
            })?;
            let mut roots = RootCertStore::empty();
            for (index, ca) in read_certs("client_ca", ca_path)?.into_iter().enumerate() {
                client_ca.extend(CertInfo::from_der(&ca));
                roots.add(ca).map_err(|e| TlsError::BadCa { path: ca_path.into(), index, reason: e.to_string() })?;
            }
            let mut crls = Vec::new();
            for path in &settings.crls {
                crls.extend(read_crls(path)?);
            }
            let mut builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).with_crls(crls);
            if auth == ClientAuth::Optional {
                builder = builder.allow_unauthenticated();
            }
            builder.build().map_err(|e| TlsError::Verifier { setting: "crl", reason: e.to_string() })?
        }
    };

    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Verifier { setting: "tls", reason: e.to_string() })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::KeyMismatch {
            cert: settings.cert.clone(),
            key: settings.key.clone(),
            reason: e.to_string(),
        })?;
    let loaded_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    Ok(Loaded { config: Arc::new(config), certificates: Arc::new(Certificates { loaded_at, server_chain, client_ca }) })
}

fn read_certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(setting, path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(setting, path, "certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { setting, path: path.into(), what: "CERTIFICATE" });
    }
    Ok(certs)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| pem_error("crl", path, "X509 CRL", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("crl", path, "X509 CRL", e))?;
    if crls.is_empty() {
        return Err(TlsError::Empty { setting: "crl", path: path.into(), what: "X509 CRL" });
    }
    Ok(crls)
}

fn pem_error(setting: &'static str, path: &Path, what: &'static str, e: rustls::pki_types::pem::Error) -> TlsError {
    use rustls::pki_types::pem::Error as P;
    match e {
        P::NoItemsFound => TlsError::Empty { setting, path: path.into(), what },
        P::Io(io) => TlsError::Read { setting, path: path.into(), reason: io.to_string() },
        other => TlsError::Read { setting, path: path.into(), reason: format!("malformed PEM: {other}") },
    }
}

/// The current server configuration. Each handshake takes the newest; a reload replaces it whole.
pub struct TlsHandle {
    current: ArcSwap<ServerConfig>,
    certificates: ArcSwap<Certificates>,
}

impl TlsHandle {
    pub fn new(loaded: Loaded) -> Self {
        TlsHandle { current: ArcSwap::new(loaded.config), certificates: ArcSwap::new(loaded.certificates) }
    }

    /// The certificates of the configuration in force.
    pub fn certificates(&self) -> Arc<Certificates> {
        self.certificates.load_full()
    }

    /// An acceptor bound to the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Publishes a new configuration for every later handshake; established connections keep theirs.
    pub fn store(&self, loaded: Loaded) {
        self.current.store(loaded.config);
        self.certificates.store(loaded.certificates);
    }
}

/// Bounded label for a failed handshake, for logs and metrics.
pub fn handshake_failure_label(err: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as R};
    let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<R>()) else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            _ => "io",
        };
    };
    match inner {
        R::NoCertificatesPresented => "no_client_cert",
        R::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
        R::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => "expired",
        R::InvalidCertificate(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
            "not_yet_valid"
        }
        R::InvalidCertificate(CertificateError::Revoked) => "revoked",
        R::InvalidCertificate(_) => "bad_cert",
        R::AlertReceived(_) => "alert_received",
        R::PeerIncompatible(_) => "incompatible",
        _ => "protocol",
    }
}
