//! Specification of the certificate-to-username mapping.
//!
//! The `subject` mode must reproduce, byte for byte, what OpenSSL prints with
//! `-nameopt RFC2253` (that string is what Mosquitto's
//! `use_subject_as_username` puts into ACL files), so most tests here build an
//! awkward certificate with the real `openssl` CLI and compare against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mqtls::x509::identity::{self, IdentityError, UsernameFrom};
use rcgen::string::{BmpString, Ia5String, UniversalString};
use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair, SanType};
use tempfile::TempDir;
use x509_parser::prelude::{FromDer, X509Certificate};

// ---------------------------------------------------------------------------
// helpers

/// Runs the `openssl` CLI; a missing binary fails the test (never skips it).
fn openssl(args: &[&str]) -> Output {
    let out = Command::new("openssl").args(args).output().unwrap_or_else(|e| {
        panic!(
            "these tests need the `openssl` command-line tool; install the Debian package \
             `openssl` (apt-get install openssl): {e}"
        )
    });
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A certificate on disk (DER) plus its bytes; the directory lives as long as it.
struct Cert {
    _dir: TempDir,
    path: PathBuf,
    der: Vec<u8>,
}

impl Cert {
    fn from_der(der: Vec<u8>) -> Cert {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("cert.der");
        std::fs::write(&path, &der).unwrap();
        Cert { _dir: dir, path, der }
    }

    /// The same certificate with every occurrence of `from` replaced by `to`
    /// (issuer and subject of a self-signed certificate are equal, so both
    /// change). The signature breaks, which is irrelevant here: these
    /// functions only ever see certificates the TLS layer already verified.
    fn patched(&self, from: &[u8], to: &[u8]) -> Cert {
        assert_eq!(from.len(), to.len(), "patches must keep the DER lengths");
        let mut der = self.der.clone();
        let mut hits = 0;
        let mut i = 0;
        while i + from.len() <= der.len() {
            if &der[i..i + from.len()] == from {
                der[i..i + from.len()].copy_from_slice(to);
                hits += 1;
                i += from.len();
            } else {
                i += 1;
            }
        }
        assert!(hits > 0, "patch target not found in certificate");
        Cert::from_der(der)
    }

    /// What `openssl x509 -noout -subject -nameopt RFC2253` prints, minus `subject=`.
    fn openssl_subject(&self) -> String {
        let path = self.path.to_str().unwrap();
        let out = openssl(&["x509", "-inform", "DER", "-in", path, "-noout", "-subject", "-nameopt", "RFC2253"]);
        let text = String::from_utf8(out.stdout).expect("RFC 2253 output is ASCII");
        let line = text.strip_suffix('\n').unwrap_or(&text);
        line.strip_prefix("subject=").unwrap_or_else(|| panic!("unexpected openssl output {line:?}")).to_owned()
    }

    fn our_subject(&self) -> Result<String, IdentityError> {
        let (_, cert) = X509Certificate::from_der(&self.der).unwrap();
        identity::subject_rfc2253(&cert)
    }

    fn username(&self, from: UsernameFrom) -> Result<String, IdentityError> {
        identity::username(&self.der, from)
    }

    /// ASN.1 tag of the first subject attribute value with this dotted OID.
    fn subject_value_tag(&self, oid: &str) -> u32 {
        let (_, cert) = X509Certificate::from_der(&self.der).unwrap();
        let attr = cert.subject().iter_attributes().find(|a| a.attr_type().to_id_string() == oid).unwrap();
        attr.attr_value().header.tag().0
    }

    /// Asserts both that OpenSSL prints `expected` and that we print the same.
    fn assert_subject(&self, expected: &str) {
        let openssl_says = self.openssl_subject();
        assert_eq!(openssl_says, expected, "openssl printed something else");
        assert_eq!(self.our_subject().unwrap(), openssl_says);
    }
}

/// OpenSSL string_mask values (see `req(1)`): which ASN.1 string type `-subj` values get.
const UTF8ONLY: &str = "utf8only";
/// PrintableString where possible, else TeletexString (Latin-1 bytes).
const NOMBSTR: &str = "nombstr";
/// PrintableString, TeletexString or BMPString (for characters above U+00FF).
const DEFAULT_MASK: &str = "default";

/// A self-signed P-256 certificate made by `openssl req` with a private
/// config, so the system openssl.cnf cannot change the string types.
fn openssl_cert(subj: &str, string_mask: &str) -> Cert {
    let dir = TempDir::new().unwrap();
    let cnf = dir.path().join("req.cnf");
    std::fs::write(&cnf, format!("[req]\ndistinguished_name = dn\nstring_mask = {string_mask}\n[dn]\n")).unwrap();
    let key = dir.path().join("key.pem");
    let path = dir.path().join("cert.der");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-utf8",
        "-config",
        p(&cnf),
        "-keyout",
        p(&key),
        "-outform",
        "DER",
        "-out",
        p(&path),
        "-subj",
        subj,
    ]);
    let der = std::fs::read(&path).unwrap();
    Cert { _dir: dir, path, der }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A self-signed certificate made by rcgen, for string types, OIDs and
/// subjectAltNames the `openssl req` command line cannot express.
fn rcgen_cert(entries: Vec<(DnType, DnValue)>, sans: Vec<SanType>) -> Cert {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for (ty, value) in entries {
        dn.push(ty, value);
    }
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Cert::from_der(cert.der().to_vec())
}

fn cn(value: &str) -> (DnType, DnValue) {
    (DnType::CommonName, DnValue::Utf8String(value.to_owned()))
}

fn ia5(s: &str) -> Ia5String {
    Ia5String::try_from(s).unwrap()
}

const TAG_UTF8: u32 = 12;
const TAG_PRINTABLE: u32 = 19;
const TAG_T61: u32 = 20;
const TAG_UNIVERSAL: u32 = 28;
const TAG_BMP: u32 = 30;
const OID_CN: &str = "2.5.4.3";

// ---------------------------------------------------------------------------
// subject: layout

#[test]
fn subject_lists_rdns_last_first_with_plus_inside_multi_valued_rdns() {
    let cert = openssl_cert("/C=GB/ST=Notts/O=Acme, Inc./OU=Prod+OU=Ops/CN=Jürgen #1/emailAddress=j@x.org", UTF8ONLY);
    cert.assert_subject(r"emailAddress=j@x.org,CN=J\C3\BCrgen #1,OU=Prod+OU=Ops,O=Acme\, Inc.,ST=Notts,C=GB");
}

#[test]
fn subject_reverses_the_entries_inside_a_multi_valued_rdn() {
    // DER sorts the SET: CN=y encodes shorter than emailAddress, so it comes
    // first in the certificate and last when printed.
    let cert = openssl_cert("/CN=x/emailAddress=j@x.org+CN=y", UTF8ONLY);
    cert.assert_subject("emailAddress=j@x.org+CN=y,CN=x");
}

#[test]
fn subject_uses_openssl_short_names_for_email_serial_uid_and_dc() {
    let cert = openssl_cert("/DC=org/DC=example/UID=jdoe/serialNumber=1234/emailAddress=j@x.org/CN=J", UTF8ONLY);
    cert.assert_subject("CN=J,emailAddress=j@x.org,serialNumber=1234,UID=jdoe,DC=example,DC=org");
}

#[test]
fn subject_uses_openssl_short_names_for_ev_and_personal_attributes() {
    let cert = openssl_cert(
        "/street=1 Main/title=Dr/GN=Ann/SN=Lee/initials=AL/pseudonym=al/generationQualifier=III\
         /dnQualifier=q/postalCode=NG1/businessCategory=Private Organization/jurisdictionC=GB\
         /jurisdictionST=Notts/jurisdictionL=Nottingham/organizationIdentifier=VATGB-123\
         /name=Ann Lee/description=desc/L=Nottingham/ST=Notts/C=GB/CN=ev",
        UTF8ONLY,
    );
    cert.assert_subject(
        "CN=ev,C=GB,ST=Notts,L=Nottingham,description=desc,name=Ann Lee,\
         organizationIdentifier=VATGB-123,jurisdictionL=Nottingham,jurisdictionST=Notts,\
         jurisdictionC=GB,businessCategory=Private Organization,postalCode=NG1,dnQualifier=q,\
         generationQualifier=III,pseudonym=al,initials=AL,SN=Lee,GN=Ann,title=Dr,street=1 Main",
    );
}

#[test]
fn subject_prints_unknown_oid_as_dotted_number_with_der_hex_dump() {
    let cert =
        rcgen_cert(vec![cn("x"), (DnType::CustomDnType(vec![1, 2, 3, 4]), DnValue::Utf8String("foo".into()))], vec![]);
    cert.assert_subject("1.2.3.4=#0C03666F6F,CN=x");
}

#[test]
fn subject_truncates_unknown_oid_text_to_79_characters_like_openssl() {
    // OpenSSL formats the OID into a char[80] buffer.
    let arcs: Vec<u64> = [1, 3, 6, 1, 4, 1].into_iter().chain(std::iter::repeat(123_456_789).take(10)).collect();
    let cert = rcgen_cert(vec![(DnType::CustomDnType(arcs), DnValue::Utf8String("v".into()))], vec![]);
    let ours = cert.our_subject().unwrap();
    assert_eq!(ours, cert.openssl_subject());
    assert_eq!(ours.find('='), Some(79));
}

#[test]
fn subject_of_an_empty_name_is_empty() {
    let cert = rcgen_cert(vec![], vec![]);
    cert.assert_subject("");
}

// ---------------------------------------------------------------------------
// subject: escaping

#[test]
fn subject_backslash_escapes_rfc2253_special_characters() {
    // -subj needs `\+` and `\\` and `\/`; the value is a,b+c"d\e<f>g;h/i
    let cert = openssl_cert(r#"/CN=a,b\+c"d\\e<f>g;h\/i"#, UTF8ONLY);
    cert.assert_subject(r#"CN=a\,b\+c\"d\\e\<f\>g\;h/i"#);
}

#[test]
fn subject_escapes_hash_only_at_the_start() {
    let cert = openssl_cert("/CN=#1 #2", UTF8ONLY);
    cert.assert_subject(r"CN=\#1 #2");
}

#[test]
fn subject_escapes_spaces_only_at_the_start_and_end() {
    let cert = openssl_cert("/CN=  two  words  ", UTF8ONLY);
    cert.assert_subject(r"CN=\  two  words \ ");
}

#[test]
fn subject_does_not_escape_a_lone_hash_but_does_escape_a_lone_space() {
    // OpenSSL's do_buf gives a one-character value only the "last" flag,
    // and '#' is escaped only as the first character.
    openssl_cert("/CN=#", UTF8ONLY).assert_subject("CN=#");
    openssl_cert("/CN= ", UTF8ONLY).assert_subject(r"CN=\ ");
}

#[test]
fn subject_does_not_escape_equals_signs() {
    let cert = openssl_cert("/CN=a=b", UTF8ONLY);
    cert.assert_subject("CN=a=b");
}

#[test]
fn subject_leaves_other_ascii_punctuation_unescaped() {
    let cert = openssl_cert("/CN=~!@$%^&*()_-[]{}|:'?.`", UTF8ONLY);
    cert.assert_subject("CN=~!@$%^&*()_-[]{}|:'?.`");
}

#[test]
fn subject_hex_escapes_control_characters() {
    let cert = openssl_cert("/CN=a\nb\tc\x7f", UTF8ONLY);
    cert.assert_subject(r"CN=a\0Ab\09c\7F");
}

#[test]
fn subject_hex_escapes_nul() {
    let cert = openssl_cert("/CN=@@@/O=x", UTF8ONLY).patched(b"\x0c\x03@@@", b"\x0c\x03x\x00y");
    cert.assert_subject(r"O=x,CN=x\00y");
}

#[test]
fn subject_hex_escapes_each_utf8_byte_above_0x7f_in_uppercase() {
    let cert = openssl_cert("/C=DE/O=Zürich/CN=Jürgen 中文", UTF8ONLY);
    assert_eq!(cert.subject_value_tag(OID_CN), TAG_UTF8);
    cert.assert_subject(r"CN=J\C3\BCrgen \E4\B8\AD\E6\96\87,O=Z\C3\BCrich,C=DE");
}

// ---------------------------------------------------------------------------
// subject: string types

#[test]
fn subject_prints_printable_string_and_utf8_string_identically() {
    let printable = openssl_cert("/O=Acme/CN=dev-01", NOMBSTR);
    let utf8 = openssl_cert("/O=Acme/CN=dev-01", UTF8ONLY);
    assert_eq!(printable.subject_value_tag(OID_CN), TAG_PRINTABLE);
    assert_eq!(utf8.subject_value_tag(OID_CN), TAG_UTF8);
    printable.assert_subject("CN=dev-01,O=Acme");
    utf8.assert_subject("CN=dev-01,O=Acme");
}

#[test]
fn subject_reads_teletex_string_as_latin1_and_prints_its_utf8_form() {
    let cert = openssl_cert("/CN=Zürich", NOMBSTR);
    assert_eq!(cert.subject_value_tag(OID_CN), TAG_T61);
    cert.assert_subject(r"CN=Z\C3\BCrich");
}

#[test]
fn subject_reads_bmp_string_as_ucs2_and_prints_its_utf8_form() {
    let cert = openssl_cert("/CN=中文 ü", DEFAULT_MASK);
    assert_eq!(cert.subject_value_tag(OID_CN), TAG_BMP);
    cert.assert_subject(r"CN=\E4\B8\AD\E6\96\87 \C3\BC");
}

#[test]
fn subject_reads_universal_string_as_ucs4_and_prints_its_utf8_form() {
    let value = UniversalString::try_from("Zürich 😀").unwrap();
    let cert = rcgen_cert(vec![(DnType::CommonName, DnValue::UniversalString(value))], vec![]);
    assert_eq!(cert.subject_value_tag(OID_CN), TAG_UNIVERSAL);
    cert.assert_subject(r"CN=Z\C3\BCrich \F0\9F\98\80");
}

#[test]
fn subject_dumps_a_known_attribute_of_a_non_string_type_as_der_hex() {
    // ObjectDescriptor (tag 7) has no character width in OpenSSL.
    let cert = openssl_cert("/CN=@@@/O=x", UTF8ONLY).patched(b"\x0c\x03@@@", b"\x07\x03@@@");
    cert.assert_subject("O=x,CN=#0703404040");
}

/// Asserts that OpenSSL refuses to load the certificate at all, so no
/// Mosquitto username exists that we would have to reproduce.
fn assert_openssl_cannot_load(cert: &Cert) {
    let status = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-in", p(&cert.path), "-noout", "-subject"])
        .output()
        .unwrap()
        .status;
    assert!(!status.success(), "openssl unexpectedly loaded it");
}

#[test]
fn subject_refuses_invalid_utf8_like_openssl_which_cannot_load_it() {
    let cert = openssl_cert("/CN=@@@", UTF8ONLY).patched(b"\x0c\x03@@@", b"\x0c\x03\xc3\x28@");
    assert_openssl_cannot_load(&cert);
    let err = cert.our_subject().unwrap_err();
    assert!(matches!(err, IdentityError::MalformedSubject(_)), "{err:?}");
}

#[test]
fn subject_refuses_bmp_string_surrogates_like_openssl_which_cannot_load_them() {
    let bmp = openssl_cert("/CN=中文", DEFAULT_MASK);
    // U+1F600 as a UTF-16 surrogate pair, then a lone high surrogate.
    for patch in [b"\x1e\x04\xd8\x3d\xde\x00", b"\x1e\x04\x00\x41\xd8\x3d"] {
        let cert = bmp.patched(b"\x1e\x04\x4e\x2d\x65\x87", patch);
        assert_openssl_cannot_load(&cert);
        let err = cert.our_subject().unwrap_err();
        assert!(matches!(err, IdentityError::MalformedSubject(_)), "{err:?}");
        let err = cert.username(UsernameFrom::Cn).unwrap_err();
        assert!(matches!(err, IdentityError::NotUtf8 { string_type: "BMPString", .. }), "{err:?}");
    }
}

#[test]
fn subject_refuses_bmp_and_universal_strings_with_a_partial_code_unit() {
    let utf8 = openssl_cert("/CN=@@@", UTF8ONLY);
    for retagged in [b"\x1e\x03@@@", b"\x1c\x03@@@"] {
        let cert = utf8.patched(b"\x0c\x03@@@", retagged);
        assert_openssl_cannot_load(&cert);
        let err = cert.our_subject().unwrap_err();
        assert!(matches!(err, IdentityError::MalformedSubject(_)), "{err:?}");
        let err = cert.username(UsernameFrom::Cn).unwrap_err();
        assert!(matches!(err, IdentityError::NotUtf8 { .. }), "{err:?}");
    }
}

// ---------------------------------------------------------------------------
// username: subject

#[test]
fn username_from_subject_is_the_rfc2253_subject() {
    let cert = openssl_cert("/O=Acme, Inc./CN=J #1", UTF8ONLY);
    assert_eq!(cert.username(UsernameFrom::Subject).unwrap(), r"CN=J #1,O=Acme\, Inc.");
}

#[test]
fn username_from_subject_refuses_an_empty_subject() {
    let cert = rcgen_cert(vec![], vec![]);
    let err = cert.username(UsernameFrom::Subject).unwrap_err();
    assert!(matches!(err, IdentityError::Empty { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------
// username: cn

#[test]
fn username_from_cn_takes_the_first_common_name() {
    let cert = openssl_cert("/O=Acme/CN=first/CN=second", UTF8ONLY);
    assert_eq!(cert.username(UsernameFrom::Cn).unwrap(), "first");
}

#[test]
fn username_from_cn_decodes_utf8_string() {
    let cert = openssl_cert("/CN=Jürgen 中文", UTF8ONLY);
    assert_eq!(cert.username(UsernameFrom::Cn).unwrap(), "Jürgen 中文");
}

#[test]
fn username_from_cn_decodes_printable_string() {
    let cert = openssl_cert("/CN=dev-01", NOMBSTR);
    assert_eq!(cert.subject_value_tag(OID_CN), TAG_PRINTABLE);
    assert_eq!(cert.username(UsernameFrom::Cn).unwrap(), "dev-01");
}

#[test]
fn username_from_cn_decodes_bmp_string_as_ucs2() {
    let cert = openssl_cert("/CN=中文 ü", DEFAULT_MASK);
    assert_eq!(cert.subject_value_tag(OID_CN), TAG_BMP);
    assert_eq!(cert.username(UsernameFrom::Cn).unwrap(), "中文 ü");
}

#[test]
fn username_from_cn_decodes_bmp_string_built_by_rcgen() {
    let value = BmpString::try_from("Grüße").unwrap();
    let cert = rcgen_cert(vec![(DnType::CommonName, DnValue::BmpString(value))], vec![]);
    assert_eq!(cert.username(UsernameFrom::Cn).unwrap(), "Grüße");
}

#[test]
fn username_from_cn_decodes_universal_string_as_ucs4() {
    let value = UniversalString::try_from("Zürich 😀").unwrap();
    let cert = rcgen_cert(vec![(DnType::CommonName, DnValue::UniversalString(value))], vec![]);
    assert_eq!(cert.username(UsernameFrom::Cn).unwrap(), "Zürich 😀");
}

#[test]
fn username_from_cn_accepts_ascii_teletex_string() {
    let cert = openssl_cert("/CN=@@@", UTF8ONLY).patched(b"\x0c\x03@@@", b"\x14\x03abc");
    assert_eq!(cert.username(UsernameFrom::Cn).unwrap(), "abc");
}

#[test]
fn username_from_cn_refuses_non_ascii_teletex_string_as_ambiguous() {
    let cert = openssl_cert("/CN=Zürich", NOMBSTR);
    assert_eq!(cert.subject_value_tag(OID_CN), TAG_T61);
    let err = cert.username(UsernameFrom::Cn).unwrap_err();
    assert!(matches!(err, IdentityError::NotUtf8 { string_type: "TeletexString", .. }), "{err:?}");
}

#[test]
fn username_from_cn_refuses_invalid_utf8() {
    let cert = openssl_cert("/CN=@@@", UTF8ONLY).patched(b"\x0c\x03@@@", b"\x0c\x03\xc3\x28@");
    let err = cert.username(UsernameFrom::Cn).unwrap_err();
    assert!(matches!(err, IdentityError::NotUtf8 { .. }), "{err:?}");
    assert_eq!(err.label(), "not_utf8");
}

#[test]
fn username_from_cn_refuses_nul() {
    let cert = openssl_cert("/CN=@@@", UTF8ONLY).patched(b"\x0c\x03@@@", b"\x0c\x03x\x00y");
    let err = cert.username(UsernameFrom::Cn).unwrap_err();
    assert!(matches!(err, IdentityError::ContainsNul { .. }), "{err:?}");
    assert_eq!(err.label(), "contains_nul");
}

#[test]
fn username_from_cn_refuses_control_characters() {
    let cert = openssl_cert("/CN=a\nb", UTF8ONLY);
    let err = cert.username(UsernameFrom::Cn).unwrap_err();
    assert!(matches!(err, IdentityError::ContainsControl { code_point: 0x0a, .. }), "{err:?}");
}

#[test]
fn username_from_cn_refuses_an_empty_cn() {
    let cert = rcgen_cert(vec![cn("")], vec![]);
    let err = cert.username(UsernameFrom::Cn).unwrap_err();
    assert!(matches!(err, IdentityError::Empty { .. }), "{err:?}");
}

#[test]
fn username_from_cn_refuses_a_non_string_cn() {
    let cert = openssl_cert("/CN=@@@", UTF8ONLY).patched(b"\x0c\x03@@@", b"\x07\x03@@@");
    let err = cert.username(UsernameFrom::Cn).unwrap_err();
    assert!(matches!(err, IdentityError::UnsupportedStringType { tag: 7, .. }), "{err:?}");
}

#[test]
fn username_from_cn_refuses_a_subject_without_cn() {
    let cert = openssl_cert("/O=Acme/OU=Ops", UTF8ONLY);
    let err = cert.username(UsernameFrom::Cn).unwrap_err();
    assert!(matches!(err, IdentityError::Missing { .. }), "{err:?}");
    assert_eq!(err.label(), "missing_field");
}

// ---------------------------------------------------------------------------
// username: subjectAltName

fn san_cert() -> Cert {
    rcgen_cert(
        vec![cn("ignored")],
        vec![
            SanType::URI(ia5("spiffe://example.org/ns/prod/sa/meter")),
            SanType::DnsName(ia5("a.example.org")),
            SanType::Rfc822Name(ia5("first@example.org")),
            SanType::DnsName(ia5("b.example.org")),
            SanType::URI(ia5("https://example.org/second")),
            SanType::Rfc822Name(ia5("second@example.org")),
        ],
    )
}

#[test]
fn username_from_san_dns_takes_the_first_dns_name() {
    assert_eq!(san_cert().username(UsernameFrom::SanDns).unwrap(), "a.example.org");
}

#[test]
fn username_from_san_uri_takes_the_first_uri_such_as_a_spiffe_id() {
    assert_eq!(san_cert().username(UsernameFrom::SanUri).unwrap(), "spiffe://example.org/ns/prod/sa/meter");
}

#[test]
fn username_from_san_email_takes_the_first_rfc822_name() {
    assert_eq!(san_cert().username(UsernameFrom::SanEmail).unwrap(), "first@example.org");
}

#[test]
fn username_from_san_refuses_a_certificate_without_that_san_kind() {
    let cert = rcgen_cert(vec![cn("x")], vec![SanType::DnsName(ia5("a.example.org"))]);
    let err = cert.username(UsernameFrom::SanUri).unwrap_err();
    assert!(matches!(err, IdentityError::Missing { .. }), "{err:?}");
}

#[test]
fn username_from_san_refuses_a_certificate_without_san_extension() {
    let cert = rcgen_cert(vec![cn("x")], vec![]);
    for from in [UsernameFrom::SanDns, UsernameFrom::SanUri, UsernameFrom::SanEmail] {
        let err = cert.username(from).unwrap_err();
        assert!(matches!(err, IdentityError::Missing { .. }), "{from}: {err:?}");
    }
}

// ---------------------------------------------------------------------------
// username: sha256

#[test]
fn username_from_sha256_is_the_openssl_fingerprint_in_lowercase_without_colons() {
    let cert = openssl_cert("/CN=pinned", UTF8ONLY);
    let out = openssl(&["x509", "-inform", "DER", "-in", p(&cert.path), "-noout", "-fingerprint", "-sha256"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(hex.len(), 64);
    assert_eq!(cert.username(UsernameFrom::Sha256).unwrap(), hex);
}

// ---------------------------------------------------------------------------
// input validation and names

#[test]
fn username_refuses_bytes_that_are_not_a_certificate() {
    let err = identity::username(b"not a certificate", UsernameFrom::Sha256).unwrap_err();
    assert!(matches!(err, IdentityError::NotACertificate(_)), "{err:?}");
    assert_eq!(err.label(), "not_a_certificate");
}

#[test]
fn username_refuses_trailing_bytes_after_the_certificate() {
    let mut der = openssl_cert("/CN=x", UTF8ONLY).der;
    der.push(0);
    let err = identity::username(&der, UsernameFrom::Sha256).unwrap_err();
    assert!(matches!(err, IdentityError::NotACertificate(_)), "{err:?}");
}

#[test]
fn username_from_uses_the_same_spelling_on_cli_in_config_and_in_logs() {
    use clap::ValueEnum;
    use serde::de::{value::StrDeserializer, IntoDeserializer};
    use serde::Deserialize;

    let expected = ["cn", "subject", "san-dns", "san-uri", "san-email", "sha256"];
    let variants = UsernameFrom::value_variants();
    assert_eq!(variants.len(), expected.len());
    for (variant, name) in variants.iter().zip(expected) {
        assert_eq!(variant.as_str(), name);
        assert_eq!(variant.to_string(), name);
        assert_eq!(UsernameFrom::from_str(name, false).unwrap(), *variant);
        let de: StrDeserializer<'_, serde::de::value::Error> = name.into_deserializer();
        assert_eq!(UsernameFrom::deserialize(de).unwrap(), *variant);
    }
    assert_eq!(UsernameFrom::default(), UsernameFrom::Cn);
}
