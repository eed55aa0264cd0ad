//! Session-ticket keys shared by replicas (`ticket_keys`).
//!
//! Without the setting each process seals tickets under its own random keys (rustls' `Ticketer`), so
//! behind a load balancer a device resumes only if it lands on the replica that issued its ticket.
//! With it, every replica reads the same key file and seals tickets itself ([`SharedTicketer`]), so
//! any replica resumes any other's tickets.
//!
//! The file: one key per line, 80 random bytes in base64 (`openssl rand -base64 80 | tr -d '\n'`);
//! `#` lines and blank lines are ignored. The first key seals, every key opens: rotation is a new first
//! line, and the last line dropped once the tickets under it have expired (HAProxy's and NGINX's model).
//!
//! A key's 80 bytes: a 16-byte name (which key sealed a ticket), a 32-byte AES-256-GCM key, and 32
//! bytes unused (80 is the size of HAProxy's and NGINX's keys, made by the same command). A ticket is the
//! key name, a random 12-byte nonce, and the sealed session with its 16-byte tag; the name is the
//! associated data.
//!
//! A per-process ticketer could end resumption on a client-CA or CRL change by being replaced; shared
//! keys outlive that, and another replica may still be on the old trust. So the sealed plaintext starts
//! with a digest of the client trust it was issued under ([`trust_digest`]), and a ticket whose digest
//! is not the current one is refused: the device makes a full handshake, where the verifier decides.

use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha256};

#[cfg(feature = "aws-lc-rs")]
use aws_lc_rs as crypto;
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
use ring as crypto;

use crypto::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use crypto::rand::{SecureRandom, SystemRandom};

use super::{ClientAuth, TlsFile};

/// Bytes of one key in the file.
pub(crate) const KEY_LEN: usize = 80;
const NAME_LEN: usize = 16;
const AEAD_KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const DIGEST_LEN: usize = 32;
/// The lifetime rustls' own ticketer advertises (keys rotated every 6 hours, each kept for two
/// periods), so `ticket_keys` changes nothing about how long a device may resume.
const LIFETIME_SECS: u32 = 12 * 60 * 60;
/// Longer than any session rustls seals (which fits a u16 in the handshake): refused unread.
const MAX_TICKET_LEN: usize = 1 << 16;

/// Why the key file cannot be used. Each names the setting, the file and (when there is one) the line.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("ticket_keys: {path}: line {line}: {reason}")]
    Line { path: std::path::PathBuf, line: usize, reason: String },
    #[error(
        "ticket_keys: {path}: no key (one line per key: 80 random bytes in base64, e.g. from \
         `openssl rand -base64 80 | tr -d '\\n'`)"
    )]
    NoKey { path: std::path::PathBuf },
    #[error("ticket_keys: {path}: {reason}")]
    Crypto { path: std::path::PathBuf, reason: String },
}

/// One key of the file, its 80 bytes as read.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RawKey([u8; KEY_LEN]);

impl std::fmt::Debug for RawKey {
    /// Key material stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawKey(..)")
    }
}

/// Parses the key file: every non-blank line not starting with `#` must be one key.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<RawKey>, TicketKeyError> {
    let bad = |line: usize, reason: String| TicketKeyError::Line { path: path.to_path_buf(), line, reason };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes.get(..e.valid_up_to()).unwrap_or_default().iter().filter(|&&b| b == b'\n').count() + 1;
        bad(line, "not text (a key is a line of base64)".into())
    })?;
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| bad(line_no, format!("not valid base64 ({e})")))?;
        let key: [u8; KEY_LEN] = decoded.as_slice().try_into().map_err(|_| {
            bad(
                line_no,
                format!(
                    "{} bytes where a key has {KEY_LEN} (one key per line: `openssl rand -base64 80 | tr -d '\\n'`)",
                    decoded.len()
                ),
            )
        })?;
        keys.push(RawKey(key));
    }
    if keys.is_empty() {
        return Err(TicketKeyError::NoKey { path: path.to_path_buf() });
    }
    Ok(keys)
}

/// The client trust a configuration stands for: the client-certificate policy and the content of the
/// CA bundle and of every CRL (files and fetched). Order-independent and path-independent, so replicas
/// with the same files compute the same digest wherever they mount them.
pub(crate) fn trust_digest<'a>(client_auth: ClientAuth, files: impl Iterator<Item = &'a TlsFile>) -> [u8; DIGEST_LEN] {
    let mut each: Vec<[u8; 32]> = files.map(TlsFile::sha256).collect();
    each.sort_unstable();
    let mut hasher = Sha256::new();
    hasher.update(b"mqtls ticket trust v1\0");
    hasher.update(client_auth.as_str().as_bytes());
    hasher.update([0]);
    for digest in &each {
        hasher.update(digest);
    }
    hasher.finalize().into()
}

/// One key ready to use.
struct SealingKey {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

/// Seals and opens tickets under the keys of the file, bound to one client-trust digest.
pub(crate) struct SharedTicketer {
    /// The first seals; all open. Never empty.
    keys: Vec<SealingKey>,
    trust: [u8; DIGEST_LEN],
    random: SystemRandom,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

impl SharedTicketer {
    /// A ticketer over `keys` (the first seals) for tickets issued under the trust `trust`.
    pub(crate) fn new(path: &Path, keys: &[RawKey], trust: [u8; DIGEST_LEN]) -> Result<Self, TicketKeyError> {
        if keys.is_empty() {
            return Err(TicketKeyError::NoKey { path: path.to_path_buf() });
        }
        let keys = keys
            .iter()
            .map(|RawKey(raw)| {
                let (name, rest) = raw.split_at(NAME_LEN);
                let name: [u8; NAME_LEN] = name.try_into().map_err(|_| crypto_error(path, "key name"))?;
                let secret = rest.get(..AEAD_KEY_LEN).ok_or_else(|| crypto_error(path, "key length"))?;
                let unbound =
                    UnboundKey::new(&AES_256_GCM, secret).map_err(|_| crypto_error(path, "AES-256-GCM key"))?;
                Ok(SealingKey { name, aead: LessSafeKey::new(unbound) })
            })
            .collect::<Result<Vec<_>, TicketKeyError>>()?;
        Ok(SharedTicketer { keys, trust, random: SystemRandom::new() })
    }

    /// How many keys open tickets (the first also seals).
    pub(crate) fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Reads the keys from `file` and builds the ticketer.
    pub(crate) fn from_file(file: &TlsFile, trust: [u8; DIGEST_LEN]) -> Result<Self, TicketKeyError> {
        SharedTicketer::new(&file.path, &parse(&file.path, &file.bytes)?, trust)
    }
}

fn crypto_error(path: &Path, what: &str) -> TicketKeyError {
    TicketKeyError::Crypto { path: path.to_path_buf(), reason: format!("cannot set up the {what}") }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    /// name ‖ nonce ‖ AES-256-GCM(trust digest ‖ session) ‖ tag, under the first key.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut sealed = Vec::with_capacity(DIGEST_LEN + plain.len() + TAG_LEN);
        sealed.extend_from_slice(&self.trust);
        sealed.extend_from_slice(plain);
        key.aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.name), &mut sealed)
            .ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// The session inside, or `None` for anything else: an unknown key name, a ticket that does not
    /// open, one issued under other client trust.
    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() > MAX_TICKET_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at_checked(NAME_LEN)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        // Names are random, so a match is the key; duplicates (a line repeated) are tried in turn.
        let mut named = self.keys.iter().filter(|k| k.name.as_slice() == name).peekable();
        if named.peek().is_none() {
            // Debug only: the bytes come from the network. Seen for every device after a key is
            // dropped, or when replicas disagree on the file.
            tracing::debug!("session ticket refused: sealed under a key not in ticket_keys");
            return None;
        }
        named.find_map(|key| {
            let mut buffer = sealed.to_vec();
            let plain =
                key.aead.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(key.name), &mut buffer).ok()?;
            let (trust, session) = plain.split_at_checked(DIGEST_LEN)?;
            if trust != self.trust.as_slice() {
                tracing::debug!("session ticket refused: issued under other client trust (client_ca, crl)");
                return None;
            }
            Some(session.to_vec())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;
    use std::path::PathBuf;

    fn key(seed: u8) -> RawKey {
        RawKey(std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8)))
    }

    fn line(k: &RawKey) -> String {
        base64::engine::general_purpose::STANDARD.encode(k.0)
    }

    fn ticketer(keys: &[RawKey], trust: u8) -> SharedTicketer {
        SharedTicketer::new(Path::new("keys"), keys, [trust; DIGEST_LEN]).expect("ticketer")
    }

    fn parse_text(text: &str) -> Result<Vec<RawKey>, TicketKeyError> {
        parse(Path::new("/etc/mqtls/ticket.keys"), text.as_bytes())
    }

    #[test]
    fn the_file_gives_its_keys_in_order_skipping_comments_and_blank_lines() {
        let text = format!("# rotated 2026-12-01\n\n  {}  \n#{}\n{}\r\n", line(&key(1)), line(&key(9)), line(&key(2)));
        assert_eq!(parse_text(&text).expect("keys"), vec![key(1), key(2)]);
    }

    #[test]
    fn what_openssl_prints_is_a_key() {
        // `openssl rand -base64 80 | tr -d '\n'`: 108 characters, one `=`.
        let printed = line(&key(3));
        assert_eq!((printed.len(), printed.matches('=').count()), (108, 1));
        assert_eq!(parse_text(&printed).expect("key"), vec![key(3)]);
    }

    #[test]
    fn a_bad_line_is_named_with_the_setting_the_file_and_its_number() {
        let cases = [
            (format!("# keys\n{}\nnot base64!\n", line(&key(1))), 3, "not valid base64"),
            (format!("{}\n{}\n", line(&key(1)), &line(&key(2))[..64]), 2, "where a key has 80"),
            // `openssl rand -base64 80` without `tr`: the key wraps over two lines.
            ("\n".to_string() + &line(&key(1))[..64] + "\n" + &line(&key(1))[64..], 2, "48 bytes"),
        ];
        for (text, number, reason) in cases {
            let err = parse_text(&text).expect_err("bad line").to_string();
            assert!(err.starts_with("ticket_keys: /etc/mqtls/ticket.keys: "), "{err}");
            assert!(err.contains(&format!("line {number}: ")) && err.contains(reason), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn a_file_without_a_key_is_an_error() {
        for text in ["", "# only a comment\n\n"] {
            let err = parse_text(text).expect_err("no key").to_string();
            assert!(err.starts_with("ticket_keys: /etc/mqtls/ticket.keys: no key"), "{err}");
        }
        let err = parse(Path::new("k"), b"\xff\xfe").expect_err("binary").to_string();
        assert!(err.contains("line 1: not text"), "{err}");
    }

    #[test]
    fn a_ticket_opens_to_the_session_it_sealed() {
        let t = ticketer(&[key(1)], 7);
        let ticket = t.encrypt(b"session state").expect("sealed");
        assert_eq!(ticket.len(), NAME_LEN + NONCE_LEN + DIGEST_LEN + 13 + TAG_LEN);
        assert!(!ticket.windows(13).any(|w| w == b"session state"), "the session is not readable");
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        assert_ne!(t.encrypt(b"session state"), Some(ticket), "a fresh nonce each time");
        assert_eq!(t.lifetime(), 12 * 60 * 60);
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = ticketer(&[key(1)], 7);
        let rotated = ticketer(&[key(2), key(1)], 7);
        let new_only = ticketer(&[key(2)], 7);
        let before = old.encrypt(b"before").expect("sealed");
        let after = rotated.encrypt(b"after").expect("sealed");
        assert_eq!(rotated.decrypt(&before).as_deref(), Some(&b"before"[..]), "an old ticket resumes");
        assert_eq!(new_only.decrypt(&after).as_deref(), Some(&b"after"[..]), "sealed with the new key");
        assert_eq!(old.decrypt(&after), None, "not with the old one");
        assert_eq!(new_only.decrypt(&before), None, "the old key dropped: its tickets are gone");
    }

    #[test]
    fn a_ticket_from_other_keys_is_refused() {
        let ticket = ticketer(&[key(1)], 7).encrypt(b"s").expect("sealed");
        assert_eq!(ticketer(&[key(2)], 7).decrypt(&ticket), None);
        // Same name, other secret: the tag does not verify.
        let mut twin = key(1);
        twin.0[40] ^= 1;
        assert_eq!(ticketer(&[twin], 7).decrypt(&ticket), None);
    }

    #[test]
    fn a_ticket_issued_under_other_client_trust_is_refused() {
        let ticket = ticketer(&[key(1)], 7).encrypt(b"s").expect("sealed");
        assert_eq!(ticketer(&[key(1)], 8).decrypt(&ticket), None);
    }

    #[test]
    fn truncated_altered_or_garbage_tickets_are_refused_without_panicking() {
        let t = ticketer(&[key(1)], 7);
        let ticket = t.encrypt(b"a session of some length").expect("sealed");
        for end in 0..ticket.len() {
            assert_eq!(t.decrypt(&ticket[..end]), None, "prefix of {end} bytes");
        }
        for i in 0..ticket.len() {
            let mut altered = ticket.clone();
            altered[i] ^= 0x80;
            assert_eq!(t.decrypt(&altered), None, "byte {i} flipped");
        }
        let mut long = ticket.clone();
        long.resize(MAX_TICKET_LEN + 1, 0);
        assert_eq!(t.decrypt(&long), None);
        assert_eq!(t.decrypt(&[0u8; 200]), None);
        // The right name in front of garbage, of every length around the header and tag.
        for len in 0..80 {
            let mut forged = key(1).0[..NAME_LEN].to_vec();
            forged.extend(vec![0xA5; len]);
            assert_eq!(t.decrypt(&forged), None, "{len} bytes after the name");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever a client sends as a ticket, with or without a known key's name in front: refused,
        /// never a panic.
        #[test]
        fn any_bytes_sent_as_a_ticket_are_refused(
            named in proptest::bool::ANY,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let t = ticketer(&[key(1), key(2)], 7);
            let mut ticket = if named { key(2).0[..NAME_LEN].to_vec() } else { Vec::new() };
            ticket.extend(tail);
            proptest::prop_assert_eq!(t.decrypt(&ticket), None);
        }
    }

    #[test]
    fn the_trust_digest_depends_on_content_and_policy_not_paths_or_order() {
        let file =
            |path: &str, bytes: &[u8]| TlsFile { setting: "crl", path: PathBuf::from(path), bytes: bytes.to_vec() };
        let (ca, crl) = (file("/a/ca.pem", b"CA"), file("/a/crl.pem", b"CRL"));
        let (ca2, crl2) = (file("/b/bundle.pem", b"CA"), file("/b/revoked.pem", b"CRL"));
        let digest = |auth, files: &[&TlsFile]| trust_digest(auth, files.iter().copied());
        let required = digest(ClientAuth::Required, &[&ca, &crl]);
        assert_eq!(required, digest(ClientAuth::Required, &[&crl2, &ca2]), "same content elsewhere");
        assert_ne!(required, digest(ClientAuth::Required, &[&ca]), "a CRL less");
        assert_ne!(required, digest(ClientAuth::Required, &[&ca, &file("/a/crl.pem", b"CRL2")]), "a new CRL");
        assert_ne!(required, digest(ClientAuth::Optional, &[&ca, &crl]), "another policy");
    }
}
