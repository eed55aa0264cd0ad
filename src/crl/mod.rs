//! Certificate revocation lists fetched over HTTP (`crl_urls`, `crl_from_distribution_points`).
//!
//! A [`CrlCache`] per listener holds the last good CRL of every URL. [`fetch`] fetches them at start
//! and every `crl_refresh` (sooner when a CRL's nextUpdate comes first), retrying a failed fetch with
//! exponential backoff. A fetched CRL is accepted only if it parses, its signature verifies against the
//! configured client CA whose subject is its issuer, and it is not older than the one held; anything
//! else keeps the last good one, logs one line and counts the result.
//!
//! The CRLs held join the client trust the verifier is built from as extra [`TlsFile`]s (setting
//! `crl_urls`, path = the URL, bytes = DER): a new one changes the reloader's content hashes like a
//! rewritten CRL file, so the reloader rebuilds the configuration and ends resumption
//! ([`crate::reload::Reloader::refresh`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{error, info, warn};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::ops::metrics::Metrics;
use crate::tls::TlsFile;
use crate::x509::rfc2253::name_rfc2253;

pub(crate) mod fetch;
mod verify;

pub use fetch::fetch_once_blocking;

/// The setting fetched CRLs are filed under in [`TlsFile`]; their bytes are DER, not PEM.
pub(crate) const SETTING: &str = "crl_urls";

/// Default refetch period.
pub(crate) const DEFAULT_CRL_REFRESH: Duration = Duration::from_secs(15 * 60);
/// Default time one fetch (connect, request, whole body) may take.
pub(crate) const DEFAULT_CRL_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest CRL accepted, in bytes (10 MiB: a CRL of ~300 000 entries).
pub(crate) const DEFAULT_CRL_MAX_SIZE: usize = 10 * 1024 * 1024;
/// Most distinct URLs one listener fetches (configured ones plus distribution points); more
/// distribution points are ignored (logged once).
pub(crate) const MAX_CRL_URLS: usize = 64;
/// First retry delay after a failed fetch; it doubles up to `crl_refresh`.
pub(crate) const FIRST_RETRY: Duration = Duration::from_secs(10);
/// A CRL with a nextUpdate is refetched this long before it (when that is sooner than `crl_refresh`).
pub(crate) const BEFORE_NEXT_UPDATE: Duration = Duration::from_secs(60);

/// What to do past a CRL's nextUpdate while no fresher CRL could be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrlStale {
    /// Keep checking against the stale CRL (a warning is logged once).
    #[default]
    Keep,
    /// Refuse new handshakes of certificates whose issuer's CRL is past its nextUpdate (this applies
    /// to CRL files too).
    Refuse,
}

impl CrlStale {}

/// The CRL fetching settings of one listener, under the file's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrlSettings {
    /// `http://` URLs, validated, without duplicates.
    #[serde(rename = "crl_urls")]
    pub urls: Vec<String>,
    #[serde(rename = "crl_from_distribution_points")]
    pub from_distribution_points: bool,
    #[serde(rename = "crl_refresh", serialize_with = "crate::duration::serialize")]
    pub refresh: Duration,
    #[serde(rename = "crl_stale")]
    pub stale: CrlStale,
    #[serde(rename = "crl_fetch_timeout", serialize_with = "crate::duration::serialize")]
    pub fetch_timeout: Duration,
    #[serde(rename = "crl_max_size")]
    pub max_size: usize,
}

impl Default for CrlSettings {
    fn default() -> Self {
        CrlSettings {
            urls: Vec::new(),
            from_distribution_points: false,
            refresh: DEFAULT_CRL_REFRESH,
            stale: CrlStale::Keep,
            fetch_timeout: DEFAULT_CRL_FETCH_TIMEOUT,
            max_size: DEFAULT_CRL_MAX_SIZE,
        }
    }
}

impl CrlSettings {
    /// Whether anything is fetched at all.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty() || self.from_distribution_points
    }
}

/// Checks a `crl_urls` entry: an absolute `http://host[:port]/path` URL. The reason, if not.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "{url:?}: only http:// URLs are fetched, not {other}:// (CRLs are signed, and CAs publish them \
                 over plain HTTP, RFC 5280 section 4.2.1.13)"
            ))
        }
        None => return Err(format!("{url:?} is not an absolute http:// URL")),
    }
    match uri.authority() {
        Some(a) if a.as_str().contains('@') => Err(format!("{url:?}: user names in CRL URLs are not supported")),
        Some(a) if !a.host().is_empty() => Ok(()),
        _ => Err(format!("{url:?} has no host")),
    }
}

/// Why a fetched CRL was not taken. [`CrlError::label`] is the metric's `result`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("cannot fetch: {0}")]
    Connect(String),
    #[error("no complete answer within {} (crl_fetch_timeout)", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the body is larger than {0} bytes (crl_max_size)")]
    TooLarge(usize),
    #[error("not a CRL (DER or PEM): {0}")]
    Unparsable(String),
    #[error("the signature does not verify with the key of client CA {issuer}: {reason}")]
    BadSignature { issuer: String, reason: String },
    #[error("issued by {0}, which is not a certificate in client_ca")]
    UnknownIssuer(String),
    #[error("older than the CRL held ({0}); keeping the one held")]
    Older(String),
}

impl CrlError {
    /// Bounded label for logs and metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            CrlError::Status(_) | CrlError::Connect(_) => "http_error",
            CrlError::Timeout(_) => "timeout",
            CrlError::TooLarge(_) => "too_large",
            CrlError::Unparsable(_) => "unparsable",
            CrlError::BadSignature { .. } => "bad_signature",
            CrlError::UnknownIssuer(_) => "unknown_issuer",
            CrlError::Older(_) => "older",
        }
    }
}

/// A CRL in force, described for `/certs`, `mqtls check` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrlInfo {
    /// RFC 2253.
    pub issuer: String,
    /// RFC 3339, UTC.
    pub this_update: String,
    /// RFC 3339, UTC; absent when the CRL has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_update: Option<String>,
    /// The file path or the URL it came from.
    pub source: String,
    /// Number of revoked certificates listed.
    pub entries: usize,
    #[serde(skip)]
    pub(crate) this_update_unix: i64,
    #[serde(skip)]
    pub(crate) next_update_unix: Option<i64>,
}

/// Describes a DER CRL; `None` if x509-parser can't read it.
pub(crate) fn describe(der: &[u8], source: &str) -> Option<CrlInfo> {
    let (_, crl) = CertificateRevocationList::from_der(der).ok()?;
    Some(describe_parsed(&crl, source))
}

fn describe_parsed(crl: &CertificateRevocationList<'_>, source: &str) -> CrlInfo {
    let this_update_unix = crl.last_update().timestamp();
    let next_update_unix = crl.next_update().map(|t| t.timestamp());
    CrlInfo {
        issuer: issuer_name(crl),
        this_update: rfc3339(this_update_unix),
        next_update: next_update_unix.map(rfc3339),
        source: source.to_string(),
        entries: crl.iter_revoked_certificates().count(),
        this_update_unix,
        next_update_unix,
    }
}

fn issuer_name(crl: &CertificateRevocationList<'_>) -> String {
    name_rfc2253(crl.issuer()).unwrap_or_else(|e| format!("<unprintable: {e}>"))
}

fn rfc3339(unix: i64) -> String {
    match u64::try_from(unix) {
        Ok(secs) => humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string(),
        Err(_) => unix.to_string(),
    }
}

fn unix_now() -> i64 {
    x509_parser::time::ASN1Time::now().timestamp()
}

/// The DER of a fetched body: PEM (`-----BEGIN X509 CRL-----`, the first one) or DER, which must
/// parse as one CRL with nothing after it.
pub(crate) fn crl_der(body: &[u8]) -> Result<Vec<u8>, CrlError> {
    let trimmed = body.trim_ascii_start();
    let der = if trimmed.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(trimmed)
            .next()
            .ok_or_else(|| CrlError::Unparsable("PEM without an X509 CRL section".into()))?
            .map_err(|e| CrlError::Unparsable(crate::tls::pem_problem(&e)))?
            .as_ref()
            .to_vec()
    } else {
        body.to_vec()
    };
    match CertificateRevocationList::from_der(&der) {
        Ok((&[], _)) => Ok(der),
        Ok((rest, _)) => Err(CrlError::Unparsable(format!("{} bytes after the CRL", rest.len()))),
        Err(e) => Err(CrlError::Unparsable(e.to_string())),
    }
}

/// The `http://` CRL distribution point URLs of a certificate.
pub(crate) fn distribution_points(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut urls = Vec::new();
    for ext in cert.extensions() {
        let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() else { continue };
        for point in points.iter() {
            let Some(DistributionPointName::FullName(names)) = &point.distribution_point else { continue };
            for name in names {
                if let GeneralName::URI(uri) = name {
                    if check_url(uri).is_ok() {
                        urls.push((*uri).to_string());
                    }
                }
            }
        }
    }
    urls
}

/// The last good CRL of one URL.
#[derive(Debug, Clone)]
struct Held {
    der: Vec<u8>,
    this_update: i64,
    next_update: Option<i64>,
    /// The CRL number's big-endian bytes, leading zeros stripped.
    number: Option<Vec<u8>>,
    issuer: String,
    /// Whether "past nextUpdate" was logged for this CRL.
    stale_logged: bool,
}

/// One URL: its CRL, and when to fetch it next.
#[derive(Debug)]
struct Entry {
    held: Option<Held>,
    due: Instant,
    /// Consecutive failed fetches, for the backoff.
    failures: u32,
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by the full URL; configured URLs first, then distribution points as found.
    entries: BTreeMap<String, Entry>,
    /// Whether the URL cap was logged.
    cap_logged: bool,
}

/// The outcome of one accepted fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// A new CRL is held for the URL.
    New,
    /// The same bytes as the one held.
    NotModified,
}

/// The CRLs fetched for one listener, by URL; shared by the fetch loop, the reloader and handshakes.
pub struct CrlCache {
    settings: CrlSettings,
    client_ca: Option<PathBuf>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Woken when a new distribution point URL is added.
    wake: Notify,
}

impl CrlCache {
    /// A cache for the configured URLs (and, with `crl_from_distribution_points`, those of the client
    /// CA certificates); nothing fetched yet.
    pub(crate) fn new(settings: CrlSettings, client_ca: Option<PathBuf>, metrics: Arc<Metrics>) -> Arc<CrlCache> {
        let cache = Arc::new(CrlCache { settings, client_ca, metrics, state: Mutex::default(), wake: Notify::new() });
        for url in cache.settings.urls.clone() {
            cache.add_url(&url);
        }
        if cache.settings.from_distribution_points {
            for ca in cache.client_cas() {
                if let Ok((_, cert)) = X509Certificate::from_der(&ca) {
                    for url in distribution_points(&cert) {
                        cache.add_url(&url);
                    }
                }
            }
        }
        cache
    }

    pub(crate) fn settings(&self) -> &CrlSettings {
        &self.settings
    }

    /// Every URL fetched, in order.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.lock().entries.keys().cloned().collect()
    }

    /// Adds the distribution points of a client certificate seen at a handshake (with
    /// `crl_from_distribution_points`), to be fetched at once. Cheap when they are known already.
    pub(crate) fn saw_client_cert(&self, leaf: &X509Certificate<'_>) {
        if !self.settings.from_distribution_points {
            return;
        }
        let mut added = false;
        for url in distribution_points(leaf) {
            added |= self.add_url(&url);
        }
        if added {
            self.wake.notify_one();
        }
    }

    /// Adds `url` (due now) unless known or over the cap; whether it was added.
    fn add_url(&self, url: &str) -> bool {
        let mut state = self.lock();
        if state.entries.contains_key(url) {
            return false;
        }
        if state.entries.len() >= MAX_CRL_URLS {
            if !state.cap_logged {
                state.cap_logged = true;
                warn!(
                    url,
                    limit = MAX_CRL_URLS,
                    "too many CRL URLs; this and further distribution points are not fetched"
                );
            }
            return false;
        }
        state.entries.insert(url.to_string(), Entry { held: None, due: Instant::now(), failures: 0 });
        true
    }

    /// The CRLs held, as files of the client trust (setting `crl_urls`, path = URL, DER bytes).
    pub(crate) fn files(&self) -> Vec<TlsFile> {
        self.lock()
            .entries
            .iter()
            .filter_map(|(url, e)| {
                e.held.as_ref().map(|h| TlsFile { setting: SETTING, path: PathBuf::from(url), bytes: h.der.clone() })
            })
            .collect()
    }

    /// The client CA certificates (DER) as the file holds them now; none if it can't be read (the
    /// reloader reports that).
    fn client_cas(&self) -> Vec<CertificateDer<'static>> {
        let Some(path) = &self.client_ca else { return Vec::new() };
        match CertificateDer::pem_file_iter(path) {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Checks a fetched body and, if it is a good CRL newer than the one held, holds it.
    pub(crate) fn accept(&self, url: &str, body: &[u8]) -> Result<Accepted, CrlError> {
        let der = crl_der(body)?;
        let (_, crl) = CertificateRevocationList::from_der(&der).map_err(|e| CrlError::Unparsable(e.to_string()))?;
        verify::signed_by_a_client_ca(&crl, &self.client_cas())?;
        let number = crl.crl_number().map(|n| n.to_bytes_be());
        let this_update = crl.last_update().timestamp();
        let next_update = crl.next_update().map(|t| t.timestamp());
        let issuer = issuer_name(&crl);
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(url) else {
            return Err(CrlError::Connect("the URL is no longer fetched".into()));
        };
        if let Some(held) = &entry.held {
            if held.der == der {
                return Ok(Accepted::NotModified);
            }
            if this_update < held.this_update {
                return Err(CrlError::Older(format!(
                    "thisUpdate {} is before {}",
                    rfc3339(this_update),
                    rfc3339(held.this_update)
                )));
            }
            if let (Some(new), Some(old)) = (&number, &held.number) {
                if (new.len(), new) < (old.len(), old) {
                    return Err(CrlError::Older("its CRL number is lower".into()));
                }
            }
        }
        entry.held = Some(Held { this_update, next_update, number, issuer, der, stale_logged: false });
        Ok(Accepted::New)
    }

    /// Records a fetch's result: the metric, one log line, and when to fetch that URL next.
    pub(crate) fn record(&self, url: &str, result: &Result<Accepted, CrlError>) {
        let label = match result {
            Ok(Accepted::New) => "ok",
            Ok(Accepted::NotModified) => "not_modified",
            Err(e) => e.label(),
        };
        self.metrics.crl_fetch(label);
        let now = Instant::now();
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(url) else { return };
        match result {
            Ok(accepted) => {
                self.metrics.crl_fetched(url, unix_now());
                entry.failures = 0;
                let mut wait = self.settings.refresh;
                if let Some(next) = entry.held.as_ref().and_then(|h| h.next_update) {
                    let left = next.saturating_sub(unix_now());
                    let before = BEFORE_NEXT_UPDATE.as_secs() as i64;
                    if left > before {
                        wait = wait.min(Duration::from_secs((left - before) as u64));
                    } else if left > 0 {
                        wait = wait.min(Duration::from_secs(left as u64));
                    } else {
                        // Served stale: try again like after a failure.
                        wait = wait.min(FIRST_RETRY);
                    }
                }
                entry.due = now + wait.max(Duration::from_millis(100));
                if let (Accepted::New, Some(held)) = (accepted, &entry.held) {
                    info!(
                        url,
                        issuer = %held.issuer,
                        this_update = %rfc3339(held.this_update),
                        next_update = %held.next_update.map(rfc3339).unwrap_or_else(|| "none".into()),
                        "CRL fetched"
                    );
                }
            }
            Err(err) => {
                entry.failures = entry.failures.saturating_add(1);
                let wait = backoff(self.settings.refresh, entry.failures);
                entry.due = now + wait;
                let held = if entry.held.is_some() { "keeping the last good CRL" } else { "no CRL held for it yet" };
                warn!(url, result = err.label(), %err, retry_in = %humantime::format_duration(wait), "CRL fetch rejected; {held}");
            }
        }
    }

    /// Logs once per CRL held that is past its nextUpdate.
    pub(crate) fn check_stale(&self) {
        let now = unix_now();
        let stale = self.settings.stale;
        let mut state = self.lock();
        for (url, entry) in state.entries.iter_mut() {
            let Some(held) = entry.held.as_mut() else { continue };
            let Some(next) = held.next_update else { continue };
            if next >= now || held.stale_logged {
                continue;
            }
            held.stale_logged = true;
            let next = rfc3339(next);
            match stale {
                CrlStale::Keep => warn!(
                    url, issuer = %held.issuer, next_update = %next,
                    "CRL is past its nextUpdate and no fresh one could be fetched; still checking against it (crl_stale = keep)"
                ),
                CrlStale::Refuse => error!(
                    url, issuer = %held.issuer, next_update = %next,
                    "CRL is past its nextUpdate and no fresh one could be fetched; handshakes of certificates from this \
                     issuer are refused (crl_stale = refuse)"
                ),
            }
        }
    }

    /// The URLs due now, and when the next one is due.
    fn due(&self) -> (Vec<String>, Option<Instant>) {
        let now = Instant::now();
        let state = self.lock();
        let due = state.entries.iter().filter(|(_, e)| e.due <= now).map(|(u, _)| u.clone()).collect();
        let next = state.entries.values().map(|e| e.due).min();
        (due, next)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The wait after the `failures`-th failure in a row: 10 s doubling, at most `refresh`.
pub(crate) fn backoff(refresh: Duration, failures: u32) -> Duration {
    let first = FIRST_RETRY.min(refresh);
    first.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(refresh)
}

#[cfg(test)]
pub(crate) mod tests;
