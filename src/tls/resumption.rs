//! Session resumption that never outlives the client certificate.
//!
//! A resumed handshake verifies no certificate: rustls restores the client's chain from the ticket
//! (TLS 1.3 and 1.2 tickets) or from the TLS 1.2 session cache, and trusts it. What changes which
//! certificates are trusted is handled elsewhere: a new CA bundle or CRL comes with a new ticketer and
//! cache ([`crate::tls::build`]), so earlier sessions are gone. What remains is time: a certificate
//! that was valid when its session began expires later, and a ticket lives 12 hours and is renewed at
//! each resumption. So every session that comes back is checked against the clock first; one whose
//! client chain is no longer within its validity period is treated as unknown. The client then falls
//! back to a full handshake, where the certificate verifier refuses it exactly as it would refuse any
//! client presenting that certificate (same alert, same log reason, same metric label).
//!
//! rustls sets one ticket lifetime per ticketer, not per session, so a ticket's advertised lifetime
//! can't be cut to the certificate's remaining validity; the check on the way back in enforces it.
//!
//! The session value is rustls' own encoding (`ServerSessionValue`, rustls 0.23). Only its prefix up
//! to the client chain is read; anything that does not parse is refused (a full handshake follows),
//! so a future change of that encoding costs resumption, never trust. The tests in
//! `tests/resumption.rs` would show such a change: resumption before expiry must still work.

use std::sync::Arc;

use rustls::server::{ProducesTickets, StoresServerSessions};
use x509_parser::certificate::X509CertificateParser;
use x509_parser::nom::Parser;
use x509_parser::time::ASN1Time;

/// Wraps a ticketer: tickets are made as before, and refused on the way back once the client
/// certificate inside is out of its validity period.
#[derive(Debug)]
pub(crate) struct CheckedTickets {
    inner: Arc<dyn ProducesTickets>,
}

impl CheckedTickets {
    pub(crate) fn wrap(inner: Arc<dyn ProducesTickets>) -> Arc<dyn ProducesTickets> {
        Arc::new(CheckedTickets { inner })
    }
}

impl ProducesTickets for CheckedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.inner.decrypt(cipher).filter(|plain| still_valid(plain, ASN1Time::now()))
    }
}

/// Wraps the TLS 1.2 session-ID cache the same way: a cached session whose client certificate has
/// expired is not found (and is dropped from the cache).
#[derive(Debug)]
pub(crate) struct CheckedSessions {
    inner: Arc<dyn StoresServerSessions>,
}

impl CheckedSessions {
    pub(crate) fn wrap(inner: Arc<dyn StoresServerSessions>) -> Arc<dyn StoresServerSessions> {
        Arc::new(CheckedSessions { inner })
    }
}

impl StoresServerSessions for CheckedSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.inner.get(key) {
            Some(value) if still_valid(&value, ASN1Time::now()) => Some(value),
            Some(_) => {
                self.inner.take(key);
                None
            }
            None => None,
        }
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(key).filter(|value| still_valid(value, ASN1Time::now()))
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// Whether a stored session may resume at `now`: it has no client certificate, or every certificate
/// of the chain the client presented is within its validity period (webpki checks the leaf and the
/// intermediates of the path it builds; a presented certificate outside that path is checked too,
/// which can only cost a resumption, never admit a client).
fn still_valid(session: &[u8], now: ASN1Time) -> bool {
    let Some(chain) = client_chain(session) else {
        return false;
    };
    // Only the validity is read: the extensions are left unparsed (the leaf is parsed in full once
    // more, for its identity, when the connection reads its CONNECT).
    let mut parser = X509CertificateParser::new().with_deep_parse_extensions(false);
    chain.iter().all(|der| match parser.parse(der) {
        Ok((_, cert)) => cert.validity().is_valid_at(now),
        Err(_) => false,
    })
}

/// The client certificate chain of an encoded rustls `ServerSessionValue`: `Some(empty)` for a
/// session without one, `None` if the bytes don't parse.
///
/// Layout (rustls 0.23 `msgs/persist.rs`): sni (u8 flag, then u8-length name), version (u16),
/// cipher suite (u16), master secret (u8 length), extended master secret (u8), client chain (u8 flag,
/// then a u24-length list of u24-length DER certificates), then fields not needed here.
fn client_chain(session: &[u8]) -> Option<Vec<&[u8]>> {
    let mut r = Reader(session);
    if r.u8()? == 1 {
        let len = usize::from(r.u8()?);
        r.take(len)?;
    }
    r.take(2 + 2)?;
    let secret = usize::from(r.u8()?);
    r.take(secret)?;
    r.take(1)?;
    match r.u8()? {
        0 => return Some(Vec::new()),
        1 => {}
        _ => return None,
    }
    let list_len = r.u24()?;
    let mut list = Reader(r.take(list_len)?);
    let mut chain = Vec::new();
    while !list.0.is_empty() {
        let len = list.u24()?;
        chain.push(list.take(len)?);
    }
    Some(chain)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u24(&mut self) -> Option<usize> {
        match *self.take(3)? {
            [a, b, c] => Some(usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session value laid out as rustls 0.23 encodes it.
    fn session(sni: Option<&str>, chain: Option<&[&[u8]]>) -> Vec<u8> {
        let mut v = Vec::new();
        match sni {
            Some(name) => {
                v.push(1);
                v.push(name.len() as u8);
                v.extend_from_slice(name.as_bytes());
            }
            None => v.push(0),
        }
        v.extend_from_slice(&[0x03, 0x04, 0x13, 0x02]);
        v.push(48);
        v.extend_from_slice(&[0xAA; 48]);
        v.push(1);
        match chain {
            Some(certs) => {
                v.push(1);
                let body: Vec<u8> = certs
                    .iter()
                    .flat_map(|c| {
                        let n = c.len();
                        [&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..], c].concat()
                    })
                    .collect();
                let n = body.len();
                v.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
                v.extend_from_slice(&body);
            }
            None => v.push(0),
        }
        // alpn flag, application data, creation time, age offset: not read.
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        v
    }

    fn cert_valid_for(seconds: i64) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["device".to_string()]).expect("params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::seconds(seconds);
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_client_chain_is_found_after_the_fields_before_it() {
        let (a, b) = (vec![1u8, 2, 3], vec![4u8; 300]);
        let value = session(Some("mqtt.example.org"), Some(&[&a, &b]));
        assert_eq!(client_chain(&value), Some(vec![&a[..], &b[..]]));
        assert_eq!(client_chain(&session(None, None)), Some(vec![]));
    }

    #[test]
    fn a_truncated_or_garbled_session_has_no_chain() {
        let value = session(None, Some(&[&[9u8; 40]]));
        for end in 0..value.len() - 16 {
            assert_eq!(client_chain(&value[..end]), None, "prefix of {end} bytes");
        }
        let mut bad_flag = value.clone();
        bad_flag[4 + 1 + 1 + 48 + 1] = 7;
        assert_eq!(client_chain(&bad_flag), None);
    }

    #[test]
    fn a_session_resumes_while_its_certificate_is_valid_and_not_after() {
        let good = cert_valid_for(3600);
        let expired = cert_valid_for(-10);
        let now = ASN1Time::now();
        assert!(still_valid(&session(None, Some(&[&good])), now));
        assert!(!still_valid(&session(None, Some(&[&expired])), now));
        assert!(!still_valid(&session(None, Some(&[&good, &expired])), now), "an expired intermediate");
        assert!(still_valid(&session(None, None), now), "no client certificate: nothing expires");
        assert!(!still_valid(&session(None, Some(&[b"not DER"])), now));
    }
}
