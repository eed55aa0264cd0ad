//! A CRL's signature, checked against the client CA that issued it with the rustls crypto provider's
//! own signature verification algorithms (no other crypto library).
//!
//! The provider's algorithms are keyed by the DER *contents* of the public key's and the signature's
//! AlgorithmIdentifier, so both are cut out of the raw DER here with a minimal TLV reader.

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::{issuer_name, CrlError};

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;

/// One DER element: (tag, the whole element, its contents, what follows).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// The first DER element of `input`. Definite lengths only.
fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        (bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)), rest)
    };
    let header = input.len() - rest.len();
    let (contents, after) = rest.split_at_checked(len)?;
    let whole = input.get(..header + len)?;
    Some((tag, whole, contents, after))
}

/// The contents of a SEQUENCE element that must come first in `input`, and what follows.
fn sequence(input: &[u8]) -> Option<(&[u8], &[u8])> {
    match tlv(input)? {
        (SEQUENCE, _, contents, after) => Some((contents, after)),
        _ => None,
    }
}

/// A BIT STRING's bits, which must be whole bytes.
fn whole_bytes(contents: &[u8]) -> Option<&[u8]> {
    match contents.split_first()? {
        (0, bits) => Some(bits),
        _ => None,
    }
}

/// The signed parts of a CRL: (tbsCertList DER, signature AlgorithmIdentifier contents, signature).
fn signed_parts(raw: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (list, _) = sequence(raw)?;
    let (SEQUENCE, tbs, _, rest) = tlv(list)? else { return None };
    let (alg, rest) = sequence(rest)?;
    let (BIT_STRING, _, sig, _) = tlv(rest)? else { return None };
    Some((tbs, alg, whole_bytes(sig)?))
}

/// A certificate's public key: (AlgorithmIdentifier contents, the key bits).
fn public_key(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    let (info, _) = sequence(spki)?;
    let (alg, rest) = sequence(info)?;
    let (BIT_STRING, _, key, _) = tlv(rest)? else { return None };
    Some((alg, whole_bytes(key)?))
}

/// Whether `signature` over `message` verifies with the key of `spki`, by one of the provider's
/// algorithms matching both identifiers. Err: why not, in words.
fn verify(spki: &[u8], sig_alg: &[u8], message: &[u8], signature: &[u8]) -> Result<(), String> {
    let (key_alg, key) = public_key(spki).ok_or("the CA's public key does not parse")?;
    let provider = crate::tls::provider();
    let mut matched = false;
    for alg in provider.signature_verification_algorithms.all {
        if alg.public_key_alg_id().as_ref() != key_alg || alg.signature_alg_id().as_ref() != sig_alg {
            continue;
        }
        matched = true;
        if alg.verify_signature(key, message, signature).is_ok() {
            return Ok(());
        }
    }
    Err(if matched { "wrong signature" } else { "unsupported signature algorithm for this key" }.into())
}

/// Checks that `crl` is signed by one of `cas` whose subject is the CRL's issuer.
pub(super) fn signed_by_a_client_ca(
    crl: &CertificateRevocationList<'_>,
    cas: &[CertificateDer<'static>],
) -> Result<(), CrlError> {
    let issuer = issuer_name(crl);
    let (message, sig_alg, signature) =
        signed_parts(crl.as_raw()).ok_or_else(|| CrlError::Unparsable("the signature does not parse".into()))?;
    let mut reason = None;
    for der in cas {
        let Ok((_, ca)) = X509Certificate::from_der(der) else { continue };
        if ca.subject().as_raw() != crl.issuer().as_raw() {
            continue;
        }
        match verify(ca.public_key().raw, sig_alg, message, signature) {
            Ok(()) => return Ok(()),
            Err(why) => reason = Some(why),
        }
    }
    match reason {
        Some(reason) => Err(CrlError::BadSignature { issuer, reason }),
        None => Err(CrlError::UnknownIssuer(issuer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_reads_short_and_long_lengths_and_refuses_truncation() {
        assert_eq!(tlv(&[0x04, 0x01, 0xaa, 0xbb]), Some((0x04, &[0x04, 0x01, 0xaa][..], &[0xaa][..], &[0xbb][..])));
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        let (_, whole, contents, rest) = tlv(&long).expect("long form");
        assert_eq!((whole.len(), contents.len(), rest.len()), (0x83, 0x80, 0));
        assert_eq!(tlv(&[0x04, 0x02, 0xaa]), None, "truncated");
        assert_eq!(tlv(&[0x04, 0x80]), None, "indefinite length");
        assert_eq!(tlv(&[0x04, 0x85, 1, 1, 1, 1, 1]), None, "absurd length");
        assert_eq!(tlv(&[]), None);
    }

    #[test]
    fn bit_strings_with_unused_bits_are_refused() {
        assert_eq!(whole_bytes(&[0, 1, 2]), Some(&[1u8, 2][..]));
        assert_eq!(whole_bytes(&[3, 1, 2]), None);
        assert_eq!(whole_bytes(&[]), None);
    }
}
