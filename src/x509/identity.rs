//! Maps a verified client certificate to an MQTT username.
//!
//! The TLS layer has already verified the chain; this module only decides
//! which certificate field names the client. Everything here parses bytes that
//! arrived from the network, so nothing panics: every oddity is an
//! [`IdentityError`] and the connection is refused rather than mapped to a
//! guessed name (a wrong username is a privilege problem, a refusal is not).
//!
//! [`subject_rfc2253`] reproduces OpenSSL's `X509_NAME_print_ex(.., 0,
//! XN_FLAG_RFC2253)` byte for byte, because that is the username Mosquitto's
//! `use_subject_as_username` produces and existing ACL files are keyed on it.

use std::fmt;

use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::{Any, Class, Oid};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// Which certificate field becomes the MQTT username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UsernameFrom {
    /// First subject CN (Mosquitto `use_identity_as_username`).
    #[default]
    Cn,
    /// Whole subject as OpenSSL prints it in RFC 2253 form (Mosquitto `use_subject_as_username`).
    Subject,
    /// First dNSName subjectAltName.
    SanDns,
    /// First URI subjectAltName (e.g. a SPIFFE ID).
    SanUri,
    /// First rfc822Name (e-mail) subjectAltName.
    SanEmail,
    /// Lowercase hex SHA-256 of the certificate DER (pins one certificate).
    Sha256,
}

impl UsernameFrom {
    /// The spelling used on the command line, in config files and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            UsernameFrom::Cn => "cn",
            UsernameFrom::Subject => "subject",
            UsernameFrom::SanDns => "san-dns",
            UsernameFrom::SanUri => "san-uri",
            UsernameFrom::SanEmail => "san-email",
            UsernameFrom::Sha256 => "sha256",
        }
    }

    /// Human name of the field, for error messages.
    fn field(self) -> &'static str {
        match self {
            UsernameFrom::Cn => "subject CN",
            UsernameFrom::Subject => "subject",
            UsernameFrom::SanDns => "dNSName subjectAltName",
            UsernameFrom::SanUri => "URI subjectAltName",
            UsernameFrom::SanEmail => "rfc822Name (e-mail) subjectAltName",
            UsernameFrom::Sha256 => "SHA-256 fingerprint",
        }
    }
}

impl fmt::Display for UsernameFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a certificate could not be mapped to a username.
///
/// Messages name the field and say what to change (the certificate or the
/// `username-from` setting), since the operator reads them in logs.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not one DER X.509 certificate.
    #[error("client certificate is not a valid DER X.509 certificate: {0}")]
    NotACertificate(String),
    /// The selected field is absent.
    #[error("client certificate has no {field}; reissue it with one or choose another username-from")]
    Missing { field: &'static str },
    /// The field's bytes do not decode unambiguously to UTF-8 text.
    #[error("client certificate {field} ({string_type}) cannot be used as a username: {reason}; reissue it with a UTF8String value or choose username-from=sha256")]
    NotUtf8 { field: &'static str, string_type: &'static str, reason: &'static str },
    /// The field is of an ASN.1 type that is not a character string.
    #[error("client certificate {field} has ASN.1 type tag {tag}, which is not a supported character string; reissue it with a UTF8String value")]
    UnsupportedStringType { field: &'static str, tag: u32 },
    /// The field holds U+0000, which MQTT forbids and C brokers truncate at.
    #[error("client certificate {field} contains a NUL character, which MQTT forbids in usernames (and which would truncate it in C brokers)")]
    ContainsNul { field: &'static str },
    /// The field holds a control character or Unicode noncharacter.
    #[error("client certificate {field} contains U+{code_point:04X}, a control character or Unicode noncharacter that MQTT brokers may reject in usernames")]
    ContainsControl { field: &'static str, code_point: u32 },
    /// The field is present but empty.
    #[error("client certificate {field} is empty; an empty username would not identify the client")]
    Empty { field: &'static str },
    /// The resulting username does not fit an MQTT UTF-8 string.
    #[error(
        "client certificate {field} gives a {len}-byte username, longer than the 65535 bytes an MQTT string can hold"
    )]
    TooLong { field: &'static str, len: usize },
    /// The subject is malformed in a way OpenSSL would also refuse or mangle.
    #[error("client certificate subject cannot be printed as OpenSSL would: {0}")]
    MalformedSubject(String),
    /// The subjectAltName extension is malformed or duplicated.
    #[error("client certificate subjectAltName extension is unusable: {0}")]
    BadExtension(String),
}

impl IdentityError {
    /// A short, fixed label for metrics (bounded cardinality: no field values).
    pub fn label(&self) -> &'static str {
        match self {
            IdentityError::NotACertificate(_) => "not_a_certificate",
            IdentityError::Missing { .. } => "missing_field",
            IdentityError::NotUtf8 { .. } => "not_utf8",
            IdentityError::UnsupportedStringType { .. } => "unsupported_string_type",
            IdentityError::ContainsNul { .. } => "contains_nul",
            IdentityError::ContainsControl { .. } => "contains_control",
            IdentityError::Empty { .. } => "empty",
            IdentityError::TooLong { .. } => "too_long",
            IdentityError::MalformedSubject(_) => "malformed_subject",
            IdentityError::BadExtension(_) => "bad_extension",
        }
    }
}

/// Longest string an MQTT UTF-8 string field can carry (2-byte length prefix).
const MQTT_STRING_MAX: usize = 65_535;

/// The username for a verified leaf certificate (DER).
///
/// The certificate is parsed even for `sha256`, so garbage (or trailing bytes,
/// which would make the fingerprint differ from `openssl x509 -fingerprint`)
/// is refused the same way in every mode.
pub fn username(cert_der: &[u8], from: UsernameFrom) -> Result<String, IdentityError> {
    let cert = parse_certificate(cert_der)?;
    let field = from.field();
    let name = match from {
        UsernameFrom::Cn => common_name(&cert)?,
        UsernameFrom::Subject => subject_rfc2253(&cert)?,
        UsernameFrom::SanDns | UsernameFrom::SanUri | UsernameFrom::SanEmail => first_san(&cert, from)?,
        UsernameFrom::Sha256 => sha256_hex(cert_der),
    };
    check_mqtt_username(field, name)
}

/// Parses exactly one certificate, refusing trailing bytes.
fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::NotACertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::NotACertificate(format!("{} trailing bytes after the certificate", rest.len())));
    }
    Ok(cert)
}

/// Lowercase hex without separators, the form `sha256sum` prints.
pub(crate) fn sha256_hex(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 0x0f));
    }
    out
}

/// Lowercase hex digit of the low nibble.
fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble & 0x0f), 16).unwrap_or('0')
}

/// Rules every username obeys whatever field it came from: MQTT forbids NUL
/// ([MQTT-1.5.4-2]) and lets brokers reject control characters and
/// noncharacters ([MQTT-1.5.4-3]); Mosquitto does reject them.
fn check_mqtt_username(field: &'static str, name: String) -> Result<String, IdentityError> {
    if name.is_empty() {
        return Err(IdentityError::Empty { field });
    }
    if name.len() > MQTT_STRING_MAX {
        return Err(IdentityError::TooLong { field, len: name.len() });
    }
    for c in name.chars() {
        let cp = u32::from(c);
        if cp == 0 {
            return Err(IdentityError::ContainsNul { field });
        }
        let control = cp < 0x20 || (0x7f..=0x9f).contains(&cp);
        let nonchar = (0xfdd0..=0xfdef).contains(&cp) || (cp & 0xfffe) == 0xfffe;
        if control || nonchar {
            return Err(IdentityError::ContainsControl { field, code_point: cp });
        }
    }
    Ok(name)
}

// ---------------------------------------------------------------------------
// cn

/// OID 2.5.4.3 (commonName), content octets.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

/// The first CN in DER order, which is what OpenSSL's
/// `X509_NAME_get_index_by_NID(.., NID_commonName, -1)` (and so Mosquitto) picks.
pub(crate) fn common_name(cert: &X509Certificate<'_>) -> Result<String, IdentityError> {
    let field = UsernameFrom::Cn.field();
    let attr = cert
        .subject()
        .iter_attributes()
        .find(|a| a.attr_type().as_bytes() == OID_CN)
        .ok_or(IdentityError::Missing { field })?;
    decode_directory_string(field, attr.attr_value())
}

/// OID 2.5.4.11 (organizationalUnitName), content octets.
const OID_OU: &[u8] = &[0x55, 0x04, 0x0b];

/// Every subject OU in DER order, decoded as [`decode_directory_string`] decodes a CN; a value that
/// is not unambiguous text is skipped (it can match nothing).
pub(crate) fn organizational_units(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject()
        .iter_attributes()
        .filter(|a| a.attr_type().as_bytes() == OID_OU)
        .filter_map(|a| decode_directory_string("subject OU", a.attr_value()).ok())
        .collect()
}

/// Decodes an X.520 DirectoryString (or one of the legacy string types) to
/// UTF-8 text, refusing anything whose meaning is ambiguous:
///
/// * UTF8String: must be valid UTF-8.
/// * PrintableString, IA5String, NumericString, VisibleString: ASCII only
///   (these types cannot legally hold anything else).
/// * TeletexString: ASCII only, because non-ASCII bytes are read as Latin-1
///   by OpenSSL but as UTF-8 by Mosquitto, so either choice would silently
///   disagree with one of them.
/// * BMPString: UCS-2 big endian; odd length or surrogates are refused.
/// * UniversalString: UCS-4 big endian; invalid scalar values are refused.
/// * Anything else: refused.
fn decode_directory_string(field: &'static str, value: &Any<'_>) -> Result<String, IdentityError> {
    let tag = value.header.tag().0;
    if value.header.class() != Class::Universal || value.header.is_constructed() {
        return Err(IdentityError::UnsupportedStringType { field, tag });
    }
    let data = value.data;
    let not_utf8 = |string_type, reason| IdentityError::NotUtf8 { field, string_type, reason };
    match tag {
        TAG_UTF8 => std::str::from_utf8(data)
            .map(str::to_owned)
            .map_err(|_| not_utf8("UTF8String", "its bytes are not valid UTF-8")),
        TAG_PRINTABLE | TAG_IA5 | TAG_NUMERIC | TAG_VISIBLE => {
            let string_type = match tag {
                TAG_PRINTABLE => "PrintableString",
                TAG_IA5 => "IA5String",
                TAG_NUMERIC => "NumericString",
                _ => "VisibleString",
            };
            ascii(data).ok_or(not_utf8(string_type, "it holds non-ASCII bytes, which this string type cannot contain"))
        }
        TAG_T61 => ascii(data).ok_or(not_utf8(
            "TeletexString",
            "its non-ASCII bytes have no agreed character set (OpenSSL reads Latin-1, Mosquitto UTF-8)",
        )),
        TAG_BMP => {
            let cps = bmp_code_points(data)
                .ok_or(not_utf8("BMPString", "it is not valid UCS-2 (odd length or surrogate code units)"))?;
            Ok(cps.into_iter().collect())
        }
        TAG_UNIVERSAL => {
            let cps = universal_code_points(data).ok_or(not_utf8(
                "UniversalString",
                "it is not valid UCS-4 (length not a multiple of 4 or not a Unicode scalar value)",
            ))?;
            Ok(cps.into_iter().collect())
        }
        _ => Err(IdentityError::UnsupportedStringType { field, tag }),
    }
}

fn ascii(data: &[u8]) -> Option<String> {
    if data.is_ascii() {
        Some(data.iter().map(|&b| char::from(b)).collect())
    } else {
        None
    }
}

/// UCS-2 big endian; `None` on odd length or any surrogate code unit.
fn bmp_code_points(data: &[u8]) -> Option<Vec<char>> {
    if data.len() % 2 != 0 {
        return None;
    }
    data.chunks_exact(2)
        .map(|unit| match *unit {
            [a, b] => char::from_u32(u32::from(u16::from_be_bytes([a, b]))),
            _ => None,
        })
        .collect()
}

/// UCS-4 big endian; `None` on a partial unit or a non-scalar value.
fn universal_code_points(data: &[u8]) -> Option<Vec<char>> {
    if data.len() % 4 != 0 {
        return None;
    }
    data.chunks_exact(4)
        .map(|unit| match *unit {
            [a, b, c, d] => char::from_u32(u32::from_be_bytes([a, b, c, d])),
            _ => None,
        })
        .collect()
}

const TAG_UTF8: u32 = 12;
const TAG_NUMERIC: u32 = 18;
const TAG_PRINTABLE: u32 = 19;
const TAG_T61: u32 = 20;
const TAG_IA5: u32 = 22;
const TAG_UTCTIME: u32 = 23;
const TAG_GENERALIZEDTIME: u32 = 24;
const TAG_VISIBLE: u32 = 26;
const TAG_UNIVERSAL: u32 = 28;
const TAG_BMP: u32 = 30;

// ---------------------------------------------------------------------------
// subjectAltName

/// The first SAN of the selected kind, in extension order.
///
/// If that first entry is not valid text the certificate is refused instead
/// of falling through to a later entry, so "first" always means the same one.
fn first_san(cert: &X509Certificate<'_>, from: UsernameFrom) -> Result<String, IdentityError> {
    let field = from.field();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadExtension(e.to_string()))?
        .ok_or(IdentityError::Missing { field })?;
    // GeneralName context tags: rfc822Name [1], dNSName [2], URI [6].
    let wanted_tag = match from {
        UsernameFrom::SanEmail => 1,
        UsernameFrom::SanDns => 2,
        _ => 6,
    };
    for gn in &san.value.general_names {
        let text = match (gn, from) {
            (GeneralName::DNSName(s), UsernameFrom::SanDns)
            | (GeneralName::URI(s), UsernameFrom::SanUri)
            | (GeneralName::RFC822Name(s), UsernameFrom::SanEmail) => *s,
            (GeneralName::Invalid(tag, _), _) if tag.0 == wanted_tag => {
                return Err(IdentityError::NotUtf8 {
                    field,
                    string_type: "IA5String",
                    reason: "its bytes are not valid text",
                })
            }
            _ => continue,
        };
        if !text.is_ascii() {
            return Err(IdentityError::NotUtf8 {
                field,
                string_type: "IA5String",
                reason: "it holds non-ASCII bytes, which this string type cannot contain",
            });
        }
        return Ok(text.to_owned());
    }
    Err(IdentityError::Missing { field })
}

// ---------------------------------------------------------------------------
// subject, OpenSSL XN_FLAG_RFC2253 style

/// The subject exactly as OpenSSL's `X509_NAME_print_ex(.., 0, XN_FLAG_RFC2253)`
/// prints it (what Mosquitto's `use_subject_as_username` uses).
///
/// Follows OpenSSL 3.0 `crypto/asn1/a_strex.c` (`do_name_ex`, `do_print_ex`,
/// `do_buf`, `do_esc_char`, `charmap.h`). Where OpenSSL would refuse to parse
/// the certificate or would silently drop characters (invalid UTF8String,
/// odd-length BMPString, surrogates, out-of-range UniversalString, malformed
/// OIDs) this returns [`IdentityError::MalformedSubject`] instead, so two
/// different subjects can never print the same.
pub fn subject_rfc2253(cert: &X509Certificate<'_>) -> Result<String, IdentityError> {
    name_rfc2253(cert.subject())
}

/// Any X.509 name (subject or issuer) exactly as OpenSSL's `XN_FLAG_RFC2253` prints it.
pub fn name_rfc2253(name: &X509Name<'_>) -> Result<String, IdentityError> {
    // OpenSSL flattens the RDNs into one entry list, each entry remembering
    // its RDN ("set") index; XN_FLAG_DN_REV walks that flat list backwards,
    // so a multi-valued RDN comes out reversed too.
    let entries: Vec<(usize, &x509_parser::x509::AttributeTypeAndValue<'_>)> =
        name.iter().enumerate().flat_map(|(set, rdn)| rdn.iter().map(move |atv| (set, atv))).collect();
    let mut out = String::new();
    let mut prev_set = None;
    for (set, atv) in entries.iter().rev() {
        if let Some(prev) = prev_set {
            out.push(if prev == *set { '+' } else { ',' });
        }
        prev_set = Some(*set);
        let oid = oid_dotted(atv.attr_type())?;
        match short_name(&oid) {
            Some(sn) => {
                out.push_str(sn);
                out.push('=');
                print_value(&mut out, atv.attr_value())?;
            }
            None => {
                // OBJ_obj2txt into OpenSSL's char objtmp[80]: at most 79 chars.
                out.push_str(oid.get(..79).unwrap_or(&oid));
                out.push('=');
                // XN_FLAG_DUMP_UNKNOWN_FIELDS: unknown types are always dumped.
                dump_der(&mut out, atv.attr_value());
            }
        }
    }
    Ok(out)
}

/// `do_print_ex` with ASN1_STRFLGS_RFC2253: strings are converted to UTF-8
/// and escaped; types OpenSSL has no character width for are DER-dumped.
fn print_value(out: &mut String, value: &Any<'_>) -> Result<(), IdentityError> {
    let hdr = &value.header;
    if hdr.class() != Class::Universal || hdr.is_constructed() {
        dump_der(out, value);
        return Ok(());
    }
    let data = value.data;
    let malformed = |what: &str| IdentityError::MalformedSubject(what.to_owned());
    // ASN1_STRFLGS_UTF8_CONVERT: UTF8String bytes are passed through as-is
    // (OpenSSL treats them as width 1 "to avoid converting twice"); the
    // 1-byte types are read as Latin-1 and converted to UTF-8;
    // BMP/Universal are UCS-2/UCS-4 converted to UTF-8.
    let utf8: Vec<u8> = match hdr.tag().0 {
        TAG_UTF8 => {
            if std::str::from_utf8(data).is_err() {
                return Err(malformed("a UTF8String value is not valid UTF-8"));
            }
            data.to_vec()
        }
        TAG_NUMERIC | TAG_PRINTABLE | TAG_T61 | TAG_IA5 | TAG_UTCTIME | TAG_GENERALIZEDTIME | TAG_VISIBLE => {
            data.iter().map(|&b| char::from(b)).collect::<String>().into_bytes()
        }
        TAG_BMP => bmp_code_points(data)
            .ok_or_else(|| malformed("a BMPString value is not valid UCS-2"))?
            .into_iter()
            .collect::<String>()
            .into_bytes(),
        TAG_UNIVERSAL => universal_code_points(data)
            .ok_or_else(|| malformed("a UniversalString value is not valid UCS-4"))?
            .into_iter()
            .collect::<String>()
            .into_bytes(),
        // tag2nbyte[] == -1 with ASN1_STRFLGS_DUMP_UNKNOWN | DUMP_DER.
        _ => {
            dump_der(out, value);
            return Ok(());
        }
    };
    escape_rfc2253(out, &utf8);
    Ok(())
}

/// `do_buf` + `do_esc_char` with ESC_2253 | ESC_CTRL | ESC_MSB, no ESC_QUOTE.
///
/// Position flags follow `do_buf` exactly: the first byte gets the "first"
/// flag, the last byte gets the "last" flag *instead* (it is assigned, not
/// or-ed), so a one-character value "#" is not escaped but " " is. Those
/// flags only matter for ASCII, so working on UTF-8 bytes is equivalent to
/// OpenSSL's per-character loop.
fn escape_rfc2253(out: &mut String, bytes: &[u8]) {
    let last = bytes.len().saturating_sub(1);
    for (i, &b) in bytes.iter().enumerate() {
        let is_last = i == last;
        let is_first = i == 0 && !is_last;
        match b {
            // char_type bit ASN1_STRFLGS_ESC_2253 (charmap.h): backslash-escaped.
            b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            // CHARTYPE_FIRST_ESC_2253 only.
            b'#' if is_first => out.push_str("\\#"),
            // CHARTYPE_FIRST_ESC_2253 | CHARTYPE_LAST_ESC_2253.
            b' ' if is_first || is_last => out.push_str("\\ "),
            // ASN1_STRFLGS_ESC_CTRL (0x00-0x1f, 0x7f) and ESC_MSB (> 0x7f).
            0x00..=0x1f | 0x7f..=0xff => push_hex_escape(out, b),
            _ => out.push(char::from(b)),
        }
    }
}

fn push_hex_escape(out: &mut String, b: u8) {
    out.push('\\');
    push_hex_byte(out, b);
}

fn push_hex_byte(out: &mut String, b: u8) {
    // OpenSSL's do_esc_char and do_hex_dump both use uppercase digits.
    out.push(hex_digit(b >> 4).to_ascii_uppercase());
    out.push(hex_digit(b & 0x0f).to_ascii_uppercase());
}

/// `do_dump` with ASN1_STRFLGS_DUMP_DER: `#` and the uppercase hex of the
/// value's DER encoding (identifier, definite length, contents).
fn dump_der(out: &mut String, value: &Any<'_>) {
    out.push('#');
    let hdr = &value.header;
    let class_bits: u8 = (hdr.class() as u8) << 6;
    let constructed: u8 = if hdr.is_constructed() { 0x20 } else { 0 };
    let tag = hdr.tag().0;
    if tag < 31 {
        // tag < 31 fits the low five bits.
        push_hex_byte(out, class_bits | constructed | (tag as u8));
    } else {
        push_hex_byte(out, class_bits | constructed | 0x1f);
        for b in base128(u128::from(tag)) {
            push_hex_byte(out, b);
        }
    }
    let len = value.data.len();
    if len < 0x80 {
        push_hex_byte(out, len as u8);
    } else {
        let be = len.to_be_bytes();
        let skip = be.iter().take_while(|&&b| b == 0).count();
        let significant = be.get(skip..).unwrap_or(&[]);
        push_hex_byte(out, 0x80 | significant.len() as u8);
        for &b in significant {
            push_hex_byte(out, b);
        }
    }
    for &b in value.data {
        push_hex_byte(out, b);
    }
}

/// Base-128 big-endian with continuation bits, as in tags and OID arcs.
fn base128(mut v: u128) -> Vec<u8> {
    let mut rev = vec![(v & 0x7f) as u8];
    v >>= 7;
    while v > 0 {
        rev.push(0x80 | (v & 0x7f) as u8);
        v >>= 7;
    }
    rev.reverse();
    rev
}

/// Dotted-decimal OID text as `OBJ_obj2txt(.., no_name = 1)` writes it.
///
/// Non-minimal sub-identifiers are refused (OpenSSL's `c2i_ASN1_OBJECT`
/// rejects them); arcs beyond 128 bits, which OpenSSL would print with a
/// bignum, are refused as well since no real attribute type has them.
fn oid_dotted(oid: &Oid<'_>) -> Result<String, IdentityError> {
    let bytes = oid.as_bytes();
    let malformed = || IdentityError::MalformedSubject("an attribute type OID is malformed".into());
    if bytes.is_empty() || bytes.last().is_some_and(|b| b & 0x80 != 0) {
        return Err(malformed());
    }
    let mut out = String::new();
    let mut acc: u128 = 0;
    let mut start = true;
    let mut first_arc = true;
    for &b in bytes {
        if start && b == 0x80 {
            return Err(malformed());
        }
        if acc > (u128::MAX >> 7) {
            return Err(malformed());
        }
        acc = (acc << 7) | u128::from(b & 0x7f);
        start = b & 0x80 == 0;
        if start {
            if first_arc {
                let (a, rest) = match acc {
                    0..=39 => (0, acc),
                    40..=79 => (1, acc - 40),
                    _ => (2, acc - 80),
                };
                out.push_str(&format!("{a}.{rest}"));
                first_arc = false;
            } else {
                out.push_str(&format!(".{acc}"));
            }
            acc = 0;
        }
    }
    Ok(out)
}

/// OpenSSL 3.0 short names (`OBJ_nid2sn`) for the attribute types that occur
/// in distinguished names: every object OpenSSL's `obj_mac.h` defines directly
/// under the X.520 attribute arc 2.5.4, the COSINE/pilot arc
/// 0.9.2342.19200300.100.1, PKCS #9 1.2.840.113549.1.9, the EV jurisdiction
/// arc 1.3.6.1.4.1.311.60.2.1, the PKIX personal data arc 1.3.6.1.5.5.7.9 and
/// the Russian INN/OGRN/SNILS/OGRNIP attributes. Any other OID prints as
/// dotted digits with a DER dump, like an OID OpenSSL does not know.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.2" => "textEncodedORAddress",
        "0.9.2342.19200300.100.1.3" => "mail",
        "0.9.2342.19200300.100.1.4" => "info",
        "0.9.2342.19200300.100.1.5" => "favouriteDrink",
        "0.9.2342.19200300.100.1.6" => "roomNumber",
        "0.9.2342.19200300.100.1.7" => "photo",
        "0.9.2342.19200300.100.1.8" => "userClass",
        "0.9.2342.19200300.100.1.9" => "host",
        "0.9.2342.19200300.100.1.10" => "manager",
        "0.9.2342.19200300.100.1.11" => "documentIdentifier",
        "0.9.2342.19200300.100.1.12" => "documentTitle",
        "0.9.2342.19200300.100.1.13" => "documentVersion",
        "0.9.2342.19200300.100.1.14" => "documentAuthor",
        "0.9.2342.19200300.100.1.15" => "documentLocation",
        "0.9.2342.19200300.100.1.20" => "homeTelephoneNumber",
        "0.9.2342.19200300.100.1.21" => "secretary",
        "0.9.2342.19200300.100.1.22" => "otherMailbox",
        "0.9.2342.19200300.100.1.23" => "lastModifiedTime",
        "0.9.2342.19200300.100.1.24" => "lastModifiedBy",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.26" => "aRecord",
        "0.9.2342.19200300.100.1.27" => "pilotAttributeType27",
        "0.9.2342.19200300.100.1.28" => "mXRecord",
        "0.9.2342.19200300.100.1.29" => "nSRecord",
        "0.9.2342.19200300.100.1.30" => "sOARecord",
        "0.9.2342.19200300.100.1.31" => "cNAMERecord",
        "0.9.2342.19200300.100.1.37" => "associatedDomain",
        "0.9.2342.19200300.100.1.38" => "associatedName",
        "0.9.2342.19200300.100.1.39" => "homePostalAddress",
        "0.9.2342.19200300.100.1.40" => "personalTitle",
        "0.9.2342.19200300.100.1.41" => "mobileTelephoneNumber",
        "0.9.2342.19200300.100.1.42" => "pagerTelephoneNumber",
        "0.9.2342.19200300.100.1.43" => "friendlyCountryName",
        "0.9.2342.19200300.100.1.44" => "uid",
        "0.9.2342.19200300.100.1.45" => "organizationalStatus",
        "0.9.2342.19200300.100.1.46" => "janetMailbox",
        "0.9.2342.19200300.100.1.47" => "mailPreferenceOption",
        "0.9.2342.19200300.100.1.48" => "buildingName",
        "0.9.2342.19200300.100.1.49" => "dSAQuality",
        "0.9.2342.19200300.100.1.50" => "singleLevelQuality",
        "0.9.2342.19200300.100.1.51" => "subtreeMinimumQuality",
        "0.9.2342.19200300.100.1.52" => "subtreeMaximumQuality",
        "0.9.2342.19200300.100.1.53" => "personalSignature",
        "0.9.2342.19200300.100.1.54" => "dITRedirect",
        "0.9.2342.19200300.100.1.55" => "audio",
        "0.9.2342.19200300.100.1.56" => "documentPublisher",
        "1.2.643.3.131.1.1" => "INN",
        "1.2.643.100.1" => "OGRN",
        "1.2.643.100.3" => "SNILS",
        "1.2.643.100.5" => "OGRNIP",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "1.2.840.113549.1.9.2" => "unstructuredName",
        "1.2.840.113549.1.9.3" => "contentType",
        "1.2.840.113549.1.9.4" => "messageDigest",
        "1.2.840.113549.1.9.5" => "signingTime",
        "1.2.840.113549.1.9.6" => "countersignature",
        "1.2.840.113549.1.9.7" => "challengePassword",
        "1.2.840.113549.1.9.8" => "unstructuredAddress",
        "1.2.840.113549.1.9.9" => "extendedCertificateAttributes",
        "1.2.840.113549.1.9.14" => "extReq",
        "1.2.840.113549.1.9.15" => "SMIME-CAPS",
        "1.2.840.113549.1.9.16" => "SMIME",
        "1.2.840.113549.1.9.20" => "friendlyName",
        "1.2.840.113549.1.9.21" => "localKeyID",
        "1.3.6.1.4.1.311.60.2.1.1" => "jurisdictionL",
        "1.3.6.1.4.1.311.60.2.1.2" => "jurisdictionST",
        "1.3.6.1.4.1.311.60.2.1.3" => "jurisdictionC",
        "1.3.6.1.5.5.7.9.1" => "id-pda-dateOfBirth",
        "1.3.6.1.5.5.7.9.2" => "id-pda-placeOfBirth",
        "1.3.6.1.5.5.7.9.3" => "id-pda-gender",
        "1.3.6.1.5.5.7.9.4" => "id-pda-countryOfCitizenship",
        "1.3.6.1.5.5.7.9.5" => "id-pda-countryOfResidence",
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.13" => "description",
        "2.5.4.14" => "searchGuide",
        "2.5.4.15" => "businessCategory",
        "2.5.4.16" => "postalAddress",
        "2.5.4.17" => "postalCode",
        "2.5.4.18" => "postOfficeBox",
        "2.5.4.19" => "physicalDeliveryOfficeName",
        "2.5.4.20" => "telephoneNumber",
        "2.5.4.21" => "telexNumber",
        "2.5.4.22" => "teletexTerminalIdentifier",
        "2.5.4.23" => "facsimileTelephoneNumber",
        "2.5.4.24" => "x121Address",
        "2.5.4.25" => "internationaliSDNNumber",
        "2.5.4.26" => "registeredAddress",
        "2.5.4.27" => "destinationIndicator",
        "2.5.4.28" => "preferredDeliveryMethod",
        "2.5.4.29" => "presentationAddress",
        "2.5.4.30" => "supportedApplicationContext",
        "2.5.4.31" => "member",
        "2.5.4.32" => "owner",
        "2.5.4.33" => "roleOccupant",
        "2.5.4.34" => "seeAlso",
        "2.5.4.35" => "userPassword",
        "2.5.4.36" => "userCertificate",
        "2.5.4.37" => "cACertificate",
        "2.5.4.38" => "authorityRevocationList",
        "2.5.4.39" => "certificateRevocationList",
        "2.5.4.40" => "crossCertificatePair",
        "2.5.4.41" => "name",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.44" => "generationQualifier",
        "2.5.4.45" => "x500UniqueIdentifier",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.47" => "enhancedSearchGuide",
        "2.5.4.48" => "protocolInformation",
        "2.5.4.49" => "distinguishedName",
        "2.5.4.50" => "uniqueMember",
        "2.5.4.51" => "houseIdentifier",
        "2.5.4.52" => "supportedAlgorithms",
        "2.5.4.53" => "deltaRevocationList",
        "2.5.4.54" => "dmdName",
        "2.5.4.65" => "pseudonym",
        "2.5.4.72" => "role",
        "2.5.4.97" => "organizationIdentifier",
        "2.5.4.98" => "c3",
        "2.5.4.99" => "n3",
        "2.5.4.100" => "dnsName",
        _ => return None,
    })
}
