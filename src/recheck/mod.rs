//! Trust over a connection's whole life, not just at its handshake.
//!
//! A device is checked when it connects, then may stay connected for weeks. This module keeps that
//! check true afterwards: when client trust changes (a new CA bundle, a new CRL, narrower allow
//! rules) every established connection re-checks its own certificate chain against the trust then in
//! force, at a random moment within `recheck_spread`, and closes at once if it would now be refused.
//! Spreading the re-checks spreads both their CPU (a signature check or two each) and the reconnects
//! of the refused part of a fleet. A connection also closes
//! when its client certificate expires (`close_at_cert_expiry`) and, when `max_conn_lifetime` is set,
//! after that long (less up to a tenth, so connections opened together do not all return together).
//!
//! Nothing is copied for this: a connection's chain is already held by its TLS session, and what each
//! connection adds is a small registration with its listener ([`Registry`]: a waker, two flags and its
//! next deadline, which one task per listener scans four times a second). The verifier and the rules are the
//! listener's current ones, read at re-check time.

use std::hash::BuildHasher;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, Error as TlsError};
use serde::Serialize;
use std::task::{Context, Poll};

use tokio::time::Instant;

use crate::x509::rules::{self, Rules};
use crate::x509::ClientCert;

mod registry;

use registry::RECHECK;
pub(crate) use registry::{Entry, Registry};

/// Default `recheck_spread`: long enough that a revoked batch reconnects over a minute, short enough
/// that a revoked device is gone within one.
pub(crate) const DEFAULT_SPREAD: Duration = Duration::from_secs(60);

/// What established connections of a listener are held to after their handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RecheckSettings {
    /// After a trust change, each connection re-checks at a random moment within this window; zero = at once.
    #[serde(rename = "recheck_spread", serialize_with = "crate::duration::serialize")]
    pub spread: Duration,
    /// Close a connection when its client certificate's notAfter passes.
    pub close_at_cert_expiry: bool,
    /// Close every connection after about this long (less up to a tenth); `None` = never.
    #[serde(rename = "max_conn_lifetime", serialize_with = "crate::duration::serialize_or_off")]
    pub max_lifetime: Option<Duration>,
}

impl Default for RecheckSettings {
    fn default() -> Self {
        RecheckSettings { spread: DEFAULT_SPREAD, close_at_cert_expiry: true, max_lifetime: None }
    }
}

/// Why mqtls closed an established connection (the `reason` label of
/// `mqtls_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// A CRL now lists the certificate.
    Revoked,
    /// The certificate no longer chains to a trusted CA (or fails verification otherwise).
    Untrusted,
    /// The allow rules no longer admit the certificate.
    NotAllowed,
    /// The certificate's notAfter has passed.
    Expired,
    /// `max_conn_lifetime` is over.
    Lifetime,
}

impl CloseReason {
    /// For the close log line.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            CloseReason::Revoked => "a CRL lists the client certificate",
            CloseReason::Untrusted => "the client certificate no longer chains to a trusted CA",
            CloseReason::NotAllowed => "the allow rules no longer admit the client certificate",
            CloseReason::Expired => "the client certificate has expired",
            CloseReason::Lifetime => "max_conn_lifetime is over",
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CloseReason::Revoked => "revoked",
            CloseReason::Untrusted => "untrusted",
            CloseReason::NotAllowed => "not_allowed",
            CloseReason::Expired => "expired",
            CloseReason::Lifetime => "lifetime",
        }
    }
}

/// A certificate that would be refused now, and why in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) reason: CloseReason,
    pub(crate) detail: String,
}

/// A stream that knows the certificate chain its peer presented (leaf first).
pub(crate) trait PeerChain {
    fn peer_chain(&self) -> Option<&[CertificateDer<'static>]>;
}

impl<IO> PeerChain for tokio_rustls::server::TlsStream<IO> {
    fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        self.get_ref().1.peer_certificates()
    }
}

impl<T: PeerChain + ?Sized> PeerChain for Box<T> {
    fn peer_chain(&self) -> Option<&[CertificateDer<'static>]> {
        (**self).peer_chain()
    }
}

/// Would `chain` be accepted by a handshake now, under `verifier` and `rules`? The same checks as the
/// handshake and the CONNECT stage make, in the same order. A stale CRL (`crl_stale = "refuse"`) refuses
/// new handshakes but does not end established connections: a CRL server outage must not disconnect a
/// fleet.
pub(crate) fn verdict(
    verifier: &dyn ClientCertVerifier,
    rules: &Rules,
    chain: &[CertificateDer<'static>],
) -> Result<(), Refused> {
    let Some((leaf, intermediates)) = chain.split_first() else { return Ok(()) };
    // A listener without client authentication has nothing to re-check (and rustls's verifier for it
    // must not be asked).
    if !verifier.offer_client_auth() {
        return Ok(());
    }
    match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        Ok(_) => {}
        Err(TlsError::InvalidCertificate(
            CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. },
        )) => {}
        Err(TlsError::InvalidCertificate(CertificateError::Revoked)) => {
            return Err(Refused { reason: CloseReason::Revoked, detail: "a CRL lists the certificate".into() })
        }
        Err(TlsError::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })) => {
            return Err(Refused { reason: CloseReason::Expired, detail: "the certificate has expired".into() })
        }
        Err(e) => return Err(Refused { reason: CloseReason::Untrusted, detail: e.to_string() }),
    }
    rules::admits_cert(rules, &ClientCert::parse(leaf))
        .map_err(|e| Refused { reason: CloseReason::NotAllowed, detail: e.to_string() })
}

/// What a connection's [`Standing`] wants next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Client trust changed and this connection's turn has come: check the chain again ([`verdict`]).
    Recheck,
    /// Close the connection now.
    Close(CloseReason),
}

/// One connection's standing: its registration (for trust changes and its deadline), the one moment it
/// must close by (expiry or lifetime), and when it is due to re-check after a trust change.
pub(crate) struct Standing {
    /// `None` when there is nothing to watch: no client certificate and no lifetime.
    entry: Option<Entry>,
    /// Expiry or lifetime, whichever is first.
    limit: Option<(Instant, CloseReason)>,
    /// After a trust change: this connection's random moment within the spread to re-check.
    recheck_at: Option<Instant>,
}

impl Standing {
    /// `entry` is the connection's registration with its listener, made before the handshake began
    /// (so no trust change after it is missed), `None` where nothing can need watching; `not_after` is the client certificate's, in Unix
    /// seconds (`None` without one).
    pub(crate) fn new(settings: &RecheckSettings, entry: Option<Entry>, not_after: Option<i64>) -> Standing {
        let now = Instant::now();
        let expiry = not_after
            .filter(|_| settings.close_at_cert_expiry)
            .and_then(|t| now.checked_add(until_unix(t)))
            .map(|at| (at, CloseReason::Expired));
        let lifetime = settings
            .max_lifetime
            .and_then(|life| now.checked_add(life.saturating_sub(share_of(life / 10))))
            .map(|at| (at, CloseReason::Lifetime));
        let limit = earliest(expiry, lifetime);
        let watched = not_after.is_some() || limit.is_some();
        Standing { entry: entry.filter(|_| watched), limit, recheck_at: None }
    }

    /// Ready with the next thing to do: re-check (at this connection's share of `spread` after a trust
    /// change, so the CPU of re-checking a whole listener and the closes that follow are both spread),
    /// or close (expiry, lifetime).
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>, spread: Duration) -> Poll<Event> {
        let Some(entry) = self.entry.as_ref() else { return Poll::Pending };
        let now = Instant::now();
        // A second change while a re-check is pending changes nothing: the re-check reads the trust in
        // force when it runs.
        if entry.take_flags(cx) & RECHECK != 0 && self.recheck_at.is_none() {
            self.recheck_at = Some(now + share_of(spread));
        }
        if self.recheck_at.is_some_and(|at| now >= at) {
            self.recheck_at = None;
            return Poll::Ready(Event::Recheck);
        }
        if let Some((at, reason)) = self.limit {
            if now >= at {
                return Poll::Ready(Event::Close(reason));
            }
        }
        let next = match (self.limit.map(|(at, _)| at), self.recheck_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        entry.arm(next);
        Poll::Pending
    }
}

fn earliest(a: Option<(Instant, CloseReason)>, b: Option<(Instant, CloseReason)>) -> Option<(Instant, CloseReason)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Time from now until `unix` seconds (a second past it, since a certificate is valid through its
/// notAfter second); zero if already past.
fn until_unix(unix: i64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Duration::from_secs(u64::try_from(unix).unwrap_or(0).saturating_add(1).saturating_sub(now))
}

/// A uniformly random part of `window` (std's randomly keyed hasher as the source: jitter needs no
/// more than that).
fn share_of(window: Duration) -> Duration {
    if window.is_zero() {
        return Duration::ZERO;
    }
    let r = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    window.mul_f64(r as f64 / u64::MAX as f64)
}

#[cfg(test)]
mod tests;
