//! The checks behind the `websocket_frames` fuzz target, shared with the main crate's stable
//! `tests/fuzz_corpus.rs` (included by both with `#[path]`, so only mqtls' public API and std).
//!
//! Two properties, from one input:
//! - `data` as a client's raw wire bytes after the upgrade: unwrapping never panics, the bytes it
//!   yields stay within what was sent, and they go on to the CONNECT reader (the connect_raw checks).
//! - `data` as a stream, cut into masked binary frames at places and with mask keys taken from the
//!   input itself: unwrapping gives back exactly the stream, with no close code.

use mqtls::conn::websocket::unwrap_frames;

/// Public so that `tests/fuzz_corpus.rs` reaches the connect_raw checks through here (one copy of the file).
#[path = "connect_roundtrip.rs"]
pub mod connect_roundtrip;

/// Caps tried: the default, and one small enough that fuzzed inputs cross it.
const CAPS: [usize; 2] = [1024 * 1024, 64];

/// Frames `stream` the way a client would: binary, then continuations, masked with keys and cut at
/// lengths derived from the stream's own bytes (so the fuzzer explores both).
fn frame(stream: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(stream.len() * 2 + 16);
    let mut rest = stream;
    let mut first = true;
    let mut seed = stream.first().copied().unwrap_or(7) as usize;
    while first || !rest.is_empty() {
        let take = if rest.is_empty() { 0 } else { 1 + seed % rest.len().min(300) };
        let (payload, later) = rest.split_at(take);
        let fin = later.is_empty();
        wire.push(if fin { 0x80 } else { 0 } | if first { 0x2 } else { 0x0 });
        match payload.len() {
            n if n < 126 => wire.push(0x80 | n as u8),
            n => {
                wire.push(0x80 | 126);
                wire.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        let key = [seed as u8, (seed >> 3) as u8, 0x5a, take as u8];
        wire.extend_from_slice(&key);
        wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        seed = seed.wrapping_mul(31).wrapping_add(payload.first().copied().unwrap_or(1) as usize);
        rest = later;
        first = false;
    }
    wire
}

/// Panics if unwrapping breaks its contract for `data`.
pub fn check_websocket_frames(data: &[u8]) {
    for cap in CAPS {
        let (stream, code) = unwrap_frames(data, cap);
        assert!(stream.len() <= data.len(), "more bytes out than in");
        if let Some(code) = code {
            assert!([1002, 1003, 1007, 1009].contains(&code), "unexpected close code {code}");
        }
        if cap == CAPS[0] {
            connect_roundtrip::check_connect_roundtrip(&stream);
        }
    }
    // One message of the whole stream: within the default cap it comes back byte for byte.
    if data.len() <= 4096 {
        let (stream, code) = unwrap_frames(&frame(data), CAPS[0]);
        assert_eq!(code, None, "a well-formed framing was refused");
        assert_eq!(stream, data, "the frames did not unwrap to their stream");
    }
}
