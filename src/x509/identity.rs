//! Maps a verified client certificate to an MQTT username.
//!
//! The TLS layer has already verified the chain; this module only decides
//! which certificate field names the client. Everything here parses bytes that
//! arrived from the network, so nothing panics: every oddity is an
//! [`IdentityError`] and the connection is refused rather than mapped to a
//! guessed name (a wrong username is a privilege problem, a refusal is not).
//!
//! [`subject_rfc2253`] reproduces OpenSSL's `X509_NAME_print_ex(.., 0,
//! XN_FLAG_RFC2253)` byte for byte (the printing is in `x509::rfc2253`),
//! because that is the username Mosquitto's `use_subject_as_username`
//! produces and existing ACL files are keyed on it.

use std::fmt;

use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::{Any, Class};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::x509::hex::{push_hex, Case};
use crate::x509::rfc2253::name_rfc2253;
use crate::x509::ClientCert;

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

/// The username for a verified leaf certificate (DER); [`username_of`] for one already parsed.
pub fn username(cert_der: &[u8], from: UsernameFrom) -> Result<String, IdentityError> {
    username_of(&ClientCert::parse(cert_der), from)
}

/// The username for a verified leaf certificate.
///
/// The certificate must have parsed even for `sha256`, so garbage (or trailing
/// bytes, which would make the fingerprint differ from `openssl x509
/// -fingerprint`) is refused the same way in every mode.
pub(crate) fn username_of(leaf: &ClientCert<'_>, from: UsernameFrom) -> Result<String, IdentityError> {
    let cert = leaf.parsed().map_err(|reason| IdentityError::NotACertificate(reason.to_owned()))?;
    let field = from.field();
    let name = match from {
        UsernameFrom::Cn => common_name(cert)?,
        UsernameFrom::Subject => subject_rfc2253(cert)?,
        UsernameFrom::SanDns | UsernameFrom::SanUri | UsernameFrom::SanEmail => first_san(cert, from)?,
        UsernameFrom::Sha256 => sha256_hex(leaf.der()),
    };
    check_mqtt_username(field, name)
}

/// Lowercase hex without separators, the form `sha256sum` prints.
pub(crate) fn sha256_hex(der: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    push_hex(&mut out, &Sha256::digest(der), Case::Lower);
    out
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
pub(super) fn bmp_code_points(data: &[u8]) -> Option<Vec<char>> {
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
pub(super) fn universal_code_points(data: &[u8]) -> Option<Vec<char>> {
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

pub(super) const TAG_UTF8: u32 = 12;
pub(super) const TAG_NUMERIC: u32 = 18;
pub(super) const TAG_PRINTABLE: u32 = 19;
pub(super) const TAG_T61: u32 = 20;
pub(super) const TAG_IA5: u32 = 22;
pub(super) const TAG_UTCTIME: u32 = 23;
pub(super) const TAG_GENERALIZEDTIME: u32 = 24;
pub(super) const TAG_VISIBLE: u32 = 26;
pub(super) const TAG_UNIVERSAL: u32 = 28;
pub(super) const TAG_BMP: u32 = 30;

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
pub fn subject_rfc2253(cert: &X509Certificate<'_>) -> Result<String, IdentityError> {
    name_rfc2253(cert.subject())
}
