//! A client's leaf certificate, parsed once per connection: the allow rules
//! ([`rules::admits_cert`](crate::x509::rules::admits_cert)), the username
//! ([`identity::username_of`](crate::x509::identity::username_of)) and the CN in the PROXY v2 header
//! to the broker all read the same parse.

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// A client's leaf certificate: its DER and the parse of it.
///
/// The TLS layer has verified the certificate, so the parse should not fail. If it does, the failure
/// is kept, and each reader refuses the certificate in its own terms with the same reason.
pub(crate) struct ClientCert<'a> {
    der: &'a [u8],
    parsed: Result<X509Certificate<'a>, String>,
}

impl<'a> ClientCert<'a> {
    /// Parses `der` as exactly one certificate: trailing bytes (which would make the SHA-256 differ
    /// from `openssl x509 -fingerprint`'s) are refused like garbage is.
    pub(crate) fn parse(der: &'a [u8]) -> ClientCert<'a> {
        let parsed = match X509Certificate::from_der(der) {
            Ok(([], cert)) => Ok(cert),
            Ok((rest, _)) => Err(format!("{} trailing bytes after the certificate", rest.len())),
            Err(e) => Err(e.to_string()),
        };
        ClientCert { der, parsed }
    }

    /// The certificate as received.
    pub(crate) fn der(&self) -> &'a [u8] {
        self.der
    }

    /// The parsed certificate, or why the DER is not one certificate.
    pub(crate) fn parsed(&self) -> Result<&X509Certificate<'a>, &str> {
        self.parsed.as_ref().map_err(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::identity::{username_of, IdentityError, UsernameFrom};
    use crate::x509::rules::{admits_cert, Refused, RuleKind, Rules};

    fn some_rule() -> Rules {
        let mut rules = Rules::default();
        rules.set(RuleKind::Cn, &["device-*".to_string()]).expect("valid glob");
        rules
    }

    #[test]
    fn one_parse_serves_the_rules_and_every_username() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["d1.example.org".to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "device-1");
        let cert = params.self_signed(&key).expect("cert");
        let leaf = ClientCert::parse(cert.der());
        assert!(admits_cert(&some_rule(), &leaf).is_ok());
        assert_eq!(username_of(&leaf, UsernameFrom::Cn).expect("cn"), "device-1");
        assert_eq!(username_of(&leaf, UsernameFrom::SanDns).expect("dns"), "d1.example.org");
        assert_eq!(username_of(&leaf, UsernameFrom::Sha256).expect("sha256").len(), 64);
    }

    #[test]
    fn a_leaf_that_does_not_parse_is_refused_by_each_reader_with_the_same_reason() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("params").self_signed(&key).expect("cert");
        let trailing = [cert.der().as_ref(), b"xy"].concat();
        for (der, reason) in [(&trailing[..], Some("2 trailing bytes after the certificate")), (b"junk", None)] {
            let leaf = ClientCert::parse(der);
            let Err(parse_error) = leaf.parsed() else { panic!("parsed") };
            if let Some(reason) = reason {
                assert_eq!(parse_error, reason);
            }
            let Err(Refused::NotACertificate(refused)) = admits_cert(&some_rule(), &leaf) else { panic!("admitted") };
            let Err(IdentityError::NotACertificate(unmapped)) = username_of(&leaf, UsernameFrom::Sha256) else {
                panic!("mapped")
            };
            assert_eq!((refused.as_str(), unmapped.as_str()), (parse_error, parse_error));
            // Without rules there is nothing to match: only the username refuses it.
            assert!(admits_cert(&Rules::default(), &leaf).is_ok());
        }
    }
}
