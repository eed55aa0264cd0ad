//! Who gets in during a storm: admission at accept, before any TLS work, and a cap on the connections
//! one certificate may hold.
//!
//! - `max_conn_rate` / `max_conn_burst`: one token bucket for the whole process (EMQX's names).
//! - `max_conn_per_source` / `max_conn_rate_per_source`: per client address, keyed on its prefix
//!   (`source_prefix_v4`, `source_prefix_v6`: /32 and /64 by default, since one IPv6 host owns a /64).
//!   Behind a trusted load balancer the key is the address its PROXY header names. The table holding
//!   the sources has a hard cap (a flood of distinct sources cannot grow it without bound); when full,
//!   sources with no open connection are evicted first, those with connections never.
//! - `max_conn_per_identity`: a certificate already holding that many connections on this process is
//!   refused after the CONNECT (MQTT 5 "quota exceeded", 3.x "server unavailable"): the signature of a
//!   cloned or leaked certificate.
//!
//! Refusals at accept are closed at once (the cheapest answer) and counted as
//! `outcome="rate_limited"`; the log says so at most once a second, with how many it did not say.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::warn;

/// Process-wide admission settings (the file's top level and the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AdmissionSettings {
    /// New connections per second for the whole process; `None` = no limit.
    #[serde(rename = "max_conn_rate", skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// Connections accepted at once above the rate (the bucket's size); defaults to one second's worth.
    #[serde(rename = "max_conn_burst", skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Open connections per source; `None` = no limit.
    #[serde(rename = "max_conn_per_source", skip_serializing_if = "Option::is_none")]
    pub per_source: Option<u32>,
    /// New connections per second per source; `None` = no limit.
    #[serde(rename = "max_conn_rate_per_source", skip_serializing_if = "Option::is_none")]
    pub rate_per_source: Option<u32>,
    /// The IPv4 prefix length that makes one source.
    #[serde(rename = "source_prefix_v4")]
    pub prefix_v4: u8,
    /// The IPv6 prefix length that makes one source.
    #[serde(rename = "source_prefix_v6")]
    pub prefix_v6: u8,
    /// Open connections per client certificate; `None` = no limit.
    #[serde(rename = "max_conn_per_identity", skip_serializing_if = "Option::is_none")]
    pub per_identity: Option<u32>,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            rate: None,
            burst: None,
            per_source: None,
            rate_per_source: None,
            prefix_v4: 32,
            prefix_v6: 64,
            per_identity: None,
        }
    }
}

impl AdmissionSettings {
    fn per_source_enabled(&self) -> bool {
        self.per_source.is_some() || self.rate_per_source.is_some()
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// `max_conn_rate` / `max_conn_burst`.
    Rate,
    /// `max_conn_per_source`.
    SourceConnections,
    /// `max_conn_rate_per_source`.
    SourceRate,
}

impl Limited {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Limited::Rate => "max_conn_rate",
            Limited::SourceConnections => "max_conn_per_source",
            Limited::SourceRate => "max_conn_rate_per_source",
        }
    }
}

/// A token bucket: `rate` tokens a second up to `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, at: now }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }

    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One source's state.
#[derive(Debug)]
struct Source {
    open: u32,
    bucket: Bucket,
}

/// The admission state of the process, shared by every listener.
pub(crate) struct Admission {
    settings: AdmissionSettings,
    global: Mutex<Bucket>,
    sources: Mutex<HashMap<IpAddr, Source>>,
    /// Most sources held; see the module documentation.
    cap: usize,
    identities: Mutex<HashMap<[u8; 32], u32>>,
    quiet: RateLimitedLog,
}

impl Admission {
    /// `max_connections` bounds how many sources can have an open connection, so the table's cap is
    /// a little above it (the rest holds sources' rate state).
    pub(crate) fn new(settings: AdmissionSettings, max_connections: usize) -> Arc<Admission> {
        let now = Instant::now();
        Arc::new(Admission {
            settings,
            global: Mutex::new(Bucket::full(global_burst(&settings), now)),
            sources: Mutex::default(),
            cap: max_connections.saturating_add(max_connections / 10).max(1024),
            identities: Mutex::default(),
            quiet: RateLimitedLog::default(),
        })
    }

    /// The process-wide rate: one token per new connection, whatever its source.
    pub(crate) fn admit_any(&self) -> Result<(), Limited> {
        let Some(rate) = self.settings.rate else { return Ok(()) };
        let burst = global_burst(&self.settings);
        match lock(&self.global).take(f64::from(rate), burst, Instant::now()) {
            true => Ok(()),
            false => Err(Limited::Rate),
        }
    }

    /// The per-source limits for a connection from `source`; the guard holds its place until dropped.
    pub(crate) fn admit_source(self: &Arc<Self>, source: IpAddr) -> Result<Option<SourceGuard>, Limited> {
        if !self.settings.per_source_enabled() {
            return Ok(None);
        }
        let key = self.key(source);
        let now = Instant::now();
        let rate = self.settings.rate_per_source.map(f64::from);
        let burst = rate.map_or(1.0, |r| r.max(1.0));
        let mut sources = lock(&self.sources);
        if !sources.contains_key(&key) && sources.len() >= self.cap {
            evict(&mut sources, self.cap, rate, burst, now);
            if sources.len() >= self.cap {
                // Every source held has open connections: max_connections is reached anyway.
                return Err(Limited::SourceConnections);
            }
        }
        let entry = sources.entry(key).or_insert_with(|| Source { open: 0, bucket: Bucket::full(burst, now) });
        if self.settings.per_source.is_some_and(|max| entry.open >= max) {
            return Err(Limited::SourceConnections);
        }
        if let Some(rate) = rate {
            if !entry.bucket.take(rate, burst, now) {
                return Err(Limited::SourceRate);
            }
        }
        entry.open += 1;
        Ok(Some(SourceGuard { admission: self.clone(), key }))
    }

    /// `max_conn_per_identity` for a certificate (its SHA-256); the guard holds its place until dropped.
    pub(crate) fn admit_identity(self: &Arc<Self>, cert_sha256: [u8; 32]) -> Result<Option<IdentityGuard>, u32> {
        let Some(max) = self.settings.per_identity else { return Ok(None) };
        let mut identities = lock(&self.identities);
        let open = identities.entry(cert_sha256).or_insert(0);
        if *open >= max {
            return Err(max);
        }
        *open += 1;
        Ok(Some(IdentityGuard { admission: self.clone(), key: cert_sha256 }))
    }

    /// Logs a refusal at accept, at most once a second.
    pub(crate) fn log_refusal(&self, limited: Limited, source: IpAddr) {
        if let Some(unsaid) = self.quiet.may_log() {
            warn!(limit = limited.as_str(), %source, unsaid, "connection refused at accept (rate limited)");
        }
    }

    /// Sources held now.
    #[cfg(test)]
    pub(crate) fn sources(&self) -> usize {
        lock(&self.sources).len()
    }

    fn key(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let keep = u32::from(self.settings.prefix_v4.min(32));
                let mask = if keep == 0 { 0 } else { u32::MAX << (32 - keep) };
                IpAddr::from(std::net::Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.key(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6);
                    let keep = u32::from(self.settings.prefix_v6.min(128));
                    let mask = if keep == 0 { 0 } else { u128::MAX << (128 - keep) };
                    IpAddr::from(std::net::Ipv6Addr::from(bits & mask))
                }
            },
        }
    }
}

fn global_burst(settings: &AdmissionSettings) -> f64 {
    match (settings.burst, settings.rate) {
        (Some(b), _) => f64::from(b.max(1)),
        (None, Some(rate)) => f64::from(rate.max(1)),
        (None, None) => 1.0,
    }
}

/// Makes room in a full table: first the sources with nothing open whose rate state has refilled
/// (forgetting them forgets nothing), then every source with nothing open. Sources with open
/// connections stay.
fn evict(sources: &mut HashMap<IpAddr, Source>, cap: usize, rate: Option<f64>, burst: f64, now: Instant) {
    sources.retain(|_, s| {
        if s.open > 0 {
            return true;
        }
        if let Some(rate) = rate {
            s.bucket.refill(rate, burst, now);
            s.bucket.tokens < burst
        } else {
            false
        }
    });
    // Still above nine tenths: forget the rate state too, so one flood doesn't force a sweep per connection.
    if sources.len() >= cap - cap / 10 {
        sources.retain(|_, s| s.open > 0);
    }
}

/// A connection's place in its source's count.
pub(crate) struct SourceGuard {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut sources = lock(&self.admission.sources);
        if let Some(s) = sources.get_mut(&self.key) {
            s.open = s.open.saturating_sub(1);
        }
    }
}

/// A connection's place in its certificate's count.
pub(crate) struct IdentityGuard {
    admission: Arc<Admission>,
    key: [u8; 32],
}

impl Drop for IdentityGuard {
    fn drop(&mut self) {
        let mut identities = lock(&self.admission.identities);
        if let Some(open) = identities.get_mut(&self.key) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                identities.remove(&self.key);
            }
        }
    }
}

/// At most one line a second; says how many it left out.
#[derive(Default)]
struct RateLimitedLog {
    /// Unix second of the last line.
    last: AtomicU64,
    unsaid: AtomicU64,
}

impl RateLimitedLog {
    fn may_log(&self) -> Option<u64> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        let last = self.last.load(Ordering::Relaxed);
        if now > last && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            Some(self.unsaid.swap(0, Ordering::Relaxed))
        } else {
            self.unsaid.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
