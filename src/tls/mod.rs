//! TLS termination: building a rustls `ServerConfig` from the files on disk, and the handle that
//! every handshake reads it through.
//!
//! The whole configuration (server chain and key, client CA bundle, CRLs) is built as one unit and
//! published by swapping an `Arc`: rustls fixes CRLs inside the client verifier, so any change to trust
//! material needs a new `ServerConfig` anyway, and a connection keeps the configuration it started with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

pub(crate) mod ocsp;
pub(crate) mod resumption;
mod settings;

use serde::Serialize;

use crate::x509::cert::{CertInfo, Validity};
use resumption::{CheckedSessions, CheckedTickets};
pub use settings::{ClientAuth, SniCert, TlsSettings};

/// Why the TLS configuration could not be built. Each names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: cannot read {path}: {reason}")]
    Read { setting: &'static str, path: PathBuf, reason: String },
    #[error("{setting}: {path} is not valid PEM: {reason}")]
    Pem { setting: &'static str, path: PathBuf, reason: String },
    #[error("{setting}: {path} holds no PEM {what}")]
    Empty { setting: &'static str, path: PathBuf, what: &'static str },
    #[error("{setting}: {path}: certificate {index} does not parse as X.509 ({reason})")]
    BadCert { setting: &'static str, path: PathBuf, index: usize, reason: String },
    #[error("key: {key} does not belong to the first certificate in {cert} ({reason})")]
    KeyMismatch { cert: PathBuf, key: PathBuf, reason: String },
    #[error("client_ca: {path}: certificate {index} is not a usable CA certificate ({reason})")]
    BadCa { path: PathBuf, index: usize, reason: String },
    #[error("cert: {path}: the server certificate expired at {not_after} (refuse_expired is set)")]
    Expired { path: PathBuf, not_after: String },
    #[error("cert: {path}: the server certificate is not valid before {not_before} (refuse_expired is set)")]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("{setting}: {reason}")]
    Verifier { setting: &'static str, reason: String },
    #[error("ocsp_staple: {path}: {reason}")]
    Ocsp { path: PathBuf, reason: String },
}

impl TlsError {
    /// Bounded label for logs and metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            TlsError::Read { .. } => "read",
            TlsError::Pem { .. } => "pem",
            TlsError::Empty { .. } => "empty",
            TlsError::BadCert { .. } => "bad_cert",
            TlsError::KeyMismatch { .. } => "key_mismatch",
            TlsError::BadCa { .. } => "bad_ca",
            TlsError::Expired { .. } => "expired",
            TlsError::NotYetValid { .. } => "not_yet_valid",
            TlsError::Verifier { .. } => "verifier",
            TlsError::Ocsp { .. } => "ocsp",
        }
    }
}

/// TLS 1.2 sessions remembered for clients that resume by session ID rather than by ticket.
const SESSION_CACHE_ENTRIES: usize = 1024;

/// Ticket keys for stateless resumption, rotated by rustls every 6 hours.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::Ticketer::new();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return rustls::crypto::ring::Ticketer::new();
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

/// One configured file's bytes and the setting that names it.
#[derive(Debug, Clone)]
pub(crate) struct TlsFile {
    pub(crate) setting: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
}

impl TlsFile {
    /// Reads `path` through any symlinks as they are now: a Kubernetes secret swaps its `..data`
    /// link, so a path resolved at start-up would keep pointing at a deleted directory.
    fn read(setting: &'static str, path: &Path) -> Result<TlsFile, TlsError> {
        let bytes = std::fs::read(path).map_err(|e| TlsError::Read {
            setting,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(TlsFile { setting, path: path.to_path_buf(), bytes })
    }

    pub(crate) fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes).into()
    }
}

/// Every file the TLS configuration is built from, read in one pass so that what a reload hashes is
/// exactly what it builds.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub(crate) cert: TlsFile,
    pub(crate) key: TlsFile,
    /// Read only when client certificates are asked for.
    pub(crate) client_ca: Option<TlsFile>,
    pub(crate) crls: Vec<TlsFile>,
    /// (cert, key) of each SNI entry, in configuration order.
    pub(crate) sni: Vec<(TlsFile, TlsFile)>,
    /// The DER OCSP response stapled with `cert`; read with it so that a reload picks up a new one.
    pub(crate) ocsp_staple: Option<TlsFile>,
}

impl TlsFiles {
    pub fn read(settings: &TlsSettings) -> Result<TlsFiles, TlsError> {
        let client_ca = match (settings.client_auth, &settings.client_ca) {
            (ClientAuth::None, _) => None,
            (_, Some(path)) => Some(TlsFile::read("client_ca", path)?),
            (_, None) => {
                return Err(TlsError::Verifier {
                    setting: "client_ca",
                    reason: "client certificates are asked for but no client_ca bundle is set".into(),
                })
            }
        };
        let crls = match settings.client_auth {
            ClientAuth::None => Vec::new(),
            _ => settings.crls.iter().map(|p| TlsFile::read("crl", p)).collect::<Result<_, _>>()?,
        };
        let sni = settings
            .sni
            .iter()
            .map(|s| Ok((TlsFile::read("sni cert", &s.cert)?, TlsFile::read("sni key", &s.key)?)))
            .collect::<Result<_, TlsError>>()?;
        Ok(TlsFiles {
            cert: TlsFile::read("cert", &settings.cert)?,
            key: TlsFile::read("key", &settings.key)?,
            client_ca,
            crls,
            sni,
            ocsp_staple: settings.ocsp_staple.as_ref().map(|p| TlsFile::read("ocsp_staple", p)).transpose()?,
        })
    }

    /// Every file, in a fixed order (cert, key, client CA, CRLs, SNI certs and keys, OCSP staple).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &TlsFile> {
        [&self.cert, &self.key]
            .into_iter()
            .chain(self.client_ca.as_ref())
            .chain(self.crls.iter())
            .chain(self.sni.iter().flat_map(|(c, k)| [c, k]))
            .chain(self.ocsp_staple.as_ref())
    }

    /// With the CRLs `cache` holds added to the CRL files (when client certificates are asked for).
    pub fn with_fetched(mut self, cache: &crate::crl::CrlCache) -> TlsFiles {
        if self.client_ca.is_some() {
            self.crls.extend(cache.files());
        }
        self
    }

    /// The files that decide which client certificates are trusted: the CA bundle and the CRLs.
    pub(crate) fn client_trust(&self) -> impl Iterator<Item = &TlsFile> {
        self.client_ca.iter().chain(self.crls.iter())
    }
}

/// The certificates in force, described for `/certs` and the expiry metrics.
#[derive(Debug, Clone, Serialize)]
pub struct Certificates {
    /// RFC 3339, UTC.
    pub(crate) loaded_at: String,
    pub(crate) server_chain: Vec<CertInfo>,
    pub(crate) client_ca: Vec<CertInfo>,
    /// Every certificate of every SNI entry's chain, in configuration order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) sni: Vec<CertInfo>,
    /// Every CRL in force (files, then fetched ones).
    pub crls: Vec<crate::crl::CrlInfo>,
    /// The OCSP response stapled with the server certificate, when `ocsp_staple` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsp: Option<OcspInfo>,
}

/// The stapled OCSP response, described.
#[derive(Debug, Clone, Serialize)]
pub struct OcspInfo {
    /// RFC 3339, UTC.
    pub this_update: String,
    /// RFC 3339, UTC; absent when the response has none (then it is stapled for as long as it is loaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_update: Option<String>,
    /// good or unknown (a revoked response for this certificate is not loaded).
    pub status: &'static str,
    /// The serial number the response is about (hex, as for the certificates).
    pub serial: String,
    /// Whether that is the server certificate's; a response for another certificate is never stapled.
    pub matches_certificate: bool,
    pub path: PathBuf,
    /// When to staple; none when the response is about another certificate.
    #[serde(skip)]
    pub(crate) window: Option<ocsp::StapleWindow>,
}

impl OcspInfo {
    /// Whether the response is stapled at this moment (for this certificate, between thisUpdate and
    /// nextUpdate).
    pub fn served_now(&self) -> bool {
        self.window.is_some_and(|w| w.serves_at(unix_now()))
    }
}

/// A built server configuration, the leaf certificate it presents, and all its certificates described.
pub struct Loaded {
    pub(crate) config: Arc<ServerConfig>,
    /// The server certificate (the first of `certificates.server_chain`).
    pub leaf: CertInfo,
    pub certificates: Arc<Certificates>,
    /// The client verifier inside `config` (rustls keeps its own private), for re-checking the
    /// established connections' chains when trust changes.
    pub(crate) verifier: Arc<dyn ClientCertVerifier>,
}

impl Loaded {
    /// Carries `previous`'s ticket keys and TLS 1.2 session cache into this configuration, so devices
    /// keep resuming across a reload. Only for a reload that left client trust (CA bundle, CRLs) as it
    /// was: a resumed session skips chain verification.
    pub(crate) fn keep_sessions_of(mut self, previous: &ServerConfig) -> Loaded {
        // Just built and not yet shared: make_mut does not clone.
        let config = Arc::make_mut(&mut self.config);
        config.ticketer = previous.ticketer.clone();
        config.session_storage = previous.session_storage.clone();
        self
    }
}

/// Validates `files` and builds a complete server configuration from them: every PEM parses, every
/// chain certificate is X.509, the key matches the leaf, the CA bundle and CRLs parse, and (with
/// `refuse_expired`) the leaf is within its validity period.
pub fn build(settings: &TlsSettings, files: &TlsFiles) -> Result<Loaded, TlsError> {
    let provider = provider();
    let chain = parse_certs(&files.cert)?;
    let server_chain = describe_chain(&files.cert, &chain)?;
    let leaf = leaf_of(&files.cert, &server_chain, settings.refuse_expired)?;
    let mut client_ca = Vec::new();
    let mut crl_infos = Vec::new();
    let key = PrivateKeyDer::from_pem_slice(&files.key.bytes)
        .map_err(|e| pem_error("key", &files.key.path, "private key", e))?;

    let verifier = match (settings.client_auth, &files.client_ca) {
        (ClientAuth::None, _) => WebPkiClientVerifier::no_client_auth(),
        (_, None) => {
            return Err(TlsError::Verifier {
                setting: "client_ca",
                reason: "client certificates are asked for but no client_ca bundle is set".into(),
            })
        }
        (auth, Some(ca_file)) => {
            let mut roots = RootCertStore::empty();
            for (index, ca) in parse_certs(ca_file)?.into_iter().enumerate() {
                client_ca.extend(CertInfo::from_der(&ca));
                roots.add(ca).map_err(|e| TlsError::BadCa {
                    path: ca_file.path.clone(),
                    index,
                    reason: e.to_string(),
                })?;
            }
            let mut crls = Vec::new();
            for file in &files.crls {
                let parsed = parse_crls(file)?;
                let source = file.path.display().to_string();
                crl_infos.extend(parsed.iter().filter_map(|der| crate::crl::describe(der, &source)));
                crls.extend(parsed);
            }
            let mut builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).with_crls(crls);
            if settings.crl_fetch.stale == crate::crl::CrlStale::Refuse {
                builder = builder.enforce_revocation_expiration();
            }
            if auth == ClientAuth::Optional {
                builder = builder.allow_unauthenticated();
            }
            builder.build().map_err(|e| TlsError::Verifier { setting: "crl", reason: e.to_string() })?
        }
    };

    // Checks that the key's public half is the leaf's (rustls 0.23 `CertifiedKey::from_der`).
    let certified = |cert: &TlsFile, key_file: &TlsFile, chain, key| {
        CertifiedKey::from_der(chain, key, &provider).map(Arc::new).map_err(|e| TlsError::KeyMismatch {
            cert: cert.path.clone(),
            key: key_file.path.clone(),
            reason: e.to_string(),
        })
    };
    let leaf_der = chain.first().cloned();
    let default = certified(&files.cert, &files.key, chain, key)?;
    let (stapled, ocsp_info) = match &files.ocsp_staple {
        None => (None, None),
        Some(file) => {
            let info = check_staple(file, leaf_der.as_deref().unwrap_or_default())?;
            let stapled = info.window.map(|window| {
                let mut with_staple = CertifiedKey::clone(&default);
                with_staple.ocsp = Some(file.bytes.clone());
                Stapled { key: Arc::new(with_staple), window }
            });
            (stapled, Some(info))
        }
    };
    let mut sni = Vec::new();
    let mut resolver = SniResolver { exact: HashMap::new(), wildcard: HashMap::new(), default, stapled };
    for ((cert_file, key_file), entry) in files.sni.iter().zip(&settings.sni) {
        let chain = parse_certs(cert_file)?;
        let described = describe_chain(cert_file, &chain)?;
        leaf_of(cert_file, &described, settings.refuse_expired)?;
        sni.extend(described);
        let key = PrivateKeyDer::from_pem_slice(&key_file.bytes)
            .map_err(|e| pem_error(key_file.setting, &key_file.path, "private key", e))?;
        let ck = certified(cert_file, key_file, chain, key)?;
        for name in &entry.names {
            match name.strip_prefix("*.") {
                Some(suffix) => resolver.wildcard.insert(suffix.to_string(), ck.clone()),
                None => resolver.exact.insert(name.clone(), ck.clone()),
            };
        }
    }
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Verifier { setting: "tls", reason: e.to_string() })?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(Arc::new(resolver));
    // Empty: no ALPN extension in the answer (a client offering some still connects). Otherwise a
    // client offering only other protocols is refused by rustls with a no_application_protocol alert.
    config.alpn_protocols = settings.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // The server's suite order (AEADs, strongest first) wins over whatever order a client proposes.
    config.ignore_client_order = true;
    // Resumption makes reconnect storms cheap. The ticket keys and the session cache belong to this
    // configuration, so a reload that changes client trust (a new CA bundle, a new CRL) makes earlier
    // sessions unresumable: a device whose CA was removed or whose certificate was revoked must do a
    // full handshake again. Other reloads keep them (`Loaded::keep_sessions_of`).
    // Every ticket and cached session is checked against the clock when it comes back: a resumption
    // never outlives the client certificate (see `resumption`).
    config.ticketer =
        CheckedTickets::wrap(ticketer().map_err(|e| TlsError::Verifier { setting: "tls", reason: e.to_string() })?);
    // One ticket per handshake: a device reconnects with one, and each ticket costs an encryption.
    config.send_tls13_tickets = 1;
    config.session_storage =
        CheckedSessions::wrap(rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES));
    let loaded_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let certificates =
        Arc::new(Certificates { loaded_at, server_chain, client_ca, sni, crls: crl_infos, ocsp: ocsp_info });
    Ok(Loaded { config: Arc::new(config), leaf, certificates, verifier })
}

/// Checks the OCSP response in `file` against the server certificate `leaf` (DER): it must parse, be
/// successful, and not say this certificate is revoked. One about another certificate (the certificate
/// was renewed, the response not yet) loads but is never stapled: refusing it would hold back the new
/// certificate. One already past its nextUpdate loads too (a fresh one may follow any moment) but is
/// not stapled until replaced.
fn check_staple(file: &TlsFile, leaf: &[u8]) -> Result<OcspInfo, TlsError> {
    let bad = |reason: String| TlsError::Ocsp { path: file.path.clone(), reason };
    let response = ocsp::parse(&file.bytes).map_err(|e| bad(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(format!("the certificate: {e}")))?;
    let matches_certificate = cert.raw_serial() == response.serial.as_slice();
    if matches_certificate && response.status == ocsp::CertStatus::Revoked {
        return Err(bad("the response says the server certificate is revoked".into()));
    }
    let window = response.window();
    let info = OcspInfo {
        this_update: crate::x509::cert::rfc3339(response.this_update),
        next_update: response.next_update.map(crate::x509::cert::rfc3339),
        status: response.status.as_str(),
        serial: hex(&response.serial),
        matches_certificate,
        path: file.path.clone(),
        window: matches_certificate.then_some(window),
    };
    if !matches_certificate {
        tracing::warn!(
            path = %file.path.display(),
            serial = %info.serial,
            certificate_serial = %hex(cert.raw_serial()),
            "ocsp_staple: the OCSP response is about another certificate and is not stapled until it is replaced"
        );
        return Ok(info);
    }
    if !window.serves_at(unix_now()) {
        tracing::warn!(
            path = %file.path.display(),
            this_update = %info.this_update,
            next_update = info.next_update.as_deref().unwrap_or("none"),
            "ocsp_staple: the OCSP response is outside its validity period (thisUpdate to nextUpdate) and is not stapled"
        );
    }
    if response.status == ocsp::CertStatus::Unknown {
        tracing::warn!(path = %file.path.display(), "ocsp_staple: the OCSP responder does not know the server certificate");
    }
    Ok(info)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    crate::x509::hex::push_hex(&mut out, bytes, crate::x509::hex::Case::Upper);
    out
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn parse_certs(file: &TlsFile) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&file.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(file.setting, &file.path, "certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { setting: file.setting, path: file.path.clone(), what: "CERTIFICATE" });
    }
    Ok(certs)
}

fn parse_crls(file: &TlsFile) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    if file.setting == crate::crl::SETTING {
        // Fetched: DER, checked when it was fetched.
        return Ok(vec![CertificateRevocationListDer::from(file.bytes.clone())]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&file.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("crl", &file.path, "X509 CRL", e))?;
    if crls.is_empty() {
        return Err(TlsError::Empty { setting: "crl", path: file.path.clone(), what: "X509 CRL" });
    }
    Ok(crls)
}

/// Parses every certificate of the chain (so a truncated intermediate is caught now, not by clients)
/// and describes each.
fn describe_chain(file: &TlsFile, chain: &[CertificateDer<'static>]) -> Result<Vec<CertInfo>, TlsError> {
    let mut described = Vec::with_capacity(chain.len());
    for (index, der) in chain.iter().enumerate() {
        let bad = |reason: String| TlsError::BadCert { setting: file.setting, path: file.path.clone(), index, reason };
        let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after the certificate", rest.len())));
        }
        described.push(CertInfo::of(&cert, der));
    }
    Ok(described)
}

/// The leaf (first) certificate of a described chain; with `refuse_expired`, an error unless it is
/// within its validity period now.
fn leaf_of(file: &TlsFile, chain: &[CertInfo], refuse_expired: bool) -> Result<CertInfo, TlsError> {
    let leaf =
        chain.first().ok_or(TlsError::Empty { setting: file.setting, path: file.path.clone(), what: "CERTIFICATE" })?;
    match (refuse_expired, leaf.validity()) {
        (false, _) | (_, Validity::Valid) => Ok(leaf.clone()),
        (true, Validity::Expired) => {
            Err(TlsError::Expired { path: file.path.clone(), not_after: leaf.not_after_rfc3339() })
        }
        (true, Validity::NotYetValid) => {
            Err(TlsError::NotYetValid { path: file.path.clone(), not_before: leaf.not_before_rfc3339() })
        }
    }
}

fn pem_error(setting: &'static str, path: &Path, what: &'static str, e: rustls::pki_types::pem::Error) -> TlsError {
    use rustls::pki_types::pem::Error as P;
    match e {
        P::NoItemsFound => TlsError::Empty { setting, path: path.into(), what },
        P::Io(io) => TlsError::Read { setting, path: path.into(), reason: io.to_string() },
        other => TlsError::Pem { setting, path: path.into(), reason: pem_problem(&other) },
    }
}

/// What is wrong with a PEM file, in words (the library's own message prints the marker as a list of
/// byte values).
pub fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as P;
    match e {
        P::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            format!(
                "a \"-----BEGIN {label}-----\" section has no \"-----END {label}-----\" line (is the file truncated?)"
            )
        }
        P::IllegalSectionStart { line } => {
            format!("the line \"{}\" does not start a PEM section properly", String::from_utf8_lossy(line).trim())
        }
        P::Base64Decode(detail) => format!("a section's body is not valid base64 ({detail})"),
        P::SectionTooLarge => "a section is larger than 256 MB".to_string(),
        P::NoItemsFound => "no PEM section of the expected kind".to_string(),
        P::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// The current server configuration. Each handshake takes the newest; a reload replaces it whole.
/// Established connections subscribe to its trust changes ([`crate::recheck`]).
pub(crate) struct TlsHandle {
    current: ArcSwap<ServerConfig>,
    certificates: ArcSwap<Certificates>,
    verifier: ArcSwap<ClientVerifier>,
    /// The established connections served through this handle, told of trust changes.
    connections: Arc<crate::recheck::Registry>,
}

/// The client verifier in force (a newtype: `ArcSwap` holds sized values).
pub(crate) struct ClientVerifier(pub(crate) Arc<dyn ClientCertVerifier>);

impl TlsHandle {
    pub(crate) fn new(loaded: &Loaded) -> Self {
        TlsHandle {
            current: ArcSwap::new(loaded.config.clone()),
            certificates: ArcSwap::new(loaded.certificates.clone()),
            verifier: ArcSwap::from_pointee(ClientVerifier(loaded.verifier.clone())),
            connections: Arc::default(),
        }
    }

    /// The certificates of the configuration in force.
    pub(crate) fn certificates(&self) -> Arc<Certificates> {
        self.certificates.load_full()
    }

    /// The configuration in force now.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// The client verifier in force now.
    pub(crate) fn verifier(&self) -> Arc<ClientVerifier> {
        self.verifier.load_full()
    }

    /// An acceptor bound to the configuration in force now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Publishes a new configuration for every later handshake. When client trust changed, every
    /// established connection is told to re-check itself against it.
    pub(crate) fn store(&self, loaded: &Loaded, trust_changed: bool) {
        self.current.store(loaded.config.clone());
        self.certificates.store(loaded.certificates.clone());
        self.verifier.store(Arc::new(ClientVerifier(loaded.verifier.clone())));
        if trust_changed {
            self.announce_trust_change();
        }
    }

    /// Tells every established connection to re-check its certificate (also for new allow rules).
    pub(crate) fn announce_trust_change(&self) {
        self.connections.recheck_all();
    }

    /// The registry of this listener's connections (which see every trust change from their
    /// registration on).
    pub(crate) fn connections(&self) -> &Arc<crate::recheck::Registry> {
        &self.connections
    }
}

/// Picks the certificate for the name a client sends (SNI): an exact name first, then a `*.suffix`
/// wildcard covering one label, else the listener's own certificate, with the OCSP staple while it is
/// current.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// `default` with the OCSP staple, and when to send it. Decided per handshake, so a staple past its
    /// nextUpdate stops going out without a reload.
    stapled: Option<Stapled>,
}

#[derive(Debug)]
struct Stapled {
    key: Arc<CertifiedKey>,
    window: ocsp::StapleWindow,
}

impl SniResolver {
    /// `now`: unix seconds, for the staple.
    fn pick(&self, name: Option<&str>, now: impl FnOnce() -> i64) -> Arc<CertifiedKey> {
        if let Some(name) = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) {
            if let Some(ck) = self.exact.get(&name) {
                return ck.clone();
            }
            if let Some(ck) = name.split_once('.').and_then(|(_, suffix)| self.wildcard.get(suffix)) {
                return ck.clone();
            }
        }
        match &self.stapled {
            Some(stapled) if stapled.window.serves_at(now()) => stapled.key.clone(),
            _ => self.default.clone(),
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name(), unix_now))
    }
}

/// Bounded label for a failed handshake, for logs and metrics.
pub(crate) fn handshake_failure_label(err: &std::io::Error) -> &'static str {
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
        R::InvalidCertificate(
            CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. },
        ) => "crl_expired",
        R::InvalidCertificate(_) => "bad_cert",
        R::AlertReceived(_) => "alert_received",
        R::PeerIncompatible(_) | R::NoApplicationProtocol => "incompatible",
        _ => "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ocsp: Option<&[u8]>) -> Arc<CertifiedKey> {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
        let mut ck = CertifiedKey::from_der(vec![cert.der().clone()], key, &provider()).unwrap();
        ck.ocsp = ocsp.map(<[u8]>::to_vec);
        Arc::new(ck)
    }

    #[test]
    fn the_default_certificate_carries_the_staple_only_within_its_window() {
        let sni = key(None);
        let resolver = SniResolver {
            exact: HashMap::from([("other.example".to_string(), sni.clone())]),
            wildcard: HashMap::new(),
            default: key(None),
            stapled: Some(Stapled {
                key: key(Some(b"staple")),
                window: ocsp::StapleWindow { this_update: 1000, next_update: Some(2000) },
            }),
        };
        let staple = |name: Option<&str>, now: i64| resolver.pick(name, || now).ocsp.clone();
        assert_eq!(staple(None, 1500), Some(b"staple".to_vec()));
        assert_eq!(staple(Some("localhost"), 1999), Some(b"staple".to_vec()), "another name gets the default");
        assert_eq!(staple(None, 2000), None, "at nextUpdate");
        assert_eq!(staple(None, 5000), None, "past nextUpdate");
        assert_eq!(staple(None, 999), None, "before thisUpdate");
        assert!(Arc::ptr_eq(&resolver.pick(None, || 5000), &resolver.default));
        assert!(Arc::ptr_eq(&resolver.pick(Some("other.example"), || 1500), &sni), "SNI entries: no staple");
    }
}
