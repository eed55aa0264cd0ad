//! What an operator is shown of a loaded certificate. `/certs`, the expiry metrics' labels,
//! `mqtls check` and the reload log line all print this one description, so they agree.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::time::ASN1Time;

use crate::x509::hex::{push_hex, Case};
use crate::x509::identity::sha256_hex;
use crate::x509::rfc2253::name_rfc2253;

/// A certificate, described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// RFC 2253, as OpenSSL prints it (`openssl x509 -noout -subject -nameopt RFC2253`).
    pub subject: String,
    /// RFC 2253, as for `subject`.
    pub(crate) issuer: String,
    /// Uppercase hex without separators, as `openssl x509 -noout -serial` prints it.
    pub serial: String,
    /// Unix time.
    pub(crate) not_before: i64,
    /// Unix time.
    pub(crate) not_after: i64,
    /// Lowercase hex SHA-256 of the DER: the fingerprint `openssl x509 -noout -fingerprint -sha256`
    /// prints, without colons.
    pub sha256: String,
}

/// Whether a certificate is within its validity period at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Expired,
    NotYetValid,
}

impl CertInfo {
    /// Describes a DER certificate; `None` if it does not parse (callers have already validated it).
    pub(crate) fn from_der(der: &[u8]) -> Option<CertInfo> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        Some(CertInfo::of(&cert, der))
    }

    /// Describes `cert`, already parsed from `der`.
    pub(crate) fn of(cert: &X509Certificate<'_>, der: &[u8]) -> CertInfo {
        let name = |n| name_rfc2253(n).unwrap_or_else(|e| format!("<unprintable: {e}>"));
        let mut serial = String::with_capacity(2 * cert.raw_serial().len());
        push_hex(&mut serial, cert.raw_serial(), Case::Upper);
        CertInfo {
            subject: name(cert.subject()),
            issuer: name(cert.issuer()),
            serial,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            sha256: sha256_hex(der),
        }
    }

    /// `not_before` in RFC 3339 (UTC, whole seconds).
    pub fn not_before_rfc3339(&self) -> String {
        rfc3339(self.not_before)
    }

    /// `not_after` in RFC 3339 (UTC, whole seconds).
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }

    /// Whether the certificate is within its validity period now.
    pub fn validity(&self) -> Validity {
        self.validity_at(ASN1Time::now().timestamp())
    }

    /// Whether the certificate is within its validity period at `now` (Unix time); both ends count as
    /// inside.
    pub(crate) fn validity_at(&self, now: i64) -> Validity {
        if now < self.not_before {
            Validity::NotYetValid
        } else if now > self.not_after {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }
}

/// RFC 3339 for a Unix time; a time before 1970 (which RFC 3339 could show, but humantime cannot) as
/// x509-parser prints it.
pub(crate) fn rfc3339(unix: i64) -> String {
    match u64::try_from(unix) {
        Ok(secs) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string(),
        Err(_) => ASN1Time::from_timestamp(unix).map(|t| t.to_string()).unwrap_or_else(|_| unix.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SerialNumber};

    fn described(edit: impl FnOnce(&mut CertificateParams)) -> CertInfo {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        edit(&mut params);
        let cert = params.self_signed(&KeyPair::generate().expect("key")).expect("self-signed");
        CertInfo::from_der(cert.der()).expect("parses")
    }

    #[test]
    fn names_serial_and_fingerprint_print_as_openssl_prints_them() {
        let info = described(|p| {
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, "device, 1");
            p.distinguished_name.push(DnType::OrganizationName, "Acme");
            p.serial_number = Some(SerialNumber::from(vec![0x0a, 0xbc, 0xde]));
        });
        // RFC 2253: the last RDN first, commas in values escaped.
        assert_eq!(info.subject, r"O=Acme,CN=device\, 1");
        assert_eq!(info.issuer, info.subject, "self-signed");
        assert_eq!(info.serial, "0ABCDE");
        assert_eq!(info.sha256.len(), 64);
        assert!(info.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{}", info.sha256);
    }

    #[test]
    fn validity_period_in_unix_time_and_rfc_3339() {
        let info = described(|p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2099, 1, 1);
        });
        assert_eq!(info.not_before, 1_577_836_800);
        assert_eq!(info.not_before_rfc3339(), "2020-01-01T00:00:00Z");
        assert_eq!(info.not_after_rfc3339(), "2099-01-01T00:00:00Z");
        assert_eq!(info.validity(), Validity::Valid);
        assert_eq!(info.validity_at(info.not_before - 1), Validity::NotYetValid);
        assert_eq!(info.validity_at(info.not_before), Validity::Valid);
        assert_eq!(info.validity_at(info.not_after), Validity::Valid);
        assert_eq!(info.validity_at(info.not_after + 1), Validity::Expired);
    }

    #[test]
    fn a_time_before_1970_still_prints() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert!(rfc3339(-86_400).contains("1969"), "{}", rfc3339(-86_400));
    }
}
