//! The checks behind the `connect_raw` fuzz target, shared with the main crate's stable
//! `tests/fuzz_corpus.rs`, which replays the committed corpus through them.
//!
//! Included by both with `#[path]`, so it may use only mqtls' public API and std. A failed check
//! panics: that is how libFuzzer and the test harness both learn about it.

use mqtls::mqtt::connect::{
    announced_len, edit, read_connect, Connect, ConnectError, Edit, DEFAULT_MAX_CONNECT_LEN, MAX_REMAINING_LEN,
};

/// Caps on the remaining length the reader is tried with: none at all, the protocol's own, the
/// proxy's default, and small ones that the fuzzer's inputs easily exceed.
const MAX_LENS: [usize; 6] = [usize::MAX, MAX_REMAINING_LEN, DEFAULT_MAX_CONNECT_LEN, 1024, 16, 0];

/// Usernames the editor is asked to write: ASCII, empty, and multi-byte UTF-8.
const USERNAMES: [&str; 3] = ["fuzz-user", "", "ü-🦀"];

/// Client ids the editor is asked to write: empty, and one long enough (200 bytes) to move the
/// remaining length across a varint boundary for small packets.
const CLIENT_IDS: [&str; 2] = ["", "device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42-device-42"];

/// Upper bound on the number of proper prefixes of an accepted CONNECT that are re-read, to keep
/// the check linear-ish in the input size.
const PREFIXES_CHECKED: usize = 32;

/// Feeds `data` to every public entry point of `mqtls::mqtt::connect` and panics if any outcome breaks
/// the reader's or the editor's contract.
pub fn check_connect_roundtrip(data: &[u8]) {
    let announced = announced_len(data);
    for max_len in MAX_LENS {
        match read_connect(data, max_len) {
            Ok(None) => assert!(
                !matches!(announced, Some(n) if n <= data.len()),
                "Ok(None) although the whole announced packet ({announced:?} bytes) has arrived"
            ),
            Ok(Some(c)) => {
                assert_eq!(announced, Some(c.packet_len()), "packet_len disagrees with announced_len");
                check_accepted(data, &c);
            }
            Err(e) => check_refusal(&e, max_len),
        }
    }
}

/// Whatever the error, rendering it must work and be consistent.
fn check_refusal(e: &ConnectError, max_len: usize) {
    let _ = (e.label(), e.connack(), e.version(), e.to_string());
    if let ConnectError::TooLarge { announced, limit, .. } = *e {
        assert_eq!(limit, max_len, "TooLarge reports a limit it was not given");
        assert!(announced > limit, "TooLarge for {announced} bytes under a limit of {limit}");
    }
    assert!(!matches!(e, ConnectError::Unencodable { .. } | ConnectError::BufferMismatch), "reader returned {e:?}");
}

fn check_accepted(data: &[u8], c: &Connect) {
    let len = c.packet_len();
    assert!(len <= data.len(), "packet_len {len} beyond the {} bytes read", data.len());
    let (client_id, username) = (c.client_id(data), c.username(data));
    let _ = c.version().as_str();

    // Every proper prefix of an accepted CONNECT is "need more bytes", never a refusal.
    let step = len.div_ceil(PREFIXES_CHECKED).max(1);
    for n in (0..len).step_by(step).chain(len.checked_sub(1)) {
        let prefix = data.get(..n).unwrap_or_default();
        assert_eq!(read_connect(prefix, usize::MAX), Ok(None), "proper prefix of {n}/{len} bytes");
    }

    // An edit that changes nothing gives back the CONNECT byte for byte, without pipelined bytes.
    let unchanged = edit(data, c, &Edit::default());
    assert_eq!(unchanged.as_deref(), Ok(data.get(..len).unwrap_or_default()), "no-op edit changed the packet");

    for drop_password in [false, true] {
        let kept_password = c.has_password() && !drop_password;
        for name in USERNAMES.map(Some).into_iter().chain([None]) {
            for new_id in CLIENT_IDS.map(Some).into_iter().chain([None]) {
                let e = Edit { username: name, drop_password, client_id: new_id };
                let out = edit(data, c, &e).unwrap_or_else(|err| panic!("{e:?} failed: {err}"));
                let c2 = match read_connect(&out, usize::MAX) {
                    Ok(Some(c2)) => c2,
                    other => panic!("edited CONNECT does not re-parse: {other:?}\n{out:02x?}"),
                };
                assert_eq!(c2.packet_len(), out.len(), "edited CONNECT has trailing bytes");
                assert_eq!(c2.version(), c.version(), "edit changed the version");
                assert_eq!(c2.client_id(&out), new_id.unwrap_or(client_id), "edited client id");
                assert_eq!(c2.username(&out), name.or(username), "edited username");
                assert_eq!(c2.has_password(), kept_password, "edited password presence");
                assert_eq!(c2.has_will(), c.has_will(), "edit changed the will flag");
                if new_id.is_some() {
                    // Changing the client id back restores exactly the edit without it (up to the
                    // remaining-length encoding: a no-op edit keeps a client's non-minimal varint).
                    let only_creds = Edit { client_id: None, ..e };
                    let back = edit(&out, &c2, &Edit { client_id: Some(client_id), ..Edit::default() });
                    let want = edit(data, c, &only_creds);
                    assert_eq!(
                        back.as_deref().map(body),
                        want.as_deref().map(body),
                        "client id edit is not reversible"
                    );
                }
            }
        }
    }
}

/// A packet without its fixed header (first byte and remaining-length varint).
fn body(packet: &[u8]) -> &[u8] {
    let varint_len = packet.iter().skip(1).take(4).take_while(|b| *b & 0x80 != 0).count() + 1;
    packet.get(1 + varint_len..).unwrap_or_default()
}
