//! What an operator wants to know about a loaded certificate: for `/certs`, the expiry metrics and the
//! reload log line.

use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::x509::hex::{push_hex, Case};
use crate::x509::identity::sha256_hex;
use crate::x509::rfc2253::name_rfc2253;

/// A certificate, described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// RFC 2253, as OpenSSL prints it.
    pub subject: String,
    pub issuer: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Unix time.
    pub not_before: i64,
    pub not_after: i64,
    /// Lowercase hex SHA-256 of the DER.
    pub sha256: String,
}

impl CertInfo {
    /// Describes a DER certificate; `None` if it does not parse (callers have already validated it).
    pub fn from_der(der: &[u8]) -> Option<CertInfo> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let name = |n| name_rfc2253(n).unwrap_or_else(|e| format!("<unprintable: {e}>"));
        Some(CertInfo {
            subject: name(cert.subject()),
            issuer: name(cert.issuer()),
            serial: openssl_serial(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            sha256: sha256_hex(der),
        })
    }

    /// Whether `now` (Unix time) lies outside the validity period.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// Uppercase hex without separators, as `openssl x509 -serial` prints a serial number.
fn openssl_serial(raw: &[u8]) -> String {
    let mut out = String::with_capacity(2 * raw.len());
    push_hex(&mut out, raw, Case::Upper);
    out
}
