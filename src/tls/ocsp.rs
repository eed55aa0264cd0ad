//! The OCSP response stapled with the server certificate (`ocsp_staple`): read just far enough to
//! refuse a file that would only mislead clients (not an OCSP response, not successful, revoked, for
//! another certificate) and to know when it stops being worth sending (its nextUpdate).
//!
//! The signature is not checked: the clients that ask for a staple verify it against the issuer, and
//! a staple is only ever as good as the responder that made it.

use x509_parser::asn1_rs::{Any, Class, Enumerated, FromDer, GeneralizedTime, OctetString, Oid, Sequence, Tag};

/// id-pkix-ocsp-basic (RFC 6960 4.2.1), the only response type clients understand.
const OCSP_BASIC: &str = "1.3.6.1.5.5.7.48.1.1";

/// Why a file is not a usable OCSP response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OcspError {
    #[error("not a DER OCSP response: {what} does not parse ({reason})")]
    Malformed { what: &'static str, reason: String },
    #[error("{0} bytes after the OCSP response")]
    Trailing(usize),
    #[error("the response status is {0}, not successful")]
    NotSuccessful(&'static str),
    #[error("the response status is successful but it holds no response")]
    NoBody,
    #[error("the response type is {0}, not id-pkix-ocsp-basic ({OCSP_BASIC})")]
    NotBasic(String),
    #[error("the response holds no certificate status")]
    NoStatus,
}

/// The certificate's status as the responder saw it at `this_update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    Revoked,
    Unknown,
}

impl CertStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CertStatus::Good => "good",
            CertStatus::Revoked => "revoked",
            CertStatus::Unknown => "unknown",
        }
    }
}

/// What the first SingleResponse of a successful basic OCSP response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspResponse {
    pub status: CertStatus,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds; none means "newer information is always available" (RFC 6960 2.4).
    pub next_update: Option<i64>,
    /// The certificate serial number the response is about: the INTEGER's content bytes.
    pub serial: Vec<u8>,
}

impl OcspResponse {
    /// The period the response may be stapled in.
    pub(crate) fn window(&self) -> StapleWindow {
        StapleWindow { this_update: self.this_update, next_update: self.next_update }
    }
}

/// From thisUpdate to nextUpdate: outside it a client would reject the staple (and a must-staple client
/// the handshake), so the certificate goes out without one instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StapleWindow {
    pub(crate) this_update: i64,
    /// None: no end (the response names no nextUpdate).
    pub(crate) next_update: Option<i64>,
}

impl StapleWindow {
    /// Whether to staple at `now` (unix seconds).
    pub(crate) fn serves_at(&self, now: i64) -> bool {
        now >= self.this_update && self.next_update.map_or(true, |next| now < next)
    }
}

fn malformed(what: &'static str) -> impl Fn(x509_parser::nom::Err<x509_parser::asn1_rs::Error>) -> OcspError {
    use x509_parser::nom::Err;
    move |e| OcspError::Malformed {
        what,
        reason: match e {
            Err::Incomplete(_) => "the data ends early".to_string(),
            Err::Error(e) | Err::Failure(e) => e.to_string(),
        },
    }
}

fn time(t: &GeneralizedTime, what: &'static str) -> Result<i64, OcspError> {
    t.utc_datetime().map(|dt| dt.unix_timestamp()).map_err(|e| OcspError::Malformed { what, reason: e.to_string() })
}

fn is_context(any: &Any<'_>, tag: u32) -> bool {
    any.class() == Class::ContextSpecific && any.tag() == Tag(tag)
}

/// Parses a DER OCSPResponse (RFC 6960 4.2.1) down to its first SingleResponse.
pub fn parse(der: &[u8]) -> Result<OcspResponse, OcspError> {
    let (rest, outer) = Sequence::from_der(der).map_err(malformed("OCSPResponse"))?;
    if !rest.is_empty() {
        return Err(OcspError::Trailing(rest.len()));
    }
    let (i, status) = Enumerated::from_der(&outer.content).map_err(malformed("responseStatus"))?;
    match status.0 {
        0 => {}
        1 => return Err(OcspError::NotSuccessful("malformedRequest")),
        2 => return Err(OcspError::NotSuccessful("internalError")),
        3 => return Err(OcspError::NotSuccessful("tryLater")),
        5 => return Err(OcspError::NotSuccessful("sigRequired")),
        6 => return Err(OcspError::NotSuccessful("unauthorized")),
        _ => return Err(OcspError::NotSuccessful("not a defined status")),
    }
    if i.is_empty() {
        return Err(OcspError::NoBody);
    }
    // responseBytes [0] EXPLICIT ResponseBytes
    let (_, tagged) = Any::from_der(i).map_err(malformed("responseBytes"))?;
    if !is_context(&tagged, 0) {
        return Err(OcspError::Malformed { what: "responseBytes", reason: "not tagged [0]".into() });
    }
    let (_, bytes) = Sequence::from_der(tagged.data).map_err(malformed("responseBytes"))?;
    let (i, kind) = Oid::from_der(&bytes.content).map_err(malformed("responseType"))?;
    let kind = kind.to_id_string();
    if kind != OCSP_BASIC {
        return Err(OcspError::NotBasic(kind));
    }
    let (_, response) = OctetString::from_der(i).map_err(malformed("response"))?;
    let (_, basic) = Sequence::from_der(response.as_cow()).map_err(malformed("BasicOCSPResponse"))?;
    let (_, tbs) = Sequence::from_der(&basic.content).map_err(malformed("tbsResponseData"))?;
    // version [0] EXPLICIT DEFAULT v1, then responderID (a [1] or [2] choice)
    let (mut i, mut field) = Any::from_der(&tbs.content).map_err(malformed("responderID"))?;
    if is_context(&field, 0) {
        (i, field) = Any::from_der(i).map_err(malformed("responderID"))?;
    }
    if !(is_context(&field, 1) || is_context(&field, 2)) {
        return Err(OcspError::Malformed { what: "responderID", reason: "not tagged [1] or [2]".into() });
    }
    let (i, _produced_at) = GeneralizedTime::from_der(i).map_err(malformed("producedAt"))?;
    let (_, responses) = Sequence::from_der(i).map_err(malformed("responses"))?;
    if responses.content.is_empty() {
        return Err(OcspError::NoStatus);
    }
    let (_, single) = Sequence::from_der(&responses.content).map_err(malformed("SingleResponse"))?;
    let (i, cert_id) = Sequence::from_der(&single.content).map_err(malformed("certID"))?;
    let serial = cert_id_serial(&cert_id.content)?;
    let (i, status) = Any::from_der(i).map_err(malformed("certStatus"))?;
    let status = match (status.class(), status.tag()) {
        (Class::ContextSpecific, Tag(0)) => CertStatus::Good,
        (Class::ContextSpecific, Tag(1)) => CertStatus::Revoked,
        (Class::ContextSpecific, Tag(2)) => CertStatus::Unknown,
        _ => return Err(OcspError::Malformed { what: "certStatus", reason: "not tagged [0], [1] or [2]".into() }),
    };
    let (i, this_update) = GeneralizedTime::from_der(i).map_err(malformed("thisUpdate"))?;
    let this_update = time(&this_update, "thisUpdate")?;
    let next_update = match Any::from_der(i) {
        Ok((_, next)) if is_context(&next, 0) => {
            let (_, t) = GeneralizedTime::from_der(next.data).map_err(malformed("nextUpdate"))?;
            Some(time(&t, "nextUpdate")?)
        }
        // Nothing more, or singleExtensions [1].
        _ => None,
    };
    Ok(OcspResponse { status, this_update, next_update, serial })
}

/// The serialNumber of a CertID (hashAlgorithm, issuerNameHash, issuerKeyHash, serialNumber).
fn cert_id_serial(content: &[u8]) -> Result<Vec<u8>, OcspError> {
    let (i, _algorithm) = Any::from_der(content).map_err(malformed("certID hashAlgorithm"))?;
    let (i, _name_hash) = OctetString::from_der(i).map_err(malformed("certID issuerNameHash"))?;
    let (i, _key_hash) = OctetString::from_der(i).map_err(malformed("certID issuerKeyHash"))?;
    let (_, serial) = Any::from_der(i).map_err(malformed("certID serialNumber"))?;
    if serial.class() != Class::Universal || serial.tag() != Tag::Integer {
        return Err(OcspError::Malformed { what: "certID serialNumber", reason: "not an INTEGER".into() });
    }
    Ok(serial.data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER TLV with a short or long length.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    fn gentime(s: &str) -> Vec<u8> {
        tlv(0x18, s.as_bytes())
    }

    /// A basic OCSP response with one SingleResponse; `status` is the certStatus TLV.
    fn response(status: &[u8], next_update: Option<&str>, with_version: bool) -> Vec<u8> {
        let sha1 = tlv(0x30, &[tlv(0x06, &[0x2b, 0x0e, 0x03, 0x02, 0x1a]), vec![0x05, 0x00]].concat());
        let cert_id = tlv(
            0x30,
            &[sha1.clone(), tlv(0x04, &[1; 20]), tlv(0x04, &[2; 20]), tlv(0x02, &[0x01, 0x02, 0x03])].concat(),
        );
        let mut single = [cert_id, status.to_vec(), gentime("20260101000000Z")].concat();
        if let Some(next) = next_update {
            single.extend(tlv(0xa0, &gentime(next)));
        }
        let responses = tlv(0x30, &tlv(0x30, &single));
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend(tlv(0xa0, &tlv(0x02, &[0])));
        }
        tbs.extend(tlv(0xa2, &tlv(0x04, &[3; 20])));
        tbs.extend(gentime("20260101000000Z"));
        tbs.extend(responses);
        let basic = tlv(0x30, &[tlv(0x30, &tbs), sha1, tlv(0x03, &[0, 1, 2, 3])].concat());
        let bytes = tlv(0x30, &[tlv(0x06, &[0x2b, 6, 1, 5, 5, 7, 48, 1, 1]), tlv(0x04, &basic)].concat());
        tlv(0x30, &[tlv(0x0a, &[0]), tlv(0xa0, &bytes)].concat())
    }

    const GOOD: &[u8] = &[0x80, 0x00];

    #[test]
    fn reads_status_times_and_serial() {
        let r = parse(&response(GOOD, Some("20260108000000Z"), false)).unwrap();
        assert_eq!(r.status, CertStatus::Good);
        assert_eq!(r.this_update, 1_767_225_600);
        assert_eq!(r.next_update, Some(1_767_225_600 + 7 * 86_400));
        assert_eq!(r.serial, vec![1, 2, 3]);
    }

    #[test]
    fn reads_revoked_unknown_a_version_and_no_next_update() {
        let revoked = tlv(0xa1, &gentime("20251201000000Z"));
        let r = parse(&response(&revoked, None, true)).unwrap();
        assert_eq!((r.status, r.next_update), (CertStatus::Revoked, None));
        let r = parse(&response(&[0x82, 0x00], Some("20260108000000Z"), true)).unwrap();
        assert_eq!(r.status, CertStatus::Unknown);
    }

    #[test]
    fn refuses_garbage_unsuccessful_other_types_and_trailing_bytes() {
        assert!(matches!(parse(b"not der at all"), Err(OcspError::Malformed { what: "OCSPResponse", .. })));
        assert_eq!(parse(&tlv(0x30, &tlv(0x0a, &[3]))), Err(OcspError::NotSuccessful("tryLater")));
        assert_eq!(parse(&tlv(0x30, &tlv(0x0a, &[0]))), Err(OcspError::NoBody));
        let other = tlv(0x30, &[tlv(0x06, &[0x2b, 6, 1, 5, 5, 7, 48, 1, 2]), tlv(0x04, &[])].concat());
        let r = parse(&tlv(0x30, &[tlv(0x0a, &[0]), tlv(0xa0, &other)].concat()));
        assert_eq!(r, Err(OcspError::NotBasic("1.3.6.1.5.5.7.48.1.2".into())));
        let mut trailing = response(GOOD, None, false);
        trailing.push(0);
        assert_eq!(parse(&trailing), Err(OcspError::Trailing(1)));
        let truncated = response(GOOD, None, false);
        assert!(parse(&truncated[..truncated.len() - 3]).is_err());
    }

    #[test]
    fn staples_from_this_update_until_next_update() {
        let window = StapleWindow { this_update: 100, next_update: Some(200) };
        assert!(!window.serves_at(99), "before thisUpdate");
        assert!(window.serves_at(100));
        assert!(window.serves_at(199));
        assert!(!window.serves_at(200), "at nextUpdate");
        assert!(!window.serves_at(10_000));
        let open = StapleWindow { this_update: 100, next_update: None };
        assert!(open.serves_at(i64::MAX));
        assert!(!open.serves_at(0));
    }
}
