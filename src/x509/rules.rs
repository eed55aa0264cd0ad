//! Authorization at the edge: allow rules on the verified client certificate, checked before the
//! broker is contacted.
//!
//! Five kinds of rule, as users of ghostunnel know them, each a list of globs; a certificate is
//! admitted when **any** pattern of **any** kind matches (no rules at all admits every verified
//! certificate):
//!
//! | kind | matched against |
//! |---|---|
//! | `cn` | the subject's first CN (the value `username_from = "cn"` maps) |
//! | `ou` | each subject OU |
//! | `dns` | each dNSName subjectAltName, case-insensitively (DNS names are) |
//! | `uri` | each URI subjectAltName (e.g. a SPIFFE ID) |
//! | `issuer` | the issuer's whole DN in RFC 2253 form, as `x509::rfc2253` prints it |
//!
//! The issuer is matched on its whole DN rather than its CN: two CAs of different organisations can
//! share a CN ("Device CA"), the DN is what names a CA, and it is the string operators already see
//! (`/certs`, `openssl x509 -issuer -nameopt RFC2253`, `username_from = "subject"`). A CN-only rule is
//! still one glob away: `CN=Device CA,*`.
//!
//! Globs are `globset`'s: `*` any run of characters, `?` one character, `[a-z]` / `[!a-z]` classes,
//! `{a,b}` alternatives, `\` escapes a metacharacter. In `uri` rules `*` and `?` do not cross `/`
//! (`spiffe://example.org/sensors/*` admits `.../sensors/7`, not `.../sensors/7/admin`), and `**`
//! as a whole path segment crosses any number of them (`spiffe://example.org/sensors/**`), which is
//! what ghostunnel's `--allow-uri` wildcards do. In the other kinds `/` is an ordinary character.
//! Values that are not unambiguous text (a CN in an undecodable string type) match nothing.
//!
//! A client without a certificate (`client_auth = "optional"` or `"none"`) is not subject to the
//! rules: there is nothing to match, and its CONNECT passes unmodified for the broker to
//! authenticate, as it always has.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::x509::identity;
use crate::x509::rfc2253::name_rfc2253;
use crate::x509::ClientCert;

/// The certificate field a rule is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Cn,
    Ou,
    Dns,
    Uri,
    Issuer,
}

impl RuleKind {
    /// Every kind, in the order they are printed and checked.
    pub(crate) const ALL: [RuleKind; 5] = [RuleKind::Cn, RuleKind::Ou, RuleKind::Dns, RuleKind::Uri, RuleKind::Issuer];

    /// The config key (the flag is the same with `-` for `_`).
    pub(crate) fn setting(self) -> &'static str {
        match self {
            RuleKind::Cn => "allow_cn",
            RuleKind::Ou => "allow_ou",
            RuleKind::Dns => "allow_dns",
            RuleKind::Uri => "allow_uri",
            RuleKind::Issuer => "allow_issuer",
        }
    }
}

/// A pattern that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("{pattern:?} is not a valid glob: {reason}")]
pub struct RuleError {
    pub(crate) pattern: String,
    pub(crate) reason: String,
}

/// Why a certificate is refused. Variants double as bounded metric labels ([`Refused::label`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// No pattern of any kind matched.
    #[error("certificate {subject:?} (issuer {issuer:?}) matches no allow rule")]
    NotAllowed { subject: String, issuer: String },
    /// The peer's leaf is not one parseable certificate (the TLS layer verified it, so this should
    /// not happen; refused rather than admitted if it does).
    #[error("client certificate cannot be parsed for the allow rules: {0}")]
    NotACertificate(String),
}

impl Refused {
    /// Bounded label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        "not_allowed"
    }
}

/// One kind's patterns: as written (for printing and comparing) and compiled.
#[derive(Debug, Clone)]
struct RuleSet {
    patterns: Vec<String>,
    set: GlobSet,
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet { patterns: Vec::new(), set: GlobSet::empty() }
    }
}

impl RuleSet {
    fn matches(&self, value: &str) -> bool {
        !self.patterns.is_empty() && self.set.is_match(value)
    }
}

/// The allow rules in force. The default has none and admits every verified certificate.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    cn: RuleSet,
    ou: RuleSet,
    dns: RuleSet,
    uri: RuleSet,
    issuer: RuleSet,
}

impl PartialEq for Rules {
    fn eq(&self, other: &Rules) -> bool {
        RuleKind::ALL.iter().all(|&k| self.get(k).patterns == other.get(k).patterns)
    }
}

impl Eq for Rules {}

impl Rules {
    /// Replaces the patterns of `kind`, compiling each; an invalid one is an error naming it.
    pub fn set(&mut self, kind: RuleKind, patterns: &[String]) -> Result<(), RuleError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let err = |reason: String| RuleError { pattern: pattern.clone(), reason };
            if pattern.is_empty() {
                return Err(err("an empty pattern matches nothing; remove it".into()));
            }
            let glob = GlobBuilder::new(pattern)
                .literal_separator(kind == RuleKind::Uri)
                .case_insensitive(kind == RuleKind::Dns)
                .backslash_escape(true)
                .build()
                .map_err(|e| err(e.kind().to_string()))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| RuleError { pattern: patterns.join(", "), reason: e.to_string() })?;
        *self.get_mut(kind) = RuleSet { patterns: patterns.to_vec(), set };
        Ok(())
    }

    /// The patterns of `kind` as written.
    pub(crate) fn patterns(&self, kind: RuleKind) -> &[String] {
        &self.get(kind).patterns
    }

    /// No rules: every verified certificate is admitted.
    pub(crate) fn is_empty(&self) -> bool {
        RuleKind::ALL.iter().all(|&k| self.get(k).patterns.is_empty())
    }

    fn get(&self, kind: RuleKind) -> &RuleSet {
        match kind {
            RuleKind::Cn => &self.cn,
            RuleKind::Ou => &self.ou,
            RuleKind::Dns => &self.dns,
            RuleKind::Uri => &self.uri,
            RuleKind::Issuer => &self.issuer,
        }
    }

    fn get_mut(&mut self, kind: RuleKind) -> &mut RuleSet {
        match kind {
            RuleKind::Cn => &mut self.cn,
            RuleKind::Ou => &mut self.ou,
            RuleKind::Dns => &mut self.dns,
            RuleKind::Uri => &mut self.uri,
            RuleKind::Issuer => &mut self.issuer,
        }
    }
}

impl serde::Serialize for Rules {
    /// One `allow_*` list per kind (empty lists included), under the file's key names.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(RuleKind::ALL.len()))?;
        for kind in RuleKind::ALL {
            map.serialize_entry(kind.setting(), self.patterns(kind))?;
        }
        map.end()
    }
}

/// Whether `rules` admit the verified leaf certificate `cert`.
///
/// # Errors
/// [`Refused::NotAllowed`] when there are rules and none matches.
pub(crate) fn admits(rules: &Rules, cert: &X509Certificate<'_>) -> Result<(), Refused> {
    if rules.is_empty() {
        return Ok(());
    }
    if !rules.cn.patterns.is_empty() && identity::common_name(cert).is_ok_and(|cn| rules.cn.matches(&cn)) {
        return Ok(());
    }
    if !rules.ou.patterns.is_empty() && identity::organizational_units(cert).iter().any(|ou| rules.ou.matches(ou)) {
        return Ok(());
    }
    if !rules.dns.patterns.is_empty() || !rules.uri.patterns.is_empty() {
        // A malformed or duplicated SAN extension gives no names to match; the other kinds still may.
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            let admitted = san.value.general_names.iter().any(|name| match name {
                GeneralName::DNSName(dns) => rules.dns.matches(dns),
                GeneralName::URI(uri) => rules.uri.matches(uri),
                _ => false,
            });
            if admitted {
                return Ok(());
            }
        }
    }
    if !rules.issuer.patterns.is_empty()
        && name_rfc2253(cert.issuer()).is_ok_and(|issuer| rules.issuer.matches(&issuer))
    {
        return Ok(());
    }
    let describe = |name| name_rfc2253(name).unwrap_or_else(|_| "(unprintable)".into());
    Err(Refused::NotAllowed { subject: describe(cert.subject()), issuer: describe(cert.issuer()) })
}

#[cfg(test)]
/// [`admits`] for a DER certificate, as the TLS layer hands it over. With no rules the certificate
/// is not even parsed.
///
/// # Errors
/// As [`admits`], and [`Refused::NotACertificate`] if `der` is not one certificate.
pub(crate) fn admits_der(rules: &Rules, der: &[u8]) -> Result<(), Refused> {
    if rules.is_empty() {
        return Ok(());
    }
    admits_cert(rules, &ClientCert::parse(der))
}

/// [`admits`] for a client's leaf certificate, parsed once for every check of the connection.
///
/// # Errors
/// As [`admits`], and (when there are rules) [`Refused::NotACertificate`] if the leaf did not parse.
pub(crate) fn admits_cert(rules: &Rules, leaf: &ClientCert<'_>) -> Result<(), Refused> {
    if rules.is_empty() {
        return Ok(());
    }
    match leaf.parsed() {
        Ok(cert) => admits(rules, cert),
        Err(reason) => Err(Refused::NotACertificate(reason.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    /// A leaf signed by a CA whose DN prints as `O=Acme,CN={issuer_cn}`, with `edit` applied.
    fn cert(issuer_cn: &str, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.distinguished_name.push(DnType::CommonName, issuer_cn);
        ca_params.distinguished_name.push(DnType::OrganizationName, "Acme");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("key");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        edit(&mut params);
        let key = KeyPair::generate().expect("key");
        params.signed_by(&key, &issuer).expect("sign").der().to_vec()
    }

    fn rules(kind: RuleKind, patterns: &[&str]) -> Rules {
        let mut r = Rules::default();
        r.set(kind, &patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).expect("valid globs");
        r
    }

    fn admitted(r: &Rules, der: &[u8]) -> bool {
        admits_der(r, der).is_ok()
    }

    fn cn(name: &str) -> Vec<u8> {
        cert("Device CA", |p| p.distinguished_name.push(DnType::CommonName, name))
    }

    fn sans(list: Vec<SanType>) -> Vec<u8> {
        cert("Device CA", |p| {
            p.distinguished_name.push(DnType::CommonName, "x");
            p.subject_alt_names = list;
        })
    }

    fn uri(u: &str) -> SanType {
        SanType::URI(u.try_into().expect("ia5"))
    }

    fn dns(d: &str) -> SanType {
        SanType::DnsName(d.try_into().expect("ia5"))
    }

    #[test]
    fn no_rules_admit_everything_without_parsing() {
        assert!(admitted(&Rules::default(), b"not even a certificate"));
    }

    #[test]
    fn cn_glob_matches_the_first_cn() {
        let r = rules(RuleKind::Cn, &["device-*", "gateway-[0-9]"]);
        assert!(admitted(&r, &cn("device-42")));
        assert!(admitted(&r, &cn("gateway-7")));
        assert!(!admitted(&r, &cn("gateway-77")));
        assert!(!admitted(&r, &cn("sensor-1")));
        assert!(!admitted(&r, &cn("Device-42")), "case-sensitive");
        // In a CN `/` is an ordinary character.
        assert!(admitted(&r, &cn("device-a/b")));
    }

    #[test]
    fn cn_rule_looks_at_the_first_cn_only() {
        let r = rules(RuleKind::Cn, &["admin"]);
        let two = cert("Device CA", |p| {
            p.distinguished_name.push(DnType::CommonName, "device-1");
            p.distinguished_name.push(DnType::OrganizationName, "O");
        });
        assert!(!admitted(&r, &two));
    }

    #[test]
    fn ou_rule_matches_any_ou() {
        let r = rules(RuleKind::Ou, &["Fleet A"]);
        let der = cert("Device CA", |p| {
            p.distinguished_name.push(DnType::CommonName, "d");
            p.distinguished_name.push(DnType::OrganizationalUnitName, "Fleet A");
        });
        assert!(admitted(&r, &der));
        let other = cert("Device CA", |p| {
            p.distinguished_name.push(DnType::CommonName, "d");
            p.distinguished_name.push(DnType::OrganizationalUnitName, "Fleet B");
        });
        assert!(!admitted(&r, &other));
        assert!(!admitted(&r, &cn("Fleet A")), "a CN is not an OU");
    }

    #[test]
    fn dns_rule_matches_any_dns_san_case_insensitively() {
        let r = rules(RuleKind::Dns, &["*.fleet.example.org"]);
        assert!(admitted(&r, &sans(vec![dns("other.example"), dns("d1.fleet.example.org")])));
        assert!(admitted(&r, &sans(vec![dns("D1.Fleet.Example.ORG")])));
        assert!(!admitted(&r, &sans(vec![dns("d1.other.example.org")])));
        assert!(!admitted(&r, &sans(vec![uri("https://d1.fleet.example.org/")])), "a URI is not a DNS name");
    }

    #[test]
    fn uri_star_stays_inside_one_path_segment() {
        let r = rules(RuleKind::Uri, &["spiffe://example.org/sensors/*"]);
        assert!(admitted(&r, &sans(vec![uri("spiffe://example.org/sensors/7")])));
        assert!(!admitted(&r, &sans(vec![uri("spiffe://example.org/sensors/7/admin")])));
        assert!(!admitted(&r, &sans(vec![uri("spiffe://example.org/actuators/7")])));
        assert!(!admitted(&r, &sans(vec![dns("spiffe://example.org/sensors/7")])), "only URI SANs");
        let deep = rules(RuleKind::Uri, &["spiffe://example.org/sensors/**"]);
        assert!(admitted(&deep, &sans(vec![uri("spiffe://example.org/sensors/7/admin")])));
    }

    #[test]
    fn issuer_rule_matches_the_rfc2253_dn() {
        let r = rules(RuleKind::Issuer, &["O=Acme,CN=Device CA"]);
        assert!(admitted(&r, &cert("Device CA", |p| p.distinguished_name.push(DnType::CommonName, "d"))));
        assert!(!admitted(&r, &cert("Other CA", |p| p.distinguished_name.push(DnType::CommonName, "d"))));
        let by_cn = rules(RuleKind::Issuer, &["*,CN=Device CA"]);
        assert!(admitted(&by_cn, &cert("Device CA", |p| p.distinguished_name.push(DnType::CommonName, "d"))));
    }

    #[test]
    fn any_matching_rule_of_any_kind_admits() {
        let mut r = rules(RuleKind::Cn, &["nobody"]);
        r.set(RuleKind::Uri, &["spiffe://example.org/*".to_string()]).expect("valid");
        assert!(admitted(&r, &sans(vec![uri("spiffe://example.org/x")])));
        assert!(!admitted(&r, &sans(vec![uri("spiffe://other.org/x")])));
    }

    #[test]
    fn refusal_names_subject_and_issuer_and_has_a_bounded_label() {
        let err = admits_der(&rules(RuleKind::Cn, &["a"]), &cn("b")).expect_err("refused");
        assert_eq!(err.label(), "not_allowed");
        assert_eq!(err.to_string(), r#"certificate "CN=b" (issuer "O=Acme,CN=Device CA") matches no allow rule"#);
        let garbage = admits_der(&rules(RuleKind::Cn, &["a"]), b"junk").expect_err("refused");
        assert!(matches!(garbage, Refused::NotACertificate(_)));
    }

    #[test]
    fn invalid_or_empty_patterns_are_errors_naming_them() {
        let err = Rules::default().set(RuleKind::Cn, &["dev-[".into()]).expect_err("invalid");
        assert!(err.to_string().starts_with("\"dev-[\" is not a valid glob"), "{err}");
        assert!(Rules::default().set(RuleKind::Ou, &[String::new()]).is_err());
    }

    #[test]
    fn escaped_metacharacters_match_literally() {
        let r = rules(RuleKind::Cn, &[r"weird\*name"]);
        assert!(admitted(&r, &cn("weird*name")));
        assert!(!admitted(&r, &cn("weirdXname")));
    }

    #[test]
    fn serializes_as_toml_and_equality_compares_patterns() {
        let r = rules(RuleKind::Uri, &["spiffe://x/*", r#"a"b\*"#]);
        let text = toml::to_string(&r).expect("toml");
        assert_eq!(text.lines().count(), 5, "{text}");
        let parsed: toml::Table = toml::from_str(&text).expect("valid toml");
        assert_eq!(parsed["allow_uri"].as_array().expect("array")[1].as_str(), Some(r#"a"b\*"#));
        assert_eq!(parsed["allow_cn"].as_array().map(Vec::len), Some(0));
        assert_eq!(r, rules(RuleKind::Uri, &["spiffe://x/*", r#"a"b\*"#]));
        assert_ne!(r, Rules::default());
    }
}
