//! X.509 names printed exactly as OpenSSL's `X509_NAME_print_ex(.., 0, XN_FLAG_RFC2253)` prints
//! them: the form Mosquitto's `use_subject_as_username` gives, `openssl x509 -nameopt RFC2253` shows,
//! the `issuer` allow rules match and `/certs` reports.
//!
//! Follows OpenSSL 3.0 `crypto/asn1/a_strex.c` (`do_name_ex`, `do_print_ex`, `do_buf`, `do_esc_char`,
//! `charmap.h`). Where OpenSSL would refuse to parse the certificate or would silently drop characters
//! (invalid UTF8String, odd-length BMPString, surrogates, out-of-range UniversalString, malformed OIDs)
//! this returns [`IdentityError::MalformedSubject`] instead, so two different names can never print
//! the same.

use x509_parser::asn1_rs::{Any, Class};
use x509_parser::x509::X509Name;

use crate::x509::hex::{push_hex, Case};
use crate::x509::identity::{
    bmp_code_points, universal_code_points, IdentityError, TAG_BMP, TAG_GENERALIZEDTIME, TAG_IA5, TAG_NUMERIC,
    TAG_PRINTABLE, TAG_T61, TAG_UNIVERSAL, TAG_UTCTIME, TAG_UTF8, TAG_VISIBLE,
};
use crate::x509::oid::{oid_dotted, short_name};

/// Any X.509 name (subject or issuer) exactly as OpenSSL's `XN_FLAG_RFC2253` prints it.
pub(crate) fn name_rfc2253(name: &X509Name<'_>) -> Result<String, IdentityError> {
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
    push_hex(out, &[b], OPENSSL_CASE);
}

/// OpenSSL's do_esc_char and do_hex_dump both use uppercase digits.
const OPENSSL_CASE: Case = Case::Upper;

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
        push_hex(out, &[class_bits | constructed | (tag as u8)], OPENSSL_CASE);
    } else {
        push_hex(out, &[class_bits | constructed | 0x1f], OPENSSL_CASE);
        push_hex(out, &base128(u128::from(tag)), OPENSSL_CASE);
    }
    let len = value.data.len();
    if len < 0x80 {
        push_hex(out, &[len as u8], OPENSSL_CASE);
    } else {
        let be = len.to_be_bytes();
        let skip = be.iter().take_while(|&&b| b == 0).count();
        let significant = be.get(skip..).unwrap_or(&[]);
        push_hex(out, &[0x80 | significant.len() as u8], OPENSSL_CASE);
        push_hex(out, significant, OPENSSL_CASE);
    }
    push_hex(out, value.data, OPENSSL_CASE);
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
